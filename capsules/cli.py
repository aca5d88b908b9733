"""Publisher commands, shared by ``tools/make_capsule.py`` and ``xps capsule``.

    keygen --out NAME                               NAME.key (0600) and NAME.pub
    build SRC_DIR --key NAME.key [--key ...] --out FILE.capsule
    sign FILE.capsule --key NAME.key                co-sign (k-of-n) in place
    inspect FILE.capsule [--json]
    verify FILE.capsule --trust NAME.pub [--trust ...] [--threshold K]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xpscerpto._atomic import atomic_write
from xpscerpto.errors import UpdateError
from xpscerpto.signing import TrustStore, generate_keypair, load_private_key, load_public_key

from ._verifier import verify_capsule
from .build import add_signature, build_capsule
from .format import parse_manifest, read_container

__all__ = ["add_publisher_commands", "main"]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UpdateError(f"capsule file {path!r}: {exc.strerror}", reason="io") from None


def _write(path: str, raw: bytes) -> None:
    try:
        atomic_write(Path(path), raw, 0o644)
    except OSError as exc:
        raise UpdateError(f"--out {path!r}: cannot write ({exc.strerror})", reason="io") from None


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create a publisher key pair."""
    key = generate_keypair(args.out)
    print(f"wrote {args.out}.key (0600) and {args.out}.pub; key id {key.keyid}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build and sign a capsule from a source directory."""
    signers = [load_private_key(k) for k in args.key]
    raw = build_capsule(args.src, signers, cosigners=[load_public_key(p) for p in args.cosigner])
    _write(args.out, raw)
    m = parse_manifest(read_container(raw).manifest_bytes)
    print(f"built {args.out} ({len(raw)} bytes): {m.name} {m.version}, {len(m.files)} files, "
          f"signed by {len(signers)} key(s)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Add a signature to an existing capsule."""
    key, seed = load_private_key(args.key)
    raw = add_signature(_read(args.file), key, seed)
    _write(args.out or args.file, raw)
    print(f"signed {args.out or args.file} with {key.keyid}")
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
    for op, entry in info["operations"].items():
        print(f"  provides {op} -> {entry}")
    print(f"  publisher keys: {', '.join(info['publisher_keys'])}; signatures by: {', '.join(info['signatures'])}")
    for p, meta in info["files"].items():
        print(f"  {meta['size']:>8}  {meta['sha256'][:16]}…  {p}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify signatures, digests, expiry and compatibility offline against given public keys."""
    trust = TrustStore()
    for pub in args.trust:
        trust = trust.add(load_public_key(pub), ["*"])
    trust = trust.with_threshold(args.threshold)
    cap = verify_capsule(_read(args.file), trust=trust, highest={}, now=datetime.now(UTC))
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


def main(argv: Sequence[str] | None = None, prog: str = "make_capsule.py") -> int:
    """Run one publisher command; exit status non-zero with a one-line reason on failure."""
    from xpscerpto.cli import OneLineParser

    parser = OneLineParser(prog=prog, description="Build, sign, inspect and verify XPScerpto capsules")
    add_publisher_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from xpscerpto.cli import run_command  # one error report for both entry points

    return run_command(prog, lambda: args.func(args))
