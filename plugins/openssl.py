"""The ``openssl`` provider: OpenSSL through pyca/cryptography.

Adapters are thin: each builds the cryptography object from the raw key per call (the engine
API is stateless over keys) and maps cryptography's exceptions to the contract's.

cryptography reads every buffer through the buffer protocol and refuses a strided, released
or wide-format one before computing (``checks_buffers``). The AEADs also offer a tag-separate
decrypt for large messages, so a 1 MiB ciphertext is never copied just to append its tag:
AES-GCM through OpenSSL's GCM mode (which takes the tag apart), ChaCha20-Poly1305 through
OpenSSL's ChaCha20 and Poly1305 composed as RFC 8439 section 2.8 does (the tag is checked,
in constant time, before a byte is decrypted).
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.poly1305 import Poly1305
from xpscerpto.errors import AuthError, KeyError_
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, Kdf, Kem, KeyAgreement, Provider, Signature

__all__ = ["PROVIDER_NAME", "make_provider", "xps_register_providers"]

PROVIDER_NAME = "openssl"


class _CryptographyAead(Aead):
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    checks_buffers = True
    max_input = 2**31 - 1  # pyca/cryptography's AEADs raise OverflowError beyond


class AesGcm128(_CryptographyAead):
    key_sizes = (16,)
    cipher: Any = AESGCM  # the class itself: AESGCM(key).encrypt(...) runs no Python frame of ours
    # Below this the GCM mode's object set-up costs more than joining the tag (measured with
    # tools/bench.py); above it, and at glibc's mmap threshold, the copy and its page faults win.
    detached_from = 128 * 1024

    def decrypt_detached(self, key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer,
                         associated_data: Buffer) -> bytes:
        # OpenSSL checks the tag in finalize(); the plaintext is returned only after that.
        ctx = Cipher(algorithms.AES(key), modes.GCM(nonce, tag if type(tag) is bytes else bytes(tag))).decryptor()
        if associated_data:
            ctx.authenticate_additional_data(associated_data)
        plaintext = ctx.update(ciphertext)
        try:
            ctx.finalize()
        except BaseException:
            del plaintext  # unverified: not kept alive by this frame in the exception's traceback
            raise
        return plaintext


class AesGcm256(AesGcm128):
    key_sizes = (32,)


class AesGcmSiv256(_CryptographyAead):
    key_sizes = (32,)
    cipher = AESGCMSIV


class ChaCha20Poly1305Impl(_CryptographyAead):
    key_sizes = (32,)
    cipher: Any = ChaCha20Poly1305
    # The composition costs a few object set-ups (about a 64 KiB copy, measured with
    # tools/bench.py); from glibc's mmap threshold on, the copy and its page faults cost more.
    detached_from = 128 * 1024

    def decrypt_detached(self, key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer,
                         associated_data: Buffer) -> bytes:
        # RFC 8439 2.8: block 0 of the key stream is the Poly1305 one-time key, the message is
        # encrypted from block 1 on. The tag is verified first: on a mismatch nothing is
        # decrypted. ChaCha20's 16-byte nonce here is the 32-bit block counter || the 96-bit nonce.
        with memoryview(ciphertext) as view:
            n = view.nbytes
        if n > _CHACHA_MAX or len(nonce) != 12:
            raise ValueError("ciphertext or nonce size out of range")
        stream = Cipher(algorithms.ChaCha20(key, _COUNTER0 + nonce), None).decryptor()
        block0 = bytearray(64)  # the one-time key, in a buffer we zero (not an immutable bytes)
        try:
            stream.update_into(_BLOCK, block0)
            mac = Poly1305(memoryview(block0)[:32])
        finally:
            block0[:] = _BLOCK
        aad = associated_data or b""
        with memoryview(aad) as view:
            a = view.nbytes
        mac.update(aad)
        mac.update(_PAD[: -a % 16])
        mac.update(ciphertext)
        mac.update(_PAD[: -n % 16])
        mac.update(_LENGTHS(a, n))
        try:
            mac.verify(tag if type(tag) is bytes else bytes(tag))
        except InvalidSignature:
            raise InvalidTag from None  # the AEAD's own authentication failure
        return stream.update(ciphertext)


_COUNTER0 = bytes(4)
# RFC 5869 2.2: an absent salt is HashLen zeros. A given salt is passed as the caller's buffer:
# in Noise it is the chaining key, a secret that a bytes() copy would leave unwipeable.
_ZERO_SALT32 = bytes(32)
_ZERO_SALT64 = bytes(64)
_BLOCK = bytes(64)
_PAD = bytes(16)
_LENGTHS = struct.Struct("<QQ").pack
# RFC 8439's 32-bit block counter bounds a message at 2^32 - 1 blocks after the key block;
# OpenSSL's ChaCha20 would carry into the nonce instead of refusing.
_CHACHA_MAX = (2**32 - 1) * 64


class Ed25519Impl(Signature):
    public_key_size = 32
    secret_key_size = 32
    signature_size = 64

    def generate(self) -> tuple[bytes, bytearray]:
        sk = ed25519.Ed25519PrivateKey.generate()
        return sk.public_key().public_bytes_raw(), bytearray(sk.private_bytes_raw())

    def public_key(self, secret_key: Buffer) -> bytes:
        return ed25519.Ed25519PrivateKey.from_private_bytes(secret_key).public_key().public_bytes_raw()

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        return ed25519.Ed25519PrivateKey.from_private_bytes(secret_key).sign(message)

    def load(self, secret_key: Buffer) -> _Ed25519Key:
        return _Ed25519Key(ed25519.Ed25519PrivateKey.from_private_bytes(secret_key))

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(signature, message)
        except (InvalidSignature, ValueError):
            # ValueError: the public key is not a valid point encoding; same answer, no detail.
            raise AuthError("signature: verification failed") from None


class MlDsa65Impl(Signature):
    public_key_size = 1952
    secret_key_size = 32
    signature_size = 3309

    def generate(self) -> tuple[bytes, bytearray]:
        sk = mldsa.MLDSA65PrivateKey.generate()
        return sk.public_key().public_bytes_raw(), bytearray(sk.private_bytes_raw())

    def public_key(self, secret_key: Buffer) -> bytes:
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(secret_key).public_key().public_bytes_raw()

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(secret_key).sign(message, context or None)

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        try:
            pk = mldsa.MLDSA65PublicKey.from_public_bytes(bytes(public_key))
            pk.verify(signature, message, context or None)
        except (InvalidSignature, ValueError):
            raise AuthError("signature: verification failed") from None


class X25519Impl(KeyAgreement):
    public_key_size = 32
    secret_key_size = 32
    shared_size = 32

    def generate(self) -> tuple[bytes, bytearray]:
        sk = x25519.X25519PrivateKey.generate()
        return sk.public_key().public_bytes_raw(), bytearray(sk.private_bytes_raw())

    def public_key(self, secret_key: Buffer) -> bytes:
        return x25519.X25519PrivateKey.from_private_bytes(secret_key).public_key().public_bytes_raw()

    def exchange(self, secret_key: Buffer, peer_public_key: Buffer) -> bytearray:
        return _X25519Key(x25519.X25519PrivateKey.from_private_bytes(secret_key)).exchange(peer_public_key)

    def load(self, secret_key: Buffer) -> _X25519Key:
        return _X25519Key(x25519.X25519PrivateKey.from_private_bytes(secret_key))


class _Ed25519Key:
    """OpenSSL's key object, kept: signing no longer re-derives the key from the seed."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, message: Buffer, context: bytes) -> bytes:
        return self._key.sign(message)


