"""Capsule verification as ordered, pure steps (bytes and state in, a verdict out; no IO).

Modelled on python-tuf's trusted metadata set: each step is named for the attack it
defends against, runs in a fixed order, and raises :class:`UpdateError` (or
:class:`PolicyError` for engine policy) whose ``reason`` is a
:class:`~xpscerpto.capsules.refusal.Refusal`. This is the whole gate: nothing else decides
whether a capsule may run. Nothing from the capsule is imported here; only a
:class:`VerifiedCapsule`, which only :func:`verify_capsule` can make, carries bytes onward to
be executed (the loader accepts nothing else).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from xpscerpto.errors import InternalError, UpdateError
from xpscerpto.interfaces import API_VERSION, OPERATIONS
from xpscerpto.settings import Policy
from xpscerpto.signing import Rejection, TrustStore

from .format import (
    Container,
    Limits,
    Manifest,
    parse_manifest,
    parse_version,
    python_version,
    read_container,
    satisfies,
)
from .refusal import Refusal, refuse

__all__ = ["VerifiedCapsule", "is_verified", "verify_capsule"]

_SKEW = timedelta(minutes=5)  # tolerated clock difference between publisher and engine

# Held only by this module: VerifiedCapsule refuses to be built without it, so "only verified
# bytes run" is enforced where a capsule is loaded, not left to each caller's discipline.
_MINT = object()
# Every instance verify_capsule() returned (dataclasses.replace() would copy the token above
# into a capsule with other bytes; a copy is not in here).
_MINTED: weakref.WeakValueDictionary[int, VerifiedCapsule] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class VerifiedCapsule:
    """A capsule whose provenance, freshness and integrity were checked; made only by
    :func:`verify_capsule`.

    ``files`` are the verified payload bytes: the only bytes ever executed for this capsule.
    ``trust``, ``verified_at``, ``limits`` and ``signature_required`` are what it was verified
    against (the validation child verifies the same bytes again with them before it runs
    anything). ``signature_required`` is False only under ``hotpatch.require_signature: false``
    (development mode); ``signed_by`` is then empty unless the signatures did satisfy the trust
    store.
    """

    sha256: str
    raw: bytes = field(repr=False)
    manifest: Manifest
    manifest_bytes: bytes = field(repr=False)
    files: Mapping[str, bytes] = field(repr=False)
    signed_by: frozenset[str]
    trust: TrustStore = field(repr=False)
    verified_at: datetime
    limits: Limits = field(repr=False)
    signature_required: bool = True
    _mint: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise InternalError("VerifiedCapsule: only verify_capsule() makes one")

    @property
    def label(self) -> str:
        """``name-version``."""
        return f"{self.manifest.name}-{self.manifest.version}"


def is_verified(capsule: object) -> bool:
    """Whether ``capsule`` is a VerifiedCapsule that :func:`verify_capsule` itself returned."""
    return isinstance(capsule, VerifiedCapsule) and _MINTED.get(id(capsule)) is capsule


def verify_capsule(
    raw: bytes,
    *,
    trust: TrustStore,
    highest: Mapping[str, str],
    now: datetime,
    policy: Policy = Policy(),
    limits: Limits = Limits(),
    allow_version: str | None = None,
    reserved_names: frozenset[str] = frozenset(),
    op_highest: Mapping[str, str] = MappingProxyType({}),
    require_signature: bool = True,
) -> VerifiedCapsule:
    """Run every verification step in order; return the verified capsule or raise.

    Args:
        raw: the capsule file's bytes.
        trust: pinned publisher keys and the threshold.
        highest: capsule name -> highest version ever accepted (rollback protection).
        now: the current time (freeze protection).
        policy: the engine's routing policy; every provided operation must be allowed.
        limits: container input limits.
        allow_version: re-verifying an already accepted capsule (at restart, an operator's
            roll-forward, or the active capsule's exact bytes dropped again) may match exactly
            this version instead of exceeding ``highest``.
        reserved_names: provider names a capsule may not take (the engine's built-ins).
        op_highest: operation -> highest capsule version ever accepted for it, whatever the
            capsule's name (old code re-signed under a new name is still a downgrade).
        require_signature: False (``hotpatch.require_signature: false``, development only)
            accepts a capsule whose signatures do not satisfy ``trust``; every other step,
            the payload hashes above all, still runs.

    Raises:
        UpdateError: ``reason`` names the refusing step (:class:`Refusal`).
        PolicyError: an operation the engine's policy does not route (``Refusal.POLICY``).
    """
    container = read_container(raw, limits)  # endless data, path tricks, symlinks, duplicates
    manifest = parse_manifest(container.manifest_bytes)  # malformed or unknown-format manifests
    required = require_signature is not False  # only an explicit False skips the trust decision
    try:
        signed_by = check_signatures(container, manifest, trust)  # arbitrary software, key compromise
    except UpdateError:
        if required:
            raise
        signed_by = frozenset()
    check_name(manifest, reserved_names)  # impersonating a built-in provider
    check_version(manifest, highest, allow_version)  # rollback and downgrade
    check_operation_versions(manifest, op_highest, allow_version)  # downgrade under another name
    check_expiry(manifest, now)  # freeze
    check_payload(manifest, container.files)  # tampered payload, mix-and-match
    check_compatibility(manifest)
    check_policy(manifest, policy)
    verified = VerifiedCapsule(hashlib.sha256(raw).hexdigest(), raw, manifest, container.manifest_bytes,
                               container.files, signed_by, trust, now, limits, required, _MINT)
    _MINTED[id(verified)] = verified
    return verified


def check_signatures(container: Container, manifest: Manifest, trust: TrustStore) -> frozenset[str]:
    """At least ``trust.threshold`` pinned keys listed by the manifest signed its exact bytes,
    each allowed to provide every operation the capsule declares."""
    listed = {k: s for k, s in container.signatures.items() if k in manifest.publisher_keys}
    result = trust.verify(container.manifest_bytes, listed, manifest.operations)
    if not result:
        unlisted = sorted(set(container.signatures) - set(listed))
        extra = f"; {len(unlisted)} signature(s) by keys the manifest does not list" if unlisted else ""
        kinds = set(result.kinds.values())
        if Rejection.NOT_ALLOWED in kinds:
            reason = Refusal.KEY_NOT_ALLOWED
        elif result.signed:
            reason = Refusal.THRESHOLD
        elif not listed:
            reason = Refusal.UNLISTED_KEY
        elif kinds == {Rejection.UNTRUSTED}:
            reason = Refusal.UNTRUSTED_KEY
        else:
            reason = Refusal.BAD_SIGNATURE
        raise refuse(reason, f"signatures: {result.describe()}{extra}")
    return result.signed


def check_name(manifest: Manifest, reserved_names: frozenset[str]) -> None:
    """A capsule may not take a built-in provider's name (and so its place in routing)."""
    if manifest.name in reserved_names:
        raise refuse(Refusal.NAME_COLLISION, f"name: {manifest.name!r} is a built-in provider's name")


def check_version(manifest: Manifest, highest: Mapping[str, str], allow_version: str | None) -> None:
    """The version must exceed the highest ever accepted for this name."""
    top = highest.get(manifest.name)
    if top is None or manifest.version == allow_version:
        return
    if manifest.version_tuple <= parse_version(top):
        raise refuse(Refusal.ROLLBACK, f"version: {manifest.name} {manifest.version} is not newer than the "
                                       f"highest accepted version {top}")


def check_operation_versions(manifest: Manifest, op_highest: Mapping[str, str], allow_version: str | None) -> None:
    """The version must also exceed the highest ever accepted for each operation it provides."""
    if manifest.version == allow_version:
        return
    for op in sorted(manifest.operations):
        top = op_highest.get(op)
        if top is not None and manifest.version_tuple <= parse_version(top):
            raise refuse(Refusal.ROLLBACK, f"version: {manifest.name} {manifest.version} provides {op}, for which "
                                           f"version {top} was already accepted (a newer capsule served it)")


def check_expiry(manifest: Manifest, now: datetime) -> None:
    """Refuse a capsule whose publisher no longer vouches for it, or that is from the future."""
    if manifest.expires <= now:
        raise refuse(Refusal.EXPIRED, f"expires: {manifest.name} {manifest.version} expired at "
                                      f"{manifest.expires:%Y-%m-%dT%H:%M:%SZ}")
    if manifest.created > now.replace(microsecond=0) + _SKEW:
        raise refuse(Refusal.MALFORMED, "created: lies in the future")
    if manifest.expires <= manifest.created:
        raise refuse(Refusal.MALFORMED, "expires: not after created")


def check_payload(manifest: Manifest, files: Mapping[str, bytes]) -> None:
    """Exactly the listed files, each with the listed size and SHA-256."""
    missing = sorted(set(manifest.files) - set(files))
    if missing:
        raise refuse(Refusal.MISSING_FILE, f"payload: {missing[0]!r} is listed in the manifest but missing")
    extra = sorted(set(files) - set(manifest.files))
    if extra:
        raise refuse(Refusal.EXTRA_FILE, f"payload: {extra[0]!r} is not listed in the manifest")
    for path, (digest, size) in sorted(manifest.files.items()):
        blob = files[path]
        if len(blob) != size:
            raise refuse(Refusal.SIZE_MISMATCH, f"payload: {path!r} is {len(blob)} bytes, manifest says {size}")
        if hashlib.sha256(blob).hexdigest() != digest:
            raise refuse(Refusal.DIGEST_MISMATCH, f"payload: {path!r} SHA-256 does not match the manifest")
    for op, entry in manifest.operations.items():
        module = entry.split(":")[0].replace(".", "/")
        if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
            raise refuse(Refusal.MISSING_FILE,
                         f"operations.{op}: module {entry.split(':')[0]!r} is not in the payload")


def check_compatibility(manifest: Manifest) -> None:
    """This engine's provider-contract version and this Python must be in the required ranges."""
    if not satisfies(API_VERSION, manifest.requires_engine_api):
        raise refuse(Refusal.INCOMPATIBLE, f"requires.engine_api: {manifest.requires_engine_api!r} excludes "
                                           f"this engine's API {'.'.join(map(str, API_VERSION))}")
    if not satisfies(python_version(), manifest.requires_python):
        raise refuse(Refusal.INCOMPATIBLE, f"requires.python: {manifest.requires_python!r} excludes Python "
                                           f"{'.'.join(map(str, python_version()))}")


def check_policy(manifest: Manifest, policy: Policy) -> None:
    """Every provided operation must be routable under the engine's policy.

    Under ``require_constant_time`` (the default) that includes the publisher's signed claim
    ``constant_time: true``: the engine would never route the capsule otherwise.
    """
    for op in manifest.operations:
        why = policy.reason(op, OPERATIONS[op].tokens)
        if why is not None:
            raise refuse(Refusal.POLICY, f"operations.{op}: {why}")
    if policy.require_constant_time and not manifest.constant_time:
        raise refuse(Refusal.POLICY, "constant_time: the policy requires constant-time implementations and "
                                     "the manifest does not claim it (crypto.policy.require_constant_time)")

