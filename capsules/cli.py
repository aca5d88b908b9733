"""The capsules' command line: publisher commands and the operator's hot-patch commands.

Publisher (``tools/make_capsule.py`` and ``xps capsule``)::

    keygen --out NAME                               NAME.key (0600) and NAME.pub
    build SRC_DIR --key NAME.key [--key ...] --out FILE.capsule
    sign FILE.capsule --key NAME.key                co-sign (k-of-n) in place
    inspect FILE.capsule [--json]
    verify FILE.capsule --trust NAME.pub [--trust ...] [--threshold K]

Operator (``xps``)::

    watch DIR [--polling] [--canary-share F] [--canary-seconds S] [--dual-run-seconds S]
    status [--json]
    rollback OPERATION|CAPSULE [--to VERSION]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.audit.cli import terminal_safe
from xpscerpto.cli import context
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.settings import Policy
from xpscerpto.signing import TrustStore, generate_keypair, load_private_key, load_public_key

from ._verifier import verify_capsule
from .build import add_signature, build_capsule
from .format import Limits, parse_manifest, read_container
from .refusal import Refusal, refuse

if TYPE_CHECKING:
    from xpscerpto.audit.config import AuditConfig

    from .state_store import StateStore

__all__ = ["add_operator_commands", "add_publisher_commands", "main"]

#: Seconds ``xps status`` waits for a running engine's answer (it reads memory only).
STATUS_TIMEOUT = 10.0
#: Seconds ``xps rollback`` waits (the engine re-verifies and may wait for a lock).
CHANGE_TIMEOUT = 30.0
#: Seconds ``xps rollback`` waits for an engine that holds the home to open its socket.
STARTING_WAIT = 10.0


def _read(path: str) -> bytes:
    # read_stored: a FIFO or /dev/zero given as the capsule must not hang the command or fill
    # memory; nothing larger than the engine would accept is worth reading.
    limit = Limits().max_capsule_bytes
    try:
        return read_stored(Path(path), limit)
    except OSError as exc:
        shown = repr(path) if len(path) <= _SHOWN_PATH else f"(a path of {len(path)} characters)"
        if exc.errno == errno.EFBIG:
            raise refuse(Refusal.TOO_LARGE, f"capsule file {shown}: larger than {limit} bytes") from None
        raise refuse(Refusal.IO, f"capsule file {shown}: {exc.strerror or type(exc).__name__}") from None
    except ValueError:  # a NUL byte in the path
        raise refuse(Refusal.IO, "capsule file: not a usable path") from None


#: Longer paths are described in error messages, not repeated.
_SHOWN_PATH = 256


def _write(args: argparse.Namespace, path: str, raw: bytes, option: str = "--out") -> None:
    target = context.check_out(args, path, option)
    try:
        atomic_write(target, raw, 0o644)
    except OSError as exc:
        raise refuse(Refusal.IO, f"--out {path!r}: cannot write ({exc.strerror})") from None


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create a publisher key pair."""
    for suffix in (".key", ".pub"):
        # Never replaced (generate_keypair refuses an existing one), but not created in the home either.
        if not os.path.lexists(args.out + suffix):
            context.check_out(args, args.out + suffix)
    key = generate_keypair(args.out)
    out = terminal_safe(args.out)
    print(f"wrote {out}.key (0600) and {out}.pub; key id {key.keyid}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build and sign a capsule from a source directory."""
    signers = [load_private_key(k) for k in args.key]
    raw = build_capsule(args.src, signers, cosigners=[load_public_key(p) for p in args.cosigner])
    # Read back as an engine will, before it is written: a capsule every engine refuses (a
    # member deflated beyond the format's ratio) is not left on disk.
    m = parse_manifest(read_container(raw).manifest_bytes)
    _write(args, args.out, raw)
    print(f"built {terminal_safe(args.out)} ({len(raw)} bytes): {m.name} {m.version}, {len(m.files)} files, "
          f"signed by {len(signers)} key(s)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Add a signature to an existing capsule."""
    key, seed = load_private_key(args.key)
    raw = add_signature(_read(args.file), key, seed)
    _write(args, args.out or args.file, raw, "--out" if args.out else "FILE")
    print(f"signed {terminal_safe(args.out or args.file)} with {key.keyid}")
    return 0


def _describe(raw: bytes) -> dict[str, Any]:
    container = read_container(raw)
    m = parse_manifest(container.manifest_bytes)
    return {"name": m.name, "version": m.version, "format": m.format,
            "created": m.created.isoformat(), "expires": m.expires.isoformat(),
            "requires": {"engine_api": m.requires_engine_api, "python": m.requires_python},
            "operations": dict(m.operations), "kat": {k: list(v) for k, v in m.kat.items()},
            "publisher_keys": list(m.publisher_keys), "signatures": sorted(container.signatures),
            "files": {p: {"sha256": d, "size": s} for p, (d, s) in m.files.items()}}


def cmd_inspect(args: argparse.Namespace) -> int:
    """Show a capsule's manifest (nothing is verified or executed)."""
    info = _describe(_read(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} {info['version']}  ({info['format']})")
    print(f"  created {info['created']}, expires {info['expires']}")
    print(f"  requires engine API {info['requires']['engine_api']}, Python {info['requires']['python']}")
    # Nothing here is verified: names and key ids are the capsule author's text, escaped so that
    # none can rewrite the terminal or forge a line ("OK: signed by the release key").
    for op, entry in info["operations"].items():
        print(f"  provides {terminal_safe(op)} -> {terminal_safe(entry)}")
    print(f"  publisher keys: {terminal_safe(', '.join(info['publisher_keys']))}; "
          f"signatures by: {terminal_safe(', '.join(info['signatures']))}")
    for p, meta in info["files"].items():
        print(f"  {meta['size']:>8}  {meta['sha256'][:16]}…  {terminal_safe(p)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify signatures, digests, expiry and compatibility offline against given public keys."""
    trust = TrustStore()
    for pub in args.trust:
        trust = trust.add(load_public_key(pub), ["*"])
    trust = trust.with_threshold(args.threshold)
    # No engine, so no routing policy: the publisher's check covers the capsule itself.
    cap = verify_capsule(_read(args.file), trust=trust, highest={}, now=datetime.now(UTC),
                         policy=Policy(require_constant_time=False))
    print(f"OK {cap.label} sha256 {cap.sha256}: signed by {len(cap.signed_by)}/{args.threshold} keys, "
          f"{len(cap.files)} payload files verified")
    return 0


def add_publisher_commands(sub: Any) -> None:
    """Register keygen/build/sign/inspect/verify on an argparse subparsers object."""
    p = sub.add_parser("keygen", help=cmd_keygen.__doc__)
    p.add_argument("--out", required=True, metavar="NAME")
    p.set_defaults(func=cmd_keygen)
    p = sub.add_parser("build", help=cmd_build.__doc__)
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument("--key", action="append", required=True, metavar="NAME.key")
    p.add_argument("--cosigner", action="append", default=[], metavar="NAME.pub",
                   help="list this key in the manifest; its holder signs later with `sign`")
    p.add_argument("--out", required=True, metavar="FILE.capsule")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("sign", help=cmd_sign.__doc__)
    p.add_argument("file", metavar="FILE.capsule")
    p.add_argument("--key", required=True, metavar="NAME.key")
    p.add_argument("--out", metavar="FILE.capsule", help="write here instead of in place")
    p.set_defaults(func=cmd_sign)
    p = sub.add_parser("inspect", help=cmd_inspect.__doc__)
    p.add_argument("file", metavar="FILE.capsule")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help=cmd_verify.__doc__)
    p.add_argument("file", metavar="FILE.capsule")
    p.add_argument("--trust", action="append", required=True, metavar="NAME.pub")
    p.add_argument("--threshold", type=int, default=1)
    p.set_defaults(func=cmd_verify)


def cmd_watch(args: argparse.Namespace) -> int:
    """Watch a folder for capsules and serve the control socket until interrupted."""
    import dataclasses
    import signal
    import threading

    from xpscerpto._config_fields import number, timer_duration
    from xpscerpto.cli import context
    from xpscerpto.engine import Engine

    from .isolate import Gates
    from .service import WatchService
    from .updater import StagePlan

    config = context.home_config(args)
    metrics = None
    if args.metrics is not None:
        from xpscerpto.metrics import Metrics
        from xpscerpto.metrics.prometheus import parse_address

        parse_address(args.metrics)
        metrics = Metrics()
    # The overrides become the configuration in force (what the service re-reads at start and
    # at each emergency change, and what `config show` reports): a plan alone was overwritten
    # by the file's canary_share at start, silently (found by a review).
    overrides: dict[str, Any] = {}
    if args.canary_share is not None:
        overrides["canary_share"] = number(0.0, 1.0)(args.canary_share, "--canary-share")
    for option, attr in (("canary_seconds", "canary_seconds"), ("dual_run_seconds", "dual_run_seconds")):
        if getattr(args, option) is not None:
            overrides[attr] = timer_duration(getattr(args, option), "--" + option.replace("_", "-"))
    if overrides:
        config = dataclasses.replace(config, hotpatch=dataclasses.replace(config.hotpatch, **overrides))
    eng = Engine(config.engine, count=metrics.operation_counter if metrics is not None else None)
    h = config.hotpatch
    plan = StagePlan(canary_share=h.canary_share, canary_seconds=h.canary_seconds, dual_run_seconds=h.dual_run_seconds,
                     drain_timeout=h.drain_timeout_seconds, sample_every=h.sample_every,
                     sample_seconds=h.sample_seconds)
    gates = Gates(timeout_s=h.timeout_seconds, memory_bytes=h.memory_bytes, bench_bytes=h.bench_bytes,
                  max_slowdown=h.max_slowdown)
    peers: list[bytes] = []
    if args.cluster is not None:
        from xpscerpto.audit.journal import read_public_key
        from xpscerpto.db.postgres import check_dsn

        check_dsn(args.cluster, "--cluster")
        peers = [read_public_key(path) for path in args.peer_key]
    elif args.peer_key:
        raise PolicyError("--peer-key: only with --cluster")
    svc = WatchService(eng, args.dir, args.home, polling=args.polling or None, plan=plan, gates=gates,
                       settle_seconds=h.settle_seconds, config=config, cluster=args.cluster, node=args.node,
                       peers=peers)
    if metrics is not None:
        from xpscerpto.metrics.prometheus import serve

        metrics.watch_engine(eng)
        metrics.watch_journal(svc.updater.audit)
        serve(metrics, args.metrics)
    svc.start()
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
    from xpscerpto.audit.cli import terminal_safe
    from xpscerpto.cli import context

    from .control import NoEngineRunning, request, result

    home = context.home(args)
    try:
        data = result(request(home.socket, {"cmd": "status"}, timeout=STATUS_TIMEOUT))
    except NoEngineRunning:
        # Offline the stores are read without knowing where the lost record put them: with
        # state.json gone too, that reads as "nothing enabled". A running engine answers from
        # the record it bound at start.
        home.refuse_lost_record()
        config = context.config(args)
        data = _offline_status(home, config.hotpatch.state_store(home), config.audit)

    def text() -> None:
        for line in lines():
            print(terminal_safe(line))

    def lines() -> Iterator[str]:
        yield f"engine: {'running' if data['running'] else 'not running (committed state)'}"
        if data.get("table_version") is not None:
            yield f"routing table v{data['table_version']}"
            for op, provider in data["routes"].items():
                yield f"  {op:<24} {provider}"
        for a in data["active"]:
            yield f"active  {a['name']} {a['version']} ({a['sha256'][:12]}) {', '.join(a['operations'])}"
        if data.get("staging"):
            yield f"staging {data['staging']}"
        if data.get("tainted"):
            yield f"tainted: {data['tainted']}; no capsule is applied until the engine restarts"
        if data.get("gates_off"):
            yield f"hot-patch switches off (development): {', '.join(data['gates_off'])}"
        if isinstance(data.get("cluster"), dict):
            yield _cluster_line(data["cluster"])
        for r in data.get("refused", ()):
            yield (f"refused {r['name']} {r['version']} ({str(r['sha256'])[:12]}) at start: {r['detail']}; "
                   f"not routed (drop the same capsule again to restore its file, or `xps rollback {r['name']}`)")
        for r in data["retired"]:
            yield f"retired {r['name']} {r['version']} ({str(r['sha256'])[:12]})"
        for e in data["events"]:
            extra = " ".join(f"{k}={e[k]}" for k in ("name", "version", "reason", "operator") if e.get(k))
            yield f"  {e.get('time', '?')} {e.get('event', '?')!s:<20} {extra}"

    context.emit(args, data, text)
    return 0


def _cluster_line(cluster: dict[str, Any]) -> str:
    """The announcer's state (``xps watch --cluster``) as one line; the caller escapes it."""
    waiting, error = cluster.get("waiting"), cluster.get("last_error")
    if isinstance(waiting, int) and waiting > 0:
        queue = f"{waiting} change{'s' if waiting != 1 else ''} waiting to be announced"
    elif waiting == 0:
        queue = "nothing waiting"
    else:
        queue = "changes waiting: unknown"
    state = f"{queue}; last error: {error}" if error else f"announcing and following, {queue}"
    dropped = cluster.get("not_announced")
    if isinstance(dropped, int) and dropped > 0:
        state += (f"; {dropped} change{'s' if dropped != 1 else ''} never announced since the start "
                  "(journaled as PATCH_REJECT not-announced): the other nodes diverge")
    return f"cluster node {cluster.get('node')}: {state}"


def _offline_status(home: Any, states: StateStore, audit: AuditConfig) -> dict[str, Any]:
    """The committed state, and the last events of the journal the engine writes (maybe elsewhere)."""
    from .store import CapsuleStore, refused_entry

    try:
        state = states.load()
        journal = audit.journal(home.root, home.audit)
        try:
            events = journal.tail(20)
        finally:
            journal.close()
    finally:
        states.close()
    store = CapsuleStore(home)
    refused = []
    for a in state.active:
        try:
            store.get(a.sha256)
        except XpsError as exc:
            refused.append(refused_entry(a, exc))
    active = {a.sha256 for a in state.active}
    retired = {e.get("sha256"): e for e in state.history if e.get("sha256") not in active}
    return {"running": False, "table_version": None, "routes": {}, "staging": None, "refused": refused,
            "active": [{"name": a.name, "version": a.version, "sha256": a.sha256,
                        "operations": list(a.operations)} for a in state.active],
            "retired": [{k: e.get(k) for k in ("name", "version", "sha256")} for e in retired.values()],
            "highest": dict(state.highest), "events": events}


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll back a capsule (by name or operation) in the running engine, or in the committed state."""
    from xpscerpto.cli import context

    from .control import NoEngineRunning, request, result
    from .updater import rollback_offline

    home = context.home(args)
    starting_until = time.monotonic() + STARTING_WAIT
    config = None
    while True:
        try:
            answer = request(home.socket, {"cmd": "rollback", "target": args.target, "to": args.to,
                                           "operator": args.operator}, timeout=CHANGE_TIMEOUT)
            break
        except NoEngineRunning:
            # Offline, this command rewrites state.json and the journal itself: never in a home
            # whose record is lost (where its stores are, and what protects them, is unknown).
            home.refuse_lost_record()
            config = config or context.config(args)
            states = config.hotpatch.state_store(home)
            journal = None
            try:
                # The engine's own journal: its key may live outside the home (as SECURITY.md
                # advises), or the journal in a database; HOME/audit.log would fork the chain.
                journal = config.audit.journal(home.root, home.audit)
                cap = rollback_offline(home, args.target, to=args.to, operator=args.operator,
                                       config_document=config.to_mapping(), state_store=states,
                                       # only named in the record: taking a capsule out needs no pins
                                       trust_path=config.hotpatch.trust_store, audit=journal,
                                       notice=lambda m: print(f"xps rollback: warning: {m}", file=sys.stderr))
            except XpsError as exc:
                # An engine holds the home but its socket is not open yet (it is restoring):
                # ask it once it listens rather than edit the state under it.
                if exc.reason is Refusal.ENGINE_RUNNING and time.monotonic() < starting_until:
                    time.sleep(0.2)
                    continue
                raise
            finally:
                states.close()
                if journal is not None:
                    journal.close()
            print(f"rolled back {cap.name} {cap.version} in the committed state (no engine running)")
            return 0
    r = result(answer).get("rolled_back") or {}
    print(f"rolled back {r.get('name', '?')} {r.get('version', '?')} in the running engine")
    return 0


def cmd_capsule(args: argparse.Namespace) -> int:
    """Publisher commands (same as tools/make_capsule.py)."""
    return int(args.capsule_func(args))


def add_operator_commands(sub: Any) -> None:
    """Register ``watch``, ``status``, ``rollback`` and ``capsule …`` on the ``xps`` subparsers."""
    p = sub.add_parser("status", help=cmd_status.__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help=cmd_watch.__doc__)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--polling", action="store_true", help="poll instead of inotify")
    p.add_argument("--canary-share", type=float, help="override hotpatch.canary_share")
    p.add_argument("--canary-seconds", type=float, help="override hotpatch.canary_seconds")
    p.add_argument("--dual-run-seconds", type=float, help="override hotpatch.dual_run_seconds")
    p.add_argument("--cluster", metavar="DSN", help="postgresql:// database where nodes announce capsule "
                   "enables and rollbacks to each other (each verifies them itself)")
    p.add_argument("--node", default="local", help="this node's name in the cluster")
    p.add_argument("--peer-key", action="append", default=[], metavar="AUDIT.pub",
                   help="follow rollbacks announced by the node whose journal key this is (repeatable; a node "
                        "always trusts its own journal key, so a fleet sharing one needs none)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there (operations per "
                   "provider, auth failures, swaps, rollbacks); needs the metrics extra")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("rollback", help=cmd_rollback.__doc__)
    p.add_argument("target", metavar="OPERATION|CAPSULE|SHA256",
                   help="by sha256 (or its first 8+ hex digits) exactly that version, refused once it is gone; "
                        "by name or operation whatever serves under it when the request arrives")
    p.add_argument("--to", metavar="VERSION")
    p.add_argument("--operator", default="cli")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("capsule", help=cmd_capsule.__doc__)
    csub = p.add_subparsers(dest="capsule_cmd", required=True)
    add_publisher_commands(csub)
    for action in csub.choices.values():
        action.set_defaults(capsule_func=action.get_default("func"), func=cmd_capsule)


def main(argv: Sequence[str] | None = None, prog: str = "make_capsule.py") -> int:
    """Run one publisher command; exit status non-zero with a one-line reason on failure."""
    from xpscerpto.cli import OneLineParser

    parser = OneLineParser(prog=prog, description="Build, sign, inspect and verify XPScerpto capsules")
    add_publisher_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from xpscerpto.cli import run_command  # one error report for both entry points

    return run_command(prog, lambda: args.func(args))
