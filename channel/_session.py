"""The channel handshake, sans I/O: preambles, Noise messages, certificates and their signatures.

:class:`Handshake` takes record bodies in and gives framed records out; the asyncio and the
blocking drivers only move bytes and enforce time. The wire format is in docs/CHANNEL.md:

* the initiator's preamble ``"XPSC" | version | len | protocol name`` (mixed into the Noise
  prologue, so a rewritten offer breaks the handshake rather than downgrading it);
* the responder's preamble ``"XPSC" | version | status`` (0 = go on; otherwise a refusal code,
  unauthenticated, for diagnostics only);
* the Noise handshake messages; in each party's *auth slot* (the first message it sends that is
  encrypted and, if it has a static key, after that key is in the handshake hash) the payload is
  its certificate chain and an Ed25519 signature over the handshake hash and its static key.
  Every other handshake payload must be empty.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xpscerpto.errors import AuthError, KeyError_, PolicyError, XpsError

from ._noise import MAX_MESSAGE, CipherState, HandshakeState
from ._patterns import HandshakePattern, NoiseProtocol, UnsupportedProtocol, parse_protocol
from .identity import ChannelAuthError, Identity, PeerCertificate, Purpose, Trust, _ed25519_raw

if TYPE_CHECKING:
    from xpscerpto.engine import Engine

    from .config import ChannelConfig

__all__ = ["MAGIC", "Established", "Handshake", "HandshakeRefused", "auth_slot", "frame", "signed_content"]

MAGIC = b"XPSC"
VERSION = 1
PROLOGUE_LABEL = b"XPScerpto channel v1\x00"
SIGNATURE_LABEL = b"XPScerpto channel v1 handshake signature\x00"
AUTH_PAYLOAD_VERSION = 1
SIG_SIZE = 64
_U16 = struct.Struct(">H")

#: Responder preamble status codes (closed set; docs/CHANNEL.md).
STATUS_OK = 0
REFUSALS = {1: "protocol-refused", 2: "pq-required", 3: "busy", 4: "malformed"}
_REFUSAL_CODES = {v: k for k, v in REFUSALS.items()}


def frame(body: bytes | bytearray) -> bytes:
    """One record: a 2-byte big-endian length, then the body."""
    return _U16.pack(len(body)) + bytes(body)


def signed_content(protocol: str, initiator: bool, handshake_hash: bytes, static_public: bytes) -> bytes:
    """What a party signs: a label, its role, the protocol, ``h`` before its auth payload, its static key."""
    name = protocol.encode("ascii")
    role = b"initiator" if initiator else b"responder"
    return b"".join((SIGNATURE_LABEL, bytes([len(role)]), role, bytes([len(name)]), name,
                     bytes([len(handshake_hash)]), handshake_hash, bytes([len(static_public)]), static_public))


# Pure functions of an immutable pattern, asked on every handshake: cached (bounded).
@functools.lru_cache(maxsize=256)
def _has_static(pattern: HandshakePattern, initiator: bool) -> bool:
    pre = pattern.pre_initiator if initiator else pattern.pre_responder
    return "s" in pre or any("s" in m for i, m in enumerate(pattern.messages)
                             if pattern.sender_is_initiator(i) == initiator)


@functools.lru_cache(maxsize=256)
def auth_slot(pattern: HandshakePattern, initiator: bool) -> int | None:
    """The message in which a party sends its certificate and signature, or None if it has none.

    The first message it sends whose payload is encrypted and, if the party has a static key,
    comes after that key is mixed into the handshake hash (so the signature binds it).
    """
    has_key = False
    static_in = "s" in (pattern.pre_initiator if initiator else pattern.pre_responder)
    needs_static = _has_static(pattern, initiator)
    for i, tokens in enumerate(pattern.messages):
        mine = pattern.sender_is_initiator(i) == initiator
        for t in tokens:
            if t in ("ee", "es", "se", "ss", "psk", "ekem1"):
                has_key = True
            if t == "s" and mine:
                static_in = True
        if mine and has_key and (static_in or not needs_static):
            return i
    return None


def encode_auth(chain_der: Iterable[bytes], signature: bytes) -> bytes:
    """``version | count | (u16 length | DER)* | signature``."""
    certs = list(chain_der)
    out = bytearray((AUTH_PAYLOAD_VERSION, len(certs)))
    for der in certs:
        out += _U16.pack(len(der)) + der
    return bytes(out + signature)


def decode_auth(payload: bytes, max_chain: int) -> tuple[list[bytes], bytes]:
    """The chain and signature of an auth payload; ChannelAuthError if malformed."""
    view = memoryview(payload)
    if len(view) < 2 + SIG_SIZE or view[0] != AUTH_PAYLOAD_VERSION:
        raise ChannelAuthError("handshake: malformed authentication payload", reason="malformed")
    n = view[1]
    if n > max_chain:
        raise ChannelAuthError(f"peer certificate: chain of {n} certificates (1..{max_chain} allowed)",
                               reason="chain-too-long")
    pos, certs = 2, []
    for _ in range(n):
        if pos + 2 > len(view):
            raise ChannelAuthError("handshake: malformed authentication payload", reason="malformed")
        (length,) = _U16.unpack_from(view, pos)
        pos += 2
        if pos + length > len(view) - SIG_SIZE:
            raise ChannelAuthError("handshake: malformed authentication payload", reason="malformed")
        certs.append(bytes(view[pos:pos + length]))
        pos += length
    if pos != len(view) - SIG_SIZE:
        raise ChannelAuthError("handshake: malformed authentication payload", reason="malformed")
    return certs, bytes(view[pos:])


class HandshakeRefused(PolicyError):
    """The responder refused the initiator's offer; :attr:`reply` is the refusal to send it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.reply = frame(MAGIC + bytes((VERSION, _REFUSAL_CODES[reason])))


