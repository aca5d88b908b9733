"""``xps pki …`` (a small CA for tests and demos) and ``xps channel serve|connect|vectors``.

    xps pki init-ca DIR --name "Example CA" [--parent DIR] [--passphrase-env VAR]
    xps pki issue --ca DIR --name svc --dns svc.example --out svc     # svc.crt svc.key svc.static
    xps pki revoke --ca DIR svc.crt
    xps pki crl --ca DIR --out ca.crl [--days 7]
    xps channel serve --cert svc.crt --key svc.key --ca ca.crt --port 7443     # echo server
    xps channel connect --cert cli.crt --key cli.key --ca ca.crt --port 7443 --expect-name svc.example
    xps channel vectors cacophony.txt                                # passed / failed / unsupported

Private keys are written 0600 and never replaced; passphrases come from environment variables
named on the command line, never from the command line itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from xpscerpto._atomic import atomic_write, create_exclusive
from xpscerpto._stored_file import read_stored
from xpscerpto.audit.cli import terminal_safe
from xpscerpto.cli import context
from xpscerpto.errors import PolicyError

from .config import ChannelConfig
from .pki import CertificateAuthority, passphrase_from_env, pem_chain, write_private_key, write_static_key

__all__ = ["add_channel_commands"]


# -- xps pki ---------------------------------------------------------------------------------


def cmd_pki(args: argparse.Namespace) -> int:
    """A small Ed25519 CA for channel tests and demos: init-ca, issue, revoke, crl."""
    if args.pki_cmd == "init-ca":
        parent = (CertificateAuthority.load(args.parent, passphrase_from_env(args.parent_passphrase_env))
                  if args.parent else None)
        folder = Path(args.dir)
        passphrase = passphrase_from_env(args.passphrase_env)
        ca = CertificateAuthority.create(args.name, days=args.days, parent=parent)
        ca.save(folder, passphrase)  # refuses a directory holding any CA file (ca.crt, ca.key, revoked.json)
        print(f"CA {args.name!r} in {terminal_safe(str(folder))}: ca.crt, ca.key (0600), revoked.json")
        return 0
    ca = CertificateAuthority.load(args.ca, passphrase_from_env(args.ca_passphrase_env))
    if args.pki_cmd == "issue":
        if not args.dns and not args.uri:
            raise PolicyError("issue: give at least one --dns or --uri name (peers check it)")
        out = Path(args.out)
        crt, key_file, static_file = (out.with_name(out.name + ext) for ext in (".crt", ".key", ".static"))
        _refuse_existing(crt, key_file, static_file)
        for path in (crt, key_file, static_file):
            context.check_out(args, path)  # none exists: the home's folder is what is left to refuse
        chain, key = ca.issue(args.name, dns=args.dns, uris=args.uri, days=args.days)
        write_private_key(key_file, key, passphrase_from_env(args.passphrase_env))
        import xpscerpto

        pub, static = xpscerpto.x25519.generate_keypair()
        with static:
            write_static_key(static_file, static.view())
        # Last, and like the keys created whole or not at all (temp, fsync, link): a .crt under its
        # final name means the issue finished, so a killed one is told apart from a finished one.
        if not create_exclusive(crt, pem_chain(chain), 0o644):
            raise PolicyError(f"{crt.name}: already exists")
        print(f"issued serial {chain[0].serial_number:x} to {args.name!r}: "
              f"{terminal_safe(crt.name)}, {terminal_safe(key_file.name)} (0600), "
              f"{terminal_safe(static_file.name)} (0600, static public key {pub.hex()})")
        return 0
    if args.pki_cmd == "revoke":
        from .identity import load_certificates

        try:
            cert = load_certificates(read_stored(Path(args.cert)))[0]
        except OSError as exc:
            raise PolicyError(f"{Path(args.cert).name}: cannot read ({exc.strerror})") from None
        if cert.issuer != ca.certificate.subject:
            raise PolicyError(f"{Path(args.cert).name}: not issued by this CA")
        # save_revoked re-reads revoked.json under the CA directory's lock: a revocation saved by
        # a parallel `xps pki revoke` since `ca` was loaded is kept.
        ca.revoke(cert.serial_number, args.reason).save_revoked(args.ca)
        print(f"revoked serial {cert.serial_number:x}; run `xps pki crl` to publish it")
        return 0
    from cryptography.hazmat.primitives import serialization

    crl = ca.crl(days=args.days)
    atomic_write(context.check_out(args, args.out), crl.public_bytes(serialization.Encoding.PEM), 0o644)
    print(f"CRL with {len(ca.revoked)} revoked serials, valid until "
          f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC: {terminal_safe(args.out)}")
    return 0


def _refuse_existing(crt: Path, key_file: Path, static_file: Path) -> None:
    """PolicyError if any output of ``issue`` exists; one killed before its certificate is named as such."""
    present = [p for p in (crt, key_file, static_file) if p.exists() or p.is_symlink()]
    if not present:
        return
    if crt in present:
        raise PolicyError(f"{crt.name}: already exists")
    # The certificate is written last: without it these are the keys of an issue that never
    # finished. Removed by hand, not here: a private key is never deleted or replaced by xps.
    names = ", ".join(p.name for p in present)
    raise PolicyError(f"{crt.name}: missing, but {names} already exist(s): an issue killed before it wrote the "
                      "certificate leaves this; remove them (unless they are keys you keep) and issue again")


# -- xps channel -----------------------------------------------------------------------------


def _endpoint(args: argparse.Namespace) -> tuple[Any, Any, ChannelConfig]:
    from .identity import Identity, Trust

    identity = Identity.load(args.cert, args.key, passphrase=passphrase_from_env(args.passphrase_env),
                             static_key=args.static_key)
    trust = Trust.load(args.ca, args.crl or ())
    # The configuration's tls: section, with the command's flags on top.
    base = context.config(args).channel
    flags: dict[str, Any] = {"require_pq": base.require_pq or args.require_pq}
    if args.protocol is not None:
        flags["protocol"] = args.protocol
    if args.handshake_timeout is not None:
        flags["handshake_timeout_seconds"] = args.handshake_timeout
    cfg = dataclasses.replace(base, **flags)
    return identity, trust, cfg


def _audit(args: argparse.Namespace) -> tuple[Any, int]:

    home = context.home(args)
    conf = context.config(args).audit
    return conf.journal(home.root, home.audit), conf.auth_fail_per_minute


def cmd_channel(args: argparse.Namespace) -> int:
    """Mutually authenticated channels: an echo server and client, and Noise vector replay."""
    if args.channel_cmd == "vectors":
        return _vectors(args)
    identity, trust, cfg = _endpoint(args)
    if args.channel_cmd == "serve":
        return asyncio.run(_serve(args, identity, trust, cfg))
    return asyncio.run(_connect(args, identity, trust, cfg))


async def _serve(args: argparse.Namespace, identity: Any, trust: Any, cfg: ChannelConfig) -> int:
    from .aio import Channel, serve

    audit, per_minute = _audit(args)
    done = asyncio.Event()

    async def echo(ch: Channel) -> None:
        print(f"channel from {terminal_safe(', '.join(ch.peer.names) or str(ch.peer.subject))} ({ch.protocol})",
              flush=True)
        try:
            while msg := await ch.recv():
                await ch.send(msg)
        finally:
            if args.once:
                done.set()

    server = await serve(args.host, args.port, identity, trust, echo, expected_names=args.expect_name or None,
                         config=cfg, peer_static=_hex_key(args.peer_static), audit=audit, audit_per_minute=per_minute,
                         engine=_engine(args))
    async with server:
        print(f"listening on {args.host}:{server.port}", flush=True)
        await done.wait()
    failed = sum(server.failures.failures.values())
    print(f"served {server.failures.established} channels, {failed} failed handshakes")
    return 0


async def _connect(args: argparse.Namespace, identity: Any, trust: Any, cfg: ChannelConfig) -> int:
    from .aio import connect

    # The bytes as given on the command line: a non-UTF-8 one is sent, not met as an encoding error.
    message = os.fsencode(args.message)
    try:
        ch = await connect(args.host, args.port, identity, trust, expected_name=args.expect_name,
                           config=cfg, peer_static=_hex_key(args.peer_static), engine=_engine(args))
    except TimeoutError:
        raise PolicyError(f"--host/--port: no channel to {_address(args)} within "
                          f"{cfg.handshake_timeout_seconds:g} s", reason="timeout") from None
    except OSError as exc:
        # Refused, unreachable, or a name that does not resolve: the operator's address, not a fault of ours.
        raise PolicyError(f"--host/--port: cannot connect to {_address(args)} "
                          f"({exc.strerror or type(exc).__name__})", reason="unreachable") from None
    async with ch:
        print(f"connected to {terminal_safe(', '.join(ch.peer.names))} ({ch.protocol}), "
              f"handshake hash {ch.handshake_hash.hex()[:16]}…")
        await ch.send(message)
        reply = await ch.recv()
    # The peer chose these bytes: an escape sequence or a newline in them must not reach the terminal.
    print(f"echo: {terminal_safe(reply.decode(errors='replace'))}")
    return 0 if reply == message else 1


def _engine(args: argparse.Namespace) -> Any:
    """An engine under the file's routing policy, bound by the home's recorded floor: the
    channel's AEAD and hash go through it, so a forbidden cipher is refused here as anywhere."""
    from xpscerpto.cli import context
    from xpscerpto.engine import Engine

    return Engine(context.home_config(args).engine)


