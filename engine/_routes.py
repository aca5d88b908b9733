"""Routed adapters: the objects a routing table holds and the API calls directly.

Each adapter wraps one provider implementation of one operation. It validates sizes the
contract declares, draws nonces, converts :class:`SecretBytes`, and wraps provider faults.
All of that is decided when the adapter is built; a call pays only the checks it must.

Provider exceptions never leak: an ``XpsError`` raised by the provider passes through, anything
else is first re-diagnosed against the inputs (so a ``str`` key becomes XPS_ERR_KEY rather
than a provider TypeError, and a strided view never counts as a provider fault) and otherwise
becomes :class:`ProviderError` naming the provider. Every XPS_ERR_AUTH is reported to the
engine's sink as an :class:`AuthFailure` (error path only).

A SecretBytes argument is read through its buffer and checked again after the provider
returned: if it was wiped meanwhile the result is discarded (see :mod:`xpscerpto.secret`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from ._buffers import buffer_problem, byte_buffer, describe, describe_int
from ._tuning_model import NO_LIMIT
from .errors import AuthError, KeyError_, NonceError, PolicyError, ProviderError, XpsError
from .interfaces import (
    Aead,
    AeadCipher,
    Buffer,
    Kdf,
    Kem,
    KeyAgreement,
    LoadedAgreementKey,
    LoadedSigningKey,
    Signature,
)
from .secret import SecretBytes, secure_wipe

__all__ = ["AeadRoute", "AuthFailure", "FaultSink", "KdfRoute", "KemRoute", "KexRoute", "SignatureRoute"]

_urandom = os.urandom

#: Ciphertexts from this size on are joined to their tag in a buffer reused per thread (for
#: providers without a tag-separate decrypt): a fresh buffer that large is served by mmap or
#: trimmed back after use, so glibc would fault its pages in again on every call.
JOIN_REUSE_FROM = 128 * 1024
#: A reused join buffer larger than this is not kept after the call (memory per thread).
JOIN_KEEP_MAX = 16 << 20
#: AEADs whose security survives a repeated nonce (RFC 8452: AES-GCM-SIV then reveals only
#: whether two messages were equal), so application nonces are not checked for reuse.
NONCE_MISUSE_RESISTANT = frozenset({"aead.aes256gcmsiv"})


def _buf(value: Any, field: str, error: type[XpsError]) -> Buffer:
    """Validate one input as a byte buffer (error path and non-AEAD APIs)."""
    if isinstance(value, SecretBytes):
        if value._wiped:
            raise error(f"{field}: SecretBytes was wiped")
        return value._buf
    return byte_buffer(value, field, error)


def _data(value: Any, field: str) -> Buffer:
    """A message or context: a byte buffer, never a SecretBytes.

    A SecretBytes is refused as the AEAD API refuses one: passed on, the provider's TypeError
    would be reported as its fault (XPS_ERR_INTERNAL and the fault listeners), and a caller's
    argument is never a provider's fault.
    """
    if isinstance(value, SecretBytes):
        raise PolicyError(f"{field}: pass secret data as SecretBytes.view(), not SecretBytes")
    return byte_buffer(value, field, PolicyError)


def _secret_in(value: Any, field: str) -> tuple[Buffer, SecretBytes | None]:
    """A secret input's buffer, and the SecretBytes to re-check after the call (or None)."""
    if type(value) is SecretBytes:
        if value._wiped:
            raise KeyError_(f"{field}: SecretBytes was wiped")
        return value._buf, value
    return _buf(value, field, KeyError_), None


def _wiped_during(secret: SecretBytes | None, field: str, result: bytearray | None = None,
                  error: type[XpsError] = KeyError_) -> None:
    """Raise ``error`` (wiping ``result``) if ``secret`` was wiped while the provider ran."""
    if secret is not None and secret._wiped:
        if result is not None:
            secure_wipe(result)
        raise error(f"{field}: SecretBytes was wiped during the call")


def _secret_salt(salt: Any) -> SecretBytes | None:
    """A salt that is a SecretBytes, to re-check after the call (HKDF salts may be secrets)."""
    return salt if type(salt) is SecretBytes else None


def _check_len(value: Buffer, sizes: tuple[int, ...], field: str, error: type[XpsError]) -> None:
    if len(value) not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise error(f"{field}: expected {want} bytes, got {len(value)}")


def _secret(buf: bytearray | bytes) -> SecretBytes:
    return SecretBytes.take(buf) if type(buf) is bytearray else SecretBytes(buf)


