"""Routed adapters: the objects a routing table holds and the API calls directly.

Each adapter wraps one provider implementation of one operation. It validates sizes the
contract declares, draws nonces, converts :class:`SecretBytes`, and wraps provider faults.
All of that is decided when the adapter is built; a call pays only the checks it must.

Provider exceptions never leak: an ``XpsError`` raised by the provider passes through, anything
else is first re-diagnosed against the inputs (so a ``str`` key becomes XPS_ERR_KEY rather
than a provider TypeError) and otherwise becomes :class:`ProviderError` naming the provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, NoReturn

from .errors import AuthError, KeyError_, NonceError, PolicyError, ProviderError, XpsError
from .interfaces import Aead, AeadCipher, Buffer, Kdf, Kem, KeyAgreement, Signature
from .secret import SecretBytes

__all__ = ["AeadRoute", "FaultSink", "KdfRoute", "KemRoute", "KexRoute", "SignatureRoute"]

_BUFFERS = (bytes, bytearray, memoryview)
_urandom = os.urandom


def _buf(value: Any, field: str, error: type[XpsError]) -> Buffer:
    """Validate one input as a byte buffer (slow path and non-hot APIs only)."""
    if isinstance(value, SecretBytes):
        if value.wiped:
            raise error(f"{field}: SecretBytes was wiped")
        return value._buf
    if not isinstance(value, _BUFFERS):
        raise error(f"{field}: expected bytes-like, got {type(value).__name__}")
    return value


def _check_len(value: Buffer, sizes: tuple[int, ...], field: str, error: type[XpsError]) -> None:
    if len(value) not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise error(f"{field}: expected {want} bytes, got {len(value)}")


def _secret(buf: bytearray | bytes) -> SecretBytes:
    return SecretBytes.take(buf) if type(buf) is bytearray else SecretBytes(buf)


FaultSink = Callable[[str, str, BaseException], None]


class _Route:
    """Identity shared by every adapter, and the error path's fault report."""

    __slots__ = ("_on_fault", "operation", "provider")

    def __init__(self, operation: str, provider: str, on_fault: FaultSink | None = None) -> None:
        self.operation = operation
        self.provider = provider
        self._on_fault = on_fault

    def _fault(self, exc: BaseException) -> NoReturn:
        # Reported on the error path only (the updater rolls back a capsule that faults);
        # a failing listener must not mask the caller's error.
        if self._on_fault is not None:
            with contextlib.suppress(Exception):
                self._on_fault(self.provider, self.operation, exc)
        # Only the type: a provider's message could carry anything (a capsule's, secrets
        # included). The original stays chained as __cause__ for a debugger, never formatted.
        raise ProviderError(f"{self.operation}: provider {self.provider!r} failed: {type(exc).__name__}") from exc

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.operation} via {self.provider}>"


