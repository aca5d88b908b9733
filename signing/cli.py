"""``xps trust …``: the operator's pins of publisher keys (who may ship which operations).

    xps trust add NAME.pub --ops 'aead.*' [--label L]
    xps trust remove KEYID
    xps trust threshold K
    xps trust list [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._atomic import locked_beside
from xpscerpto.cli import context
from xpscerpto.errors import PolicyError

from .keys import load_public_key
from .trust import TrustStore

if TYPE_CHECKING:
    from xpscerpto.config import XpsConfig
    from xpscerpto.home import Home

__all__ = ["add_trust_commands"]


def cmd_trust(args: argparse.Namespace) -> int:
    """Manage pinned publisher keys: add, list, remove, threshold."""
    home = context.home(args)
    # Without its record nothing says where the home keeps its trust store: listing the default
    # one could show pins the engine does not use.
    home.refuse_lost_record()
    config = context.config(args)
    path = config.hotpatch.trust_path(home)  # hotpatch.trust_store: outside the home, if set
    if args.trust_cmd in ("add", "remove", "threshold"):
        if not path.parent.is_dir():  # refused before the journal records a change never made
            raise PolicyError(f"trust store {str(path)!r}: its folder does not exist; create it (writable only "
                              "by operators) first")
        with locked_beside(path, "trust store"):
            return _change(args, home, config, path)
    store = TrustStore.load(path)
    data = store.to_json()
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"threshold {store.threshold}")
        for k in store.keys.values():
            print(f"  {k.keyid}  {k.label:<16} ops: {', '.join(k.ops)}")
    return 0


def _change(args: argparse.Namespace, home: Home, config: XpsConfig, path: Path) -> int:
    """add / remove / threshold, under the lock: load, journal, save."""
    store = TrustStore.load(path)
    if args.trust_cmd == "add":
        key = load_public_key(args.pub)
        new = store.add(key, args.ops, args.label or Path(args.pub).stem)
        change: dict[str, Any] = {"keyid": key.keyid, "ops": list(args.ops)}
        done = f"trusted {key.keyid} for {', '.join(args.ops)}"
    elif args.trust_cmd == "remove":
        new = store.remove(args.keyid)
        change, done = {"keyid": args.keyid}, f"removed {args.keyid}"
    else:
        new = store.with_threshold(args.k)
        change, done = {}, f"threshold set to {args.k}"
    # Who may ship code into the engine is the most security-relevant setting there is:
    # journaled first (a kill before the save over-reports, never hides a change).
    home.initialise(policy=config.security_policy())  # the first command on an empty home records it
    journal = config.audit.journal(home.root, home.audit)
    journal.record("TRUST_CHANGE", action=args.trust_cmd, threshold=new.threshold,
                   pins=sorted(new.keys), store=str(path), operator="cli", **change)
    if Path(getattr(journal, "path", "")) == home.audit:
        home.register_journal()
    new.save(path)
    config.hotpatch.trust_path(home)  # records a store outside the home, now that it exists
    print(done)
    return 0


def add_trust_commands(sub: Any) -> None:
    """Register ``trust`` on the ``xps`` subparsers object."""
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
