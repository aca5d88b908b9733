"""The hybrid post-quantum mode (XXhfs with ML-KEM-768) over real sockets: it works, a PQ-requiring
peer refuses a classic one, and a stripped, altered or downgraded KEM exchange fails."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest
import xpscerpto as xps
from xpscerpto.channel import ChannelConfig, connect, serve
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL

from .conftest import Pki, echo, run
from .proxy import Hook, Proxy, passthrough

PQ = ChannelConfig(require_pq=True, handshake_timeout_seconds=2.0)
CLASSIC = ChannelConfig(handshake_timeout_seconds=2.0)
E, EK, CT = 32, 1184, 1088


async def _try(pki: Pki, client_cfg: ChannelConfig, server_cfg: ChannelConfig, c2s: Hook = passthrough,
               s2c: Hook = passthrough) -> tuple[str | xps.XpsError, Counter[str]]:
    async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo, config=server_cfg) as server:
        proxy = Proxy(server.port, c2s, s2c)
        port = await proxy.start()
        try:
            async with await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test",
                                     config=client_cfg) as ch:
                await ch.send(b"pq?")
                assert await ch.recv() == b"pq?"
                result: str | xps.XpsError = ch.protocol
        except xps.XpsError as exc:
            result = exc
        async with asyncio.timeout(5):
            while not (server.failures.failures or server.failures.established):
                await asyncio.sleep(0.01)
        await proxy.close()
        return result, server.failures.failures


def test_pq_channel_works_and_costs_the_kem_bytes(pki: Pki) -> None:
    proto, failures = run(_try(pki, PQ, PQ))
    assert proto == DEFAULT_PQ_PROTOCOL and not failures
    proto, _ = run(_try(pki, PQ, CLASSIC))  # a classic-default server accepts a PQ offer
    assert proto == DEFAULT_PQ_PROTOCOL


def test_a_pq_requiring_server_refuses_a_classic_client(pki: Pki) -> None:
    err, failures = run(_try(pki, CLASSIC, PQ))
    assert isinstance(err, xps.PolicyError) and err.reason == "pq-required"
    assert failures == Counter({"pq-required": 1})


def test_a_pq_requiring_client_refuses_a_server_without_pq(pki: Pki) -> None:
    err, _ = run(_try(pki, PQ, ChannelConfig(accept=("Noise_XX_*",), handshake_timeout_seconds=2.0)))
    assert isinstance(err, xps.PolicyError) and err.reason == "protocol-refused"
    with pytest.raises(xps.PolicyError, match="require_pq"):
        ChannelConfig(require_pq=True, protocol="Noise_XX_25519_ChaChaPoly_SHA256")


def _edit(index: int, edit: Callable[[bytes], bytes]) -> Hook:
    def hook(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i != index:
            return [rec], False
        body = edit(rec[2:])
        return [len(body).to_bytes(2, "big") + body], False
    return hook


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def edit(body: bytes) -> bytes:
        b = bytearray(body)
        b[offset] ^= 0x01
        return bytes(b)
    return edit


def _coefficient_over_q(offset: int) -> Callable[[bytes], bytes]:
    def edit(body: bytes) -> bytes:
        b = bytearray(body)
        b[offset] = 0xFF  # the first 12-bit coefficient of the key becomes 4095 (q = 3329)
        b[offset + 1] |= 0x0F
        return bytes(b)
    return edit


@pytest.mark.parametrize(("c2s", "s2c", "client_reason", "server_reason"), [
    # message 1 without the KEM public key: the server finds it truncated
    (_edit(1, lambda b: b[:E]), passthrough, "eof", "truncated"),
    # an altered KEM public key that is still a valid one (a bit of its seed rho): hashed, so
    # the client fails on message 2. (The bit this case used to flip, in a coefficient, made an
    # invalid key for about 1 random key in 13, refused as such: the next case, made deterministic.)
    (_edit(1, _flip(E + EK - 8)), passthrough, None, None),
    # a KEM public key with a coefficient >= q: FIPS 203's modulus check refuses it as a key
    (_edit(1, _coefficient_over_q(E)), passthrough, None, "key"),
    # an altered KEM ciphertext (encrypted under the ee key): the client fails on message 2
    (passthrough, _edit(1, _flip(E + 10)), None, None),
    # the ciphertext stripped from message 2
    (passthrough, _edit(1, lambda b: b[:E] + b[E + CT + 16:]), None, None),
])
def test_stripped_or_altered_kem_messages_fail(pki: Pki, c2s: Hook, s2c: Hook, client_reason: str | None,
                                                server_reason: str | None) -> None:
    err, failures = run(_try(pki, PQ, PQ, c2s, s2c))
    assert isinstance(err, xps.AuthError)
    if client_reason is not None:
        assert err.reason == client_reason
    if server_reason is not None:
        assert failures == Counter({server_reason: 1})
    else:
        assert failures and not set(failures) - {"eof", "auth", "truncated"}


def test_a_downgrade_to_classic_in_flight_fails(pki: Pki) -> None:
    """Rewrite the PQ offer to classic and strip the KEM key: the server (accepting both) runs XX,
    but the offer is in both prologues, so the handshake fails instead of silently downgrading."""
    classic = b"Noise_XX_25519_ChaChaPoly_SHA256"

    def downgrade(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i == 0:
            body = b"XPSC\x01" + bytes([len(classic)]) + classic
        elif i == 1:
            body = rec[2:2 + E]
        else:
            return [rec], False
        return [len(body).to_bytes(2, "big") + body], False

    err, _ = run(_try(pki, PQ, CLASSIC, downgrade))
    assert isinstance(err, xps.AuthError)

