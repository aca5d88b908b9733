"""The channel on plain sockets and threads: blocking :func:`connect` and :func:`serve`.

The same sans-I/O handshake and transport as :mod:`.aio`; only the I/O differs (a socket per
channel, a thread per connection on the server, socket timeouts for the handshake deadline).
The server keeps finished connections' threads for a while and hands them the next
connection: starting a thread costs about as much as a fifth of a handshake's CPU.

Example:
    >>> from xpscerpto.channel import Trust
    >>> from xpscerpto.channel.pki import CertificateAuthority
    >>> ca = CertificateAuthority.create("CA")
    >>> srv_id = ca.issue_identity("server", dns=["server.test"])
    >>> cli_id = ca.issue_identity("client", dns=["client.test"])
    >>> trust = Trust([ca.certificate])
    >>> def echo(ch: BlockingChannel) -> None:
    ...     while msg := ch.recv():
    ...         ch.send(msg)
    >>> with serve("127.0.0.1", 0, srv_id, trust, echo) as server:
    ...     with connect("127.0.0.1", server.port, cli_id, trust, expected_name="server.test") as ch:
    ...         ch.send(b"ping")
    ...         ch.recv()
    b'ping'
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from xpscerpto.errors import AuthError, PolicyError, XpsError

from ._failures import FailureLog
from ._noise import MAX_MESSAGE
from ._session import Established, Handshake, HandshakeRefused, refusal
from ._slots import SourceSlots
from .aio import _bad_host, _endpoint, _engine, _idle, _names, _no_channel, _unexpected
from .config import ChannelConfig
from .transport import Transport

if TYPE_CHECKING:
    from xpscerpto.audit import AuditLog
    from xpscerpto.engine import Engine

    from .identity import Identity, PeerCertificate, Trust

__all__ = ["BlockingChannel", "BlockingServer", "connect", "serve"]

_U16 = struct.Struct(">H")
_READ = 256 * 1024
#: How long a server thread with no connection waits for the next one before it ends.
_IDLE_SECONDS = 30.0
#: How long the accept loop pauses after accept() failed for want of a resource (a descriptor,
#: memory, a thread), so that it does not spin while the shortage lasts.
_ACCEPT_PAUSE = 0.05
#: accept() errors that mean the listening socket is gone (closed, shut down): the loop ends.
#: Any other (EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EPROTO …) concerns one connection
#: or passes, and ending the loop on it would stop the server accepting for good.
_LISTENER_GONE = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})
#: accept() errors about the connection being accepted only: retried at once, no pause.
_NO_PAUSE = frozenset({errno.ECONNABORTED, errno.EINTR, errno.EAGAIN, errno.EPROTO})
#: How long close() waits for a send in progress and for its CLOSE record to go out before it
#: cuts the connection: a sender blocked on a peer that stopped reading would hold it forever.
_CLOSE_SECONDS = 1.0
#: A read after poll() said "readable" must not block if the readiness was spurious.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_log = logging.getLogger("xpscerpto.channel")


class _Reader:
    """Buffered record reads from a socket, with an optional absolute deadline (the handshake's)
    or an idle limit per record (an established channel's)."""

    __slots__ = ("_buf", "_poll", "_scratch", "_sock", "deadline", "idle")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        # recv_into a reused buffer: sock.recv(256 KiB) would allocate (and map) that much per call.
        self._scratch = memoryview(bytearray(_READ))
        self.deadline: float | None = None
        self.idle: float | None = None
        self._poll: select.poll | None = None

    def watch_idle(self, seconds: float | None) -> None:
        """Wait at most ``seconds`` for each record (``None``: for ever), then raise IdleTimeout.

        The wait is a poll() on the socket, not a socket timeout: that one is shared with
        sendall(), and a send in another thread waiting on a slow reader would be cut by it.
        """
        self.idle = seconds
        if seconds is not None and self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._sock, select.POLLIN)

    def _recv_by(self, until: float) -> int:
        """recv_into the scratch buffer once the peer sent something, by ``until`` at the latest."""
        poll = self._poll
        assert poll is not None and self.idle is not None
        while True:
            # Polled even once ``until`` has passed: what already arrived is still read.
            if not poll.poll(max(math.ceil((until - time.monotonic()) * 1000), 0)):
                raise _idle(self.idle)
            try:
                return self._sock.recv_into(self._scratch, 0, _DONTWAIT)
            except BlockingIOError:
                continue  # readiness without data: wait again
            except OSError:
                return 0

    def _fill(self, need: int, inside: bool, until: float | None = None) -> None:
        while len(self._buf) < need:
            if until is not None:
                got = self._recv_by(until)
            else:
                if self.deadline is not None:
                    left = self.deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("channel: handshake timeout")
                    self._sock.settimeout(left)
                try:
                    got = self._sock.recv_into(self._scratch)
                except TimeoutError:
                    raise TimeoutError("channel: handshake timeout") from None
                except OSError:
                    got = 0
            if not got:
                if inside or self._buf:
                    raise AuthError("channel: the connection ended inside a record", reason="truncated")
                raise AuthError("channel: the peer closed the connection", reason="eof")
            self._buf += self._scratch[:got]

    def has_record(self) -> bool:
        """Whether a whole record is already buffered (reading it would not block)."""
        buf = self._buf
        return len(buf) >= 2 and len(buf) >= 2 + _U16.unpack_from(buf)[0]

    def record(self, limit: int) -> bytes:
        # The idle limit counts from here to the record's last byte: a peer trickling a byte at
        # a time does not hold the connection longer than one that sends nothing.
        until = None if self.idle is None else time.monotonic() + self.idle
        if not self._buf and self.deadline is None:
            # Request/response traffic: the socket holds exactly one record. Read it into the
            # scratch buffer and return its body from there, without passing it through the
            # bytearray (a 64-byte round trip is mostly per-record steps like these).
            scratch = self._scratch
            if until is None:
                try:
                    got = self._sock.recv_into(scratch)
                except OSError:
                    got = 0
            else:
                got = self._recv_by(until)
            if not got:
                raise AuthError("channel: the peer closed the connection", reason="eof")
            if got >= 2:
                n = scratch[0] << 8 | scratch[1]
                if got == n + 2 and n <= limit:
                    return scratch[2:got].tobytes()
            self._buf += scratch[:got]  # less, or more, than one record: the general path
        self._fill(2, False, until)
        (n,) = _U16.unpack_from(self._buf)
        if n > limit:
            raise PolicyError(f"record: {n} bytes, more than the {limit} allowed", reason="oversized")
        self._fill(2 + n, True, until)
        with memoryview(self._buf) as view:
            body = view[2:2 + n].tobytes()  # one copy (a bytearray slice would make two)
        del self._buf[:2 + n]
        return body


def _open(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ValueError as exc:  # UnicodeError is one: raised before any socket exists
        raise _bad_host(host) from exc


def _handshake(hs: Handshake, sock: socket.socket, reader: _Reader) -> Established:
    if hs.initiator:
        sock.sendall(hs.start())
    out = b""
    while not hs.finished:
        out += hs.receive(reader.record(MAX_MESSAGE))
        # Replies to records the peer sent together go out together (the responder's status
        # and its first message): one segment, one wake-up of the peer. Nothing is held while
        # no whole record is waiting, so a peer that waits for a reply always gets it.
        if out and not reader.has_record():
            sock.sendall(out)
            out = b""
    if out:
        sock.sendall(out)
    return hs.established()


class BlockingChannel:
    """An established channel on a blocking socket; the API of :class:`~xpscerpto.channel.Channel`.

    One thread may send while another receives; concurrent senders are serialised.
    """

    def __init__(self, sock: socket.socket, reader: _Reader, est: Established, config: ChannelConfig) -> None:
        self._sock = sock
        self._reader = reader
        self._transport = Transport(est.send, est.recv, config)
        reader.watch_idle(config.idle_timeout_seconds)
        self._limit = config.max_frame
        self._send_lock = threading.Lock()
        self.peer: PeerCertificate = est.peer
        self.protocol = est.protocol
        self.handshake_hash = est.handshake_hash

    @property
    def transport(self) -> Transport:
        """The sans-I/O transport (counters, rekeys)."""
        return self._transport

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send one message (``b""`` sends nothing)."""
        with self._send_lock:
            wire = self._transport.seal(data)
            if not wire:  # an empty message
                return
            try:
                self._sock.sendall(wire)
            except OSError:
                if self._transport.error is not None:
                    # close() (or a failed recv) cut the socket under this send: say why, typed.
                    raise self._transport.error from None
                raise self._kill(AuthError("channel: the connection was lost while sending", reason="eof")) from None

    def recv(self) -> bytes:
        """The next message; ``b""`` after the peer's clean close.

        Raises:
            IdleTimeout: ``config.idle_timeout_seconds`` passed without a whole record of the peer
                (each record starts the wait again); the connection is cut. A ``send()`` in
                another thread is not bounded by it.
        """
        t = self._transport
        while True:
            if t.closed_by_peer:
                return b""
            if t._error is not None:
                raise t._error
            try:
                body = self._reader.record(self._limit)  # a record too short for a tag: Transport.open refuses it
            except XpsError as exc:
                raise self._kill(exc) from None
            try:
                msg = t.open(body)
            except XpsError:
                self._abort()
                raise
            if msg is not None:
                return msg

    def _kill(self, exc: XpsError) -> XpsError:
        self._transport.fail(exc)
        self._abort()
        return exc

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Send CLOSE (if healthy) and close the socket; returns within about a second.

        A ``send()`` blocked in another thread on a peer that stopped reading gets no CLOSE after
        it: the socket is cut, and that ``send()`` raises ``PolicyError`` (``reason="closed"``).
        """
        t = self._transport
        try:
            deadline = time.monotonic() + _CLOSE_SECONDS
            if t.error is None and not t.closed_by_us and self._send_lock.acquire(timeout=_CLOSE_SECONDS):
                try:
                    with contextlib.suppress(XpsError, OSError):  # TimeoutError is an OSError
                        wire = t.seal_close()
                        self._sock.settimeout(max(deadline - time.monotonic(), 0.01))
                        self._sock.sendall(wire)
                finally:
                    self._send_lock.release()
        finally:
            # Also on an interrupt while waiting: the keys and the socket never outlive close().
            t.wipe()
            self._abort()  # wakes a recv() or a send() blocked in another thread (close() alone does not)
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(host: str, port: int, identity: Identity, trust: Trust, *,
            expected_name: str | Iterable[str] | None, config: ChannelConfig | None = None,
            peer_static: bytes | None = None, psk: bytes | None = None, engine: Engine | None = None,
            failures: FailureLog | None = None) -> BlockingChannel:
    """Blocking :func:`xpscerpto.channel.connect` (same arguments and errors).

    Raises:
        ChannelAuthError: the server's certificate or signature failed (``reason`` says which).
        AuthError: a handshake message was altered, or the connection was cut (``eof``).
        ConnectError: no connection to ``host:port`` (refused, unreachable, a name that does not
            resolve) or it broke during the handshake: ``XPS_ERR_AUTH``, ``reason="eof"``, the
            channel's code for a peer that is gone; the message names host (repr) and port, the
            ``OSError`` is ``__cause__``.
        ConnectTimeout: no channel within ``config.handshake_timeout_seconds`` (``XPS_ERR_AUTH``,
            ``reason="timeout"``; also a ``TimeoutError``).
        PolicyError: the server refused the offer, a record was oversized, or ``host`` is not a
            name or address the resolver can encode.

    No socket stays open after a failure.
    """
    cfg = _endpoint(host, port, identity, trust, config)
    hs = Handshake(initiator=True, identity=identity, trust=trust, config=cfg, expected_names=_names(expected_name),
                   engine=_engine(engine), peer_static=peer_static, psk=psk)
    deadline = time.monotonic() + cfg.handshake_timeout_seconds
    sock: socket.socket | None = None
    try:
        sock = _open(host, port, cfg.handshake_timeout_seconds)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(sock)
        reader.deadline = deadline
        est = _handshake(hs, sock, reader)
    except (XpsError, OSError) as exc:  # TimeoutError is an OSError
        hs.wipe()
        if sock is not None:
            sock.close()
        err = exc if isinstance(exc, XpsError) else _no_channel(host, port, exc, cfg.handshake_timeout_seconds)
        if failures is not None:
            failures.failure("initiator", err, protocol=hs.protocol, peer=host)
        if err is exc:
            raise
        raise err from exc
    except Exception as exc:  # last resort: still wiped, closed and counted, and typed for the caller
        hs.wipe()
        if sock is not None:
            sock.close()
        err = _unexpected()
        if failures is not None:
            failures.failure("initiator", err, protocol=hs.protocol, peer=host)
        raise err from exc
    reader.deadline = None
    sock.settimeout(None)
    if failures is not None:
        failures.success(hs.protocol)
    return BlockingChannel(sock, reader, est, cfg)


class BlockingServer:
    """A listening channel endpoint served by threads; see :func:`serve`."""

    def __init__(self, host: str, port: int, identity: Identity, trust: Trust,
                 handler: Callable[[BlockingChannel], None], *, expected_names: str | Iterable[str] | None,
                 config: ChannelConfig, peer_static: bytes | None, psk: bytes | None, engine: Engine,
                 failures: FailureLog) -> None:
        self._identity, self._trust, self._handler = identity, trust, handler
        self._names = _names(expected_names)
        self._config, self._peer_static, self._psk, self._engine = config, peer_static, psk, engine
        self.failures = failures
        self.handler_errors = 0
        #: accept() failures (and connection threads that could not start) survived so far.
        self.accept_errors = 0
        self._pending = threading.BoundedSemaphore(config.max_pending_handshakes)
        self._sources = SourceSlots()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Accepted connections waiting for a thread; ``_idle`` threads are blocked on it.
        self._queue: queue.SimpleQueue[tuple[socket.socket, str] | None] = queue.SimpleQueue()
        self._idle = 0
        self._listener = socket.create_server((host, port))
        self._thread = threading.Thread(target=self._accept_loop, name="xps-channel-accept", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self._listener.getsockname()[1])

    @property
    def config(self) -> ChannelConfig:
        """The configuration new connections get."""
        return self._config

    def reconfigure(self, config: ChannelConfig) -> None:
        """Serve new connections with ``config`` (accepted protocols, PQ policy, limits).

        Channels already open keep the configuration they were made with; the cap on pending
        handshakes stays the one the server started with.

        Raises:
            PolicyError: ``config`` is not a ChannelConfig.
        """
        if not isinstance(config, ChannelConfig):
            raise PolicyError(f"config: expected a ChannelConfig, got {type(config).__name__}")
        self._config = config  # one assignment: a connection reads it once, at its start

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._listener.accept()
            except OSError as exc:
                if self._stop.is_set() or self._listener.fileno() == -1 or exc.errno in _LISTENER_GONE:
                    return
                # Out of descriptors or memory, or a connection aborted before it was taken:
                # it passes (the connections holding them end), so pause and accept again.
                self._accept_trouble(f"accept() failed ({exc.strerror or type(exc).__name__})",
                                     pause=exc.errno not in _NO_PAUSE)
                continue
            peer = str(addr[0])
            with self._lock:
                self._conns.add(conn)
                spawn = self._idle == 0
                if not spawn:
                    self._idle -= 1  # that thread is taken, whichever one wakes
                    self._queue.put((conn, peer))
            if spawn:
                # The thread first, the connection queued once it runs: a thread that cannot start
                # (RuntimeError: the process is at its thread limit) leaves nothing queued for it.
                try:
                    threading.Thread(target=self._worker, name="xps-channel-conn", daemon=True).start()
                except RuntimeError:
                    self._refuse_busy(conn, peer)
                    self._accept_trouble("cannot start a connection thread", pause=True)
                    continue
                self._queue.put((conn, peer))

    def _accept_trouble(self, what: str, *, pause: bool) -> None:
        """Count an accept-side failure, log the first one, and pause (``close()`` cuts it short)."""
        with self._lock:
            self.accept_errors += 1
            first = self.accept_errors == 1
        if first:  # once: under a descriptor flood it recurs for every connection
            _log.warning("channel server on port %d: %s; still accepting (logged once)", self.port, what)
        if pause:
            self._stop.wait(_ACCEPT_PAUSE)

    def _busy(self, conn: socket.socket, peer: str) -> None:
        """Refuse a connection beyond a pending-handshake cap (it is closed by the caller)."""
        self.failures.failure("responder", PolicyError("busy", reason="busy"), protocol=None, peer=peer)
        with contextlib.suppress(OSError):
            conn.sendall(refusal("busy"))

    def _refuse_busy(self, conn: socket.socket, peer: str) -> None:
        """Close a connection no thread can serve, with the ``busy`` refusal and its count."""
        with self._lock:
            self._conns.discard(conn)
        self._busy(conn, peer)
        with contextlib.suppress(OSError):
            conn.close()

    def _worker(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle == 0:
                        # A connection was queued for this thread in the same instant: take it.
                        continue
                    self._idle -= 1
                return
            if item is None:
                return
            self._serve_one(*item)
            if self._stop.is_set():
                return
            with self._lock:
                self._idle += 1

    def _serve_one(self, conn: socket.socket, peer: str) -> None:
        try:
            cfg = self._config  # one configuration per connection, even if reconfigured meanwhile
            per_source = cfg.max_pending_per_source
            if not self._pending.acquire(blocking=False):
                self._busy(conn, peer)
                return
            if not self._sources.take(peer, per_source):
                self._pending.release()
                self._busy(conn, peer)
                return
            try:
                est, reader = self._handshake(conn, peer, cfg)
            finally:
                self._sources.release(peer, per_source)
                self._pending.release()
            if est is None:
                return
            conn.settimeout(None)
            channel = BlockingChannel(conn, reader, est, cfg)
            try:
                self._handler(channel)
            except Exception:  # the server outlives any one handler's failure
                self.handler_errors += 1
            finally:
                channel.close()
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handshake(self, conn: socket.socket, peer: str, cfg: ChannelConfig) -> tuple[Established | None, _Reader]:
        reader = _Reader(conn)
        reader.deadline = time.monotonic() + cfg.handshake_timeout_seconds
        hs = Handshake(initiator=False, identity=self._identity, trust=self._trust, config=cfg,
                       expected_names=self._names, engine=self._engine, peer_static=self._peer_static, psk=self._psk)
        try:
            # Inside the try: on a connection the peer already reset, these can fail too.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(cfg.handshake_timeout_seconds)
            est = _handshake(hs, conn, reader)
        except (XpsError, OSError) as exc:
            hs.wipe()
            # Counted before the refusal goes out: a peer that saw it finds it counted.
            self.failures.failure("responder", exc, protocol=hs.protocol, peer=peer,
                                  pre_auth=not hs.peer_authenticated)
            if isinstance(exc, HandshakeRefused):
                with contextlib.suppress(OSError):
                    conn.sendall(exc.reply)
            return None, reader
        except Exception:
            # Last resort (a bug, or a library raising what it does not document): this thread
            # lives on to serve the next connection; the handshake is wiped, counted as internal,
            # and the caller closes the connection.
            hs.wipe()
            self.failures.failure("responder", _unexpected(), protocol=hs.protocol, peer=peer,
                                  pre_auth=not hs.peer_authenticated)
            return None, reader
        reader.deadline = None
        self.failures.success(hs.protocol)
        return est, reader

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        with self._lock:
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._queue.put(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def serve(host: str, port: int, identity: Identity, trust: Trust, handler: Callable[[BlockingChannel], None], *,
          expected_names: str | Iterable[str] | None = None, config: ChannelConfig | None = None,
          peer_static: bytes | None = None, psk: bytes | None = None, engine: Engine | None = None,
          audit: AuditLog | None = None, audit_per_minute: int = 10) -> BlockingServer:
    """Blocking :func:`xpscerpto.channel.serve`: accepts in a thread, one thread per connection."""
    cfg = _endpoint(host, port, identity, trust, config)
    if not callable(handler):
        raise PolicyError("handler: expected a function of the channel")
    return BlockingServer(host, port, identity, trust, handler, expected_names=expected_names,
                          config=cfg, peer_static=peer_static, psk=psk,
                          engine=_engine(engine), failures=FailureLog(audit, audit_per_minute))
