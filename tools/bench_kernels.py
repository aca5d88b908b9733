#!/usr/bin/env python3
"""Kernel benchmark: the jit providers against every (X)ChaCha20-Poly1305 peer, one run.

What each size bucket's autotune will choose between, encrypt and decrypt, timed interleaved:

XChaCha20-Poly1305 (24-byte nonce)
  * ``jit``: the numba whole-message kernel, a cipher object per call (the engine's stateless
    call shape: ``impl.cipher(key).encrypt(...)``);
  * ``jit-keyed``: the same kernel through a prebuilt cipher object (the keyed/keyring shape);
  * ``jit-openssl``: the composite, numba HChaCha20 + OpenSSL ChaCha20-Poly1305 (per call);
  * ``sodium``: libsodium through PyNaCl's bindings (no object to build);
  * ``demo``: the demo capsule's XChaCha (HChaCha20 recovered from OpenSSL's keystream);
  * ``tink``: Tink-py's XChaCha20-Poly1305 keyset primitive. It draws its own nonce and adds a
    5-byte key prefix, which the others do not: that is what a Tink user pays.

ChaCha20-Poly1305 (12-byte nonce)
  * ``jit``: the numba whole-message kernel, per call;
  * ``openssl``: cryptography's ChaCha20Poly1305 built per call; ``openssl-keyed``: prebuilt;
  * ``sodium``: libsodium's IETF ChaCha20-Poly1305 through PyNaCl.

Each cell (operation, size, direction) times its peers in the same rounds (order reversed on
odd rounds); each sample runs a calibrated number of calls (~30 ms), with the garbage collector
off; figures come from the quietest half of the rounds. Ratios are "times faster than the
reference" (reference time / peer time, median of per-round pairs; > 1 means faster), against
Tink-py and against the best non-jit peer, with ± half the interquartile range. An A/A control
(libsodium against itself) shows what noise alone looks like. Always exits 0 once the kernels
are ready (a report, not a test); exits 1 if the jit kernels cannot be made ready.

Usage:
    python tools/bench_kernels.py [--quick] [--sizes 64,1K,64K,1M] [--rounds N] [--sample-ms MS]
                                  [--cache-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from _benchlib import Loop, Timing, parse_sizes, size_label
from bench_keyring import load_tink, loadavg, measure, paired, quiet_rounds, timed

DEFAULT_SIZES = (64, 1024, 65536, 1 << 20)
OPS = ("encrypt", "decrypt")
AAD_SIZE = 16
XCHACHA, CHACHA = "XChaCha20-Poly1305", "ChaCha20-Poly1305"
JIT_PEERS = ("jit", "jit-keyed", "jit-openssl")


@dataclass(frozen=True)
class Peer:
    """One implementation: statements for ``timed`` and the names they use."""

    name: str
    encrypt: str  # uses pt, aad (and nonce, key, c as the peer needs)
    decrypt: str  # uses ct, aad
    names: dict[str, Any]
    seal: Callable[[bytes, bytes], bytes]  # (pt, aad) -> the ciphertext its decrypt statement opens


def demo_xchacha() -> Any:
    """The demo capsule's XChaCha20-Poly1305 implementation, loaded from its source file."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "capsules" / "demo-capsule" / "xchacha.py"
    spec = importlib.util.spec_from_file_location("demo_capsule_xchacha", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.XChaCha20Poly1305()


def xchacha_peers(tink: Any, notes: list[str]) -> list[Peer]:
    import nacl.bindings as nb
    from xpscerpto.plugins import jit

    key, nonce = os.urandom(32), os.urandom(24)
    by_name = {p.name: p for p in jit.make_providers(mask="")}
    whole: Any = by_name["jit"].implementations["aead.xchacha20poly1305"]
    composite: Any = by_name["jit-openssl"].implementations["aead.xchacha20poly1305"]
    whole, composite = whole.cipher, composite.cipher
    demo = demo_xchacha().cipher
    peers = []
    for name, factory in (("jit", whole), ("jit-openssl", composite), ("demo", demo)):
        names = {"C": factory, "key": key, "nonce": nonce}
        peers.append(Peer(name, "C(key).encrypt(nonce, pt, aad)", "C(key).decrypt(nonce, ct, aad)", names,
                          lambda pt, aad, f=factory: f(key).encrypt(nonce, pt, aad)))  # type: ignore[misc]
    keyed = whole(key)
    peers.insert(1, Peer("jit-keyed", "c.encrypt(nonce, pt, aad)", "c.decrypt(nonce, ct, aad)",
                         {"c": keyed, "nonce": nonce}, lambda pt, aad: keyed.encrypt(nonce, pt, aad)))
    enc, dec = nb.crypto_aead_xchacha20poly1305_ietf_encrypt, nb.crypto_aead_xchacha20poly1305_ietf_decrypt
    peers.append(Peer("sodium", "enc(pt, aad, nonce, key)", "dec(ct, aad, nonce, key)",
                      {"enc": enc, "dec": dec, "nonce": nonce, "key": key}, lambda pt, aad: enc(pt, aad, nonce, key)))
    if tink is not None:
        from tink import aead

        primitive = tink.new_keyset_handle(aead.aead_key_templates.XCHACHA20_POLY1305).primitive(aead.Aead)
        peers.append(Peer("tink", "p.encrypt(pt, aad)", "p.decrypt(ct, aad)", {"p": primitive},
                          primitive.encrypt))
    else:
        notes.append("tink is not installed: no tink column (install the bench extra)")
    return peers


def chacha_peers() -> list[Peer]:
    import nacl.bindings as nb
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from xpscerpto.plugins import jit

    key, nonce = os.urandom(32), os.urandom(12)
    (whole_provider,) = [p for p in jit.make_providers(mask="") if p.name == "jit"]
    impl: Any = whole_provider.implementations["aead.chacha20poly1305"]
    whole = impl.cipher
    prebuilt = ChaCha20Poly1305(key)
    enc, dec = nb.crypto_aead_chacha20poly1305_ietf_encrypt, nb.crypto_aead_chacha20poly1305_ietf_decrypt
    return [
        Peer("jit", "C(key).encrypt(nonce, pt, aad)", "C(key).decrypt(nonce, ct, aad)",
             {"C": whole, "key": key, "nonce": nonce}, lambda pt, aad: whole(key).encrypt(nonce, pt, aad)),
        Peer("openssl", "C(key).encrypt(nonce, pt, aad)", "C(key).decrypt(nonce, ct, aad)",
             {"C": ChaCha20Poly1305, "key": key, "nonce": nonce}, lambda pt, aad: prebuilt.encrypt(nonce, pt, aad)),
        Peer("openssl-keyed", "c.encrypt(nonce, pt, aad)", "c.decrypt(nonce, ct, aad)",
             {"c": prebuilt, "nonce": nonce}, lambda pt, aad: prebuilt.encrypt(nonce, pt, aad)),
        Peer("sodium", "enc(pt, aad, nonce, key)", "dec(ct, aad, nonce, key)",
             {"enc": enc, "dec": dec, "nonce": nonce, "key": key}, lambda pt, aad: enc(pt, aad, nonce, key)),
    ]


def loops_for(peers: Sequence[Peer], op: str, size: int) -> dict[str, Loop]:
    """Each peer's timing loop for one cell; every ciphertext is checked to open first."""
    pt, aad = os.urandom(size), os.urandom(AAD_SIZE)
    loops = {}
    for p in peers:
        ct = p.seal(pt, aad)
        names = {**p.names, "pt": pt, "aad": aad, "ct": ct}
        if eval(p.decrypt, {}, names) != pt:
            raise SystemExit(f"{p.name}: round trip failed at {size} bytes")
        loops[p.name] = timed(p.encrypt if op == "encrypt" else p.decrypt, **names)
    return loops


def run_cell(algo: str, peers: Sequence[Peer], size: int, op: str, timing: Timing) -> dict[str, Any]:
    loops = loops_for(peers, op, size)
    n, per_call = measure(list(loops.values()), timing)
    quiet = quiet_rounds(per_call)
    times = dict(zip(loops, per_call, strict=True))
    us = {name: statistics.median(ns[r] for r in quiet) / 1e3 for name, ns in times.items()}
    baseline = [name for name in times if name not in JIT_PEERS]
    best_other = min(baseline, key=lambda name: us[name])
    faster: dict[str, dict[str, Any]] = {}
    for name, mine in times.items():
        row: dict[str, Any] = {}
        for ref in ("tink", best_other):
            if ref in times and ref != name:
                r = paired(times[ref], mine, quiet)  # ref time / this time: > 1 is faster
                row[ref] = {"ratio": r["ratio"], "spread": r["ratio_spread"]}
        faster[name] = row
    winner = min(us, key=lambda name: us[name])
    return {"algo": algo, "size": size, "op": op, "iterations": n, "rounds": timing.rounds,
            "rounds_used": len(quiet), "us": us, "best_other": best_other, "winner": winner,
            "faster_than": faster}


def aa_control(timing: Timing) -> dict[str, Any]:
    import nacl.bindings as nb

    names = {"enc": nb.crypto_aead_xchacha20poly1305_ietf_encrypt, "pt": os.urandom(64), "aad": b"",
             "nonce": os.urandom(24), "key": os.urandom(32)}
    stmt = "enc(pt, aad, nonce, key)"
    _, (a, b) = measure([timed(stmt, **names), timed(stmt, **names)], timing)
    r = paired(a, b, quiet_rounds([a, b]))
    return {"ratio": r["ratio"], "spread": r["ratio_spread"], "us": statistics.median(a) / 1e3}


# -- report -----------------------------------------------------------------------------------


def fmt_us(us: float) -> str:
    return f"{us:9.2f}" if us < 1000 else f"{us:9.0f}"


def print_cell(cell: dict[str, Any]) -> None:
    us, faster = cell["us"], cell["faster_than"]
    ref = cell["best_other"]
    for name, t in sorted(us.items(), key=lambda kv: kv[1]):
        parts = []
        for label, key in (("vs tink", "tink"), (f"vs {ref}", ref)):
            r = faster[name].get(key)
            parts.append(f"{label} {r['ratio']:5.2f}x ±{r['spread']:.2f}" if r else f"{label} {'-':>11}")
        mark = " <- winner" if name == cell["winner"] else ""
        print(f"  {cell['algo']:<19} {size_label(cell['size']):>6} {cell['op']:<7} {name:<13} {fmt_us(t)} us   "
              f"{parts[0]:<24} {parts[1]}{mark}")


def summary(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Where each implementation wins, per operation and direction (what the autotune needs)."""
    lines = []
    for algo in (XCHACHA, CHACHA):
        for op in OPS:
            row = [c for c in cells if c["algo"] == algo and c["op"] == op]
            if row:
                wins = ", ".join(f"{size_label(c['size'])}: {c['winner']}" for c in row)
                lines.append(f"  {algo:<19} {op:<7} {wins}")
    return lines


def environment(status: Any, tink_version: str | None) -> dict[str, Any]:
    import cryptography
    import nacl
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "cpu": cpu, "loadavg_start": loadavg(),
            "numba": status.numba_version, "jit": status.reason, "jit_cache": status.cache_dir,
            "jit_cpu_features": sorted(status.kernels[0].cpu_features) if status.kernels else [],
            "cryptography": cryptography.__version__, "openssl": str(backend.openssl_version_text()),
            "pynacl": nacl.__version__, "tink": tink_version}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny samples and 3 rounds (smoke test only)")
    ap.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                    help="comma-separated message sizes, K/M suffixes allowed (default 64,1K,64K,1M)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per cell (default 12, quick 3)")
    ap.add_argument("--sample-ms", type=float, help="target duration of one sample (default 30, quick 0.5)")
    ap.add_argument("--cache-dir", type=Path, help="numba cache for the jit kernels (default: NUMBA_CACHE_DIR, "
                                                   "else $XDG_CACHE_HOME/xpscerpto/numba)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from xpscerpto.plugins import jit

    args = parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 12)
    sample_ms = args.sample_ms or (0.5 if args.quick else 30.0)
    timing = Timing(sample_ns=sample_ms * 1e6, calib_ns=sample_ms * 1e6 / 8, rounds=rounds)

    started = time.perf_counter()
    status = jit.warm_up(args.cache_dir, mask="")
    if not status:
        print(f"jit kernels are {status.state}: {status.reason}", file=sys.stderr)
        return 1
    tink, tink_version, why_not = load_tink()
    notes = [why_not] if why_not else []
    suites = {XCHACHA: xchacha_peers(tink, notes), CHACHA: chacha_peers()}
    env = environment(status, tink_version)
    print(f"jit: {status.reason} ({status.cache_dir}); numba {status.numba_version}; {env['openssl']}; "
          f"PyNaCl {env['pynacl']}; tink {tink_version or '-'}; load {env['loadavg_start']}")
    print(f"{rounds} interleaved rounds per cell, ~{sample_ms:g} ms samples, quietest half used; "
          "ratios = reference time / peer time (> 1: faster)")

    cells = []
    for size in args.sizes:
        for algo, peers in suites.items():
            for op in OPS:
                cell = run_cell(algo, peers, size, op, timing)
                print_cell(cell)
                cells.append(cell)
        print()
    control = aa_control(timing)
    print(f"A/A control (libsodium XChaCha 64 B against itself): {control['ratio']:.3f}x ±{control['spread']:.3f}")
    print("Winners (lowest time per call):")
    for line in summary(cells):
        print(line)
    for note in notes:
        print(f"note: {note}")
    print(f"({time.perf_counter() - started:.0f} s; load {loadavg()})")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "cells": cells, "aa_control": control,
                                         "notes": notes, "quick": args.quick}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
