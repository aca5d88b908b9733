"""A peer with no credentials cannot abort a fleet's PQ rollout; real PQ failures still do (review C0).

Three nodes on a real PostgreSQL with real channel servers (the fleet of test_pq_rollout). An
attacker who reaches the canary's port sends the preamble naming the hybrid protocol and hangs
up, again and again: no certificate, no key. Those are not post-quantum handshake failures, so
the canary stays in ``canary``. The canary's own hybrid dials that fail still abort it.
"""

from __future__ import annotations

import socket
import struct
import time

from xpscerpto.channel import ChannelConfig
from xpscerpto.channel import blocking as ch
from xpscerpto.channel._failures import UNAUTHENTICATED, FailureLog
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL, DEFAULT_PROTOCOL
from xpscerpto.metrics import Metrics
from xpscerpto.orchestrator import PqRollout
from xpscerpto.orchestrator.pq_rollout import _counts

from tests.orchestrator import test_pq_rollout as base
from tests.orchestrator.test_pq_rollout import NAMES, Node, Pki, _echo, _roles, _tick_all, _wait_postures

# The three-node fleet on a real PostgreSQL, and its CA: the same fixtures as test_pq_rollout.
fleet = base.fleet
pki = base.pki

HEALTHY = 30
HANGUPS = 25


def _hang_up_after_pq_offer(port: int) -> None:
    name = DEFAULT_PQ_PROTOCOL.encode()
    pre = b"XPSC\x01" + bytes([len(name)]) + name
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(struct.pack(">H", len(pre)) + pre)
        s.recv(16)  # the responder's "go on"; then gone, having proved nothing


def test_anonymous_pq_hang_ups_do_not_abort_the_rollout_but_real_pq_failures_do(fleet: list[Node],
                                                                                pki: Pki) -> None:
    rollout = PqRollout("pq", nodes=NAMES, canary=0.3, watch="1h", max_failure_rate=0.05)
    leader, canary, others = _roles(fleet, rollout)
    leader.orch.tick()
    leader.orch.roll_out_pq(rollout)
    _wait_postures(fleet, {n.name: "offer" if n is canary else "accept" for n in fleet})
    _tick_all(fleet, leader)  # the baseline
    for _ in range(HEALTHY):
        assert canary.call(others[0], pki) == DEFAULT_PQ_PROTOCOL
    for _ in range(HANGUPS):
        _hang_up_after_pq_offer(canary.server.port)
    deadline = time.monotonic() + 10
    while sum(canary.server.failures.failures.values()) < HANGUPS and time.monotonic() < deadline:
        time.sleep(0.02)
    _tick_all(fleet, leader)
    status = leader.orch.pq_status()[0]
    assert status["phase"] == "canary", status  # an unauthenticated peer aborted nothing
    assert canary.server.failures.outcome_counts()[(False, UNAUTHENTICATED)] == HANGUPS
    assert status["detail"].get("failures", 0) == 0
    assert {n.name: n.posture.posture for n in fleet} == {n.name: "offer" if n is canary else "accept"
                                                          for n in fleet}
    assert not [e for e in leader.ring.audit.tail(100) if e["event"] == "INCIDENT"]

    # The canary stays meaningful: its own hybrid dials to a peer that refuses them abort it.
    legacy = ch.serve("127.0.0.1", 0, pki.identity("legacy"), pki.trust, _echo,
                      config=ChannelConfig(accept=("Noise_XX_*",), handshake_timeout_seconds=3.0))
    try:
        legacy_node = Node("legacy", canary.ring, canary.orch, canary.identity, legacy, canary.posture, canary.dialled)
        for _ in range(HANGUPS):
            assert canary.call(legacy_node, pki) == "protocol-refused"
    finally:
        legacy.close()
    _tick_all(fleet, leader)
    status = leader.orch.pq_status()[0]
    assert status["phase"] == "aborted" and status["detail"]["failures"] == HANGUPS, status
    _wait_postures(fleet, dict.fromkeys(NAMES, "classic"))
    assert canary.call(others[0], pki) == DEFAULT_PROTOCOL
    incident = [e for e in leader.ring.audit.tail(100) if e["event"] == "INCIDENT"]
    assert incident and incident[-1]["failures"] == HANGUPS


def test_the_leader_never_counts_an_unauthenticated_result_as_a_pq_failure(fleet: list[Node]) -> None:
    """Defence in depth on the reading side: a row ``result="unauthenticated"`` is no failure even
    labelled ``pq="true"`` (as a node could publish it), through the real metrics and fleet table."""
    node = fleet[0]
    log = FailureLog()
    log.outcomes[(True, UNAUTHENTICATED)] += 7
    log.outcomes[(True, "eof")] += 2
    log.outcomes[(True, "ok")] += 5
    metrics = Metrics()
    metrics.watch_channel(log)
    node.orch.metrics = metrics
    node.orch.tick()  # publishes this node's counters to the fleet table
    assert _counts(node.orch, (node.name,), pq=True) == (5.0, 2.0)
