"""``xps``: parse the global options and dispatch to each subsystem's commands.

The core's own commands live here (``providers``, ``selftest``, ``demo``, ``version``,
``config``); keys, capsules, trust and audit register theirs from their packages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NoReturn

from xpscerpto.config import XpsConfig
from xpscerpto.engine import Engine
from xpscerpto.errors import ErrorCode, XpsError

from . import context

__all__ = ["OneLineParser", "build_parser", "main", "run_command"]

#: Seconds ``xps config emergency`` waits (the engine re-verifies and may wait for a lock).
CHANGE_TIMEOUT = 30.0


def cmd_providers(args: argparse.Namespace) -> int:
    """Print the routing table: operation -> provider, and why others were not chosen."""
    from xpscerpto import _tuner, isa_mask
    from xpscerpto._autotune import load_cache

    from .tune import describe_route

    # As `xps watch` would route here: under the home's recorded floor and emergency overrides
    # (the plain file listed routes the home forbids; found by a review).
    cfg = context.effective_config(args).engine
    # What a running engine would route once tuned: the cached measurement, if this machine
    # has one for these providers (measuring here would make a listing take seconds).
    eng = Engine(replace(cfg, autotune=False))
    mask = isa_mask.effective(cfg.isa_mask)
    tuning = "off" if not _tuner.enabled(cfg) else "not measured yet on this machine (xps tune)"
    if _tuner.enabled(cfg):
        cached = load_cache(_tuner.cache_path(), eng.tuning_fingerprint())
        if cached is not None:
            eng.use_tuning(cached)
            tuning = f"measured {cached.created} (cached)"
    table, state = eng.table, eng.state
    # Imported only now: while masked its hook registers nothing, and loaded before the engine
    # it would have changed the engine's fingerprint from a running one's (found by a review).
    from xpscerpto.plugins import jit

    jit_status = jit.status(" ".join(f"-{t}" for t in sorted(mask)))
    data = {
        "table_version": table.version,
        "autotune": tuning,
        "isa_mask": sorted(mask),
        "openssl_avx512": isa_mask.openssl_demotion(cfg.isa_mask),
        "jit": {"state": jit_status.state, "reason": jit_status.reason},
        "providers": [{"name": p.name, "backend": p.backend, "version": p.version,
                       "priority": p.priority, "constant_time": p.constant_time,
                       "operations": list(p.operations)} for p in state.providers],
        "routes": {op: {"provider": r.provider, "backend": r.backend, "chosen_by": r.chosen_by,
                        "limit": r.limit, "large_provider": r.large_provider,
                        "keyed_provider": r.keyed_provider, "keyed_limit": r.keyed_limit,
                        "keyed_large_provider": r.keyed_large_provider,
                        "candidates": [{"provider": c.provider, "excluded": c.excluded}
                                       for c in r.candidates]}
                   for op, r in table.routes.items()},
        "unrouted": dict(table.unrouted),
        "plugin_failures": [{"plugin": f.plugin, "reason": f.reason} for f in state.failures],
    }

    def text() -> None:
        print(f"routing table v{table.version}; autotune: {tuning}; incident mask: "
              f"{' '.join('-' + t for t in sorted(mask)) or 'none'}")
        print(f"  {'operation':<24} {'served by':<32} also offered by")
        for op, r in table.routes.items():
            others = ", ".join(f"{c.provider} ({c.excluded})" for c in r.candidates
                               if c.excluded and c.provider not in r.providers) or "-"
            print(f"  {op:<24} {describe_route(r):<32} {others}")
        for op, reason in table.unrouted.items():
            print(f"  {op:<24} {'-':<32} NOT ROUTED: {reason}")
        print("providers:")
        for p in state.providers:
            print(f"  {p.name:<12} priority {p.priority:<4} {p.backend}")
        print(f"  jit kernels: {jit_status.state}: {jit_status.reason}")
        print(f"  OpenSSL AVX-512: {data['openssl_avx512']}")
        for f in state.failures:
            print(f"  FAILED plugin {f.plugin}: {f.reason}")

    context.emit(args, data, text)
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Print the power-on self-test result per provider x operation; exit 1 if any failed."""
    eng = context.engine(args)
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

    context.emit(args, data, text)
    return 1 if any(not r.passed for r in results) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job end to end (see xpscerpto.cli.demo)."""
    from .demo import run_demo

    # Autotune off: the demo narrates one routing table and checks each step against it; a
    # background measurement publishing another table mid-demo would change the story (step
    # 12 shows measured routing on an engine of its own).
    return run_demo(Engine(replace(context.config(args).engine, autotune=False)))


def cmd_config(args: argparse.Namespace) -> int:
    """Check a configuration file, show the effective one, or make an audited emergency change."""
    if args.config_cmd == "check":
        XpsConfig.load(args.file)
        print(f"{args.file}: OK")
        return 0
    if args.config_cmd == "show":
        # The Appendix C shape; JSON is also YAML, so the output loads back with --config. The
        # home's record and overrides apply: the file alone was not what an engine here runs.
        print(json.dumps(context.effective_config(args).to_document(), indent=2))
        return 0
    from xpscerpto.capsules.control import NoEngineRunning, request, result

    try:
        value = json.loads(args.value)
    except ValueError:
        value = args.value
    try:
        answer = request(context.home(args).socket,
                         {"cmd": "emergency", "key": args.key, "value": value, "operator": args.operator,
                          "reason": args.reason}, timeout=CHANGE_TIMEOUT)
    except NoEngineRunning:
        raise XpsError("config emergency: no engine is running here (edit the file and restart instead)",
                       code=ErrorCode.POLICY) from None
    print(f"{args.key} = {json.dumps(result(answer).get('value'))} in the running engine (audited)")
    return 0


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
        # argparse quotes unrecognized arguments as typed: escaped, like every error line.
        self.exit(2, f"{self.prog.split()[0]}: error: XPS_ERR_POLICY: {_one_line(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = OneLineParser(prog="xps", description="XPScerpto crypto-agility engine")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (.yaml, .yml, .toml or .json; see docs/CONFIGURATION.md)")
    parser.add_argument("--home", metavar="DIR", help="engine state directory (default: $XPS_HOME or "
                        "~/.local/state/xpscerpto)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, has_json in (("providers", cmd_providers, True), ("selftest", cmd_selftest, True),
                               ("demo", cmd_demo, False), ("version", cmd_version, False)):
        p = sub.add_parser(name, help=(fn.__doc__ or "").split("\n")[0])
        if has_json:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    csub = p.add_subparsers(dest="config_cmd", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    csub.add_parser("show", help="the effective configuration (defaults + --config), as an Appendix C document")
    c = csub.add_parser("emergency", help="audited runtime change of a whitelisted key in the running engine")
    c.add_argument("key", metavar="KEY", help="e.g. engine.policy.forbid")
    c.add_argument("value", metavar="VALUE", help="JSON, e.g. '[\"aes128\"]'")
    c.add_argument("--reason", required=True)
    c.add_argument("--operator", default="cli")
    p.set_defaults(func=cmd_config)

    # Each subsystem owns its commands; imported here, not at module level, so that
    # `import xpscerpto.cli` stays cheap and the subsystems may use xpscerpto.cli.context.
    from xpscerpto.audit.cli import add_audit_commands
    from xpscerpto.capsules.cli import add_operator_commands
    from xpscerpto.channel.cli import add_channel_commands
    from xpscerpto.keyring.cli import add_key_commands
    from xpscerpto.orchestrator.cli import add_db_commands, add_orch_commands
    from xpscerpto.signing.cli import add_trust_commands

    from .home import add_home_commands
    from .tune import add_tune_commands

    add_home_commands(sub)
    add_tune_commands(sub)
    add_operator_commands(sub)
    add_trust_commands(sub)
    add_audit_commands(sub)
    add_key_commands(sub)
    add_channel_commands(sub)
    add_orch_commands(sub)
    add_db_commands(sub)
    return parser


#: Raised by the standard library on bad input or I/O; reported as XPS_ERR_INTERNAL, without a traceback.
#: MemoryError: input larger than the memory a limit (ulimit, cgroup) leaves; the stack is unwound
#: by the time it is reported, so the one line can still be printed.
_LAST_RESORT = (OSError, sqlite3.Error, ValueError, KeyError, UnicodeError, json.JSONDecodeError,
                MemoryError)


#: Line breaks and blanks an error message may hold: joined into one line. Every other character
#: that is not printable (C0, DEL, C1, U+2028, bidi overrides) is escaped, not collapsed.
_BLANKS = re.compile(r"[ \t\n\r\f\v]+")


def _one_line(text: str) -> str:
    """``text`` as one printable line: the last line of defence for whatever a message quotes.

    Messages may carry text others chose (a forged journal record, a file name, an argument);
    an escape sequence printed raw would rewrite the operator's terminal, e.g. hide a refusal
    behind a fake "OK" line.
    """
    from xpscerpto.audit.cli import terminal_safe  # not at import: the audit CLI imports xpscerpto.cli

    return terminal_safe(_BLANKS.sub(" ", text).strip())


def run_command(prog: str, call: Callable[[], int]) -> int:
    """Run a command; any failure is one line ``PROG: error: CODE: message`` on stderr and exit 2.

    XpsError carries its code; a few standard exceptions that bad input or a failing disk
    raise are reported as ``XPS_ERR_INTERNAL: <Type>: <message>`` (a UnicodeError without the
    text it quotes), and so is running out of memory. Text holding non-UTF-8 bytes of argv or
    the environment, unchecked by the command, is ``XPS_ERR_POLICY``. Ctrl-C exits 130, a
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
    except UnicodeEncodeError as exc:
        if exc.reason != "surrogates not allowed":
            return _internal(prog, exc)
        # A lone surrogate is how Python hands over non-UTF-8 bytes of argv, the environment
        # or a file name: bad input that a command did not check by name. Which one is not
        # known here, and the text (maybe a PIN) is not shown.
        print(f"{prog}: error: {ErrorCode.POLICY}: an argument, environment variable or file name is not valid "
              "UTF-8 (it holds bytes that are not UTF-8 text)", file=sys.stderr)
        return 2
    except _LAST_RESORT as exc:
        return _internal(prog, exc)


def _internal(prog: str, exc: BaseException) -> int:
    # A UnicodeError's message quotes the offending character or byte and its position, which
    # may come from a secret; its codec and reason say enough.
    if isinstance(exc, UnicodeEncodeError | UnicodeDecodeError):
        detail = f"{exc.encoding} codec: {exc.reason}"
    elif isinstance(exc, MemoryError):
        detail = "out of memory (an input too large for the memory this process may use?)"
    else:
        detail = _one_line(str(exc))
    print(f"{prog}: error: {ErrorCode.INTERNAL}: {type(exc).__name__}: {detail}", file=sys.stderr)
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
