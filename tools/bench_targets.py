"""The speed the API promises (issue 13), measured against the strongest baselines in one run.

Every row times the engine's call shape and its baselines in interleaved rounds (medians),
in this one plain process, and prints ratios ``baseline time / engine time`` (above 1: the
engine is faster) next to the target. Nothing here passes or fails a build: the machine is
shared and noisy; read the ratios, rerun with more ``--rounds`` when they look odd.

Rows:

* AES-256-GCM, each call shape the README shows (``encrypt``, ``decrypt(nonce, ct, tag)``,
  ``open``, ``keyed.encrypt``, ``keyed.decrypt``) at 64 B, 64 KiB and 1 MiB, against
  pyca/cryptography called directly (a cipher object per call for the stateless shapes, a
  prebuilt one for the keyed shapes, nonces drawn from ``os.urandom`` as the engine does) and
  Tink-py's AEAD primitive;
* XChaCha20-Poly1305 encrypt and decrypt at 64 B, 1 KiB, 64 KiB and 1 MiB, stateless and
  keyed (``aead.keyed``), against each single provider called directly (libsodium's binding,
  the numba kernel, the numba+OpenSSL composite; for the keyed rows their key object built
  once) and Tink-py;
* Ed25519 sign (stateless and keyed) and verify against PyNaCl, pyca/cryptography with a
  prebuilt key object, and Tink-py;
* the import cost: ``import xpscerpto`` and import plus one AEAD call, over bare Python (ms).

The engine is the default one, after its background autotune finished (``wait_tuned``).

    python tools/bench_targets.py [--quick] [--rounds 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

Cell = Callable[[], object]


def _loop(fn: Cell) -> Callable[[int], float]:
    timer = timeit.Timer(fn)
    return timer.timeit


def compare(cells: dict[str, Cell], rounds: int, sample_s: float) -> dict[str, float]:
    """Median seconds per call of each cell, interleaved (A B C, C B A, …)."""
    loops = {name: _loop(fn) for name, fn in cells.items()}
    counts: dict[str, int] = {}
    for name, loop in loops.items():
        loop(1)
        n = 1
        while True:
            t = loop(n)
            if t >= sample_s / 5 or n >= 1 << 22:
                counts[name] = max(1, int(n * sample_s / max(t, 1e-9)))
                break
            n *= 4
    samples: dict[str, list[float]] = {name: [] for name in cells}
    order = list(cells)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            gc.disable()
            try:
                samples[name].append(loops[name](counts[name]) / counts[name])
            finally:
                gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def _row(label: str, times: dict[str, float], engine: str, target: str, results: list[dict[str, Any]]) -> None:
    e = times[engine]
    parts = [f"{label:<42} engine {e * 1e6:9.2f} us"]
    ratios = {}
    for name, t in times.items():
        if name == engine:
            continue
        ratios[name] = t / e
        parts.append(f"{name} {t / e:5.2f}x")
    print("  ".join(parts) + f"   [{target}]")
    results.append({"row": label, "engine_us": e * 1e6, "ratios": ratios, "target": target})


def aes_gcm(sizes: list[int], rounds: int, sample_s: float, results: list[dict[str, Any]]) -> None:
    import tink
    import xpscerpto as xps
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from tink import aead as taead

    taead.register()
    tp = tink.new_keyset_handle(taead.aead_key_templates.AES256_GCM).primitive(taead.Aead)
    eng = xps.default_engine()
    api, key, aad = eng.aead, os.urandom(32), b"header:v1"
    keyed, prebuilt = api.keyed("AES-256-GCM", key), AESGCM(key)
    print("AES-256-GCM (ratio = baseline time / engine time; targets from issue 13)")
    for size in sizes:
        _aes_gcm_size(size, api, key, aad, keyed, prebuilt, tp, rounds, sample_s, results)


def _aes_gcm_size(size: int, api: Any, key: bytes, aad: bytes, keyed: Any, prebuilt: Any, tp: Any, rounds: int,
                  sample_s: float, results: list[dict[str, Any]]) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    urandom = os.urandom
    pt = os.urandom(size)
    s = api.encrypt("AES-256-GCM", key, pt, aad)
    nonce, ct, tag, wire = s.nonce, s.ciphertext, s.tag, s.ciphertext_and_tag
    tw = tp.encrypt(pt, aad)
    small = size <= 64
    rows: list[tuple[str, dict[str, Cell], str]] = [
        ("encrypt", {"engine": lambda: api.encrypt("AES-256-GCM", key, pt, aad),
                     "raw": lambda: AESGCM(key).encrypt(urandom(12), pt, aad),
                     "tink": lambda: tp.encrypt(pt, aad)},
         "<=1.2x raw time and faster than Tink" if small else ">=0.95x raw"),
        ("decrypt(nonce, ct, tag)", {"engine": lambda: api.decrypt("AES-256-GCM", key, nonce, ct, tag, aad),
                                     "raw": lambda: AESGCM(key).decrypt(nonce, wire, aad),
                                     "tink": lambda: tp.decrypt(tw, aad)},
         "<=1.2x raw time and faster than Tink" if small else ">=0.95x raw"),
        ("open(sealed)", {"engine": lambda: api.open("AES-256-GCM", key, s, aad),
                          "raw": lambda: AESGCM(key).decrypt(nonce, wire, aad)},
         "<=1.2x raw time" if small else ">=0.95x raw"),
        ("keyed.encrypt", {"engine": lambda: keyed.encrypt(pt, aad),
                           "raw": lambda: prebuilt.encrypt(urandom(12), pt, aad),
                           "tink": lambda: tp.encrypt(pt, aad)},
         "<=1.3x raw time and faster than Tink" if small else ">=0.95x raw"),
        ("keyed.decrypt", {"engine": lambda: keyed.decrypt(nonce, wire, aad),
                           "raw": lambda: prebuilt.decrypt(nonce, wire, aad),
                           "tink": lambda: tp.decrypt(tw, aad)},
         "<=1.3x raw time and faster than Tink" if small else ">=0.95x raw"),
    ]
    for name, cells, target in rows:
        _row(f"{name} {_label(size)}", compare(cells, rounds, sample_s), "engine", target, results)


def xchacha(sizes: list[int], rounds: int, sample_s: float, results: list[dict[str, Any]]) -> None:
    import nacl.bindings as b
    import tink
    import xpscerpto as xps
    from tink import aead as taead
    from xpscerpto.plugins import jit

    taead.register()
    tp = tink.new_keyset_handle(taead.aead_key_templates.XCHACHA20_POLY1305).primitive(taead.Aead)
    eng = xps.default_engine()
    api, key, aad = eng.aead, os.urandom(32), b"header:v1"
    jit.warm_up()
    kernels = {p.name: p.implementations["aead.xchacha20poly1305"] for p in jit.make_providers()}
    route = eng.table.routes["aead.xchacha20poly1305"]
    print(f"XChaCha20-Poly1305 (engine: {route.provider} <= {route.limit} B < {route.large_provider}; "
          f"target >= 1.0x the best single provider, >= 1.5x Tink at 64 KiB and 1 MiB, faster than Tink "
          "at 64 B and 1 KiB)")
    enc, dec = b.crypto_aead_xchacha20poly1305_ietf_encrypt, b.crypto_aead_xchacha20poly1305_ietf_decrypt
    for size in sizes:
        _xchacha_size(size, api, key, aad, tp, kernels, enc, dec, rounds, sample_s, results)


def _xchacha_size(size: int, api: Any, key: bytes, aad: bytes, tp: Any, kernels: dict[str, Any], enc: Any,
                  dec: Any, rounds: int, sample_s: float, results: list[dict[str, Any]]) -> None:
    urandom = os.urandom
    pt = os.urandom(size)
    s = api.encrypt("XCHACHA20-POLY1305", key, pt, aad)
    nonce, wire = s.nonce, s.ciphertext_and_tag
    tw = tp.encrypt(pt, aad)
    e_cells: dict[str, Cell] = {"engine": lambda: api.encrypt("XCHACHA20-POLY1305", key, pt, aad),
                                "sodium": lambda: enc(pt, aad, urandom(24), key),
                                "tink": lambda: tp.encrypt(pt, aad)}
    d_cells: dict[str, Cell] = {"engine": lambda: api.open("XCHACHA20-POLY1305", key, s, aad),
                                "sodium": lambda: dec(wire, aad, nonce, key),
                                "tink": lambda: tp.decrypt(tw, aad)}
    for name, impl in kernels.items():
        e_cells[name] = lambda impl=impl: impl.cipher(key).encrypt(urandom(24), pt, aad)
        d_cells[name] = lambda impl=impl: impl.cipher(key).decrypt(nonce, wire, aad)
    target = ">=1.0x best provider, >=1.5x Tink" if size >= 65536 else ">=1.0x best provider, >1x Tink"
    _row(f"encrypt {_label(size)}", compare(e_cells, rounds, sample_s), "engine", target, results)
    _row(f"open {_label(size)}", compare(d_cells, rounds, sample_s), "engine", target, results)
    # The keyed form holds the key as Tink's primitive does: the like-for-like comparison with
    # Tink, and with each provider's own keyed object built once.
    keyed = api.keyed("XCHACHA20-POLY1305", key)
    ks = keyed.encrypt(pt, aad)
    ke_cells: dict[str, Cell] = {"engine": lambda: keyed.encrypt(pt, aad), "tink": lambda: tp.encrypt(pt, aad)}
    kd_cells: dict[str, Cell] = {"engine": lambda: keyed.decrypt(ks.nonce, ks.ciphertext_and_tag, aad),
                                 "tink": lambda: tp.decrypt(tw, aad)}
    for name, impl in kernels.items():
        built = impl.cipher(key)
        ke_cells[name] = lambda built=built: built.encrypt(urandom(24), pt, aad)
        kd_cells[name] = lambda built=built: built.decrypt(nonce, wire, aad)
    _row(f"keyed.encrypt {_label(size)}", compare(ke_cells, rounds, sample_s), "engine", target, results)
    _row(f"keyed.decrypt {_label(size)}", compare(kd_cells, rounds, sample_s), "engine", target, results)


def ed25519(rounds: int, sample_s: float, results: list[dict[str, Any]]) -> None:
    import tink
    import xpscerpto as xps
    from cryptography.hazmat.primitives.asymmetric import ed25519 as ced
    from nacl.signing import SigningKey
    from tink import signature as tsig

    tsig.register()
    eng = xps.default_engine()
    msg = os.urandom(64)
    pk, sk = eng.ed25519.generate_keypair()
    signer = eng.ed25519.keyed(sk)
    sig = signer.sign(msg)
    seed = bytes(sk.view())
    nk = SigningKey(seed)
    vk = nk.verify_key
    ck = ced.Ed25519PrivateKey.from_private_bytes(seed)
    cpk = ck.public_key()
    th = tink.new_keyset_handle(tsig.signature_key_templates.ED25519)
    ts, tv = th.primitive(tsig.PublicKeySign), th.public_keyset_handle().primitive(tsig.PublicKeyVerify)
    tsg = ts.sign(msg)
    print(f"Ed25519 (engine routes to {eng.ed25519.provider}; target >= 0.9x the best of PyNaCl, Tink, cryptography)")
    peers_sign: dict[str, Cell] = {"pynacl": lambda: nk.sign(msg), "cryptography": lambda: ck.sign(msg),
                                   "tink": lambda: ts.sign(msg)}
    _row("sign, keyed (ed25519.keyed(sk).sign)", compare({"engine": lambda: signer.sign(msg), **peers_sign},
                                                         rounds, sample_s), "engine", ">=0.9x best", results)
    _row("sign, stateless (ed25519.sign(sk, m))", compare({"engine": lambda: eng.ed25519.sign(sk, msg),
                                                           **peers_sign}, rounds, sample_s), "engine",
         "(key setup per call)", results)
    _row("verify", compare({"engine": lambda: eng.ed25519.verify(pk, msg, sig), "pynacl": lambda: vk.verify(msg, sig),
                            "cryptography": lambda: cpk.verify(sig, msg), "tink": lambda: tv.verify(tsg, msg)},
                           rounds, sample_s), "engine", ">=0.9x best", results)


def import_cost(runs: int, results: list[dict[str, Any]]) -> None:
    # Byte code is cached as in any normal install (this sandbox sets PYTHONDONTWRITEBYTECODE,
    # which would make every run compile every module); the first run of each warms it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPS_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["XPS_AUTOTUNE"] = "0"  # the background work is not part of the import

    codes = {"bare": "pass", "import": "import xpscerpto",
             "call": "import xpscerpto as x; k = bytes(32); x.aead.encrypt('AES-256-GCM', k, b'm')"}
    times: dict[str, list[float]] = {name: [] for name in codes}
    for code in codes.values():
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    # Interleaved, so a noisy stretch of the shared machine hits all three alike.
    for _ in range(runs):
        for name, code in codes.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            times[name].append(time.perf_counter() - t)
    bare, imp, call = (statistics.median(times[name]) for name in codes)
    print(f"import: 'import xpscerpto' +{(imp - bare) * 1e3:.0f} ms over bare Python [target <= 80 ms]; "
          f"import + one AEAD call +{(call - bare) * 1e3:.0f} ms [target <= 120 ms]")
    results.append({"row": "import", "import_ms": (imp - bare) * 1e3, "import_and_call_ms": (call - bare) * 1e3})


def _label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, tiny samples: a smoke run")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rounds, sample_s = (3, 0.002) if args.quick else (args.rounds, 0.03)
    import xpscerpto as xps

    eng = xps.default_engine()
    if not eng.wait_tuned(600):
        print("autotune did not finish in 600 s; figures use the static table")
    results: list[dict[str, Any]] = []
    aes_gcm([64, 65536, 1 << 20], rounds, sample_s, results)
    xchacha([64, 1024, 65536, 1 << 20], rounds, sample_s, results)
    ed25519(rounds, sample_s, results)
    import_cost(3 if args.quick else 15, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
