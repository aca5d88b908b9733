"""The ``sodium`` provider: libsodium through PyNaCl's bindings.

The AEADs call libsodium through PyNaCl's own compiled cffi module and read a key held in a
wipeable buffer in place. PyNaCl's bindings, which the signature and key-agreement calls use,
accept only immutable ``bytes``: there a key is copied into a short-lived ``bytes`` for the call,
and that copy cannot be wiped (documented limit).

The AEADs' tag-separate decrypt calls libsodium's ``*_decrypt_detached`` functions, which
PyNaCl's bindings do not wrap, through cffi on the same library PyNaCl loaded (its extension
exports libsodium's symbols); where they cannot be found the engine joins instead.
"""

from __future__ import annotations

from typing import Any

import nacl.bindings as b
import nacl.exceptions
from nacl import _sodium
from xpscerpto.errors import AuthError
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, KeyAgreement, Provider, Signature

__all__ = ["PROVIDER_NAME", "make_provider", "xps_register_providers"]

PROVIDER_NAME = "sodium"


def _checked_view(x: Buffer) -> memoryview:
    """A view of ``x``; refuses what the engine's buffer contract refuses, as cryptography does."""
    view = memoryview(x)  # TypeError for a non-buffer (bytes() would turn an int into zeros)
    if view.itemsize != 1 or view.format not in ("B", "c") or not view.c_contiguous:
        view.release()  # not left to the refusal's traceback: it may pin the caller's buffer
        raise BufferError("expected one contiguous run of single bytes")
    return view


def _bytes(x: Buffer) -> bytes:
    if type(x) is bytes:
        return x
    with _checked_view(x) as view:
        return view.tobytes()


_DETACHED = ("crypto_aead_chacha20poly1305_ietf_decrypt_detached",
             "crypto_aead_xchacha20poly1305_ietf_decrypt_detached",
             "crypto_aead_aegis256_decrypt_detached")


def _load_detached() -> tuple[Any, dict[str, Any]] | None:
    """cffi handles on libsodium's detached AEAD decrypts, or None if this build lacks them."""
    try:
        import cffi  # type: ignore[import-untyped]  # ships no stubs
        import nacl._sodium

        ffi = cffi.FFI()
        ffi.cdef("".join(
            f"int {name}(unsigned char *m, unsigned char *nsec, const unsigned char *c, unsigned long long clen, "
            "const unsigned char *mac, const unsigned char *ad, unsigned long long adlen, "
            "const unsigned char *npub, const unsigned char *k);\n" for name in _DETACHED)
            + "int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m, "
              "unsigned long long mlen, const unsigned char *pk);\n")
        lib = ffi.dlopen(nacl._sodium.__file__)
        return ffi, {name: getattr(lib, name) for name in (*_DETACHED, "crypto_sign_verify_detached")}
    except Exception:  # an optional speed-up: without it the engine joins ct and tag itself
        return None


class _Native:
    """The cffi handles, loaded on first use: parsing their declarations costs ~20 ms, which
    an engine that never verifies a signature or opens a large message should not pay at start."""

    __slots__ = ("alloc", "ffi", "fns", "loaded", "verify")

    def __init__(self) -> None:
        self.loaded = False
        self.ffi: Any = None
        self.fns: dict[str, Any] = {}
        self.alloc: Any = None
        self.verify: Any = None

    def load(self) -> _Native:
        if not self.loaded:
            found = _load_detached()
            if found is not None:
                self.ffi, self.fns = found
                self.alloc = self.ffi.new_allocator(should_clear_after_alloc=False)
                self.verify = self.fns["crypto_sign_verify_detached"]
            self.loaded = True  # last: another thread sees either nothing or everything
        return self


_NATIVE = _Native()


# PyNaCl's compiled cffi module (API mode): the AEAD calls go to libsodium directly, ~0.5 µs
# a call cheaper than PyNaCl's wrappers and their ensure() chains (most of the cost at 64 B).
_FFI: Any = _sodium.ffi
_LIB: Any = _sodium.lib
_NULL = _FFI.NULL
_ALLOC = _FFI.new_allocator(should_clear_after_alloc=False)  # libsodium writes every byte
_OUT = _FFI.buffer
_FAILED = "Decryption failed. Ciphertext failed verification"


