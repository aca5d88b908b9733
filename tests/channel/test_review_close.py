"""close() returns promptly while another thread or task is stuck in send() (review C3).

A peer that stops reading leaves a sender blocked in sendall() (blocking) or drain() (aio)
while it holds the send lock. close() is what a watchdog or a shutdown path calls then: it must
not wait for that lock forever, and it must free the stuck sender with a typed error.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from xpscerpto.channel import Channel, blocking, connect, serve
from xpscerpto.errors import PolicyError, XpsError

from .conftest import Pki, run

BIG = b"x" * (4 << 20)
#: More than any socket buffer on 127.0.0.1 holds: a sender of this much to a peer that never
#: reads is blocked long before the end.
MESSAGES = 100
#: close() may wait a moment for a send in progress to finish and for its CLOSE to go out;
#: anything near this bound is a hang.
PROMPT = 3.0


def test_blocking_close_returns_while_another_thread_is_stuck_in_send(pki: Pki) -> None:
    release = threading.Event()

    def handler(ch: blocking.BlockingChannel) -> None:
        release.wait(20)  # authenticated, and never reads

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, handler) as server:
        ch = blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")
        errors: list[BaseException] = []
        sent: list[int] = []

        def sender() -> None:
            try:
                for i in range(MESSAGES):
                    ch.send(BIG)
                    sent.append(i)
            except BaseException as exc:  # what the stuck sender gets, whatever it is
                errors.append(exc)

        stuck = threading.Thread(target=sender, daemon=True)
        stuck.start()
        try:
            time.sleep(1.0)
            assert stuck.is_alive() and not errors and len(sent) < MESSAGES  # blocked in sendall()
            closer = threading.Thread(target=ch.close, daemon=True)
            started = time.monotonic()
            closer.start()
            closer.join(10)
            assert not closer.is_alive(), "close() hung behind a send() blocked on a peer that stopped reading"
            assert time.monotonic() - started < PROMPT
            stuck.join(5)
            assert not stuck.is_alive(), "the stuck sender was not freed"
            assert len(errors) == 1 and isinstance(errors[0], XpsError), errors
            with pytest.raises(PolicyError, match="closed"):
                ch.send(b"after close")
        finally:
            release.set()


def test_aio_close_returns_while_another_task_is_stuck_in_send(pki: Pki) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(ch: Channel) -> None:
            await release.wait()  # authenticated, and never reads

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")
            sent: list[int] = []

            async def sender() -> None:
                for i in range(MESSAGES):
                    await ch.send(BIG)
                    sent.append(i)

            stuck = asyncio.create_task(sender())
            try:
                await asyncio.sleep(1.0)
                assert not stuck.done() and len(sent) < MESSAGES  # parked in drain()
                started = time.monotonic()
                try:
                    async with asyncio.timeout(10):
                        await ch.close()
                except TimeoutError:
                    pytest.fail("close() hung behind a send() blocked on a peer that stopped reading")
                assert time.monotonic() - started < PROMPT
                done, _ = await asyncio.wait([stuck], timeout=5)
                assert stuck in done, "the stuck sender was not freed"
                assert isinstance(stuck.exception(), XpsError), stuck.exception()
                with pytest.raises(PolicyError, match="closed"):
                    await ch.send(b"after close")
            finally:
                stuck.cancel()
                release.set()

    run(main(), timeout=40)


@pytest.mark.parametrize("pause", [1.6, 2.5])
def test_aio_close_delivers_what_send_accepted_to_a_peer_busy_for_a_moment(pki: Pki, pause: float) -> None:
    # Review of this session's fix: close() cut the connection one second after CLOSE, dropping
    # what asyncio still buffered for a healthy peer busy for a moment (it saw a truncated
    # record), or raised a bare AttributeError when the flush finished just in time.
    async def main() -> tuple[int, int, str]:
        got: list[bytes] = []
        end: list[str] = []
        done = asyncio.Event()

        async def handler(ch: Channel) -> None:
            try:
                got.append(await ch.recv())
                await asyncio.sleep(pause)  # busy: a slow write, a GC pause
                while m := await ch.recv():
                    got.append(m)
                end.append("clean CLOSE")
            except XpsError as exc:
                end.append(type(exc).__name__)
            finally:
                done.set()

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")
            buffered, sent = ch._writer.transport, 0
            while True:  # until asyncio holds bytes the peer has not taken yet
                await ch.send(sent.to_bytes(4, "big") * 15_000)
                sent += 1
                if buffered.get_write_buffer_size() > 0:
                    await asyncio.sleep(0.3)
                    if buffered.get_write_buffer_size() > 0:
                        break
            await ch.close()  # no exception, whatever the timing
            await asyncio.wait_for(done.wait(), 30)
        return sent, len(got), end[0]

    sent, received, end = run(main(), timeout=60)
    assert (received, end) == (sent, "clean CLOSE")