def _address(args: argparse.Namespace) -> str:
    """``host:port`` for an error message; a host that is not printable ASCII is not echoed."""
    host = args.host if args.host.isascii() and args.host.isprintable() and len(args.host) <= 253 else "(--host)"
    return f"{host}:{args.port}"


def _hex_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise PolicyError("--peer-static: expected 64 hex digits (an X25519 public key)")
    return key


def _vectors(args: argparse.Namespace) -> int:
    from .vectors import replay_file

    report = replay_file(args.file, context.engine(args))

    def text() -> None:
        for name, reason in report.failed:
            print(f"  FAIL {terminal_safe(name)}: {terminal_safe(reason)}")
        unsupported = sum(report.unsupported.values())
        print(f"{report.passed} passed, {len(report.failed)} failed, {unsupported} unsupported")
        for reason, n in sorted(report.unsupported.items()):
            print(f"  unsupported ({terminal_safe(reason)}): {n}")

    context.emit(args, report.as_dict(), text)
    return 0 if report else 1


def add_channel_commands(sub: Any) -> None:
    """Register ``pki`` and ``channel`` on the ``xps`` subparsers object."""
    p = sub.add_parser("pki", help=cmd_pki.__doc__)
    psub = p.add_subparsers(dest="pki_cmd", required=True)
    a = psub.add_parser("init-ca", help="create a CA directory (root, or intermediate with --parent)")
    a.add_argument("dir", metavar="DIR")
    a.add_argument("--name", required=True, help="the CA's common name")
    a.add_argument("--days", type=int, default=3650)
    a.add_argument("--parent", metavar="DIR", help="sign with this CA (an intermediate)")
    a.add_argument("--parent-passphrase-env", metavar="VAR")
    a.add_argument("--passphrase-env", metavar="VAR", help="encrypt ca.key with the passphrase in $VAR")
    a = psub.add_parser("issue", help="issue an Ed25519 leaf certificate, its key and a static X25519 key")
    a.add_argument("--ca", required=True, metavar="DIR")
    a.add_argument("--name", required=True, help="common name")
    a.add_argument("--dns", action="append", default=[], metavar="NAME")
    a.add_argument("--uri", action="append", default=[], metavar="URI")
    a.add_argument("--days", type=int, default=365)
    a.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.crt, PREFIX.key, PREFIX.static")
    a.add_argument("--passphrase-env", metavar="VAR", help="encrypt PREFIX.key (PKCS#8) with the passphrase in $VAR")
    a.add_argument("--ca-passphrase-env", metavar="VAR")
    a = psub.add_parser("revoke", help="add a certificate's serial to the CA's revoked list")
    a.add_argument("--ca", required=True, metavar="DIR")
    a.add_argument("cert", metavar="CERT")
    a.add_argument("--reason", default="")
    a.add_argument("--ca-passphrase-env", metavar="VAR")
    a = psub.add_parser("crl", help="write the CA's current CRL (PEM)")
    a.add_argument("--ca", required=True, metavar="DIR")
    a.add_argument("--out", required=True, metavar="FILE")
    a.add_argument("--days", type=float, default=7.0, help="validity (an expired CRL fails every handshake)")
    a.add_argument("--ca-passphrase-env", metavar="VAR")
    p.set_defaults(func=cmd_pki)

    p = sub.add_parser("channel", help=cmd_channel.__doc__)
    csub = p.add_subparsers(dest="channel_cmd", required=True)
    for name, helptext in (("serve", "echo server: every message comes back"),
                           ("connect", "send one message to an echo server and print the reply")):
        c = csub.add_parser(name, help=helptext)
        c.add_argument("--cert", required=True, help="PEM chain, leaf first")
        c.add_argument("--key", required=True, help="PKCS#8 Ed25519 key")
        c.add_argument("--passphrase-env", metavar="VAR")
        c.add_argument("--static-key", metavar="FILE", help="X25519 static key (NAME.static); fresh if omitted")
        c.add_argument("--ca", action="append", required=True, metavar="FILE", help="trusted CA (repeatable)")
        c.add_argument("--crl", action="append", metavar="FILE", help="CRL (repeatable; then CRLs are required)")
        c.add_argument("--host", default="127.0.0.1")
        c.add_argument("--protocol", help="Noise protocol name to offer (default XX, or XXhfs with --require-pq)")
        c.add_argument("--require-pq", action="store_true", help="only hybrid post-quantum (hfs) protocols")
        c.add_argument("--peer-static", metavar="HEX", help="the peer's static key (IK/NK/KK)")
        c.add_argument("--handshake-timeout", type=float, metavar="SECONDS", help="default: tls.handshake_timeout")
        if name == "serve":
            c.add_argument("--port", type=int, default=0)
            c.add_argument("--expect-name", action="append", metavar="NAME", help="client names allowed")
            c.add_argument("--once", action="store_true", help="exit after the first channel ends")
        else:
            c.add_argument("--port", type=int, required=True)
            c.add_argument("--expect-name", required=True, metavar="NAME", help="the server's DNS or URI name")
            c.add_argument("--message", default="hello over XPScerpto")
    c = csub.add_parser("vectors", help="replay Noise test vectors (cacophony JSON) through the core")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_channel)
