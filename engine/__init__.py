"""XPScerpto: a crypto-agility engine.

One stable API; each operation routed to an algorithm provider chosen by an immutable,
atomically swapped routing table.

Example:
    >>> import xpscerpto as xps
    >>> key = xps.random_bytes(32)
    >>> sealed = xps.aead.encrypt(xps.AEAD.AES_256_GCM, key, b"data", b"aad")
    >>> xps.aead.decrypt(xps.AEAD.AES_256_GCM, key, sealed.nonce, sealed.ciphertext, sealed.tag, b"aad")
    b'data'
"""

from __future__ import annotations

from typing import Any

# First, before anything loads OpenSSL: an incident mask with -avx512 sets OPENSSL_ia32cap,
# which OpenSSL reads once, when it loads.
from . import isa_mask as isa_mask

# isort: split
from .algorithms import AEAD
from .engine import Engine, random_bytes
from .errors import (
    AuthError,
    ErrorCode,
    InternalError,
    KeyError_,
    KeyTypeError,
    NonceError,
    PolicyError,
    ProviderError,
    UpdateError,
    XpsError,
)
from .sealed import Sealed
from .secret import SecretBytes, constant_time_eq, secure_wipe
from .settings import EngineConfig, Policy

__all__ = [
    "AEAD",
    "AuthError",
    "Engine",
    "EngineConfig",
    "ErrorCode",
    "InternalError",
    "KeyError_",
    "KeyTypeError",
    "NonceError",
    "Policy",
    "PolicyError",
    "ProviderError",
    "Sealed",
    "SecretBytes",
    "UpdateError",
    "XpsError",
    "aead",
    "constant_time_eq",
    "default_engine",
    "ed25519",
    "hkdf",
    "mldsa65",
    "mlkem768",
    "random_bytes",
    "secure_wipe",
    "x25519",
]

# The default engine starts (loads providers, runs self-tests) on its first call, so importing
# xpscerpto stays cheap and free of side effects.
_default = Engine(lazy=True)
aead = _default.aead
ed25519 = _default.ed25519
mldsa65 = _default.mldsa65
x25519 = _default.x25519
mlkem768 = _default.mlkem768
hkdf = _default.hkdf


def default_engine() -> Engine:
    """The engine behind the module-level API."""
    return _default


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib_metadata import PackageNotFoundError, version

        try:
            return version("xpscerpto")
        except PackageNotFoundError:  # running from a source tree without installing
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