class AeadRoute(_Route):
    """One provider's AEAD, as data the API's hot path reads directly.

    The call path lives in :class:`xpscerpto.engine.AeadAPI` so that a call runs one Python
    frame of the engine's; this object holds what that frame needs, resolved at build time.
    ``cipher`` is the provider's keyed-cipher factory: a feature that must act per call
    (canary, size buckets, drain tracking) installs a different factory, not an ``if``.
    """

    __slots__ = ("auth_errors", "auto_nonce", "cipher", "key_size", "key_sizes", "nonce_size",
                 "tag_size")

    cipher: Callable[[Buffer], AeadCipher]
    auth_errors: tuple[type[BaseException], ...]
    key_sizes: frozenset[int]
    key_size: int
    nonce_size: int
    tag_size: int
    auto_nonce: bool

    def __init__(self, operation: str, provider: str, impl: Aead, *, auto_nonce: bool,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, on_fault)
        self.cipher = impl.cipher
        self.auth_errors = (*impl.auth_errors, AuthError)
        self.key_sizes = frozenset(impl.key_sizes)
        self.key_size = max(impl.key_sizes)
        self.nonce_size = impl.nonce_size
        self.tag_size = impl.tag_size
        self.auto_nonce = auto_nonce

    def diagnose(self, exc: BaseException, key: Any, nonce: Any, *, nonce_required: bool,
                 inputs: tuple[tuple[str, Any, type[XpsError]], ...]) -> XpsError:
        """Turn a failure on the call path into the right typed error (slow path only).

        Args:
            exc: what the call path raised.
            key, nonce: the caller's key and nonce.
            nonce_required: False only for encrypt, where None means "draw one".
            inputs: (field name, value, error class) for every other byte input, in the
                order the caller passed them.
        """
        if isinstance(exc, XpsError):
            return exc
        if isinstance(exc, self.auth_errors):
            return AuthError("ciphertext: authentication failed")
        try:
            if type(key) is not SecretBytes:
                key = _buf(key, "key", KeyError_)
            elif key.wiped:
                raise KeyError_("key: SecretBytes was wiped")
            _check_len(key, tuple(sorted(self.key_sizes)), "key", KeyError_)
            if nonce is not None or nonce_required:
                if nonce is None:
                    raise NonceError("nonce: required, got None")
                _check_len(_buf(nonce, "nonce", NonceError), (self.nonce_size,), "nonce", NonceError)
            for field, value, error in inputs:
                if isinstance(value, SecretBytes):
                    raise error(f"{field}: pass secret data as SecretBytes.view(), not SecretBytes")
                _buf(value, field, error)
        except XpsError as typed:
            return typed
        try:
            self._fault(exc)
        except ProviderError as wrapped:
            return wrapped


class _KeyPairRoute(_Route):
    """Adapters whose contract has ``generate()`` and ``public_key(sk)`` (signature, kex, KEM)."""

    __slots__ = ("_impl", "public_key_size", "secret_key_size")

    _impl: Signature | KeyAgreement | Kem

    def __init__(self, operation: str, provider: str, impl: Signature | KeyAgreement | Kem,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, on_fault)
        self._impl = impl
        self.public_key_size = impl.public_key_size
        self.secret_key_size = impl.secret_key_size

    def generate_keypair(self) -> tuple[bytes, SecretBytes]:
        """Return ``(public_key, secret_key)``; the secret key is a fresh SecretBytes."""
        try:
            pk, sk = self._impl.generate()
        except Exception as exc:
            self._fault(exc)
        return pk, _secret(sk)

    def public_key(self, secret_key: Buffer | SecretBytes) -> bytes:
        """Derive the public key from a secret key."""
        sk = _buf(secret_key, "secret_key", KeyError_)
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        try:
            return self._impl.public_key(sk)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)


class SignatureRoute(_KeyPairRoute):
    """A signature scheme; secret keys are seeds."""

    __slots__ = ("signature_size",)

    _impl: Signature

    def __init__(self, operation: str, provider: str, impl: Signature,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, impl, on_fault)
        self.signature_size = impl.signature_size

    def sign(self, secret_key: Buffer | SecretBytes, message: Buffer, context: bytes = b"") -> bytes:
        """Sign ``message`` (Ed25519 is deterministic; ML-DSA is hedged)."""
        sk = _buf(secret_key, "secret_key", KeyError_)
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        _buf(message, "message", PolicyError)
        self._check_context(context)
        try:
            return self._impl.sign(sk, message, context)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes = b"") -> None:
        """Return if the signature is valid; raise AuthError otherwise."""
        pk = _buf(public_key, "public_key", KeyError_)
        _check_len(pk, (self.public_key_size,), "public_key", KeyError_)
        sig = _buf(signature, "signature", AuthError)
        if len(sig) != self.signature_size:
            raise AuthError(f"signature: expected {self.signature_size} bytes, got {len(sig)}")
        _buf(message, "message", PolicyError)
        self._check_context(context)
        try:
            self._impl.verify(pk, message, sig, context)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def _check_context(self, context: Any) -> None:
        ctx = _buf(context, "context", PolicyError)
        if len(ctx) > 255:
            raise PolicyError(f"context: at most 255 bytes, got {len(ctx)}")
        if ctx and self.operation == "sig.ed25519":
            raise PolicyError("context: Ed25519 (RFC 8032 pure) takes no context")