FaultSink = Callable[[str, str, BaseException], None]


class AuthFailure(AuthError):
    """What a route reports (never raises) when a call fails authentication.

    ``call`` is the API call's name; nothing of the caller's input is carried.
    """

    def __init__(self, call: str) -> None:
        super().__init__(f"{call}: authentication failed")
        self.call = call


class _BadBuffer(TypeError):
    """Raised by the engine's buffer check in front of a provider that does not check its own."""


class _Route:
    """Identity shared by every adapter, and the error path's fault report."""

    __slots__ = ("_on_fault", "operation", "provider")

    def __init__(self, operation: str, provider: str, on_fault: FaultSink | None = None) -> None:
        self.operation = operation
        self.provider = provider
        self._on_fault = on_fault

    def _fault(self, exc: BaseException, provider: str | None = None) -> NoReturn:
        # Reported on the error path only (the updater rolls back a capsule that faults);
        # a failing listener must not mask the caller's error. ``provider``: the one that
        # served the call when a size split routes it elsewhere than ``self.provider``.
        provider = self.provider if provider is None else provider
        if self._on_fault is not None:
            with contextlib.suppress(Exception):
                self._on_fault(provider, self.operation, exc)
        # Only the type: a provider's message could carry anything (a capsule's, secrets
        # included). The original stays chained as __cause__ for a debugger, never formatted.
        raise ProviderError(f"{self.operation}: provider {provider!r} failed: {type(exc).__name__}") from exc

    def _failed(self, exc: BaseException, secret: SecretBytes | None, field: str) -> NoReturn:
        """A provider raised: the caller's wipe if the secret was wiped meanwhile, else a fault."""
        _wiped_during(secret, field)
        self._fault(exc)

    def _auth_failed(self, call: str) -> None:
        """Report a failed authentication (error path only); never masks the caller's error."""
        if self._on_fault is not None:
            with contextlib.suppress(Exception):
                self._on_fault(self.provider, self.operation, AuthFailure(call))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.operation} via {self.provider}>"


