"""``xps key …`` and ``xps operator …``: the keyring from the command line.

    xps key create NAME [--algo AEAD] [--policy rotate=90d,max_encryptions=N]
    xps key list|describe REF [--json]
    xps key rotate REF [--if-version N] [--algorithm AEAD]
    xps key request revoke|destroy|rewrap REF --reason R [--version N] [--emergency] [--to SUCCESSOR] --out REQ.json
    xps key approve REQ.json --key OPERATOR.key          (each approver, in turn)
    xps key revoke REF --reason R [--emergency] [--approvals REQ.json]
    xps key destroy REF [--version N] [--emergency] [--approvals REQ.json]
    xps key encrypt NAME [--aad TEXT] < plaintext > blob  (stdin: at most 1 GiB)
    xps key decrypt [--aad TEXT] < blob > plaintext      (stdin: at most 1 GiB)
    xps key rewrap FILE... [--aad TEXT]                   (each FILE a regular file of at most 1 GiB)
    xps key rewrap --from-revoked REVOKED --to SUCCESSOR --reason R [--approvals REQ.json] FILE...
    xps operator add NAME.pub [--label L] [--approvals REQ.json]
    xps operator remove KEYID [--approvals REQ.json]
    xps operator request add NAME.pub|remove KEYID --reason R --out REQ.json
    xps operator list
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xpscerpto._atomic import atomic_write
from xpscerpto._config_fields import utf8_text
from xpscerpto._stored_file import read_stored
from xpscerpto.audit.cli import terminal_safe
from xpscerpto.cli import context
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.signing import load_private_key

from .approvals import ApprovalRequest, Approvals
from .keyring import KeyInfo, Keyring

__all__ = ["add_key_commands"]


#: Arguments read as text, by attribute, with the name the command line gives them. A lone
#: surrogate in one stands for a non-UTF-8 byte of argv: no key name, reason or AAD can hold it,
#: and past this point it would fail deep in the database or the AEAD as an untyped error. File
#: names are not here: any bytes are a valid path, and the OS gets them back unchanged.
_TEXT_ARGS: dict[str, str] = {
    "name": "NAME", "ref": "NAME|ID", "to": "--to", "from_revoked": "--from-revoked", "reason": "--reason",
    "aad": "--aad", "algo": "--algo", "algorithm": "--algorithm", "policy": "--policy", "keyid": "KEYID",
}


def _check_text_args(args: argparse.Namespace) -> None:
    """Refuse a non-UTF-8 text argument by its name, never echoing it, before anything is opened."""
    given = [(shown, getattr(args, attr, None)) for attr, shown in _TEXT_ARGS.items()]
    if getattr(args, "what", None) == "remove":  # `operator request remove KEYID`; for add it is a file
        given.append(("KEYID", args.subject))
    for shown, value in given:
        if isinstance(value, str) and not utf8_text(value):
            raise PolicyError(f"{shown}: not valid UTF-8 (the command line held bytes that are not UTF-8 text)")


def _ring(args: argparse.Namespace) -> Keyring:
    # Without --config the keyring opens under the policy its home recorded; with one, the
    # file's security keys must match that policy (`xps policy apply` changes it), and its
    # routing policy may only add to the recorded one. The open itself checks the record
    # against the keyring's sealed copy, so the record is read here unchecked (one open, not two).
    home = context.home(args)
    before = home.record().policy if home.record_path.exists() else None
    ring = _open_ring(args, home)
    if before is not None and home.record().policy != before:
        # The open finished a `policy apply` killed before its home.json write: the engine must
        # route under the policy now recorded, not the one read before.
        ring.close()
        ring = _open_ring(args, home)
    return ring


def _open_ring(args: argparse.Namespace, home: Home) -> Keyring:
    config = context.home_config(args, verify=False)
    given = args.config is not None
    return Keyring(home, engine=Engine(config.engine), config=config.keyring if given else None,
                   approvals=config.approvals if given else None, audit_config=config.audit,
                   operator=args.operator)


def _info_json(info: KeyInfo) -> dict[str, Any]:
    doc = asdict(info)
    doc["state"] = str(info.state)
    for v in doc["versions"]:
        v["state"] = str(v["state"])
    return doc


def _print_info(info: KeyInfo) -> None:
    print(f"{info.name}  id {info.key_id}  {info.algorithm}  {info.state}  policy {info.policy}")
    if info.revoke_reason:
        print(f"  revoked: {info.revoke_reason}")
    for v in info.versions:
        until = (f", decrypts until {time.strftime('%Y-%m-%d %H:%M', time.gmtime(v.decrypts_until))}Z"
                 if v.decrypts_until else "")
        print(f"  v{v.version:<3} {v.state:<9} encryptions<={v.encryptions} decryptions={v.decryptions}{until}")


def cmd_key(args: argparse.Namespace) -> int:
    """Dispatch ``xps key`` subcommands."""
    action = args.key_cmd
    _check_text_args(args)
    if action == "approve":
        bundle = Approvals.load(args.request)
        # The whole signed request, before signing: the requester wrote every field of it
        # (an emergency flag, a version, an expiry), and the approver signs all of them.
        _print_request(bundle.request)
        key, seed = load_private_key(args.key)
        bundle.signed_by(key, seed).save(args.request)
        seed.wipe()
        print(f"approved {bundle.request.action} of {bundle.request.key_id} as {key.keyid}")
        return 0
    approvals = Approvals.load(args.approvals) if getattr(args, "approvals", None) else None
    with _ring(args) as ring:
        if action == "create":
            print(ring.create(args.name, args.algo, args.policy))
        elif action == "list":
            infos = ring.list()
            if args.json:
                json.dump([_info_json(i) for i in infos], sys.stdout, indent=2)
                sys.stdout.write("\n")
            for i in infos if not args.json else ():
                print(f"{i.name:<24} {i.key_id}  {i.algorithm:<20} {i.state:<9} v{i.active_version or '-'}")
        elif action == "describe":
            info = ring.describe(args.ref)
            if args.json:
                print(json.dumps(_info_json(info), indent=2))
            else:
                _print_info(info)
        elif action == "rotate":
            print(f"active version {ring.rotate(args.ref, expected_version=args.if_version, algorithm=args.algorithm)}")
        elif action == "request":
            kid = ring.describe(args.ref).key_id
            if args.action == "rewrap":
                if not args.to:
                    raise PolicyError("--to: a rewrap request names the successor key")
                kid = f"{kid}:{ring.describe(args.to).key_id}"
            req = ApprovalRequest.new(args.action, kid, reason=args.reason, version=args.version,
                                      emergency=args.emergency, ttl=ring.approvals_config.request_ttl_seconds,
                                      now=ring.clock(), keyring=ring.keyring_id)
            Approvals(req).save(context.check_out(args, args.out))
            out = terminal_safe(args.out)
            print(f"wrote {out}: {args.action} of {kid}; have approvers run `xps key approve {out}`")
        elif action == "revoke":
            ring.revoke(args.ref, args.reason, approvals=approvals, emergency=args.emergency)
            print(f"revoked {args.ref}")
        elif action == "destroy":
            ring.destroy(args.ref, version=args.version, approvals=approvals, emergency=args.emergency)
            print(f"destroyed {args.ref}" + (f" version {args.version}" if args.version else ""))
        elif action == "encrypt":
            sys.stdout.buffer.write(ring.encrypt(args.name, _read_stdin(), args.aad.encode()))
        elif action == "decrypt":
            sys.stdout.buffer.write(ring.decrypt(_read_stdin(), args.aad.encode()))
        elif action == "rewrap":
            files = [Path(f) for f in args.files]
            if args.from_revoked:
                if not args.to or not args.reason:
                    raise PolicyError("--from-revoked: needs --to SUCCESSOR and --reason")
                old = ring.describe(args.from_revoked).key_id
                grant = ring.store.grant(old)
                if grant is None or ring.clock() >= grant.expires or grant.successor != ring.describe(args.to).key_id:
                    ring.grant_rewrap(args.from_revoked, args.to, reason=args.reason, approvals=approvals)
                changed = _rewrap_revoked_files(ring, files, args.aad.encode())
            else:
                changed = _rewrap_files(ring, files, args.aad.encode())
            print(f"rewrapped {changed} of {len(args.files)} file(s)")
        _warn_if_not_journaled(ring)
    return 0


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _print_request(req: ApprovalRequest) -> None:
    """Every field of a request, one per line (ApprovalRequest checked each: printable, bounded)."""
    assert req.created is not None  # a request without one is refused when read
    print(f"request: {req.action} of {req.key_id}")
    print(f"  keyring:   {req.keyring} (the requester's `xps key request` names it; compare)")
    print(f"  version:   {req.version if req.version is not None else 'all'}")
    print(f"  emergency: {'yes' if req.emergency else 'no'}")
    print(f"  created:   {_utc(req.created)}")
    print(f"  expires:   {_utc(req.expires)} ({(req.expires - req.created) / 3600:.1f} h after creation)")
    print(f"  reason:    {json.dumps(req.reason, ensure_ascii=False)}")
    print(f"  nonce:     {req.nonce}")
    for key, old, new in req.changes():  # JSON with ASCII escapes: nothing a terminal acts on
        print(f"  change:    {json.dumps(key)}: {json.dumps(old)} -> {json.dumps(new)}")


def _warn_if_not_journaled(ring: Keyring) -> None:
    """Say so when a committed change's journal record could not be written.

    The keyring keeps the record queued in its database and delivers it at the next open or
    change (it does not fail a change that committed); without this line the command would look
    fully done. One more delivery attempt gives the reason (and delivers if the cause passed).
    """
    try:
        ring.outbox.deliver()
    except XpsError as exc:
        problem = " ".join(str(exc).split())
    except OSError as exc:
        problem = f"{type(exc).__name__}: {exc.strerror}"
    else:
        return
    print(f"warning: journal not written: {problem}; the record stays queued in the keyring database "
          "and is journaled once the journal is repaired", file=sys.stderr)


_BAR = 30

#: The largest blob file ``xps key rewrap`` reads (1 GiB). Blobs are read whole, and the plain
#: rewrap holds every file (old and new) in memory before it writes one, so the bound also keeps
#: a mistyped path (``/dev/zero``, a disk image) from exhausting memory. Larger blobs can be
#: rewrapped through the API (:meth:`Keyring.rewrap`).
MAX_BLOB_FILE = 1 << 30


#: Bytes read from stdin per step: memory grows with what actually arrives, not with the cap.
_STDIN_CHUNK = 1 << 20


def _read_stdin() -> bytes:
    """All of stdin, at most :data:`MAX_BLOB_FILE` bytes (read at call time, so tests may lower it).

    ``xps key decrypt < /dev/zero`` or an endless pipe would otherwise grow the process until
    the OS stops it; past the cap the input is refused, as ``key rewrap`` refuses a larger file.

    Raises:
        PolicyError: stdin holds more than :data:`MAX_BLOB_FILE` bytes.
    """
    limit = MAX_BLOB_FILE
    buf = io.BytesIO()
    while chunk := sys.stdin.buffer.read(min(_STDIN_CHUNK, limit + 1 - buf.tell())):
        buf.write(chunk)
        if buf.tell() > limit:
            raise PolicyError(f"stdin: more than {limit} bytes, the most `xps key encrypt|decrypt` reads")
    return buf.getvalue()


class _Progress:
    """``(done, total)`` callback of :meth:`Keyring.rewrap`: a bar on stderr, if wanted.

    Drawn when stderr is a terminal or for more than 1,000 files; at most ~100 redraws.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.show = total > 0 and (total > 1000 or sys.stderr.isatty())
        self._step = max(1, total // 100)
        self._open = False  # a bar line without its newline is on screen

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if not self.show or (done % self._step and done != total):
            return
        filled = _BAR * done // max(total, 1)
        sys.stderr.write(f"\rrewrap [{'#' * filled}{'.' * (_BAR - filled)}] {done}/{total}")
        self._open = done != total
        if not self._open:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End an interrupted bar's line so an error message starts on its own."""
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False


def _rewrap_files(ring: Keyring, paths: list[Path], aad: bytes) -> int:
    """Rewrap blobs stored one per file: all are re-encrypted first, then each is replaced
    atomically — so a file that is not a blob (or not a regular file of at most
    :data:`MAX_BLOB_FILE` bytes) fails the run before anything is written."""
    blobs = []
    for path in paths:
        try:
            # Never a FIFO (its open would wait for a writer for ever), a device or a huge file.
            blobs.append(read_stored(path, MAX_BLOB_FILE))
        except OSError as exc:
            raise PolicyError(f"rewrap: file {str(path)!r}: cannot read ({exc.strerror})") from None
    progress = _Progress(len(blobs))
    try:
        new = ring.rewrap(blobs, aad, progress=progress)
    except XpsError as exc:
        progress.close()
        # The callback ran once per finished blob, so the failing one is the next.
        where = f"file {str(paths[progress.done])!r}" if progress.done < len(paths) else "files"
        raise XpsError(f"rewrap: {where}: {exc.args[0]}", code=exc.code, reason=exc.reason) from None
    return _write_changed(paths, blobs, new)


def _rewrap_revoked_files(ring: Keyring, paths: list[Path], aad: bytes) -> int:
    """A revoked key's blobs, one file at a time, each replaced as soon as it is done.

    An incident may involve many files; an interrupted run leaves every file either old or
    rewrapped, and running it again resumes (files already under the successor are kept). A
    file that cannot be read (missing, not a regular file, over :data:`MAX_BLOB_FILE` bytes)
    stops the run there, like a blob that does not open.
    """
    progress = _Progress(len(paths))
    changed = 0
    try:
        for i, path in enumerate(paths, 1):
            try:
                old = read_stored(path, MAX_BLOB_FILE)
            except OSError as exc:
                raise PolicyError(f"rewrap: file {str(path)!r}: cannot read ({exc.strerror}); "
                                  f"{changed} file(s) before it were rewrapped (run again to resume)") from None
            try:
                (blob,) = ring.rewrap_revoked([old], aad)
            except XpsError as exc:
                raise XpsError(f"rewrap: file {str(path)!r}: {exc.args[0]}; {changed} file(s) before it were "
                               "rewrapped (run again to resume)", code=exc.code, reason=exc.reason) from None
            changed += _write_changed([path], [old], [blob])
            progress(i, len(paths))
    finally:
        progress.close()
    return changed


def _write_changed(paths: list[Path], old: list[bytes], new: list[bytes]) -> int:
    changed = 0
    for path, before, blob in zip(paths, old, new, strict=True):
        if blob != before:
            try:
                atomic_write(path, blob, 0o600)
            except OSError as exc:
                raise PolicyError(f"rewrap: file {str(path)!r}: cannot write ({exc.strerror}); "
                                  f"{changed} file(s) before it were rewrapped") from None
            changed += 1
    return changed


def cmd_operator(args: argparse.Namespace) -> int:
    """Register, remove or list operator keys that approve dangerous changes."""
    _check_text_args(args)
    approvals = Approvals.load(args.approvals) if getattr(args, "approvals", None) else None
    with _ring(args) as ring:
        if args.operator_cmd == "add":
            label = args.label or Path(args.pub).stem
            print(f"registered operator {ring.register_operator(args.pub, label, approvals=approvals)}")
        elif args.operator_cmd == "remove":
            ring.remove_operator(args.keyid, approvals=approvals)
            print(f"removed operator {args.keyid}")
        elif args.operator_cmd == "request":
            from xpscerpto.signing import load_public_key

            subject = load_public_key(args.subject).keyid if args.what == "add" else args.subject
            req = ApprovalRequest.new(f"operator-{args.what}", subject, reason=args.reason,
                                      ttl=ring.approvals_config.request_ttl_seconds, now=ring.clock(),
                                      keyring=ring.keyring_id)
            Approvals(req).save(context.check_out(args, args.out))
            out = terminal_safe(args.out)
            print(f"wrote {out}: operator-{args.what} of {terminal_safe(subject)}; have approvers run "
                  f"`xps key approve {out}`")
        else:
            for kid, (_, label) in ring.operators().keys.items():
                print(f"{kid}  {label}")
        _warn_if_not_journaled(ring)
    return 0


def add_key_commands(sub: Any) -> None:
    """Register ``key`` and ``operator`` on the top-level subparsers."""
    p = sub.add_parser("key", help="keyring: create, rotate, revoke, destroy, encrypt, decrypt, rewrap keys")
    p.add_argument("--operator", default="cli", help="who is acting (recorded in the audit journal)")
    ks = p.add_subparsers(dest="key_cmd", required=True)
    k = ks.add_parser("create", help="create a key with an active version 1")
    k.add_argument("name")
    k.add_argument("--algo")
    k.add_argument("--policy")
    k = ks.add_parser("list", help="list keys")
    k.add_argument("--json", action="store_true")
    k = ks.add_parser("describe", help="a key's versions, states and usage")
    k.add_argument("ref", metavar="NAME|ID")
    k.add_argument("--json", action="store_true")
    k = ks.add_parser("rotate", help="retire the active version, activate a new one")
    k.add_argument("ref", metavar="NAME|ID")
    k.add_argument("--if-version", type=int, help="rotate only if this version is still active")
    k.add_argument("--algorithm", metavar="AEAD", help="move the key to this suite from the new version on")
    k = ks.add_parser("request", help="write an approval request for revoke/destroy/rewrap")
    k.add_argument("action", choices=["revoke", "destroy", "rewrap"])
    k.add_argument("ref", metavar="NAME|ID")
    k.add_argument("--reason", required=True)
    k.add_argument("--version", type=int)
    k.add_argument("--emergency", action="store_true")
    k.add_argument("--to", metavar="SUCCESSOR", help="rewrap: the key that takes over the revoked key's blobs")
    k.add_argument("--out", required=True)
    k = ks.add_parser("approve", help="sign an approval request with an operator key")
    k.add_argument("request", metavar="REQ.json")
    k.add_argument("--key", required=True, metavar="OPERATOR.key")
    k = ks.add_parser("revoke", help="make every version unusable")
    k.add_argument("ref", metavar="NAME|ID")
    k.add_argument("--reason", required=True)
    k.add_argument("--emergency", action="store_true")
    k.add_argument("--approvals", metavar="REQ.json")
    k = ks.add_parser("destroy", help="erase material of a revoked key or a retired version")
    k.add_argument("ref", metavar="NAME|ID")
    k.add_argument("--version", type=int)
    k.add_argument("--emergency", action="store_true", help="before retention ends (needs approvals)")
    k.add_argument("--approvals", metavar="REQ.json")
    k = ks.add_parser("encrypt", help="stdin -> blob on stdout")
    k.add_argument("name")
    k.add_argument("--aad", default="")
    k = ks.add_parser("decrypt", help="blob on stdin -> plaintext on stdout")
    k.add_argument("--aad", default="")
    k = ks.add_parser("rewrap", help="re-encrypt blob files under their key's newest version (resumable)")
    k.add_argument("files", nargs="+", metavar="FILE",
                   help=f"blob files, each a regular file of at most {MAX_BLOB_FILE >> 30} GiB")
    k.add_argument("--aad", default="")
    k.add_argument("--from-revoked", metavar="REVOKED", help="re-encrypt a revoked key's blobs under --to")
    k.add_argument("--to", metavar="SUCCESSOR")
    k.add_argument("--reason")
    k.add_argument("--approvals", metavar="REQ.json")
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("operator", help="operator keys that approve dangerous changes")
    p.add_argument("--operator", default="cli")
    osub = p.add_subparsers(dest="operator_cmd", required=True)
    o = osub.add_parser("add", help="register an operator key (after the first key exists: with approvals)")
    o.add_argument("pub", metavar="NAME.pub")
    o.add_argument("--label")
    o.add_argument("--approvals", metavar="REQ.json")
    o = osub.add_parser("remove", help="unregister an operator key (with approvals)")
    o.add_argument("keyid")
    o.add_argument("--approvals", metavar="REQ.json")
    o = osub.add_parser("request", help="write an approval request for adding or removing an operator")
    o.add_argument("what", choices=["add", "remove"])
    o.add_argument("subject", metavar="NAME.pub|KEYID")
    o.add_argument("--reason", required=True)
    o.add_argument("--out", required=True)
    osub.add_parser("list")
    p.set_defaults(func=cmd_operator)
