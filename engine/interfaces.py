"""Provider contracts: what an algorithm provider implements, one ABC per primitive kind.

These are the *raw* layer. The router only ever sees these contracts; input validation,
nonce generation, error wrapping and the friendly API live in the engine, above them.

A provider is a :class:`Provider` record listing, per operation name (see
:data:`OPERATIONS`), an object implementing the matching contract. Implementations may
assume the engine already checked every length declared here; they must raise
:class:`xpscerpto.errors.AuthError` when a tag or signature does not verify (AEADs may name
their own exception in ``auth_errors`` instead) and may raise anything else on internal
failure (the engine wraps it).

Example:
    >>> from xpscerpto.interfaces import Aead
    >>> from cryptography.exceptions import InvalidTag
    >>> from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    >>> class MyAesGcm(Aead):
    ...     key_sizes = (32,); nonce_size = 12; tag_size = 16
    ...     auth_errors = (InvalidTag,)
    ...     cipher = AESGCM
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Literal, Protocol

__all__ = [
    "API_VERSION",
    "OPERATIONS",
    "Aead",
    "AeadCipher",
    "Buffer",
    "ImplementationInfo",
    "Kdf",
    "Kem",
    "KeyAgreement",
    "LoadedAgreementKey",
    "LoadedSigningKey",
    "OperationSpec",
    "Provider",
    "Signature",
]

#: The provider-contract version; capsules declare the range they need (``>=1.0,<2``).
API_VERSION = (1, 0)

Buffer = bytes | bytearray | memoryview
Kind = Literal["aead", "sig", "kex", "kem", "kdf"]


class AeadCipher(Protocol):
    """A keyed AEAD object, shaped like pyca/cryptography's ``AESGCM(key)``."""

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Return ``ciphertext || tag``."""

    def decrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Open ``ciphertext || tag``; raise one of the provider's ``auth_errors`` if it fails."""


class Aead(abc.ABC):
    """Authenticated encryption with associated data; ciphertext and tag are concatenated.

    ``cipher(key)`` returns a keyed object; a provider backed by pyca/cryptography can simply
    set ``cipher = AESGCM`` so no Python frame of its own runs per call. ``auth_errors`` lists
    the exceptions its ``decrypt`` raises when a tag does not verify; the engine turns those
    into :class:`~xpscerpto.errors.AuthError` and anything else into a provider fault.

    Two optional parts make large messages and bad buffers cheaper to handle:
    ``checks_buffers`` and :meth:`decrypt_detached` (both exercised by the self-tests).
    """

    key_sizes: ClassVar[tuple[int, ...]]
    nonce_size: ClassVar[int]
    tag_size: ClassVar[int]
    auth_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: True if ``cipher(key)``, its methods and ``decrypt_detached`` raise, before computing
    #: anything, on any buffer that is not one C-contiguous run of single bytes (format ``B``
    #: or ``c``) or is a released view; pyca/cryptography does. When False (the default) the
    #: engine checks every buffer of every call before the provider sees it.
    checks_buffers: ClassVar[bool] = False
    #: Ciphertexts of at least this many bytes go to :meth:`decrypt_detached` (if defined)
    #: instead of being joined to their tag; a provider whose tag-separate path costs more per
    #: call than a small copy sets it where that path starts to win.
    detached_from: ClassVar[int] = 0
    #: The longest plaintext, ciphertext or associated data (bytes) the provider takes, or None
    #: for no limit of its own. A call that failed with a longer input is the caller's error
    #: (XPS_ERR_POLICY), never a provider fault: fault listeners (the capsule updater's
    #: automatic rollback) are not told about it.
    max_input: ClassVar[int | None] = None

    @abc.abstractmethod
    def cipher(self, key: Buffer) -> AeadCipher:
        """Return a keyed cipher object (key length already checked by the engine)."""

    def decrypt_detached(self, key: Buffer, nonce: bytes, ciphertext: Buffer, tag: Buffer,
                         associated_data: Buffer) -> bytes:
        """Optional: open ``ciphertext`` whose ``tag`` is held apart, without joining them.

        Must verify before returning anything (raise one of ``auth_errors`` otherwise) and
        return ``bytes``. Providers that do not override it have their large ciphertexts joined
        to the tag by the engine, in a buffer it reuses per thread.
        """
        raise NotImplementedError


class LoadedSigningKey(Protocol):
    """A provider's signing-key object, built once from the seed (see :meth:`Signature.load`)."""

    def sign(self, message: Buffer, context: bytes) -> bytes:
        """Sign ``message`` (``context`` as :meth:`Signature.sign`)."""


