"""After close(), a channel delivers nothing and sends nothing.

A wiped transport has no key. Noise's CipherState passes data through while it has no key
*yet*; a wiped one must refuse instead, or a record already buffered (or one a receiver
blocked in another thread reads next) would come back as a message without authentication.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import pytest
import xpscerpto as xps
from xpscerpto.channel import Channel, blocking, connect, serve
from xpscerpto.channel._noise import CipherState
from xpscerpto.errors import KeyError_, PolicyError, XpsError

from .conftest import Pki, run

#: A record an on-path attacker writes: a DATA type byte and text, no AEAD tag at all.
FORGED = b"\x00FORGED-UNAUTHENTICATED-DATA"
RAW = struct.pack(">H", len(FORGED)) + FORGED


def test_a_wiped_cipher_state_refuses_instead_of_passing_data_through(engine: xps.Engine) -> None:
    fresh = CipherState(engine, "ChaChaPoly")
    assert fresh.encrypt_with_ad(b"", b"hello") == b"hello"  # Noise: no key yet is a pass-through
    state = CipherState(engine, "ChaChaPoly")
    state.initialize_key(bytes(32))
    state.wipe()
    with pytest.raises(KeyError_, match="wiped"):
        state.encrypt_with_ad(b"", b"hello")
    with pytest.raises(KeyError_, match="wiped"):
        state.decrypt_with_ad(b"", FORGED)
    state.initialize_key(None)  # an empty key does not undo the wipe
    with pytest.raises(KeyError_):
        state.decrypt_with_ad(b"", FORGED)
    state.initialize_key(bytes(32))  # a new key does
    peer = CipherState(engine, "ChaChaPoly")
    peer.initialize_key(bytes(32))
    assert peer.decrypt_with_ad(b"", state.encrypt_with_ad(b"", b"again")) == b"again"


@pytest.mark.parametrize("payload", ["forged", "genuine"])
def test_aio_recv_after_close_refuses_a_buffered_record(pki: Pki, payload: str) -> None:
    async def main() -> None:
        sent = asyncio.Event()

        async def handler(ch: Channel) -> None:
            if payload == "forged":
                ch._writer.write(RAW)
                await ch._writer.drain()
            else:
                await ch.send(b"a genuine message")
            sent.set()
            await asyncio.sleep(1)

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")
            await sent.wait()
            await asyncio.sleep(0.1)  # the record is in the client's stream buffer
            await ch.close()
            with pytest.raises(PolicyError, match="closed"):
                await ch.recv()
            with pytest.raises(PolicyError, match="closed"):
                await ch.send(b"after close")

    run(main())


def test_blocking_recv_in_another_thread_refuses_what_arrives_after_close(pki: Pki) -> None:
    go = threading.Event()

    def handler(ch: blocking.BlockingChannel) -> None:
        go.wait(5)
        ch._sock.sendall(RAW)
        time.sleep(1)

    result: dict[str, object] = {}
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, handler) as server:
        ch = blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")

        def reader() -> None:
            try:
                result["msg"] = ch.recv()
            except XpsError as exc:
                result["exc"] = exc

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.3)  # the reader is blocked in recv()
        ch.close()
        t.join(5)  # woken by the close itself, before anything arrives
        woken = not t.is_alive()
        go.set()  # then the forged record arrives (it would, after a close that did not wake)
        t.join(5)
        assert not t.is_alive()
        assert woken, "close() left a recv() in another thread blocked"
    assert "msg" not in result, "a record read after close() was delivered"
    assert isinstance(result["exc"], XpsError)
    with pytest.raises(PolicyError, match="closed"):
        ch.recv()
    with pytest.raises(PolicyError, match="closed"):
        ch.send(b"after close")