class AeadRoute(_Route):
    """One provider's AEAD, as data the API's hot path reads directly.

    The call path lives in :class:`xpscerpto.engine.AeadAPI` so that a call runs one Python
    frame of the engine's; this object holds what that frame needs, resolved at build time.
    ``cipher`` is the provider's keyed-cipher factory: a feature that must act per call
    (canary, size buckets, drain tracking, buffer checks for a provider that does not make
    them) installs a different factory, not an ``if``.

    ``decrypt_detached(key, nonce, ciphertext, tag, aad)`` opens a ciphertext of at least
    ``detached_from`` bytes whose tag is held apart: the provider's own tag-separate decrypt,
    or else a join into a buffer reused per thread (never a fresh large buffer per call).

    Size split (autotune): messages up to ``limit`` bytes go to ``cipher``, larger ones to
    ``large`` (``large_detached``); ``wire_limit`` is the same bound for ``ciphertext || tag``.
    The call picks with one comparison. Without a split, ``limit`` is larger than any buffer
    and ``large`` is ``cipher``. Keyed AEADs have their own measured split (``keyed_*``).
    """

    __slots__ = ("auth_errors", "auto_nonce", "cipher", "decrypt_detached", "detached_from", "key_size",
                 "key_sizes", "keyed_cipher", "keyed_large", "keyed_large_provider", "keyed_limit",
                 "keyed_provider", "keyed_wire_limit", "large", "large_detached", "large_provider", "limit",
                 "max_input", "misuse_resistant", "nonce_size", "tag_size", "wire_limit")

    cipher: Callable[[Buffer], AeadCipher]
    decrypt_detached: Callable[[Buffer, bytes, Buffer, Buffer, Buffer], bytes]
    detached_from: int
    auth_errors: tuple[type[BaseException], ...]
    key_sizes: frozenset[int]
    key_size: int
    nonce_size: int
    tag_size: int
    auto_nonce: bool
    misuse_resistant: bool

    def __init__(self, operation: str, provider: str, impl: Aead, *, auto_nonce: bool,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, on_fault)
        self.cipher = impl.cipher if impl.checks_buffers else _checked_factory(impl.cipher)
        if type(impl).decrypt_detached is not Aead.decrypt_detached:
            detached = impl.decrypt_detached
            self.decrypt_detached = detached if impl.checks_buffers else _checked_detached(detached)
            self.detached_from = max(0, int(impl.detached_from))
        else:
            self.decrypt_detached = self._join_decrypt
            self.detached_from = JOIN_REUSE_FROM
        self.auth_errors = (*impl.auth_errors, AuthError)
        self.max_input: int | None = None
        self._add_max_input(impl)
        self.key_sizes = frozenset(impl.key_sizes)
        self.key_size = max(impl.key_sizes)
        self.nonce_size = impl.nonce_size
        self.tag_size = impl.tag_size
        self.auto_nonce = auto_nonce
        self.misuse_resistant = operation in NONCE_MISUSE_RESISTANT
        self.limit = self.wire_limit = NO_LIMIT
        self.large, self.large_detached, self.large_provider = self.cipher, self.decrypt_detached, provider
        self.keyed_cipher, self.keyed_provider = self.cipher, provider
        self.keyed_limit = self.keyed_wire_limit = NO_LIMIT
        self.keyed_large, self.keyed_large_provider = self.cipher, provider

    def _factories(self, impl: Aead) -> tuple[Callable[[Buffer], AeadCipher],
                                              Callable[[Buffer, bytes, Buffer, Buffer, Buffer], bytes]]:
        """``impl``'s cipher factory and tag-separate decrypt, behind the same checks as ours."""
        cipher = impl.cipher if impl.checks_buffers else _checked_factory(impl.cipher)
        if type(impl).decrypt_detached is not Aead.decrypt_detached and int(impl.detached_from) <= self.detached_from:
            detached = impl.decrypt_detached
            return cipher, detached if impl.checks_buffers else _checked_detached(detached)

        def join_decrypt(key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer, aad: Buffer) -> bytes:
            return _join_decrypt(cipher, key, nonce, ciphertext, tag, aad)

        return cipher, join_decrypt

    def serve_large(self, limit: int, impl: Aead, provider: str) -> None:
        """Route messages larger than ``limit`` bytes to ``impl`` (while the table is built only)."""
        self.large, self.large_detached = self._factories(impl)
        self.limit, self.wire_limit, self.large_provider = limit, limit + self.tag_size, provider
        self._add_auth_errors(impl)
        self._add_max_input(impl)

    def serve_keyed(self, small: Aead, small_provider: str, limit: int, large: Aead, large_provider: str) -> None:
        """Keyed AEADs: ``small`` up to ``limit`` bytes, ``large`` above (while the table is built only)."""
        self.keyed_cipher, self.keyed_provider = self._factories(small)[0], small_provider
        self.keyed_large, self.keyed_large_provider = self._factories(large)[0], large_provider
        self.keyed_limit, self.keyed_wire_limit = limit, limit + self.tag_size
        self._add_auth_errors(small)
        self._add_auth_errors(large)
        self._add_max_input(small)
        self._add_max_input(large)

    def _add_max_input(self, impl: Aead) -> None:
        # The smallest limit of any provider the route may call (error path only: no split here).
        limit = getattr(impl, "max_input", None)
        if type(limit) is int and limit >= 0 and (self.max_input is None or limit < self.max_input):
            self.max_input = limit

    def _add_auth_errors(self, impl: Aead) -> None:
        # A forgery is an authentication failure whichever provider of the split saw it; with
        # only the first provider's classes, another's (cryptography's InvalidTag behind a jit
        # route) read as a provider fault: XPS_ERR_INTERNAL, and a fault charged to a provider.
        self.auth_errors = (*self.auth_errors, *(e for e in impl.auth_errors if e not in self.auth_errors))

    def served_by(self, size: int | None, *, keyed: bool) -> str:
        """The provider that serves a message of ``size`` bytes (None: the small one)."""
        if keyed:
            return self.keyed_provider if size is None or size <= self.keyed_limit else self.keyed_large_provider
        return self.provider if size is None or size <= self.limit else self.large_provider

    def _join_decrypt(self, key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer, aad: Buffer) -> bytes:
        return _join_decrypt(self.cipher, key, nonce, ciphertext, tag, aad)

    def count_calls(self, counter: OperationCounter) -> None:
        """Count every call into a provider (while the table is built only; metrics on).

        Each factory and tag-separate decrypt is wrapped once, with the counter of the provider
        it reaches: a stateless call or a keyed object's creation counts one. Tables built
        without metrics have no wrapper at all.
        """
        op = self.operation
        cipher, detached = self.cipher, self.decrypt_detached
        self.cipher = _counted(cipher, counter(op, self.provider))
        if detached != self._join_decrypt:  # the join calls self.cipher: counted there
            self.decrypt_detached = _counted(detached, counter(op, self.provider))
        # The size split's and keyed factories reach the provider directly (not via self.cipher).
        self.large = self.cipher if self.large is cipher else _counted(self.large, counter(op, self.large_provider))
        self.large_detached = (self.decrypt_detached if self.large_detached is detached
                               else _counted(self.large_detached, counter(op, self.large_provider)))
        self.keyed_cipher = (self.cipher if self.keyed_cipher is cipher
                             else _counted(self.keyed_cipher, counter(op, self.keyed_provider)))
        self.keyed_large = (self.cipher if self.keyed_large is cipher
                            else _counted(self.keyed_large, counter(op, self.keyed_large_provider)))

    def diagnose(self, exc: BaseException, key: Any, nonce: Any, call: str | None, *, nonce_required: bool,
                 inputs: tuple[tuple[str, Any, type[XpsError]], ...], wire: Any = None,
                 keyed: bool = False) -> XpsError:
        """Turn a failure on the call path into the right typed error (error path only).

        An XPS_ERR_AUTH result is reported to the fault sink as an :class:`AuthFailure`.

        Args:
            exc: what the call path raised.
            key, nonce: the caller's key and nonce.
            call: the API call's name (for the auth-failure report; None: not reported).
            nonce_required: False only for encrypt, where None means "draw one".
            inputs: (field name, value, error class) for every other byte input, in the
                order the caller passed them.
            wire: ``ciphertext || tag`` when the call had it whole (a too-short one is AUTH).
            keyed: the call was a keyed AEAD's (its size split may differ from the stateless one).
        """
        err = self._diagnose(exc, key, nonce, nonce_required=nonce_required, inputs=inputs, wire=wire, keyed=keyed)
        if isinstance(err, AuthError) and call is not None:
            self._auth_failed(call)
        return err

    def _diagnose(self, exc: BaseException, key: Any, nonce: Any, *, nonce_required: bool,
                  inputs: tuple[tuple[str, Any, type[XpsError]], ...], wire: Any, keyed: bool) -> XpsError:
        if type(key) is SecretBytes and key._wiped:
            # Whatever the provider made of a zeroed key (a failed tag, say), the cause is the wipe.
            return exc if isinstance(exc, KeyError_) else KeyError_("key: SecretBytes was wiped")
        if isinstance(exc, XpsError):
            return exc
        try:
            if type(key) is not SecretBytes:
                key = _buf(key, "key", KeyError_)
            _check_len(key, tuple(sorted(self.key_sizes)), "key", KeyError_)
            if nonce is not None or nonce_required:
                if nonce is None:
                    raise NonceError("nonce: required, got None")
                _check_len(byte_buffer(nonce, "nonce", NonceError), (self.nonce_size,), "nonce", NonceError)
            for field, value, error in inputs:
                if isinstance(value, SecretBytes):
                    raise error(f"{field}: pass secret data as SecretBytes.view(), not SecretBytes")
                if value is None and field == "aad":
                    continue  # None is empty associated data, as every provider takes it
                _buf(value, field, error)
        except XpsError as typed:
            return typed  # a bad input explains the failure, whatever the provider made of it
        too_long = self._too_long(inputs)
        if too_long is not None:
            return too_long
        if isinstance(exc, self.auth_errors):
            return AuthError("ciphertext: authentication failed")
        if wire is not None and len(wire) < self.tag_size:
            return AuthError(f"ciphertext: shorter than the {self.tag_size}-byte tag")
        if isinstance(exc, _BadBuffer):
            return PolicyError(f"{self.operation}: {exc}")
        odd = _subclassed((("key", key, KeyError_), ("nonce", nonce, NonceError), *inputs))
        if odd is not None:
            return odd
        try:
            self._fault(exc, self.served_by(_message_size(inputs, wire, self.tag_size), keyed=keyed))
        except ProviderError as wrapped:
            return wrapped

    def _too_long(self, inputs: tuple[tuple[str, Any, type[XpsError]], ...]) -> XpsError | None:
        """PolicyError if an input is longer than a provider of this route takes (error path only)."""
        limit = self.max_input
        if limit is None:
            return None
        for field, value, _ in inputs:
            size = _nbytes(value)
            if size is not None and size > limit:
                return PolicyError(f"{field}: {size} bytes is more than {self.operation} takes ({limit} bytes)")
        return None


