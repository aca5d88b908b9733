"""Rekey in step on both sides, and a replaced AEAD provider taking over live channels.

Over real sockets: the sender's limits (messages, bytes, seconds; whichever first) trigger a
KEY_UPDATE record and Noise Rekey() on both ends at the same record. A provider published
into the engine's routing table (what a capsule's cutover does) serves new channels and
existing ones from their next record; rekeys build their keyed AEAD on it; a rollback
(publishing the old table) hands them back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.channel import Channel, ChannelConfig, connect, serve
from xpscerpto.channel._noise import CipherState
from xpscerpto.channel.transport import Transport
from xpscerpto.interfaces import Aead, Buffer, Provider

from tests.fakes.providers import ProviderPlugin

from .conftest import Pki, echo, run


async def _exchange(pki: Pki, client_cfg: ChannelConfig, server_cfg: ChannelConfig, messages: list[bytes],
                    pause: float = 0.0) -> tuple[list[bytes], dict[str, int]]:
    stats: dict[str, int] = {}

    async def handler(ch: Channel) -> None:
        while m := await ch.recv():
            await ch.send(m)
        stats["server_received_rekeys"] = ch.transport.rekeys_received
        stats["server_sent_rekeys"] = ch.transport.rekeys_sent

    async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=server_cfg) as server:
        replies = []
        async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                 config=client_cfg) as ch:
            for m in messages:
                await ch.send(m)
                replies.append(await ch.recv())
                if pause:
                    await asyncio.sleep(pause)
        # after close: the CLOSE record may itself have been preceded by a due KEY_UPDATE
        stats["client_sent_rekeys"] = ch.transport.rekeys_sent
        stats["client_received_rekeys"] = ch.transport.rekeys_received
        for _ in range(200):
            if "server_received_rekeys" in stats:
                break
            await asyncio.sleep(0.01)
    return replies, stats


def test_rekey_after_messages_in_step(pki: Pki) -> None:
    msgs = [b"m%d" % i for i in range(10)]
    replies, stats = run(_exchange(pki, ChannelConfig(rekey_after_messages=3), ChannelConfig(rekey_after_messages=4),
                                   msgs))
    assert replies == msgs
    # client: records 1-3 under key 0, then a KEY_UPDATE before records 4, 7 and 10
    assert stats["client_sent_rekeys"] == stats["server_received_rekeys"] == 3
    # server: before its replies 5 and 9 (4 records per key)
    assert stats["server_sent_rekeys"] == stats["client_received_rekeys"] == 2


def test_rekey_after_bytes_in_step_and_inside_a_fragmented_message(pki: Pki) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: five records of at most 65518 bytes
    cfg = ChannelConfig(rekey_after_bytes=100_000)
    replies, stats = run(_exchange(pki, cfg, ChannelConfig(), [big, b"small", big]))
    assert replies == [big, b"small", big]
    assert stats["client_sent_rekeys"] == stats["server_received_rekeys"] == 4
    assert stats["server_sent_rekeys"] == 0


def test_rekey_after_seconds_in_step(pki: Pki) -> None:
    replies, stats = run(_exchange(pki, ChannelConfig(rekey_after_seconds=0.05), ChannelConfig(),
                                   [b"a", b"b", b"c"], pause=0.08))
    assert replies == [b"a", b"b", b"c"]
    assert stats["client_sent_rekeys"] == stats["server_received_rekeys"] >= 2


def _states(engine: xps.Engine) -> tuple[CipherState, CipherState, CipherState, CipherState]:
    out = []
    for key in (bytes(32), bytes(range(32))):
        for _ in range(2):
            c = CipherState(engine, "ChaChaPoly")
            c.initialize_key(key)
            out.append(c)
    return out[0], out[1], out[2], out[3]


def test_whichever_limit_comes_first_with_a_clock(engine: xps.Engine) -> None:
    t = [0.0]
    a_send, b_recv, b_send, a_recv = _states(engine)
    cfg = ChannelConfig(rekey_after_messages=5, rekey_after_bytes=50, rekey_after_seconds=10.0)
    alice = Transport(a_send, a_recv, cfg, clock=lambda: t[0])
    bob = Transport(b_send, b_recv, cfg, clock=lambda: t[0])

    def deliver(wire: bytes) -> list[bytes | None]:
        out, pos = [], 0
        while pos < len(wire):
            n = int.from_bytes(wire[pos:pos + 2], "big")
            out.append(bob.open(wire[pos + 2:pos + 2 + n]))
            pos += 2 + n
        return out

    for _ in range(5):
        assert deliver(alice.seal(b"x")) == [b"x"]
    assert alice.rekeys_sent == 0
    assert deliver(alice.seal(b"y")) == [None, b"y"] and alice.rekeys_sent == bob.rekeys_received == 1  # messages
    deliver(alice.seal(bytes(60)))
    assert deliver(alice.seal(b"z"))[-1] == b"z" and alice.rekeys_sent == 2  # bytes
    t[0] = 11.0
    assert deliver(alice.seal(b"w")) == [None, b"w"] and alice.rekeys_sent == bob.rekeys_received == 3  # time


def test_the_receive_bound_is_above_anything_a_valid_sender_puts_under_one_key() -> None:
    # Under one key a sender sends at most MAX_REKEY_BYTES plus one record's body, in at most
    # MAX_REKEY_MESSAGES data records, a KEY_UPDATE and a CLOSE, each with MIN_RECORD of overhead.
    from xpscerpto.channel import config as channel_config
    from xpscerpto.channel import transport

    worst = (channel_config.MAX_REKEY_BYTES + 65535
             + (channel_config.MAX_REKEY_MESSAGES + 2) * transport.MIN_RECORD)
    assert worst < transport.RECV_BYTES_PER_KEY
    ChannelConfig(rekey_after_messages=channel_config.MAX_REKEY_MESSAGES,
                  rekey_after_bytes=channel_config.MAX_REKEY_BYTES)  # the ceilings themselves are valid


def test_a_peer_that_never_rekeys_is_refused_past_the_receive_bound(engine: xps.Engine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # 2^39 bytes is out of a test's reach: the bound is lowered (read when a transport starts),
    # the rule is the same. A sender that rekeys within it is never refused; a peer that
    # sends past it without a KEY_UPDATE is, and the channel is dead.
    from xpscerpto.channel import transport

    monkeypatch.setattr(transport, "RECV_BYTES_PER_KEY", 1000)
    a_send, b_recv, b_send, a_recv = _states(engine)
    alice = Transport(a_send, a_recv, ChannelConfig(rekey_after_bytes=200, max_frame=64))
    bob = Transport(b_send, b_recv, ChannelConfig())
    for i in range(200):  # 200 * (300 body + 17 * records) bytes: many times the bound, in keys under it
        wire, pos = alice.seal(bytes([i]) * 300), 0
        while pos < len(wire):
            n = int.from_bytes(wire[pos:pos + 2], "big")
            bob.open(wire[pos + 2:pos + 2 + n])
            pos += 2 + n
    assert alice.rekeys_sent == bob.rekeys_received > 100
    # A hostile peer: the same kind of key schedule, records straight from its CipherState.
    h_send, m_recv, m_send, _h_recv = _states(engine)
    me = Transport(m_send, m_recv, ChannelConfig())
    sent = 0
    with pytest.raises(xps.PolicyError, match="without a KEY_UPDATE") as err:
        for _ in range(20):  # 20 * 117 bytes: past 1000 on the ninth record
            ct = h_send.encrypt_with_ad(b"", b"\x00" + bytes(100))
            me.open(ct)
            sent += len(ct)
    assert 1000 - 117 < sent <= 1000 and err.value.code == xps.ErrorCode.POLICY
    with pytest.raises(xps.PolicyError):  # dead from then on
        me.open(h_send.encrypt_with_ad(b"", b"\x00x"))


def test_a_key_update_the_receiver_misses_kills_the_channel(engine: xps.Engine) -> None:
    a_send, b_recv, b_send, a_recv = _states(engine)
    alice = Transport(a_send, a_recv, ChannelConfig(rekey_after_messages=1))
    bob = Transport(b_send, b_recv, ChannelConfig())
    first = alice.seal(b"1")
    second = alice.seal(b"2")  # KEY_UPDATE record, then the data record under the new key
    assert bob.open(first[2:]) == b"1"
    n = int.from_bytes(second[:2], "big")
    with pytest.raises(xps.AuthError):  # the KEY_UPDATE record dropped in flight
        bob.open(second[2 + n + 2:])
    with pytest.raises(xps.AuthError):  # dead from then on, even for good records
        bob.open(second[2:2 + n])


# -- a provider swapped in, as a capsule's cutover does ---------------------------------------------

class _Counting:
    def __init__(self, key: Buffer, calls: dict[str, int]) -> None:
        self._inner = ChaCha20Poly1305(bytes(key))
        self._calls = calls
        calls["keys"] += 1

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        self._calls["calls"] += 1
        return self._inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        self._calls["calls"] += 1
        return self._inner.decrypt(nonce, data, aad)


class CountingChaCha(Aead):
    """A real ChaCha20-Poly1305 that counts the keys it is given and the calls it serves."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)

    def __init__(self) -> None:
        self.calls = {"keys": 0, "calls": 0}

    def cipher(self, key: Buffer) -> Any:
        return _Counting(key, self.calls)


