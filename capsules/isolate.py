"""Validate a verified capsule off the hot path, in a separate process.

The child (``xpscerpto.capsules._child``) loads the capsule from the verified bytes sent to
it, checks the provider contract, runs the capsule's own KATs and the engine's, computes the
differential observations and a micro-benchmark. The parent compares those against the
implementation routed now. A capsule whose code hangs, raises, exits, segfaults or exhausts
memory produces no valid result and is rejected; the engine process never ran its code.

This isolates *faults*; it is not a sandbox against malice (signatures are what keep
untrusted code out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xpscerpto.errors import PolicyError, UpdateError
from xpscerpto.interfaces import OPERATIONS

from . import _diff
from ._verifier import VerifiedCapsule
from .refusal import Refusal

__all__ = ["Gates", "ValidationReport", "validate_isolated"]


@dataclass(frozen=True, slots=True)
class Gates:
    """Validation gates (configurable per updater)."""

    timeout_s: float = 60.0  # wall-clock limit for the child
    memory_bytes: int = 2 * 1024**3  # address-space limit for the child
    diff_samples: int = 22  # random inputs per operation (covers every AEAD size bucket twice)
    bench_bytes: int = 64 * 1024  # AEAD micro-benchmark message size; 0 disables the gate
    bench_seconds: float = 0.3
    max_slowdown: float = 2.0  # refuse a candidate slower than this multiple of the current one
    #: ``hotpatch.require_signature``: False accepts a capsule whose signatures do not satisfy
    #: the trust store (hashes and every other check still run).
    require_signature: bool = True
    #: ``hotpatch.run_selftests``: False skips the validation child, the KATs in the engine
    #: process and the KAT re-check after cutover.
    run_selftests: bool = True
    #: ``hotpatch.development``: required for either switch above to be False.
    development: bool = False

    def __post_init__(self) -> None:
        for name in ("require_signature", "run_selftests", "development"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"gates: {name} must be a bool")
        if self.off and not self.development:
            raise PolicyError(f"gates: {self.off[0]}=False removes a gate that keeps unreviewed code out of the "
                              "engine; it needs development=True as well (never in production)")

    @property
    def off(self) -> tuple[str, ...]:
        """The gates switched off (development mode), as ``hotpatch.*`` names them."""
        return tuple(n for n in ("require_signature", "run_selftests") if not getattr(self, n))


@dataclass(frozen=True)
class ValidationReport:
    """What the isolated validation observed (for the audit trail and ``xps status``)."""

    kat: Mapping[str, Any]
    diff_checked: tuple[str, ...]
    slowdown: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _reject(message: str, reason: Refusal) -> UpdateError:
    return UpdateError(message, reason=reason)


def validate_isolated(capsule: VerifiedCapsule, references: Mapping[str, Any],
                      gates: Gates = Gates()) -> ValidationReport:
    """Run the child and judge its result.

    Args:
        capsule: the verified capsule.
        references: operation -> the raw implementation routed now (differential and
            benchmark baseline); operations absent here are checked by KATs only.
        gates: limits and thresholds.
    """
    m = capsule.manifest
    inputs = {op: _diff.make_inputs(OPERATIONS[op].kind, op, references[op], gates.diff_samples)
              for op in m.operations if op in references}
    request = {
        # The child verifies these bytes again before it runs any of them (load_provider takes
        # only a VerifiedCapsule); the trust store, time and limits are the ones used here.
        "capsule": capsule.raw.hex(), "trust": capsule.trust.to_json(),
        "now": capsule.verified_at.isoformat(), "limits": dataclasses.asdict(capsule.limits),
        "require_signature": capsule.signature_required,
        "kat": {op: list(p) for op, p in m.kat.items()},
        "diff_inputs": inputs, "bench_bytes": gates.bench_bytes if references else 0,
        "bench_seconds": gates.bench_seconds, "memory_bytes": gates.memory_bytes,
    }
    result = _run_child(json.dumps(request).encode(), gates)
    try:
        return _judge(result, capsule, references, inputs, gates)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError):
        # The result file is written by the process that ran the capsule's code: whatever it
        # holds is the capsule's answer, and an answer we cannot read is a refusal, journaled
        # like any other (it used to escape as a bare exception, unjournaled).
        raise _reject("validation: malformed result from the child", Refusal.CRASHED) from None


def _judge(result: dict[str, Any], capsule: VerifiedCapsule, references: Mapping[str, Any],
           inputs: Mapping[str, Any], gates: Gates) -> ValidationReport:
    """The child's result against the references: the report, or the refusal it earns."""
    if not result.get("ok"):
        stage = result.get("stage", "?")
        reason = {"kat": Refusal.KAT_FAILED, "contract": Refusal.CONTRACT,
                  "engine-state": Refusal.ENGINE_STATE}.get(stage, Refusal.VALIDATION_FAILED)
        raise _reject(f"validation ({stage}): {result.get('reason', 'no reason given')}", reason)

    diff, bench = result.get("diff", {}), result.get("bench", {})
    if not isinstance(diff, dict) or not isinstance(bench, dict) or not set(diff) <= set(inputs) \
            or not set(bench) <= set(references) \
            or not all(type(v) is float and 0 < v < float("inf") for v in bench.values()):
        raise _reject("validation: malformed result from the child", Refusal.CRASHED)
    for op, observed in diff.items():
        ref = references[op]
        expected = _diff.compute(OPERATIONS[op].kind, op, ref, inputs[op])
        problem = _diff.compare(OPERATIONS[op].kind, op, ref, inputs[op], observed, expected)
        if problem is not None:
            reason, detail = problem
            raise _reject(f"differential check {op}: {detail}", reason)
    missing = set(inputs) - set(diff)
    if missing:
        raise _reject(f"differential check: no result for {sorted(missing)[0]}", Refusal.VALIDATION_FAILED)

    slowdown: dict[str, float] = {}
    for op, cand_s in bench.items():
        ref_s = _diff.bench_aead(references[op], gates.bench_bytes, gates.bench_seconds)
        slowdown[op] = cand_s / ref_s
        if slowdown[op] > gates.max_slowdown:
            raise _reject(f"benchmark {op}: {slowdown[op]:.2f}x slower than the current implementation at "
                          f"{gates.bench_bytes} bytes (gate {gates.max_slowdown}x)", Refusal.TOO_SLOW)
    return ValidationReport(result.get("kat", {}), tuple(sorted(inputs)), slowdown, result.get("seconds", 0.0))


