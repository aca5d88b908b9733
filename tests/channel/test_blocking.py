"""The blocking driver over real sockets, and its interop with the asyncio one."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections import Counter

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.channel import ChannelConfig, blocking, connect, serve
from xpscerpto.channel.transport import Transport

from .conftest import Pki, echo, run


def _echo(ch: blocking.BlockingChannel) -> None:
    while msg := ch.recv():
        ch.send(msg)


def _wait(cond: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:  # type: ignore[operator]
        time.sleep(0.01)
    assert cond(), "condition not reached"  # type: ignore[operator]


def test_blocking_round_trip_large_and_small(pki: Pki) -> None:
    big = bytes(range(256)) * 600
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=ChannelConfig(rekey_after_messages=2)) as ch:
        for m in (b"a", big, b"", b"c"):
            ch.send(m)
            if m:
                assert ch.recv() == m
        # records: a, big x3 (65518-byte chunks), c; a KEY_UPDATE before records 3 and 5
        assert ch.peer.names == ("server.test",) and ch.transport.rekeys_sent == 2


def test_send_refuses_what_is_not_a_byte_buffer_and_the_channel_lives_on(pki: Pki) -> None:
    # Found by the adversarial pass: a released view raised ValueError out of send()'s
    # emptiness test, and a strided one a TypeError from the transport.
    released = memoryview(b"gone")
    released.release()
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo) as server, \
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
        for bad in (released, memoryview(b"abcdef")[::2], "text", None, 42):
            with pytest.raises(xps.PolicyError, match="data"):
                ch.send(bad)  # type: ignore[arg-type]
        ch.send(b"")  # nothing is sent for an empty message
        ch.send(memoryview(b"after"))
        assert ch.recv() == b"after"


def test_blocking_client_with_asyncio_server_and_back(pki: Pki) -> None:
    async def with_async_server() -> None:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo) as server:
            def client() -> bytes:
                with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust,
                                      expected_name="server.test") as ch:
                    ch.send(b"to async")
                    return ch.recv()
            assert await asyncio.to_thread(client) == b"to async"

    run(with_async_server())

    async def async_client(port: int) -> bytes:
        async with await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test") as ch:
            await ch.send(b"to blocking")
            return await ch.recv()

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo) as server:
        assert run(async_client(server.port)) == b"to blocking"


def test_blocking_server_drops_silent_clients_caps_pending_and_keeps_serving(pki: Pki) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=0.4, max_pending_handshakes=2)
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=cfg) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        _wait(lambda: server._pending._value == 0)  # both handshakes pending
        with pytest.raises(xps.PolicyError) as info:
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test", config=cfg)
        assert info.value.reason == "busy"
        for s in idle:
            s.settimeout(5)
            assert s.recv(10) == b""  # dropped at the deadline
            s.close()
        with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            ch.send(b"ok")
            assert ch.recv() == b"ok"
        assert server.failures.failures == Counter({"busy": 1, "timeout": 2})


def test_blocking_server_caps_pending_handshakes_per_source_address(pki: Pki) -> None:
    from xpscerpto.channel._session import refusal

    cfg = ChannelConfig(handshake_timeout_seconds=0.5, max_pending_handshakes=8, max_pending_per_source=2)
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=cfg) as server:
        idle = []
        for _ in range(3):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", server.port))
            s.settimeout(5)
            idle.append(s)
        assert idle[2].recv(100) == refusal("busy")  # the third from 127.0.0.2, at once
        assert server._pending._value == 6  # two slots taken; the refused one gave its slot back
        with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            ch.send(b"ok")  # another address is not held up
            assert ch.recv() == b"ok"
        for s in idle[:2]:
            assert s.recv(10) == b""  # dropped at the deadline, and the address's slots freed
        _wait(lambda: server._pending._value == 8 and not len(server._sources))
        for s in idle:
            s.close()
        assert server.failures.failures == Counter({"busy": 1, "timeout": 2})


def test_blocking_client_refuses_the_wrong_name_and_times_out_on_a_mute_server(pki: Pki) -> None:
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo) as server:
        with pytest.raises(xps.AuthError) as info:
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="other.test")
        assert info.value.reason == "cert-name"
    with socket.create_server(("127.0.0.1", 0)) as mute:
        stop = threading.Event()
        with pytest.raises(TimeoutError):
            blocking.connect("127.0.0.1", mute.getsockname()[1], pki.client, pki.trust, expected_name="server.test",
                             config=ChannelConfig(handshake_timeout_seconds=0.3))
        stop.set()


def test_blocking_handler_errors_do_not_stop_the_server(pki: Pki) -> None:
    def bad(ch: blocking.BlockingChannel) -> None:
        raise RuntimeError("handler bug")

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, bad) as server:
        for _ in range(2):
            with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
                assert ch.recv() == b""  # the server closed the channel cleanly after its handler failed
        _wait(lambda: server.handler_errors == 2)


def test_threads_sending_on_one_channel_never_interleave_records(pki: Pki) -> None:
    got: list[bytes] = []
    done = threading.Event()

    def collect(ch: blocking.BlockingChannel) -> None:
        while msg := ch.recv():
            got.append(msg)
        done.set()

    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, collect) as server:
        ch = blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                              config=ChannelConfig(rekey_after_messages=7))

        def sender(t: int) -> None:
            for i in range(50):
                ch.send(b"%d:%d:" % (t, i) + bytes(70000 if i % 10 == 0 else 10))  # some fragmented

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ch.close()
        assert done.wait(10)
    assert len(got) == 200
    for t in range(4):
        mine = [int(m.split(b":")[1]) for m in got if m.startswith(b"%d:" % t)]
        assert mine == list(range(50))


def _conn_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "xps-channel-conn"}


def test_server_threads_are_reused_across_connections_and_end_with_the_server(pki: Pki) -> None:
    before = _conn_threads()
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo) as server:
        for i in range(6):  # one after the other: one thread serves them all
            with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust,
                                  expected_name="server.test") as ch:
                ch.send(b"%d" % i)
                assert ch.recv() == b"%d" % i
            _wait(lambda: server._idle == 1)
        assert len(_conn_threads() - before) == 1
        # Three at once need three threads, each serving its own connection.
        chans = [blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test")
                 for _ in range(3)]
        for i, ch in enumerate(chans):
            ch.send(b"x%d" % i)
        assert [ch.recv() for ch in chans] == [b"x0", b"x1", b"x2"]
        for ch in chans:
            ch.close()
        _wait(lambda: server._idle == 3)
        assert len(_conn_threads() - before) == 3
    _wait(lambda: not (_conn_threads() - before))


def _channel_pair(config: ChannelConfig | None = None,
                  ) -> tuple[blocking.BlockingChannel, socket.socket, Transport]:
    """A BlockingChannel on one end of a socketpair; the raw other end; a Transport that seals for it."""
    import os
    import types

    from xpscerpto.channel._noise import CipherState

    def cs(key: bytes) -> CipherState:
        c = CipherState(xps.default_engine(), "ChaChaPoly")
        c.initialize_key(key)
        return c

    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = socket.socketpair()
    cfg = config or ChannelConfig()
    est = types.SimpleNamespace(send=cs(k1), recv=cs(k2), peer=None, protocol="test", handshake_hash=b"")
    ch = blocking.BlockingChannel(a, blocking._Reader(a), est, cfg)  # type: ignore[arg-type]
    return ch, b, Transport(cs(k2), cs(k1), cfg)


@pytest.mark.parametrize("split", ["whole", "together", "byte-by-byte", "record-and-a-half", "header-first"])
def test_recv_takes_records_however_the_socket_delivers_them(split: str) -> None:
    ch, raw, peer = _channel_pair()
    msgs = [b"a" * 64, b"b", b"c" * 70000, b"d" * 3]
    wires = [peer.seal(m) for m in msgs]
    stream = b"".join(wires)
    with ch, raw:
        if split == "whole":  # one record per read: the reader's fast path
            for m, w in zip(msgs, wires, strict=True):
                raw.sendall(w)
                assert ch.recv() == m
            return

        def feed() -> None:
            if split == "together":
                raw.sendall(stream)
            elif split == "byte-by-byte":
                for i in range(len(wires[0]) + 5):
                    raw.sendall(stream[i:i + 1])
                    time.sleep(0.0005)
                raw.sendall(stream[len(wires[0]) + 5:])
            elif split == "record-and-a-half":
                cut = len(wires[0]) + len(wires[1]) // 2
                raw.sendall(stream[:cut])
                time.sleep(0.02)
                raw.sendall(stream[cut:])
            else:
                raw.sendall(stream[:2])
                time.sleep(0.02)
                raw.sendall(stream[2:])

        t = threading.Thread(target=feed)
        t.start()
        assert [ch.recv() for _ in msgs] == msgs
        t.join()


def test_recv_refuses_a_short_or_oversized_record_arriving_alone_and_the_channel_stays_dead() -> None:
    for wire, reason in ((b"\x00\x05hello", "truncated"), (b"\xff\xff" + bytes(100), "oversized")):
        ch, raw, _ = _channel_pair(ChannelConfig(max_frame=1024))
        with ch, raw:
            raw.sendall(wire)
            with pytest.raises(xps.XpsError) as e:
                ch.recv()
            assert e.value.reason == reason
            assert b"hello" not in str(e.value).encode()
            with pytest.raises(xps.XpsError):
                ch.recv()
            with pytest.raises(xps.XpsError):
                ch.send(b"after the failure")


def test_recv_after_the_peer_closes_mid_record_is_truncated_not_eof() -> None:
    ch, raw, peer = _channel_pair()
    wire = peer.seal(b"x" * 64)
    with ch:
        raw.sendall(wire[:30])
        raw.close()
        with pytest.raises(xps.AuthError) as e:
            ch.recv()
        assert e.value.reason == "truncated"


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
       cuts=st.lists(st.integers(1, 4000), max_size=6))
def test_recv_reassembles_any_split_of_the_record_stream(sizes: list[int], cuts: list[int]) -> None:
    ch, raw, peer = _channel_pair(ChannelConfig(max_frame=1024))
    msgs = [bytes([i]) * n for i, n in enumerate(sizes)]
    stream = b"".join(peer.seal(m) for m in msgs)
    points = sorted({c % len(stream) for c in cuts} | {0, len(stream)})

    def feed() -> None:
        for a, b in itertools.pairwise(points):
            raw.sendall(stream[a:b])
            time.sleep(0.001)

    with ch, raw:
        t = threading.Thread(target=feed)
        t.start()
        assert [ch.recv() for _ in msgs] == msgs
        t.join()
