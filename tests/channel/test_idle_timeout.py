"""``idle_timeout``: an established channel whose peer sends nothing is dropped.

Without it a peer that finished a handshake and then went quiet held the server's connection
(and, on the blocking server, a thread) for ever. Real sockets on 127.0.0.1, real handshakes.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.channel import Channel, ChannelConfig, blocking, connect, serve
from xpscerpto.channel.aio import IdleTimeout
from xpscerpto.errors import AuthError, ErrorCode, PolicyError

from .conftest import Pki, echo, run

IDLE = 0.5
IDLE_CONFIG = ChannelConfig(handshake_timeout_seconds=5.0, idle_timeout_seconds=IDLE)


def _wait(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    assert cond(), "condition not reached"


def _assert_idle(exc: BaseException | None) -> None:
    assert isinstance(exc, IdleTimeout), repr(exc)
    assert isinstance(exc, AuthError) and isinstance(exc, TimeoutError)
    assert exc.code is ErrorCode.AUTH and exc.reason == "idle"
    assert "idle_timeout" in str(exc)


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30.0), (2, 2.0), (0.25, 0.25), ("250ms", 0.25), ("5m", 300.0), ("1d", 86400.0), (None, None),
])
def test_idle_timeout_is_read_from_both_layouts(value: object, seconds: float | None) -> None:
    by_mapping = ChannelConfig.from_mapping({"idle_timeout": value})
    by_document = ChannelConfig.from_document({"idle_timeout": value})
    assert by_mapping.idle_timeout_seconds == seconds == by_document.idle_timeout_seconds
    # Written back as read: the dump loads to the same configuration.
    assert ChannelConfig.from_mapping(by_mapping.to_mapping()) == by_mapping
    assert ChannelConfig.from_document(by_document.to_document()) == by_document


def test_idle_timeout_is_off_by_default() -> None:
    assert ChannelConfig().idle_timeout_seconds is None
    assert ChannelConfig.from_mapping({}).idle_timeout_seconds is None
    assert ChannelConfig.from_document({}).idle_timeout_seconds is None
    assert ChannelConfig().to_mapping()["idle_timeout"] is None
    assert ChannelConfig().to_document()["idle_timeout"] is None


_BAD = [-1, -0.5, "-5s", 0, 0.0, "0s", float("nan"), float("inf"), float("-inf"), "nan", "inf",
        1e10, 86401, "2d", 10**400, True, False, "soon", "5 parsecs", "", [], {}, b"5s"]


@pytest.mark.parametrize("value", _BAD, ids=repr)
@pytest.mark.parametrize(("build", "key"), [(ChannelConfig.from_mapping, "'channel.idle_timeout'"),
                                            (ChannelConfig.from_document, "'crypto.tls.idle_timeout'")])
def test_idle_timeout_refuses_bad_values_naming_the_key(build: Any, key: str, value: object) -> None:
    with pytest.raises(PolicyError, match=key) as info:
        build({"idle_timeout": value})
    assert info.value.code is ErrorCode.POLICY
    assert "unknown key" not in str(info.value)  # refused as a bad value, not as a key nobody reads


@pytest.mark.parametrize("value", [-1, 0, 0.0, float("nan"), float("inf"), 1e10, 10**400, True, "5s", b"5"],
                         ids=repr)
def test_channel_config_refuses_bad_idle_timeout_seconds(value: object) -> None:
    with pytest.raises(PolicyError, match="idle_timeout_seconds"):
        ChannelConfig(idle_timeout_seconds=value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- asyncio

def test_aio_server_drops_a_silent_client(pki: Pki) -> None:
    async def main() -> None:
        seen: asyncio.Future[tuple[BaseException | None, float]] = asyncio.get_running_loop().create_future()

        async def handler(ch: Channel) -> None:
            start = time.monotonic()
            try:
                await ch.recv()
            except BaseException as exc:
                seen.set_result((exc, time.monotonic() - start))
                # The channel is dead: the same error again, nothing sent.
                with pytest.raises(IdleTimeout):
                    await ch.recv()
                with pytest.raises(IdleTimeout):
                    await ch.send(b"late")
                raise
            seen.set_result((None, time.monotonic() - start))

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=IDLE_CONFIG) as server:
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust,
                                     expected_name="server.test") as ch:
                exc, waited = await asyncio.wait_for(seen, 10)
                _assert_idle(exc)
                assert IDLE * 0.9 <= waited < IDLE + 5
                # The server cut the connection: the client sees it gone, not a clean close.
                with pytest.raises(AuthError) as info:
                    await asyncio.wait_for(ch.recv(), 5)
                assert info.value.reason in ("eof", "truncated")
            # The connection's task and writer are gone: nothing of it is held any more.
            for _ in range(200):
                if not server._tasks and not server._writers:
                    break
                await asyncio.sleep(0.01)
            assert not server._tasks and not server._writers
            assert server.handler_errors == 1

    run(main())


def test_aio_server_drops_a_client_that_trickles_a_record(pki: Pki) -> None:
    # The deadline is per record, not per byte: a byte every 0.1 s never completes a record.
    async def main() -> None:
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def handler(ch: Channel) -> None:
            try:
                await ch.recv()
            except BaseException as exc:
                seen.set_result(exc)
                raise

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=IDLE_CONFIG) as server, \
                await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            start = time.monotonic()
            ch._writer.write(b"\x01\x00")  # a header announcing 256 bytes
            while not seen.done() and time.monotonic() - start < 5:
                ch._writer.write(b"\x00")
                await asyncio.sleep(0.1)
            _assert_idle(await asyncio.wait_for(seen, 5))
            assert time.monotonic() - start < IDLE + 2

    run(main())


def test_aio_server_keeps_an_active_client(pki: Pki) -> None:
    # A KEY_UPDATE before every message: records that are no message pass through the wait too.
    config = ChannelConfig(idle_timeout_seconds=0.8, rekey_after_messages=1)

    async def main() -> None:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo, config=config) as server:
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust,
                                     expected_name="server.test", config=config) as ch:
                start = time.monotonic()
                n = 0
                while time.monotonic() - start < 2.5:  # three times the idle timeout
                    await asyncio.sleep(0.2)
                    await ch.send(b"ping %d" % n)
                    assert await ch.recv() == b"ping %d" % n
                    n += 1
                assert ch.transport.error is None and ch.transport.rekeys_received >= n - 1
            assert server.handler_errors == 0

    run(main())


def test_aio_client_gets_the_typed_error_when_the_server_is_silent(pki: Pki) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def silent(ch: Channel) -> None:
            await release.wait()

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, silent) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                               config=IDLE_CONFIG)
            await ch.send(b"sending is no activity of the peer")
            start = time.monotonic()
            with pytest.raises(IdleTimeout) as info:
                await ch.recv()
            waited = time.monotonic() - start
            _assert_idle(info.value)
            assert IDLE * 0.9 <= waited < IDLE + 5
            assert ch.transport.error is info.value
            assert ch._writer.transport.is_closing()  # aborted, not left open
            await ch.close()
            release.set()

    run(main())


def test_aio_without_idle_timeout_a_quiet_channel_lives(pki: Pki) -> None:
    async def main() -> None:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo) as server, \
                await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            await asyncio.sleep(1.0)
            await ch.send(b"still here")
            assert await ch.recv() == b"still here"

    run(main())


# --------------------------------------------------------------------------- blocking

def test_blocking_server_drops_a_silent_client_and_frees_its_thread(pki: Pki) -> None:
    seen: queue.Queue[tuple[BaseException | None, float]] = queue.Queue()

    def handler(ch: blocking.BlockingChannel) -> None:
        start = time.monotonic()
        try:
            ch.recv()
        except BaseException as exc:
            seen.put((exc, time.monotonic() - start))
            raise
        seen.put((None, time.monotonic() - start))

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=IDLE_CONFIG) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
        exc, waited = seen.get(timeout=10)
        _assert_idle(exc)
        assert IDLE * 0.9 <= waited < IDLE + 5
        with pytest.raises(AuthError) as info:
            ch.recv()  # the server cut the connection
        assert info.value.reason in ("eof", "truncated")
        # The connection is closed and its thread waits for the next one.
        _wait(lambda: not server._conns and server._idle == 1)
        assert server.handler_errors == 1


def test_blocking_server_drops_a_client_that_trickles_a_record(pki: Pki) -> None:
    seen: queue.Queue[BaseException] = queue.Queue()

    def handler(ch: blocking.BlockingChannel) -> None:
        try:
            ch.recv()
        except BaseException as exc:
            seen.put(exc)
            raise

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=IDLE_CONFIG) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
        start = time.monotonic()
        ch._sock.sendall(b"\x01\x00")
        while seen.empty() and time.monotonic() - start < 5:
            try:
                ch._sock.sendall(b"\x00")
            except OSError:
                break
            time.sleep(0.1)
        _assert_idle(seen.get(timeout=5))
        assert time.monotonic() - start < IDLE + 2


def test_blocking_server_keeps_an_active_client(pki: Pki) -> None:
    config = ChannelConfig(idle_timeout_seconds=0.8, rekey_after_messages=1)

    def echo_blocking(ch: blocking.BlockingChannel) -> None:
        while msg := ch.recv():
            ch.send(msg)

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, echo_blocking, config=config) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=config) as ch:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 2.5:
            time.sleep(0.2)
            ch.send(b"ping %d" % n)
            assert ch.recv() == b"ping %d" % n
            n += 1
        assert ch.transport.error is None and ch.transport.rekeys_received >= n - 1
        assert server.handler_errors == 0


def test_blocking_client_gets_the_typed_error_when_the_server_is_silent(pki: Pki) -> None:
    release = threading.Event()

    def silent(ch: blocking.BlockingChannel) -> None:
        release.wait(10)

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, silent) as server:
        try:
            ch = blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                  config=IDLE_CONFIG)
            ch.send(b"sending is no activity of the peer")
            start = time.monotonic()
            with pytest.raises(IdleTimeout) as info:
                ch.recv()
            waited = time.monotonic() - start
            _assert_idle(info.value)
            assert IDLE * 0.9 <= waited < IDLE + 5
            assert ch.transport.error is info.value
            with pytest.raises(IdleTimeout):
                ch.send(b"late")
            ch.close()
        finally:
            release.set()


def test_blocking_close_wakes_a_recv_waiting_under_the_idle_timeout(pki: Pki) -> None:
    # close() in another thread ends the wait at once (the poll sees the shutdown), not at the
    # idle deadline, and nothing of the channel answers afterwards.
    config = ChannelConfig(idle_timeout_seconds=30.0)
    release = threading.Event()
    woke: queue.Queue[tuple[BaseException | None, float]] = queue.Queue()

    def silent(ch: blocking.BlockingChannel) -> None:
        release.wait(10)

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, silent) as server:
        try:
            ch = blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                  config=config)

            def receive() -> None:
                start = time.monotonic()
                try:
                    ch.recv()
                except BaseException as exc:
                    woke.put((exc, time.monotonic() - start))
                    return
                woke.put((None, time.monotonic() - start))

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            time.sleep(0.3)
            ch.close()
            exc, waited = woke.get(timeout=5)
            assert isinstance(exc, xps.XpsError) and not isinstance(exc, IdleTimeout), repr(exc)
            assert waited < 5
            with pytest.raises(PolicyError, match="closed"):
                ch.recv()
            receiver.join(5)
        finally:
            release.set()


def test_blocking_send_in_another_thread_is_not_cut_by_the_idle_timeout(pki: Pki) -> None:
    # A send that waits longer than the idle timeout (the peer reads nothing for a while) while
    # another thread waits in recv() with the idle timeout set: the send goes through, and recv
    # gets every message. A socket timeout shared by both would have cut the send.
    big = bytes(48 * 1024**2)  # more than both ends' socket buffers hold
    config = ChannelConfig(max_message=64 * 1024**2, idle_timeout_seconds=1.0)
    sent: queue.Queue[tuple[BaseException | None, float]] = queue.Queue()

    def slow_reader(ch: blocking.BlockingChannel) -> None:
        stop = threading.Event()

        def tick() -> None:  # keeps the client's recv() fed while this side reads nothing
            while not stop.wait(0.2):
                ch.send(b"tick")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            time.sleep(2.0)
            got = ch.recv()
        finally:
            stop.set()
            ticker.join(5)
        ch.send(b"got %d" % len(got))
        ch.recv()

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, slow_reader,
                        config=ChannelConfig(max_message=64 * 1024**2)) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=config) as ch:
        def send_big() -> None:
            start = time.monotonic()
            try:
                ch.send(big)
            except BaseException as exc:
                sent.put((exc, time.monotonic() - start))
                return
            sent.put((None, time.monotonic() - start))

        sender = threading.Thread(target=send_big, daemon=True)
        sender.start()
        ticks = 0
        while (msg := ch.recv()) == b"tick":
            ticks += 1
        assert msg == b"got %d" % len(big)
        exc, took = sent.get(timeout=10)
        assert exc is None, repr(exc)
        assert took > 1.0, took  # the send really waited longer than the idle timeout
        assert ticks >= 3 and ch.transport.error is None
        sender.join(5)

