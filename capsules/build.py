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
payload, listed in the manifest with its SHA-256 and size.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from xpscerpto.secret import SecretBytes
from xpscerpto.signing import PublisherKey, sign

from .format import FORMAT, canonical_json, parse_manifest, read_container, write_container
from .refusal import Refusal, refuse

__all__ = ["SOURCE_FILE", "add_signature", "build_capsule", "collect_payload", "manifest_document"]

SOURCE_FILE = "capsule.toml"


def collect_payload(src: Path) -> dict[str, bytes]:
    """Every payload file under ``src`` by relative POSIX path; symlinks are refused."""
    files: dict[str, bytes] = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_symlink():
            raise refuse(Refusal.SYMLINK, f"source: {rel} is a symlink; capsules carry regular files only")
        if path.is_file() and rel.as_posix() != SOURCE_FILE:
            files[rel.as_posix()] = path.read_bytes()
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
    """
    src = Path(src_dir)
    try:
        source = tomllib.loads((src / SOURCE_FILE).read_text())
    except OSError as exc:
        raise refuse(Refusal.MALFORMED, f"source: cannot read {src / SOURCE_FILE}: {exc.strerror}") from None
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