class _X25519Key:
    """OpenSSL's key object, kept: an exchange no longer re-derives the public key."""

    __slots__ = ("_key",)

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key

    def exchange(self, peer_public_key: Buffer) -> bytearray:
        try:
            return bytearray(self._key.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(peer_public_key))))
        except ValueError:
            # OpenSSL refuses an all-zero result itself; report it as the engine would.
            return bytearray(32)


class MlKem768Impl(Kem):
    public_key_size = 1184
    secret_key_size = 64
    ciphertext_size = 1088
    shared_size = 32

    def generate(self) -> tuple[bytes, bytearray]:
        sk = mlkem.MLKEM768PrivateKey.generate()
        return sk.public_key().public_bytes_raw(), bytearray(sk.private_bytes_raw())

    def public_key(self, secret_key: Buffer) -> bytes:
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(secret_key).public_key().public_bytes_raw()

    def encapsulate(self, public_key: Buffer) -> tuple[bytes, bytearray]:
        try:
            pk = mlkem.MLKEM768PublicKey.from_public_bytes(bytes(public_key))
        except ValueError:
            # FIPS 203 7.2 modulus check (cryptography's message only mentions the length).
            raise KeyError_("public_key: not a valid ML-KEM-768 encapsulation key "
                            "(coefficients not reduced mod q)") from None
        shared, ct = pk.encapsulate()
        return ct, bytearray(shared)

    def decapsulate(self, secret_key: Buffer, ciphertext: Buffer) -> bytearray:
        return bytearray(mlkem.MLKEM768PrivateKey.from_seed_bytes(secret_key).decapsulate(ciphertext))


