#!/usr/bin/env python3
"""AEAD benchmark: the engine API against the same provider called directly, in one run.

For every AEAD the engine routes (or every provider x algorithm with ``--provider``), and for
each message size, it times

* ``encrypt``: ``eng.aead.encrypt(algo, key, pt, aad)`` (auto nonce) against the raw call a
  careful user writes with a raw key and the same nonce source, e.g.
  ``AESGCM(key).encrypt(os.urandom(12), pt, aad)`` or
  ``crypto_aead_xchacha20poly1305_ietf_encrypt(pt, aad, os.urandom(24), key)``;
* ``decrypt``: ``eng.aead.decrypt(algo, key, nonce, ct, tag, aad)`` (joins ct and tag: one copy)
  against the raw decrypt of a prebuilt ``ct || tag``; and ``decrypt/join``, the same engine
  call against the raw library in the same call shape — the caller holds ``ct`` and ``tag``
  apart and joins them (``AESGCM(key).decrypt(nonce, ct + tag, aad)``), as a user of a
  library without a tag-separate decrypt must;
* ``open``: ``eng.aead.open(algo, key, sealed, aad)`` (zero copy) against the same raw decrypt;

and with ``--shapes`` also (``all`` for every one)

* ``encrypt-nonce``: ``eng.aead.encrypt(algo, key, pt, aad, nonce=n)`` (the caller's nonce, checked
  for reuse; the same message under the same nonce each call, which the check allows) against
  the raw encrypt with the same fixed nonce;
* ``keyed-encrypt`` / ``keyed-nonce`` / ``keyed-decrypt``: a ``KeyedAead`` (auto nonce, a recorded
  explicit nonce, ``ciphertext || tag``) against the library's keyed object built once
  (``AESGCM(key)``; PyNaCl has none, so its raw call is the same as above).

Noise control (the machine is shared): engine and raw loops are interleaved in every round
(A B A B ..., order reversed on odd rounds to cancel drift), each sample runs a calibrated
number of calls (~30 ms), the garbage collector is off during a sample, and the figures are
medians over rounds; the delta and ratio are medians of the per-round *paired* values. An A/A
control (the raw call against itself) shows how large a difference noise alone produces.

The targets (at most +0.3 us per call at 64 B; at least 0.95x raw throughput at 64 KiB and
1 MiB) are reported as MET/MISSED for information only: this is a report, not a test, and it
always exits 0. Never read a bare absolute number as pass/fail; compare within the run.

``--malloc cold`` leaves glibc's allocator as a plain process has it (the issue-11 setting: a
fresh 1 MiB buffer per call is then served by mmap and trimmed back, so its pages fault in on
every call); the default ``warm`` raises the thresholds first, so figures do not depend on order.

Usage:
    python tools/bench.py [--quick] [--algos AES-256-GCM,...] [--provider NAME[,NAME]|all]
                          [--sizes 64,1024,65536,1048576] [--rounds N] [--sample-ms MS]
                          [--shapes encrypt,decrypt,open,encrypt-nonce,keyed-encrypt,...|all]
                          [--malloc warm|cold] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script, however it runs
from _benchlib import Loop, Timing, parse_sizes, sample, size_label

DEFAULT_SIZES = (64, 1024, 65536, 1048576)
OPS = ("encrypt", "decrypt", "open")
EXTRA_SHAPES = ("encrypt-nonce", "keyed-encrypt", "keyed-nonce", "keyed-decrypt")
AAD_SIZE = 16
OVERHEAD_TARGET_US = 0.3
OVERHEAD_SIZE = 64
THROUGHPUT_TARGET = 0.95
THROUGHPUT_SIZES = (65536, 1048576)

# A timing loop: run the call n times, return elapsed nanoseconds.


# -- raw references ---------------------------------------------------------------------------
#
# Every loop body is written out as user code would be (no lambda or helper frame in the loop)
# and binds what it uses to locals first, for the engine and the raw side alike, so the only
# difference between the two loops is the call under test.


class CryptographyRaw:
    """pyca/cryptography: ``Cls(key).encrypt(nonce, pt, aad)``, key object built per call."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def describe(self, nonce_size: int) -> tuple[str, str]:
        n = self.cls.__name__
        return (f"{n}(key).encrypt(os.urandom({nonce_size}), pt, aad)",
                f"{n}(key).decrypt(nonce, ct_and_tag, aad)")

    def encrypt(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
        return self.cls(key).encrypt(nonce, pt, aad)  # type: ignore[no-any-return]

    def decrypt(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> bytes:
        return self.cls(key).decrypt(nonce, wire, aad)  # type: ignore[no-any-return]

    def encrypt_loop(self, key: bytes, pt: bytes, aad: bytes, nonce_size: int) -> Loop:
        cls = self.cls

        def run(n: int) -> int:
            c, k, p, a, ns, urandom, clock = cls, key, pt, aad, nonce_size, os.urandom, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                c(k).encrypt(urandom(ns), p, a)
            return clock() - t0

        return run

    def decrypt_loop(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> Loop:
        cls = self.cls

        def run(n: int) -> int:
            c, k, nn, w, a, clock = cls, key, nonce, wire, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                c(k).decrypt(nn, w, a)
            return clock() - t0

        return run

    def decrypt_join_loop(self, key: bytes, nonce: bytes, ct: bytes, tag: bytes, aad: bytes) -> Loop:
        cls = self.cls

        def run(n: int) -> int:
            c, k, nn, ct_, t, a, clock = cls, key, nonce, ct, tag, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                c(k).decrypt(nn, ct_ + t, a)
            return clock() - t0

        return run

    def encrypt_nonce_loop(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
        cls = self.cls

        def run(n: int) -> int:
            c, k, nn, p, a, clock = cls, key, nonce, pt, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                c(k).encrypt(nn, p, a)
            return clock() - t0

        return run

    def keyed_encrypt_loop(self, key: bytes, pt: bytes, aad: bytes, nonce_size: int) -> Loop:
        obj = self.cls(key)

        def run(n: int) -> int:
            o, p, a, ns, urandom, clock = obj, pt, aad, nonce_size, os.urandom, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                o.encrypt(urandom(ns), p, a)
            return clock() - t0

        return run

    def keyed_nonce_loop(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
        obj = self.cls(key)

        def run(n: int) -> int:
            o, nn, p, a, clock = obj, nonce, pt, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                o.encrypt(nn, p, a)
            return clock() - t0

        return run

    def keyed_decrypt_loop(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> Loop:
        obj = self.cls(key)

        def run(n: int) -> int:
            o, nn, w, a, clock = obj, nonce, wire, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                o.decrypt(nn, w, a)
            return clock() - t0

        return run


class NaclRaw:
    """PyNaCl bindings: ``crypto_aead_*_encrypt(msg, aad, nonce, key)``."""

    def __init__(self, enc: Any, dec: Any) -> None:
        self.enc = enc
        self.dec = dec

    def describe(self, nonce_size: int) -> tuple[str, str]:
        return (f"{self.enc.__name__}(pt, aad, os.urandom({nonce_size}), key)",
                f"{self.dec.__name__}(ct_and_tag, aad, nonce, key)")

    def encrypt(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
        return self.enc(pt, aad, nonce, key)  # type: ignore[no-any-return]

    def decrypt(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> bytes:
        return self.dec(wire, aad, nonce, key)  # type: ignore[no-any-return]

    def encrypt_loop(self, key: bytes, pt: bytes, aad: bytes, nonce_size: int) -> Loop:
        fn = self.enc

        def run(n: int) -> int:
            f, k, p, a, ns, urandom, clock = fn, key, pt, aad, nonce_size, os.urandom, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                f(p, a, urandom(ns), k)
            return clock() - t0

        return run

    def decrypt_loop(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> Loop:
        fn = self.dec

        def run(n: int) -> int:
            f, k, nn, w, a, clock = fn, key, nonce, wire, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                f(w, a, nn, k)
            return clock() - t0

        return run

    def decrypt_join_loop(self, key: bytes, nonce: bytes, ct: bytes, tag: bytes, aad: bytes) -> Loop:
        fn = self.dec

        def run(n: int) -> int:
            f, k, nn, ct_, t, a, clock = fn, key, nonce, ct, tag, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                f(ct_ + t, a, nn, k)
            return clock() - t0

        return run

    def encrypt_nonce_loop(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
        fn = self.enc

        def run(n: int) -> int:
            f, k, nn, p, a, clock = fn, key, nonce, pt, aad, time.perf_counter_ns
            t0 = clock()
            for _ in repeat(None, n):
                f(p, a, nn, k)
            return clock() - t0

        return run

    # PyNaCl's bindings have no keyed object: the keyed shapes compare with the same calls.
    def keyed_encrypt_loop(self, key: bytes, pt: bytes, aad: bytes, nonce_size: int) -> Loop:
        return self.encrypt_loop(key, pt, aad, nonce_size)

    def keyed_nonce_loop(self, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
        return self.encrypt_nonce_loop(key, nonce, pt, aad)

    def keyed_decrypt_loop(self, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> Loop:
        return self.decrypt_loop(key, nonce, wire, aad)


Raw = CryptographyRaw | NaclRaw


def raw_reference(provider: str, operation: str) -> Raw | None:
    """The direct library call behind ``provider``'s ``operation`` (None if we have none).

    Written independently of the provider plugins, so the reference cannot inherit their costs.
    """
    if provider == "openssl":
        from cryptography.hazmat.primitives.ciphers import aead as cg

        cls = {
            "aead.aes128gcm": cg.AESGCM,
            "aead.aes256gcm": cg.AESGCM,
            "aead.chacha20poly1305": cg.ChaCha20Poly1305,
            "aead.aes256gcmsiv": getattr(cg, "AESGCMSIV", None),
        }.get(operation)
        return CryptographyRaw(cls) if cls is not None else None
    if provider == "sodium":
        import nacl.bindings as nb

        stem = {
            "aead.chacha20poly1305": "chacha20poly1305_ietf",
            "aead.xchacha20poly1305": "xchacha20poly1305_ietf",
            "aead.aegis256": "aegis256",
        }.get(operation)
        if stem is None or not hasattr(nb, f"crypto_aead_{stem}_encrypt"):
            return None
        return NaclRaw(getattr(nb, f"crypto_aead_{stem}_encrypt"), getattr(nb, f"crypto_aead_{stem}_decrypt"))
    return None


# -- engine loops -----------------------------------------------------------------------------


def engine_encrypt_loop(api: Any, algo: str, key: bytes, pt: bytes, aad: bytes) -> Loop:
    def run(n: int) -> int:
        e, al, k, p, a, clock = api, algo, key, pt, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            e.encrypt(al, k, p, a)
        return clock() - t0

    return run


def engine_decrypt_loop(api: Any, algo: str, key: bytes, nonce: bytes, ct: bytes, tag: bytes,
                        aad: bytes) -> Loop:
    def run(n: int) -> int:
        e, al, k, nn, c, t, a, clock = api, algo, key, nonce, ct, tag, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            e.decrypt(al, k, nn, c, t, a)
        return clock() - t0

    return run


def engine_open_loop(api: Any, algo: str, key: bytes, sealed: Any, aad: bytes) -> Loop:
    def run(n: int) -> int:
        e, al, k, s, a, clock = api, algo, key, sealed, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            e.open(al, k, s, a)
        return clock() - t0

    return run


def engine_encrypt_nonce_loop(api: Any, algo: str, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
    def run(n: int) -> int:
        e, al, k, nn, p, a, clock = api, algo, key, nonce, pt, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            e.encrypt(al, k, p, a, nonce=nn)
        return clock() - t0

    return run


def engine_keyed_encrypt_loop(keyed: Any, pt: bytes, aad: bytes) -> Loop:
    def run(n: int) -> int:
        o, p, a, clock = keyed, pt, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            o.encrypt(p, a)
        return clock() - t0

    return run


def engine_keyed_nonce_loop(keyed: Any, nonce: bytes, pt: bytes, aad: bytes) -> Loop:
    def run(n: int) -> int:
        o, nn, p, a, clock = keyed, nonce, pt, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            o.encrypt(p, a, nn)
        return clock() - t0

    return run


def engine_keyed_decrypt_loop(keyed: Any, nonce: bytes, wire: bytes, aad: bytes) -> Loop:
    def run(n: int) -> int:
        o, nn, w, a, clock = keyed, nonce, wire, aad, time.perf_counter_ns
        t0 = clock()
        for _ in repeat(None, n):
            o.decrypt(nn, w, a)
        return clock() - t0

    return run


# -- measurement ------------------------------------------------------------------------------


def calibrate(loops: Sequence[Loop], timing: Timing) -> int:
    """Iterations per sample so that the slowest loop of the group takes ~``sample_ns``."""
    n = 1
    while True:
        worst = max(sample(loop, n) for loop in loops)
        if worst >= timing.calib_ns or n >= 1 << 26:
            break
        n = max(n * 2, int(n * min(100.0, timing.calib_ns * 1.2 / max(worst, 1))))
    return max(1, round(timing.sample_ns / (worst / n)))


def measure(loops: Sequence[Loop], timing: Timing) -> tuple[int, list[list[float]]]:
    """Interleave the loops for ``timing.rounds`` rounds; per-call ns for each loop and round."""
    n = calibrate(loops, timing)
    per_call: list[list[float]] = [[] for _ in loops]
    order = list(range(len(loops)))
    gc.collect()
    for r in range(timing.rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            per_call[i].append(sample(loops[i], n) / n)
    return n, per_call


def _spread(values: Sequence[float]) -> float:
    """Half the interquartile range (0 with fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / 2


def compare(raw: Sequence[float], eng: Sequence[float], size: int) -> dict[str, float]:
    """Paired statistics of raw vs engine per-call times (ns) over the same rounds.

    Noise on a shared machine only ever adds time, and it hits a round's pair together or
    not at all, so the headline figures use the quietest half of the rounds (lowest
    raw + engine time), keeping each round's pair intact: per-call times are medians over
    those rounds, delta and ratio are medians of their paired values. Medians and minima over
    all rounds are kept alongside for reference.
    """
    pairs = sorted(zip(raw, eng, strict=True), key=sum)[: max(1, (len(raw) + 1) // 2)]
    q_raw, q_eng = [r for r, _ in pairs], [e for _, e in pairs]
    deltas = [e - r for r, e in pairs]
    ratios = [r / e for r, e in pairs]
    raw_med, eng_med = statistics.median(q_raw), statistics.median(q_eng)
    return {
        "raw_us": raw_med / 1e3,
        "engine_us": eng_med / 1e3,
        "delta_us": statistics.median(deltas) / 1e3,
        "delta_spread_us": _spread(deltas) / 1e3,
        "raw_gbps": size / raw_med,  # bytes per ns == GB/s
        "engine_gbps": size / eng_med,
        "ratio": statistics.median(ratios),
        "ratio_spread": _spread(ratios),
        "rounds_used": len(pairs),
        "raw_all_median_us": statistics.median(raw) / 1e3,
        "engine_all_median_us": statistics.median(eng) / 1e3,
        "raw_min_us": min(raw) / 1e3,
        "engine_min_us": min(eng) / 1e3,
    }


def target_for(size: int, row: dict[str, float]) -> dict[str, Any] | None:
    """The target that applies at ``size``; ``uncertain`` when the noise band straddles it."""
    if size == OVERHEAD_SIZE:
        value, spread, limit = row["delta_us"], row["delta_spread_us"], OVERHEAD_TARGET_US
        met = value <= limit
        name = f"delta <= +{OVERHEAD_TARGET_US} us"
    elif size in THROUGHPUT_SIZES:
        value, spread, limit = row["ratio"], row["ratio_spread"], THROUGHPUT_TARGET
        met = value >= limit
        name = f"ratio >= {THROUGHPUT_TARGET}"
    else:
        return None
    return {"target": name, "value": value, "met": met, "uncertain": abs(value - limit) <= spread}


def verdict(target: dict[str, Any]) -> str:
    return ("MET" if target["met"] else "MISSED") + ("?" if target["uncertain"] else "")


def _q(row: dict[str, Any]) -> str:
    return "?" if row["target"]["uncertain"] else ""


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One (engine configuration, algorithm) to measure."""

    label: str  # "default" or the forced provider name
    engine: Any
    algo: str  # public name, e.g. "AES-256-GCM"
    operation: str  # e.g. "aead.aes256gcm"
    provider: str
    raw: Raw


def _public_name(operation: str) -> str:
    from xpscerpto.interfaces import OPERATIONS

    aliases = OPERATIONS[operation].aliases
    return aliases[0] if aliases else operation


def _aead_lookup() -> dict[str, str]:
    """Every accepted spelling (upper-cased) -> operation name."""
    from xpscerpto.interfaces import OPERATIONS

    out: dict[str, str] = {}
    for op, spec in OPERATIONS.items():
        if spec.kind == "aead":
            for name in (op, *spec.aliases):
                out[name.upper()] = op
    return out


def build_cases(algos: list[str] | None, providers: list[str] | None,
                notes: list[str]) -> list[Case]:
    from xpscerpto import Engine, EngineConfig

    if providers is None:
        engines = [("default", Engine())]
    else:
        if providers == ["all"]:
            providers = [p.name for p in Engine().state.providers]
        engines = [(p, Engine(EngineConfig(providers=(p,)))) for p in providers]

    lookup = _aead_lookup()
    wanted = None if algos is None else list(dict.fromkeys(lookup[a.upper()] for a in algos))
    cases: list[Case] = []
    for label, eng in engines:
        table = eng.table
        if label != "default" and not any(op.startswith("aead.") for op in table.routes):
            known = ", ".join(p.name for p in eng.state.providers) or "none"
            notes.append(f"provider {label!r} routes no AEAD (loaded providers: {known})")
            continue
        ops = [op for op in table.routes if op.startswith("aead.")] if wanted is None else wanted
        for op in ops:
            route = table.routes.get(op)
            if route is None:
                if wanted is not None:
                    why = table.unrouted.get(op, "not routed")
                    notes.append(f"skipped {_public_name(op)} [{label}]: {why}")
                continue
            raw = raw_reference(route.provider, op)
            if raw is None:
                notes.append(f"skipped {_public_name(op)} via {route.provider}: no raw reference "
                             f"for this provider in tools/bench.py")
                continue
            cases.append(Case(label, eng, _public_name(op), op, route.provider, raw))
    return cases


def check_case(case: Case, key: bytes, pt: bytes, aad: bytes) -> None:
    """Make sure engine and raw reference compute the same AEAD (else the timing is moot)."""
    api = case.engine.aead
    s = api.encrypt(case.algo, key, pt, aad)
    if case.raw.decrypt(key, s.nonce, s.ciphertext_and_tag, aad) != pt:
        raise SystemExit(f"{case.algo}: raw reference does not decrypt the engine's output")
    nonce = bytes(len(s.nonce))
    wire = case.raw.encrypt(key, nonce, pt, aad)
    tag = wire[len(wire) - s.tag_size:]
    if api.decrypt(case.algo, key, nonce, wire[: len(wire) - s.tag_size], tag, aad) != pt:
        raise SystemExit(f"{case.algo}: engine does not decrypt the raw reference's output")


def run_case(case: Case, size: int, timing: Timing, shapes: Sequence[str] = OPS) -> list[dict[str, Any]]:
    info = case.engine.aead.info(case.algo)
    key = os.urandom(info["key_size"])
    pt = os.urandom(size)
    aad = os.urandom(AAD_SIZE)
    check_case(case, key, pt, aad)
    api = case.engine.aead

    sealed = api.encrypt(case.algo, key, pt, aad)
    nonce, wire = sealed.nonce, sealed.ciphertext_and_tag
    ct, tag = bytes(sealed.ciphertext), sealed.tag  # as parsed off a wire: separate bytes

    results: list[tuple[str, list[float], list[float], int]] = []
    if "encrypt" in shapes:
        enc_n, (raw_enc, eng_enc) = measure(
            [case.raw.encrypt_loop(key, pt, aad, info["nonce_size"]),
             engine_encrypt_loop(api, case.algo, key, pt, aad)], timing)
        results.append(("encrypt", raw_enc, eng_enc, enc_n))
    if "decrypt" in shapes or "open" in shapes:
        dec_n, (raw_dec, raw_join, eng_dec, eng_open) = measure(
            [case.raw.decrypt_loop(key, nonce, wire, aad),
             case.raw.decrypt_join_loop(key, nonce, ct, tag, aad),
             engine_decrypt_loop(api, case.algo, key, nonce, ct, tag, aad),
             engine_open_loop(api, case.algo, key, sealed, aad)], timing)
        results += [(op, raw, eng, dec_n) for op, raw, eng in (
            ("decrypt", raw_dec, eng_dec), ("decrypt/join", raw_join, eng_dec), ("open", raw_dec, eng_open))
            if op.split("/")[0] in shapes]
    fixed = os.urandom(info["nonce_size"])  # one caller nonce, the same message each call (a retry)
    if "encrypt-nonce" in shapes:
        n, (raw, eng) = measure([case.raw.encrypt_nonce_loop(key, fixed, pt, aad),
                                 engine_encrypt_nonce_loop(api, case.algo, key, fixed, pt, aad)], timing)
        results.append(("encrypt-nonce", raw, eng, n))
    keyed = api.keyed(case.algo, key)
    if "keyed-encrypt" in shapes:
        n, (raw, eng) = measure([case.raw.keyed_encrypt_loop(key, pt, aad, info["nonce_size"]),
                                 engine_keyed_encrypt_loop(keyed, pt, aad)], timing)
        results.append(("keyed-encrypt", raw, eng, n))
    if "keyed-nonce" in shapes:
        n, (raw, eng) = measure([case.raw.keyed_nonce_loop(key, fixed, pt, aad),
                                 engine_keyed_nonce_loop(keyed, fixed, pt, aad)], timing)
        results.append(("keyed-nonce", raw, eng, n))
    if "keyed-decrypt" in shapes:
        n, (raw, eng) = measure([case.raw.keyed_decrypt_loop(key, nonce, wire, aad),
                                 engine_keyed_decrypt_loop(keyed, nonce, wire, aad)], timing)
        results.append(("keyed-decrypt", raw, eng, n))

    rows = []
    for op, raw, eng, n in results:
        row: dict[str, Any] = {"config": case.label, "algo": case.algo, "operation": case.operation,
                               "provider": case.provider, "size": size, "op": op,
                               "iterations": n, "rounds": timing.rounds}
        row.update(compare(raw, eng, size))
        row["target"] = target_for(size, row)
        rows.append(row)
    return rows


def aa_control(case: Case, size: int, timing: Timing) -> dict[str, Any]:
    """The raw encrypt against an identical copy of itself: the noise floor of a comparison."""
    info = case.engine.aead.info(case.algo)
    key, pt, aad = os.urandom(info["key_size"]), os.urandom(size), os.urandom(AAD_SIZE)
    n, (a, b) = measure([case.raw.encrypt_loop(key, pt, aad, info["nonce_size"]),
                         case.raw.encrypt_loop(key, pt, aad, info["nonce_size"])], timing)
    stats = compare(a, b, size)
    return {"algo": case.algo, "provider": case.provider, "size": size, "iterations": n,
            "delta_us": stats["delta_us"], "delta_spread_us": stats["delta_spread_us"],
            "ratio": stats["ratio"], "us": stats["raw_us"]}


def warm_allocator(largest: int) -> str:
    """Raise glibc's dynamic mmap threshold above the message sizes (no-op elsewhere).

    glibc serves a large malloc from a fresh mmap until a freed mmapped chunk raises the
    threshold to its size (at most 32 MiB), and it returns heap memory to the OS once the free
    top exceeds twice that. Left alone, whether a 1 MiB call reuses memory or page-faults
    ~256 fresh pages per buffer depends on what the process allocated before, i.e. on the
    order of the benchmark; one large allocation and free up front makes it deterministic.
    """
    size = min(32 << 20, max(16 << 20, 4 * largest))
    block = bytes(size)
    del block
    return (f"warmed: one {size >> 20} MiB alloc/free first, so glibc's dynamic mmap/trim thresholds sit "
            f"above the message sizes (--malloc cold to skip)")


# -- reporting --------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import cryptography
    import nacl
    import xpscerpto

    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = str(backend.openssl_version_text())
    except Exception:
        openssl = "unknown"
    cpu, mhz = "", ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and not cpu:
                cpu = value
            elif key == "cpu MHz" and not mhz:
                mhz = value
            elif key == "flags" and not flags:
                have = set(value.split())
                flags = [f for f in ("aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f")
                         if f in have]
    except OSError:
        pass
    cpu = cpu or platform.processor() or "unknown"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_mhz": mhz,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "loadavg_start": load,
        "xpscerpto": getattr(xpscerpto, "__version__", "unknown"),
        "cryptography": cryptography.__version__,
        "openssl": openssl,
        "pynacl": nacl.__version__,
        "libsodium": f"bundled with PyNaCl {nacl.__version__}",
    }


def fmt_us(us: float) -> str:
    if abs(us) < 10:
        return f"{us:.3f}"
    if abs(us) < 1000:
        return f"{us:.2f}"
    return f"{us:.1f}"


def fmt_gbps(g: float) -> str:
    return f"{g:.3f}" if g < 10 else f"{g:.2f}"


HEADER = (f"{'algo':<18} {'provider':<8} {'size':>6} {'op':<13} {'raw us':>9} {'eng us':>9} "
          f"{'delta us':>15} {'raw GB/s':>8} {'eng GB/s':>8} {'raw/eng':>7}  target")


def row_line(row: dict[str, Any]) -> str:
    delta = f"{row['delta_us']:+.3f}±{row['delta_spread_us']:.3f}"
    t = row["target"]
    target = "" if t is None else f"{t['target']}: {verdict(t)}"
    return (f"{row['algo']:<18} {row['provider']:<8} {size_label(row['size']):>6} {row['op']:<13} "
            f"{fmt_us(row['raw_us']):>9} {fmt_us(row['engine_us']):>9} {delta:>15} "
            f"{fmt_gbps(row['raw_gbps']):>8} {fmt_gbps(row['engine_gbps']):>8} {row['ratio']:>7.3f}  "
            f"{target}").rstrip()


def hot_path_line(rows: list[dict[str, Any]]) -> str:
    """Engine call overhead at the smallest size, and what decrypt's ct||tag join costs at the largest."""
    small, large = min(r["size"] for r in rows), max(r["size"] for r in rows)
    at = {(r["op"], r["size"]): r for r in rows}
    parts = []
    for op in ("encrypt", "open", "decrypt", *EXTRA_SHAPES):
        row = at.get((op, small))
        if row is None:
            continue
        mark = f" {verdict(row['target'])}" if small == OVERHEAD_SIZE else ""
        parts.append(f"{op} {row['delta_us']:+.3f}{mark}")
    line = f"  {rows[0]['algo']:<18} {rows[0]['provider']:<8} " + "  ".join(parts)
    if ("decrypt", large) in at and ("open", large) in at:
        join = at["decrypt", large]["engine_us"] - at["open", large]["engine_us"]
        line += f"  | decrypt-open at {size_label(large)}: {join:+.2f} us"
    return line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny samples and 3 rounds (smoke test; figures are not meaningful)")
    ap.add_argument("--algos", help="comma-separated AEADs (public names or operation names); "
                                    "default: every AEAD the engine routes")
    ap.add_argument("--provider", help="force provider(s): NAME[,NAME] or 'all'; each gets an engine "
                                       "with EngineConfig(providers=(NAME,))")
    ap.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                    help="comma-separated message sizes in bytes (K/M suffixes allowed)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 20, quick 3)")
    ap.add_argument("--sample-ms", type=float, help="target duration of one sample (default 30, quick 0.5)")
    ap.add_argument("--malloc", choices=("warm", "cold"), default="warm",
                    help="warm (default): one large alloc/free first, so glibc's dynamic mmap/trim "
                         "thresholds sit above the message sizes and figures do not depend on what ran "
                         "before; cold: leave the allocator as the process left it (large buffers may "
                         "be page-faulted in on every call)")
    ap.add_argument("--shapes", default=",".join(OPS),
                    help=f"comma-separated call shapes, or 'all' (default: {','.join(OPS)}; also "
                         f"{','.join(EXTRA_SHAPES)})")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.algos is not None:
        lookup = _aead_lookup()
        args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in args.algos if a.upper() not in lookup]
        if unknown:
            ap.error(f"unknown AEAD(s): {', '.join(unknown)} "
                     f"(known: {', '.join(_public_name(op) for op in sorted(set(lookup.values())))})")
    if args.provider is not None:
        args.provider = [p.strip() for p in args.provider.split(",") if p.strip()]
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    known = (*OPS, *EXTRA_SHAPES)
    args.shapes = list(known) if args.shapes == "all" else [x.strip() for x in args.shapes.split(",") if x.strip()]
    unknown = [x for x in args.shapes if x not in known]
    if unknown or not args.shapes:
        ap.error(f"unknown shape(s): {', '.join(unknown) or '(none)'} (known: {', '.join(known)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 20)
    sample_ms = args.sample_ms or (0.5 if args.quick else 30.0)
    timing = Timing(sample_ns=sample_ms * 1e6, calib_ns=sample_ms * 1e6 / 8, rounds=rounds)
    sizes = list(dict.fromkeys(args.sizes))
    allocator = warm_allocator(max(sizes)) if args.malloc == "warm" else "cold (process default)"

    env = environment()
    env["allocator"] = allocator
    print("XPScerpto AEAD benchmark: engine API vs the same provider called directly (one run)")
    print(f"  python       {env['python']} on {env['platform']}")
    mhz = f" @ {float(env['cpu_mhz']):.0f} MHz" if env["cpu_mhz"] else ""
    print(f"  cpu          {env['cpu']}{mhz}, {env['logical_cpus']} logical CPUs "
          f"({env['usable_cpus']} usable), flags: {' '.join(env['cpu_flags']) or '-'}")
    print(f"  load avg     {env['loadavg_start']} (at start)")
    print(f"  libraries    xpscerpto {env['xpscerpto']}; cryptography {env['cryptography']} "
          f"({env['openssl']}); PyNaCl {env['pynacl']} (bundled libsodium)")
    print(f"  method       {rounds} interleaved rounds (raw/engine order alternating), ~{sample_ms:g} ms per "
          f"sample, GC off in samples;\n               figures from the quietest half of the rounds "
          f"(lowest raw+engine): median us; delta, ratio = median of per-round pairs; ± = IQR/2")
    print(f"  allocator    {platform.libc_ver()[0] or 'libc'} {platform.libc_ver()[1]}; {allocator}")
    print(f"  inputs       bytes key (fresh per size), {AAD_SIZE} B aad; engine encrypt draws its nonce "
          f"(os.urandom), raw encrypt calls os.urandom itself")
    print("  columns      raw/eng = raw_time / engine_time (engine throughput as a fraction of raw)")
    if args.quick:
        print("  NOTE         --quick: samples are far too short for meaningful figures")

    notes: list[str] = []
    t_start = time.perf_counter()
    cases = build_cases(args.algos, args.provider, notes)
    print("  raw calls    " + "\n               ".join(
        sorted({f"{c.provider}: {c.raw.describe(c.engine.aead.info(c.algo)['nonce_size'])[0]}; "
                f"{c.raw.describe(0)[1]}" for c in cases})))
    print("  engine calls eng.aead.encrypt(algo, key, pt, aad); eng.aead.decrypt(algo, key, nonce, ct, tag, "
          "aad); eng.aead.open(algo, key, sealed, aad)")
    if set(args.shapes) - set(OPS):
        print("  more shapes  encrypt-nonce: eng.aead.encrypt(..., nonce=n); keyed-*: k = eng.aead.keyed(algo, key); "
              "k.encrypt(pt, aad[, n]); k.decrypt(nonce, ct_and_tag, aad)\n"
              "               raw keyed: Cls(key) built once (PyNaCl: the stateless call); the *-nonce shapes "
              "reuse one nonce for one message")
    for note in notes:
        print(f"  note         {note}")

    control = None
    if cases:
        control = aa_control(cases[0], min(sizes), timing)
        print(f"  A/A control  raw {control['algo']} encrypt at {size_label(control['size'])} vs itself: "
              f"delta {control['delta_us']:+.3f}±{control['delta_spread_us']:.3f} us, "
              f"ratio {control['ratio']:.3f} (what noise alone looks like)")
    print()
    print(HEADER)
    print("-" * len(HEADER))

    all_rows: list[dict[str, Any]] = []
    hot_paths: list[str] = []
    for case in cases:
        case_rows: list[dict[str, Any]] = []
        for size in sizes:
            for row in run_case(case, size, timing, args.shapes):
                print(row_line(row), flush=True)
                case_rows.append(row)
        hot_paths.append(hot_path_line(case_rows))
        all_rows.extend(case_rows)
        print()

    elapsed = time.perf_counter() - t_start
    if hot_paths:
        small = min(sizes)
        print(f"hot path: engine call overhead in us (median paired delta at {size_label(small)}"
              + (f"; target +{OVERHEAD_TARGET_US} us)" if small == OVERHEAD_SIZE else ")")
              + "; decrypt-open = cost of decrypt's ct||tag join")
        for line in hot_paths:
            print(line)
    targets = [r for r in all_rows if r["target"] is not None]
    over = [r for r in targets if r["size"] == OVERHEAD_SIZE]
    thr = [r for r in targets if r["size"] in THROUGHPUT_SIZES]
    print()
    print("targets (informational; exit status is 0 regardless; '?' = the IQR/2 noise band straddles "
          "the threshold, rerun with more --rounds):")
    if over:
        missed = [f"{r['algo']}/{r['provider']} {r['op']} {r['delta_us']:+.3f}{_q(r)}"
                  for r in over if not r["target"]["met"]]
        print(f"  delta <= +{OVERHEAD_TARGET_US} us at 64B:      MET {len(over) - len(missed)}/{len(over)}"
              + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    if thr:
        missed = [f"{r['algo']}/{r['provider']} {size_label(r['size'])} {r['op']} {r['ratio']:.3f}"
                  f"{_q(r)}" for r in thr if not r["target"]["met"]]
        print(f"  raw/eng >= {THROUGHPUT_TARGET} at 64KiB, 1MiB:  MET {len(thr) - len(missed)}/{len(thr)}"
              + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    if not targets:
        print("  (no target sizes measured)")
    try:
        load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load_end = "n/a"
    print(f"elapsed {elapsed:.1f} s; load avg at end {load_end}")

    if args.json is not None:
        doc = {
            "environment": {**env, "loadavg_end": load_end},
            "settings": {"rounds": rounds, "sample_ms": sample_ms, "quick": args.quick, "sizes": sizes,
                         "malloc": args.malloc, "shapes": args.shapes,
                         "algos": args.algos, "providers": args.provider, "aad_size": AAD_SIZE},
            "targets": {"overhead_us_at_64B": OVERHEAD_TARGET_US, "throughput_ratio": THROUGHPUT_TARGET,
                        "throughput_sizes": list(THROUGHPUT_SIZES)},
            "notes": notes,
            "aa_control": control,
            "rows": all_rows,
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
