"""``xps orch …`` (plans, the node loop, emergency) and ``xps db …`` (migrations)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from xpscerpto.cli import context
from xpscerpto.errors import PolicyError

__all__ = ["add_db_commands", "add_orch_commands"]


def _orchestrator(args: argparse.Namespace) -> Any:
    from xpscerpto.keyring.cli import _ring

    from .orchestrator import Orchestrator

    ring = _ring(args)
    try:
        return Orchestrator(ring, node=args.node, lease_ttl=args.lease_ttl, interval=args.interval)
    except BaseException:
        ring.close()
        raise


def _plan(args: argparse.Namespace) -> Any:
    from .orchestrator import Plan

    return Plan(args.plan, key=args.key, policy=args.policy, grace=args.grace, suite=args.suite, kek=args.kek)


def _adopt(args: argparse.Namespace) -> int:
    """``xps orch adopt``: seal an earlier release's orchestration rows, listing each one; with
    ``--review``, list every column of each and their fingerprint, sealing nothing."""
    from xpscerpto.keyring.cli import _ring

    from .orchestrator import adopt_orchestration, review_orchestration

    if args.review and args.expect is not None:
        raise PolicyError("--review and --expect: review first, then adopt with the fingerprint it shows")
    ring = _ring(args)
    try:
        if args.review:
            return _review(args, review_orchestration(ring))
        done = adopt_orchestration(ring, expect=args.expect)
    finally:
        ring.close()
    rows = None if done is None else [{"table": table, "key": [_shown(v) for v in key]} for table, key in done]

    def text() -> None:
        if rows is None:
            print("orchestration rows: sealed already; nothing to adopt")
            return
        print(f"sealed {len(rows)} orchestration row{'s' * (len(rows) != 1)}")
        for row in rows:
            print(f"  {row['table']} {', '.join(row['key'])}")

    context.emit(args, {"sealed": rows}, text)
    return 0


def _review(args: argparse.Namespace, found: tuple[list[tuple[str, dict[str, Any]]], str] | None) -> int:
    """Print the rows an adoption would seal, every column escaped, and their fingerprint."""
    rows: list[dict[str, Any]] | None = None if found is None else [
        {"table": table, "row": {c: _shown(v) for c, v in row.items()}} for table, row in found[0]]
    fingerprint = None if found is None else found[1]

    def text() -> None:
        if rows is None:
            print("orchestration rows: sealed already; nothing to adopt")
            return
        print(f"{len(rows)} orchestration row{'s' * (len(rows) != 1)} to review (nothing sealed yet)")
        for row in rows:
            print(f"  {row['table']}: " + ", ".join(f"{c}={v}" for c, v in row["row"].items()))
        print(f"fingerprint {fingerprint}")
        print(f"to seal exactly these: xps orch adopt --expect {fingerprint}")

    context.emit(args, {"review": rows, "fingerprint": fingerprint}, text)
    return 0


def _shown(value: object) -> str:
    """A primary key value as the operator can compare it (text bounded, escaped: anyone's)."""
    from datetime import datetime

    from xpscerpto._config_fields import show

    return value.isoformat() if isinstance(value, datetime) else show(value)


def cmd_orch(args: argparse.Namespace) -> int:
    """Rotation plans and the orchestrator node loop (keyring on PostgreSQL)."""
    if args.orch_cmd == "adopt":  # before Orchestrator(): it refuses a database with rows to adopt
        return _adopt(args)
    if args.orch_cmd == "plan":  # validate and show; stores nothing
        plan = _plan(args)
        context.emit(args, {"plan": plan.name, "key": plan.key, "policy": plan.policy, "grace": plan.grace,
                            "suite": plan.suite, "kek": plan.kek},
                     lambda: print(f"plan {plan.name}: key {plan.key}, {plan.policy}, grace {plan.grace}, "
                                   f"suite {plan.suite or '(unchanged)'}, kek {plan.kek}"))
        return 0
    orch = _orchestrator(args)
    try:
        if args.orch_cmd == "track":
            orch.track(_plan(args))
            print(f"tracking {args.plan}")
        elif args.orch_cmd == "status":
            status = orch.status()
            context.emit(args, status, lambda: _print_status(status))
        elif args.orch_cmd in ("pause", "resume"):
            getattr(orch, args.orch_cmd)(args.plan)
            print(f"{args.plan}: {args.orch_cmd}d")
        elif args.orch_cmd == "migrate":
            from .suite_migration import SuiteMigration

            orch.migrate(SuiteMigration(args.name, keys=tuple(k for k in args.keys.split(",") if k),
                                        target=args.target, canary=args.canary, watch=args.watch,
                                        max_failure_rate=args.max_failure_rate))
            print(f"migration {args.name}: started (canary phase at the leader's next tick)")
        elif args.orch_cmd == "pq":
            from .pq_rollout import PqRollout

            orch.roll_out_pq(PqRollout(args.name, nodes=tuple(n for n in args.nodes.split(",") if n),
                                       canary=args.canary, watch=args.watch, max_failure_rate=args.max_failure_rate,
                                       **({"protocol": args.protocol} if args.protocol else {})))
            print(f"PQ rollout {args.name}: started (canary nodes offer hybrid post-quantum channels now)")
        elif args.orch_cmd == "emergency":
            try:
                version = orch.emergency(args.plan, args.reason, grace=args.grace)
            finally:
                orch.stop()  # a lease this command took (no `orch run` led) is handed back now
            print(f"{args.plan}: rotated to version {version} (incident recorded)")
        else:  # run: the node loop, until SIGTERM/SIGINT
            if args.metrics is not None:
                from xpscerpto.metrics import Metrics
                from xpscerpto.metrics.prometheus import serve

                metrics = Metrics()
                metrics.watch_journal(orch.keyring.audit)
                metrics.watch_keyring(orch.keyring)
                orch.metrics = metrics  # shared with the fleet at each tick, for canary decisions
                serve(metrics, args.metrics)
            done = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: done.set())
            orch.start()
            print(f"orchestrator node {args.node}: running", flush=True)
            done.wait()
            orch.stop()
    finally:
        orch.keyring.close()
    return 0