class _Keyed:
    """A keyed libsodium AEAD with the cryptography-style call shape.

    The subclasses themselves are the ``cipher`` factories. A key held in a bytearray (a
    :class:`~xpscerpto.SecretBytes`' buffer) is read in place, never copied into ``bytes``, so
    wiping the secret leaves no copy behind. Sizes are checked here as well as by the engine:
    libsodium reads exactly a key's and a nonce's size from the pointers it is given.
    """

    __slots__ = ("_direct", "_key")
    _enc: Any  # crypto_aead_*_encrypt(c, clen_p, m, mlen, ad, adlen, nsec, npub, k)
    _dec: Any  # crypto_aead_*_decrypt(m, mlen_p, nsec, c, clen, ad, adlen, npub, k)
    _npub: int
    _abytes: int

    def __init__(self, key: Buffer) -> None:
        if _size(key) != 32:
            raise nacl.exceptions.TypeError("Key must be a 32 bytes long bytes sequence")
        # bytes, or a pointer held for the cipher's life into a bytearray (the engine's own
        # copy of the key: held, it cannot be resized or moved). Any other buffer (a caller's
        # view) is pinned only for the length of each call (see _pin): a pointer held between
        # calls would keep that view exported as long as the cipher lives, which may be in a
        # refused call's traceback. A bytearray is no garbage-collected container, so no cycle
        # can free it under the pointer.
        self._direct = type(key) is bytes or type(key) is bytearray
        self._key = _FFI.from_buffer(key) if type(key) is bytearray else key

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer | None) -> bytes:
        if type(nonce) is not bytes:
            nonce = _bytes(nonce)
        if len(nonce) != self._npub:
            raise nacl.exceptions.TypeError(f"Nonce must be a {self._npub} bytes long bytes sequence")
        if aad is None:
            aad = b""  # None is empty, as cryptography has it
        if self._direct and type(data) is bytes and type(aad) is bytes:
            # The usual call (and a 64-byte one is mostly fixed costs): nothing to pin.
            n = len(data)
            out = _ALLOC("unsigned char[]", n + self._abytes)
            self._enc(out, _NULL, data, n, aad, len(aad), _NULL, nonce, self._key)
            return _OUT(out)[:]  # type: ignore[no-any-return]
        pinned = _pin(_FFI, data, aad) if self._direct else _pin(_FFI, data, aad, self._key)
        try:
            data, aad = pinned[0], pinned[1]
            key = self._key if self._direct else pinned[2]
            if len(key) != 32:  # a caller's buffer resized since this cipher was made
                raise nacl.exceptions.TypeError("Key must be a 32 bytes long bytes sequence")
            n = len(data)
            out = _ALLOC("unsigned char[]", n + self._abytes)
            self._enc(out, _NULL, data, n, aad, len(aad), _NULL, nonce, key)
        finally:
            _unpin(_FFI, pinned)
        return _OUT(out)[:]  # type: ignore[no-any-return]

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer | None) -> bytes:
        if type(nonce) is not bytes:
            nonce = _bytes(nonce)
        if len(nonce) != self._npub:
            raise nacl.exceptions.TypeError(f"Nonce must be a {self._npub} bytes long bytes sequence")
        if aad is None:
            aad = b""
        if self._direct and type(data) is bytes and type(aad) is bytes:
            n = len(data) - self._abytes
            if n < 0:
                raise nacl.exceptions.CryptoError(_FAILED)
            out = _ALLOC("unsigned char[]", n)
            if self._dec(out, _NULL, _NULL, data, len(data), aad, len(aad), nonce, self._key) != 0:
                raise nacl.exceptions.CryptoError(_FAILED)  # the uninitialised buffer is dropped unread
            return _OUT(out, n)[:]  # type: ignore[no-any-return]
        pinned = _pin(_FFI, data, aad) if self._direct else _pin(_FFI, data, aad, self._key)
        try:
            data, aad = pinned[0], pinned[1]
            key = self._key if self._direct else pinned[2]
            if len(key) != 32:
                raise nacl.exceptions.TypeError("Key must be a 32 bytes long bytes sequence")
            n = len(data) - self._abytes
            if n < 0:
                raise nacl.exceptions.CryptoError(_FAILED)
            out = _ALLOC("unsigned char[]", n)
            if self._dec(out, _NULL, _NULL, data, n + self._abytes, aad, len(aad), nonce, key) != 0:
                raise nacl.exceptions.CryptoError(_FAILED)
        finally:
            _unpin(_FFI, pinned)
        return _OUT(out, n)[:]  # type: ignore[no-any-return]


