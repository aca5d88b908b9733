"""Autotune: measure the AEADs that may serve an operation, per message-size bucket and call shape.

No single implementation wins every size (the numba kernels win small XChaCha20 messages, the
numba+OpenSSL composite wins large ones), and the winners differ between a call that builds
its cipher (``aead.encrypt``) and one that holds it (``aead.keyed``). So the engine measures
the eligible implementations off the hot path — on a background thread after start — per
size bucket (upper bounds inclusive: 256 B, 4 KiB, 64 KiB, larger) and call shape; the
routing table then serves each shape with one provider up to a bucket bound and another above
it (:func:`~xpscerpto._tuning_model.split`), which a call picks with one comparison.

Results are cached on disk (JSON) under a fingerprint of the CPU, the Python build, every
provider's name, version and backend, and the incident mask: any change re-measures.

Example:
    >>> [BUCKET_OF[(n - 1).bit_length()] for n in (0, 1, 256, 257, 4096, 4097, 65536, 65537, 2**40)]
    [0, 0, 0, 1, 1, 2, 2, 3, 3]
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ._stored_file import read_stored
from ._tuning_model import (
    BUCKET_BOUNDS,
    BUCKET_NAMES,
    BUCKET_OF,
    CACHE_FORMAT,
    NO_LIMIT,
    SAMPLE_SIZES,
    SHAPES,
    Measurement,
    Shape,
    Split,
    TuneResult,
    split,
)
from .errors import XpsError
from .interfaces import Aead, AeadCipher, KeyAgreement, Provider, Signature

__all__ = [
    "BUCKET_BOUNDS",
    "BUCKET_NAMES",
    "BUCKET_OF",
    "NO_LIMIT",
    "SAMPLE_SIZES",
    "Measurement",
    "Split",
    "TuneResult",
    "fingerprint",
    "load_cache",
    "save_cache",
    "split",
    "tune",
]

def fingerprint(providers: Iterable[Provider], mask: str, deferred: Iterable[str] = ()) -> str:
    """What the measurements depend on: CPU, Python build, providers and their versions, the mask.

    ``deferred`` describes providers prepared after start (names and version, e.g.
    ``"jit,jit-openssl|numba 0.68.1"``), so that the fingerprint is the same before and after
    their warm-up: ``xps providers`` can find a tuned engine's result without warming up.
    """
    cpu = _cpu_identity()
    parts = [cpu, platform.python_implementation(), platform.python_version(), mask,
             *sorted(f"{p.name}|{p.version}|{p.backend}" for p in providers), *sorted(f"later:{d}" for d in deferred)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.machine() + "|" + platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags")), "")
    return f"{platform.machine()}|{model}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def tune(candidates: Mapping[str, Mapping[str, object]], *, fp: str,
         budget: float = 0.02, rounds: int = 5,
         progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Measure every candidate of every operation, per bucket and shape; return the winners.

    Args:
        candidates: operation -> provider name -> implementation (already filtered by policy,
            self-tests, the constant-time requirement and the mask). AEADs are measured per
            size bucket and call shape; signatures (sign + verify) and key agreement
            (exchange) once, on a 64-byte message, their winner filling every bucket.
            Operations with one candidate, and other kinds, are not measured.
        fp: the :func:`fingerprint` the result is valid for.
        budget: seconds per sample (each sample times a calibrated number of calls).
        rounds: interleaved rounds per (operation, shape, bucket); the median is kept.
        progress: ``(done, total)`` after each measurement.
    """
    jobs: list[tuple[str, Shape, int]] = []
    for op, impls in sorted(candidates.items()):
        if len(impls) < 2:
            continue
        kind = _kind(next(iter(impls.values())))
        if kind == "aead":
            jobs += [(op, shape, b) for shape in SHAPES for b in range(len(SAMPLE_SIZES))]
        elif kind in ("sig", "kex"):
            jobs.append((op, "stateless", 0))
    measurements: list[Measurement] = []
    winners: dict[str, dict[str, list[str]]] = {}
    for op, impls in candidates.items():
        if len(impls) == 1:
            only = next(iter(impls))
            winners[op] = {s: [only] * len(SAMPLE_SIZES) for s in SHAPES}
    for done, (op, shape, bucket) in enumerate(jobs, 1):
        impls = candidates[op]
        if _kind(next(iter(impls.values()))) == "aead":
            timed = _measure({n: i for n, i in impls.items() if isinstance(i, Aead)}, shape,
                             SAMPLE_SIZES[bucket], budget, rounds)
        else:
            timed = _timed({n: _asymmetric_call(i) for n, i in impls.items()}, budget, rounds)
        for name, seconds in timed.items():
            # Never 0: a timer too coarse for a call must not make a figure no split can divide by.
            measurements.append(Measurement(op, name, shape, bucket, max(float(seconds), 1e-12)))
        best = min(sorted(timed), key=lambda n: timed[n])  # ties: the name decides, deterministically
        per_shape = winners.setdefault(op, {s: [""] * len(SAMPLE_SIZES) for s in SHAPES})
        if _kind(next(iter(impls.values()))) == "aead":
            per_shape[shape][bucket] = best
        else:
            per_shape.update({s: [best] * len(SAMPLE_SIZES) for s in SHAPES})
        if progress is not None:
            progress(done, len(jobs))
    return TuneResult(fp, {op: {s: tuple(w) for s, w in shapes.items()} for op, shapes in winners.items()},
                      tuple(measurements))


