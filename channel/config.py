"""The secure channel's configuration section: rekey limits, protocol and the bounds on a peer.

In an Appendix C document it is the seed's ``tls:`` section (``rekey_messages``,
``rekey_minutes``, and ``rekey_bytes``, ``protocol``, ``accept``, ``require_pq``,
``max_frame``, ``max_message``, ``handshake_timeout``, ``idle_timeout``,
``max_pending_handshakes``, ``max_pending_per_source`` beside
them); the pre-Appendix C layout calls it ``channel:`` (``rekey_after_messages``,
``rekey_after``, ``rekey_after_bytes`` and the same other names).

Example:
    >>> ChannelConfig.from_mapping({"rekey_after": "10m"}).rekey_after_seconds
    600.0
    >>> ChannelConfig(require_pq=True).offered_protocol
    'Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpscerpto._config_fields import (
    Field,
    build_section,
    count,
    dump_section,
    flag,
    minutes_as_seconds,
    minutes_out,
    optional_text,
    parse_duration,
    parse_size,
    positive,
    seconds_out,
    show,
    str_list,
)
from xpscerpto.errors import PolicyError

__all__ = ["DEFAULT_PQ_PROTOCOL", "DEFAULT_PROTOCOL", "ChannelConfig"]

DEFAULT_PROTOCOL = "Noise_XX_25519_ChaChaPoly_SHA256"
DEFAULT_PQ_PROTOCOL = "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256"
_NOISE_MAX = 65535
_MIN_FRAME = 64
#: The largest rekey limits a configuration may set. They bound what one key carries whatever
#: the sender's configuration, so a receiver can refuse a peer that stays past them
#: (:data:`~xpscerpto.channel.transport.RECV_BYTES_PER_KEY`); 2^38 bytes keeps AES-256-GCM's
#: per-key advantage far below 2^-57 with full-size records, ChaCha20-Poly1305's too.
MAX_REKEY_MESSAGES = 1 << 32
MAX_REKEY_BYTES = 1 << 38


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """``channel:`` -- secure-channel rekey limits (whichever is reached first) and bounds.

    Attributes:
        rekey_after_messages: a sending key encrypts at most this many records, then Rekey()
            (at most 2^32).
        rekey_after_bytes: … or this many plaintext bytes (plus at most one record; at most
            2^38).
        rekey_after_seconds: … or is this old.
        protocol: the Noise protocol an initiator offers (``None``: the XX default, or its
            hybrid ``XXhfs`` form when ``require_pq``).
        accept: protocol names (``fnmatch`` globs) a responder accepts.
        require_pq: the initiator only offers, and the responder only accepts, hybrid
            post-quantum (``hfs``) protocols.
        max_frame: the largest record on the wire, length prefix excluded (bytes, <= 65535).
        max_message: the largest message ``recv`` reassembles (bytes).
        handshake_timeout_seconds: a handshake not finished by then is dropped.
        idle_timeout_seconds: on an established channel, ``recv()`` waiting this long for a
            record of the peer raises ``IdleTimeout`` and cuts the connection (``None``: wait for
            ever, the default; sending is no activity of the peer).
        max_pending_handshakes: a responder refuses new connections beyond this many handshakes.
        max_pending_per_source: … and beyond this many from one IP address (``None``: no cap
            per address; clients behind one NAT or proxy share one).
    """

    rekey_after_messages: int = 1 << 20
    rekey_after_bytes: int = 1024**3
    rekey_after_seconds: float = 3600.0
    protocol: str | None = None
    accept: tuple[str, ...] = ("Noise_*",)
    require_pq: bool = False
    max_frame: int = _NOISE_MAX  # bytes
    max_message: int = 16 * 1024**2  # bytes
    handshake_timeout_seconds: float = 10.0
    max_pending_handshakes: int = 64
    max_pending_per_source: int | None = None
    idle_timeout_seconds: float | None = None  # last: the fields before it stay positional

    def __post_init__(self) -> None:
        _check_int("rekey_after_messages", self.rekey_after_messages, 1, MAX_REKEY_MESSAGES)
        _check_int("rekey_after_bytes", self.rekey_after_bytes, 1, MAX_REKEY_BYTES)
        _check_seconds("rekey_after_seconds", self.rekey_after_seconds, 10 * 365 * 86_400)
        _check_int("max_frame", self.max_frame, _MIN_FRAME, _NOISE_MAX)
        _check_int("max_message", self.max_message, 1)
        _check_seconds("handshake_timeout_seconds", self.handshake_timeout_seconds, 86_400)
        if self.idle_timeout_seconds is not None:
            # A day at most: the blocking driver waits in poll(), whose milliseconds are a C int.
            _check_seconds("idle_timeout_seconds", self.idle_timeout_seconds, 86_400)
        _check_int("max_pending_handshakes", self.max_pending_handshakes, 1)
        if self.max_pending_per_source is not None:
            _check_int("max_pending_per_source", self.max_pending_per_source, 1)
        if type(self.require_pq) is not bool:
            raise PolicyError("require_pq: expected a bool")
        if not isinstance(self.accept, tuple) or not all(isinstance(a, str) and a for a in self.accept):
            raise PolicyError("accept: expected a tuple of protocol names or globs")
        if self.protocol is not None:
            from ._patterns import parse_protocol

            if parse_protocol(self.protocol).hfs is False and self.require_pq:
                raise PolicyError("protocol: require_pq needs a hybrid (hfs) protocol")

    @property
    def offered_protocol(self) -> str:
        """The protocol an initiator offers."""
        if self.protocol is not None:
            return self.protocol
        return DEFAULT_PQ_PROTOCOL if self.require_pq else DEFAULT_PROTOCOL

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "channel.") -> ChannelConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        return _build(_FIELDS, data, prefix)

    @classmethod
    def from_document(cls, data: object, prefix: str = "crypto.tls.") -> ChannelConfig:
        """From an Appendix C ``tls:`` section."""
        return _build(_DOC_FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _FIELDS)

    def to_document(self) -> dict[str, Any]:
        """The Appendix C spelling (``tls:``)."""
        return dump_section(self, _DOC_FIELDS)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise PolicyError(f"{name}: expected an int {bound}")


def _check_seconds(name: str, value: object, high: int) -> None:
    # Bounded so that a value fits a socket timeout and a float deadline; compared, never
    # converted: NaN fails the comparison, a huge int is no OverflowError.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        raise PolicyError(f"{name}: expected a number of seconds > 0 and <= {high}")


def _build(schema: tuple[Field, ...], data: object, prefix: str) -> ChannelConfig:
    try:
        return build_section(ChannelConfig, schema, data, prefix)
    except PolicyError as exc:
        message = str(exc.args[0])
        if message.startswith(("config", prefix)):
            raise
        # A rule of __post_init__ ("protocol: …"): name the key as the file spells it.
        attr, _, rest = message.partition(":")
        key = next((f.key for f in schema if f.attr == attr), attr)
        raise PolicyError(f"config key {prefix + key!r}:{rest}") from None


def _protocol(value: object, key: str) -> str | None:
    return optional_text(value, key)


def _globs(value: object, key: str) -> tuple[str, ...]:
    names = tuple(str_list(value, key))
    if not names or not all(names):
        raise PolicyError(f"config key {key!r}: expected a non-empty list of protocol names or globs")
    return names


def _optional_count(value: object, key: str) -> int | None:
    return None if value is None else count(1)(value, key)


def _optional_duration(value: object, key: str) -> float | None:
    return None if value is None else _duration(value, key)


def _optional_seconds_out(value: float | None) -> int | float | None:
    return None if value is None else seconds_out(value)


def _frame(value: object, key: str) -> int:
    size = parse_size(value, key)
    if not _MIN_FRAME <= size <= _NOISE_MAX:
        raise PolicyError(f"config key {key!r}: must be in {_MIN_FRAME}..{_NOISE_MAX} bytes (Noise's limit), got "
                          f"{show(size)}")
    return size


_duration = positive(parse_duration)
_BOUNDS = (
    Field("protocol", "protocol", _protocol),
    Field("accept", "accept", _globs, list),
    Field("require_pq", "require_pq", flag),
    Field("max_frame", "max_frame", _frame),
    Field("max_message", "max_message", positive(parse_size)),
    Field("handshake_timeout", "handshake_timeout_seconds", _duration, seconds_out),
    Field("idle_timeout", "idle_timeout_seconds", _optional_duration, _optional_seconds_out),
    Field("max_pending_handshakes", "max_pending_handshakes", count(1)),
    Field("max_pending_per_source", "max_pending_per_source", _optional_count),
)
_FIELDS = (
    Field("rekey_after_messages", "rekey_after_messages", count(1)),
    Field("rekey_after_bytes", "rekey_after_bytes", positive(parse_size)),
    Field("rekey_after", "rekey_after_seconds", positive(parse_duration), seconds_out),
    *_BOUNDS,
)
_DOC_FIELDS = (
    Field("rekey_messages", "rekey_after_messages", count(1)),
    Field("rekey_minutes", "rekey_after_seconds", minutes_as_seconds, minutes_out),
    Field("rekey_bytes", "rekey_after_bytes", positive(parse_size)),
    *_BOUNDS,
)
