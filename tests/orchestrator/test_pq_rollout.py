"""Hybrid post-quantum channel rollout over three nodes on a real PostgreSQL, with real channel
servers on 127.0.0.1: canary nodes first, decisions from every node's shared counters, then
everyone, then classic refused — or an abort back to classic with an incident."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from xpscerpto.channel import ChannelConfig, Identity, Trust
from xpscerpto.channel import blocking as ch
from xpscerpto.channel._failures import FailureLog
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL, DEFAULT_PROTOCOL
from xpscerpto.channel.pki import CertificateAuthority
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.keyring import Keyring
from xpscerpto.metrics import Metrics
from xpscerpto.orchestrator import Orchestrator, PqPosture, PqRollout, channel_config

from tests.capsules.test_watch import wait_for
from tests.db.test_postgres import _node
from tests.orchestrator.rows import edit_sealed

BASE = ChannelConfig(handshake_timeout_seconds=3.0)
NAMES = ("n0", "n1", "n2")


@dataclass
class Pki:
    ca: CertificateAuthority
    trust: Trust

    def identity(self, name: str) -> Identity:
        chain, key = self.ca.issue(name, dns=[f"{name}.test"])
        return Identity(chain, bytearray(key.private_bytes_raw()))


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = CertificateAuthority.create("Fleet CA")
    return Pki(ca, Trust([ca.certificate], [ca.crl()]))


def _echo(channel: ch.BlockingChannel) -> None:
    while msg := channel.recv():
        channel.send(msg)


@dataclass
class Node:
    name: str
    ring: Keyring
    orch: Orchestrator
    identity: Identity
    server: ch.BlockingServer
    posture: PqPosture
    dialled: FailureLog  # this node's outgoing handshakes

    def call(self, other: Node, pki: Pki, config: ChannelConfig | None = None) -> str:
        """One channel to ``other``: its protocol, or the refusal's reason."""
        try:
            with ch.connect("127.0.0.1", other.server.port, self.identity, pki.trust,
                            expected_name=f"{other.name}.test", config=config or self.posture.config,
                            failures=self.dialled) as c:
                c.send(b"ping")
                assert c.recv() == b"ping"
                return c.protocol
        except XpsError as exc:
            return exc.reason or exc.code.value


@pytest.fixture
def fleet(pg_dsn: str, tmp_path: Path, pki: Pki) -> Iterator[list[Node]]:
    nodes: list[Node] = []
    with contextlib.ExitStack() as stack:
        for name in NAMES:
            ring = _node(tmp_path, name, pg_dsn, like=None if not nodes else tmp_path / "n0")
            stack.callback(ring.close)
            identity = pki.identity(name)
            server = ch.serve("127.0.0.1", 0, identity, pki.trust, _echo, config=BASE)
            stack.callback(server.close)
            metrics = Metrics()
            metrics.watch_channel(server.failures)
            dialled = FailureLog()
            metrics.watch_channel(dialled)
            orch = Orchestrator(ring, node=name, lease_ttl=30, interval=0.1, metrics=metrics)
            posture = PqPosture(ring, node=name, base=BASE, on_change=server.reconfigure, poll=0.2).start()
            stack.callback(posture.stop)
            nodes.append(Node(name, ring, orch, identity, server, posture, dialled))
        yield nodes


def _roles(nodes: list[Node], rollout: PqRollout) -> tuple[Node, Node, list[Node]]:
    """(leader, canary, others): the leader is a node that is *not* the canary, so the canary's
    numbers reach the decision only through the shared counters."""
    (canary_name,) = rollout.canary_nodes()
    canary = next(n for n in nodes if n.name == canary_name)
    others = [n for n in nodes if n is not canary]
    return others[0], canary, others


def _tick_all(nodes: list[Node], leader: Node) -> None:
    for n in nodes:  # followers publish their counters first, then the leader decides
        if n is not leader:
            n.orch.tick()
    leader.orch.tick()


def _wait_postures(nodes: list[Node], expected: dict[str, str]) -> None:
    wait_for(lambda: {n.name: n.posture.posture for n in nodes} == expected, f"postures {expected}", timeout=10)


