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

from .approvals import ApprovalRequest, Approvals, OperatorRegistry
from .keyring import KeyInfo, Keyring, VersionInfo
from .states import KeyState, VersionState
from .usage import parse_policy

__all__ = [
    "ApprovalRequest",
    "Approvals",
    "KeyInfo",
    "KeyState",
    "Keyring",
    "OperatorRegistry",
    "VersionInfo",
    "VersionState",
    "parse_policy",
]
