"""``xps``: the command line, thin over the library (parse, call, print text or JSON)."""

from __future__ import annotations

import argparse
import json
import os
import select
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import XpsConfig
from .engine import Engine
from .errors import ErrorCode, PolicyError, XpsError

__all__ = ["main", "run_command"]

#: Seconds ``xps status`` waits for a running engine's answer (it reads memory only).
STATUS_TIMEOUT = 10.0
#: Seconds ``xps rollback`` / ``config emergency`` wait (the engine re-verifies and may wait for a lock).
CHANGE_TIMEOUT = 30.0


def _config(args: argparse.Namespace) -> XpsConfig:
    return XpsConfig.load(args.config) if args.config else XpsConfig.defaults()


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(_config(args).engine)


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


def _home(args: argparse.Namespace) -> Any:
    from .home import Home

    return Home.resolve(args.home)


def cmd_trust(args: argparse.Namespace) -> int:
    """Manage pinned publisher keys: add, list, remove, threshold."""
    from xpscerpto.signing import TrustStore, load_public_key

    home = _home(args)
    store = TrustStore.load(home.trust)
    if args.trust_cmd == "add":
        key = load_public_key(args.pub)
        store = store.add(key, args.ops, args.label or Path(args.pub).stem)
        store.save(home.trust)
        print(f"trusted {key.keyid} for {', '.join(args.ops)}")
    elif args.trust_cmd == "remove":
        store.remove(args.keyid).save(home.trust)
        print(f"removed {args.keyid}")
    elif args.trust_cmd == "threshold":
        store.with_threshold(args.k).save(home.trust)
        print(f"threshold set to {args.k}")
    else:
        data = store.to_json()
        if args.json:
            json.dump(data, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(f"threshold {store.threshold}")
            for k in store.keys.values():
                print(f"  {k.keyid}  {k.label:<16} ops: {', '.join(k.ops)}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Watch a folder for capsules and serve the control socket until interrupted."""
    import signal
    import threading

    from xpscerpto.capsules.isolate import Gates
    from xpscerpto.capsules.updater import StagePlan

    config = _config(args)
    eng = Engine(config.engine)
    h = config.hotpatch
    plan = StagePlan(
        canary_share=h.canary_share if args.canary_share is None else args.canary_share,
        canary_seconds=h.canary_seconds if args.canary_seconds is None else args.canary_seconds,
        dual_run_seconds=h.dual_run_seconds if args.dual_run_seconds is None else args.dual_run_seconds,
        drain_timeout=h.drain_timeout_seconds)
    gates = Gates(timeout_s=h.timeout_seconds, memory_bytes=h.memory_bytes, bench_bytes=h.bench_bytes,
                  max_slowdown=h.max_slowdown)
    svc = eng.watch(args.dir, home=args.home, polling=args.polling or None, plan=plan, gates=gates,
                    settle_seconds=h.settle_seconds, config=config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"watching {args.dir} ({svc.inbox.observer_kind}); home {svc.updater.home.root}; "
          f"table v{eng.table.version}", flush=True)
    stop.wait()
    svc.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Routing table, active/retired capsules and recent events (live if an engine runs)."""
    from xpscerpto.capsules.control import NoEngineRunning, request

    home = _home(args)
    try:
        data = _result(request(home.socket, {"cmd": "status"}, timeout=STATUS_TIMEOUT))
    except NoEngineRunning:
        data = _offline_status(home)

    def text() -> None:
        print(f"engine: {'running' if data['running'] else 'not running (committed state)'}")
        if data.get("table_version") is not None:
            print(f"routing table v{data['table_version']}")
            for op, provider in data["routes"].items():
                print(f"  {op:<24} {provider}")
        for a in data["active"]:
            print(f"active  {a['name']} {a['version']} ({a['sha256'][:12]}) {', '.join(a['operations'])}")
        if data.get("staging"):
            print(f"staging {data['staging']}")
        for r in data["retired"]:
            print(f"retired {r['name']} {r['version']} ({str(r['sha256'])[:12]})")
        for e in data["events"]:
            extra = " ".join(f"{k}={e[k]}" for k in ("name", "version", "reason", "operator") if e.get(k))
            print(f"  {e.get('time', '?')} {e.get('event', '?')!s:<20} {extra}")

    _emit(args, data, text)
    return 0


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` of a control-socket answer, or its error raised as the engine typed it."""
    if not answer.get("ok"):
        code = answer.get("code")
        raise XpsError(str(answer.get("error")).removeprefix(f"{code}: "),
                       code=ErrorCode(code) if code in {c.value for c in ErrorCode} else None)
    result = answer.get("result")
    if not isinstance(result, dict):
        raise XpsError("control socket: the engine's answer has no result")
    return result


def _offline_status(home: Any) -> dict[str, Any]:
    from xpscerpto.audit import AuditLog
    from xpscerpto.capsules.store import RoutingState

    state = RoutingState.load(home.state)
    active = {a.sha256 for a in state.active}
    retired = {e["sha256"]: e for e in state.history if e.get("sha256") not in active}
    return {"running": False, "table_version": None, "routes": {}, "staging": None,
            "active": [{"name": a.name, "version": a.version, "sha256": a.sha256,
                        "operations": list(a.operations)} for a in state.active],
            "retired": [{k: e.get(k) for k in ("name", "version", "sha256")} for e in retired.values()],
            "highest": dict(state.highest), "events": AuditLog(home.audit).tail(20)}


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll back a capsule (by name or operation) in the running engine, or in the committed state."""
    from xpscerpto.capsules.control import NoEngineRunning, request
    from xpscerpto.capsules.updater import rollback_offline

    home = _home(args)
    try:
        answer = request(home.socket, {"cmd": "rollback", "target": args.target, "to": args.to,
                                       "operator": args.operator}, timeout=CHANGE_TIMEOUT)
    except NoEngineRunning:
        cap = rollback_offline(home, args.target, to=args.to, operator=args.operator)
        print(f"rolled back {cap.name} {cap.version} in the committed state (no engine running)")
        return 0
    r = _result(answer).get("rolled_back") or {}
    print(f"rolled back {r.get('name', '?')} {r.get('version', '?')} in the running engine")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the audit journal's chain and checkpoints, or show its newest events."""
    from .audit import AuditLog

    log = AuditLog(_home(args).audit, checkpoint_every=_config(args).audit.checkpoint_every)
    if args.audit_cmd == "tail":
        events = log.tail(args.n)
        if args.json:
            json.dump(events, sys.stdout, indent=2)
            sys.stdout.write("\n")
        for e in events if not args.json else ():
            extra = " ".join(f"{k}={e[k]}" for k in sorted(e) if k not in ("seq", "time", "event", "prev", "hash",
                                                                           "sig", "key"))
            print(f"{e.get('seq', '?')!s:>6} {e.get('time', '?')} {e.get('event', '?')!s:<22} {extra}")
        return 0
    pub = _public_key(args.public_key) if args.public_key is not None else None
    report = log.verify(public_key=pub, strict=args.strict)
    data = report.as_dict()
    _emit(args, data, lambda: print(
        f"audit journal OK: {data['records']} records, {data['checkpoints']} signed checkpoints, last seq "
        f"{data['last_seq']} hash {data['last_hash']}"
        + "".join(f"\nwarning: {w}" for w in data.get("warnings", []))))
    return 0


def _public_key(text: str) -> bytes:
    """``--public-key``: an Ed25519 public key as 64 hex digits."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise PolicyError(f"--public-key: expected 64 hex digits (a 32-byte Ed25519 public key), "
                          f"got {len(text)} characters")
    return key


def cmd_config(args: argparse.Namespace) -> int:
    """Check a configuration file, show the effective one, or make an audited emergency change."""
    if args.config_cmd == "check":
        XpsConfig.load(args.file)
        print(f"{args.file}: OK")
        return 0
    if args.config_cmd == "show":
        print(json.dumps(_config(args).to_mapping(), indent=2, sort_keys=True))
        return 0
    from xpscerpto.capsules.control import NoEngineRunning, request

    try:
        value = json.loads(args.value)
    except ValueError:
        value = args.value
    try:
        answer = request(_home(args).socket, {"cmd": "emergency", "key": args.key, "value": value,
                                              "operator": args.operator, "reason": args.reason},
                         timeout=CHANGE_TIMEOUT)
    except NoEngineRunning:
        raise XpsError("config emergency: no engine is running here (edit the file and restart instead)",
                       code=ErrorCode.POLICY) from None
    print(f"{args.key} = {json.dumps(_result(answer).get('value'))} in the running engine (audited)")
    return 0


def cmd_capsule(args: argparse.Namespace) -> int:
    """Publisher commands (same as tools/make_capsule.py)."""
    return int(args.capsule_func(args))


def cmd_version(args: argparse.Namespace) -> int:
    """Print the installed version."""
    import xpscerpto

    print(f"xpscerpto {xpscerpto.__version__}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: XPS_ERR_POLICY: …``), exit 2.

    Operators' scripts read the last line of stderr; argparse's default prints the usage first.
    Subcommand parsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: XPS_ERR_POLICY: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = OneLineParser(prog="xps", description="XPScerpto crypto-agility engine")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (.yaml, .yml, .toml or .json; see docs/CONFIGURATION.md)")
    parser.add_argument("--home", metavar="DIR", help="engine state directory (default: $XPS_HOME or "
                        "~/.local/state/xpscerpto)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, has_json in (("providers", cmd_providers, True), ("selftest", cmd_selftest, True),
                               ("demo", cmd_demo, False), ("version", cmd_version, False),
                               ("status", cmd_status, True)):
        p = sub.add_parser(name, help=(fn.__doc__ or "").split("\n")[0])
        if has_json:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)

    p = sub.add_parser("trust", help=cmd_trust.__doc__)
    tsub = p.add_subparsers(dest="trust_cmd", required=True)
    t = tsub.add_parser("add", help="pin a publisher key")
    t.add_argument("pub", metavar="NAME.pub")
    t.add_argument("--ops", action="append", required=True, metavar="GLOB",
                   help="operations this key may provide, e.g. 'aead.*' (repeatable)")
    t.add_argument("--label")
    t = tsub.add_parser("remove", help="unpin a key")
    t.add_argument("keyid")
    t = tsub.add_parser("threshold", help="signatures required per capsule")
    t.add_argument("k", type=int)
    t = tsub.add_parser("list", help="show pinned keys")
    t.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("watch", help=cmd_watch.__doc__)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--polling", action="store_true", help="poll instead of inotify")
    p.add_argument("--canary-share", type=float, help="override hotpatch.canary_share")
    p.add_argument("--canary-seconds", type=float, help="override hotpatch.canary_seconds")
    p.add_argument("--dual-run-seconds", type=float, help="override hotpatch.dual_run_seconds")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("rollback", help=cmd_rollback.__doc__)
    p.add_argument("target", metavar="OPERATION|CAPSULE")
    p.add_argument("--to", metavar="VERSION")
    p.add_argument("--operator", default="cli")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("audit", help=cmd_audit.__doc__)
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    a = asub.add_parser("verify", help="check every hash link and checkpoint signature")
    a.add_argument("--public-key", metavar="HEX", help="pin the checkpoint key instead of reading audit.pub")
    a.add_argument("--strict", action="store_true", help="fail on a torn last line")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("tail", help="newest events")
    a.add_argument("-n", type=int, default=20)
    a.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    csub = p.add_subparsers(dest="config_cmd", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    csub.add_parser("show", help="the effective configuration (defaults + --config)")
    c = csub.add_parser("emergency", help="audited runtime change of a whitelisted key in the running engine")
    c.add_argument("key", metavar="KEY", help="e.g. engine.policy.forbid")
    c.add_argument("value", metavar="VALUE", help="JSON, e.g. '[\"aes128\"]'")
    c.add_argument("--reason", required=True)
    c.add_argument("--operator", default="cli")
    p.set_defaults(func=cmd_config)

    from xpscerpto.keyring.cli import add_key_commands

    add_key_commands(sub)

    from xpscerpto.capsules.cli import add_publisher_commands

    p = sub.add_parser("capsule", help=cmd_capsule.__doc__)
    csub = p.add_subparsers(dest="capsule_cmd", required=True)
    add_publisher_commands(csub)
    for action in csub.choices.values():
        action.set_defaults(capsule_func=action.get_default("func"), func=cmd_capsule)
    return parser


#: Raised by the standard library on bad input or I/O; reported as XPS_ERR_INTERNAL, without a traceback.
_LAST_RESORT = (OSError, sqlite3.Error, ValueError, KeyError, UnicodeError, json.JSONDecodeError)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_command(prog: str, call: Callable[[], int]) -> int:
    """Run a command; any failure is one line ``PROG: error: CODE: message`` on stderr and exit 2.

    XpsError carries its code; a few standard exceptions that bad input or a failing disk
    raise are reported as ``XPS_ERR_INTERNAL: <Type>: <message>``. Ctrl-C exits 130, a
    closed stdout (``xps … | head``) 141, both quietly.
    """
    try:
        return int(call())
    except XpsError as exc:
        # One line, no traceback: operators' scripts read the reason.
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _internal(prog, exc)
        # The reader went away; point stdout at /dev/null so the exit flush cannot fail again.
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return 141
    except _LAST_RESORT as exc:
        return _internal(prog, exc)


def _internal(prog: str, exc: BaseException) -> int:
    print(f"{prog}: error: {ErrorCode.INTERNAL}: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
    return 2


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports POLLERR on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xps`` and ``python -m xpscerpto``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command("xps", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