#: How long the supervisor gets to clean up after a timeout before its group is SIGKILLed.
_SUPERVISOR_GRACE_SECONDS = 6.0


def _run_child(request: bytes, gates: Gates) -> dict[str, Any]:
    # Result and stderr go to temporary files, not pipes: a capsule that floods stderr fills a
    # size-limited file (the child sets RLIMIT_FSIZE), never the engine's memory.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        fd = out.fileno()
        # -I: isolated mode (no user site, no PYTHON* env, no cwd on sys.path).
        # The child runs under a supervisor (_reaper, no capsule code) that is the subreaper of
        # everything the child starts and kills all of it when the child ends.
        cmd = [sys.executable, "-I", "-m", "xpscerpto.capsules._reaper", str(fd), "--",
               sys.executable, "-I", "-m", "xpscerpto.capsules._child", str(fd)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # noqa: S603 - own module
                                    stderr=err, pass_fds=(fd,), start_new_session=True)
        except OSError as exc:  # out of processes or memory: no verdict, so no capsule either
            raise _reject(f"validation: cannot start the child ({exc.strerror or type(exc).__name__})",
                          Refusal.CRASHED) from None
        try:
            proc.communicate(request, timeout=gates.timeout_s)
        except subprocess.TimeoutExpired:
            # Ask the supervisor to kill the child and every descendant; then the whole group.
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_SUPERVISOR_GRACE_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise _reject(f"validation: no answer within {gates.timeout_s:g} s (hang); child killed",
                          Refusal.TIMEOUT) from None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing the capsule started outlives validation
        err.seek(max(0, os.fstat(err.fileno()).st_size - 4096))
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        if proc.returncode < 0:
            name = _signal_name(-proc.returncode)
            raise _reject(f"validation: child killed by {name} {tail[0][:200]}".rstrip(), Refusal.CRASHED)
        out.seek(0)
        raw = out.read()
        if proc.returncode != 0 or not raw:
            raise _reject(f"validation: child exited with status {proc.returncode} and no result "
                          f"{tail[0][:200]}".rstrip(), Refusal.CRASHED)
        try:
            result = json.loads(raw)
        except (ValueError, RecursionError):
            raise _reject("validation: unreadable result from child", Refusal.CRASHED) from None
        if not isinstance(result, dict):
            raise _reject("validation: malformed result from the child", Refusal.CRASHED)
        return result


def _signal_name(number: int) -> str:
    """``SIGSEGV``; ``signal 40`` for one the enum does not name (realtime signals)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
