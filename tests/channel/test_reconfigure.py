"""A server reconfigured while clients connect (a PQ rollout flipping postures): every handshake
gets one whole configuration — it succeeds or is refused with a typed reason — and the server
keeps serving; open channels keep the configuration they were made with."""

from __future__ import annotations

import threading

import pytest
from xpscerpto.channel import ChannelConfig
from xpscerpto.channel import blocking as ch
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL, DEFAULT_PROTOCOL
from xpscerpto.errors import PolicyError, XpsError

from .conftest import Pki

CLASSIC = ChannelConfig(handshake_timeout_seconds=5.0)
PQ = ChannelConfig(require_pq=True, handshake_timeout_seconds=5.0)
CLASSIC_ONLY = ChannelConfig(accept=("Noise_XX_*",), handshake_timeout_seconds=5.0)


def _echo(channel: ch.BlockingChannel) -> None:
    while msg := channel.recv():
        channel.send(msg)


def _call(pki: Pki, port: int, config: ChannelConfig) -> str:
    try:
        with ch.connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test", config=config) as c:
            c.send(b"x")
            assert c.recv() == b"x"
            return c.protocol
    except XpsError as exc:
        return exc.reason or str(exc.code)


def test_reconfiguring_while_clients_connect_gives_each_handshake_one_whole_configuration(pki: Pki) -> None:
    server = ch.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=CLASSIC)
    stop = threading.Event()
    results: list[str] = []
    lock = threading.Lock()

    def flip() -> None:
        configs = (CLASSIC, PQ, CLASSIC_ONLY)
        i = 0
        while not stop.is_set():
            server.reconfigure(configs[i % 3])
            i += 1

    def dial(config: ChannelConfig) -> None:
        for _ in range(8):
            outcome = _call(pki, server.port, config)
            with lock:
                results.append(outcome)

    flipper = threading.Thread(target=flip)
    flipper.start()
    clients = [threading.Thread(target=dial, args=(cfg,)) for cfg in (CLASSIC, PQ, CLASSIC, PQ)]
    try:
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=120)
    finally:
        stop.set()
        flipper.join()
    try:
        assert len(results) == 32
        assert set(results) <= {DEFAULT_PROTOCOL, DEFAULT_PQ_PROTOCOL, "pq-required", "protocol-refused"}, results
        assert server.failures.established + sum(server.failures.failures.values()) == 32
        server.reconfigure(CLASSIC)
        assert _call(pki, server.port, CLASSIC) == DEFAULT_PROTOCOL  # still serving
    finally:
        server.close()


def test_an_open_channel_keeps_its_configuration_and_a_bad_one_is_refused(pki: Pki) -> None:
    server = ch.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=CLASSIC)
    try:
        with ch.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                        config=CLASSIC) as open_channel:
            server.reconfigure(PQ)
            assert server.config is PQ
            open_channel.send(b"still here")
            assert open_channel.recv() == b"still here"  # made before: unaffected
            assert _call(pki, server.port, CLASSIC) == "pq-required"  # new ones: the new configuration
        with pytest.raises(PolicyError, match="config"):
            server.reconfigure({"require_pq": True})  # type: ignore[arg-type]
        assert server.config is PQ
    finally:
        server.close()


def test_the_asyncio_server_reconfigures_the_same_way(pki: Pki) -> None:
    from xpscerpto.channel import connect, serve

    from .conftest import echo, run

    async def main() -> tuple[str, str]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo, config=CLASSIC) as server:
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                     config=CLASSIC) as before:
                server.reconfigure(PQ)
                await before.send(b"x")
                assert await before.recv() == b"x"
            try:
                await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                              config=CLASSIC)
                refused = "no refusal"
            except PolicyError as exc:
                refused = str(exc.reason)
            with pytest.raises(PolicyError, match="config"):
                server.reconfigure(None)  # type: ignore[arg-type]
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                     config=PQ) as after:
                return refused, after.protocol

    assert run(main()) == ("pq-required", DEFAULT_PQ_PROTOCOL)