def test_a_published_provider_takes_over_new_and_live_channels_and_a_rollback_hands_back(pki: Pki) -> None:
    impl = CountingChaCha()
    swapped = Provider(name="swapped", backend="test", version="2", priority=-1,
                       implementations={"aead.chacha20poly1305": impl})
    eng = xps.Engine(plugins=[ProviderPlugin((swapped,))])
    assert eng.table.provider_for("aead.chacha20poly1305") == "openssl"
    selftest = dict(impl.calls)  # its power-on self-test ran before it could be routed
    prefer = xps.EngineConfig(prefer={"aead.chacha20poly1305": "swapped"})

    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo, engine=eng,
                               config=ChannelConfig(rekey_after_messages=2)) as server:
            live = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                 engine=eng, config=ChannelConfig(rekey_after_messages=2))
            await live.send(b"before")
            assert await live.recv() == b"before"
            seen["before"] = dict(impl.calls)
            old = eng.table
            eng.publish(eng.build_table(config=prefer))  # cutover
            for i in range(3):  # served by the swapped provider from the next record; rekeys rebuild on it
                await live.send(b"after %d" % i)
                assert await live.recv() == b"after %d" % i
            seen["live"] = dict(impl.calls)
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                     engine=eng) as fresh:
                await fresh.send(b"new channel")
                assert await fresh.recv() == b"new channel"
            seen["fresh"] = dict(impl.calls)
            eng.publish(eng.build_table(providers=eng.state.providers, config=xps.EngineConfig()))  # rollback
            assert eng.table.provider_for("aead.chacha20poly1305") == old.provider_for("aead.chacha20poly1305")
            await live.send(b"rolled back")
            assert await live.recv() == b"rolled back"
            seen["rollback"] = dict(impl.calls)
            seen["rekeys"] = live.transport.rekeys_sent
            await live.close()
        return seen

    seen = run(main())
    assert seen["before"] == selftest  # no channel record went through it before the cutover
    assert seen["live"]["calls"] > 0 and seen["live"]["keys"] >= 2  # live channel: rebound, and rekeyed on it
    assert seen["fresh"]["keys"] > seen["live"]["keys"]  # the new channel's handshake and transport keys
    assert seen["rollback"]["calls"] == seen["fresh"]["calls"]  # nothing more after the rollback
    assert seen["rekeys"] >= 1


