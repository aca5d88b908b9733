"""The channel's transport, sans I/O: framed Noise transport messages with in-band rekey.

Each record on the wire is a 2-byte big-endian length and a Noise transport message (an AEAD
ciphertext under the direction's key, counter nonce, empty associated data). Its plaintext
starts with one type byte:

========  ============  ==========================================================
type      name          meaning
========  ============  ==========================================================
``0x00``  DATA          the last (or only) fragment of a message
``0x01``  MORE          a fragment; more of the same message follows
``0x02``  CLOSE         the sender will send nothing more (authenticated end of stream)
``0x03``  KEY_UPDATE    the sender calls Rekey() on its sending key after this record
========  ============  ==========================================================

The sender decides when to rekey (``ChannelConfig.rekey_after_messages`` / ``_bytes`` /
``_seconds``, whichever first) and says so with KEY_UPDATE, so both ends call Noise's Rekey()
at the same record whatever their clocks or configurations. Records are ordered (counter
nonces), so a replayed, reordered, dropped or altered record fails authentication and the
channel is dead from then on; a message is delivered only when all its fragments verified.
Every MORE fragment carries at least :data:`MIN_FRAGMENT` bytes (a sender fills it to its
``max_frame``), so a message has a bounded number of fragments.

Example:
    >>> from xpscerpto.channel._noise import CipherState
    >>> import xpscerpto as xps
    >>> eng = xps.default_engine()
    >>> a, b = CipherState(eng, "ChaChaPoly"), CipherState(eng, "ChaChaPoly")
    >>> a.initialize_key(bytes(32)); b.initialize_key(bytes(32))
    >>> c, d = CipherState(eng, "ChaChaPoly"), CipherState(eng, "ChaChaPoly")
    >>> c.initialize_key(bytes(range(32))); d.initialize_key(bytes(range(32)))
    >>> alice, bob = Transport(a, c, ChannelConfig()), Transport(d, b, ChannelConfig())
    >>> wire = alice.seal(b"hi")
    >>> bob.open(wire[2:])
    b'hi'
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from xpscerpto._buffers import byte_buffer
from xpscerpto.errors import AuthError, PolicyError, XpsError

from ._noise import TAGLEN
from .config import _MIN_FRAME, ChannelConfig

if TYPE_CHECKING:
    from xpscerpto.interfaces import Buffer

    from ._noise import CipherState

__all__ = ["CLOSE", "DATA", "KEY_UPDATE", "MORE", "RECV_BYTES_PER_KEY", "Transport"]

DATA, MORE, CLOSE, KEY_UPDATE = 0, 1, 2, 3
_TYPES = (b"\x00", b"\x01", b"\x02", b"\x03")
_U16 = struct.Struct(">H").pack
#: The smallest record: a type byte and the tag.
MIN_RECORD = 1 + TAGLEN
#: The least a MORE fragment carries. A sender fills every fragment but the last to its
#: max_frame, which is at least _MIN_FRAME: a smaller one is no sender of ours, and would let a
#: peer make a message of millions of tiny fragments (each a record to decrypt and an object kept).
MIN_FRAGMENT = _MIN_FRAME - MIN_RECORD
#: The most record bytes (type, body and tag) a receiving key accepts before the peer's
#: KEY_UPDATE. A sender of any valid configuration stays below it: under one key it sends at
#: most config.MAX_REKEY_BYTES + one record of body, in at most config.MAX_REKEY_MESSAGES + 2
#: records (data, KEY_UPDATE, CLOSE) of MIN_RECORD overhead each -- under 3 * 2^37. A peer
#: past it never rekeys, whatever it was told: its key is refused (the limits are not only
#: the sender's).
RECV_BYTES_PER_KEY = 1 << 39


class Transport:
    """Both directions of an established channel.

    Not thread-safe: one sender and one receiver at a time (the drivers serialise sends).
    After any failure the transport refuses everything with the first error.
    """

    __slots__ = ("_age_limit", "_buf", "_buf_len", "_byte_limit", "_chunk", "_clock", "_error", "_max_message",
                 "_msg_limit", "_recv", "_recv_left", "_rekey_at", "_send", "_sent_bytes", "_sent_records", "_single",
                 "closed_by_peer", "closed_by_us", "rekeys_received", "rekeys_sent")

    def __init__(self, send: CipherState, recv: CipherState, config: ChannelConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._recv = recv
        self._msg_limit = config.rekey_after_messages
        self._byte_limit = config.rekey_after_bytes
        self._age_limit = config.rekey_after_seconds
        self._chunk = config.max_frame - MIN_RECORD
        self._max_message = config.max_message
        # The largest message that is one record and allowed: one comparison picks the fast path.
        self._single = min(self._chunk, self._max_message)
        self._clock = clock
        self._rekey_at = clock() + self._age_limit
        self._sent_records = 0
        self._sent_bytes = 0
        self._recv_left = RECV_BYTES_PER_KEY  # record bytes the peer's current key may still carry
        self._buf: list[bytes] = []
        self._buf_len = 0  # bytes in _buf, kept as fragments arrive (summing them each time is quadratic)
        self._error: XpsError | None = None
        self.closed_by_peer = False
        self.closed_by_us = False
        self.rekeys_sent = 0
        self.rekeys_received = 0

    # -- sending -------------------------------------------------------------------------

    def seal(self, data: Buffer) -> bytes:
        """The records carrying one message (fragments, preceded by a KEY_UPDATE when one is due);
        ``b""`` for an empty message."""
        if self._error is not None or self.closed_by_us:
            raise self._error or PolicyError("channel: closed")
        # bytes, the common case, needs no view to count or slice it; anything else must pass
        # the engine's buffer rule (contiguous single bytes, not released) first.
        view = data if type(data) is bytes else memoryview(byte_buffer(data, "data", PolicyError)).cast("B")
        n = len(view)
        if not n:
            return b""  # an empty message needs no record (the drivers then send nothing)
        if n <= self._single:  # the common case: one record, one AEAD call
            # _record's steps, inlined while no KEY_UPDATE is due: a 64-byte round trip is
            # mostly per-record steps, and a Python frame costs as much as the checks in it.
            r = self._sent_records
            if r < self._msg_limit and self._sent_bytes < self._byte_limit and self._clock() < self._rekey_at:
                ct = self._send.encrypt_with_ad(b"", b"\x00" + view)  # DATA; one copy, even of a view
                self._sent_records = r + 1
                self._sent_bytes += n
                return _U16(len(ct)) + ct
            return self._record(DATA, view)
        if n > self._max_message:
            raise PolicyError(f"data: {n} bytes, more than max_message ({self._max_message})")
        chunk = self._chunk
        parts = []
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            parts.append(self._record(DATA if end == n else MORE, view[start:end]))
        return b"".join(parts)

    def seal_close(self) -> bytes:
        """The CLOSE record; nothing can be sent afterwards."""
        if self._error is not None:
            raise self._error
        if self.closed_by_us:
            return b""
        out = self._record(CLOSE, b"")
        self.closed_by_us = True
        return out

    def _record(self, kind: int, body: Buffer) -> bytes:
        # A KEY_UPDATE first when a limit is reached (seal() inlines the rest for one-record messages).
        n = self._sent_records
        if n >= self._msg_limit or self._sent_bytes >= self._byte_limit or self._clock() >= self._rekey_at:
            head = self._key_update()
            n = 0
        else:
            head = b""
        ct = self._send.encrypt_with_ad(b"", _TYPES[kind] + body)  # one copy, even of a view
        self._sent_records = n + 1
        self._sent_bytes += len(body)
        return head + _U16(len(ct)) + ct  # b"" + x is x itself: no copy without a KEY_UPDATE

    def _key_update(self) -> bytes:
        ct = self._send.encrypt_with_ad(b"", _TYPES[KEY_UPDATE])
        self._send.rekey()
        self._sent_records = self._sent_bytes = 0
        self._rekey_at = self._clock() + self._age_limit
        self.rekeys_sent += 1
        return _U16(len(ct)) + ct

    # -- receiving -----------------------------------------------------------------------

    def open(self, body: Buffer) -> bytes | None:
        """Decrypt one record body (length prefix removed): a whole message, or None.

        None means a fragment, a KEY_UPDATE or the peer's CLOSE (then :attr:`closed_by_peer`).

        Raises:
            AuthError: the record was altered, replayed, reordered or truncated (channel dead).
            PolicyError: a record after CLOSE, an unknown type, a MORE fragment under
                :data:`MIN_FRAGMENT` bytes, a message over max_message (even in one record), or
                a record past :data:`RECV_BYTES_PER_KEY` without a KEY_UPDATE.
        """
        if self._error is not None:
            raise self._error
        if type(body) is not bytes:  # the drivers' case is bytes; a caller's buffer is checked first
            body = byte_buffer(body, "record", PolicyError)
        try:
            if self.closed_by_peer:
                raise PolicyError("channel: a record after the peer's CLOSE", reason="malformed")
            n = len(body)
            if n < MIN_RECORD:
                raise AuthError("record: shorter than a type byte and a tag", reason="truncated")
            left = self._recv_left - n
            if left < 0:
                raise PolicyError(f"record: the peer's key carried more than {RECV_BYTES_PER_KEY} bytes without a "
                                  "KEY_UPDATE (a sender never goes past it)", reason="policy")
            self._recv_left = left
            try:
                plain = self._recv.decrypt_with_ad(b"", body)
            except AuthError:
                raise AuthError("record: authentication failed (altered, replayed, reordered or cut)",
                                reason="auth") from None
            if plain[0] == DATA and not self._buf:  # the common case: a whole message in one record
                if len(plain) - 1 > self._max_message:  # one record can exceed a small max_message too
                    raise PolicyError(f"message: more than max_message ({self._max_message}) bytes",
                                      reason="oversized")
                return plain[1:] if len(plain) > 1 else None
            return self._other(plain)
        except XpsError as exc:
            self._fail(exc)
            raise

    def _other(self, plain: bytes) -> bytes | None:
        """A fragment, the last fragment, a KEY_UPDATE or a CLOSE."""
        kind = plain[0]
        if kind in (DATA, MORE):
            size = self._buf_len + len(plain) - 1
            if size > self._max_message:
                raise PolicyError(f"message: more than max_message ({self._max_message}) bytes", reason="oversized")
            if kind == MORE and len(plain) - 1 < MIN_FRAGMENT:
                raise PolicyError(f"record: a fragment of less than {MIN_FRAGMENT} bytes", reason="malformed")
            self._buf.append(plain[1:])
            if kind == MORE:
                self._buf_len = size
                return None
            out = b"".join(self._buf)
            self._buf = []
            self._buf_len = 0
            return out
        if kind == KEY_UPDATE and len(plain) == 1:
            self._recv.rekey()
            self._recv_left = RECV_BYTES_PER_KEY
            self.rekeys_received += 1
            return None
        if kind == CLOSE and len(plain) == 1 and not self._buf:
            self.closed_by_peer = True
            return None
        raise PolicyError("record: unknown or malformed record type", reason="malformed")

    def _fail(self, exc: XpsError) -> None:
        self._error = exc
        self._buf = []
        self._buf_len = 0
        self._send.wipe()
        self._recv.wipe()

    def fail(self, exc: XpsError) -> None:
        """Mark the transport dead with ``exc`` (a driver saw a truncated or oversized record)."""
        if self._error is None:
            self._fail(exc)

    @property
    def error(self) -> XpsError | None:
        """The error that killed the transport, if any."""
        return self._error

    def wipe(self) -> None:
        """Wipe both keys; every later seal or open is refused (the channel is closed).

        A record already buffered, or one a receiver blocked in another thread reads next,
        is refused too: with no key there is nothing to authenticate it with.
        """
        if self._error is None:
            self._error = PolicyError("channel: closed", reason="closed")
        self._buf = []
        self._buf_len = 0
        self._send.wipe()
        self._recv.wipe()