class HkdfSha256Impl(Kdf):
    """RFC 5869 with HMAC-SHA256; extract and expand are exposed separately."""

    hash_size = 32
    max_output = 255 * 32

    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        h = hmac.HMAC(salt if len(salt) else _ZERO_SALT32, hashes.SHA256())  # no bytes() copy of a secret salt
        h.update(ikm)
        return bytearray(h.finalize())

    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        return bytearray(HKDFExpand(hashes.SHA256(), length, bytes(info)).derive(prk))


class HkdfBlake2bImpl(Kdf):
    """RFC 5869 over HMAC-BLAKE2b with a 64-byte digest (Noise's ``HKDF`` for its BLAKE2b suites)."""

    hash_size = 64
    max_output = 255 * 64

    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        h = hmac.HMAC(salt if len(salt) else _ZERO_SALT64, hashes.BLAKE2b(64))
        h.update(ikm)
        return bytearray(h.finalize())

    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        return bytearray(HKDFExpand(hashes.BLAKE2b(64), length, bytes(info)).derive(prk))


def _backend_version() -> str:
    # The Rust binding cryptography's backend object reads it from (importing that object costs
    # ~4 ms on an engine's first call).
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    return str(rust_openssl.openssl_version_text())


def make_provider() -> Provider:
    """The provider record, built from what this cryptography/OpenSSL offers."""
    import cryptography

    impls: dict[str, object] = {
        "aead.aes128gcm": AesGcm128(),
        "aead.aes256gcm": AesGcm256(),
        "aead.chacha20poly1305": ChaCha20Poly1305Impl(),
        "sig.ed25519": Ed25519Impl(),
        "sig.mldsa65": MlDsa65Impl(),
        "kex.x25519": X25519Impl(),
        "kem.mlkem768": MlKem768Impl(),
        "kdf.hkdf_sha256": HkdfSha256Impl(),
        "kdf.hkdf_blake2b": HkdfBlake2bImpl(),
    }
    # AES-GCM-SIV needs OpenSSL >= 3.2; older builds just do not offer it.
    try:
        AESGCMSIV(b"\x00" * 32)
        impls["aead.aes256gcmsiv"] = AesGcmSiv256()
    except Exception:  # noqa: S110 - absence of an optional algorithm is not an error
        pass
    return Provider(
        name=PROVIDER_NAME,
        backend=f"{_backend_version()} via cryptography {cryptography.__version__}",
        version=cryptography.__version__,
        implementations=impls,
        constant_time=True,
        priority=100,
    )


@hookimpl
def xps_register_providers(registry: Any) -> None:
    registry.add(make_provider())
