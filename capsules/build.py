"""Publisher side: build, sign, co-sign and inspect capsules.

A source directory holds the provider's modules, its KAT files, and ``capsule.toml``::

    name = "aesgcm-hotfix"
    version = "1.0.0"
    expires_days = 365                       # optional, default 365
    [requires]
    engine_api = ">=1.0,<2"
    python = ">=3.11"
    [operations]
    "aead.aes256gcm" = "hotfix_aesgcm:AesGcm256"
    [kat]
    "aead.aes256gcm" = ["kat/aes256gcm.json"]

Every other regular file under the directory (except ``__pycache__`` and dotfiles) becomes
payload, listed in the manifest with its SHA-256 and size. Anything else there (a FIFO, a
device, a socket, a symlink) is refused, and so is a source an engine would refuse to read
back: a file over the format's member limit, more payload than its total or entry limits
(``capsules.format.Limits``), a ``capsule.toml`` over the manifest limit.
"""

from __future__ import annotations

import errno
import hashlib
import stat
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from xpscerpto._stored_file import read_stored
from xpscerpto.secret import SecretBytes
from xpscerpto.signing import PublisherKey, sign

from .format import FORMAT, Limits, canonical_json, parse_manifest, read_container, write_container
from .refusal import Refusal, refuse

__all__ = ["SOURCE_FILE", "add_signature", "build_capsule", "collect_payload", "manifest_document"]

SOURCE_FILE = "capsule.toml"


def _read_source_file(path: Path, shown: str, limit: int, unreadable: Refusal) -> bytes:
    """The bytes of one source file, refused (naming it as ``shown``) unless regular and within ``limit``.

    A file that is missing or cannot be read is refused with ``unreadable``.
    """
    try:
        # Opened without blocking and checked after opening: a FIFO put in place of the file
        # is refused, never waited on, and a huge file or a device is never read.
        return read_stored(path, limit)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise refuse(Refusal.TOO_LARGE, f"source: {shown}: larger than {limit} bytes") from None
        if exc.errno == errno.EINVAL:
            raise refuse(Refusal.NOT_REGULAR_FILE, f"source: {shown}: not a regular file") from None
        raise refuse(unreadable, f"source: {shown}: cannot read ({exc.strerror or type(exc).__name__})") from None


def collect_payload(src: Path, limits: Limits = Limits()) -> dict[str, bytes]:
    """Every payload file under ``src`` by relative POSIX path.

    Symlinks and other non-regular files are refused; so is payload an engine reading the
    capsule within ``limits`` would refuse (a file over ``max_file_bytes``, more than
    ``max_total_bytes`` in all, more members than ``max_entries`` leaves beside the manifest and
    the signatures).

    Raises:
        UpdateError: the file's refusal (``symlink``, ``not-regular-file``, ``too-large``,
            ``too-many-entries``, ``io``), naming it by its path under ``src``.
    """
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            raise refuse(Refusal.IO, f"source: {rel}: cannot read ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            raise refuse(Refusal.SYMLINK, f"source: {rel} is a symlink; capsules carry regular files only")
        if stat.S_ISDIR(mode) or rel.as_posix() == SOURCE_FILE:
            continue
        if not stat.S_ISREG(mode):  # told by what it is before it is opened: opening a device may act
            raise refuse(Refusal.NOT_REGULAR_FILE, f"source: {rel}: not a regular file; capsules carry "
                         "regular files only")
        if len(files) >= limits.max_entries - 2:  # the manifest and the signatures are members too
            raise refuse(Refusal.TOO_MANY_ENTRIES, f"source: more than {limits.max_entries - 2} payload files")
        blob = _read_source_file(path, str(rel), limits.max_file_bytes, Refusal.IO)
        total += len(blob)
        if total > limits.max_total_bytes:
            raise refuse(Refusal.TOO_LARGE, f"source: payload larger than {limits.max_total_bytes} bytes in all")
        files[rel.as_posix()] = blob
    return files


def manifest_document(source: Mapping[str, Any], files: Mapping[str, bytes],
                      keys: Iterable[PublisherKey], now: datetime) -> dict[str, Any]:
    """The manifest for ``source`` (the parsed capsule.toml) over ``files``."""
    try:
        days = int(source.get("expires_days", 365))
        return {
            "format": FORMAT,
            "name": source["name"],
            "version": source["version"],
            "publisher_keys": [k.keyid for k in keys],
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires": (now + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "requires": {"engine_api": source.get("requires", {}).get("engine_api", ">=1.0,<2"),
                         "python": source.get("requires", {}).get("python", ">=3.11")},
            "operations": dict(source["operations"]),
            "kat": {op: list(paths) for op, paths in source.get("kat", {}).items()},
            "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                      for p, b in sorted(files.items())},
            # Only when the source says so: capsules built without it stay byte-identical.
            **({"constant_time": source["constant_time"]} if "constant_time" in source else {}),
        }
    except KeyError as exc:
        raise refuse(Refusal.MALFORMED, f"{SOURCE_FILE}: missing field {exc.args[0]!r}") from None


def build_capsule(src_dir: str | Path, signers: Iterable[tuple[PublisherKey, SecretBytes]],
                  *, cosigners: Iterable[PublisherKey] = (), now: datetime | None = None) -> bytes:
    """Build and sign a capsule from a source directory; returns the capsule bytes.

    ``cosigners`` are listed in the manifest without signing now; each adds a signature
    later with :func:`add_signature` (k-of-n with keys held by different people).

    Raises:
        UpdateError: ``capsule.toml`` is missing, malformed (``malformed``), not a regular file
            (``not-regular-file``) or over the manifest limit (``too-large``); the payload is
            refused by :func:`collect_payload`; no signing key is given (``unsigned``).
    """
    src = Path(src_dir)
    # Its fields become the manifest, so a file over the manifest limit makes no capsule.
    raw = _read_source_file(src / SOURCE_FILE, str(src / SOURCE_FILE), Limits().max_manifest_bytes, Refusal.MALFORMED)
    try:
        source = tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise refuse(Refusal.MALFORMED, f"{SOURCE_FILE}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise refuse(Refusal.MALFORMED, f"{SOURCE_FILE}: {exc}") from None
    signers = list(signers)
    if not signers:
        raise refuse(Refusal.UNSIGNED, "key: at least one signing key is required")
    files = collect_payload(src)
    when = (now or datetime.now(UTC)).replace(microsecond=0)
    listed = [k for k, _ in signers] + [k for k in cosigners if k.keyid not in {s.keyid for s, _ in signers}]
    manifest_bytes = canonical_json(manifest_document(source, files, listed, when))
    signatures = {key.keyid: sign(seed, manifest_bytes) for key, seed in signers}
    return write_container(manifest_bytes, signatures, files)


def add_signature(raw: bytes, key: PublisherKey, seed: SecretBytes) -> bytes:
    """Co-sign an existing capsule (for k-of-n thresholds); the manifest must list the key."""
    container = read_container(raw)
    listed = parse_manifest(container.manifest_bytes).publisher_keys
    if key.keyid not in listed:
        raise refuse(Refusal.KEY_NOT_ALLOWED, f"key: {key.keyid[:12]} is not listed in the manifest's publisher_keys")
    sigs = dict(container.signatures)
    sigs[key.keyid] = sign(seed, container.manifest_bytes)
    return write_container(container.manifest_bytes, sigs, container.files)
