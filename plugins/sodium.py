"""The ``sodium`` provider: libsodium through PyNaCl's bindings.

PyNaCl's bindings accept only immutable ``bytes``, so a key held in a wipeable buffer is
copied into a short-lived ``bytes`` for the call; that copy cannot be wiped (documented limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nacl.bindings as b
import nacl.exceptions
from xpscerpto.errors import AuthError
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, KeyAgreement, Provider, Signature

__all__ = ["PROVIDER_NAME", "make_provider", "xps_register_providers"]

PROVIDER_NAME = "sodium"


def _bytes(x: Buffer) -> bytes:
    # memoryview() first: bytes() alone would also accept a list of ints or an int (zeros).
    return x if type(x) is bytes else bytes(memoryview(x))


class _Keyed:
    """A keyed libsodium AEAD with the cryptography-style call shape.

    The subclasses themselves are the ``cipher`` factories, and conversions are inlined, so a
    call runs two short Python frames (``__init__`` and ``encrypt``/``decrypt``).
    """

    __slots__ = ("_key",)
    _enc: Callable[[bytes, bytes, bytes, bytes], bytes]
    _dec: Callable[[bytes, bytes, bytes, bytes], bytes]

    def __init__(self, key: Buffer) -> None:
        self._key = key if type(key) is bytes else bytes(memoryview(key))

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer | None) -> bytes:
        return self._enc(data if type(data) is bytes else _bytes(data),
                         # None is empty associated data, as cryptography treats it.
                         aad if type(aad) is bytes else (b"" if aad is None else _bytes(aad)),
                         nonce if type(nonce) is bytes else _bytes(nonce), self._key)

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer | None) -> bytes:
        return self._dec(data if type(data) is bytes else _bytes(data),
                         aad if type(aad) is bytes else (b"" if aad is None else _bytes(aad)),
                         nonce if type(nonce) is bytes else _bytes(nonce), self._key)


class _ChaChaKeyed(_Keyed):
    __slots__ = ()
    _enc = staticmethod(b.crypto_aead_chacha20poly1305_ietf_encrypt)
    _dec = staticmethod(b.crypto_aead_chacha20poly1305_ietf_decrypt)


class _XChaChaKeyed(_Keyed):
    __slots__ = ()
    _enc = staticmethod(b.crypto_aead_xchacha20poly1305_ietf_encrypt)
    _dec = staticmethod(b.crypto_aead_xchacha20poly1305_ietf_decrypt)


class _AegisKeyed(_Keyed):
    __slots__ = ()
    _enc = staticmethod(b.crypto_aead_aegis256_encrypt)
    _dec = staticmethod(b.crypto_aead_aegis256_decrypt)


class ChaCha20Poly1305Impl(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (nacl.exceptions.CryptoError,)
    cipher: Any = _ChaChaKeyed


class XChaCha20Poly1305Impl(ChaCha20Poly1305Impl):
    nonce_size = 24
    cipher: Any = _XChaChaKeyed


class Aegis256Impl(ChaCha20Poly1305Impl):
    """AEGIS-256 with the 256-bit tag libsodium uses (and the AEGIS draft recommends)."""

    nonce_size = 32
    tag_size = 32
    cipher: Any = _AegisKeyed


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

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
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