class LoadedAgreementKey(Protocol):
    """A provider's key-agreement private key object (see :meth:`KeyAgreement.load`)."""

    def exchange(self, peer_public_key: Buffer) -> bytearray:
        """As :meth:`KeyAgreement.exchange` with the loaded key."""


class _SeedSigner:
    """The default :meth:`Signature.load`: a private copy of the seed, passed on every call."""

    __slots__ = ("_impl", "_seed")

    def __init__(self, impl: Signature, seed: Buffer) -> None:
        self._impl, self._seed = impl, bytearray(seed)

    def sign(self, message: Buffer, context: bytes) -> bytes:
        return self._impl.sign(self._seed, message, context)

    def __del__(self) -> None:
        seed = getattr(self, "_seed", None)
        if seed is not None:
            seed[:] = bytes(len(seed))


class _SecretExchanger:
    """The default :meth:`KeyAgreement.load`: a private copy of the key, passed on every call."""

    __slots__ = ("_impl", "_secret")

    def __init__(self, impl: KeyAgreement, secret: Buffer) -> None:
        self._impl, self._secret = impl, bytearray(secret)

    def exchange(self, peer_public_key: Buffer) -> bytearray:
        return self._impl.exchange(self._secret, peer_public_key)

    def __del__(self) -> None:
        secret = getattr(self, "_secret", None)
        if secret is not None:
            secret[:] = bytes(len(secret))


class Signature(abc.ABC):
    """A signature scheme whose private key is a fixed-size seed.

    :meth:`load` is optional: a provider whose library keeps a key object (OpenSSL's
    ``Ed25519PrivateKey``, libsodium's expanded key) overrides it so that a keyed signer
    (``engine.ed25519.keyed(seed)``) skips rebuilding the key on every signature.
    """

    public_key_size: ClassVar[int]
    secret_key_size: ClassVar[int]
    signature_size: ClassVar[int]

    @abc.abstractmethod
    def generate(self) -> tuple[bytes, bytearray]:
        """Return ``(public_key, secret_seed)``; the seed is a fresh mutable buffer."""

    @abc.abstractmethod
    def public_key(self, secret_key: Buffer) -> bytes:
        """Derive the public key from the secret seed."""

    @abc.abstractmethod
    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        """Sign ``message``; ``context`` is empty for schemes without one (Ed25519)."""

    @abc.abstractmethod
    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        """Return if valid; raise AuthError if the signature does not verify."""

    def load(self, secret_key: Buffer) -> LoadedSigningKey:
        """A signing-key object for ``secret_key`` (length already checked by the engine)."""
        return _SeedSigner(self, secret_key)


class KeyAgreement(abc.ABC):
    """Diffie-Hellman style key agreement (X25519)."""

    public_key_size: ClassVar[int]
    secret_key_size: ClassVar[int]
    shared_size: ClassVar[int]

    @abc.abstractmethod
    def generate(self) -> tuple[bytes, bytearray]:
        """Return ``(public_key, secret_key)``."""

    @abc.abstractmethod
    def public_key(self, secret_key: Buffer) -> bytes:
        """Derive the public key."""

    @abc.abstractmethod
    def exchange(self, secret_key: Buffer, peer_public_key: Buffer) -> bytearray:
        """Return the raw shared secret (the engine rejects the all-zero value)."""

    def load(self, secret_key: Buffer) -> LoadedAgreementKey:
        """A private-key object for ``secret_key`` (optional fast path; see :class:`Signature`)."""
        return _SecretExchanger(self, secret_key)


class Kem(abc.ABC):
    """A key-encapsulation mechanism whose decapsulation key is a seed (ML-KEM ``d || z``)."""

    public_key_size: ClassVar[int]
    secret_key_size: ClassVar[int]
    ciphertext_size: ClassVar[int]
    shared_size: ClassVar[int]

    @abc.abstractmethod
    def generate(self) -> tuple[bytes, bytearray]:
        """Return ``(encapsulation_key, seed)``."""

    @abc.abstractmethod
    def public_key(self, secret_key: Buffer) -> bytes:
        """Derive the encapsulation key from the seed."""

    @abc.abstractmethod
    def encapsulate(self, public_key: Buffer) -> tuple[bytes, bytearray]:
        """Return ``(ciphertext, shared_secret)``."""

    @abc.abstractmethod
    def decapsulate(self, secret_key: Buffer, ciphertext: Buffer) -> bytearray:
        """Return the shared secret (implicit rejection gives a pseudo-random one)."""