def _nbytes(value: Any) -> int | None:
    """How many bytes a buffer holds; None for None (empty aad) or no buffer (checked elsewhere)."""
    try:
        with memoryview(value) as view:
            return view.nbytes
    except Exception:
        return None


def _subclassed(inputs: tuple[tuple[str, Any, type[XpsError]], ...]) -> XpsError | None:
    """A subclass of bytes or bytearray among the inputs of a call whose provider failed.

    Its own ``__len__``, ``__bytes__`` or ``__hash__`` can make a provider fail in ways no
    provider is to blame for, so the failure is the caller's, not a fault (error path only).
    """
    for field, given, error in inputs:
        # A SecretBytes' buffer is a plain bytearray (take() adopts no subclass): looked at
        # all the same, on this error path only, in case a buffer was set some other way.
        value = given._buf if type(given) is SecretBytes else given
        cls = type(value)
        if cls is not bytes and cls is not bytearray and isinstance(value, bytes | bytearray):
            base = "bytes" if isinstance(value, bytes) else "bytearray"
            return error(f"{field}: a {cls.__name__} (a subclass of {base}) could not be read as plain "
                         f"{base}; pass {base}")
    return None


def _message_size(inputs: tuple[tuple[str, Any, type[XpsError]], ...], wire: Any, tag_size: int) -> int | None:
    """The message size a failed call was routed by (its inputs passed the checks already)."""
    try:
        if wire is not None:
            return len(memoryview(wire).cast("B")) - tag_size
        return len(memoryview(inputs[0][1]).cast("B")) if inputs else None
    except Exception:  # an input that is no buffer after all: the small provider, as the call picked
        return None