def test_a_pq_rollout_moves_the_canary_then_everyone_then_refuses_classic(fleet: list[Node], pki: Pki) -> None:
    rollout = PqRollout("pq", nodes=NAMES, canary=0.3, watch="1s", max_failure_rate=0.05)
    leader, canary, others = _roles(fleet, rollout)
    leader.orch.tick()  # takes the lease
    assert leader.orch.status()["is_leader"]
    assert canary.call(others[0], pki) == DEFAULT_PROTOCOL  # before: classic everywhere
    leader.orch.roll_out_pq(rollout)
    _wait_postures(fleet, {n.name: "offer" if n is canary else "accept" for n in fleet})
    _tick_all(fleet, leader)  # baseline of the canary's PQ handshakes
    for _ in range(25):
        assert canary.call(others[0], pki) == DEFAULT_PQ_PROTOCOL  # the canary offers, peers accept
    assert others[0].call(others[1], pki) == DEFAULT_PROTOCOL  # non-canary pairs stay classic
    _tick_all(fleet, leader)
    assert leader.orch.pq_status()[0]["phase"] == "canary"  # the watch is not over
    wait_for(lambda: (_tick_all(fleet, leader), leader.orch.pq_status()[0]["phase"])[1] == "committed",
             "commit after the watch", timeout=10)
    detail = leader.orch.pq_status()[0]["detail"]
    assert detail["total"] >= 25 and detail["failures"] == 0  # the canary's numbers, read from the fleet table
    _wait_postures(fleet, dict.fromkeys(NAMES, "offer"))
    assert others[0].call(others[1], pki) == DEFAULT_PQ_PROTOCOL
    # An old peer still dialling classic keeps the rollout from retiring classic.
    assert others[0].call(canary, pki, BASE) == DEFAULT_PROTOCOL
    _tick_all(fleet, leader)
    assert leader.orch.pq_status()[0]["phase"] == "committed"
    wait_for(lambda: (_tick_all(fleet, leader), leader.orch.pq_status()[0]["phase"])[1] == "retired",
             "retire after a quiet watch", timeout=10)
    _wait_postures(fleet, dict.fromkeys(NAMES, "require"))
    assert canary.call(others[1], pki) == DEFAULT_PQ_PROTOCOL
    assert others[1].call(canary, pki, BASE) == "pq-required"  # classic is refused now
    phases = [e["phase"] for e in leader.ring.audit.tail(200) if e["event"] == "PQ_ROLLOUT"]
    assert phases == ["committed", "retired"]


def test_a_canary_whose_pq_handshakes_fail_aborts_back_to_classic_with_an_incident(
        fleet: list[Node], pki: Pki) -> None:
    rollout = PqRollout("pq", nodes=NAMES, canary=0.3, watch="1h", max_failure_rate=0.05)
    leader, canary, others = _roles(fleet, rollout)
    leader.orch.tick()
    leader.orch.roll_out_pq(rollout)
    _wait_postures(fleet, {n.name: "offer" if n is canary else "accept" for n in fleet})
    _tick_all(fleet, leader)
    # A peer outside the rollout that only speaks classic: every PQ offer to it is refused.
    legacy = ch.serve("127.0.0.1", 0, pki.identity("legacy"), pki.trust, _echo,
                      config=ChannelConfig(accept=("Noise_XX_*",), handshake_timeout_seconds=3.0))
    try:
        legacy_node = Node("legacy", canary.ring, canary.orch, canary.identity, legacy, canary.posture, canary.dialled)
        for _ in range(25):
            assert canary.call(legacy_node, pki) == "protocol-refused"
    finally:
        legacy.close()
    _tick_all(fleet, leader)
    status = leader.orch.pq_status()[0]
    assert status["phase"] == "aborted" and status["detail"]["failures"] >= 25
    _wait_postures(fleet, dict.fromkeys(NAMES, "classic"))
    assert canary.call(others[0], pki) == DEFAULT_PROTOCOL
    incident = [e for e in leader.ring.audit.tail(100) if e["event"] == "INCIDENT"]
    assert incident and incident[-1]["rollout"] == "pq" and incident[-1]["node"] == leader.name


def test_a_node_is_in_one_live_rollout_and_a_name_is_used_once(fleet: list[Node]) -> None:
    orch = fleet[0].orch
    orch.roll_out_pq(PqRollout("a", nodes=("n0", "n1")))
    with pytest.raises(PolicyError, match="n1"):
        orch.roll_out_pq(PqRollout("b", nodes=("n1", "n2")))
    with pytest.raises(PolicyError, match="exists"):
        orch.roll_out_pq(PqRollout("a", nodes=("n2",)))
    with pytest.raises(PolicyError, match="rollout"):
        orch.roll_out_pq("a")  # type: ignore[arg-type]
    orch.roll_out_pq(PqRollout("c", nodes=("n2",)))
    assert [r["name"] for r in orch.pq_status()] == ["a", "c"]


