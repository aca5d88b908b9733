"""Orchestration rows written by someone who can write the database but holds no KEK.

Each case is what such a writer would try — downgrade a plan's suite, forge a run record or an
archive, shorten a grace, move a rollout or a migration to another phase, delete a rollout, put
an older copy of one back — and checks that it is refused, named, and acted on by nobody.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from xpscerpto.channel import ChannelConfig
from xpscerpto.db import Database
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.db.migrations import head, migrate
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.keyring import Keyring
from xpscerpto.keyring.integrity import KeyringTampered
from xpscerpto.orchestrator import Orchestrator, Plan, PqPosture, PqRollout, SuiteMigration
from xpscerpto.orchestrator.orchestrator import adopt_orchestration

from tests.capsules.test_watch import wait_for
from tests.db.test_postgres import _node
from tests.orchestrator.rows import due_now, schema7_database
from tests.pg_server import PgServer

BASE = ChannelConfig(handshake_timeout_seconds=5.0)
_names = itertools.count()


@pytest.fixture
def ring(pg_dsn: str, tmp_path: Path) -> Iterator[Keyring]:
    r = _node(tmp_path, "n0", pg_dsn)
    r.create("orders", "AES-256-GCM")
    yield r
    r.close()


def _db(ring: Keyring) -> Database:
    database = ring.store.database  # type: ignore[attr-defined]
    assert isinstance(database, Database)
    return database


def _reopens_refused(tmp_path: Path, pg_dsn: str) -> None:
    """Another node opening the keyring now: the roster no longer adds up."""
    with pytest.raises(KeyringTampered, match="roster"):
        _node(tmp_path, f"n-check{next(_names)}", pg_dsn, like=tmp_path / "n0")


def test_a_plan_whose_suite_was_downgraded_in_the_database_is_refused_and_not_run(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h", suite="AES-256-GCM"))
    due_now(ring, "p", 3600)
    _db(ring).execute("UPDATE xps_orch_plans SET suite = 'AES-128-GCM'")
    with pytest.raises(PolicyError, match=r"plan 'p': .*xps_orch_plans row 'p' fails its integrity seal"):
        orch.tick()
    assert ring.describe("orders").active_version == 1  # nothing rotated, under either suite
    with pytest.raises(PolicyError, match="integrity seal"):
        orch.plans()


def test_a_forged_run_record_does_not_skip_the_due_rotation_silently(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    plan = Plan("p", key="orders", policy="every=1h")
    orch.track(plan)
    due_now(ring, "p", 3600)
    anchor = orch.plans()[0][1]
    due = plan.schedule.due(anchor, orch._now())
    _db(ring).execute("INSERT INTO xps_orch_runs (plan, due, token, holder, result, mac) VALUES (?, ?, 1, 'n0', "
                      "'rotated from 1', ?)", ("p", due, "0" * 64))
    with pytest.raises(KeyringTampered, match="roster"):  # a row added: the roster no longer adds up
        orch.tick()
    assert ring.describe("orders").active_version == 1


def test_status_refuses_a_forged_last_run_instead_of_showing_it(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    _db(ring).execute("INSERT INTO xps_orch_runs (plan, due, token, holder, result) VALUES ('p', "
                      "clock_timestamp(), 9, 'mallory', 'rotated from 1')")
    with pytest.raises(KeyringTampered, match="roster"):
        orch.status()


def test_a_shortened_emergency_grace_is_refused_and_nothing_archived(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    plan = Plan("p", key="orders", policy="every=30d", grace="7d")
    orch.track(plan)
    orch.tick()
    orch.emergency("p", "leaked", grace="1d")
    _db(ring).execute("UPDATE xps_orch_emergency SET grace_seconds = 1")  # a valid number, not its own
    ring.clock = lambda: time.time() + 3700  # type: ignore[method-assign]
    with pytest.raises(PolicyError, match=r"xps_orch_emergency row .* fails its integrity seal"):
        orch.hygiene(plan, orch.lease.acquire())
    assert not [e for e in ring.audit.tail(50) if e["event"] == "KEY_ARCHIVE"]


def test_a_forged_archive_record_is_refused(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    plan = Plan("p", key="orders", policy="every=30d", grace="1s")
    orch.track(plan)
    ring.rotate("orders")
    key_id = ring.describe("orders").key_id
    _db(ring).execute("INSERT INTO xps_orch_archived (key_id, version, token, holder) VALUES (?, 1, 1, 'n0')",
                      (key_id,))
    ring.clock = lambda: time.time() + 60  # type: ignore[method-assign]
    with pytest.raises(KeyringTampered, match="roster"):
        orch.hygiene(plan, orch.lease.acquire())
    assert not [e for e in ring.audit.tail(50) if e["event"] == "KEY_ARCHIVE"]


def test_a_suite_migration_moved_to_another_phase_in_the_database_is_refused(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.migrate(SuiteMigration("m", keys=("orders",), target="XCHACHA20-POLY1305", canary=1.0, watch="1h"))
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "watching"
    _db(ring).execute("UPDATE xps_suite_migrations SET phase = 'rollout'")  # past the watch
    with pytest.raises(PolicyError, match="xps_suite_migrations row 'm' fails its integrity seal"):
        orch.tick()
    assert orch.migration_status() == [{"name": "m", "phase": "tampered", "since": orch.migration_status()[0]["since"]}]
    # A forged 'aborted' must not hide it either (finished rows are checked too).
    _db(ring).execute("UPDATE xps_suite_migrations SET phase = 'aborted'")
    with pytest.raises(PolicyError, match="xps_suite_migrations row 'm'"):
        orch.tick()


def _rollout(ring: Keyring, poll: float = 60.0) -> tuple[Orchestrator, PqPosture]:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.roll_out_pq(PqRollout("pq", nodes=("n0", "n1"), canary=1.0, watch="1h"))
    orch.tick()  # the baseline recorded
    posture = PqPosture(ring, node="n0", base=BASE, poll=poll)
    assert posture.refresh() == "offer"
    return orch, posture


def test_a_rollout_marked_aborted_in_the_database_does_not_send_the_node_back_to_classic(ring: Keyring) -> None:
    orch, posture = _rollout(ring)
    try:
        _db(ring).execute("UPDATE xps_pq_rollouts SET phase = 'aborted'")
        with pytest.raises(PolicyError, match="xps_pq_rollouts row 'pq' fails its integrity seal"):
            posture.refresh()
        assert posture.posture == "offer" and posture.config.protocol != BASE.protocol  # kept, not classic
        assert orch.pq_status()[0]["phase"] == "tampered"
        with pytest.raises(PolicyError, match="xps_pq_rollouts row 'pq'"):
            orch.tick()
    finally:
        posture.stop()


def test_a_following_node_keeps_its_posture_and_reports_a_forged_phase(ring: Keyring) -> None:
    _, posture = _rollout(ring, poll=0.1)
    posture.start()
    try:
        _db(ring).execute("UPDATE xps_pq_rollouts SET phase = 'aborted'")
        wait_for(lambda: posture.last_error is not None and "integrity seal" in posture.last_error,
                 "the follower to refuse the row")
        assert posture.posture == "offer"
    finally:
        posture.stop()


def test_a_deleted_rollout_is_refused_at_once_not_read_as_classic(ring: Keyring, tmp_path: Path,
                                                                  pg_dsn: str) -> None:
    _, posture = _rollout(ring)
    try:
        _db(ring).execute("DELETE FROM xps_pq_rollouts")
        with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
            posture.refresh()
        assert posture.posture == "offer"
        _reopens_refused(tmp_path, pg_dsn)
    finally:
        posture.stop()


def test_an_older_copy_of_a_rollout_put_back_is_refused(ring: Keyring, tmp_path: Path, pg_dsn: str) -> None:
    orch, posture = _rollout(ring)
    try:
        db = _db(ring)
        cols = ", ".join((*sealed.ROLLOUTS.columns, "mac"))
        canary = db.execute(f"SELECT {cols} FROM xps_pq_rollouts").fetchone()  # sealed, genuine
        assert canary is not None
        state = orch.lease.acquire()
        from xpscerpto.orchestrator.pq_rollout import _set_phase

        rollout = PqRollout("pq", nodes=("n0", "n1"), canary=1.0, watch="1h")
        assert _set_phase(orch, state, rollout, "canary", "committed", {"base": [0, 0], "classic": 0}) == "committed"
        assert posture.refresh() == "offer"
        # Back to the genuine 'canary' row: its seal verifies, the roster does not add up.
        db.execute(f"UPDATE xps_pq_rollouts SET ({cols}) = ({', '.join('?' * len(canary))})", canary)
        with pytest.raises(KeyringTampered, match="roster"):
            posture.refresh()
        _reopens_refused(tmp_path, pg_dsn)
    finally:
        posture.stop()


def test_an_unsealed_row_an_earlier_release_would_write_after_adoption_is_refused(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    _db(ring).execute("INSERT INTO xps_orch_plans (plan, key_name, policy, grace_seconds, kek) "
                      "VALUES ('old', 'orders', 'every=1h', 60, 'file')")
    with pytest.raises(KeyringTampered, match="roster"):
        orch.plans()


def test_the_posture_follower_needs_the_nodes_keyring(pg_dsn: str) -> None:
    for bad in (pg_dsn, None, object()):
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: keyring: "):
            PqPosture(bad, node="n0", base=BASE)  # type: ignore[arg-type]


# -- a database an earlier release wrote (schema 7): its rows are sealed once --------------------

@pytest.fixture
def schema7(pg_server: PgServer) -> str:
    return schema7_database(pg_server)


def test_an_earlier_releases_rows_are_sealed_once_when_the_schema_is_migrated(schema7: str, tmp_path: Path) -> None:
    ring = _node(tmp_path, "n0", schema7)
    try:
        ring.create("orders", "AES-256-GCM")
        db = _db(ring)
        # What the earlier release's orchestrator wrote.
        db.execute("INSERT INTO xps_orch_plans (plan, key_name, policy, grace_seconds, kek) "
                   "VALUES ('p', 'orders', 'every=1h', 3600, 'file')")
        db.execute("INSERT INTO xps_pq_rollouts (name, nodes, protocol, canary, watch_seconds, max_failure_rate, "
                   "phase) VALUES ('pq', '[\"n0\"]', 'Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256', 1, 60, 0.01, "
                   "'canary')")
        with pytest.raises(PolicyError, match="needs 8; run `xps db migrate"):
            Orchestrator(ring, node="n0")
        assert migrate(db) == list(range(8, head() + 1))  # 8 seals these tables; later ones follow
        with pytest.raises(PolicyError, match="xps orch adopt"):  # rows are sealed by the operator's step only
            Orchestrator(ring, node="n0")
        assert adopt_orchestration(ring) == [("xps_orch_plans", ("p",)), ("xps_pq_rollouts", ("pq",))]
        orch = Orchestrator(ring, node="n0", lease_ttl=30)
        assert [p.name for p, _, _ in orch.plans()] == ["p"]
        assert orch.pq_status()[0]["phase"] == "canary"
        Orchestrator(ring, node="n1", lease_ttl=30)  # sealed already: not again
        sealed_records = [e for e in ring.audit.tail(50) if e["event"] == "KEYRING_SEALED"]
        assert [(e["scope"], e["rows"]) for e in sealed_records] == [("orchestration", 2)]
        again = _node(tmp_path, "n1", schema7, like=tmp_path / "n0")  # the roster adds up with them in it
        again.close()
        # Removing the mark does not make the database look unadopted: the roster says so.
        db.execute("DELETE FROM meta WHERE k = 'sealed_tables'")
        with pytest.raises(KeyringTampered, match="roster"):
            _node(tmp_path, "n2", schema7, like=tmp_path / "n0")
    finally:
        ring.close()


def test_seals_do_not_depend_on_the_sessions_time_zone(ring: Keyring, tmp_path: Path, pg_dsn: str) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    _db(ring).execute("ALTER DATABASE " + pg_dsn.rsplit("/", 1)[1].split("?", 1)[0] + " SET timezone = 'Asia/Kolkata'")
    other = _node(tmp_path, "n1", pg_dsn, like=tmp_path / "n0")  # new connections: another time zone
    try:
        assert [p.name for p, _, _ in Orchestrator(other, node="n1", lease_ttl=30).plans()] == ["p"]
    finally:
        other.close()


def test_every_refusal_is_typed(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    _db(ring).execute("UPDATE xps_orch_plans SET mac = NULL")
    for call in (orch.plans, orch.status, orch.tick, lambda: orch.pause("p"), lambda: orch.resume("p"),
                 lambda: orch.track(Plan("p", key="orders", policy="every=2h"))):
        with pytest.raises(XpsError) as info:
            call()
        assert info.value.code.name == "POLICY"


# -- rows whose seals are genuine but whose set is not (found by a review of the above) ------------

def _row(ring: Keyring, table: sealed.Table) -> tuple[object, ...]:
    cols = ", ".join((*table.columns, "mac"))
    row = _db(ring).execute(f"SELECT {cols} FROM {table.name}").fetchone()
    assert row is not None
    return tuple(row)


def _put_back(ring: Keyring, table: sealed.Table, row: tuple[object, ...]) -> None:
    cols = (*table.columns, "mac")
    _db(ring).execute(f"UPDATE {table.name} SET ({', '.join(cols)}) = ({', '.join('?' * len(cols))})", row)


def test_an_older_genuine_plan_put_back_is_refused_before_the_leader_uses_it(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h", suite="AES-128-GCM"))
    old = _row(ring, sealed.PLANS)
    orch.track(Plan("p", key="orders", policy="every=1h", suite="AES-256-GCM"))
    due_now(ring, "p", 3600)
    _put_back(ring, sealed.PLANS, old)  # its seal is genuine: only the roster can tell
    with pytest.raises(KeyringTampered, match="roster"):
        orch.tick()
    with pytest.raises(KeyringTampered, match="roster"):
        orch.plans()
    assert ring.describe("orders").active_version == 1  # nothing rotated under the old suite


def test_a_deleted_plan_is_refused_not_silently_skipped(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    due_now(ring, "p", 3600)
    _db(ring).execute("DELETE FROM xps_orch_plans")
    with pytest.raises(KeyringTampered, match="roster"):
        orch.tick()
    with pytest.raises(KeyringTampered, match="roster"):
        orch.status()


def test_a_migration_phase_put_back_from_an_older_row_is_refused(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.migrate(SuiteMigration("m", keys=("orders",), target="XCHACHA20-POLY1305", canary=1.0, watch="1h"))
    before = _row(ring, sealed.MIGRATIONS)  # phase 'canary', genuine
    orch.tick()
    assert orch.migration_status()[0]["phase"] == "watching"
    _put_back(ring, sealed.MIGRATIONS, before)
    with pytest.raises(KeyringTampered, match="roster"):
        orch.tick()


def test_a_trigger_that_swallows_writes_to_an_orchestration_table_is_refused(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h", suite="AES-128-GCM"))
    db = _db(ring)
    db.execute("CREATE FUNCTION xps_test_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    db.execute("CREATE TRIGGER keep BEFORE UPDATE ON xps_orch_plans FOR EACH ROW EXECUTE FUNCTION xps_test_keep()")
    with pytest.raises(KeyringTampered, match="a trigger was added"):
        orch.track(Plan("p", key="orders", policy="every=1h", suite="AES-256-GCM"))
    with pytest.raises(KeyringTampered, match="a trigger was added"):
        orch.plans()


def test_a_write_that_silently_did_not_happen_is_refused(ring: Keyring) -> None:
    # A rule, unlike a trigger, is not what check_schema's trigger query sees first; either way
    # the write that changed nothing must not pass for done.
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    _db(ring).execute("CREATE RULE keep AS ON UPDATE TO xps_orch_plans DO INSTEAD NOTHING")
    with pytest.raises(KeyringTampered, match="rule"):
        orch.pause("p")


def test_the_sealed_mark_removed_to_have_forged_rows_sealed_again_is_refused(ring: Keyring, tmp_path: Path,
                                                                             pg_dsn: str) -> None:
    Orchestrator(ring, node="n0", lease_ttl=30).track(Plan("p", key="orders", policy="every=1h"))
    db = _db(ring)
    db.execute("DELETE FROM meta WHERE k = 'sealed_tables'")
    db.execute("UPDATE xps_orch_plans SET suite = 'AES-128-GCM', mac = NULL")
    with pytest.raises(KeyringTampered, match="roster"):
        Orchestrator(ring, node="n1", lease_ttl=30)
    # Marked when the keyring was created: nothing was adopted then, and nothing now.
    assert [e for e in ring.audit.tail(50) if e["event"] == "KEYRING_SEALED"] == []
    _reopens_refused(tmp_path, pg_dsn)


def test_a_posture_follower_started_on_rows_that_do_not_add_up_raises_not_classic(ring: Keyring) -> None:
    _rollout(ring)[1].stop()
    _db(ring).execute("DELETE FROM xps_pq_rollouts")
    posture = PqPosture(ring, node="n0", base=BASE, poll=60)
    try:
        with pytest.raises(KeyringTampered, match="roster"):
            posture.start()
    finally:
        posture.stop()