class _ChaChaKeyed(_Keyed):
    __slots__ = ()
    _enc = _LIB.crypto_aead_chacha20poly1305_ietf_encrypt
    _dec = _LIB.crypto_aead_chacha20poly1305_ietf_decrypt
    _npub, _abytes = 12, 16


class _XChaChaKeyed(_Keyed):
    __slots__ = ()
    _enc = _LIB.crypto_aead_xchacha20poly1305_ietf_encrypt
    _dec = _LIB.crypto_aead_xchacha20poly1305_ietf_decrypt
    _npub, _abytes = 24, 16


class _AegisKeyed(_Keyed):
    __slots__ = ()
    _enc = _LIB.crypto_aead_aegis256_encrypt
    _dec = _LIB.crypto_aead_aegis256_decrypt
    _npub, _abytes = 32, 32


class _SodiumAead(Aead):
    key_sizes = (32,)
    tag_size = 16
    auth_errors = (nacl.exceptions.CryptoError,)
    checks_buffers = True  # every input goes through _bytes(), _size() or _pin()
    _detached_name: str

    def decrypt_detached(self, key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer,
                         associated_data: Buffer) -> bytes:
        native = _NATIVE if _NATIVE.loaded else _NATIVE.load()
        if native.ffi is None:  # this libsodium build lacks the detached functions: join instead
            wire = b"".join((_bytes(ciphertext), _bytes(tag)))
            return self.cipher(key).decrypt(nonce, wire, associated_data)
        ffi, fns = native.ffi, native.fns
        pinned = _pin(ffi, ciphertext, tag, b"" if associated_data is None else associated_data, nonce, key)
        try:
            ct, tag, aad, npub, k = pinned
            n = len(ct)
            if len(tag) != self.tag_size or len(k) != 32 or len(npub) != self.nonce_size:
                raise nacl.exceptions.CryptoError(_FAILED)
            # Left uninitialised: libsodium writes it whole on success (and it is dropped otherwise).
            out = native.alloc("unsigned char[]", n or 1)
            if fns[self._detached_name](out, ffi.NULL, ct, n, tag, aad, len(aad), npub, k) != 0:
                raise nacl.exceptions.CryptoError(_FAILED)
        finally:
            _unpin(ffi, pinned)
        return ffi.buffer(out, n)[:]  # type: ignore[no-any-return]


def _size(x: Buffer) -> int:
    """Length in bytes (a 2-D view's len() counts rows), under the same buffer rules as _bytes()."""
    if type(x) is bytes or type(x) is bytearray:
        return len(x)
    with _checked_view(x) as view:
        return view.nbytes


def _pin(ffi: Any, *buffers: Buffer) -> list[Any]:
    """``buffers`` as libsodium reads them: ``bytes`` as they are, any other buffer as a pointer
    into it (no copy). Every buffer is checked before the first pointer is taken, and a failure
    releases the pointers already taken, so a refusal leaves no export of a caller's buffer.

    The caller releases the result with :func:`_unpin` in a ``finally``: a pointer left to the
    garbage collector can sit in a reference cycle with the memoryview it exports (a refused
    call's traceback), and CPython may then clear the view first and free the memory the pointer
    still releases later (a crash of the process). Sizes are read from the pointers, not from the
    checks: a buffer resized between the two cannot make libsodium read past its end.
    """
    for x in buffers:
        if type(x) is not bytes and type(x) is not bytearray:
            _checked_view(x).release()
    pinned: list[Any] = []
    try:
        for x in buffers:
            pinned.append(x if type(x) is bytes else ffi.from_buffer(x))
    except BaseException:
        _unpin(ffi, pinned)
        raise
    return pinned


def _unpin(ffi: Any, pinned: list[Any]) -> None:
    """Release the pointers :func:`_pin` took, now rather than at a later collection."""
    for p in pinned:
        if type(p) is not bytes:
            ffi.release(p)