@pytest.mark.parametrize(("kw", "field"), [
    ({"nodes": ()}, "nodes"), ({"nodes": ("a", "a")}, "nodes"), ({"nodes": ["a"]}, "nodes"),
    ({"nodes": ("a\n",)}, "nodes"), ({"protocol": DEFAULT_PROTOCOL}, "protocol"), ({"protocol": "TLS"}, "protocol"),
    ({"protocol": 7}, "protocol"), ({"canary": 0}, "canary"), ({"canary": True}, "canary"),
    ({"max_failure_rate": 2}, "max_failure_rate"), ({"watch": "soon"}, "watch"), ({"name": ""}, "name")])
def test_a_bad_pq_rollout_is_refused_naming_the_field(kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "r", "nodes": ("a",), **kw}
    with pytest.raises(PolicyError, match=field):
        PqRollout(**args)  # type: ignore[arg-type]


def test_each_posture_maps_to_a_channel_configuration() -> None:
    narrow = ChannelConfig(accept=("Noise_XX_*",))
    assert channel_config("classic", narrow) is narrow
    accept = channel_config("accept", narrow)
    assert accept.accept == ("Noise_XX_*", DEFAULT_PQ_PROTOCOL) and accept.offered_protocol == DEFAULT_PROTOCOL
    offer = channel_config("offer", narrow)
    assert offer.offered_protocol == DEFAULT_PQ_PROTOCOL and not offer.require_pq
    require = channel_config("require", BASE)
    assert require.require_pq and require.accept == BASE.accept
    with pytest.raises(PolicyError, match="posture"):
        channel_config("maybe", BASE)


def test_a_posture_follower_keeps_its_posture_while_the_database_is_away(
        fleet: list[Node], pki: Pki, pg_server: object) -> None:
    node, peer = fleet[0], fleet[1]
    node.orch.roll_out_pq(PqRollout("pq", nodes=NAMES, canary=1.0))
    wait_for(lambda: node.posture.posture == "offer", "offer")
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        with pytest.raises(XpsError):
            node.posture.refresh()
        wait_for(lambda: node.posture.last_error is not None, "the follower noticing the outage")
        assert node.posture.posture == "offer"  # no silent fallback to classic
        assert node.call(peer, pki) == DEFAULT_PQ_PROTOCOL  # channels keep working without the database
    finally:
        pg_server.start()  # type: ignore[attr-defined]
    wait_for(lambda: node.posture.last_error is None, "the follower back", timeout=20)


@pytest.mark.parametrize(("column", "value"), [
    ("nodes", "not json"), ("nodes", '{"n0": 1}'), ("nodes", "[1, 2]"), ("nodes", "[]"),
    ("protocol", "Noise_XX_25519_ChaChaPoly_SHA256"), ("protocol", "garbage"), ("phase", "required-ish"),
    ("canary", "-1"), ("max_failure_rate", "7"), ("watch_seconds", "-5"), ("detail", '{"base": "x"}'),
    ("detail", "not json")])
def test_a_rollout_row_edited_outside_xps_is_a_typed_refusal_and_no_silent_fallback(
        pg_dsn: str, tmp_path: Path, column: str, value: str) -> None:
    ring = _node(tmp_path, "n0", pg_dsn)
    posture = PqPosture(ring, node="n0", base=BASE, poll=0.2).start()
    node = Node("n0", ring, Orchestrator(ring, node="n0", lease_ttl=30), None, None, posture, None)  # type: ignore[arg-type]
    try:
        _edit_and_check(node, column, value)
    finally:
        posture.stop()
        ring.close()


def _edit_and_check(node: Node, column: str, value: str) -> None:
    node.orch.roll_out_pq(PqRollout("pq", nodes=NAMES, canary=1.0))
    node.orch.tick()  # leader; the rollout's baseline recorded
    wait_for(lambda: node.posture.posture == "offer", "offer")
    # Sealed again: a keyed writer's malformed row, which the validation behind the seal refuses.
    edit_sealed(node.ring, sealed.ROLLOUTS, column,
                float(value) if column in ("canary", "max_failure_rate", "watch_seconds") else value)
    if column != "detail":
        with pytest.raises(PolicyError, match="malformed") as info:
            node.posture.refresh()
        assert "xps_pq_rollouts" in str(info.value)
        assert node.posture.posture == "offer"  # kept, not reset to classic
    with pytest.raises(PolicyError, match="malformed"):
        node.orch.tick()
    status = node.orch.pq_status()
    shown = "canary" if (column, value) == ("detail", '{"base": "x"}') else "malformed"
    assert (status[0]["name"], status[0]["phase"]) == ("pq", shown)  # status shows the damage, never crashes
