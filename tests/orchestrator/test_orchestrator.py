"""Lease, fencing and scheduled rotation on a real PostgreSQL, several orchestrators in one process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from xpscerpto.db import Database
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.errors import KeyError_, PolicyError
from xpscerpto.keyring import Keyring
from xpscerpto.orchestrator import Fenced, Lease, Orchestrator, Plan, Schedule

from tests.db.test_postgres import _node
from tests.orchestrator.rows import due_now, edit_sealed


@pytest.fixture
def rings(pg_dsn: str, tmp_path: Path) -> list[Keyring]:
    first = _node(tmp_path, "n0", pg_dsn)
    nodes = [first] + [_node(tmp_path, f"n{i}", pg_dsn, like=tmp_path / "n0") for i in (1, 2)]
    first.create("orders", "AES-256-GCM")
    yield nodes
    for r in nodes:
        r.close()


_due_now = due_now


def _traffic(ring: Keyring, key: str) -> None:
    """30 decryptions under ``key``, every third of a tampered blob (10 authentication failures)."""
    from xpscerpto.errors import AuthError

    for i in range(30):
        blob = bytearray(ring.encrypt(key, b"x"))
        if i % 3 == 0:
            blob[-1] ^= 1
            with pytest.raises(AuthError):
                ring.decrypt(bytes(blob))
        else:
            ring.decrypt(bytes(blob))


@pytest.mark.parametrize("policy", [None, 3, "weekly", "every=", "every=0s", "every=11000d", "every=-1d"])
def test_a_bad_schedule_is_refused_naming_the_field(policy: object) -> None:
    with pytest.raises(PolicyError, match="policy"):
        Plan("p", key="k", policy=policy)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "kw"), [("name", {"name": ""}), ("key", {"key": 7}), ("grace", {"grace": "soon"}),
                                           ("suite", {"suite": "ROT13"}), ("kek", {"kek": "usb"})])
def test_a_bad_plan_field_is_refused_naming_it(field: str, kw: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "p", "key": "k", "policy": "monthly", **kw}
    with pytest.raises(PolicyError, match=field):
        Plan(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "field"), [
    ({"node": 7}, "node"), ({"node": b"n0"}, "node"), ({"node": ["n0"]}, "node"), ({"node": ""}, "node"),
    ({"node": None}, "node"), ({"node": "a#b"}, "node"),  # '#' would make it lead as "a"
    ({"node": "\udcff"}, "node"), ({"node": "n" * 65}, "node"), ({"node": " n0"}, "node"),
    ({"lease_ttl": "10"}, "lease_ttl"), ({"lease_ttl": None}, "lease_ttl"), ({"lease_ttl": True}, "lease_ttl"),
    ({"lease_ttl": float("nan")}, "lease_ttl"), ({"lease_ttl": float("inf")}, "lease_ttl"),
    ({"lease_ttl": 0}, "lease_ttl"), ({"lease_ttl": 10**400}, "lease_ttl"),
])
def test_a_bad_node_or_lease_is_refused_naming_it(rings: list[Keyring], kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"node": "n0", "lease_ttl": 10.0, "interval": 1.0, **kw}
    with pytest.raises(PolicyError, match=f"^XPS_ERR_POLICY: {field}: ") as ei:
        Orchestrator(rings[0], **args)  # type: ignore[arg-type]
    assert "\udcff" not in str(ei.value) and "a#b" not in str(ei.value)  # the value is not repeated


def test_one_plan_edited_in_the_database_does_not_stop_the_others(rings: list[Keyring]) -> None:
    a = rings[0]
    a.create("users", "AES-256-GCM")
    orch = Orchestrator(a, node="n0", lease_ttl=30, interval=0.1)
    orch.track(Plan("good", key="orders", policy="every=1h"))
    orch.track(Plan("bad", key="users", policy="every=1h"))
    edit_sealed(a, sealed.PLANS, "policy", "weekly")  # both rows: then 'good' gets its policy back
    edit_sealed(a, sealed.PLANS, "policy", "every=1h")
    with a.store.write() as db:  # 'bad' alone, sealed (a keyed writer's malformed row)
        row = sealed.read(a.store, db, sealed.PLANS, "plan = 'bad'")[0]
        sealed.put(a.store, db, sealed.PLANS, {**row, "policy": "weekly"})
    for plan in ("good", "bad"):
        _due_now(a, plan, 3600)
    with pytest.raises(PolicyError, match="plan 'bad': its stored row no longer validates"):
        orch.tick()
    assert a.describe("orders").active_version == 2  # the good plan rotated on that tick
    assert a.describe("users").active_version == 1
    with pytest.raises(PolicyError, match="plan 'bad'"):
        orch.plans()


def test_monthly_is_due_at_utc_midnight_on_the_first() -> None:
    from datetime import UTC, datetime

    s = Schedule.parse("monthly")
    anchor = datetime(2026, 1, 15, tzinfo=UTC)
    assert s.due(anchor, datetime(2026, 1, 31, 23, 59, tzinfo=UTC)) is None
    assert s.due(anchor, datetime(2026, 2, 1, 0, 0, tzinfo=UTC)) == datetime(2026, 2, 1, tzinfo=UTC)
    assert s.next_after(anchor, datetime(2026, 12, 5, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


def test_the_lease_moves_after_expiry_with_a_new_token_and_a_stale_leader_cannot_write(
        rings: list[Keyring]) -> None:
    db: Database = rings[0].store.database  # type: ignore[attr-defined]
    a, b = Lease(db, "t", holder="a", ttl=0.3), Lease(db, "t", holder="b", ttl=0.3)
    first = a.acquire()
    assert first.mine and first.holder == "a"
    assert not b.acquire().mine
    assert a.acquire().token == first.token  # renewing keeps the token
    time.sleep(0.4)
    taken = b.acquire()
    assert taken.mine and taken.token == first.token + 1
    # a wakes up (a GC pause, SIGSTOP) and writes with its old token: refused, nothing rotated.
    orch_a = Orchestrator(rings[0], node="a", lease_ttl=0.3, interval=0.1)
    orch_a.lease = a
    orch_a.track(Plan("p", key="orders", policy="every=1h"))
    with pytest.raises(Fenced):
        orch_a._rotate(Plan("p", key="orders", policy="every=1h"), orch_a._now(), first, reason="stale")
    assert rings[0].describe("orders").active_version == 1


def test_three_nodes_with_skewed_clocks_rotate_a_due_plan_exactly_once(rings: list[Keyring]) -> None:
    for ring, skew in zip(rings, (-5.0, 0.0, 5.0), strict=True):
        ring.clock = lambda skew=skew: time.time() + skew  # type: ignore[misc]
    orchs = [Orchestrator(r, node=f"n{i}", lease_ttl=2, interval=0.05) for i, r in enumerate(rings)]
    orchs[1].track(Plan("orders-hourly", key="orders", policy="every=1h"))
    _due_now(rings[0], "orders-hourly", 3600)
    done = []
    for _ in range(5):
        for o in orchs:
            done += o.tick()
    assert done == [("orders-hourly", 2)]  # one node led, once
    assert rings[2].describe("orders").active_version == 2
    status = orchs[2].status()
    assert status["leader"] in ("n0", "n1", "n2") and status["node"] == "n2"
    assert status["plans"][0]["last_run"]["result"] == "rotated from 1"
    json.dumps(status)  # the --json form


def test_a_paused_plan_waits_and_an_emergency_rotates_now_with_an_incident(rings: list[Keyring]) -> None:
    leader, follower = (Orchestrator(r, node=f"n{i}", lease_ttl=5, interval=0.1) for i, r in enumerate(rings[:2]))
    leader.track(Plan("p", key="orders", policy="every=1h"))
    _due_now(rings[0], "p", 3600)
    leader.pause("p")
    assert leader.tick() == [] and rings[0].describe("orders").active_version == 1
    with pytest.raises(PolicyError, match="not the leader"):
        follower.emergency("p", "key leaked in a log")
    assert leader.emergency("p", "key leaked in a log") == 2
    incident = [e for e in rings[0].audit.tail(20) if e["event"] == "INCIDENT"]
    assert incident and incident[-1]["reason"] == "key leaked in a log" and incident[-1]["version"] == 2
    assert incident[-1]["health"] == "ok"
    leader.resume("p")
    assert leader.tick() == [("p", 3)]  # the missed due time runs once
    assert leader.tick() == []
    with pytest.raises(PolicyError, match="plan"):
        leader.pause("nope")
    with pytest.raises(KeyError_):
        leader.track(Plan("q", key="no-such-key", policy="monthly"))


def test_a_migration_plan_moves_the_key_to_the_target_suite(rings: list[Keyring]) -> None:
    blob = rings[0].encrypt("orders", b"old suite")
    orch = Orchestrator(rings[0], node="n0", lease_ttl=5, interval=0.1)
    orch.track(Plan("migrate", key="orders", policy="every=1h", suite="XCHACHA20-POLY1305"))
    _due_now(rings[0], "migrate", 3600)
    assert orch.tick() == [("migrate", 2)]
    versions = {v.version: v.algorithm for v in rings[1].describe("orders").versions}
    assert versions == {1: "AES-256-GCM", 2: "XCHACHA20-POLY1305"}
    assert rings[1].decrypt(blob) == b"old suite"  # the old suite still opens in its window


def test_hygiene_archives_a_retired_version_only_once_no_node_used_it_for_the_grace(rings: list[Keyring]) -> None:
    a, b = rings[0], rings[1]
    blob = a.encrypt("orders", b"old")
    orch = Orchestrator(a, node="n0", lease_ttl=5, interval=0.1)
    plan = Plan("p", key="orders", policy="every=1h", grace="5s")
    orch.track(plan)
    state = orch.lease.acquire()
    a.rotate("orders")
    start = time.time()
    b.clock = lambda: start + 4  # type: ignore[method-assign]
    assert b.decrypt(blob) == b"old"  # node b still uses version 1 ...
    b.unused_for("orders", 1)  # ... and its usage counters reach the database
    a.clock = lambda: start + 6  # type: ignore[method-assign]
    assert orch.hygiene(plan, state) == []  # retired 6 s ago, but used 2 s ago (b's time)
    a.clock = lambda: start + 10  # type: ignore[method-assign]
    assert orch.hygiene(plan, state) == [1]
    assert orch.hygiene(plan, state) == []  # once
    archived = [e for e in a.audit.tail(50) if e["event"] == "KEY_ARCHIVE"]
    assert len(archived) == 1 and archived[0]["version"] == 1 and archived[0]["token"] == state.token
    assert orch.status()["plans"][0]["archived"] == [1]


def test_an_emergency_with_a_short_grace_lets_hygiene_archive_the_leaked_version_early(
        rings: list[Keyring]) -> None:
    a = rings[0]
    orch = Orchestrator(a, node="n0", lease_ttl=30, interval=0.1)
    plan = Plan("p", key="orders", policy="every=30d", grace="7d")
    orch.track(plan)
    orch.tick()
    with pytest.raises(PolicyError, match="grace"):
        orch.emergency("p", "leaked", grace="soon")
    assert a.describe("orders").active_version == 1  # a malformed grace rotates nothing
    assert orch.emergency("p", "key leaked in a log", grace="1h") == 2
    incident = [e for e in a.audit.tail(20) if e["event"] == "INCIDENT"][-1]
    assert incident["grace_seconds"] == 3600.0
    state = orch.lease.acquire()
    start = time.time()
    a.clock = lambda: start + 1800  # type: ignore[method-assign]
    assert orch.hygiene(plan, state) == []  # the short grace is not over yet
    a.clock = lambda: start + 3700  # type: ignore[method-assign]
    assert orch.hygiene(plan, state) == [1]  # an hour, not the plan's seven days
    assert orch.emergency("p", "again") == 3  # without a grace: version 2 keeps the plan's
    a.clock = lambda: start + 3 * 86400  # type: ignore[method-assign]
    assert orch.hygiene(plan, state) == []


@pytest.mark.parametrize("grace", ["-1", "NaN", "-Infinity"])
def test_an_emergency_grace_edited_outside_xps_stops_hygiene_instead_of_archiving_at_once(
        rings: list[Keyring], grace: str) -> None:
    a = rings[0]
    orch = Orchestrator(a, node="n0", lease_ttl=30, interval=0.1)
    plan = Plan("p", key="orders", policy="every=30d", grace="7d")
    orch.track(plan)
    orch.tick()
    orch.emergency("p", "leaked", grace="1h")
    edit_sealed(a, sealed.EMERGENCY, "grace_seconds", float(grace))
    a.clock = lambda: time.time() + 3700  # type: ignore[method-assign]
    with pytest.raises(PolicyError, match="xps_orch_emergency"):
        orch.hygiene(plan, orch.lease.acquire())
    assert not [e for e in a.audit.tail(50) if e["event"] == "KEY_ARCHIVE"]


def test_an_emergency_whose_lease_lapses_mid_rotation_rolls_back_with_its_grace(
        rings: list[Keyring], monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding: the grace row's fenced write failed (the lease lapsed after the run
    # record's statement) but its False was ignored: the rotation committed without the grace
    # its incident announced. A real lapse: the lease runs out while the rotation writes.
    a = rings[0]
    orch = Orchestrator(a, node="n0", lease_ttl=0.3, interval=0.1)
    orch.track(Plan("p", key="orders", policy="every=30d", grace="7d"))
    real_put = sealed.put

    def put_then_stall(store: object, db: object, table: sealed.Table, *args: object, **kw: object) -> bool:
        written = real_put(store, db, table, *args, **kw)  # type: ignore[arg-type]
        if table is sealed.RUNS:
            time.sleep(0.5)  # past the lease's expiry, inside the rotation's transaction
        return written

    monkeypatch.setattr(sealed, "put", put_then_stall)
    with pytest.raises(Fenced):
        orch.emergency("p", "leaked", grace="1h")
    monkeypatch.undo()
    assert a.describe("orders").active_version == 1
    with orch.verified() as db:
        assert sealed.read(a.store, db, sealed.RUNS) == [] and sealed.read(a.store, db, sealed.EMERGENCY) == []


def test_a_takeover_waits_until_a_fenced_write_it_passed_has_committed(rings: list[Keyring]) -> None:
    # The fence is checked in the writing statement; without holding the lease row, another node
    # took the lease over while that write was still uncommitted, and both "led" at once.
    import threading

    from xpscerpto.orchestrator import FENCE

    db: Database = rings[0].store.database  # type: ignore[attr-defined]
    a, b = Lease(db, "t", holder="a", ttl=0.3), Lease(db, "t", holder="b", ttl=30)
    first = a.acquire()
    taken: list[float] = []
    thread = threading.Thread(target=lambda: (time.sleep(0.4), b.acquire(), taken.append(time.monotonic())))
    with rings[0].store.write() as tx:
        assert tx.execute(f"SELECT 1 WHERE {FENCE}", first.fence()).fetchone() is not None
        thread.start()
        time.sleep(1.0)  # the lease expires meanwhile; b tries to take it over at 0.4 s
        assert taken == []
        committed = time.monotonic()
    thread.join(timeout=30)
    assert taken and taken[0] >= committed
    assert b.state().mine and b.state().token == first.token + 1


def test_an_emergency_borrows_the_lease_only_of_the_orchestrator_its_home_runs(rings: list[Keyring]) -> None:
    # Review finding: matching the node *name* let a process of another home, started with
    # --node n0 by mistake or from a cloned configuration, write under n0's lease.
    daemon = Orchestrator(rings[0], node="n0", lease_ttl=30, interval=0.1)
    daemon.track(Plan("p", key="orders", policy="every=30d"))
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while daemon.lease.state().holder != daemon.instance:
            assert time.monotonic() < deadline, "the daemon never took the lease"
            time.sleep(0.05)
        impostor = Orchestrator(rings[1], node="n0", lease_ttl=30, interval=0.1)  # another home
        with pytest.raises(PolicyError, match="not the leader"):
            impostor.emergency("p", "leaked")
        assert rings[0].describe("orders").active_version == 1
        same_home = Orchestrator(rings[0], node="n0", lease_ttl=30, interval=0.1)
        assert same_home.emergency("p", "leaked") == 2
        with same_home.verified() as db:
            [run] = [r for r in sealed.read(rings[0].store, db, sealed.RUNS) if r["result"] == "rotated from 1"]
        assert run["token"] == daemon.lease.state().token
        same_home.stop()
        assert daemon.lease.state().holder == daemon.instance  # the borrower released nothing
    finally:
        daemon.stop()
    assert not (rings[0].home.root / "orchestrator.instance").exists()


def test_hygiene_by_a_leader_whose_lease_lapsed_writes_nothing(rings: list[Keyring]) -> None:
    a = rings[0]
    orch = Orchestrator(a, node="n0", lease_ttl=0.2, interval=0.1)
    plan = Plan("p", key="orders", policy="every=1h", grace="1s")
    orch.track(plan)
    stale = orch.lease.acquire()
    a.rotate("orders")
    time.sleep(0.3)
    assert Lease(orch.database, "orchestrator", holder="n1", ttl=5).acquire().mine
    a.clock = lambda: time.time() + 10  # type: ignore[method-assign]
    assert orch.hygiene(plan, stale) == []
    assert not [e for e in a.audit.tail(50) if e["event"] == "KEY_ARCHIVE"]


def test_a_plan_naming_another_kek_provider_is_refused(rings: list[Keyring]) -> None:
    orch = Orchestrator(rings[0], node="n0")
    with pytest.raises(PolicyError, match="kek"):
        orch.track(Plan("p", key="orders", policy="monthly", kek="pkcs11"))


def _suite_of(ring: Keyring, key: str) -> str | None:
    info = ring.describe(key)
    return next(v.algorithm for v in info.versions if v.version == info.active_version)


def _migration_ring(rings: list[Keyring]) -> tuple[Keyring, Orchestrator, tuple[str, ...]]:
    a = rings[0]
    keys = ("orders", *(f"k{i}" for i in range(4)))
    for k in keys[1:]:
        a.create(k, "AES-256-GCM")
    return a, Orchestrator(a, node="n0", lease_ttl=30, interval=0.1), keys


def test_a_suite_migration_moves_a_canary_then_everyone_then_retires_the_old_suite(rings: list[Keyring]) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    a, orch, keys = _migration_ring(rings)
    old_blobs = {k: a.encrypt(k, b"old " + k.encode()) for k in keys}
    m = SuiteMigration("to-xchacha", keys=keys, target="XCHACHA20-POLY1305", canary=0.2, watch="1s",
                       max_failure_rate=0.01)
    orch.migrate(m)
    orch.tick()
    (canary,) = m.canary_keys()
    assert _suite_of(a, canary) == "XCHACHA20-POLY1305"
    assert [k for k in keys if _suite_of(a, k) == "AES-256-GCM"] == [k for k in keys if k != canary]
    for _ in range(30):  # healthy canary traffic
        assert a.decrypt(a.encrypt(canary, b"x")) == b"x"
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "watching"  # the watch is not over
    time.sleep(1.1)
    orch.tick()
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "committed"
    assert all(_suite_of(a, k) == "XCHACHA20-POLY1305" for k in keys)
    assert all(a.decrypt(old_blobs[k]) == b"old " + k.encode() for k in keys)  # both suites open meanwhile
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "committed"  # old versions still decrypt (dual window)
    a.clock = lambda: time.time() + 31 * 86400  # type: ignore[method-assign]
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "retired"
    phases = [e["phase"] for e in a.audit.tail(200) if e["event"] == "SUITE_MIGRATION"]
    assert phases == ["watching", "rollout", "committed", "retired"]


def test_a_canary_with_too_many_auth_failures_aborts_and_moves_back(rings: list[Keyring]) -> None:
    from xpscerpto.errors import AuthError
    from xpscerpto.orchestrator import SuiteMigration

    a, orch, keys = _migration_ring(rings)
    m = SuiteMigration("to-xchacha", keys=keys, target="XCHACHA20-POLY1305", canary=0.2, watch="1h",
                       max_failure_rate=0.05)
    orch.migrate(m)
    orch.tick()
    (canary,) = m.canary_keys()
    for i in range(30):
        blob = bytearray(a.encrypt(canary, b"x"))
        if i % 3 == 0:
            blob[-1] ^= 1  # a third fail authentication
            with pytest.raises(AuthError):
                a.decrypt(bytes(blob))
        else:
            a.decrypt(bytes(blob))
    assert a.decrypt_counts(canary, 2) == (20, 10)
    orch.tick()
    status = orch.migration_status()[0]
    assert status["phase"] == "aborted" and status["detail"]["failures"] == 10
    assert all(_suite_of(a, k) == "AES-256-GCM" for k in keys)  # the canary moved back
    assert a.describe(canary).active_version == 3
    incident = [e for e in a.audit.tail(100) if e["event"] == "INCIDENT"]
    assert incident and incident[-1]["migration"] == "to-xchacha"


def test_the_canary_decision_reads_auth_failures_seen_on_another_node(rings: list[Keyring]) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    a, orch, keys = _migration_ring(rings)
    follower_ring = rings[1]
    follower = Orchestrator(follower_ring, node="n1", lease_ttl=30, interval=0.1)
    m = SuiteMigration("to-xchacha", keys=keys, target="XCHACHA20-POLY1305", canary=0.2, watch="1h",
                       max_failure_rate=0.05)
    orch.migrate(m)
    orch.tick()
    assert not follower.tick() and not follower.status()["is_leader"]
    (canary,) = m.canary_keys()
    _traffic(follower_ring, canary)  # the traffic, and its failures, are on the follower only
    assert a.decrypt_counts(canary, 2) == (0, 0)  # the leader's own process saw nothing
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "watching"  # not published yet: no decision on no data
    follower.tick()  # a follower's tick shares its counters
    orch.tick()
    status = orch.migration_status()[0]
    assert status["phase"] == "aborted" and status["detail"] == {**status["detail"], "failures": 10, "total": 30}
    assert all(_suite_of(a, k) == "AES-256-GCM" for k in keys)


def test_a_leader_paused_past_its_lease_moves_no_key_of_a_migration(rings: list[Keyring]) -> None:
    # A takes the lease and pauses before its canary step; B leads, canaries, sees the canary
    # fail and aborts (the key back on its suite). A's late canary step must not move the key.
    from xpscerpto.orchestrator import SuiteMigration, suite_migration

    a, b = rings[0], rings[1]
    stale = Orchestrator(a, node="n0", lease_ttl=1.0, interval=0.1)
    leader = Orchestrator(b, node="n1", lease_ttl=30, interval=0.1)
    m = SuiteMigration("to-xchacha", keys=("orders",), target="XCHACHA20-POLY1305", canary=1.0, watch="1h",
                       max_failure_rate=0.05)
    stale.migrate(m)
    state = stale.lease.acquire()
    assert state.mine
    time.sleep(1.3)  # its lease lapses while it is paused
    leader.tick()
    assert _suite_of(b, "orders") == "XCHACHA20-POLY1305"
    _traffic(b, "orders")
    leader.tick()
    assert leader.migration_status()[0]["phase"] == "aborted" and _suite_of(b, "orders") == "AES-256-GCM"
    before = b.describe("orders").active_version
    with pytest.raises(Fenced, match="no longer current"):  # A wakes up inside its canary step
        suite_migration._move(stale, state, m, "canary", "orders", m.target, "suite migration: canary")
    assert b.describe("orders").active_version == before and _suite_of(a, "orders") == "AES-256-GCM"
    # The current leader is refused too once the migration left the phase it acts for.
    with pytest.raises(Fenced, match="left phase 'canary'"):
        suite_migration._move(leader, leader.lease.acquire(), m, "canary", "orders", m.target, "late")
    assert b.describe("orders").active_version == before


@pytest.mark.parametrize(("kw", "field"), [({"keys": ()}, "keys"), ({"keys": ("a", "a")}, "keys"),
                                           ({"target": "ROT13"}, "target"), ({"canary": 0}, "canary"),
                                           ({"canary": 1.5}, "canary"), ({"max_failure_rate": -1}, "max_failure_rate"),
                                           ({"watch": "soon"}, "watch"), ({"name": ""}, "name")])
def test_a_bad_suite_migration_is_refused_naming_the_field(kw: dict[str, object], field: str) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    args: dict[str, object] = {"name": "m", "keys": ("k",), "target": "XCHACHA20-POLY1305", **kw}
    with pytest.raises(PolicyError, match=field):
        SuiteMigration(**args)  # type: ignore[arg-type]


def test_a_migration_name_is_used_once_and_its_keys_must_exist(rings: list[Keyring]) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    orch = Orchestrator(rings[0], node="n0")
    orch.migrate(SuiteMigration("m", keys=("orders",), target="XCHACHA20-POLY1305"))
    with pytest.raises(PolicyError, match="exists"):
        orch.migrate(SuiteMigration("m", keys=("orders",), target="XCHACHA20-POLY1305"))
    with pytest.raises(KeyError_):
        orch.migrate(SuiteMigration("n", keys=("nope",), target="XCHACHA20-POLY1305"))


def test_a_usage_plan_rotates_once_per_version_that_reached_its_count(rings: list[Keyring]) -> None:
    a = rings[0]
    orch = Orchestrator(a, node="n0", lease_ttl=5, interval=0.1)
    orch.track(Plan("by-use", key="orders", policy="usage=10000"))
    assert orch.tick() == []  # nothing encrypted yet
    a.encrypt("orders", b"x")  # reserves a block of 16384 encryptions on version 1
    assert orch.tick() == [("by-use", 2)]
    assert orch.tick() == []  # version 2 has reserved nothing
    a.encrypt("orders", b"x")
    assert orch.tick() == [("by-use", 3)] and orch.tick() == []
    assert orch.status()["plans"][0]["next_run"] is None


@pytest.mark.parametrize("policy", ["usage=", "usage=0", "usage=-5", "usage=1e6", f"usage={2**64 + 1}"])
def test_a_bad_usage_policy_is_refused(policy: str) -> None:
    with pytest.raises(PolicyError, match="policy"):
        Plan("p", key="k", policy=policy)


def test_the_database_going_away_mid_schedule_gives_typed_errors_and_one_rotation_after(
        rings: list[Keyring], pg_server: object) -> None:
    from xpscerpto.errors import InternalError

    orchs = [Orchestrator(r, node=f"n{i}", lease_ttl=2, interval=0.05) for i, r in enumerate(rings)]
    orchs[0].track(Plan("p", key="orders", policy="every=1h"))
    for o in orchs:
        o.start()  # the loops keep running through the outage
    try:
        pg_server.stop("immediate")  # type: ignore[attr-defined]
        try:
            with pytest.raises(InternalError):
                orchs[1].tick()
            time.sleep(0.5)
            assert all(o.last_error is not None and "XPS_ERR_INTERNAL" in o.last_error for o in orchs)
        finally:
            pg_server.start()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while True:  # back: the plan becomes due once, and exactly one node rotates it
            try:
                _due_now(rings[0], "p", 3600)
                break
            except InternalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if rings[1].describe("orders").active_version == 2:
                    break
            except InternalError:
                pass
            time.sleep(0.1)
        time.sleep(0.5)  # more ticks: nothing more happens
        assert [v.version for v in rings[2].describe("orders").versions] == [1, 2]
        runs = orchs[0].database.execute("SELECT plan FROM xps_orch_runs").fetchall()
        assert runs == [("p",)]
    finally:
        for o in orchs:
            o.stop()


@pytest.mark.parametrize(("column", "value"), [("policy", "weekly"), ("grace_seconds", -5.0), ("kek", "usb"),
                                               ("suite", "ROT13")])
def test_a_plan_row_edited_outside_xps_is_a_typed_refusal_not_a_crash(rings: list[Keyring], column: str,
                                                                      value: object) -> None:
    orch = Orchestrator(rings[0], node="n0", lease_ttl=5, interval=0.05)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    edit_sealed(rings[0], sealed.PLANS, column, value)
    _due_now(rings[0], "p", 3600)
    with pytest.raises(PolicyError):
        orch.tick()
    orch.start()
    time.sleep(0.3)
    orch.stop()
    assert orch.last_error is not None and "XPS_ERR_POLICY" in orch.last_error  # the loop lived on
    assert rings[0].describe("orders").active_version == 1  # nothing rotated on a bad plan


def test_a_node_restarted_before_its_lease_expired_does_not_resume_the_old_token(rings: list[Keyring]) -> None:
    old = Orchestrator(rings[0], node="n0", lease_ttl=0.5, interval=0.1)
    first = old.lease.acquire()
    assert first.mine
    restarted = Orchestrator(rings[0], node="n0", lease_ttl=0.5, interval=0.1)  # same name, new process
    assert not restarted.lease.acquire().mine  # the old instance's lease stands until it expires
    time.sleep(0.6)
    taken = restarted.lease.acquire()
    assert taken.mine and taken.token == first.token + 1
    assert restarted.status()["leader"] == "n0" and restarted.status()["leader_instance"] == restarted.instance
    orders = Plan("p", key="orders", policy="every=1h")
    restarted.track(orders)
    with pytest.raises(Fenced):  # the old instance, same node name, cannot write with its token
        old._rotate(orders, old._now(), first, reason="stale")