def refusal(reason: str) -> bytes:
    """The framed responder preamble refusing with ``reason`` (``busy`` before any handshake)."""
    return frame(MAGIC + bytes((VERSION, _REFUSAL_CODES[reason])))


@dataclass(frozen=True)
class Established:
    """A finished handshake: this side's transport CipherStates and the authenticated peer."""

    send: CipherState
    recv: CipherState
    peer: PeerCertificate
    protocol: str
    handshake_hash: bytes


class Handshake:
    """One side of the channel handshake, driven by record bodies.

    Args:
        initiator: which side.
        identity: this side's certificate chain and keys.
        trust: what the peer's chain must verify against.
        config: protocol choice, PQ policy and limits.
        expected_names: names the peer's certificate must carry (None: any name the CA issued).
        peer_static: the peer's static X25519 key, for patterns with a pre-message (IK, NK, KK).
        psk: a 32-byte pre-shared key for ``pskN`` protocols.
        engine: the engine serving every primitive.
        clock: the time certificates are checked at (tests).
    """

    def __init__(self, *, initiator: bool, identity: Identity, trust: Trust, config: ChannelConfig,
                 expected_names: Iterable[str] | None, engine: Engine, peer_static: bytes | None = None,
                 psk: bytes | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.initiator = initiator
        self._identity = identity
        self._trust = trust
        self._config = config
        self._names = None if expected_names is None else tuple(expected_names)
        self._engine = engine
        self._peer_static = peer_static
        self._psk = psk
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._hs: HandshakeState | None = None
        self._proto: NoiseProtocol | None = None
        self._my_slot: int | None = None
        self._peer_slot: int | None = None
        self._peer: PeerCertificate | None = None
        self._awaiting_preamble = True
        if initiator:
            self._proto = self._check_usable(parse_protocol(config.offered_protocol))

    # -- protocol choice -----------------------------------------------------------------

    def _check_usable(self, proto: NoiseProtocol) -> NoiseProtocol:
        pat = proto.pattern
        if pat.one_way:
            raise PolicyError(f"protocol: the one-way pattern {pat.name} cannot authenticate both sides")
        self._my_slot = auth_slot(pat, self.initiator)
        self._peer_slot = auth_slot(pat, not self.initiator)
        if self._my_slot is None or self._peer_slot is None:
            raise PolicyError(f"protocol: pattern {pat.name} leaves a side without an encrypted payload "
                              "to authenticate in")
        peer_pre = pat.pre_responder if self.initiator else pat.pre_initiator
        if "s" in peer_pre and self._peer_static is None:
            raise PolicyError(f"peer_static: pattern {pat.name} needs the peer's static key in advance")
        if proto.psk and self._psk is None:
            raise PolicyError(f"psk: protocol {proto.name} needs a pre-shared key")
        if self._config.require_pq and not proto.hfs:
            raise PolicyError("protocol: require_pq is set but the protocol has no post-quantum part",
                              reason="pq-required")
        return proto

    def _accepts(self, name: str) -> NoiseProtocol:
        try:
            proto = parse_protocol(name)
        except UnsupportedProtocol:
            raise HandshakeRefused("handshake: the peer offered a protocol not built here",
                                   "protocol-refused") from None
        if self._config.require_pq and not proto.hfs:
            raise HandshakeRefused("handshake: the peer offered no post-quantum protocol and PQ is required",
                                   "pq-required")
        if not any(fnmatch.fnmatchcase(name, g) for g in self._config.accept):
            raise HandshakeRefused("handshake: the peer's protocol is not accepted here", "protocol-refused")
        try:
            return self._check_usable(proto)
        except PolicyError:
            raise HandshakeRefused("handshake: the peer's protocol cannot be used here", "protocol-refused") from None

    def _state(self, preamble: bytes) -> HandshakeState:
        assert self._proto is not None
        psks = [self._psk] if self._proto.psk and self._psk is not None else []
        return HandshakeState(self._proto, initiator=self.initiator, engine=self._engine,
                              prologue=PROLOGUE_LABEL + preamble, s=self._identity.static_for(self._engine),
                              rs=self._peer_static, psks=psks * _psk_count(self._proto))

    # -- driving -------------------------------------------------------------------------

    @property
    def protocol(self) -> str | None:
        """The protocol name once known (the initiator's offer, or the one the responder accepted)."""
        return None if self._proto is None else self._proto.name

    @property
    def peer_authenticated(self) -> bool:
        """Whether the peer's certificate chain and its signature over the handshake verified.

        Until then the peer has proved nothing: the protocol a responder read from the
        initiator's preamble is only that peer's claim.
        """
        return self._peer is not None

    @property
    def finished(self) -> bool:
        """Whether the handshake completed (both sides authenticated as far as this side can see)."""
        return self._hs is not None and self._hs.finished and self._peer is not None

    def start(self) -> bytes:
        """The initiator's opening records: its preamble and the first handshake message."""
        if not self.initiator or self._hs is not None:
            raise PolicyError("handshake: start() is the initiator's, once")
        assert self._proto is not None
        name = self._proto.name.encode("ascii")
        preamble = MAGIC + bytes((VERSION, len(name))) + name
        self._hs = self._state(preamble)
        return frame(preamble) + self._write()

    def receive(self, body: bytes) -> bytes:
        """Process one record from the peer; returns the records to send back (maybe none).

        Raises:
            HandshakeRefused: (responder) the offer is refused; send ``.reply``, then close.
            PolicyError: (initiator) the responder refused; ``reason`` is its refusal code.
            ChannelAuthError / AuthError: the peer failed authentication or a message was altered.
        """
        if self._awaiting_preamble:
            self._awaiting_preamble = False
            return self._responder_preamble(body) if not self.initiator else self._initiator_preamble(body)
        hs = self._hs
        if hs is None or hs.finished:
            raise PolicyError("handshake: unexpected record", reason="malformed")
        index = hs.message_index
        payload = hs.read_message(body)
        if index == self._peer_slot:
            self._authenticate(payload, hs)
        elif payload:
            raise PolicyError("handshake: unexpected payload in a handshake message", reason="malformed")
        if hs.finished or not hs.is_my_turn():
            return b""
        return self._write()

    def _initiator_preamble(self, body: bytes) -> bytes:
        if len(body) != 6 or body[:4] != MAGIC or body[4] != VERSION:
            raise PolicyError("handshake: the responder's preamble is malformed", reason="malformed")
        if body[5] != STATUS_OK:
            reason = REFUSALS.get(body[5], "malformed")
            raise PolicyError(f"handshake: the responder refused ({reason})", reason=reason)
        return b""

    def _responder_preamble(self, body: bytes) -> bytes:
        if len(body) < 7 or body[:4] != MAGIC or body[4] != VERSION or body[5] != len(body) - 6:
            raise HandshakeRefused("handshake: the initiator's preamble is malformed", "malformed")
        try:
            name = bytes(body[6:]).decode("ascii")
        except UnicodeDecodeError:
            raise HandshakeRefused("handshake: the initiator's preamble is malformed", "malformed") from None
        try:
            self._proto = self._accepts(name)
        except HandshakeRefused:
            raise
        except XpsError:
            raise HandshakeRefused("handshake: the peer offered an unusable protocol", "protocol-refused") from None
        self._hs = self._state(bytes(body))
        return frame(MAGIC + bytes((VERSION, STATUS_OK)))

    def _write(self) -> bytes:
        hs = self._hs
        assert hs is not None and self._proto is not None
        if hs.message_index != self._my_slot:
            return frame(hs.write_message(b""))
        identity, proto, initiator = self._identity, self._proto.name, self.initiator
        static = hs.static_public if _has_static(self._proto.pattern, initiator) else None

        def auth(h: bytes) -> bytes:
            sig = identity.sign(signed_content(proto, initiator, h, static or b""))
            return encode_auth(identity.chain_der, sig)

        msg = hs.write_message(auth)
        if len(msg) > MAX_MESSAGE:
            raise PolicyError("handshake: the certificate chain does not fit in a handshake message")
        return frame(msg)

    def _authenticate(self, payload: bytes, hs: HandshakeState) -> None:
        assert self._proto is not None
        chain, sig = decode_auth(payload, self._trust.max_chain)
        purpose: Purpose = "server" if self.initiator else "client"
        peer = self._trust.verify(chain, purpose=purpose, expected_names=self._names, now=self._clock())
        peer_static = hs.rs if _has_static(self._proto.pattern, not self.initiator) else None
        content = signed_content(self._proto.name, not self.initiator, hs.payload_hash, peer_static or b"")
        leaf_key = _ed25519_raw(peer.certificate)
        try:
            self._engine.ed25519.verify(leaf_key, content, sig)
        except (AuthError, KeyError_):
            raise ChannelAuthError("handshake: the peer's signature over the handshake does not verify",
                                   reason="bad-signature") from None
        self._peer = peer.with_static(peer_static or b"")

    def established(self) -> Established:
        """The transport keys and the peer, once :attr:`finished`."""
        hs = self._hs
        if hs is None or not self.finished or self._peer is None or self._proto is None:
            raise PolicyError("handshake: not finished")
        h = hs.handshake_hash
        send, recv = hs.split()
        return Established(send, recv, self._peer, self._proto.name, h)

    def wipe(self) -> None:
        """Drop the handshake's secrets (after a failure)."""
        if self._hs is not None:
            self._hs.wipe()


def _psk_count(proto: NoiseProtocol) -> int:
    return sum(t == "psk" for m in proto.pattern.messages for t in m)
