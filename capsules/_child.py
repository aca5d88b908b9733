"""The isolated validator: runs a candidate capsule's code in a throw-away process.

Protocol: one JSON request on stdin; one JSON result written to the file descriptor the
parent names (stdout is redirected to stderr first, so a capsule that merely prints cannot
pass for a result). Any crash, hang, exit or memory blow-up produces no result, which the
parent treats as a rejection.

This contains faults, not malice: capsule code runs with this process's rights and could
find the result descriptor and forge a verdict. That is why only signed capsules get here,
and why the engine re-runs the KATs in its own process before routing anything.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

_MAX_FILE = 64 * 1024 * 1024  # bytes: the result of a full differential run is a few MB at most


def _limit_memory(max_bytes: int) -> None:
    if max_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    # Bounds the stderr file (and the result) a capsule can make the parent store.
    resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_FILE, _MAX_FILE))


def run(request: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    from xpscerpto._plugins import validate_provider
    from xpscerpto.interfaces import OPERATIONS
    from xpscerpto.kat.selftest import parse_vectors, run_selftest
    from xpscerpto.settings import Policy
    from xpscerpto.signing import TrustStore

    from . import _diff
    from ._verifier import verify_capsule
    from .format import Limits
    from .loader import load_provider

    # Verified again here, with what the engine verified it against: code runs only from a
    # VerifiedCapsule, in this process as in the engine's. The routing policy is the engine's
    # decision, already made there (allow/forbid and the constant-time requirement).
    capsule = verify_capsule(bytes.fromhex(request["capsule"]), trust=TrustStore.from_json(request["trust"]),
                             highest={}, now=datetime.fromisoformat(request["now"]),
                             limits=Limits(**request["limits"]), policy=Policy(require_constant_time=False),
                             require_signature=request["require_signature"])
    files = capsule.files
    # What the engine process holds when it imports a capsule: a payload that patches any of
    # it (verifier, trust store, routing, updater) at import is refused here, before that.
    from . import _tamper, updater  # noqa: F401 - imported so that the snapshot covers it

    before = _tamper.snapshot()
    provider = load_provider(capsule)
    changed = before.changes()
    if changed:
        return {"ok": False, "stage": "engine-state", "reason": f"import changed {', '.join(changed)}"}
    problem = validate_provider(provider)
    if problem is not None:
        return {"ok": False, "stage": "contract", "reason": problem}
    out: dict[str, Any] = {"ok": True, "kat": {}, "diff": {}, "bench": {}}
    for op, impl in provider.implementations.items():
        kind = OPERATIONS[op].kind
        vectors = [v for path in request["kat"].get(op, ()) for v in parse_vectors(files[path])]
        result = run_selftest(provider.name, op, kind, impl, extra_vectors=vectors)
        out["kat"][op] = {"passed": result.passed, "vectors": result.vectors, "failure": result.failure}
        if not result.passed:
            return {**out, "ok": False, "stage": "kat", "reason": f"{op}: {result.failure}"}
        inputs = request["diff_inputs"].get(op)
        if inputs is not None:
            out["diff"][op] = _diff.compute(kind, op, impl, inputs)
        if kind == "aead" and request["bench_bytes"] > 0:
            out["bench"][op] = _diff.bench_aead(impl, request["bench_bytes"], request["bench_seconds"])
    changed = before.changes()
    if changed:  # patched later, from a call rather than at import
        return {**out, "ok": False, "stage": "engine-state", "reason": f"calls changed {', '.join(changed)}"}
    return out


def main() -> None:
    result_fd = int(sys.argv[1])
    os.dup2(2, 1)  # capsule prints go to stderr; only this module writes to result_fd
    request = json.loads(sys.stdin.buffer.read())
    _limit_memory(int(request.get("memory_bytes", 0)))
    started = time.perf_counter()
    try:
        result = run(request)
    except BaseException as exc:  # the capsule's fault, reported rather than crashing mute
        result = {"ok": False, "stage": "load", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    result["seconds"] = time.perf_counter() - started
    with os.fdopen(result_fd, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
