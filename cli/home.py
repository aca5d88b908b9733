"""``xps init`` and ``xps policy …``: create a home deliberately, and change its recorded policy.

    xps init [--config FILE] [--operator NAME.pub ...] [--adopt]
    xps policy show [--json]
    xps policy request FILE --reason R --out REQ.json      (then: xps key approve REQ.json …)
    xps policy apply FILE --reason R [--approvals REQ.json]

``xps init`` creates the home's record with the security policy of ``--config`` (or the
defaults), its KEK and keyring, its routing state, and registers the first operators — the
only moment operators join without approvals (all of them in one transaction, and only while
the home has neither an operator nor a key). A home is also initialised by the first command
run on an empty directory; ``init`` is the way to choose its policy on purpose.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from xpscerpto.config import XpsConfig, policy_changes
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError, XpsError

from . import context

__all__ = ["add_home_commands"]


def cmd_init(args: argparse.Namespace) -> int:
    """Initialise a home: record its policy, create its KEK, keyring and routing state."""
    from xpscerpto.capsules.store import RoutingState
    from xpscerpto.keyring import Keyring

    config = context.config(args)
    home = context.home(args)
    existed = home.record_path.exists()
    if args.adopt and existed and home.is_sealed("keyring"):
        # Adoption seals the home's files as they are; a home with a record has nothing to adopt,
        # and sealing its database again would bless an edit of it.
        raise PolicyError(f"home {str(home.root)!r}: it has a home.json and a sealed keyring already; --adopt "
                          "only adopts a home that has neither")
    record = home.initialise(policy=config.security_policy(), adopt=args.adopt)
    given = args.config is not None
    config = config.under_recorded_routing(record.policy, given=given)
    try:
        ring = Keyring(home, engine=Engine(config.engine), config=config.keyring if given else None,
                       approvals=config.approvals if given else None, audit_config=config.audit,
                       operator=args.operator_name, adopt=args.adopt)
    except XpsError:
        if args.adopt and not existed:
            # The record this adoption wrote, refused by the keyring (a policy other than the one
            # it sealed, say): left in place it would stand as the home's policy for commands
            # that do not open the keyring, and block the corrected retry.
            home.record_path.unlink(missing_ok=True)
        raise
    with ring:
        operators = ring.register_operators(args.operator) if args.operator else []
        if home.check_store("routing"):
            RoutingState().save(home.state)
            home.register_store("routing")
        # A first init killed before it journaled the home's creation is finished by the next
        # one; the journal asked is the configured one (a file, or PostgreSQL for a fleet).
        if not ring.adopted and (not existed or not ring.audit.mentions("HOME_INIT")):  # adopted: journaled
            ring.audit.record("HOME_INIT", stores=sorted(home.record().stores), operators=operators,
                              adopted=bool(args.adopt), operator=args.operator_name)
        home.register_journal()
    print(f"{'initialised' if not existed else 'already initialised'} {home.root}: "
          f"stores {', '.join(sorted(home.record().stores))}; "
          f"{len(ring.operators().keys)} operator(s); approvals revoke {record.policy['approvals.revoke']}, "
          f"destroy {record.policy['approvals.destroy']}")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    """Show the home's recorded security policy, or change it (audited; approvals to loosen)."""
    from xpscerpto.keyring import ApprovalRequest, Approvals, Keyring

    home = context.home(args)
    if args.policy_cmd == "show":
        # What home.json records, once the keyring's open compared it with the database's sealed
        # copy: shown unchecked, an edited floor looked like the one in force (found by a review).
        policy = dict(context.recorded_policy(home, context.config(args)))
        context.emit(args, policy, lambda: print("\n".join(f"{k} = {json.dumps(v)}" for k, v in policy.items())))
        return 0
    new = XpsConfig.load(args.file)
    # Opened under the recorded policy (the new one only takes effect through apply_policy), but
    # where the home's configuration puts its database and journal: opened with the defaults, a
    # PostgreSQL keyring was refused, and a journal configured elsewhere (a signing key outside
    # the home, the fleet's database) never got the POLICY_CHANGE (found by a review).
    located = (context.config(args) if args.config is not None else new).with_security_policy(
        home.record().policy)
    with Keyring(home, engine=Engine(new.engine), config=located.keyring, audit_config=located.audit,
                 operator=args.operator_name) as ring:
        old = dict(home.record().policy)
        changes = policy_changes(old, new.security_policy())
        if not changes:
            print("no change: the file's security policy is the one this home recorded")
            return 0
        if args.policy_cmd == "request":
            req = ApprovalRequest.new("policy", ring.policy_digest(old, new.security_policy()), reason=args.reason,
                                      ttl=ring.approvals_config.request_ttl_seconds, now=ring.clock(),
                                      keyring=ring.keyring_id,
                                      policy=(old, new.security_policy()))
            from xpscerpto.audit.cli import terminal_safe  # not at import: the audit CLI imports xpscerpto.cli

            Approvals(req).save(context.check_out(args, args.out))
            out = terminal_safe(args.out)
            print(f"wrote {out}: policy change ({len(changes)} key(s)); have approvers run `xps key approve {out}`")
            return 0
        approvals = Approvals.load(args.approvals) if args.approvals else None
        done = ring.apply_policy(new, reason=args.reason, approvals=approvals)
        from xpscerpto.keyring.cli import _warn_if_not_journaled

        _warn_if_not_journaled(ring)
    for c in done:
        print(f"{c.key}: {json.dumps(c.old)} -> {json.dumps(c.new)} ({'looser' if c.loosens else 'stricter'})")
    return 0


def add_home_commands(sub: Any) -> None:
    """Register ``init`` and ``policy`` on the ``xps`` subparsers object."""
    p = sub.add_parser("init", help=cmd_init.__doc__)
    p.add_argument("--operator", action="append", default=[], metavar="NAME.pub",
                   help="register this operator key (repeatable; the first operators join here)")
    p.add_argument("--adopt", action="store_true", help="adopt a home that holds stores but no home.json")
    p.add_argument("--as", dest="operator_name", default="cli", help="who is acting (journaled)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("policy", help=cmd_policy.__doc__)
    p.add_argument("--as", dest="operator_name", default="cli", help="who is acting (journaled)")
    psub = p.add_subparsers(dest="policy_cmd", required=True)
    s = psub.add_parser("show", help="the security policy this home recorded")
    s.add_argument("--json", action="store_true")
    for name, text in (("request", "write an approval request for changing the policy to FILE's"),
                       ("apply", "change the recorded policy to FILE's (stricter: the operator; looser: approvals)")):
        s = psub.add_parser(name, help=text)
        s.add_argument("file", metavar="FILE", help="a configuration file holding the new policy")
        s.add_argument("--reason", required=True)
        if name == "request":
            s.add_argument("--out", required=True, metavar="REQ.json")
        else:
            s.add_argument("--approvals", metavar="REQ.json")
    p.set_defaults(func=cmd_policy)
