"""Capsule verification as ordered, pure steps (bytes and state in, a verdict out; no IO).

Modelled on python-tuf's trusted metadata set: each step is named for the attack it
defends against, runs in a fixed order, and raises :class:`UpdateError` (or
:class:`PolicyError` for engine policy) with a ``reason`` code. Nothing from the capsule
is imported here; only :class:`VerifiedCapsule` carries bytes onward to be executed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from xpscerpto.config import Policy
from xpscerpto.errors import PolicyError, UpdateError
from xpscerpto.interfaces import API_VERSION, OPERATIONS
from xpscerpto.signing import TrustStore

from .format import Container, Limits, Manifest, parse_manifest, python_version, read_container, satisfies

__all__ = ["VerifiedCapsule", "verify_capsule"]

_SKEW = timedelta(minutes=5)  # tolerated clock difference between publisher and engine


@dataclass(frozen=True)
class VerifiedCapsule:
    """A capsule whose provenance, freshness and integrity were checked.

    ``files`` are the verified payload bytes: the only bytes ever executed for this capsule.
    """

    sha256: str
    raw: bytes
    manifest: Manifest
    manifest_bytes: bytes
    files: Mapping[str, bytes]
    signed_by: frozenset[str]

    @property
    def label(self) -> str:
        """``name-version``."""
        return f"{self.manifest.name}-{self.manifest.version}"


def verify_capsule(
    raw: bytes,
    *,
    trust: TrustStore,
    highest: Mapping[str, str],
    now: datetime,
    policy: Policy = Policy(),
    limits: Limits = Limits(),
    allow_version: str | None = None,
) -> VerifiedCapsule:
    """Run every verification step in order; return the verified capsule or raise.

    Args:
        raw: the capsule file's bytes.
        trust: pinned publisher keys and the threshold.
        highest: capsule name -> highest version ever accepted (rollback protection).
        now: the current time (freeze protection).
        policy: the engine's routing policy; every provided operation must be allowed.
        limits: container input limits.
        allow_version: re-verifying an already accepted capsule (at restart or an operator's
            roll-forward) may match exactly this version instead of exceeding ``highest``.
    """
    container = read_container(raw, limits)  # endless data, path tricks, symlinks, duplicates
    manifest = parse_manifest(container.manifest_bytes)  # malformed or unknown-format manifests
    signed_by = check_signatures(container, manifest, trust)  # arbitrary software, key compromise
    check_version(manifest, highest, allow_version)  # rollback and downgrade
    check_expiry(manifest, now)  # freeze
    check_payload(manifest, container.files)  # tampered payload, mix-and-match
    check_compatibility(manifest)
    check_policy(manifest, policy)
    return VerifiedCapsule(hashlib.sha256(raw).hexdigest(), raw, manifest, container.manifest_bytes,
                           container.files, signed_by)


def check_signatures(container: Container, manifest: Manifest, trust: TrustStore) -> frozenset[str]:
    """At least ``trust.threshold`` pinned keys listed by the manifest signed its exact bytes,
    each allowed to provide every operation the capsule declares."""
    listed = {k: s for k, s in container.signatures.items() if k in manifest.publisher_keys}
    result = trust.verify(container.manifest_bytes, listed, manifest.operations)
    if not result:
        unlisted = sorted(set(container.signatures) - set(listed))
        extra = f"; {len(unlisted)} signature(s) by keys the manifest does not list" if unlisted else ""
        why = set(result.rejected.values())
        if any("not allowed" in r for r in why):
            reason = "key-not-allowed"
        elif result.signed:
            reason = "threshold"
        elif not listed:
            reason = "unlisted-key"
        elif why == {"not a trusted key"}:
            reason = "untrusted-key"
        else:
            reason = "bad-signature"
        raise UpdateError(f"signatures: {result.describe()}{extra}", reason=reason)
    return result.signed


def check_version(manifest: Manifest, highest: Mapping[str, str], allow_version: str | None) -> None:
    """The version must exceed the highest ever accepted for this name."""
    top = highest.get(manifest.name)
    if top is None or manifest.version == allow_version:
        return
    if manifest.version_tuple <= tuple(int(x) for x in top.split(".")):
        raise UpdateError(f"version: {manifest.name} {manifest.version} is not newer than the highest "
                          f"accepted version {top}", reason="rollback")


def check_expiry(manifest: Manifest, now: datetime) -> None:
    """Refuse a capsule whose publisher no longer vouches for it, or that is from the future."""
    if manifest.expires <= now:
        raise UpdateError(f"expires: {manifest.name} {manifest.version} expired at "
                          f"{manifest.expires:%Y-%m-%dT%H:%M:%SZ}", reason="expired")
    if manifest.created > now.replace(microsecond=0) + _SKEW:
        raise UpdateError("created: lies in the future", reason="malformed")
    if manifest.expires <= manifest.created:
        raise UpdateError("expires: not after created", reason="malformed")


def check_payload(manifest: Manifest, files: Mapping[str, bytes]) -> None:
    """Exactly the listed files, each with the listed size and SHA-256."""
    missing = sorted(set(manifest.files) - set(files))
    if missing:
        raise UpdateError(f"payload: {missing[0]!r} is listed in the manifest but missing", reason="missing-file")
    extra = sorted(set(files) - set(manifest.files))
    if extra:
        raise UpdateError(f"payload: {extra[0]!r} is not listed in the manifest", reason="extra-file")
    for path, (digest, size) in sorted(manifest.files.items()):
        blob = files[path]
        if len(blob) != size:
            raise UpdateError(f"payload: {path!r} is {len(blob)} bytes, manifest says {size}", reason="size-mismatch")
        if hashlib.sha256(blob).hexdigest() != digest:
            raise UpdateError(f"payload: {path!r} SHA-256 does not match the manifest", reason="digest-mismatch")
    for op, entry in manifest.operations.items():
        module = entry.split(":")[0].replace(".", "/")
        if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
            raise UpdateError(f"operations.{op}: module {entry.split(':')[0]!r} is not in the payload",
                              reason="missing-file")


def check_compatibility(manifest: Manifest) -> None:
    """This engine's provider-contract version and this Python must be in the required ranges."""
    if not satisfies(API_VERSION, manifest.requires_engine_api):
        raise UpdateError(f"requires.engine_api: {manifest.requires_engine_api!r} excludes this engine's "
                          f"API {'.'.join(map(str, API_VERSION))}", reason="incompatible")
    if not satisfies(python_version(), manifest.requires_python):
        raise UpdateError(f"requires.python: {manifest.requires_python!r} excludes Python "
                          f"{'.'.join(map(str, python_version()))}", reason="incompatible")


def check_policy(manifest: Manifest, policy: Policy) -> None:
    """Every provided operation must be routable under the engine's policy."""
    for op in manifest.operations:
        why = policy.reason(op, OPERATIONS[op].tokens)
        if why is not None:
            raise PolicyError(f"operations.{op}: {why}", reason="policy")