class KexRoute(_KeyPairRoute):
    """Key agreement; rejects the all-zero shared secret."""

    __slots__ = ()

    _impl: KeyAgreement

    def derive_shared(self, secret_key: Buffer | SecretBytes, peer_public_key: Buffer) -> SecretBytes:
        """The raw shared secret; an all-zero result (low-order peer key) raises KeyError_."""
        sk = _buf(secret_key, "secret_key", KeyError_)
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        pk = _buf(peer_public_key, "peer_public_key", KeyError_)
        _check_len(pk, (self.public_key_size,), "peer_public_key", KeyError_)
        try:
            shared = self._impl.exchange(sk, pk)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)
        # OR-accumulate so the check does not exit early on the first non-zero byte.
        acc = 0
        for b in shared:
            acc |= b
        if acc == 0:
            raise KeyError_("peer_public_key: low-order point (all-zero shared secret)")
        return _secret(shared)


class KemRoute(_KeyPairRoute):
    """A KEM whose decapsulation key is a seed."""

    __slots__ = ("ciphertext_size",)

    _impl: Kem

    def __init__(self, operation: str, provider: str, impl: Kem,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, impl, on_fault)
        self.ciphertext_size = impl.ciphertext_size

    def encapsulate(self, public_key: Buffer) -> tuple[bytes, SecretBytes]:
        """Return ``(ciphertext, shared_secret)``."""
        pk = _buf(public_key, "public_key", KeyError_)
        _check_len(pk, (self.public_key_size,), "public_key", KeyError_)
        try:
            ct, ss = self._impl.encapsulate(pk)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)
        return ct, _secret(ss)

    def decapsulate(self, secret_key: Buffer | SecretBytes, ciphertext: Buffer) -> SecretBytes:
        """Return the shared secret (a tampered ciphertext yields an unrelated one, per FIPS 203)."""
        sk = _buf(secret_key, "secret_key", KeyError_)
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        ct = _buf(ciphertext, "ciphertext", AuthError)
        if len(ct) != self.ciphertext_size:
            raise AuthError(f"ciphertext: expected {self.ciphertext_size} bytes, got {len(ct)}")
        try:
            return _secret(self._impl.decapsulate(sk, ct))
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)


class KdfRoute(_Route):
    """HKDF: extract, expand, and the one-shot derive."""

    __slots__ = ("_impl", "hash_size", "max_output")

    def __init__(self, operation: str, provider: str, impl: Kdf,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, on_fault)
        self._impl = impl
        self.hash_size = impl.hash_size
        self.max_output = impl.max_output

    def extract(self, salt: Buffer, ikm: Buffer | SecretBytes) -> SecretBytes:
        """The pseudo-random key ``PRK = HMAC(salt, ikm)``."""
        salt_b = _buf(salt, "salt", PolicyError)
        ikm_b = _buf(ikm, "ikm", KeyError_)
        try:
            return _secret(self._impl.extract(salt_b, ikm_b))
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def expand(self, prk: Buffer | SecretBytes, info: Buffer, length: int) -> SecretBytes:
        """``length`` bytes of output keying material bound to ``info`` (e.g. a transcript hash)."""
        prk_b = _buf(prk, "prk", KeyError_)
        if len(prk_b) < self.hash_size:
            raise KeyError_(f"prk: expected at least {self.hash_size} bytes, got {len(prk_b)}")
        info_b = _buf(info, "info", PolicyError)
        self._check_length(length)
        try:
            return _secret(self._impl.expand(prk_b, info_b, length))
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def derive(self, ikm: Buffer | SecretBytes, length: int, *, salt: Buffer = b"",
               info: Buffer = b"") -> SecretBytes:
        """Extract then expand in one call."""
        self._check_length(length)
        _buf(info, "info", PolicyError)
        with self.extract(salt, ikm) as prk:
            return self.expand(prk, info, length)

    def _check_length(self, length: Any) -> None:
        if type(length) is not int:
            raise KeyError_(f"length: expected an int, got {type(length).__name__}")
        if not 0 < length <= self.max_output:
            raise KeyError_(f"length: expected 1..{self.max_output}, got {length}")