class ChaCha20Poly1305Impl(_SodiumAead):
    nonce_size = 12
    cipher: Any = _ChaChaKeyed
    _detached_name = "crypto_aead_chacha20poly1305_ietf_decrypt_detached"


class XChaCha20Poly1305Impl(_SodiumAead):
    nonce_size = 24
    cipher: Any = _XChaChaKeyed
    _detached_name = "crypto_aead_xchacha20poly1305_ietf_decrypt_detached"


class Aegis256Impl(_SodiumAead):
    """AEGIS-256 with the 256-bit tag libsodium uses (and the AEGIS draft recommends)."""

    nonce_size = 32
    tag_size = 32
    cipher: Any = _AegisKeyed
    _detached_name = "crypto_aead_aegis256_decrypt_detached"


class Ed25519Impl(Signature):
    public_key_size = 32
    secret_key_size = 32
    signature_size = 64

    def generate(self) -> tuple[bytes, bytearray]:
        pk, sk64 = b.crypto_sign_keypair()
        return pk, bytearray(sk64[:32])

    def public_key(self, secret_key: Buffer) -> bytes:
        pk, _ = b.crypto_sign_seed_keypair(_bytes(secret_key))
        return pk

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        _, sk64 = b.crypto_sign_seed_keypair(_bytes(secret_key))
        return b.crypto_sign(_bytes(message), sk64)[:64]

    def load(self, secret_key: Buffer) -> _Ed25519Key:
        return _Ed25519Key(b.crypto_sign_seed_keypair(_bytes(secret_key))[1])

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        verify = (_NATIVE if _NATIVE.loaded else _NATIVE.load()).verify
        if verify is not None:
            # Detached: no signature || message copy and no output buffer (libsodium's
            # crypto_sign_open builds both). Sizes were checked by the engine.
            if verify(_bytes(signature), _bytes(message), _size(message), _bytes(public_key)) != 0:
                raise AuthError("signature: verification failed")
            return
        try:
            b.crypto_sign_open(_bytes(signature) + _bytes(message), _bytes(public_key))
        except nacl.exceptions.CryptoError:
            raise AuthError("signature: verification failed") from None


class X25519Impl(KeyAgreement):
    public_key_size = 32
    secret_key_size = 32
    shared_size = 32

    def generate(self) -> tuple[bytes, bytearray]:
        pk, sk = b.crypto_box_keypair()
        return pk, bytearray(sk)

    def public_key(self, secret_key: Buffer) -> bytes:
        return b.crypto_scalarmult_base(_bytes(secret_key))

    def exchange(self, secret_key: Buffer, peer_public_key: Buffer) -> bytearray:
        try:
            return bytearray(b.crypto_scalarmult(_bytes(secret_key), _bytes(peer_public_key)))
        except nacl.exceptions.RuntimeError:
            # libsodium refuses an all-zero result itself; report it as the engine would.
            return bytearray(32)


class _Ed25519Key:
    """libsodium's expanded signing key (seed || public key), kept between signatures.

    PyNaCl hands it over as immutable ``bytes``, which cannot be wiped (the module's
    documented limit); it lives as long as the keyed signer holding it.
    """

    __slots__ = ("_sk64",)

    def __init__(self, sk64: bytes) -> None:
        self._sk64 = sk64

    def sign(self, message: Buffer, context: bytes) -> bytes:
        return b.crypto_sign(message if type(message) is bytes else _bytes(message), self._sk64)[:64]


def make_provider() -> Provider:
    """The provider record for the linked libsodium."""
    import nacl

    impls: dict[str, object] = {
        "aead.chacha20poly1305": ChaCha20Poly1305Impl(),
        "aead.xchacha20poly1305": XChaCha20Poly1305Impl(),
        "aead.aegis256": Aegis256Impl(),
        "sig.ed25519": Ed25519Impl(),
        "kex.x25519": X25519Impl(),
    }
    return Provider(
        name=PROVIDER_NAME,
        backend=f"libsodium via PyNaCl {nacl.__version__}",
        version=str(nacl.__version__),
        implementations=impls,
        constant_time=True,
        priority=90,
    )


@hookimpl
def xps_register_providers(registry: Any) -> None:
    registry.add(make_provider())
