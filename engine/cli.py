"""``xps``: the command line, thin over the library (parse, call, print text or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import EngineConfig
from .engine import Engine
from .errors import XpsError

__all__ = ["main"]


def _engine(args: argparse.Namespace) -> Engine:
    config = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    return Engine(config)


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        text()


def cmd_providers(args: argparse.Namespace) -> int:
    """Print the routing table: operation -> provider, and why others were not chosen."""
    eng = _engine(args)
    table, state = eng.table, eng.state
    data = {
        "table_version": table.version,
        "providers": [{"name": p.name, "backend": p.backend, "version": p.version,
                       "priority": p.priority, "constant_time": p.constant_time,
                       "operations": list(p.operations)} for p in state.providers],
        "routes": {op: {"provider": r.provider, "backend": r.backend,
                        "candidates": [{"provider": c.provider, "excluded": c.excluded}
                                       for c in r.candidates]}
                   for op, r in table.routes.items()},
        "unrouted": dict(table.unrouted),
        "plugin_failures": [{"plugin": f.plugin, "reason": f.reason} for f in state.failures],
    }

    def text() -> None:
        print(f"routing table v{table.version}")
        print(f"  {'operation':<24} {'provider':<10} also offered by")
        for op, r in table.routes.items():
            others = ", ".join(f"{c.provider} ({c.excluded})" for c in r.candidates if c.excluded) or "-"
            print(f"  {op:<24} {r.provider:<10} {others}")
        for op, reason in table.unrouted.items():
            print(f"  {op:<24} {'-':<10} NOT ROUTED: {reason}")
        print("providers:")
        for p in state.providers:
            print(f"  {p.name:<10} priority {p.priority:<4} {p.backend}")
        for f in state.failures:
            print(f"  FAILED plugin {f.plugin}: {f.reason}")

    _emit(args, data, text)
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Print the power-on self-test result per provider x operation; exit 1 if any failed."""
    eng = _engine(args)
    results = eng.state.selftests
    data = [{"provider": r.provider, "operation": r.operation, "passed": r.passed,
             "vectors": r.vectors, "ms": round(r.seconds * 1000, 3), "failure": r.failure}
            for r in results]

    def text() -> None:
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            detail = f"  {r.failure}" if r.failure else ""
            print(f"  {status}  {r.provider:<10} {r.operation:<24} {r.vectors:>2} vectors{detail}")
        failed = sum(not r.passed for r in results)
        print(f"{len(results) - failed}/{len(results)} provider x operation self-tests passed")

    _emit(args, data, text)
    return 1 if any(not r.passed for r in results) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job end to end (see xpscerpto._demo)."""
    from ._demo import run_demo

    return run_demo(_engine(args))


def cmd_version(args: argparse.Namespace) -> int:
    """Print the installed version."""
    import xpscerpto

    print(f"xpscerpto {xpscerpto.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="xps", description="XPScerpto crypto-agility engine")
    parser.add_argument("--config", metavar="FILE", help="engine configuration (.toml or .json)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, has_json in (("providers", cmd_providers, True), ("selftest", cmd_selftest, True),
                               ("demo", cmd_demo, False), ("version", cmd_version, False)):
        p = sub.add_parser(name, help=(fn.__doc__ or "").split("\n")[0])
        if has_json:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xps`` and ``python -m xpscerpto``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except XpsError as exc:
        # One line, no traceback: operators' scripts read the reason.
        print(f"xps: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
