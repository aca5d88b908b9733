"""Review s9 F3: a capsule another node's signed rollback took out while this node had moved on
from it is forgotten as a predecessor here, so a later plain rollback never brings it back."""

from __future__ import annotations

import xpscerpto as xps
from xpscerpto.capsules.updater import Updater, rollback_offline
from xpscerpto.db.capsule_announce import Announcer
from xpscerpto.home import Home

from tests.capsules.test_cli_service import wait_for
from tests.capsules.test_updater import OP, Publisher, _states, _updater, publisher
from tests.db.test_capsule_announce import _announced, _events, _journal_key, _other_node

__all__ = ["publisher"]


def _withdrawn(up: Updater) -> list[dict[str, object]]:
    return [e for e in _events(up, "PATCH_ROLLBACK") if e.get("active") is False]


def test_a_version_rolled_back_on_one_node_is_not_restored_by_a_later_plain_rollback_elsewhere(
        publisher: Publisher, pg_dsn: str) -> None:
    # A, B, C serve 1.0.0; B's operator rolls it back (offline) while A and C move on to 1.1.0.
    # A later plain rollback of 1.1.0 used to restore 1.0.0 on A and C (their predecessor) while
    # B went to the built-in provider: the fleet split silently.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    eng_c, c = _other_node(publisher, "home-c")
    ka, kb, kc = _journal_key(a), _journal_key(b), _journal_key(c)
    nodes = {"a": Announcer(pg_dsn, a, node="a", poll=0.2, peers=[kb, kc]).start(),
             "b": Announcer(pg_dsn, b, node="b", poll=0.2, peers=[ka, kc]).start(),
             "c": Announcer(pg_dsn, c, node="c", poll=0.2, peers=[ka, kb]).start()}
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256]
                 and [x.sha256 for x in c.state.active] == [v1.sha256], "b and c to follow 1.0.0")
        nodes["b"].stop()
        b.close()  # node b's engine stops; its operator rolls 1.0.0 back offline
        rollback_offline(b.home, OP, operator="ops", notice=lambda _: None, state_store=_states(b.home))
        v2 = a.apply(publisher.capsule("1.1.0"))
        wait_for(lambda: [x.sha256 for x in c.state.active] == [v2.sha256], "c to follow 1.1.0")
        eng_b = xps.Engine()
        b = _updater(eng_b, b.home)
        nodes["b"] = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[ka, kc]).start()
        wait_for(lambda: _announced(pg_dsn) == 3 and [x.sha256 for x in b.state.active] == [v2.sha256]
                 and nodes["a"]._seen == 3 and nodes["c"]._seen == 3, "b's rollback of 1.0.0 to be followed")
        for up in (a, c):
            # Routing did not change; the record says so, and nothing was announced for it.
            assert [(x.sha256, x.replaced) for x in up.state.active] == [(v2.sha256, None)]
            rec = _withdrawn(up)[0]
            assert (rec["sha256"], rec["version"], rec["to"], rec["operator"]) == \
                (v1.sha256, "1.0.0", "1.1.0", "announce:b")
        assert _announced(pg_dsn) == 3
        # A restart keeps it (digest and anchor of the saved state check out).
        nodes["a"].stop()
        a.close()
        eng_a = xps.Engine()
        a = _updater(eng_a, Home.resolve(publisher.home.root))
        assert [(x.sha256, x.replaced) for x in a.state.active] == [(v2.sha256, None)]
        assert eng_a.table.provider_for(OP) == v2.name
        nodes["a"] = Announcer(pg_dsn, a, node="a", poll=0.2, peers=[kb, kc]).start()
        before = len(_events(a, "PATCH_ROLLBACK"))
        a.rollback(OP, operator="ops")
        assert len(_events(a, "PATCH_ROLLBACK")) == before + 1
        wait_for(lambda: all(e.table.provider_for(OP) == "sodium" for e in (eng_a, eng_b, eng_c)),
                 "every node to serve the built-in provider")
        assert a.state.active == () and b.state.active == () and c.state.active == ()
        assert len(_withdrawn(c)) == 1
    finally:
        for n in nodes.values():
            n.stop()
        b.close()
        c.close()


def test_withdrawing_is_idempotent_and_a_sha_nobody_replaced_changes_nothing(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    v1 = up.apply(publisher.capsule("1.0.0"))
    v2 = up.apply(publisher.capsule("1.1.0"))
    assert up.state.active[0].replaced == v1.sha256
    assert up.withdraw("ab" * 32, operator="announce:x", reason="rolled back on x") is False
    assert up.withdraw(v2.sha256, operator="announce:x", reason="rolled back on x") is False  # active, not replaced
    assert _withdrawn(up) == [] and up.state.active[0].replaced == v1.sha256
    assert up.withdraw(v1.sha256, operator="announce:x", reason="rolled back on x") is True
    saved = _states(publisher.home).load()
    assert [(x.sha256, x.replaced, x.replaced_version) for x in saved.active] == [(v2.sha256, None, None)]
    assert up.withdraw(v1.sha256, operator="announce:x", reason="rolled back on x") is False
    assert len(_withdrawn(up)) == 1
    assert "not active here" in str(_withdrawn(up)[0]["reason"])
    up.close()
    again = _updater(xps.Engine(), Home.resolve(publisher.home.root))
    assert [(x.sha256, x.replaced) for x in again.state.active] == [(v2.sha256, None)]
    again.rollback(OP, operator="ops")
    assert again.state.active == () and _events(again, "PATCH_ROLLBACK")[-1]["to"] == "built-in"