_JOIN = threading.local()


def _flat(value: Buffer) -> Buffer:
    """A byte buffer as one flat run of bytes (no copy)."""
    if type(value) is bytes or type(value) is bytearray:
        return value
    return memoryview(value).cast("B")


def _check_buffers(*values: Any) -> None:
    for value in values:
        if type(value) is not bytes and value is not None and buffer_problem(value) is not None:
            raise _BadBuffer(f"input: {buffer_problem(value)}")


#: ``counter(operation, provider)`` -> a function that adds one (``itertools.count().__next__``).
OperationCounter = Callable[[str, str], Callable[[], object]]


def _counted(call: Callable[..., Any], tick: Callable[[], object]) -> Callable[..., Any]:
    def counted(*args: Any) -> Any:
        tick()
        return call(*args)

    return counted


def _join_decrypt(cipher: Callable[[Buffer], AeadCipher], key: Buffer, nonce: bytes, ciphertext: Buffer,
              tag: Buffer, aad: Buffer) -> bytes:
    """Join ``ciphertext || tag`` into this thread's reusable buffer, then decrypt.

    The buffer holds only ciphertext (public), so it needs no wiping. It is taken off the
    thread while in use, so a provider that re-enters the engine gets a buffer of its own.
    """
    # Byte counts: a buffer's len() counts the rows of a 2-D view.
    ciphertext, tag = _flat(ciphertext), _flat(tag)
    n_ct = len(ciphertext)
    n = n_ct + len(tag)
    buf: bytearray | None = getattr(_JOIN, "buf", None)
    _JOIN.buf = None
    if buf is None or len(buf) < n:
        buf = bytearray(n)
    try:
        view = memoryview(buf)[:n]
        view[:n_ct] = ciphertext
        view[n_ct:] = tag
        return cipher(key).decrypt(nonce, view, aad)
    finally:
        if len(buf) <= JOIN_KEEP_MAX:
            _JOIN.buf = buf


class _CheckedCipher:
    """A provider's keyed cipher behind the engine's buffer check (for ``checks_buffers=False``).

    The provider's own cipher is made on the first call whose buffers pass, so no code of the
    provider runs for a call the engine refuses; a keyed AEAD then keeps it.
    """

    __slots__ = ("_factory", "_inner", "_key")

    def __init__(self, factory: Callable[[Buffer], AeadCipher], key: Buffer) -> None:
        self._factory, self._key = factory, key
        self._inner: AeadCipher | None = None

    def _cipher(self) -> AeadCipher:
        inner = self._inner
        if inner is None:
            inner = self._inner = self._factory(self._key)
        return inner

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        _check_buffers(nonce, data, associated_data)
        return self._cipher().encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        _check_buffers(nonce, data, associated_data)
        return self._cipher().decrypt(nonce, data, associated_data)


