"""Review findings O2, O3 (its start) and O8 of review-orch.

O2: rows a database writer (no KEK) inserted before any orchestrator started were sealed by the
first ``Orchestrator()`` as if an earlier release had written them, and obeyed. A keyring
database this release creates is marked sealed in its creating transaction; a database an
earlier release wrote is marked implicitly only while it holds no orchestration row, and rows
are sealed only by the operator's explicit ``xps orch adopt``.
O3: a second suite migration over a key of an unfinished one was accepted (the key flipped
between the two suites each tick, and both reported ``committed``).
O8: ``pause``/``resume`` of a name the database cannot store, and ``hygiene`` of something
that is not a Plan, raised untyped errors.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from xpscerpto.channel import ChannelConfig
from xpscerpto.db import Database
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.db.migrations import migrate
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.keyring import Keyring
from xpscerpto.keyring.integrity import KeyringTampered
from xpscerpto.orchestrator import Orchestrator, Plan, PqPosture, SuiteMigration

from tests.db.test_postgres import _node
from tests.orchestrator.rows import schema7_database
from tests.pg_server import PgServer

BASE = ChannelConfig(handshake_timeout_seconds=5.0)
MARK = "s3cr3tMARK"
_names = itertools.count()
_FORGED_PLAN = ("INSERT INTO xps_orch_plans (plan, key_name, policy, grace_seconds, suite, kek, anchor, paused) "
                "VALUES ('evil', 'orders', 'every=90s', 1, 'AES-128-GCM', 'file', now() - interval '100 seconds', "
                "false)")


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


def _mark(database: Database) -> object:
    row = database.execute("SELECT v FROM meta WHERE k = ?", (sealed.MARK,)).fetchone()
    return None if row is None else row[0]


def _sealed_records(ring: Keyring) -> list[tuple[object, object]]:
    return [(e.get("scope"), e.get("rows")) for e in ring.audit.tail(100) if e["event"] == "KEYRING_SEALED"]


def _earlier_release(pg_server: PgServer, root: Path, rows: bool) -> tuple[Keyring, str]:
    """A keyring an earlier release created (schema 7), migrated now; with a plan it wrote if ``rows``."""
    dsn = schema7_database(pg_server)
    ring = _node(root, "n0", dsn)
    ring.create("orders", "AES-256-GCM")
    if rows:
        _db(ring).execute(_FORGED_PLAN)
    migrate(_db(ring))
    return ring, dsn


# -- O2 (a): a keyring database this release creates is marked in its creating transaction ----------

def test_a_new_postgresql_keyring_is_marked_sealed_before_any_orchestrator(ring: Keyring, tmp_path: Path,
                                                                            pg_dsn: str) -> None:
    assert _mark(_db(ring)) is not None  # before any Orchestrator() or PqPosture
    _node(tmp_path, "n1", pg_dsn, like=tmp_path / "n0").close()  # the mark is on the roster
    _db(ring).execute(_FORGED_PLAN)  # a database writer with no KEK
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    with pytest.raises(KeyringTampered, match="roster"):
        orch.tick()
    assert [(v.version, v.algorithm) for v in ring.describe("orders").versions] == [(1, "AES-256-GCM")]
    assert _sealed_records(ring) == []  # nothing was adopted


def test_a_new_keyring_over_orchestration_rows_it_did_not_write_is_refused_whole(pg_dsn: str, tmp_path: Path) -> None:
    database = Database(pg_dsn)
    try:
        database.execute(_FORGED_PLAN)  # before the keyring exists
        meta = database.execute("SELECT k, v FROM meta ORDER BY k").fetchall()
        with pytest.raises(PolicyError, match=r"xps_orch_plans: 1 row") as info:
            _node(tmp_path, "n0", pg_dsn).close()
        assert "evil" not in str(info.value)
        assert database.execute("SELECT k, v FROM meta ORDER BY k").fetchall() == meta  # nothing half-created
        database.execute("DELETE FROM xps_orch_plans")
        ring = _node(tmp_path, "n0", pg_dsn)  # the same home, once the rows are gone
        ring.close()
        assert _mark(database) is not None
    finally:
        database.close()


def _xps(root: Path, home: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home",
                           str(root / home), *args], capture_output=True, text=True, timeout=120, check=False)


def test_cli_init_and_key_create_mark_the_database_and_a_forged_plan_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "xps.json").write_text(json.dumps({"keyring": {"database": pg_dsn}}))
    for args in (("init",), ("key", "create", "orders", "--algo", "AES-256-GCM")):
        out = _xps(tmp_path, "h", *args)
        assert out.returncode == 0, out.stderr
    database = Database(pg_dsn)
    try:
        assert _mark(database) is not None
        database.execute(_FORGED_PLAN)
        status = _xps(tmp_path, "h", "orch", "status")
        assert status.returncode == 2 and "roster" in status.stderr and "evil" not in status.stdout, status
        assert database.execute("SELECT count(*) FROM versions").fetchone()[0] == 1
    finally:
        database.close()


# -- O2 (b): an earlier release's database: rows are sealed only by an explicit adoption ------------

def test_rows_in_an_unmarked_database_are_refused_until_the_operator_adopts_them(pg_server: PgServer,
                                                                                 tmp_path: Path) -> None:
    ring, _ = _earlier_release(pg_server, tmp_path, rows=True)
    try:
        assert _mark(_db(ring)) is None
        with pytest.raises(PolicyError, match=r"xps_orch_plans: 1 row.*`xps orch adopt`") as info:
            Orchestrator(ring, node="n0", lease_ttl=30)
        assert type(info.value).__name__ == "UnsealedRows" and "evil" not in str(info.value)
        with pytest.raises(PolicyError, match="xps orch adopt"):
            PqPosture(ring, node="n0", base=BASE)
        assert _mark(_db(ring)) is None and _sealed_records(ring) == []
        assert _db(ring).execute("SELECT mac FROM xps_orch_plans").fetchone()[0] is None
        from xpscerpto.orchestrator.orchestrator import adopt_orchestration

        # The operator reviewed the row and adopts it: sealed, listed, journaled.
        assert adopt_orchestration(ring) == [("xps_orch_plans", ("evil",))]
        assert _sealed_records(ring) == [("orchestration", 1)]
        assert adopt_orchestration(ring) is None  # once
        orch = Orchestrator(ring, node="n0", lease_ttl=30)
        assert [p.name for p, _, _ in orch.plans()] == ["evil"]
    finally:
        ring.close()
    # Without rows, the first orchestrator marks it (nothing to review).
    (tmp_path / "empty").mkdir()
    empty, _ = _earlier_release(pg_server, tmp_path / "empty", rows=False)
    try:
        Orchestrator(empty, node="n0", lease_ttl=30)
        assert _mark(_db(empty)) is not None and _sealed_records(empty) == [("orchestration", 0)]
        _db(empty).execute(_FORGED_PLAN)
        with pytest.raises(KeyringTampered, match="roster"):
            Orchestrator(empty, node="n1", lease_ttl=30).plans()
    finally:
        empty.close()


def test_cli_orch_adopt_lists_what_it_sealed(pg_server: PgServer, tmp_path: Path) -> None:
    ring, dsn = _earlier_release(pg_server, tmp_path, rows=True)
    ring.close()
    (tmp_path / "xps.json").write_text(json.dumps({"keyring": {"database": dsn}}))
    status = _xps(tmp_path, "n0", "orch", "status")
    assert status.returncode == 2 and "xps_orch_plans: 1 row" in status.stderr and "evil" not in status.stderr
    adopted = _xps(tmp_path, "n0", "orch", "adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert "sealed 1 orchestration row" in adopted.stdout and "xps_orch_plans 'evil'" in adopted.stdout
    again = _xps(tmp_path, "n0", "orch", "adopt", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"sealed": None}, again
    status = _xps(tmp_path, "n0", "orch", "status", "--json")
    assert status.returncode == 0 and [p["plan"] for p in json.loads(status.stdout)["plans"]] == ["evil"]


# -- The review-to-adopt window: --review shows a fingerprint, --expect seals only those rows -------

_SECOND_PLAN = _FORGED_PLAN.replace("'evil'", "'later'")


def test_adopt_with_the_reviewed_fingerprint_refuses_a_row_inserted_after_the_review(pg_server: PgServer,
                                                                                     tmp_path: Path) -> None:
    from xpscerpto.orchestrator import adopt_orchestration, review_orchestration

    ring, _ = _earlier_release(pg_server, tmp_path, rows=True)
    try:
        reviewed = review_orchestration(ring)
        assert reviewed is not None
        rows, fingerprint = reviewed
        assert [(t, r["plan"], r["suite"]) for t, r in rows] == [("xps_orch_plans", "evil", "AES-128-GCM")]
        assert _mark(_db(ring)) is None and review_orchestration(ring) == reviewed  # reads only, stable
        _db(ring).execute(_SECOND_PLAN)  # a database writer, between the review and the adoption
        with pytest.raises(sealed.RowsChanged, match=r"xps_orch_plans: 2 rows.*--review") as info:
            adopt_orchestration(ring, expect=fingerprint)
        assert "later" not in str(info.value) and info.value.code == "XPS_ERR_POLICY"
        assert _mark(_db(ring)) is None and _sealed_records(ring) == []  # nothing sealed
        # An edit of a reviewed row is refused the same way.
        _db(ring).execute("DELETE FROM xps_orch_plans WHERE plan = 'later'")
        _db(ring).execute("UPDATE xps_orch_plans SET suite = 'CHACHA20-POLY1305'")
        with pytest.raises(sealed.RowsChanged):
            adopt_orchestration(ring, expect=fingerprint)
        _db(ring).execute("UPDATE xps_orch_plans SET suite = 'AES-128-GCM'")
        assert adopt_orchestration(ring, expect=fingerprint) == [("xps_orch_plans", ("evil",))]
        assert _sealed_records(ring) == [("orchestration", 1)]
        assert review_orchestration(ring) is None and adopt_orchestration(ring, expect=fingerprint) is None
    finally:
        ring.close()


@pytest.mark.parametrize("expect", ["", "sha256:", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "md5:" + "0" * 64,
                                    "sha256:" + "0" * 64 + "\n", "\udcff", 7, b"sha256:" + b"0" * 64])
def test_adopt_refuses_an_expect_that_is_not_a_fingerprint(pg_server: PgServer, tmp_path: Path,
                                                           expect: object) -> None:
    from xpscerpto.orchestrator import adopt_orchestration

    ring, _ = _earlier_release(pg_server, tmp_path, rows=True)
    try:
        with pytest.raises(PolicyError, match="expect: expected a fingerprint") as info:
            adopt_orchestration(ring, expect=expect)  # type: ignore[arg-type]
        assert "\udcff" not in str(info.value)
        assert _mark(_db(ring)) is None and _sealed_records(ring) == []
    finally:
        ring.close()


def test_cli_orch_adopt_review_then_expect(pg_server: PgServer, tmp_path: Path) -> None:
    ring, dsn = _earlier_release(pg_server, tmp_path, rows=True)
    database = _db(ring)
    (tmp_path / "xps.json").write_text(json.dumps({"keyring": {"database": dsn}}))
    try:
        review = _xps(tmp_path, "n0", "orch", "adopt", "--review", "--json")
        assert review.returncode == 0, review.stderr
        shown = json.loads(review.stdout)
        assert [(r["table"], r["row"]["plan"], r["row"]["suite"]) for r in shown["review"]] == [
            ("xps_orch_plans", "'evil'", "'AES-128-GCM'")]
        assert _mark(database) is None  # --review seals nothing
        text = _xps(tmp_path, "n0", "orch", "adopt", "--review")
        assert f"xps orch adopt --expect {shown['fingerprint']}" in text.stdout and "suite='AES-128-GCM'" in text.stdout
        both = _xps(tmp_path, "n0", "orch", "adopt", "--review", "--expect", shown["fingerprint"])
        assert both.returncode == 2 and "Traceback" not in both.stderr
        database.execute(_SECOND_PLAN)
        refused = _xps(tmp_path, "n0", "orch", "adopt", "--expect", shown["fingerprint"])
        assert refused.returncode == 2 and "not the ones reviewed" in refused.stderr, refused
        assert "later" not in refused.stderr and "Traceback" not in refused.stderr and _mark(database) is None
        database.execute("DELETE FROM xps_orch_plans WHERE plan = 'later'")
        adopted = _xps(tmp_path, "n0", "orch", "adopt", "--expect", shown["fingerprint"])
        assert adopted.returncode == 0 and "sealed 1 orchestration row" in adopted.stdout, adopted
        assert _mark(database) is not None
    finally:
        ring.close()


# -- O3: a key in an unfinished migration is not started in another -----------------------------

def _set_phase(ring: Keyring, name: str, phase: str) -> None:
    with ring.store.write() as db:
        row = sealed.read(ring.store, db, sealed.MIGRATIONS, "name = ?", (name,))[0]
        sealed.put(ring.store, db, sealed.MIGRATIONS, {**row, "phase": phase})


def test_a_key_already_in_an_unfinished_migration_is_refused(ring: Keyring) -> None:
    ring.create("users", "AES-256-GCM")
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.migrate(SuiteMigration("a-to-xchacha", keys=("orders",), target="XCHACHA20-POLY1305", canary=1.0))
    for phase in ("canary", "watching", "rollout", "committed"):
        _set_phase(ring, "a-to-xchacha", phase)
        with pytest.raises(PolicyError, match=r"keys: 'orders' is already in suite migration 'a-to-xchacha'"):
            orch.migrate(SuiteMigration("b-to-aes128", keys=("users", "orders"), target="AES-128-GCM"))
    assert [m["name"] for m in orch.migration_status()] == ["a-to-xchacha"]
    orch.migrate(SuiteMigration("c-users", keys=("users",), target="AES-128-GCM"))  # another key: accepted
    for phase in ("retired", "aborted"):  # a finished migration holds no key
        _set_phase(ring, "a-to-xchacha", phase)
        orch.migrate(SuiteMigration(f"d-{phase}", keys=("orders",), target="AES-128-GCM"))
        _set_phase(ring, f"d-{phase}", "retired")


# -- O8: typed refusals, no caller bytes --------------------------------------------------------

def test_pause_and_resume_refuse_a_name_the_database_cannot_store(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    for call in (orch.pause, orch.resume):
        for bad in ("a\udcff" + MARK, "", "\n" + MARK, MARK * 100, None, 7, b"p"):
            with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: plan: ") as info:
                call(bad)  # type: ignore[arg-type]
            assert MARK not in str(info.value)


def test_hygiene_refuses_what_is_not_a_plan_or_a_lease_state(ring: Keyring) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    plan = Plan("p", key="orders", policy="every=1h")
    state = orch.lease.acquire()
    for bad in (None, 7, "p" + MARK, b"x", [MARK]):
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: plan: expected a Plan") as info:
            orch.hygiene(bad, state)  # type: ignore[arg-type]
        assert MARK not in str(info.value)
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: state: expected a LeaseState"):
            orch.hygiene(plan, bad)  # type: ignore[arg-type]


anything = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40).map(lambda t: t + MARK),
    st.text(max_size=5), st.binary(max_size=20), st.lists(st.text(max_size=3), max_size=3),
    st.just(memoryview(b"abc")[::2]), st.sampled_from(["p", "orders", "a\udcff" + MARK, "\x00" + MARK]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(anything, anything)
@example("a\udcff" + MARK, None)
@example(None, "a\udcff" + MARK)
def test_the_touched_public_methods_raise_only_typed_errors(ring: Keyring, value: Any, other: Any) -> None:
    orch = Orchestrator(ring, node="n0", lease_ttl=30)
    orch.track(Plan("p", key="orders", policy="every=1h"))
    state = orch.lease.acquire()
    plan = Plan("p", key="orders", policy="every=1h")
    calls = [lambda: orch.pause(value), lambda: orch.resume(value), lambda: orch.hygiene(value, state),
             lambda: orch.hygiene(plan, value), lambda: orch.migrate(value),
             lambda: Orchestrator(ring, node=value, lease_ttl=30), lambda: Orchestrator(value, node="n0"),
             lambda: Orchestrator(ring, node="n0", lease_ttl=value, interval=other), lambda: _adopt(value)]
    for call in calls:
        try:
            call()  # type: ignore[no-untyped-call]
        except XpsError as exc:
            assert MARK not in str(exc), str(exc)
    if isinstance(value, str) and isinstance(other, str):
        # Only typed; an unknown key is named when its name is short and simple (the keyring's
        # describe does so by design), so the marker may appear here.
        with contextlib.suppress(XpsError):
            orch.migrate(SuiteMigration("m" + str(next(_names)), keys=(value, other), target="AES-128-GCM"))


def _adopt(keyring: Any) -> object:
    from xpscerpto.orchestrator.orchestrator import adopt_orchestration

    return adopt_orchestration(keyring)