def _print_status(status: dict[str, Any]) -> None:
    print(f"node {status['node']}; leader {status['leader'] or '(none)'} token {status['token']} "
          f"until {status['lease_expires'] or '-'}")
    for p in status["plans"]:
        print(f"  {p['plan']}: key {p['key']} {p['policy']}{' (paused)' if p['paused'] else ''}; "
              f"next {p['next_run']}")
    for m in status["migrations"]:
        print(f"  migration {m['name']} -> {m['target']}: {m['phase']} since {m['since']}")
    for r in status["pq_rollouts"]:
        print(f"  PQ rollout {r['name']} ({', '.join(r['nodes'])}; canary {', '.join(r['canary_nodes'])}): "
              f"{r['phase']} since {r['since']}")


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations of the PostgreSQL store."""
    from xpscerpto.db import Database, applied, head, is_dsn, migrate

    dsn = args.database or context.config(args).keyring.database
    if not is_dsn(dsn):
        raise PolicyError("database: expected --database postgresql://HOST/DATABASE (or keyring.database in --config)")
    db = Database(dsn)
    try:
        if args.db_cmd == "migrate":
            done = migrate(db)
            context.emit(args, {"applied": done, "schema": applied(db)},
                         lambda: print(f"applied {done}; schema {applied(db)}" if done
                                       else f"up to date (schema {applied(db)})"))
        else:
            current = applied(db)
            context.emit(args, {"schema": current, "head": head()},
                         lambda: print(f"schema {current} of {head()}"))
    finally:
        db.close()
    return 0


def add_orch_commands(sub: Any) -> None:
    """Register ``xps orch``."""
    p = sub.add_parser("orch", help=cmd_orch.__doc__)
    osub = p.add_subparsers(dest="orch_cmd", required=True)
    for name, text in (("plan", "validate and show a plan (stores nothing)"), ("track", "add or replace a plan")):
        s = osub.add_parser(name, help=text)
        s.add_argument("plan")
        s.add_argument("--key", required=True)
        s.add_argument("--policy", required=True, help="monthly | every=30d | every=12h | …")
        s.add_argument("--grace", default="7d")
        s.add_argument("--suite", default=None, help="AEAD of the new versions (crypto migration)")
        s.add_argument("--kek", default="file", choices=("file", "pkcs11"))
    osub.add_parser("status", help="this node, the leader, its token and lease expiry, each plan's next run")
    a = osub.add_parser("adopt", help="seal the orchestration rows an earlier release wrote, once (review them "
                                      "first: --review); lists each row sealed")
    a.add_argument("--review", action="store_true", help="list every row to adopt and their fingerprint; seal nothing")
    a.add_argument("--expect", metavar="FINGERPRINT", default=None,
                   help="seal only if the rows are exactly those reviewed (the fingerprint --review showed)")
    for name in ("pause", "resume"):
        osub.add_parser(name, help=f"{name} a plan's scheduled runs").add_argument("plan")
    e = osub.add_parser("emergency", help="rotate a plan's key now (leader only); records an incident")
    e.add_argument("plan")
    e.add_argument("--reason", required=True)
    e.add_argument("--grace", default=None, help="a short grace before the retired version is archived "
                                                 "(default: the plan's)")
    g = osub.add_parser("migrate", help="move keys to another AEAD suite: canary, watch, rollout, retire")
    g.add_argument("name")
    g.add_argument("--keys", required=True, help="comma-separated key names")
    g.add_argument("--target", required=True, help="e.g. XCHACHA20-POLY1305")
    q = osub.add_parser("pq", help="roll hybrid post-quantum channels out over nodes: canary, watch, all, require")
    q.add_argument("name")
    q.add_argument("--nodes", required=True, help="comma-separated node names")
    q.add_argument("--protocol", default=None, help="the hybrid Noise protocol (default XXhfs ChaChaPoly SHA256)")
    for parser, moved, failures in ((g, "keys moved", "auth-failure"), (q, "nodes that offer PQ", "handshake failure")):
        # The careful-rollout fields both share (orchestrator/_canary.py checks them).
        parser.add_argument("--canary", type=float, default=0.1, help=f"share of {moved} first (default 0.1)")
        parser.add_argument("--watch", default="1h", help="how long each phase is watched (default 1h)")
        parser.add_argument("--max-failure-rate", type=float, default=0.001, help=f"abort above this {failures} rate")
    r = osub.add_parser("run", help="run this node's orchestrator until SIGTERM")
    r.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (rotations) there")
    for s in osub.choices.values():
        s.add_argument("--node", default="local", help="this node's name (unique in the fleet)")
        s.add_argument("--lease-ttl", type=float, default=10.0, help="seconds (default 10)")
        s.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (default 1)")
        s.add_argument("--operator", default="orchestrator")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_orch)


def add_db_commands(sub: Any) -> None:
    """Register ``xps db``."""
    p = sub.add_parser("db", help=cmd_db.__doc__)
    dsub = p.add_subparsers(dest="db_cmd", required=True)
    for name, text in (("migrate", "apply pending schema migrations"), ("status", "the applied schema migration")):
        s = dsub.add_parser(name, help=text)
        s.add_argument("--database", metavar="DSN", help="postgresql://HOST/DATABASE (default: keyring.database)")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_db)