def _checked_factory(factory: Callable[[Buffer], AeadCipher]) -> Callable[[Buffer], AeadCipher]:
    def cipher(key: Buffer) -> AeadCipher:
        _check_buffers(key)
        return _CheckedCipher(factory, key)

    return cipher


def _checked_detached(fn: Callable[[Buffer, bytes, Buffer, Buffer, Buffer], bytes],
                      ) -> Callable[[Buffer, bytes, Buffer, Buffer, Buffer], bytes]:
    def decrypt_detached(key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer, aad: Buffer) -> bytes:
        _check_buffers(key, nonce, ciphertext, tag, aad)
        return fn(key, nonce, ciphertext, tag, aad)

    return decrypt_detached


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
        """Return ``(public_key, secret_key)``; the secret key is a fresh SecretBytes.

        Raises:
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        try:
            pk, sk = self._impl.generate()
        except Exception as exc:
            self._fault(exc)
        return pk, _secret(sk)

    def public_key(self, secret_key: Buffer | SecretBytes) -> bytes:
        """Derive the public key from a secret key.

        Raises:
            KeyError_: the secret key has the wrong size or type, or is a wiped SecretBytes
                (also when wiped during the call).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        sk, secret = _secret_in(secret_key, "secret_key")
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        try:
            pk = self._impl.public_key(sk)
        except XpsError:
            _wiped_during(secret, "secret_key")
            raise
        except Exception as exc:
            self._failed(exc, secret, "secret_key")
        _wiped_during(secret, "secret_key")
        return pk


