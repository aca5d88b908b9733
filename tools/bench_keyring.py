#!/usr/bin/env python3
"""Keyring benchmark: ``Keyring.encrypt``/``decrypt`` vs Tink's AEAD primitive vs the raw library call.

Three ways to encrypt a message, timed in one run, per algorithm, message size and operation:

* ``keyring``: ``ring.encrypt(name, pt, aad)`` / ``ring.decrypt(blob, aad)``: a named, managed key;
  the blob carries a 46-byte header (format, key id, version, algorithm, 32-byte key commitment)
  and the nonce, all authenticated as associated data ahead of the caller's aad; encryptions
  are counted against the version's limit.
* ``tink``: ``handle.primitive(aead.Aead).encrypt(pt, aad)`` from a keyset made with Tink's
  ``AES256_GCM`` / ``XCHACHA20_POLY1305`` template: a 5-byte key-id prefix, key rotation by
  keyset (the nearest peer to the keyring's self-describing blob). Optional: ``tink`` is the
  ``bench`` extra; without it the run reports keyring vs raw only.
* ``raw``: what a careful user writes with a raw key and no key management:
  ``AESGCM(key).encrypt(os.urandom(12), pt, aad)`` (cryptography), or PyNaCl's
  ``crypto_aead_xchacha20poly1305_ietf_encrypt`` for XChaCha20 (cryptography has no XChaCha);
  no key id, the caller stores the nonce.

Target (from the issue): the keyring per call is no slower than Tink, i.e. ring/tink <= 1.
It is reported as MET/MISSED for information only (a '?' when the noise band straddles it);
this is a report, not a test, and it always exits 0. Read ratios within the run, never a bare
absolute number.

Method (as tools/bench.py): the peers' loops are interleaved in every round (order reversed on
odd rounds), each sample runs a calibrated number of calls (~30 ms; for keyring encryption a
whole number of usage blocks, so every sample pays its share of counter reservations), the
garbage collector is off during a sample, and figures come from the quietest half of the rounds
(lowest total time): per-call times are medians, ratios are medians of per-round pairs, ± is
half their interquartile range. An A/A control (the raw call against itself) shows what noise
alone looks like.

A footer breaks the keyring's time per call into its steps, each timed in isolation with the
same method (engine AEAD call, library work, key setup, nonce, header build, aad concatenation,
output join, handle and counter bookkeeping, SQLite usage reservation, ...).

Usage:
    python tools/bench_keyring.py [--quick] [--sizes 64,64K] [--algos AES-256-GCM,XCHACHA20-POLY1305]
                                  [--rounds N] [--breakdown-rounds N] [--sample-ms MS] [--tmpdir DIR]
                                  [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script, however it runs
from _benchlib import Loop, Timing, parse_sizes, sample, size_label

DEFAULT_SIZES = (64, 65536)
DEFAULT_ALGOS = ("AES-256-GCM", "XCHACHA20-POLY1305")
OPS = ("encrypt", "decrypt")
AAD_SIZE = 16
TARGET = 1.0  # keyring time / tink time per call
TINK_TEMPLATES = {"AES-256-GCM": "AES256_GCM", "XCHACHA20-POLY1305": "XCHACHA20_POLY1305"}
PEERS = ("raw", "tink", "keyring")
SHORT = {"XCHACHA20-POLY1305": "XCHACHA20"}  # column headings

# A timing loop: run the call n times, return elapsed nanoseconds.


# -- timing loops -----------------------------------------------------------------------------


def timed(stmt: str, **names: Any) -> Loop:
    """A loop running ``stmt`` n times with ``names`` bound to locals, inlined as timeit does.

    Every peer, every cost component and the empty baseline go through this one template, so
    loop overhead and name lookups are identical everywhere and the statement printed is exactly
    the statement timed (no lambda or helper frame inside the loop).
    """
    if "n" in names:
        raise ValueError("timed(): 'n' is the loop count; bind the value under another name")
    binds = "".join(f"    {k} = _names[{k!r}]\n" for k in names)
    src = (f"def run(n):\n{binds}    clock = _clock\n    t0 = clock()\n"
           f"    for _ in _repeat(None, n):\n        {stmt}\n    return clock() - t0\n")
    scope: dict[str, Any] = {"_names": names, "_clock": time.perf_counter_ns, "_repeat": repeat}
    exec(compile(src, f"<timed: {stmt}>", "exec"), scope)
    return scope["run"]  # type: ignore[no-any-return]


# -- measurement (the core of tools/bench.py) -------------------------------------------------


def calibrate(loops: Sequence[Loop], timing: Timing, multiple: int = 1) -> int:
    """Calls per sample so the slowest loop takes ~``sample_ns``, rounded up to ``multiple``."""
    n = 1
    while True:
        worst = max(sample(loop, n) for loop in loops)
        if worst >= timing.calib_ns or n >= 1 << 26:
            break
        n = max(n * 2, int(n * min(100.0, timing.calib_ns * 1.2 / max(worst, 1))))
    n = max(1, round(timing.sample_ns / (worst / n)))
    return -(-n // multiple) * multiple


def measure(loops: Sequence[Loop], timing: Timing, multiple: int = 1) -> tuple[int, list[list[float]]]:
    """Interleave the loops for ``timing.rounds`` rounds; per-call ns for each loop and round."""
    n = calibrate(loops, timing, multiple)
    per_call: list[list[float]] = [[] for _ in loops]
    order = list(range(len(loops)))
    gc.collect()
    for r in range(timing.rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            per_call[i].append(sample(loops[i], n) / n)
    return n, per_call


def quiet_rounds(per_loop: Sequence[Sequence[float]]) -> list[int]:
    """The quietest half of the rounds (lowest total over the group's loops), keeping rounds whole.

    Noise on a shared machine only ever adds time, and it hits a round's samples together or not
    at all, so the quiet rounds are the ones to compare.
    """
    rounds = len(per_loop[0])
    order = sorted(range(rounds), key=lambda r: sum(loop[r] for loop in per_loop))
    return sorted(order[: max(1, (rounds + 1) // 2)])


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range (0 with fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / 2


def paired(a: Sequence[float], b: Sequence[float], rounds: Sequence[int]) -> dict[str, float]:
    """a/b and a-b over the same rounds: medians of the per-round pairs, ± = IQR/2."""
    ratios = [a[r] / b[r] for r in rounds]
    deltas = [(a[r] - b[r]) / 1e3 for r in rounds]
    return {"ratio": statistics.median(ratios), "ratio_spread": spread(ratios),
            "delta_us": statistics.median(deltas), "delta_spread_us": spread(deltas)}


# -- the peers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawLib:
    """The library call behind one algorithm, written as user code (statements for ``timed``)."""

    label: str
    nonce_size: int
    names: dict[str, Any]
    encrypt: str  # raw key per call, fresh nonce: the "raw" peer
    decrypt: str
    work_encrypt: str  # the library's AEAD work with any key schedule already built (``c``)
    work_decrypt: str
    key_setup: str | None  # the per-call key object construction, if the library has one
    buffers_ok: bool  # accepts a memoryview for the ciphertext (else it must be bytes)

    def bind(self, key: bytes | bytearray, **more: Any) -> dict[str, Any]:
        out = {**self.names, "key": key, "urandom": os.urandom, **more}
        if self.key_setup is not None:
            out["c"] = eval(self.key_setup, {}, out)  # the cached key object for work_*
        return out


def raw_library(algo: str) -> RawLib:
    if algo == "AES-256-GCM":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return RawLib("cryptography", 12, {"AESGCM": AESGCM},
                      "AESGCM(key).encrypt(urandom(12), pt, aad)", "AESGCM(key).decrypt(nonce, wire, aad)",
                      "c.encrypt(nonce, pt, aad)", "c.decrypt(nonce, wire, aad)", "AESGCM(key)", True)
    if algo == "XCHACHA20-POLY1305":
        import nacl.bindings as nb

        names = {"xchacha_encrypt": nb.crypto_aead_xchacha20poly1305_ietf_encrypt,
                 "xchacha_decrypt": nb.crypto_aead_xchacha20poly1305_ietf_decrypt}
        return RawLib("PyNaCl (libsodium)", 24, names,
                      "xchacha_encrypt(pt, aad, urandom(24), key)", "xchacha_decrypt(wire, aad, nonce, key)",
                      "xchacha_encrypt(pt, aad, nonce, key)", "xchacha_decrypt(wire, aad, nonce, key)", None, False)
    raise SystemExit(f"no raw reference for {algo} in tools/bench_keyring.py (known: {', '.join(DEFAULT_ALGOS)})")


def raw_roundtrip(lib: RawLib, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    """The raw library's ciphertext || tag for a fixed nonce (checked to decrypt)."""
    ns = lib.bind(key, nonce=nonce, pt=pt, aad=aad)
    wire: bytes = eval(lib.work_encrypt, {}, ns)
    if eval(lib.decrypt, {}, {**ns, "wire": wire}) != pt:
        raise SystemExit(f"{lib.label}: raw round trip failed")
    return wire


def load_tink() -> tuple[Any, str | None, str]:
    """(tink module with ``aead`` registered, or None; its version; why not, if not)."""
    try:
        import tink
        from tink import aead

        aead.register()
    except ImportError as exc:
        return None, None, (f"tink is not installed ({exc}): keyring vs raw only; install the "
                            "bench extra (pip install 'tink>=1.10') to judge the target")
    except Exception as exc:  # a broken install (e.g. a protobuf mismatch) must not end the run
        return None, None, f"tink failed to load ({type(exc).__name__}: {exc}): keyring vs raw only"
    return tink, importlib.metadata.version("tink"), ""


def tink_primitive(tink: Any, algo: str, notes: list[str]) -> Any:
    from tink import aead

    template = getattr(aead.aead_key_templates, TINK_TEMPLATES.get(algo, ""), None)
    if template is None:
        notes.append(f"tink has no template for {algo}: no tink rows for it")
        return None
    return tink.new_keyset_handle(template).primitive(aead.Aead)


# -- one algorithm ----------------------------------------------------------------------------


@dataclass
class Subject:
    """One algorithm's peers: the keyring (a key named ``name``), Tink, the raw library."""

    algo: str
    name: str
    lib: RawLib
    ring: Any
    tink: Any
    provider: str


def inputs(subject: Subject, size: int) -> dict[str, Any]:
    """Message, aad and every peer's ciphertext for one size, checked to decrypt."""
    from xpscerpto.keyring.envelope import HEADER

    algo, lib = subject.algo, subject.lib
    pt, aad, key = os.urandom(size), os.urandom(AAD_SIZE), os.urandom(32)
    nonce = os.urandom(lib.nonce_size)
    blob = subject.ring.encrypt(subject.name, pt, aad)
    if subject.ring.decrypt(blob, aad) != pt or len(blob) != HEADER.size + lib.nonce_size + size + 16:
        raise SystemExit(f"{algo}: keyring round trip failed")
    out = {"pt": pt, "aad": aad, "key": key, "nonce": nonce, "blob": blob,
           "wire": raw_roundtrip(lib, key, nonce, pt, aad)}
    if subject.tink is not None:
        tct = subject.tink.encrypt(pt, aad)
        if subject.tink.decrypt(tct, aad) != pt or len(tct) != 5 + lib.nonce_size + size + 16:
            raise SystemExit(f"{algo}: tink round trip failed")
        out["tct"] = tct
    return out


def peer_loops(subject: Subject, op: str, d: dict[str, Any]) -> dict[str, Loop]:
    lib = subject.lib
    loops = {"raw": timed(lib.encrypt if op == "encrypt" else lib.decrypt,
                          **lib.bind(d["key"], pt=d["pt"], aad=d["aad"], nonce=d["nonce"], wire=d["wire"]))}
    if subject.tink is not None:
        loops["tink"] = (timed("p.encrypt(pt, aad)", p=subject.tink, pt=d["pt"], aad=d["aad"]) if op == "encrypt"
                         else timed("p.decrypt(ct, aad)", p=subject.tink, ct=d["tct"], aad=d["aad"]))
    loops["keyring"] = (timed("ring.encrypt(name, pt, aad)", ring=subject.ring, name=subject.name, pt=d["pt"],
                              aad=d["aad"]) if op == "encrypt"
                        else timed("ring.decrypt(blob, aad)", ring=subject.ring, blob=d["blob"], aad=d["aad"]))
    return loops


def run_cell(subject: Subject, size: int, op: str, timing: Timing) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time the peers for one (algorithm, size, op); per-peer rows and the comparison."""
    d = inputs(subject, size)
    loops = peer_loops(subject, op, d)
    multiple = subject.ring.config.usage_block if op == "encrypt" else 1
    n, per_call = measure(list(loops.values()), timing, multiple)
    quiet = quiet_rounds(per_call)
    times = dict(zip(loops, per_call, strict=True))
    rows = []
    for peer, ns in times.items():
        med = statistics.median(ns[r] for r in quiet)
        rows.append({"peer": peer, "algo": subject.algo, "size": size, "op": op, "us": med / 1e3,
                     "gbps": size / med, "all_median_us": statistics.median(ns) / 1e3, "min_us": min(ns) / 1e3,
                     "iterations": n, "rounds": timing.rounds, "rounds_used": len(quiet)})
    cmp: dict[str, Any] = {"algo": subject.algo, "size": size, "op": op}
    for peer in ("tink", "raw"):
        stats = paired(times["keyring"], times[peer], quiet) if peer in times else None
        cmp[f"keyring_over_{peer}"] = stats
    t = cmp["keyring_over_tink"]
    cmp["target"] = None if t is None else {
        "target": f"keyring/tink <= {TARGET:g}", "value": t["ratio"], "met": t["ratio"] <= TARGET,
        "uncertain": abs(t["ratio"] - TARGET) <= t["ratio_spread"]}
    return rows, cmp


def aa_control(lib: RawLib, size: int, timing: Timing) -> dict[str, Any]:
    """The raw encrypt against an identical copy of itself: the noise floor of a ratio."""
    names = lib.bind(os.urandom(32), pt=os.urandom(size), aad=os.urandom(AAD_SIZE))
    n, (a, b) = measure([timed(lib.encrypt, **names), timed(lib.encrypt, **names)], timing)
    stats = paired(b, a, quiet_rounds([a, b]))
    return {"size": size, "iterations": n, "us": statistics.median(a) / 1e3, **stats}


# -- where the keyring's time goes ------------------------------------------------------------


class _StandInHandle:
    """The fields of the keyring's cached key handle that its hot path touches."""

    __slots__ = ("counter", "decrypt_until", "decryptions", "last_used", "recheck_at")

    def __init__(self) -> None:
        self.counter = itertools.count(-(1 << 62))  # a reserved block that never runs out
        self.recheck_at = self.decrypt_until = math.inf
        self.decryptions, self.last_used = 0, 0.0


class _StandInRing:
    """The attributes the keyring's hot path loads from ``self``."""

    __slots__ = ("_active", "_by_prefix", "_handles", "clock", "handle")

    def __init__(self, name: str, key_ref: tuple[bytes, int], prefix: bytes) -> None:
        h = self.handle = _StandInHandle()
        self._active, self._handles, self._by_prefix = {name: h}, {key_ref: h}, {prefix: h}
        self.clock = time.time


# Each component: (key, label, statement or None when derived by difference).
Parts = tuple[tuple[str, str, str | None], ...]
ENCRYPT_PARTS: Parts = (
    ("work", "library AEAD work, key schedule cached", None),
    ("dispatch", "= KeyedAead.encrypt: checks, Sealed", None),
    ("nonce", "nonce: next of a batch of os.urandom output", "next_(NONCES[ns], None) or refill(ns)"),
    ("header", "header: prefix + nonce", "prefix + nonce"),
    ("aad", "associated data: header + aad", "header + aad"),
    ("join", "output: header + ct||tag", "header + ct"),
    ("book", "handle lookup, clock, counter step", "h = st._active.get(name); now = st.clock(); "
     "h is None or now >= h.recheck_at or next(h.counter) >= 0; h.last_used = now"),
    ("reserve", "usage reservation, amortized (below)", None),
    ("residual", "= residual (method frame, loads)", None),
)
SHORT_LABELS = {"work": "library work", "dispatch": "engine dispatch", "nonce": "nonce draw",
                "header": "header build", "aad": "aad concat", "join": "output join", "book": "bookkeeping",
                "reserve": "usage reservation", "residual": "residual", "parse": "header lookup"}
DECRYPT_PARTS: Parts = (
    ("work", "library AEAD work, key schedule cached", None),
    ("dispatch", "= KeyedAead.decrypt: checks", None),
    ("parse", "header: prefix lookup, nonce and ciphertext slices", "h = st._by_prefix.get(blob[:hs]); "
     "nonce = blob[hs:hn]; wire = blob[hn:] if len(blob) - hn < 4096 else memoryview(blob)[hn:]"),
    ("aad", "associated data: header + aad", "blob[:hn] + aad"),
    ("book", "clock, deadlines, counters", "now = st.clock(); h is not None and now < h.recheck_at "
     "and now < h.decrypt_until; h.decryptions += 1; h.last_used = now"),
    ("residual", "= residual (method frame, loads)", None),
)


def breakdown(subject: Subject, size: int, op: str, timing: Timing, reserve_us: float) -> dict[str, Any]:
    """Time the keyring call next to each of its steps in isolation, in the same rounds.

    Stand-ins (a key, a header, a handle with the keyring's fields) replay the steps with the
    same statements as engine/keyring/keyring.py; the engine and library calls are the real
    ones. A step's time is the median of its quieter half of samples (noise hits the many short
    loops of a round unevenly, so each loop keeps its own quiet samples) minus the empty loop's;
    rows marked '=' are by difference, so the rows add up to the keyring total. The usage
    reservation comes from :func:`reservation`, spread over one usage block.
    """
    from xpscerpto.keyring.envelope import CODES, HEADER

    algo, lib, eng = subject.algo, subject.lib, subject.ring.engine
    d = inputs(subject, size)
    pt, aad = d["pt"], d["aad"]
    kid, commitment = os.urandom(8), os.urandom(32)
    prefix = HEADER.pack(1, kid, 1, CODES[algo], commitment)
    nonce = os.urandom(lib.nonce_size)
    header = prefix + nonce
    key_bytes = os.urandom(32)
    keyed = eng.aead.keyed(algo, key_bytes, nonce_reuse="caller")  # what a keyring handle holds
    sealed = keyed.encrypt(pt, header + aad, nonce)
    blob = header + sealed.ciphertext_and_tag  # a stand-in blob under the stand-in key
    hs, n = HEADER.size, len(header)
    st = _StandInRing(subject.name, (kid, 1), prefix)
    loops: dict[str, Loop] = {"keyring": timed("ring.encrypt(name, pt, aad)", ring=subject.ring,
                                               name=subject.name, pt=pt, aad=aad) if op == "encrypt"
                              else timed("ring.decrypt(blob, aad)", ring=subject.ring, blob=d["blob"], aad=aad)}
    if subject.tink is not None:
        loops["tink"] = (timed("p.encrypt(pt, aad)", p=subject.tink, pt=pt, aad=aad) if op == "encrypt"
                         else timed("p.decrypt(ct, aad)", p=subject.tink, ct=d["tct"], aad=aad))
    # What KeyedAead hands the library: its SecretBytes' bytearray (converted by the libsodium
    # wrapper, so that copy lands in "dispatch"; the raw binding itself takes bytes only).
    lib_key = bytearray(key_bytes) if lib.buffers_ok else key_bytes
    if op == "encrypt":
        loops["engine"] = timed("k.encrypt(pt, aad, nonce).ciphertext_and_tag", k=keyed, pt=pt,
                                aad=header + aad, nonce=nonce)
        loops["work"] = timed(lib.work_encrypt, **lib.bind(lib_key, pt=pt, aad=header + aad, nonce=nonce))
        from xpscerpto._nonce_source import NONCES, refill  # what Keyring.encrypt draws its nonce from

        names = {"NONCES": NONCES, "refill": refill, "next_": next, "ns": lib.nonce_size, "prefix": prefix,
                 "nonce": nonce, "header": header,
                 "aad": aad, "ct": sealed.ciphertext_and_tag, "st": st, "name": subject.name}
        parts = ENCRYPT_PARTS
    else:
        wire = blob[n:] if len(blob) - n < 4096 else memoryview(blob)[n:]  # as Keyring.decrypt passes it
        loops["engine"] = timed("k.decrypt(nonce, wire, aad)", k=keyed, nonce=nonce, wire=wire, aad=header + aad)
        loops["work"] = timed(lib.work_decrypt, **lib.bind(
            lib_key, nonce=nonce, aad=header + aad, wire=wire if lib.buffers_ok else bytes(wire)))
        # "hn", not "n": timed() binds names as locals of run(n), and "n" would shadow its count.
        names = {"blob": blob, "hs": hs, "hn": n, "aad": aad, "st": st, "h": st.handle}
        parts = DECRYPT_PARTS
    for key_, _, stmt in parts:
        if stmt is not None:
            loops[key_] = timed(stmt, **names)
    loops["empty"] = timed("pass")

    multiple = subject.ring.config.usage_block if op == "encrypt" else 1
    n, per_call = measure(list(loops.values()), timing, multiple)
    times = {k: low_half_median(v) for k, v in zip(loops, per_call, strict=True)}
    us = {k: (v - times["empty"]) / 1e3 for k, v in times.items() if k != "empty"}

    # KeyedAead builds the library's key object once per table, so there is no per-call setup.
    c: dict[str, float | None] = {"work": us["work"]}
    c["dispatch"] = us["engine"] - us["work"]
    if op == "encrypt":
        c.update({k: us[k] for k in ("nonce", "header", "aad", "join", "book")})
        c["reserve"] = reserve_us
        c["residual"] = us["keyring"] - us["engine"] - sum(us[k] for k in ("nonce", "header", "aad", "join",
                                                                             "book")) - reserve_us
    else:
        c.update({k: us[k] for k in ("parse", "aad", "book")})
        c["residual"] = us["keyring"] - us["engine"] - sum(us[k] for k in ("parse", "aad", "book"))
    return {"algo": algo, "size": size, "op": op, "iterations": n, "rounds": timing.rounds,
            "empty_loop_ns": times["empty"], "components_us": c, "keyring_us": us["keyring"],
            "tink_us": us.get("tink")}


def low_half_median(samples: Sequence[float]) -> float:
    """The median of the quieter half of one loop's samples (noise only ever adds time)."""
    ordered = sorted(samples)
    return statistics.median(ordered[: max(1, (len(ordered) + 1) // 2)])


def reservation(ring_each: Any, ring_never: Any, name: str, timing: Timing) -> dict[str, Any]:
    """What one trip through the keyring's encryption slow path costs, measured directly.

    Every ``usage_block`` encryptions the keyring re-reads the key and version rows and
    reserves the next block in a write transaction (``synchronous=FULL``: an fsync). A keyring
    with ``usage_block=1`` takes that path on every call, one whose block never runs out never
    does; their per-call difference is one trip, large enough to measure well above the noise.
    """
    pt, aad = os.urandom(64), os.urandom(AAD_SIZE)
    loops = [timed("ring.encrypt(name, pt, aad)", ring=r, name=name, pt=pt, aad=aad) for r in (ring_each, ring_never)]
    n, (each, never) = measure(loops, timing)
    stats = paired(each, never, quiet_rounds([each, never]))
    return {"trip_us": stats["delta_us"], "trip_spread_us": stats["delta_spread_us"], "iterations": n}


def filesystem(path: Path) -> str:
    """The mount point and type holding ``path`` (from /proc/mounts; "unknown" elsewhere)."""
    best = ("", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and path.as_posix().startswith(parts[1].rstrip("/") + "/") \
                    and len(parts[1]) > len(best[0]):
                best = (parts[1], parts[2])
    except OSError:
        pass
    return f"{best[1]} (mounted at {best[0] or '?'})"


# -- reporting --------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import cryptography
    import nacl

    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = str(backend.openssl_version_text())
    except Exception:
        openssl = "unknown"
    cpu, mhz, flags = "", "", list[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "model name" and not cpu:
                cpu = value
            elif key == "cpu MHz" and not mhz:
                mhz = value
            elif key == "flags" and not flags:
                have = set(value.split())
                flags = [f for f in ("aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f") if f in have]
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        xps = importlib.metadata.version("xpscerpto")
    except importlib.metadata.PackageNotFoundError:
        xps = "unknown"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu or platform.processor() or "unknown",
        "cpu_mhz": mhz,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "loadavg_start": loadavg(),
        "xpscerpto": xps,
        "cryptography": cryptography.__version__,
        "openssl": openssl,
        "pynacl": nacl.__version__,
    }


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    if abs(us) < 10:
        return f"{us:.3f}"
    return f"{us:.2f}" if abs(us) < 1000 else f"{us:.1f}"


def fmt_gbps(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    g = row["gbps"]
    return f"{g:.3f}" if g < 10 else f"{g:.2f}"


def fmt_ratio(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{stats['ratio']:.2f}±{stats['ratio_spread']:.2f}"


def verdict(target: dict[str, Any] | None) -> str:
    if target is None:
        return "n/a (no tink)"
    return ("MET" if target["met"] else "MISSED") + ("?" if target["uncertain"] else "")


TABLE = (f"{'algo':<18} {'size':>5} {'op':<7} {'raw us':>8} {'tink us':>8} {'ring us':>8} {'raw GB/s':>8} "
         f"{'tink GB/s':>9} {'ring GB/s':>9} {'ring/tink':>10} {'ring/raw':>10}  ring <= tink")


def table_line(rows: list[dict[str, Any]], cmp: dict[str, Any]) -> str:
    by = {r["peer"]: r for r in rows}
    return (f"{cmp['algo']:<18} {size_label(cmp['size']):>5} {cmp['op']:<7} "
            + " ".join(f"{fmt_us(by[p]['us'] if p in by else None):>8}" for p in PEERS)
            + f" {fmt_gbps(by.get('raw')):>8} {fmt_gbps(by.get('tink')):>9} {fmt_gbps(by.get('keyring')):>9} "
            f"{fmt_ratio(cmp['keyring_over_tink']):>10} {fmt_ratio(cmp['keyring_over_raw']):>10}  "
            f"{verdict(cmp['target'])}")


def print_breakdown(cells: list[dict[str, Any]], tink: bool) -> None:
    for op, parts in (("encrypt", ENCRYPT_PARTS), ("decrypt", DECRYPT_PARTS)):
        cols = [c for c in cells if c["op"] == op]
        if not cols:
            continue
        print(f"  {op:<48}" + "".join(f"{SHORT.get(c['algo'], c['algo']):>12}" for c in cols))
        print(f"  {'(us per call)':<48}" + "".join(f"{size_label(c['size']):>12}" for c in cols))
        for key, label, _ in parts:
            print(f"    {label:<46}" + "".join(f"{fmt_us(c['components_us'][key]):>12}" for c in cols))
        print(f"    {'keyring call, total':<46}" + "".join(f"{fmt_us(c['keyring_us']):>12}" for c in cols))
        if tink:
            print(f"    {'tink call, same rounds':<46}" + "".join(f"{fmt_us(c['tink_us']):>12}" for c in cols))
            gaps = ["-" if c["tink_us"] is None else f"{c['keyring_us'] - c['tink_us']:+.3f}" for c in cols]
            print(f"    {'keyring - tink':<46}" + "".join(f"{g:>12}" for g in gaps))
        print()


def closing_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Per cell: the gap to Tink, how much of it the library alone explains, the keyring's own costs."""
    out = []
    for c in cells:
        own = {k: v for k, v in c["components_us"].items() if k != "work" and v is not None}
        top = sorted(own.items(), key=lambda kv: -kv[1])[:4]
        vs = ""
        if c["tink_us"] is not None:
            vs = (f"keyring - tink {c['keyring_us'] - c['tink_us']:+.3f}; library work alone - tink's whole call "
                  f"{c['components_us']['work'] - c['tink_us']:+.3f};\n{'':<35}")
        out.append(f"  {c['algo']:<18} {size_label(c['size']):>5} {c['op']:<7} {vs}keyring's own costs "
                   f"{sum(own.values()):.3f}, largest: " + ", ".join(f"{SHORT_LABELS[k]} {v:.3f}" for k, v in top))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny samples and 3 rounds (smoke test; figures are not meaningful)")
    ap.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                    help="comma-separated message sizes in bytes, K/M suffixes allowed (default 64,64K)")
    ap.add_argument("--algos", default=",".join(DEFAULT_ALGOS),
                    help=f"comma-separated keyring AEADs (default {','.join(DEFAULT_ALGOS)})")
    ap.add_argument("--rounds", type=int, help="interleaved rounds for the table (default 20, quick 3)")
    ap.add_argument("--breakdown-rounds", type=int, help="rounds for the cost breakdown (default 10, quick 3)")
    ap.add_argument("--sample-ms", type=float, help="target duration of one sample (default 30, quick 0.5)")
    ap.add_argument("--tmpdir", type=Path, help="where the throwaway keyring homes go (default: the system "
                                                "temp dir); reservations fsync there, so its disk matters")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    args.algos = [a.strip().upper() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in args.algos if a not in DEFAULT_ALGOS]
    if unknown:
        ap.error(f"unknown algorithm(s): {', '.join(unknown)} (known: {', '.join(DEFAULT_ALGOS)})")
    for name in ("rounds", "breakdown_rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sample_ms = args.sample_ms or (0.5 if args.quick else 30.0)
    rounds = args.rounds or (3 if args.quick else 20)
    b_rounds = args.breakdown_rounds or (3 if args.quick else 10)
    timing = Timing(sample_ns=sample_ms * 1e6, calib_ns=sample_ms * 1e6 / 8, rounds=rounds)
    b_timing = Timing(sample_ns=timing.sample_ns, calib_ns=timing.calib_ns, rounds=b_rounds)
    sizes = list(dict.fromkeys(args.sizes))

    from xpscerpto.config import KeyringConfig
    from xpscerpto.keyring import Keyring

    env = environment()
    tink, tink_version, tink_note = load_tink()
    env["tink"] = tink_version
    notes = [tink_note] if tink_note else []
    print("XPScerpto keyring benchmark: Keyring.encrypt/decrypt vs Tink AEAD vs the raw library call (one run)")
    print(f"  python       {env['python']} on {env['platform']}")
    mhz = f" @ {float(env['cpu_mhz']):.0f} MHz" if env["cpu_mhz"] else ""
    print(f"  cpu          {env['cpu']}{mhz}, {env['logical_cpus']} logical CPUs ({env['usable_cpus']} usable), "
          f"flags: {' '.join(env['cpu_flags']) or '-'}")
    print(f"  load avg     {env['loadavg_start']} (at start)")
    print(f"  libraries    xpscerpto {env['xpscerpto']}; cryptography {env['cryptography']} ({env['openssl']}); "
          f"PyNaCl {env['pynacl']} (bundled libsodium);\n               "
          + (f"tink {tink_version} (C++ primitives with bundled BoringSSL, via pybind11)" if tink
             else "tink: not available"))
    print(f"  method       {rounds} interleaved rounds (order alternating), ~{sample_ms:g} ms per sample "
          f"(keyring encrypt: whole usage blocks), GC off\n               in samples; figures from the quietest "
          f"half of the rounds: median us; ratios = median of per-round pairs; ± = IQR/2")
    print(f"  inputs       random message per size, {AAD_SIZE} B aad; one key per algorithm and peer")
    if args.quick:
        print("  NOTE         --quick: samples are far too short for meaningful figures")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xps-bench-keyring-", dir=args.tmpdir) as tmp:
        ring = Keyring(Path(tmp) / "home")
        # For the reservation measurement only: one keyring reserving on every encryption, one never.
        ring_each = Keyring(Path(tmp) / "home-block-1", config=KeyringConfig(usage_block=1))
        ring_never = Keyring(Path(tmp) / "home-block-huge", config=KeyringConfig(usage_block=1 << 62))
        try:
            subjects = []
            for algo in args.algos:
                name = "bench-" + algo.lower()
                ring.create(name, algo)
                tp = tink_primitive(tink, algo, notes) if tink is not None else None
                subjects.append(Subject(algo, name, raw_library(algo), ring, tp,
                                        ring.engine.aead.info(algo)["provider"]))
            for r in (ring_each, ring_never):
                r.create("bench-reserve", "AES-256-GCM")
            print(f"  keyring home {tmp} on {filesystem(Path(tmp))}; the usage counter's reservations "
                  f"commit (fsync) there")
            print("  peers        keyring  ring.encrypt(name, pt, aad) -> 46 B header + nonce + ct + tag; "
                  "ring.decrypt(blob, aad)")
            print("                        (" + "; ".join(f"{s.algo} via the {s.provider} provider" for s in subjects)
                  + f"; usage block {ring.config.usage_block})")
            if tink is not None:
                print("               tink     p = new_keyset_handle(aead_key_templates.T).primitive(aead.Aead); "
                      "p.encrypt(pt, aad) -> 5 B key-id prefix + nonce + ct + tag")
                print("                        (T = " + ", ".join(
                    f"{TINK_TEMPLATES[s.algo]}" for s in subjects if s.tink is not None) + ")")
            for s in subjects:
                print(f"               raw      {s.lib.encrypt}; {s.lib.decrypt}   [{s.lib.label}: no key id, "
                      f"no key management]")
            for note in notes:
                print(f"  note         {note}")

            aes = raw_library("AES-256-GCM")
            controls = [aa_control(aes, size, timing) for size in sizes]
            print("  A/A control  raw AES-256-GCM encrypt vs an identical copy: " + ", ".join(
                f"{size_label(c['size'])} ratio {c['ratio']:.3f}±{c['ratio_spread']:.3f}" for c in controls)
                + " (what noise alone looks like)")
            print()
            print(TABLE)
            print("-" * len(TABLE))
            rows: list[dict[str, Any]] = []
            comparisons: list[dict[str, Any]] = []
            for s in subjects:
                for size in sizes:
                    for op in OPS:
                        cell_rows, cmp = run_cell(s, size, op, timing)
                        print(table_line(cell_rows, cmp), flush=True)
                        rows.extend(cell_rows)
                        comparisons.append(cmp)
            print()

            block = ring.config.usage_block
            reserve = reservation(ring_each, ring_never, "bench-reserve", b_timing)
            reserve["usage_block"] = block
            reserve["per_call_us"] = reserve["trip_us"] / block
            cells = [breakdown(s, size, op, b_timing, reserve["per_call_us"])
                     for op in OPS for s in subjects for size in sizes]
            print(f"where the keyring's time goes ({b_rounds} rounds; each step timed alone with the keyring's own "
                  f"statements on stand-in data, minus\nan empty loop, median of its quieter half of samples; '=' "
                  f"rows are by difference, so the rows add up to the total;\nlibrary work includes authenticating "
                  f"the header + nonce as aad):")
            print_breakdown(cells, any(s.tink is not None for s in subjects))
            print(f"  usage reservation: one trip through the encryption slow path (key and version reads, then "
                  f"BEGIN IMMEDIATE, UPDATE,\n  COMMIT with synchronous=FULL) = {reserve['trip_us']:.1f}"
                  f"±{reserve['trip_spread_us']:.1f} us (usage_block=1 keyring minus one that never reserves), "
                  f"once per {block} encryptions\n  = {reserve['per_call_us']:.3f} us per call")
            print()
            print("summary per cell, us per call (own costs = everything but the library's AEAD work):")
            for line in closing_lines(cells):
                print(line)
        finally:
            for r in (ring, ring_each, ring_never):
                r.close()

    elapsed = time.perf_counter() - t_start
    judged = [c for c in comparisons if c["target"] is not None]
    print()
    print("target (informational; exit status is 0 regardless; '?' = the IQR/2 noise band straddles it):")
    if judged:
        missed = [f"{c['algo']} {size_label(c['size'])} {c['op']} {c['target']['value']:.2f}"
                  f"{'?' if c['target']['uncertain'] else ''}" for c in judged if not c["target"]["met"]]
        print(f"  keyring per call <= tink: MET {len(judged) - len(missed)}/{len(judged)}"
              + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    else:
        print("  keyring per call <= tink: not judged (tink unavailable in this run)")
    load_end = loadavg()
    print(f"elapsed {elapsed:.1f} s; load avg at end {load_end}")

    if args.json is not None:
        doc = {
            "environment": {**env, "loadavg_end": load_end},
            "settings": {"rounds": rounds, "breakdown_rounds": b_rounds, "sample_ms": sample_ms,
                         "quick": args.quick, "sizes": sizes, "algos": args.algos, "aad_size": AAD_SIZE},
            "tink_available": tink is not None,
            "target": {"keyring_over_tink_max": TARGET},
            "notes": notes,
            "aa_control": controls,
            "reservation": reserve,
            "rows": rows,
            "comparisons": comparisons,
            "breakdown": cells,
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