@settings(max_examples=80, deadline=None)
@given(record=st.binary(max_size=200))
def test_arbitrary_records_only_raise_xps_errors_and_kill_the_transport(engine: xps.Engine, record: bytes) -> None:
    _, b_recv, b_send, _ = _states(engine)
    bob = Transport(b_send, b_recv, ChannelConfig())
    with pytest.raises(xps.XpsError) as info:
        bob.open(record)
    assert bob.error is info.value
    with pytest.raises(xps.XpsError):
        bob.seal(b"after the failure")


def _odd_buffer(kind: str, data: bytes) -> Any:
    import array

    if kind == "bytes":
        return data
    if kind == "subclass":
        return type("B", (bytes,), {})(data)
    if kind == "bytearray":
        return bytearray(data)
    if kind == "view":
        return memoryview(data)
    if kind == "2d" and len(data) % 2 == 0 and data:
        return memoryview(data).cast("B", (2, len(data) // 2))
    if kind == "strided":
        return memoryview(data + data)[::2]
    if kind == "released":
        view = memoryview(data)
        view.release()
        return view
    if kind == "wide":
        return memoryview(array.array("I", [1, 2]))
    return {"str": "x", "int": 7, "none": None, "list": [1], "2d": 1.5}[kind]


_GOOD = {"bytes", "subclass", "bytearray", "view", "2d"}


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["bytes", "subclass", "bytearray", "view", "2d", "strided", "released", "wide",
                             "str", "int", "none", "list"]), data=st.binary(min_size=2, max_size=64))
