"""Why a capsule was refused: the closed set of reason codes.

Every refusal in the capsule pipeline is an :class:`~xpscerpto.errors.UpdateError` (or a
:class:`~xpscerpto.errors.PolicyError` for the engine's routing policy) whose ``reason`` is one
:class:`Refusal`. The code is what ``PATCH_REJECT`` records, what the watched folder writes to
``rejected/NAME.reason`` (``code: detail``) and what the CLI prints; the message carries the
detail. Code never matches on message text.

Example:
    >>> err = refuse(Refusal.ROLLBACK, "version: demo 1.0.0 is not newer than 1.0.1")
    >>> err.reason, str(err)
    (<Refusal.ROLLBACK: 'rollback'>, 'XPS_ERR_UPDATE: version: demo 1.0.0 is not newer than 1.0.1')
"""

from __future__ import annotations

import enum

from xpscerpto.errors import PolicyError, UpdateError

__all__ = ["Refusal", "refuse"]


class Refusal(enum.StrEnum):
    """Reason codes, grouped by the step that refuses (see ``capsules/FORMAT.md``)."""

    # Container and manifest (format.py)
    MALFORMED = "malformed"
    UNKNOWN_FORMAT = "unknown-format"
    PATH = "path"
    UNEXPECTED_ENTRY = "unexpected-entry"
    DUPLICATE = "duplicate"
    SYMLINK = "symlink"
    NOT_REGULAR_FILE = "not-regular-file"
    TOO_LARGE = "too-large"
    TOO_MANY_ENTRIES = "too-many-entries"
    COMPRESSION_BOMB = "compression-bomb"
    UNSIGNED = "unsigned"
    # Provenance, freshness, integrity (_verifier.py)
    UNLISTED_KEY = "unlisted-key"
    UNTRUSTED_KEY = "untrusted-key"
    BAD_SIGNATURE = "bad-signature"
    KEY_NOT_ALLOWED = "key-not-allowed"
    THRESHOLD = "threshold"
    ROLLBACK = "rollback"
    EXPIRED = "expired"
    MISSING_FILE = "missing-file"
    EXTRA_FILE = "extra-file"
    SIZE_MISMATCH = "size-mismatch"
    DIGEST_MISMATCH = "digest-mismatch"
    NAME_COLLISION = "name-collision"
    INCOMPATIBLE = "incompatible"
    POLICY = "policy"
    # Isolated validation (isolate.py)
    CONTRACT = "contract"
    KAT_FAILED = "kat-failed"
    TAMPER_ACCEPTED = "tamper-accepted"
    DIFFERENTIAL_MISMATCH = "differential-mismatch"
    TOO_SLOW = "too-slow"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    VALIDATION_FAILED = "validation-failed"
    ENGINE_STATE = "engine-state"  # its code changed the engine's own modules or classes
    # Loading and staging in the engine (updater.py)
    TAINTED = "tainted"  # refused capsule code ran in this engine process: restart first
    LOAD_FAILED = "load-failed"
    KAT_RECHECK = "kat-recheck"
    CANARY_FAULT = "canary-fault"
    DUAL_RUN_FAULT = "dual-run-fault"
    # Operator requests and stored state (updater.py, store.py, cli.py)
    NOT_FOUND = "not-found"
    STATE = "state"
    IO = "io"
    CLOSED = "closed"  # the updater was closed: no more changes through it
    ENGINE_RUNNING = "engine-running"  # an offline change while an engine holds the home
    # Refused by the watched folder before the pipeline (watch.py)
    UNREADABLE = "unreadable"
    INTERNAL = "internal"


def refuse(reason: Refusal, message: str) -> UpdateError | PolicyError:
    """The error to raise for a capsule refused for ``reason`` (message names the field)."""
    if reason is Refusal.POLICY:
        return PolicyError(message, reason=reason)
    return UpdateError(message, reason=reason)
