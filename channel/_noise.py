"""The Noise handshake core: CipherState, SymmetricState, HandshakeState (spec sections 5.1-5.3).

Pure: bytes in, bytes out, no I/O. The objects and methods are named after the spec's, so the
code can be read beside it. Every primitive goes through the engine's routing table: AEAD via
``engine.aead.keyed`` (one helper, :func:`keyed_aead`), DH via ``engine.x25519``, HKDF via the
engine's ``kdf.hkdf_sha256`` / ``kdf.hkdf_blake2b``, ML-KEM-768 via ``engine.mlkem768``. Only
the transcript hash (``HASH()`` of the spec) uses :mod:`hashlib` directly.

Example:
    >>> import xpscerpto as xps
    >>> proto = parse_protocol("Noise_NN_25519_ChaChaPoly_SHA256")
    >>> eng = xps.default_engine()
    >>> i = HandshakeState(proto, initiator=True, engine=eng)
    >>> r = HandshakeState(proto, initiator=False, engine=eng)
    >>> _ = r.read_message(i.write_message(b""))
    >>> i.read_message(r.write_message(b"hello"))
    b'hello'
    >>> (i_send, i_recv), (r_send, r_recv) = i.split(), r.split()
    >>> r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping"))
    b'ping'
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from xpscerpto._buffers import byte_buffer
from xpscerpto._namespaces import HkdfAPI
from xpscerpto.errors import AuthError, KeyError_, KeyTypeError, NonceError, PolicyError, XpsError
from xpscerpto.keyed import KeyedExchange
from xpscerpto.secret import SecretBytes

from ._patterns import NoiseProtocol, parse_protocol

if TYPE_CHECKING:
    from xpscerpto.engine import Engine, KeyedAead
    from xpscerpto.interfaces import Buffer

__all__ = [
    "MAX_MESSAGE",
    "CipherState",
    "HandshakeState",
    "SymmetricState",
    "keyed_aead",
    "parse_protocol",
]

#: Section 3: every Noise message is at most 65535 bytes.
MAX_MESSAGE = 65535
DHLEN = 32
TAGLEN = 16
#: Section 5.1: the nonce 2^64-1 is reserved (Rekey uses it); a CipherState stops before it.
MAX_NONCE = (1 << 64) - 1
_ZEROS32 = bytes(32)

_AEAD_ALGO = {"ChaChaPoly": "CHACHA20-POLY1305", "AESGCM": "AES-256-GCM"}
_KDF_OP = {"SHA256": "kdf.hkdf_sha256", "BLAKE2b": "kdf.hkdf_blake2b"}
_HASHLEN = {"SHA256": 32, "BLAKE2b": 64}
# Section 12: ChaChaPoly's nonce is 32 zero bits then the counter little-endian, AESGCM's
# the counter big-endian; both 96 bits.
_NONCE_PACK = {"ChaChaPoly": struct.Struct("<4xQ").pack, "AESGCM": struct.Struct(">4xQ").pack}


def _hash_fn(name: str) -> Callable[[bytes], bytes]:
    if name == "SHA256":
        return lambda data: hashlib.sha256(data).digest()
    return lambda data: hashlib.blake2b(data, digest_size=64).digest()


def keyed_aead(engine: Engine, algo: str, key: Buffer | SecretBytes) -> KeyedAead:
    """The one place the channel creates a keyed AEAD.

    Its nonces are Noise's 64-bit counters, explicit and never repeated by construction
    (CipherState refuses to wrap and Rekey() replaces the key): the engine's check of
    application-chosen nonces is waived here, and only here (``nonce_reuse="caller"``), so a
    channel is neither limited to the check's 65536 recorded nonces nor pays for recording.
    """
    return engine.aead.keyed(algo, key, nonce_reuse="caller")


class _HandshakeKey:
    """A handshake key ``k``: MixKey replaces it after one or two messages.

    It goes through the stateless AEAD API (one routing-table load per message) instead of a
    keyed AEAD, whose provider cipher object would be built to serve one or two messages
    (measured: building it cost more than the messages). Same routing, same nonces (Noise's
    counters, never repeated for one key: ``nonce_reuse="caller"``), same checks.
    """

    __slots__ = ("_algo", "_api", "_key")

    def __init__(self, engine: Engine, algo: str, key: Buffer | SecretBytes) -> None:
        self._api, self._algo = engine.aead, algo
        if isinstance(key, SecretBytes):
            with key.view() as view:
                self._key = SecretBytes(view)
        else:
            self._key = SecretBytes(_as_buffer(key, "key", KeyError_))

    def encrypt_wire(self, nonce: bytes, plaintext: Buffer, aad: Buffer) -> bytes:
        return self._api.encrypt(self._algo, self._key, plaintext, aad, nonce, nonce_reuse="caller").ciphertext_and_tag

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        view = memoryview(data)
        return self._api.decrypt(self._algo, self._key, nonce, view[:-TAGLEN], view[-TAGLEN:], aad)

    def wipe(self) -> None:
        self._key.wipe()


class CipherState:
    """Section 5.1: a key ``k`` (or none) and a 64-bit counter nonce ``n``.

    A transport key lives in an engine :class:`~xpscerpto.engine.KeyedAead` (which rebinds to
    a newly published routing table by itself); :meth:`rekey` builds a new one from the new
    key, so a provider swapped in by a capsule serves every key made after the swap. The
    handshake's own CipherState (``handshake=True``) uses each key for one or two messages
    only, through the stateless API (see :class:`_HandshakeKey`).
    """

    __slots__ = ("_aead", "_algo", "_engine", "_handshake", "_lock", "_pack", "_wiped", "n")

    def __init__(self, engine: Engine, cipher: str, *, handshake: bool = False) -> None:
        self._engine = engine
        self._algo = _AEAD_ALGO[cipher]
        self._pack = _NONCE_PACK[cipher]
        self._handshake = handshake
        self._aead: KeyedAead | _HandshakeKey | None = None
        self._wiped = False
        # Serialises rekey() and wipe(): a channel is wiped from another thread (close(), or the
        # receiving thread failing) while its sender may be inside rekey(), which would otherwise
        # install the new key after wipe() dropped the old one, leaving a live key behind.
        self._lock = threading.Lock()
        self.n = 0

    def _bind(self, key: Buffer | SecretBytes) -> KeyedAead | _HandshakeKey:
        if self._handshake:
            return _HandshakeKey(self._engine, self._algo, key)
        return keyed_aead(self._engine, self._algo, key)

    def initialize_key(self, key: Buffer | SecretBytes | None) -> None:
        """InitializeKey(key): set ``k`` (``None`` for empty) and reset ``n`` to 0."""
        if self._aead is not None:
            self._aead.wipe()
        self._aead = None if key is None else self._bind(key)
        if key is not None:
            self._wiped = False
        self.n = 0

    def has_key(self) -> bool:
        """HasKey()."""
        return self._aead is not None

    def set_nonce(self, nonce: int) -> None:
        """SetNonce(nonce): for out-of-order transports and tests; never lowers below use.

        Raises:
            NonceError: not an int in 0..2^64-1, or below the next nonce (a lower one would
                encrypt again under a nonce already used, and the channel's keys waive the
                engine's reuse check: the counter is the only guard).
        """
        if type(nonce) is not int or not 0 <= nonce <= MAX_NONCE:
            raise NonceError(f"nonce: expected 0..{MAX_NONCE}")
        if nonce < self.n:
            raise NonceError(f"nonce: {nonce} is below the next unused nonce ({self.n}); nonces never go back")
        self.n = nonce

    def encrypt_with_ad(self, ad: Buffer, plaintext: Buffer) -> bytes:
        """EncryptWithAd(ad, plaintext): the plaintext itself while there is no key."""
        aead = self._aead
        if aead is None:
            if self._wiped:  # no key after wipe() is not Noise's "no key yet": never pass through
                raise KeyError_("channel key: wiped (the channel is closed)")
            return bytes(plaintext)
        n = self.n
        if n >= MAX_NONCE:
            raise NonceError("nonce: this key's 2^64-1 messages are used up (rekey does not reset it)")
        out = aead.encrypt_wire(self._pack(n), plaintext, ad)
        self.n = n + 1
        return out

    def decrypt_with_ad(self, ad: Buffer, ciphertext: Buffer) -> bytes:
        """DecryptWithAd(ad, ciphertext): AuthError, and ``n`` unchanged, if it does not verify."""
        aead = self._aead
        if aead is None:
            if self._wiped:
                raise KeyError_("channel key: wiped (the channel is closed)")
            return bytes(ciphertext)
        n = self.n
        if n >= MAX_NONCE:
            raise NonceError("nonce: this key's 2^64-1 messages are used up (rekey does not reset it)")
        if len(ciphertext) < TAGLEN:
            raise AuthError("ciphertext: shorter than its tag")
        out = aead.decrypt(self._pack(n), ciphertext, ad)
        self.n = n + 1
        return out

    def rekey(self) -> None:
        """Rekey(): ``k = REKEY(k)``, the first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros); ``n`` is kept."""
        with self._lock:
            aead = self._aead
            if aead is None:
                if self._wiped:
                    raise KeyError_("channel key: wiped (the channel is closed)")
                raise KeyError_("rekey: this CipherState has no key")
            with SecretBytes(aead.encrypt_wire(self._pack(MAX_NONCE), _ZEROS32, b"")[:32]) as k:
                aead.wipe()
                self._aead = self._bind(k)

    @property
    def provider(self) -> str | None:
        """The provider the routing table in force assigns to this key's algorithm."""
        return None if self._aead is None else str(self._engine.aead.info(self._algo)["provider"])

    def wipe(self) -> None:
        """Drop the key (wiped); the state is unusable afterwards."""
        with self._lock:
            if self._aead is not None:
                self._aead.wipe()
            self._aead = None
            self._wiped = True

    def __repr__(self) -> str:
        return f"<CipherState {self._algo} n={self.n}{'' if self._aead else ' no key'}>"

    # A copy would share the key but count nonces on its own, so both would encrypt under the
    # same nonces; the channel's keys waive the engine's reuse check, so nothing else would stop
    # it. Refused whatever the state: a copy taken before the key is set would receive it too.
    # KeyTypeError is also a TypeError, the error copy and pickle users expect.
    def __copy__(self) -> NoReturn:
        raise KeyTypeError("CipherState cannot be copied: a copy would reuse its nonces")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise KeyTypeError("CipherState cannot be copied: a copy would reuse its nonces")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise KeyTypeError("CipherState holds a transport key and cannot be pickled")


