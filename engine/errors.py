"""The one error hierarchy of XPScerpto.

Every failure that crosses the public API is an :class:`XpsError` carrying one of the
``XPS_ERR_*`` codes. Subclasses exist per class of fault so callers can catch narrowly,
and the key/nonce ones also derive from :class:`ValueError` (as PyNaCl does) so generic
input-validation code keeps working.

Messages name the offending field (``"key: expected 32 bytes, got 16"``) and never contain
secret bytes.

Example:
    >>> import xpscerpto as xps
    >>> try:
    ...     xps.aead.encrypt("AES-256-GCM", b"short", b"data")
    ... except xps.XpsError as e:
    ...     print(e.code)
    XPS_ERR_KEY
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthError",
    "ErrorCode",
    "InternalError",
    "KeyError_",
    "KeyTypeError",
    "NonceError",
    "PolicyError",
    "ProviderError",
    "UpdateError",
    "XpsError",
]


class ErrorCode(enum.StrEnum):
    """The closed set of error codes (seed Appendix B)."""

    AUTH = "XPS_ERR_AUTH"
    KEY = "XPS_ERR_KEY"
    NONCE = "XPS_ERR_NONCE"
    POLICY = "XPS_ERR_POLICY"
    UPDATE = "XPS_ERR_UPDATE"
    INTERNAL = "XPS_ERR_INTERNAL"


class XpsError(Exception):
    """Base of every XPScerpto error; ``.code`` is an :class:`ErrorCode`."""

    code: ErrorCode = ErrorCode.INTERNAL
    #: A short machine-readable cause (e.g. ``"rollback"`` for a refused capsule), or None.
    reason: str | None = None

    def __init__(self, message: str, *, code: ErrorCode | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


class AuthError(XpsError):
    """Authentication failed: a tag or signature did not verify. Carries no detail on purpose."""

    code = ErrorCode.AUTH


class KeyError_(XpsError, ValueError):
    """A key has the wrong type, size or value (e.g. an all-zero X25519 shared secret)."""

    code = ErrorCode.KEY


class KeyTypeError(KeyError_, TypeError):
    """A secret was given as the wrong kind of object (``SecretBytes(None)``, ``secure_wipe(b"...")``).

    Also a :class:`TypeError`, so code written against Python's conventions (``pickle``,
    ``copy``, ``except TypeError``) keeps working.
    """


class NonceError(XpsError, ValueError):
    """A nonce is missing, of the wrong size, not allowed by the nonce policy, or reused."""

    code = ErrorCode.NONCE


class PolicyError(XpsError):
    """The operation is unknown, not routed, or forbidden by policy."""

    code = ErrorCode.POLICY


class UpdateError(XpsError):
    """A hot-patch capsule was rejected."""

    code = ErrorCode.UPDATE


class InternalError(XpsError):
    """An invariant broke inside the engine."""

    code = ErrorCode.INTERNAL


class ProviderError(InternalError):
    """A provider raised something unexpected; the original is chained as ``__cause__``."""
