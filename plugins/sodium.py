"""The ``sodium`` provider: libsodium through PyNaCl's bindings.

PyNaCl's bindings accept only immutable ``bytes``, so a key held in a wipeable buffer is
copied into a short-lived ``bytes`` for the call; that copy cannot be wiped (documented limit).
"""

from __future__ import annotations

from typing import Any

import nacl.bindings as b
import nacl.exceptions

from xpscerpto.errors import AuthError
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, KeyAgreement, Provider, Signature

__all__ = ["PROVIDER_NAME", "make_provider", "xps_register_providers"]

PROVIDER_NAME = "sodium"


def _bytes(x: Buffer) -> bytes:
    return x if type(x) is bytes else bytes(x)


def _aead_class(name: str, enc: Any, dec: Any, nonce: int, tag: int = 16) -> type[Aead]:
    class _Impl(Aead):
        key_sizes = (32,)
        nonce_size = nonce
        tag_size = tag

        def encrypt(self, key: Buffer, nonce: bytes, plaintext: Buffer, aad: Buffer) -> bytes:
            return enc(_bytes(plaintext), _bytes(aad), _bytes(nonce), _bytes(key))  # type: ignore[no-any-return]

        def decrypt(self, key: Buffer, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
            try:
                return dec(_bytes(data), _bytes(aad), _bytes(nonce), _bytes(key))  # type: ignore[no-any-return]
            except nacl.exceptions.CryptoError:
                raise AuthError("ciphertext: authentication failed") from None

    _Impl.__name__ = _Impl.__qualname__ = name
    return _Impl


ChaCha20Poly1305Impl = _aead_class(
    "ChaCha20Poly1305Impl", b.crypto_aead_chacha20poly1305_ietf_encrypt,
    b.crypto_aead_chacha20poly1305_ietf_decrypt, 12)
XChaCha20Poly1305Impl = _aead_class(
    "XChaCha20Poly1305Impl", b.crypto_aead_xchacha20poly1305_ietf_encrypt,
    b.crypto_aead_xchacha20poly1305_ietf_decrypt, 24)
# libsodium's AEGIS-256 uses the 256-bit tag the AEGIS draft recommends; so does the engine's
# aead.aegis256 operation.
Aegis256Impl = _aead_class(
    "Aegis256Impl", b.crypto_aead_aegis256_encrypt, b.crypto_aead_aegis256_decrypt, 32, 32)


class Ed25519Impl(Signature):
    public_key_size = 32
    secret_key_size = 32
    signature_size = 64

    def generate(self) -> tuple[bytes, bytearray]:
        pk, sk64 = b.crypto_sign_keypair()
        return pk, bytearray(sk64[:32])

    def public_key(self, secret_key: Buffer) -> bytes:
        pk, _ = b.crypto_sign_seed_keypair(_bytes(secret_key))
        return pk  # type: ignore[no-any-return]

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        _, sk64 = b.crypto_sign_seed_keypair(_bytes(secret_key))
        return b.crypto_sign(_bytes(message), sk64)[:64]  # type: ignore[no-any-return]

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
        return b.crypto_scalarmult_base(_bytes(secret_key))  # type: ignore[no-any-return]

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
