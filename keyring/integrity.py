"""Row seals: an HMAC over every security-relevant row, under a key the KEK wraps.

The keyring database holds the state Appendix A enforces (which version is active, which is
revoked, how many encryptions a version made, who may approve). Editing a row outside xps —
``UPDATE versions SET state = 'active'`` — must not revive a revoked key. So every row that
decides what a key may do carries a seal: HMAC-SHA256 over its fields in a fixed order, keyed
with the home's *integrity key*. That key is 32 random bytes, stored in the database wrapped
by the KEK (bound to the database path's role as associated data), unwrapped when the keyring
opens. A row whose seal does not verify is refused with :class:`KeyringTampered` and journaled.

What this protects depends on where the KEK is: with a PKCS#11 KEK (or a KEK file outside the
attacker's reach) an attacker who can write the database cannot make a valid seal. With the
default KEK file inside the home, whoever can read the home can unwrap the integrity key too;
the seal then still catches accidental edits and careless tampering, not a determined attacker
with the same rights as the engine (see SECURITY.md).

Example:
    >>> s = Sealer(bytes(32))
    >>> seal = s.seal("version", ("0123456789abcdef", 1, "active"))
    >>> s.check("version", ("0123456789abcdef", 1, "active"), seal, what="x")
    >>> try:
    ...     s.check("version", ("0123456789abcdef", 1, "retired"), seal, what="key 0123 version 1")
    ... except KeyringTampered as e:
    ...     print(e.reason)
    seal
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from xpscerpto.errors import ErrorCode, XpsError
from xpscerpto.secret import SecretBytes

__all__ = ["INTEGRITY_KEY_SIZE", "KeyringTampered", "Sealer"]

INTEGRITY_KEY_SIZE = 32


class KeyringTampered(XpsError):
    """A keyring row (or the home's recorded policy) fails its seal: edited outside xps."""

    code = ErrorCode.POLICY
    reason = "seal"


class Sealer:
    """HMAC-SHA256 seals over row tuples; the key is copied into a wipeable buffer."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | bytearray | SecretBytes) -> None:
        material = key.view() if isinstance(key, SecretBytes) else key
        if len(material) != INTEGRITY_KEY_SIZE:
            raise XpsError(f"integrity key: expected {INTEGRITY_KEY_SIZE} bytes, got {len(material)}",
                           code=ErrorCode.KEY)
        self._key = SecretBytes(material)

    def seal(self, kind: str, fields: Sequence[Any]) -> str:
        """The hex seal of one row of ``kind`` (a domain separator: ``key``, ``version``…)."""
        # JSON keeps types distinct (1 vs "1", None vs ""), so no two rows share an encoding.
        message = json.dumps([kind, *fields], separators=(",", ":"), default=_blob).encode()
        return hmac.new(self._key._buf, message, hashlib.sha256).hexdigest()

    def check(self, kind: str, fields: Sequence[Any], seal: object, *, what: str) -> None:
        """Raise :class:`KeyringTampered` naming ``what`` unless ``seal`` is the row's seal."""
        expected = self.seal(kind, fields)
        if not isinstance(seal, str) or not hmac.compare_digest(expected.encode(), seal.encode()):
            raise KeyringTampered(f"keyring: {what} fails its integrity seal (edited outside xps?); restore the "
                                  "database from a backup")

    def wipe(self) -> None:
        """Wipe the key; the sealer is unusable afterwards."""
        self._key.wipe()


def _blob(value: object) -> str:
    # Wrapped key material enters the seal by digest: the seal covers it without copying it.
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    raise TypeError(f"cannot seal a {type(value).__name__}")
