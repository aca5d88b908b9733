"""The channel on asyncio streams: :func:`connect`, :func:`serve` and :class:`Channel`.

Example:
    >>> import asyncio
    >>> from xpscerpto.channel import Trust
    >>> from xpscerpto.channel.pki import CertificateAuthority
    >>> ca = CertificateAuthority.create("CA")
    >>> srv_id = ca.issue_identity("server", dns=["server.test"])
    >>> cli_id = ca.issue_identity("client", dns=["client.test"])
    >>> trust = Trust([ca.certificate])
    >>> async def echo(ch: Channel) -> None:
    ...     while msg := await ch.recv():
    ...         await ch.send(msg)
    >>> async def main() -> bytes:
    ...     async with await serve("127.0.0.1", 0, srv_id, trust, echo) as server:
    ...         async with await connect("127.0.0.1", server.port, cli_id, trust,
    ...                                  expected_name="server.test") as ch:
    ...             await ch.send(b"ping")
    ...             return await ch.recv()
    >>> asyncio.run(main())
    b'ping'
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from xpscerpto.errors import AuthError, InternalError, PolicyError, XpsError

from ._failures import FailureLog
from ._noise import MAX_MESSAGE
from ._session import Established, Handshake, HandshakeRefused, refusal
from ._slots import SourceSlots
from .config import ChannelConfig
from .identity import _expected
from .transport import MIN_RECORD, Transport

if TYPE_CHECKING:
    from xpscerpto.audit import AuditLog
    from xpscerpto.engine import Engine

    from .identity import Identity, PeerCertificate, Trust

__all__ = ["Channel", "ChannelServer", "ConnectError", "ConnectTimeout", "IdleTimeout", "connect", "serve"]

_U16 = struct.Struct(">H")
#: StreamReader buffer: asyncio's 64 KiB default pauses the socket inside every full record.
_STREAM_LIMIT = 1 << 20
#: How long close() waits for a send in progress and for its CLOSE record to go out before it
#: cuts the connection: a sender parked in drain() on a peer that stopped reading would hold it forever.
_CLOSE_SECONDS = 1.0
#: How long close() lets data already accepted by send() (and CLOSE) drain to a peer that reads
#: slowly before it cuts the connection.
_FLUSH_SECONDS = 10.0
Handler = Callable[["Channel"], Awaitable[None]]


def _engine(engine: Engine | None) -> Engine:
    if engine is not None:
        return engine
    import xpscerpto

    return xpscerpto.default_engine()


def _names(expected: str | Iterable[str] | None) -> tuple[str, ...] | None:
    return _expected(expected)


def _endpoint(host: object, port: object, identity: object, trust: object, config: object) -> ChannelConfig:
    """The arguments :func:`connect` and :func:`serve` share, checked; the configuration to use.

    Checked here so a wrong type is a PolicyError naming it, not an OverflowError from bind()
    or an AttributeError deep in the handshake.
    """
    from .identity import Identity, Trust

    if not isinstance(host, str):
        raise PolicyError("host: expected a host name or address (str)")
    if type(port) is not int or not 0 <= port <= 65535:
        raise PolicyError("port: expected an int in 0..65535")
    if not isinstance(identity, Identity):
        raise PolicyError("identity: expected an Identity")
    if not isinstance(trust, Trust):
        raise PolicyError("trust: expected a Trust")
    if config is None:
        return ChannelConfig()
    if not isinstance(config, ChannelConfig):
        raise PolicyError("config: expected a ChannelConfig")
    return config


class ConnectError(AuthError, ConnectionError):
    """No channel to the peer: the connection was refused, the host is unreachable, its name does
    not resolve, or the connection broke during the handshake.

    ``XPS_ERR_AUTH`` with ``reason="eof"``, as for a peer that goes away on an open channel;
    ``__cause__`` is the original :class:`OSError`, whose ``errno`` and ``strerror`` it carries.
    It is also a :class:`ConnectionError`: code written when ``connect()`` let the bare
    ``OSError`` through still catches it.
    """


class ConnectTimeout(AuthError, TimeoutError):
    """No channel within the handshake deadline (TCP connect included): ``XPS_ERR_AUTH``,
    ``reason="timeout"``; also the :class:`TimeoutError` ``connect()`` raised before."""


class IdleTimeout(AuthError, TimeoutError):
    """``recv()`` on an established channel waited ``ChannelConfig.idle_timeout_seconds`` for a
    record of the peer: ``XPS_ERR_AUTH``, ``reason="idle"``; also a :class:`TimeoutError`.

    The connection is cut and the channel dead, as after any failed ``recv()``.
    """


def _idle(seconds: float) -> IdleTimeout:
    return IdleTimeout(f"channel: no record from the peer within {seconds:g} s (idle_timeout)", reason="idle")


#: The longest host name DNS allows: a longer host string is described, not quoted.
_MAX_HOST = 253


def _shown(host: str) -> str:
    """``host`` for an error message: repr, so a control character cannot start a forged line."""
    return repr(host) if len(host) <= _MAX_HOST else f"a host of {len(host)} characters"


def _no_channel(host: str, port: int, exc: OSError, seconds: float) -> XpsError:
    """The typed error for an OSError (or the deadline) that ended :func:`connect`."""
    where = f"{_shown(host)} port {port}"
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(f"channel: no channel to {where} within {seconds:g} s", reason="timeout")
    why = _why(exc)
    err = ConnectError(f"channel: no channel to {where} ({why})", reason="eof")
    err.errno, err.strerror = exc.errno, why
    return err


def _why(exc: OSError) -> str:
    """The system's words for ``exc``: asyncio's own ``strerror`` quotes the address it dialled."""
    if isinstance(exc, socket.gaierror | socket.herror) and exc.strerror:
        return exc.strerror
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    return type(exc).__name__


def _bad_host(host: str) -> PolicyError:
    """A host the resolver cannot even encode (a NUL, a label over 63 characters, a lone surrogate)."""
    return PolicyError(f"host: {_shown(host)} is not a host name or address")


def _unexpected() -> InternalError:
    """What a handshake failure outside the typed errors becomes (a bug, or a library's surprise):
    a typed error that quotes nothing of the original, whose text may hold the peer's bytes."""
    return InternalError("channel: the handshake failed on an unexpected error", reason="internal")


async def _read_record(reader: asyncio.StreamReader, limit: int) -> bytes:
    try:
        head = await reader.readexactly(2)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise AuthError("channel: the peer closed the connection", reason="eof") from None
        raise AuthError("channel: the connection ended inside a record header", reason="truncated") from None
    (n,) = _U16.unpack(head)
    if n > limit:
        raise PolicyError(f"record: {n} bytes, more than the {limit} allowed", reason="oversized")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise AuthError("channel: the connection ended inside a record", reason="truncated") from None


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(host, port, limit=_STREAM_LIMIT)
    except ValueError as exc:  # UnicodeError is one: raised before any socket exists
        raise _bad_host(host) from exc


async def _handshake(hs: Handshake, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Established:
    if hs.initiator:
        writer.write(hs.start())
        await writer.drain()
    while not hs.finished:
        out = hs.receive(await _read_record(reader, MAX_MESSAGE))
        if out:
            writer.write(out)
            await writer.drain()
    return hs.established()


class Channel:
    """An established, mutually authenticated channel (a message stream).

    ``send`` sends one message (split into records as needed; ``b""`` sends nothing); ``recv``
    returns the next whole message, or ``b""`` once the peer closed the channel cleanly. A
    connection cut without the peer's authenticated CLOSE raises :class:`AuthError`
    (``reason="eof"`` or ``"truncated"``), so truncation is never mistaken for the end.
    Any failure kills the channel: later calls raise the same error.

    Attributes:
        peer: the peer's verified certificate, chain, names and static key.
        protocol: the Noise protocol name in use.
        handshake_hash: the handshake hash (a channel binding both sides share).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, est: Established,
                 config: ChannelConfig) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = Transport(est.send, est.recv, config)
        self._limit = config.max_frame
        self._idle = config.idle_timeout_seconds
        self.peer: PeerCertificate = est.peer
        self.protocol = est.protocol
        self.handshake_hash = est.handshake_hash
        self._send_lock = asyncio.Lock()

    @property
    def transport(self) -> Transport:
        """The sans-I/O transport (counters, rekeys; for tests and diagnostics)."""
        return self._transport

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send one message."""
        async with self._send_lock:
            wire = self._transport.seal(data)
            if not wire:  # an empty message
                return
            self._writer.write(wire)
            try:
                await self._writer.drain()
            except (ConnectionError, OSError):
                if self._transport.error is not None:
                    raise self._transport.error from None
                raise self._kill(AuthError("channel: the connection was lost while sending", reason="eof")) from None
            if self._transport.error is not None:
                # close() (or a failed recv) aborted the connection under this drain(), which then
                # returns as if the data had gone out: it was dropped, so this send failed.
                raise self._transport.error

    async def recv(self) -> bytes:
        """The next message; ``b""`` after the peer's clean close.

        Raises:
            IdleTimeout: ``config.idle_timeout_seconds`` passed without a whole record of the peer
                (each record, a KEY_UPDATE too, starts the wait again); the connection is cut.
        """
        t = self._transport
        idle = self._idle
        while True:
            if t.closed_by_peer:
                return b""
            if t.error is not None:
                raise t.error
            try:
                if idle is None:
                    body = await _read_record(self._reader, self._limit)
                else:
                    timer = asyncio.timeout(idle)
                    try:
                        async with timer:
                            body = await _read_record(self._reader, self._limit)
                    except TimeoutError:
                        if not timer.expired():
                            raise  # the socket's own (ETIMEDOUT): the connection was lost
                        raise _idle(idle) from None
                if len(body) < MIN_RECORD:
                    raise AuthError("record: shorter than a type byte and a tag", reason="truncated")
            except XpsError as exc:
                self._kill(exc)
                raise
            except (ConnectionError, OSError):
                raise self._kill(AuthError("channel: the connection was lost", reason="eof")) from None
            try:
                msg = t.open(body)
            except XpsError:
                self._writer.transport.abort()
                raise
            if msg is not None:
                return msg

    def _kill(self, exc: XpsError) -> XpsError:
        self._transport.fail(exc)
        self._writer.transport.abort()
        return exc

    async def close(self) -> None:
        """Send CLOSE (if the channel is healthy), let what was sent reach the peer, and close.

        A ``send()`` parked in another task on a peer that stopped reading does not hold it up:
        after about a second without the send lock the connection is aborted, and that ``send()``
        raises ``PolicyError`` (``reason="closed"``). Data already accepted by ``send()`` gets up
        to :data:`_FLUSH_SECONDS` to reach a peer that reads slowly; only a peer that reads
        nothing for that long loses it (the connection is then cut).
        """
        t, writer = self._transport, self._writer
        sent_close = False
        try:
            if t.error is None and not t.closed_by_us:
                with contextlib.suppress(XpsError, ConnectionError, OSError):  # TimeoutError is an OSError
                    async with asyncio.timeout(_CLOSE_SECONDS), self._send_lock:
                        writer.write(t.seal_close())
                        sent_close = True
        finally:
            # Also when cancelled while waiting: the keys and the connection never outlive close().
            t.wipe()
            if not sent_close and not writer.transport.is_closing():
                writer.transport.abort()  # also wakes a send() parked in drain()
        writer.close()  # flushes what is buffered, then closes
        try:
            async with asyncio.timeout(_FLUSH_SECONDS if sent_close else _CLOSE_SECONDS):
                await writer.wait_closed()
        except TimeoutError:
            # The peer read nothing for that long: what it did not take is dropped. Still open
            # here (wait_closed did not finish), so abort() has a loop to run on.
            writer.transport.abort()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Channel {self.protocol} peer={self.peer.subject}>"


async def connect(host: str, port: int, identity: Identity, trust: Trust, *,
                  expected_name: str | Iterable[str] | None, config: ChannelConfig | None = None,
                  peer_static: bytes | None = None, psk: bytes | None = None, engine: Engine | None = None,
                  failures: FailureLog | None = None) -> Channel:
    """Open a channel to ``host:port`` as the initiator.

    Args:
        expected_name: the DNS or URI name the server's certificate must carry (``None``
            accepts any certificate the trusted CAs issued: only for tests).
        config: protocol, PQ policy, limits (default :class:`ChannelConfig`).
        peer_static: the server's static key, for IK/NK/KK.
        psk: a pre-shared key for ``pskN`` protocols.
        failures: counts and journals a failed handshake (:class:`FailureLog`).

    Raises:
        ChannelAuthError: the server's certificate or signature failed (``reason`` says which).
        AuthError: a handshake message was altered, or the connection was cut (``eof``).
        ConnectError: no connection to ``host:port`` (refused, unreachable, a name that does not
            resolve) or it broke during the handshake: ``XPS_ERR_AUTH``, ``reason="eof"``, the
            channel's code for a peer that is gone; the message names host (repr) and port, the
            ``OSError`` is ``__cause__``.
        ConnectTimeout: no channel within ``config.handshake_timeout_seconds`` (``XPS_ERR_AUTH``,
            ``reason="timeout"``; also a ``TimeoutError``).
        PolicyError: the server refused the offer (``reason``: ``pq-required``, ``busy`` …), a
            record was oversized, or ``host`` is not a name or address the resolver can encode.

    No socket stays open after a failure.
    """
    cfg = _endpoint(host, port, identity, trust, config)
    eng = _engine(engine)
    hs = Handshake(initiator=True, identity=identity, trust=trust, config=cfg, expected_names=_names(expected_name),
                   engine=eng, peer_static=peer_static, psk=psk)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(cfg.handshake_timeout_seconds):
            reader, writer = await _open(host, port)
            est = await _handshake(hs, reader, writer)
    except (XpsError, OSError) as exc:  # TimeoutError is an OSError
        hs.wipe()
        if writer is not None:
            writer.transport.abort()
        err = exc if isinstance(exc, XpsError) else _no_channel(host, port, exc, cfg.handshake_timeout_seconds)
        if failures is not None:
            failures.failure("initiator", err, protocol=hs.protocol, peer=host)
        if err is exc:
            raise
        raise err from exc
    except Exception as exc:  # last resort: still wiped, closed and counted, and typed for the caller
        hs.wipe()
        if writer is not None:
            writer.transport.abort()
        err = _unexpected()
        if failures is not None:
            failures.failure("initiator", err, protocol=hs.protocol, peer=host)
        raise err from exc
    if failures is not None:
        failures.success(hs.protocol)
    return Channel(reader, writer, est, cfg)


class ChannelServer:
    """A listening channel endpoint; see :func:`serve`.

    Attributes:
        failures: handshake outcomes (``failures.failures`` counts per reason).
        pending: handshakes in progress now.
    """

    def __init__(self, host: str, port: int, identity: Identity, trust: Trust, handler: Handler, *,
                 expected_names: str | Iterable[str] | None, config: ChannelConfig, peer_static: bytes | None,
                 psk: bytes | None, engine: Engine, failures: FailureLog) -> None:
        self._host, self._port = host, port
        self._identity, self._trust, self._handler = identity, trust, handler
        self._names = _names(expected_names)
        self._config, self._peer_static, self._psk, self._engine = config, peer_static, psk, engine
        self.failures = failures
        self.pending = 0
        self._sources = SourceSlots()
        self.handler_errors = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def start(self) -> ChannelServer:
        """Start listening (``serve`` does this)."""
        self._server = await asyncio.start_server(self._on_client, self._host, self._port, limit=_STREAM_LIMIT)
        return self

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def config(self) -> ChannelConfig:
        """The configuration new connections get."""
        return self._config

    def reconfigure(self, config: ChannelConfig) -> None:
        """Serve new connections with ``config`` (accepted protocols, PQ policy, limits).

        Channels already open keep the configuration they were made with (a PQ rollout's
        posture, :mod:`xpscerpto.orchestrator.pq_rollout`, calls this on every node).

        Raises:
            PolicyError: ``config`` is not a ChannelConfig.
        """
        if not isinstance(config, ChannelConfig):
            raise PolicyError(f"config: expected a ChannelConfig, got {type(config).__name__}")
        self._config = config  # one assignment: a connection reads it once, at its start

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            # Cancelled by close(): end quietly (asyncio logs a connection task that ends cancelled).
            if not self._closing:
                raise
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) else None
        cfg = self._config
        per_source = cfg.max_pending_per_source
        if self.pending >= cfg.max_pending_handshakes or not self._sources.take(peer_host, per_source):
            # Refused before any cryptography: a flood costs one small write per connection.
            self.failures.failure("responder", PolicyError("busy", reason="busy"), protocol=None, peer=peer_host)
            writer.write(refusal("busy"))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
            return
        self.pending += 1
        hs = Handshake(initiator=False, identity=self._identity, trust=self._trust, config=cfg,
                       expected_names=self._names, engine=self._engine, peer_static=self._peer_static, psk=self._psk)
        try:
            async with asyncio.timeout(cfg.handshake_timeout_seconds):
                est = await _handshake(hs, reader, writer)
        except (XpsError, TimeoutError, OSError) as exc:
            hs.wipe()
            # Counted before the refusal goes out: a peer that saw it finds it counted.
            await asyncio.to_thread(self.failures.failure, "responder", exc, protocol=hs.protocol, peer=peer_host,
                                    pre_auth=not hs.peer_authenticated)
            if isinstance(exc, HandshakeRefused):
                writer.write(exc.reply)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
            writer.transport.abort()
            return
        except Exception:
            # Last resort (a bug, or a library raising what it does not document): the server
            # outlives it like any failed handshake, wiped, counted as internal and closed.
            hs.wipe()
            await asyncio.to_thread(self.failures.failure, "responder", _unexpected(), protocol=hs.protocol,
                                    peer=peer_host, pre_auth=not hs.peer_authenticated)
            writer.transport.abort()
            return
        finally:
            self.pending -= 1
            self._sources.release(peer_host, per_source)
        self.failures.success(hs.protocol)
        channel = Channel(reader, writer, est, cfg)
        try:
            await self._handler(channel)
        except Exception:  # the server outlives any one handler's failure
            self.handler_errors += 1
        finally:
            await channel.close()

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their tasks to end."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def serve(host: str, port: int, identity: Identity, trust: Trust, handler: Handler, *,
                expected_names: str | Iterable[str] | None = None, config: ChannelConfig | None = None,
                peer_static: bytes | None = None, psk: bytes | None = None, engine: Engine | None = None,
                audit: AuditLog | None = None, audit_per_minute: int = 10) -> ChannelServer:
    """Listen on ``host:port``; run ``handler(channel)`` for each authenticated client.

    Args:
        expected_names: names a client certificate must carry (``None``: any the CAs issued).
        config: accepted protocols, PQ policy, limits, handshake timeout, pending-handshake cap.
        peer_static: the one client static key KK expects.
        audit: journal handshake failures (``CHANNEL_HANDSHAKE_FAIL``, at most
            ``audit_per_minute`` records per minute).

    A failed handshake closes that connection (with a refusal code when the offer itself is
    refused) and the server keeps serving; a handler that raises is counted and its channel closed.
    """
    cfg = _endpoint(host, port, identity, trust, config)
    if not callable(handler):
        raise PolicyError("handler: expected an async function of the channel")
    server = ChannelServer(host, port, identity, trust, handler, expected_names=expected_names,
                           config=cfg, peer_static=peer_static, psk=psk,
                           engine=_engine(engine), failures=FailureLog(audit, audit_per_minute))
    return await server.start()