class SignatureRoute(_KeyPairRoute):
    """A signature scheme; secret keys are seeds."""

    __slots__ = ("signature_size",)

    _impl: Signature

    def __init__(self, operation: str, provider: str, impl: Signature,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, impl, on_fault)
        self.signature_size = impl.signature_size

    def sign(self, secret_key: Buffer | SecretBytes, message: Buffer, context: bytes = b"") -> bytes:
        """Sign ``message`` (Ed25519 is deterministic; ML-DSA is hedged).

        Raises:
            KeyError_: the secret key has the wrong size or type, or is a wiped SecretBytes
                (also when wiped during the call: no signature is returned).
            PolicyError: message or context not a byte buffer; a context Ed25519 cannot take.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        sk, secret = _secret_in(secret_key, "secret_key")
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        message = _data(message, "message")  # what is checked is what the provider reads
        self._check_context(context)
        try:
            sig = self._impl.sign(sk, message, context)
        except XpsError:
            _wiped_during(secret, "secret_key")
            raise
        except Exception as exc:
            self._failed(exc, secret, "secret_key")
        _wiped_during(secret, "secret_key")
        return sig

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes = b"") -> None:
        """Return if the signature is valid; raise AuthError otherwise.

        Raises:
            AuthError: the signature does not verify or has the wrong size or type (reported
                to the engine's auth-failure listeners).
            KeyError_: the public key has the wrong size or type.
            PolicyError: message or context not a byte buffer; a context Ed25519 cannot take.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        try:
            pk = _buf(public_key, "public_key", KeyError_)
            _check_len(pk, (self.public_key_size,), "public_key", KeyError_)
            sig = _buf(signature, "signature", AuthError)
            if len(sig) != self.signature_size:
                raise AuthError(f"signature: expected {self.signature_size} bytes, got {len(sig)}")
            message = _data(message, "message")
            self._check_context(context)
            try:
                self._impl.verify(pk, message, sig, context)
            except XpsError:
                raise
            except Exception as exc:
                self._fault(exc)
        except AuthError:
            self._auth_failed("verify")
            raise

    def _load_key(self, secret_key: Buffer) -> LoadedSigningKey:
        """The provider's signing-key object for a checked seed (a keyed signer's setup)."""
        _check_len(secret_key, (self.secret_key_size,), "secret_key", KeyError_)
        try:
            return self._impl.load(secret_key)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def _sign_loaded(self, key: LoadedSigningKey, message: Buffer, context: bytes = b"") -> bytes:
        """Sign with a loaded key: the checks of :meth:`sign`, none of the key setup."""
        if type(message) is not bytes:
            message = _data(message, "message")
        if type(context) is not bytes or context:
            self._check_context(context)
        try:
            return key.sign(message, context)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def _check_context(self, context: Any) -> None:
        ctx = _data(context, "context")
        if len(ctx) > 255:
            raise PolicyError(f"context: at most 255 bytes, got {len(ctx)}")
        if ctx and self.operation == "sig.ed25519":
            raise PolicyError("context: Ed25519 (RFC 8032 pure) takes no context")


class KexRoute(_KeyPairRoute):
    """Key agreement; rejects the all-zero shared secret."""

    __slots__ = ()

    _impl: KeyAgreement

    def derive_shared(self, secret_key: Buffer | SecretBytes, peer_public_key: Buffer) -> SecretBytes:
        """The raw shared secret; an all-zero result (low-order peer key) raises KeyError_.

        Raises:
            KeyError_: a key has the wrong size or type; the peer key is a low-order point; the
                secret key is a wiped SecretBytes (also when wiped during the call: the
                result is wiped, never returned).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        sk, secret = _secret_in(secret_key, "secret_key")
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        pk = _buf(peer_public_key, "peer_public_key", KeyError_)
        _check_len(pk, (self.public_key_size,), "peer_public_key", KeyError_)
        try:
            shared = self._impl.exchange(sk, pk)
        except XpsError:
            _wiped_during(secret, "secret_key")
            raise
        except Exception as exc:
            self._failed(exc, secret, "secret_key")
        # X25519 of a zeroed scalar is a value anyone can compute: never let it out.
        _wiped_during(secret, "secret_key", shared if type(shared) is bytearray else None)
        return _nonzero_secret(shared)

    def _load_key(self, secret_key: Buffer) -> LoadedAgreementKey:
        """The provider's private-key object for a checked secret (a keyed exchanger's setup)."""
        _check_len(secret_key, (self.secret_key_size,), "secret_key", KeyError_)
        try:
            return self._impl.load(secret_key)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)

    def _exchange_loaded(self, key: LoadedAgreementKey, peer_public_key: Buffer) -> SecretBytes:
        """:meth:`derive_shared` with a loaded key."""
        pk = peer_public_key if type(peer_public_key) is bytes else _buf(peer_public_key, "peer_public_key", KeyError_)
        _check_len(pk, (self.public_key_size,), "peer_public_key", KeyError_)
        try:
            shared = key.exchange(pk)
        except XpsError:
            raise
        except Exception as exc:
            self._fault(exc)
        return _nonzero_secret(shared)


def _nonzero_secret(shared: bytearray | bytes) -> SecretBytes:
    """The shared secret as SecretBytes; the all-zero value (a low-order peer key) is refused."""
    # int.from_bytes reads every byte: no early exit on the first non-zero one.
    if not int.from_bytes(shared, "little"):
        if type(shared) is bytearray:
            secure_wipe(shared)
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
        """Return ``(ciphertext, shared_secret)``.

        Raises:
            KeyError_: the public key has the wrong size or type, or is not a valid key.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
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
        """Return the shared secret (a tampered ciphertext yields an unrelated one, per FIPS 203).

        Raises:
            KeyError_: the secret key has the wrong size or type, or is a wiped SecretBytes
                (also when wiped during the call: the result is wiped, never returned).
            AuthError: the ciphertext has the wrong size or type (reported as an auth failure).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        sk, secret = _secret_in(secret_key, "secret_key")
        _check_len(sk, (self.secret_key_size,), "secret_key", KeyError_)
        try:
            ct = _buf(ciphertext, "ciphertext", AuthError)
            if len(ct) != self.ciphertext_size:
                raise AuthError(f"ciphertext: expected {self.ciphertext_size} bytes, got {len(ct)}")
        except AuthError:
            self._auth_failed("decapsulate")
            raise
        try:
            shared = self._impl.decapsulate(sk, ct)
        except XpsError:
            _wiped_during(secret, "secret_key")
            raise
        except Exception as exc:
            self._failed(exc, secret, "secret_key")
        _wiped_during(secret, "secret_key", shared if type(shared) is bytearray else None)
        return _secret(shared)


class KdfRoute(_Route):
    """HKDF: extract, expand, and the one-shot derive."""

    __slots__ = ("_impl", "hash_size", "max_output")

    def __init__(self, operation: str, provider: str, impl: Kdf,
                 on_fault: FaultSink | None = None) -> None:
        super().__init__(operation, provider, on_fault)
        self._impl = impl
        self.hash_size = impl.hash_size
        self.max_output = impl.max_output

    def extract(self, salt: Buffer | SecretBytes, ikm: Buffer | SecretBytes) -> SecretBytes:
        """The pseudo-random key ``PRK = HMAC(salt, ikm)``.

        Raises:
            PolicyError: salt not a byte buffer, or a wiped SecretBytes (also when wiped during
                the call: the result is wiped, never returned).
            KeyError_: ikm not a byte buffer, or a wiped SecretBytes (also when wiped during
                the call: the result is wiped, never returned).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        salt_b = _buf(salt, "salt", PolicyError)
        ikm_b, secret = _secret_in(ikm, "ikm")
        try:
            prk = self._impl.extract(salt_b, ikm_b)
        except XpsError:
            _wiped_during(secret, "ikm")
            raise
        except Exception as exc:
            self._failed(exc, secret, "ikm")
        mine = prk if type(prk) is bytearray else None
        _wiped_during(secret, "ikm", mine)
        _wiped_during(_secret_salt(salt), "salt", mine, PolicyError)
        return _secret(prk)

    def expand(self, prk: Buffer | SecretBytes, info: Buffer, length: int) -> SecretBytes:
        """``length`` bytes of output keying material bound to ``info`` (e.g. a transcript hash).

        Raises:
            KeyError_: prk shorter than the hash or not a byte buffer, or a wiped SecretBytes
                (also when wiped during the call); ``length`` not an int in 1..8160.
            PolicyError: info not a byte buffer, or a SecretBytes (``info`` is public context:
                refused before anything is computed; pass ``SecretBytes.view()`` if it must be one).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        prk_b, secret = _secret_in(prk, "prk")
        if len(prk_b) < self.hash_size:
            raise KeyError_(f"prk: expected at least {self.hash_size} bytes, got {len(prk_b)}")
        info_b = _data(info, "info")
        self._check_length(length)
        try:
            okm = self._impl.expand(prk_b, info_b, length)
        except XpsError:
            _wiped_during(secret, "prk")
            raise
        except Exception as exc:
            self._failed(exc, secret, "prk")
        _wiped_during(secret, "prk", okm if type(okm) is bytearray else None)
        return _secret(okm)

    def derive(self, ikm: Buffer | SecretBytes, length: int, *, salt: Buffer | SecretBytes = b"",
               info: Buffer = b"") -> SecretBytes:
        """Extract then expand in one call (the PRK never leaves the call; it is zeroed).

        ``salt`` may be a SecretBytes (Noise's chaining key is one): a wiped one is refused.
        ``info`` may not: it is public context, so a SecretBytes there is a caller's mistake.

        Raises:
            KeyError_: ikm not a byte buffer, or a wiped SecretBytes (also when wiped during
                the call: the result is wiped, never returned); ``length`` not an int in
                1..``max_output``.
            PolicyError: salt or info not a byte buffer; info a SecretBytes (refused before
                anything is computed; pass ``SecretBytes.view()`` if it must be one); a
                SecretBytes salt wiped before or during the call (the result is wiped, never
                returned).
            ProviderError: the provider failed, or its extract returned a PRK shorter than
                the hash (XPS_ERR_INTERNAL).
        """
        self._check_length(length)
        info_b = _data(info, "info")
        salt_b = _buf(salt, "salt", PolicyError)
        ikm_b, secret = _secret_in(ikm, "ikm")
        # The provider's two steps back to back: the PRK is ours, so it skips the public
        # expand()'s checks and SecretBytes and is zeroed here (Noise runs this per MixKey).
        prk: Any = None
        try:
            prk = self._impl.extract(salt_b, ikm_b)
            if len(prk) < self.hash_size:
                raise ValueError("extract returned a PRK shorter than the hash")
            okm = self._impl.expand(prk, info_b, length)
        except XpsError:
            _wiped_during(secret, "ikm")
            raise
        except Exception as exc:
            self._failed(exc, secret, "ikm")
        finally:
            if type(prk) is bytearray:
                secure_wipe(prk)
        mine = okm if type(okm) is bytearray else None
        _wiped_during(secret, "ikm", mine)
        _wiped_during(_secret_salt(salt), "salt", mine, PolicyError)
        return _secret(okm)

    def _check_length(self, length: Any) -> None:
        if type(length) is not int:
            raise KeyError_(f"length: expected an int, got {describe(length)}")
        if not 0 < length <= self.max_output:
            raise KeyError_(f"length: expected 1..{self.max_output}, got {describe_int(length)}")