def _kind(impl: object) -> str:
    if isinstance(impl, Aead):
        return "aead"
    if isinstance(impl, Signature):
        return "sig"
    if isinstance(impl, KeyAgreement):
        return "kex"
    return "other"


def _asymmetric_call(impl: object) -> Callable[[], object]:
    """One sign + verify (signatures) or one exchange (key agreement), on fresh keys."""
    if isinstance(impl, Signature):
        pk, sk = impl.generate()
        msg = bytes(64)
        sig = impl.sign(sk, msg, b"")
        signer = impl.load(sk)

        def sign_verify() -> object:
            return signer.sign(msg, b""), impl.verify(pk, msg, sig, b"")
        return sign_verify
    if isinstance(impl, KeyAgreement):
        _, sk = impl.generate()
        peer, _ = impl.generate()
        holder = impl.load(sk)

        def exchange() -> object:
            return holder.exchange(peer)
        return exchange
    raise TypeError(type(impl).__name__)


def _measure(impls: Mapping[str, Aead], shape: Shape, size: int, budget: float, rounds: int) -> dict[str, float]:
    """Median seconds per (encrypt + decrypt) for each implementation, interleaved A B C C B A …"""
    calls: dict[str, Callable[[], object]] = {}
    for name, impl in impls.items():
        key, nonce = os.urandom(max(impl.key_sizes)), os.urandom(impl.nonce_size)
        msg, aad = os.urandom(size), b"x" * 16
        wire = impl.cipher(key).encrypt(nonce, msg, aad)
        calls[name] = _keyed_call(impl.cipher(key), nonce, msg, aad, wire) if shape == "keyed" else \
            _stateless_call(impl, key, nonce, msg, aad, wire)
    return _timed(calls, budget, rounds)


def _timed(calls: Mapping[str, Callable[[], object]], budget: float, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, in interleaved rounds (A B C, then C B A …)."""
    counts = {name: _calibrate(fn, budget) for name, fn in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = sorted(calls)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for name in (order if r % 2 == 0 else reversed(order)):
                fn, n = calls[name], counts[name]
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - start) / n)
    finally:
        if was_enabled:
            gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def _keyed_call(c: AeadCipher, nonce: bytes, msg: bytes, aad: bytes, wire: bytes) -> Callable[[], object]:
    def call() -> object:
        return c.encrypt(nonce, msg, aad), c.decrypt(nonce, wire, aad)
    return call


def _stateless_call(impl: Aead, key: bytes, nonce: bytes, msg: bytes, aad: bytes, wire: bytes) -> Callable[[], object]:
    def call() -> object:
        return impl.cipher(key).encrypt(nonce, msg, aad), impl.cipher(key).decrypt(nonce, wire, aad)
    return call


def _calibrate(fn: Callable[[], object], budget: float) -> int:
    fn()  # warm: first-call costs (imports, caches) are not what we compare
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start >= budget / 4 or n >= 1 << 20:
            return max(1, int(n * budget / max(time.perf_counter() - start, 1e-9)))
        n *= 4


def load_cache(path: Path, fp: str) -> TuneResult | None:
    """A cached result for this fingerprint, or None (missing, another fingerprint, unreadable)."""
    try:
        # A regular file of sane size only: shared by every install, it may be anything (a
        # symlink to /dev/zero, a FIFO); read_stored's OSError is a re-measure like any other.
        doc = json.loads(read_stored(path, MAX_CACHE_BYTES))
        if doc.get("format") != CACHE_FORMAT or doc.get("fingerprint") != fp:
            return None
        winners = {str(op): {str(s): tuple(str(p) for p in w) for s, w in shapes.items()}
                   for op, shapes in doc["winners"].items()}
        if any(set(shapes) != set(SHAPES) or any(len(w) != len(SAMPLE_SIZES) for w in shapes.values())
               for shapes in winners.values()):
            return None
        measurements = tuple(Measurement(m["operation"], m["provider"], m["shape"], m["bucket"],
                                         m["seconds"]) for m in doc["measurements"])
        return TuneResult(fp, winners, measurements, str(doc["created"]))  # checks every field
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError, ArithmeticError,
            XpsError):
        # A cache is a cache: a damaged one is measured again, never trusted. (RecursionError:
        # JSON nested thousands deep; MemoryError: a huge file that passed the size check.)
        return None


#: A cache larger than this is not read (a real one is a few KiB).
MAX_CACHE_BYTES = 1 << 20


def save_cache(path: Path, result: TuneResult) -> None:
    """Write the result (best effort: a read-only cache directory only costs a re-measure)."""
    from ._atomic import atomic_write

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result.to_json(), separators=(",", ":")).encode() + b"\n", 0o600)
    except OSError:
        return
