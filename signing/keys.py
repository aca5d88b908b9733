"""Publisher key pairs: generation, files, key ids, signing and verification.

Files are small JSON documents::

    NAME.key  (mode 0600)  {"type": "ed25519-private", "keyid": "...", "seed": "<hex>"}
    NAME.pub               {"type": "ed25519-public",  "keyid": "...", "public_key": "<hex>"}

A key id is the first 32 hex digits of SHA-256 over ``b"xps-ed25519:" + public_key``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_core_ed25519_is_valid_point
from xpscerpto._atomic import create_exclusive
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import KeyError_
from xpscerpto.secret import SecretBytes

__all__ = ["PublisherKey", "generate_keypair", "key_id", "load_private_key", "load_public_key", "sign",
           "verify"]


@dataclass(frozen=True, slots=True)
class PublisherKey:
    """A publisher's public key and its id."""

    keyid: str
    public_key: bytes

    def to_json(self) -> dict[str, str]:
        """The ``NAME.pub`` document."""
        return {"type": "ed25519-public", "keyid": self.keyid, "public_key": self.public_key.hex()}


def key_id(public_key: bytes) -> str:
    """The stable id of an Ed25519 public key."""
    return hashlib.sha256(b"xps-ed25519:" + public_key).hexdigest()[:32]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # Never overwrite an existing key; the mode is set at creation, not after.
    if not create_exclusive(path, data, mode):
        raise KeyError_(f"out: {str(path)!r} already exists; refusing to overwrite a key")


def generate_keypair(stem: str | Path) -> PublisherKey:
    """Create ``STEM.key`` (0600) and ``STEM.pub``; refuse to overwrite either.

    Example:
        >>> key = generate_keypair(tmp / "alice")          # doctest: +SKIP
        >>> (tmp / "alice.key").stat().st_mode & 0o777     # doctest: +SKIP
        384
    """
    stem = Path(stem)
    key_path, pub_path = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for p in (key_path, pub_path):
        try:
            exists = p.exists()
        except OSError as exc:  # e.g. a name too long for the filesystem
            raise KeyError_(f"out: cannot use {str(p)!r}: {exc.strerror}") from None
        if exists:
            raise KeyError_(f"out: {str(p)!r} already exists; refusing to overwrite a key")
    sk = Ed25519PrivateKey.generate()
    seed = SecretBytes(sk.private_bytes_raw())
    pub = PublisherKey(key_id(sk.public_key().public_bytes_raw()), sk.public_key().public_bytes_raw())
    doc = {"type": "ed25519-private", "keyid": pub.keyid, "seed": seed.view().hex()}
    try:
        _write_new(key_path, json.dumps(doc).encode(), 0o600)
        _write_new(pub_path, json.dumps(pub.to_json(), indent=1).encode() + b"\n", 0o644)
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise KeyError_(f"out: cannot write {str(exc.filename)!r}: {exc.strerror}") from None
    finally:
        seed.wipe()
    return pub


_MAX_KEY_FILE = 64 << 10  # a key file is a few hundred bytes


def _read_json(path: Path, what: str) -> dict[str, object]:
    try:
        doc = json.loads(read_stored(path, _MAX_KEY_FILE))  # never a FIFO, /dev/zero or a huge file
    except OSError as exc:
        raise KeyError_(f"{what} {str(path)!r}: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise KeyError_(f"{what} {str(path)!r}: not a key file (invalid JSON)") from None
    if not isinstance(doc, dict):
        raise KeyError_(f"{what} {str(path)!r}: not a key file")
    return doc


def _hex_field(doc: dict[str, object], field: str, size: int, path: Path) -> bytes:
    value = doc.get(field)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise KeyError_(f"key file {str(path)!r}: field {field!r} must be {size} bytes of hex")
    return raw


def _path(path: object, what: str) -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path) or "\x00" in str(path):
        raise KeyError_(f"{what}: expected a file path, got {type(path).__name__}")
    return Path(path)


def is_publisher_key(public_key: bytes) -> bool:
    """True iff ``public_key`` is a canonical Ed25519 point of the prime-order subgroup.

    A key of small order (the identity, say) accepts a forged signature of *any* message
    (R = identity, S = 0) under cofactored or lenient verification, so pinning one would let
    anyone sign capsules. Every key made by :func:`generate_keypair` passes.
    """
    return type(public_key) is bytes and len(public_key) == 32 and crypto_core_ed25519_is_valid_point(public_key)


def load_public_key(path: str | Path) -> PublisherKey:
    """Read a ``.pub`` file; its key id is recomputed, never trusted from the file.

    Raises:
        KeyError_: not a path, unreadable, or not an Ed25519 public key file.
    """
    p = _path(path, "public key")
    doc = _read_json(p, "public key")
    if doc.get("type") != "ed25519-public":
        raise KeyError_(f"public key {str(p)!r}: type must be 'ed25519-public'")
    pk = _hex_field(doc, "public_key", 32, p)
    if not is_publisher_key(pk):
        raise KeyError_(f"public key {str(p)!r}: not a valid Ed25519 public key (small order, or not on the curve)")
    kid = key_id(pk)
    if doc.get("keyid") not in (None, kid):
        raise KeyError_(f"public key {str(p)!r}: keyid does not match the key")
    return PublisherKey(kid, pk)


def load_private_key(path: str | Path) -> tuple[PublisherKey, SecretBytes]:
    """Read a ``.key`` file; refuses one readable by group or others.

    Raises:
        KeyError_: not a path, unreadable, too open, or not an Ed25519 private key file.
    """
    p = _path(path, "private key")
    try:
        mode = p.stat().st_mode & 0o777
    except OSError as exc:
        raise KeyError_(f"private key {str(p)!r}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeyError_(f"private key {str(p)!r}: permissions {oct(mode)} are too open (want 0600)")
    doc = _read_json(p, "private key")
    if doc.get("type") != "ed25519-private":
        raise KeyError_(f"private key {str(p)!r}: type must be 'ed25519-private'")
    seed = SecretBytes(_hex_field(doc, "seed", 32, p))
    pk = Ed25519PrivateKey.from_private_bytes(bytes(seed.view())).public_key().public_bytes_raw()
    return PublisherKey(key_id(pk), pk), seed


def sign(seed: SecretBytes, data: bytes) -> bytes:
    """Ed25519 signature over ``data`` (pinned to cryptography, not routed)."""
    return Ed25519PrivateKey.from_private_bytes(bytes(seed.view())).sign(data)


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` (pinned implementation)."""
    if not is_publisher_key(public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