class Kdf(abc.ABC):
    """An extract-then-expand key derivation function (HKDF)."""

    hash_size: ClassVar[int]
    max_output: ClassVar[int]

    @abc.abstractmethod
    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        """Return the pseudo-random key."""

    @abc.abstractmethod
    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        """Return ``length`` bytes of output keying material."""


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """What the engine knows about an operation name, independent of any provider."""

    name: str
    kind: Kind
    contract: type[abc.ABC]
    #: Lower-case tokens matched by a policy's ``forbid`` list (e.g. ``"aes128"``, ``"gcm"``).
    tokens: tuple[str, ...]
    #: Public names accepted by the API for this operation: the AEAD enum value, its member
    #: name, the seed's spellings (``AES_GCM`` is AES-256-GCM) and the short lower-case form.
    aliases: tuple[str, ...] = ()


def _op(name: str, kind: Kind, contract: type[abc.ABC], tokens: tuple[str, ...],
        aliases: tuple[str, ...] = ()) -> tuple[str, OperationSpec]:
    return name, OperationSpec(name, kind, contract, tokens, aliases)


#: Every operation the engine can route, by name. Providers may only declare these.
OPERATIONS: Mapping[str, OperationSpec] = MappingProxyType(dict([
    _op("aead.aes128gcm", "aead", Aead, ("aes", "aes128", "gcm"), ("AES-128-GCM", "aes128gcm", "AES_128_GCM")),
    _op("aead.aes256gcm", "aead", Aead, ("aes", "aes256", "gcm"),
        ("AES-256-GCM", "aes256gcm", "AES_256_GCM", "AES_GCM")),
    _op("aead.chacha20poly1305", "aead", Aead, ("chacha20", "poly1305"),
        ("CHACHA20-POLY1305", "chacha20poly1305", "CHACHA20_POLY1305")),
    _op("aead.xchacha20poly1305", "aead", Aead, ("xchacha20", "chacha20", "poly1305"),
        ("XCHACHA20-POLY1305", "xchacha20poly1305", "XCHACHA20_POLY1305")),
    _op("aead.aes256gcmsiv", "aead", Aead, ("aes", "aes256", "gcmsiv"),
        ("AES-256-GCM-SIV", "aes256gcmsiv", "AES_256_GCM_SIV")),
    _op("aead.aegis256", "aead", Aead, ("aegis", "aegis256"), ("AEGIS-256", "aegis256", "AEGIS_256")),
    _op("sig.ed25519", "sig", Signature, ("ed25519", "eddsa", "sha512")),
    _op("sig.mldsa65", "sig", Signature, ("mldsa", "mldsa65", "pq")),
    _op("kex.x25519", "kex", KeyAgreement, ("x25519", "ecdh")),
    _op("kem.mlkem768", "kem", Kem, ("mlkem", "mlkem768", "pq")),
    _op("kdf.hkdf_sha256", "kdf", Kdf, ("hkdf", "sha256")),
    # HMAC-BLAKE2b-512 (block 128 bytes): the HKDF of Noise's BLAKE2b suites (the channel).
    _op("kdf.hkdf_blake2b", "kdf", Kdf, ("hkdf", "blake2b")),
]))


@dataclass(frozen=True, slots=True)
class ImplementationInfo:
    """What routing needs to know about one implementation beyond its contract.

    Args:
        backends: incident-mask tokens that remove it besides the provider's own name, e.g.
            ``("openssl",)`` for an implementation that runs OpenSSL code underneath.
        cpu_features: ``/proc/cpuinfo`` flags the implementation needs (it is skipped on a
            machine without them, and an incident mask naming one removes it).
        constant_time: overrides the provider's ``constant_time`` for this implementation.
        weight: overrides the provider's ``priority`` for this implementation (the static
            preference before anything is measured).
    """

    backends: tuple[str, ...] = ()
    cpu_features: frozenset[str] = frozenset()
    constant_time: bool | None = None
    weight: int | None = None


@dataclass(frozen=True)
class Provider:
    """A provider's declaration: identity, capabilities and the KATs that gate it.

    Args:
        name: unique provider name, e.g. ``"openssl"``.
        backend: the library underneath, with its version, e.g. ``"OpenSSL 3.5.0"``.
        version: the provider's own version.
        implementations: operation name -> object implementing that operation's contract.
        constant_time: whether the backend claims constant-time implementations.
        priority: higher wins when several providers offer an operation.
        kat: operation name -> extra KAT vector files (paths) the provider ships; the engine's
            own self-test vectors for the operation always run as well.
        info: operation name -> :class:`ImplementationInfo` (backends, CPU features,
            constant-time flag and weight) where it differs from the provider's defaults.
    """

    name: str
    backend: str
    version: str
    implementations: Mapping[str, object]
    constant_time: bool = True
    priority: int = 0
    kat: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    info: Mapping[str, ImplementationInfo] = field(default_factory=dict)

    @property
    def operations(self) -> tuple[str, ...]:
        """The operation names this provider implements, sorted."""
        return tuple(sorted(self.implementations))
