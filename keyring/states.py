"""Key lifecycle (seed Appendix A) as a pure transition table.

Versions move ``active -> retired -> destroyed`` (by rotation) or
``active|retired -> revoked -> destroyed`` (by revocation). The key moves
``active -> revoked -> destroyed``; *rotating* exists only inside the rotation's database
transaction (the old version retires and the new one activates atomically), so no reader
and no crash ever observes it. Every transition is idempotent: asking for the state a key is
already in changes nothing.

Usage rules:
- only the active version of an active key encrypts;
- decryption uses the active version, or a retired one while inside the dual-key window;
- a revoked key (all its versions) is unusable;
- destroyed is one-way: material erased, metadata and audit kept.
"""

from __future__ import annotations

import enum
import math

from xpscerpto.errors import PolicyError

__all__ = ["Action", "KeyState", "VersionState", "decrypt_deadline", "key_after", "version_destroyable"]


class KeyState(enum.StrEnum):
    """State of a key (all its versions together)."""

    ACTIVE = "active"
    ROTATING = "rotating"  # transient, inside a transaction only
    REVOKED = "revoked"
    DESTROYED = "destroyed"


class VersionState(enum.StrEnum):
    """State of one key version."""

    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


class Action(enum.StrEnum):
    """Lifecycle requests."""

    ROTATE = "rotate"
    REVOKE = "revoke"
    DESTROY = "destroy"


# (key state, action) -> key state after; absent pairs are refused.
_KEY: dict[tuple[KeyState, Action], KeyState] = {
    (KeyState.ACTIVE, Action.ROTATE): KeyState.ACTIVE,
    (KeyState.ACTIVE, Action.REVOKE): KeyState.REVOKED,
    (KeyState.REVOKED, Action.REVOKE): KeyState.REVOKED,  # idempotent
    (KeyState.REVOKED, Action.DESTROY): KeyState.DESTROYED,
    (KeyState.DESTROYED, Action.DESTROY): KeyState.DESTROYED,  # idempotent
}

# Destroying one version (not the whole key) is allowed from these states only.
_VERSION_DESTROYABLE = {VersionState.RETIRED, VersionState.REVOKED, VersionState.DESTROYED}


def key_after(state: KeyState, action: Action) -> KeyState:
    """The key's state after ``action``; PolicyError naming the rule if it is not allowed."""
    try:
        return _KEY[(state, action)]
    except KeyError:
        hint = {
            (KeyState.ACTIVE, Action.DESTROY): "revoke it first (Active -> Revoked -> Destroyed)",
            (KeyState.REVOKED, Action.ROTATE): "a revoked key cannot rotate",
            (KeyState.DESTROYED, Action.ROTATE): "a destroyed key cannot rotate",
            (KeyState.DESTROYED, Action.REVOKE): "the key is already destroyed",
        }.get((state, action), "not a lifecycle transition")
        raise PolicyError(f"state: cannot {action} a {state} key: {hint}", reason="lifecycle") from None


def version_destroyable(state: VersionState) -> VersionState:
    """Check one version may be destroyed on its own; returns the state it goes to.

    Versions otherwise follow their key (rotation retires, revocation revokes them).
    """
    if state not in _VERSION_DESTROYABLE:
        raise PolicyError(f"version: cannot destroy the {state} version; rotate or revoke first",
                          reason="lifecycle")
    return VersionState.DESTROYED


def decrypt_deadline(state: VersionState, retired_at: float | None, window: float) -> float:
    """Appendix A as one number: a version decrypts while ``now`` is below it.

    +inf for the active version, the end of the dual-key window for a retired one, -inf for
    revoked and destroyed versions.
    """
    if state is VersionState.ACTIVE:
        return math.inf
    if state is VersionState.RETIRED and retired_at is not None:
        return retired_at + window
    return -math.inf

