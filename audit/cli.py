"""``xps audit verify|anchor|tail``: check the journal, export its newest state, show its newest events.

Keep the output of ``xps audit anchor`` (``SEQ:HASH``) somewhere the home's writers cannot
reach (another host, a ticket, a log shipper); ``xps audit verify --anchor SEQ:HASH`` then
refuses a journal that was cut back below it or rewritten up to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xpscerpto.cli import context
from xpscerpto.errors import PolicyError

__all__ = ["add_audit_commands", "terminal_safe"]

#: Chain and signature fields: ``tail`` shows what happened, ``verify`` checks these.
_NOT_SHOWN = frozenset({"seq", "time", "event", "prev", "hash", "sig", "rsig", "key"})


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    Journal fields hold what others chose (a dropped file's name, a capsule's detail): printed
    raw, a newline or an escape sequence in them would forge lines or rewrite the operator's
    terminal.

    Example:
        >>> terminal_safe("evil.capsule\\n     7 PATCH_ENABLE")
        'evil.capsule\\\\n     7 PATCH_ENABLE'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the audit journal's chain and checkpoints, or show its newest events."""
    home = context.home(args)
    log = context.config(args).audit.journal(home.root, home.audit)
    if args.audit_cmd == "tail":
        events = log.tail(args.n)
        if args.json:
            json.dump(events, sys.stdout, indent=2)
            sys.stdout.write("\n")
        for e in events if not args.json else ():
            extra = " ".join(f"{k}={e[k]}" for k in sorted(e) if k not in _NOT_SHOWN)
            print(terminal_safe(f"{e.get('seq', '?')!s:>6} {e.get('time', '?')} {e.get('event', '?')!s:<22} {extra}"))
        return 0
    pub = _public_key(args.public_key) if args.public_key is not None else None
    anchor = _anchor(args.anchor) if getattr(args, "anchor", None) is not None else None
    report = log.verify(public_key=pub, strict=getattr(args, "strict", False), anchor=anchor)
    data = report.as_dict()
    if args.audit_cmd == "anchor":
        context.emit(args, {"anchor": report.anchor, "last_seq": report.last_seq, "last_hash": report.last_hash,
                            "public_key": report.public_key}, lambda: print(report.anchor))
        return 0
    context.emit(args, data, lambda: print(
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


def _anchor(text: str) -> tuple[int, str]:
    """``--anchor``: ``SEQ:HASH`` as ``xps audit anchor`` prints it."""
    seq, _, digest = text.strip().partition(":")
    # isdigit() alone also takes superscripts (which int() then rejects, untyped) and other
    # scripts' digits (which int() reads as numbers the operator never typed).
    if (not (seq.isascii() and seq.isdigit()) or len(seq) > 19 or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)):
        raise PolicyError(f"--anchor: expected SEQ:HASH (a record number and 64 lowercase hex digits), got "
                          f"{len(text)} characters")
    if int(seq) == 0 and digest != "0" * 64:
        raise PolicyError("--anchor: seq 0 (an empty journal) has the hash 000…0; any other is no anchor")
    return int(seq), digest


def add_audit_commands(sub: Any) -> None:
    """Register ``audit`` on the ``xps`` subparsers object."""
    p = sub.add_parser("audit", help=cmd_audit.__doc__)
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    a = asub.add_parser("verify", help="check every hash link and checkpoint signature")
    a.add_argument("--public-key", metavar="HEX", help="pin the checkpoint key instead of reading audit.pub")
    a.add_argument("--strict", action="store_true", help="fail on a torn last line or an unsigned record")
    a.add_argument("--anchor", metavar="SEQ:HASH", help="an exported anchor: the journal must still hold it")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("anchor", help="verify, then print SEQ:HASH of the newest record to keep elsewhere")
    a.add_argument("--public-key", metavar="HEX", help="pin the key instead of reading audit.pub")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("tail", help="newest events")
    a.add_argument("-n", type=int, default=20)
    a.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
