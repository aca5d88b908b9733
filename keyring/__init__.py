"""The keyring: named, versioned keys with an audited lifecycle and a self-describing AEAD.

This is the high-level, hard-to-misuse layer over the raw ``xpscerpto.aead`` primitives:
keys never leave it unwrapped unless you ask (``get``), nonces are drawn for you, every
ciphertext names its key version, and decryption fails with one opaque error.

Example:
    >>> from xpscerpto.keyring import Keyring
    >>> with Keyring("/tmp/xps-home") as ring:                      # doctest: +SKIP
    ...     ring.create("orders", "AES-256-GCM", policy="rotate=90d")
    ...     blob = ring.encrypt("orders", b"card 4111", aad=b"order:42")
    ...     ring.decrypt(blob, aad=b"order:42")
    b'card 4111'
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .approvals import ApprovalRequest, Approvals, OperatorRegistry
    from .integrity import KeyringTampered
    from .keyring import KeyInfo, Keyring, VersionInfo
    from .states import KeyState, VersionState
    from .usage import parse_policy

__all__ = [
    "ApprovalRequest",
    "Approvals",
    "KeyInfo",
    "KeyState",
    "Keyring",
    "KeyringTampered",
    "OperatorRegistry",
    "VersionInfo",
    "VersionState",
    "parse_policy",
]

# Loaded on first use: the configuration loader imports xpscerpto.keyring.config, which must
# not pull in the keyring (SQLite, the KEK providers) — nor the loader back through it.
_WHERE = {
    "ApprovalRequest": ".approvals", "Approvals": ".approvals", "OperatorRegistry": ".approvals",
    "KeyringTampered": ".integrity", "KeyInfo": ".keyring", "Keyring": ".keyring", "VersionInfo": ".keyring",
    "KeyState": ".states", "VersionState": ".states", "parse_policy": ".usage",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
