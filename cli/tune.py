"""``xps tune``: measure the eligible implementations now and show what each size bucket gets.

Runs what a tuned engine runs in the background, in the foreground and with a progress bar:
the numba kernels' warm-up (compiling, or loading numba's disk cache), then the measurement
of every operation with more than one eligible implementation, per size bucket and call
shape. The result goes to the autotune cache the engines of this machine read at start
(``$XDG_CACHE_HOME/xpscerpto/autotune.json``), and is printed: per operation, shape and
bucket, the winner and the runner-up with their measured times, and the split the routing
table publishes from them. ``--cached`` prints the cached result without measuring.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from xpscerpto import _tuner
from xpscerpto._autotune import load_cache, split
from xpscerpto._tuning_model import BUCKET_NAMES, SHAPES, TuneResult
from xpscerpto.audit.cli import terminal_safe
from xpscerpto.engine import Engine
from xpscerpto.errors import ErrorCode, XpsError

from . import context

__all__ = ["add_tune_commands", "cmd_tune"]


def cmd_tune(args: argparse.Namespace) -> int:
    """Measure the eligible implementations per size bucket and publish the winners (cached)."""
    cfg = replace(context.config(args).engine, autotune=False)  # this command does the work itself
    eng = Engine(cfg)
    if args.cached:
        result = load_cache(_tuner.cache_path(), eng.tuning_fingerprint())
        if result is None:
            raise XpsError(f"tune: no cached result for this machine and these providers at {_tuner.cache_path()} "
                           "(run xps tune)", code=ErrorCode.POLICY)
    else:
        if not args.json:
            print("warming up deferred providers (numba kernels: compile, or load their cache) ...",
                  file=sys.stderr)
        eng.add_deferred_providers()
        result = eng.autotune(use_cache=False, progress=None if args.json else _bar, budget=args.budget,
                              rounds=args.rounds)
        if not args.json:
            print(file=sys.stderr)
    # Only implementations routing may pick here: a cache names what it names (a masked or
    # uninstalled provider, terminal escapes), and was listed as the winner (found by a review).
    eligible = {op: set(names) for op, names in _tuner.candidates(eng.table).items()}
    eng.use_tuning(result)
    data = _document(eng, result, eligible)

    def text() -> None:
        for line in lines():
            print(terminal_safe(line))

    def lines() -> Any:
        yield f"autotune {result.created} (cache {_tuner.cache_path()})"
        measured = {m.operation for m in result.measurements}
        for op, shapes in sorted(data["operations"].items()):
            if op not in measured:
                continue  # one eligible implementation: nothing to choose
            yield f"{op}"
            aead = op.startswith("aead.")
            for shape in SHAPES if aead else SHAPES[:1]:
                rows = shapes[shape] if aead else shapes[shape][:1]
                label = shape if aead else "per call"
                yield f"  {label:<9} " + "  ".join(
                    (f"{r['bucket']}: " if aead else "") + f"{r['winner']} {r['winner_us']}" + (
                        f" (next {r['runner_up']} {r['runner_up_ratio']}x)" if r["runner_up"] else "")
                    for r in rows)
            route = data["routes"].get(op)
            if route:
                yield f"  routed:   {route['describe']}"
        single = sorted(op for op in data["operations"] if op not in measured)
        if single:
            yield "one eligible implementation (not measured): " + ", ".join(single)
        if data["ignored"]:
            yield "cached winners not eligible here (routing ignores them): " + ", ".join(data["ignored"])

    context.emit(args, data, text)
    return 0


def _document(eng: Engine, result: TuneResult, eligible: dict[str, set[str]]) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    ignored = []
    for op, per_shape in sorted(result.winners.items()):
        if not all(w in eligible.get(op, ()) for shape in SHAPES for w in per_shape[shape]):
            ignored.append(op)
            continue
        shapes: dict[str, Any] = {}
        for shape in SHAPES:
            rows = []
            for bucket, winner in enumerate(per_shape[shape]):
                best = next((m for m in result.measurements
                             if (m.operation, m.shape, m.bucket, m.provider) == (op, shape, bucket, winner)), None)
                runner = result.runner_up(op, shape, bucket)
                if runner is not None and runner.provider not in eligible[op]:
                    runner = None
                rows.append({
                    "bucket": BUCKET_NAMES[bucket], "winner": winner,
                    "winner_us": f"{best.seconds * 1e6:.2f}us" if best else "-",
                    "runner_up": runner.provider if runner else None,
                    "runner_up_ratio": round(runner.seconds / best.seconds, 2) if runner and best else None,
                })
            shapes[shape] = rows
        s, k = split(result, op, "stateless"), split(result, op, "keyed")
        ops[op] = {**shapes, "split": {"stateless": s and [s.small, s.limit, s.large],
                                       "keyed": k and [k.small, k.limit, k.large]}}
    routes = {}
    for op, r in eng.table.routes.items():
        if r.chosen_by == "autotune":
            routes[op] = {"provider": r.provider, "limit": r.limit, "large_provider": r.large_provider,
                          "keyed_provider": r.keyed_provider, "keyed_limit": r.keyed_limit,
                          "keyed_large_provider": r.keyed_large_provider, "describe": describe_route(r)}
    return {"created": result.created, "fingerprint": result.fingerprint, "operations": ops, "routes": routes,
            "ignored": ignored}


def describe_route(r: Any) -> str:
    """``jit <= 4096 B < jit-openssl; keyed: jit <= 4096 B < jit-openssl`` (one provider: its name)."""
    def one(small: str, limit: int, large: str | None) -> str:
        return small if large is None or large == small else f"{small} <= {limit} B < {large}"

    stateless = one(r.provider, r.limit, r.large_provider)
    keyed = one(r.keyed_provider or r.provider, r.keyed_limit, r.keyed_large_provider)
    return stateless if keyed == stateless else f"{stateless}; keyed: {keyed}"


def _bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r  measuring [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def _positive(kind: type[int] | type[float], most: float) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"expected more than 0 and at most {most:g}")
        return value
    return parse


def add_tune_commands(sub: Any) -> None:
    """Register ``xps tune`` on an argparse subparsers object."""
    p = sub.add_parser("tune", help=cmd_tune.__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cached", action="store_true", help="show the cached result, do not measure")
    p.add_argument("--budget", type=_positive(float, 10.0), default=0.02, help="seconds per sample (default 0.02)")
    p.add_argument("--rounds", type=_positive(int, 1000), default=5, help="interleaved rounds per cell (default 5)")
    p.set_defaults(func=cmd_tune)