def test_seal_takes_any_byte_buffer_and_refuses_the_rest_with_a_policy_error(engine: xps.Engine, kind: str,
                                                                           data: bytes) -> None:
    # Found by the adversarial pass: a strided or released view reached memoryview.cast and
    # raised a raw TypeError/ValueError out of Channel.send; a view of 4-byte ints was sent.
    a_send, b_recv, b_send, a_recv = _states(engine)
    alice, bob = Transport(a_send, a_recv, ChannelConfig()), Transport(b_send, b_recv, ChannelConfig())
    value = _odd_buffer(kind, data)
    if kind in _GOOD and not isinstance(value, float):
        wire = alice.seal(value)
        assert bob.open(wire[2:]) == data
    else:
        with pytest.raises(xps.PolicyError) as info:
            alice.seal(value)
        assert data.hex() not in str(info.value)
        assert alice.seal(b"still usable")  # a refused input does not kill the transport


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_frame": 65536}, "max_frame"), ({"max_frame": 10}, "max_frame"), ({"max_message": 0}, "max_message"),
    ({"handshake_timeout_seconds": float("nan")}, "handshake_timeout"), ({"rekey_after_seconds": -1}, "rekey_after"),
    ({"max_pending_handshakes": True}, "max_pending"), ({"max_pending_per_source": 0}, "max_pending_per_source"),
    ({"max_pending_per_source": 1.5}, "max_pending_per_source"), ({"require_pq": "yes"}, "require_pq"),
    ({"accept": ["Noise_*"]}, "accept"), ({"protocol": "TLS"}, "protocol"),
    ({"rekey_after_messages": 0}, "rekey_after_messages"),
    # Larger than a socket timeout or a float deadline can hold: refused here, not a raw
    # OverflowError in the driver later.
    ({"handshake_timeout_seconds": 1e10}, "handshake_timeout"), ({"handshake_timeout_seconds": 10**400}, "handshake"),
    ({"rekey_after_seconds": 10**400}, "rekey_after"), ({"rekey_after_seconds": float("inf")}, "rekey_after"),
    # Past the ceilings a receiver enforces whatever its own configuration says.
    ({"rekey_after_messages": (1 << 32) + 1}, "rekey_after_messages"),
    ({"rekey_after_bytes": (1 << 38) + 1}, "rekey_after_bytes"), ({"rekey_after_bytes": 10**400}, "rekey_after_bytes"),
])
def test_channel_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(xps.PolicyError, match=field):
        ChannelConfig(**kwargs)


@pytest.mark.parametrize(("doc", "key"), [({"handshake_timeout": 1e10}, "'crypto.tls.handshake_timeout'"),
                                          ({"handshake_timeout": "2d"}, "'crypto.tls.handshake_timeout'"),
                                          ({"rekey_bytes": "1TiB"}, "'crypto.tls.rekey_bytes'"),
                                          ({"rekey_messages": 1 << 33}, "'crypto.tls.rekey_messages'"),
                                          ({"max_pending_per_source": 0}, "'crypto.tls.max_pending_per_source'"),
                                          ({"max_pending_per_source": "2"},
                                           "'crypto.tls.max_pending_per_source'"),
                                          # Past 4300 digits an int cannot even be printed: described.
                                          ({"max_frame": 10**5000}, "'crypto.tls.max_frame'.*5000 digits")])
def test_channel_config_from_a_file_names_the_key_as_the_file_spells_it(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(xps.PolicyError, match=key):
        ChannelConfig.from_document(doc)


@settings(max_examples=60, deadline=None)
@given(limits=st.tuples(st.integers(1, 4), st.integers(1, 300), st.floats(0.5, 5.0)),
       max_frame=st.sampled_from([64, 200, 65535]),
       steps=st.lists(st.tuples(st.integers(0, 700), st.sampled_from(["bytes", "bytearray", "view"]),
                                st.floats(0.0, 2.0)), min_size=1, max_size=25))
def test_any_sequence_arrives_whole_in_order_with_key_updates_in_step(
        engine: xps.Engine, limits: tuple[int, int, float], max_frame: int,
        steps: list[tuple[int, str, float]]) -> None:
    # Sequences, not single steps: messages of any size (fragmented at small frames) under
    # tiny rekey limits and a moving clock; every message arrives whole and in order, and
    # the receiver has applied every KEY_UPDATE the sender made, however the limits interleave.
    t = [0.0]
    a_send, b_recv, b_send, a_recv = _states(engine)
    cfg = ChannelConfig(rekey_after_messages=limits[0], rekey_after_bytes=limits[1],
                        rekey_after_seconds=limits[2], max_frame=max_frame)
    alice = Transport(a_send, a_recv, cfg, clock=lambda: t[0])
    bob = Transport(b_send, b_recv, cfg, clock=lambda: t[0])
    for i, (size, kind, dt) in enumerate(steps):
        t[0] += dt
        msg = bytes([i % 256]) * size
        data = {"bytes": msg, "bytearray": bytearray(msg), "view": memoryview(msg)}[kind]
        wire, pos, got = alice.seal(data), 0, []
        while pos < len(wire):
            n = int.from_bytes(wire[pos:pos + 2], "big")
            assert n <= max_frame
            out = bob.open(wire[pos + 2:pos + 2 + n])
            if out is not None:
                got.append(out)
            pos += 2 + n
        assert got == ([msg] if size else [])
        assert bob.rekeys_received == alice.rekeys_sent
