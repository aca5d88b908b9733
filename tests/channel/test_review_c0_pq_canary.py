"""A server's handshake failures before its peer authenticated are not post-quantum failures (review C0).

A PQ rollout's canary reads ``FailureLog.outcomes`` (``xps_channel_handshakes_total{pq,result}``).
A responder learns the protocol from the initiator's preamble, before that peer proved anything:
anyone who reaches the port can name the hybrid protocol and hang up. Such failures are counted as
``(False, "unauthenticated")``; a failure once the peer's certificate and signature verified, and an
initiator's own failures (its protocol is its own offer), keep their post-quantum kind.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
import xpscerpto as xps
from xpscerpto.channel import Channel, ChannelConfig, blocking, serve
from xpscerpto.channel._failures import UNAUTHENTICATED, FailureLog
from xpscerpto.channel._session import Handshake
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL
from xpscerpto.channel.pki import CertificateAuthority
from xpscerpto.errors import PolicyError, XpsError

from .conftest import FAST, Pki, handshake_records, run

PQ = ChannelConfig(protocol=DEFAULT_PQ_PROTOCOL, handshake_timeout_seconds=2.0)
HANGUPS = 5


def _offer_pq(port: int, *, stall: float = 0.0) -> None:
    """The attacker: the 40-byte preamble naming the hybrid protocol, then nothing (no key, no cert)."""
    name = DEFAULT_PQ_PROTOCOL.encode()
    pre = b"XPSC\x01" + bytes([len(name)]) + name
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(struct.pack(">H", len(pre)) + pre)
        assert s.recv(16) == b"\x00\x06XPSC\x01\x00"  # accepted: go on
        time.sleep(stall)


def _wait_counted(failures: FailureLog, n: int) -> dict[tuple[bool, str], int]:
    deadline = time.monotonic() + 10
    while sum(failures.failures.values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return failures.outcome_counts()


def _assert_anonymous(outcomes: dict[tuple[bool, str], int], failures: FailureLog) -> None:
    assert not any(pq for pq, _ in outcomes), outcomes  # nothing a PQ canary reads
    assert outcomes == {(False, UNAUTHENTICATED): HANGUPS + 1}
    assert failures.failures == {"eof": HANGUPS, "timeout": 1}  # the reasons are still counted


def test_blocking_anonymous_pq_offers_that_hang_up_are_counted_unauthenticated(pki: Pki) -> None:
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: None, config=FAST) as server:
        for _ in range(HANGUPS):
            _offer_pq(server.port)
        _offer_pq(server.port, stall=FAST.handshake_timeout_seconds + 0.5)  # a stall: timeout
        _assert_anonymous(_wait_counted(server.failures, HANGUPS + 1), server.failures)


def test_aio_anonymous_pq_offers_that_hang_up_are_counted_unauthenticated(pki: Pki) -> None:
    async def main() -> None:
        async def handler(ch: Channel) -> None:
            return None

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=FAST) as server:
            for _ in range(HANGUPS):
                await asyncio.to_thread(_offer_pq, server.port)
            await asyncio.to_thread(_offer_pq, server.port, stall=FAST.handshake_timeout_seconds + 0.5)
            outcomes = await asyncio.to_thread(_wait_counted, server.failures, HANGUPS + 1)
            _assert_anonymous(outcomes, server.failures)

    run(main())


def test_a_pq_offer_with_a_certificate_that_fails_is_counted_unauthenticated(pki: Pki) -> None:
    """A whole hybrid handshake whose client chain does not verify: the peer never authenticated."""
    stranger_ca = CertificateAuthority.create("Stranger CA")
    stranger = pki.identity("stranger", ca=stranger_ca, dns=["stranger.test"])
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: None, config=FAST) as server:
        with pytest.raises(XpsError), blocking.connect("127.0.0.1", server.port, stranger, pki.trust,
                                                       expected_name="server.test", config=PQ) as ch:
            ch.recv()  # the server refused the client's chain after its last message
        outcomes = _wait_counted(server.failures, 1)
    assert outcomes == {(False, UNAUTHENTICATED): 1}
    assert server.failures.failures == {"cert-untrusted": 1}


def test_a_failure_after_the_peer_authenticated_still_counts_as_post_quantum(pki: Pki) -> None:
    """IKhfs: the server verifies the client in the first message, then cannot send its own
    (its chain does not fit in a handshake message): a real server-side PQ failure, still counted."""
    padding = [f"n{i:05d}.padding-name-to-make-this-certificate-big.test" for i in range(1300)]
    big = pki.identity("big-server", dns=["server.test", *padding])
    ik = "Noise_IKhfs_25519+MLKEM768_ChaChaPoly_SHA256"
    with blocking.serve("127.0.0.1", 0, big, pki.trust, lambda ch: None, config=FAST) as server:
        with pytest.raises(XpsError):
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=ChannelConfig(protocol=ik, handshake_timeout_seconds=2.0),
                             peer_static=big.static_public)
        outcomes = _wait_counted(server.failures, 1)
    assert len(outcomes) == 1 and next(iter(outcomes)) != (False, UNAUTHENTICATED), outcomes
    ((pq, _reason),) = outcomes
    assert pq  # a PQ canary sees it


def test_an_initiators_own_pq_failure_still_counts_as_post_quantum(pki: Pki) -> None:
    """The canary's own dials: a peer that refuses the hybrid offer is a PQ failure on the dialler."""
    classic_only = ChannelConfig(accept=("Noise_XX_*",), handshake_timeout_seconds=2.0)
    dialled = FailureLog()
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: None, config=classic_only) as server:
        with pytest.raises(PolicyError) as info:
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=PQ, failures=dialled)
        assert info.value.reason == "protocol-refused"
        server_side = _wait_counted(server.failures, 1)
    assert dialled.outcome_counts() == {(True, "protocol-refused"): 1}
    assert server_side == {(False, UNAUTHENTICATED): 1}  # the refused peer proved nothing there


@pytest.mark.parametrize("pre_auth, expected", [(True, (False, UNAUTHENTICATED)),
                                                (False, (True, "eof"))])
def test_failure_log_counts_by_whether_the_peer_authenticated(pre_auth: bool, expected: tuple[bool, str]) -> None:
    log = FailureLog()
    err = xps.AuthError("channel: the peer closed the connection", reason="eof")
    assert log.failure("responder", err, protocol=DEFAULT_PQ_PROTOCOL, peer="127.0.0.1", pre_auth=pre_auth) == "eof"
    assert log.outcome_counts() == {expected: 1}
    assert log.failures == {"eof": 1}


def test_a_responder_knows_its_peer_authenticated_only_once_the_signature_verified(pki: Pki,
                                                                                     engine: xps.Engine) -> None:
    def side(initiator: bool) -> Handshake:
        return Handshake(initiator=initiator, identity=pki.client if initiator else pki.server, trust=pki.trust,
                         config=PQ, expected_names=["server.test"] if initiator else None, engine=engine)

    def step(hs: Handshake, wire: bytes) -> bytes:
        return b"".join(hs.receive(r) for r in handshake_records(wire))

    ini, res = side(True), side(False)
    seen: list[bool] = []
    to_res = ini.start()
    while not res.finished:
        to_ini = step(res, to_res)
        seen.append(res.peer_authenticated)
        to_res = step(ini, to_ini)
    assert seen == [False] * (len(seen) - 1) + [True]  # XX: the client's chain comes in the last message
    assert res.protocol == DEFAULT_PQ_PROTOCOL