class SymmetricState:
    """Section 5.2: the chaining key ``ck``, the handshake hash ``h`` and a CipherState."""

    __slots__ = ("_hash", "_kdf", "cipher", "ck", "h", "hashlen")

    def __init__(self, engine: Engine, protocol: NoiseProtocol) -> None:
        """InitializeSymmetric(protocol_name)."""
        self._hash = _hash_fn(protocol.hash)
        self._kdf = HkdfAPI(engine, _KDF_OP[protocol.hash])
        self.hashlen = _HASHLEN[protocol.hash]
        name = protocol.name.encode("ascii")
        self.h = name.ljust(self.hashlen, b"\x00") if len(name) <= self.hashlen else self._hash(name)
        self.ck = SecretBytes(self.h)
        self.cipher = CipherState(engine, protocol.cipher, handshake=True)

    def _hkdf(self, ikm: Buffer | SecretBytes, outputs: int) -> list[SecretBytes]:
        """HKDF(ck, ikm, n): HKDF-Extract with ``ck`` as salt, then Expand with empty info."""
        hl = self.hashlen
        # ck itself, not a view of it: a wiped ck is refused (a view of it would read as an
        # empty salt, which HKDF takes as all zeros).
        with self._kdf.derive(ikm, outputs * hl, salt=self.ck) as okm, okm.view() as view:
            # Each output its own buffer, adopted (the copy is the slice; no second one).
            return [SecretBytes.take(bytearray(view[i * hl:(i + 1) * hl])) for i in range(outputs)]

    def mix_key(self, ikm: Buffer | SecretBytes) -> None:
        """MixKey(ikm): new ``ck``; the cipher key is the second output, truncated to 32 bytes."""
        ck, temp_k = self._hkdf(ikm, 2)
        self.ck.wipe()
        self.ck = ck
        with temp_k:
            self.cipher.initialize_key(temp_k.view()[:32])

    def mix_hash(self, data: Buffer) -> None:
        """MixHash(data): ``h = HASH(h || data)``."""
        self.h = self._hash(self.h + bytes(data))

    def mix_key_and_hash(self, ikm: Buffer | SecretBytes) -> None:
        """MixKeyAndHash(ikm): for ``psk`` tokens."""
        ck, temp_h, temp_k = self._hkdf(ikm, 3)
        self.ck.wipe()
        self.ck = ck
        with temp_h:
            self.mix_hash(temp_h.view())
        with temp_k:
            self.cipher.initialize_key(temp_k.view()[:32])

    def encrypt_and_hash(self, plaintext: Buffer) -> bytes:
        """EncryptAndHash(plaintext): encrypt with ``h`` as associated data, then hash the ciphertext."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: Buffer) -> bytes:
        """DecryptAndHash(ciphertext)."""
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self, engine: Engine, cipher: str) -> tuple[CipherState, CipherState]:
        """Split(): the two transport CipherStates (initiator -> responder first)."""
        k1, k2 = self._hkdf(b"", 2)
        c1, c2 = CipherState(engine, cipher), CipherState(engine, cipher)
        with k1, k2:
            c1.initialize_key(k1.view()[:32])
            c2.initialize_key(k2.view()[:32])
        return c1, c2

    def wipe(self) -> None:
        """Wipe ``ck`` and the handshake key."""
        self.ck.wipe()
        self.cipher.wipe()


class HandshakeState:
    """Section 5.3: runs one handshake of ``protocol`` as initiator or responder.

    Args:
        protocol: a parsed protocol name (:func:`parse_protocol`) or the name itself.
        initiator: which side this is.
        engine: the engine whose routing table serves every primitive.
        prologue: bytes both sides must agree on (mixed into ``h`` first).
        s: this side's static X25519 private key (32 bytes, or a keyed exchange its owner
            keeps, such as an :class:`~xpscerpto.channel.Identity`'s), if the pattern has one.
        rs: the peer's static public key, for patterns with a responder/initiator pre-message.
        e: a fixed ephemeral private key (test vectors only; normally generated).
        psks: pre-shared keys (32 bytes each) in the order the pattern's ``psk`` tokens use them.

    After the last message, :meth:`split` gives ``(send, receive)`` CipherStates for this
    side. :attr:`payload_hash` is ``h`` just before the payload of the last message written
    or read: what a party signs to bind its identity to this handshake.
    """

    def __init__(self, protocol: NoiseProtocol | str, *, initiator: bool, engine: Engine,
                 prologue: Buffer = b"", s: Buffer | SecretBytes | KeyedExchange | None = None,
                 rs: Buffer | None = None,
                 e: Buffer | SecretBytes | None = None, psks: Sequence[Buffer] = ()) -> None:
        self.protocol = parse_protocol(protocol) if isinstance(protocol, str) else protocol
        self.initiator = bool(initiator)
        self._engine = engine
        self._dh = engine.x25519
        self._kem = engine.mlkem768
        self.ss = SymmetricState(engine, self.protocol)
        self._s = self._keypair(s, "s")
        self._e = self._keypair(e, "e")
        self.rs: bytes | None = self._public(rs, "rs")
        self.re: bytes | None = None
        self._e1: tuple[bytes, SecretBytes] | None = None
        self._re1: bytes | None = None
        self._psks = [self._psk(p, i) for i, p in enumerate(psks)]
        self._index = 0
        self._finished = False
        self.payload_hash = b""
        pat = self.protocol.pattern
        # Checked as a buffer: bytes(n) of an int would allocate n zero bytes as the prologue.
        self.ss.mix_hash(_as_buffer(prologue, "prologue", PolicyError))
        # Section 7.1: pre-messages are hashed initiator's first, then the responder's.
        for tokens, mine in ((pat.pre_initiator, self.initiator), (pat.pre_responder, not self.initiator)):
            for t in tokens:
                self.ss.mix_hash(self._pre_message_key(t, mine))

    # -- construction helpers ------------------------------------------------------------

    def _keypair(self, sk: Buffer | SecretBytes | KeyedExchange | None, name: str) -> _LocalKey | None:
        if sk is None:
            return None
        if isinstance(sk, KeyedExchange):  # held by its owner (an Identity): used, never wiped here
            return _LocalKey(sk.public_key, sk, owned=False)
        secret = SecretBytes(sk.view() if isinstance(sk, SecretBytes) else _as_buffer(sk, name, KeyError_))
        if len(secret) != DHLEN:
            secret.wipe()
            raise KeyError_(f"{name}: expected a {DHLEN}-byte X25519 private key, got {len(secret)}")
        try:
            keyed = self._dh.keyed(secret)
        finally:
            secret.wipe()  # the keyed object holds its own copy
        return _LocalKey(keyed.public_key, keyed, owned=True)

    @staticmethod
    def _public(pk: Buffer | None, name: str) -> bytes | None:
        if pk is None:
            return None
        out = bytes(_as_buffer(pk, name, KeyError_))
        if len(out) != DHLEN:
            raise KeyError_(f"{name}: expected a {DHLEN}-byte X25519 public key, got {len(out)}")
        return out

    @staticmethod
    def _psk(psk: Buffer, i: int) -> SecretBytes:
        out = SecretBytes(_as_buffer(psk, f"psks[{i}]", KeyError_))
        if len(out) != 32:
            raise KeyError_(f"psks[{i}]: expected 32 bytes, got {len(out)}")
        return out

    def _pre_message_key(self, token: str, mine: bool) -> bytes:
        if token == "s":  # noqa: S105 - a Noise token name, not a password
            if mine:
                if self._s is None:
                    raise KeyError_("s: the pattern's pre-message needs this side's static key")
                return self._s.public
            if self.rs is None:
                raise KeyError_("rs: the pattern's pre-message needs the peer's static public key")
            return self.rs
        raise PolicyError(f"protocol: pre-message token {token!r} not supported")

    # -- state ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._finished

    @property
    def message_index(self) -> int:
        """The index of the next handshake message (0-based)."""
        return self._index

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash(): ``h`` (final once :attr:`finished`)."""
        return self.ss.h

    @property
    def static_public(self) -> bytes | None:
        """This side's static public key, if it has one."""
        return None if self._s is None else self._s.public

    def is_my_turn(self) -> bool:
        """Whether the next handshake message is this side's to write."""
        return self.protocol.pattern.sender_is_initiator(self._index) == self.initiator

    def _next_tokens(self, writing: bool) -> tuple[str, ...]:
        if self._finished:
            raise PolicyError("handshake: already finished")
        if self.is_my_turn() != writing:
            whose = "the peer's" if writing else "this side's"
            raise PolicyError(f"handshake: message {self._index + 1} is {whose} to write")
        return self.protocol.pattern.messages[self._index]

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self.protocol.pattern.messages):
            self._finished = True

    def _dh_pair(self, token: str) -> tuple[_LocalKey | None, bytes | None]:
        """The (local key pair, remote public key) a DH token combines (section 5.3)."""
        local_first = {"ee": (self._e, self.re), "ss": (self._s, self.rs)}
        if token in local_first:
            return local_first[token]
        # es: initiator's e with responder's s; se: initiator's s with responder's e.
        mine_e = (token == "es") == self.initiator  # noqa: S105 - a Noise token name
        return (self._e, self.rs) if mine_e else (self._s, self.re)

    def _mix_dh(self, token: str) -> None:
        local, remote = self._dh_pair(token)
        if local is None or remote is None:
            raise KeyError_(f"handshake: token {token} needs a key this side does not have")
        with local.keyed.exchange(remote) as shared:
            self.ss.mix_key(shared)

    # -- WriteMessage / ReadMessage ------------------------------------------------------

    def write_message(self, payload: Buffer | Callable[[bytes], bytes]) -> bytes:
        """WriteMessage(payload): the next handshake message.

        ``payload`` may be a function of ``h`` taken just before the payload is encrypted
        (a signature over the handshake so far); it is called exactly once.
        """
        tokens = self._next_tokens(writing=True)
        ss = self.ss
        out = bytearray()
        for t in tokens:
            if t == "e":
                if self._e is None:
                    keyed = self._dh.generate_keyed()
                    self._e = _LocalKey(keyed.public_key, keyed, owned=True)
                out += self._e.public
                ss.mix_hash(self._e.public)
                if self.protocol.psk:
                    ss.mix_key(self._e.public)
            elif t == "s":
                if self._s is None:
                    raise KeyError_("s: the pattern sends this side's static key; none was given")
                out += ss.encrypt_and_hash(self._s.public)
            elif t == "psk":
                ss.mix_key_and_hash(self._next_psk())
            elif t == "e1":
                self._e1 = self._kem.generate_keypair()
                out += ss.encrypt_and_hash(self._e1[0])
            elif t == "ekem1":
                if self._re1 is None:
                    raise KeyError_("handshake: ekem1 needs the peer's e1")
                ct, shared = self._kem.encapsulate(self._re1)
                out += ss.encrypt_and_hash(ct)
                with shared:
                    ss.mix_key(shared)
            else:
                self._mix_dh(t)
        self.payload_hash = ss.h
        body = payload(ss.h) if callable(payload) else payload
        out += ss.encrypt_and_hash(_as_buffer(body, "payload", PolicyError))
        if len(out) > MAX_MESSAGE:
            raise PolicyError(f"payload: the handshake message would be {len(out)} bytes (max {MAX_MESSAGE})")
        self._advance()
        return bytes(out)

    def read_message(self, message: Buffer) -> bytes:
        """ReadMessage(message): the payload; AuthError if the message was altered or truncated."""
        tokens = self._next_tokens(writing=False)
        msg = memoryview(_as_buffer(message, "message", PolicyError)).cast("B")
        if len(msg) > MAX_MESSAGE:
            raise PolicyError(f"message: {len(msg)} bytes, more than Noise's {MAX_MESSAGE}")
        ss = self.ss
        pos = 0

        def take(n: int) -> memoryview:
            nonlocal pos
            if len(msg) - pos < n:
                raise AuthError(f"handshake message {self._index + 1}: truncated", reason="truncated")
            pos += n
            return msg[pos - n:pos]

        def keyed(n: int) -> int:
            return n + TAGLEN if ss.cipher.has_key() else n

        for t in tokens:
            if t == "e":
                self.re = bytes(take(DHLEN))
                ss.mix_hash(self.re)
                if self.protocol.psk:
                    ss.mix_key(self.re)
            elif t == "s":
                self.rs = ss.decrypt_and_hash(take(keyed(DHLEN)))
            elif t == "psk":
                ss.mix_key_and_hash(self._next_psk())
            elif t == "e1":
                self._re1 = ss.decrypt_and_hash(take(keyed(self._kem_sizes()[0])))
            elif t == "ekem1":
                if self._e1 is None:
                    raise KeyError_("handshake: ekem1 arrived but this side sent no e1")
                ct = ss.decrypt_and_hash(take(keyed(self._kem_sizes()[1])))
                with self._kem.decapsulate(self._e1[1], ct) as shared:
                    ss.mix_key(shared)
            else:
                self._mix_dh(t)
        self.payload_hash = ss.h
        rest = msg[pos:]
        if ss.cipher.has_key() and len(rest) < TAGLEN:
            raise AuthError(f"handshake message {self._index + 1}: truncated", reason="truncated")
        payload = ss.decrypt_and_hash(rest)
        self._advance()
        return payload

    def _kem_sizes(self) -> tuple[int, int]:
        route = self._engine.table.kem["kem.mlkem768"]
        return route.public_key_size, route.ciphertext_size

    def _next_psk(self) -> SecretBytes:
        if not self._psks:
            raise KeyError_("psks: the pattern uses more pre-shared keys than were given")
        return self._psks.pop(0)

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): ``(send, receive)`` for this side; the handshake secrets are wiped."""
        if not self._finished:
            raise PolicyError("handshake: split() before the last message")
        c1, c2 = self.ss.split(self._engine, self.protocol.cipher)
        self.wipe()
        return (c1, c2) if self.initiator else (c2, c1)

    def wipe(self) -> None:
        """Wipe every secret this state holds (ephemeral, static copy, PSKs, ``ck``)."""
        self.ss.wipe()
        for local in (self._e, self._s):
            if local is not None:
                local.wipe()
        if self._e1 is not None:
            self._e1[1].wipe()
        for p in self._psks:
            p.wipe()


class _LocalKey:
    """One of this side's DH keys: its public key and the engine's keyed exchange holding it."""

    __slots__ = ("keyed", "owned", "public")

    def __init__(self, public: bytes, keyed: KeyedExchange, *, owned: bool) -> None:
        self.public, self.keyed, self.owned = public, keyed, owned

    def wipe(self) -> None:
        if self.owned:
            self.keyed.wipe()


def _as_buffer(value: object, field: str, error: type[XpsError]) -> bytes | bytearray | memoryview:
    """``value`` as one contiguous run of bytes, else ``error`` naming ``field``: the engine's
    buffer rule (a strided, released or wide-format view is refused, not met by a TypeError
    further down)."""
    return byte_buffer(value, field, error)
