"""Fleet-counter rows a database writer stored outside xps (NaN, infinities, negatives) count for
nothing, so no reader of ``xps_counters`` fails on them (review-orch O6)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from xpscerpto.db import Database
from xpscerpto.db.counter_store import CounterStore
from xpscerpto.keyring import Keyring
from xpscerpto.orchestrator import Orchestrator

from tests.db.test_postgres import _node

NAME = "xps_keyring_decryptions_total"
#: The largest value a row may hold (counter_store.MAX_VALUE): past it a float no longer counts by ones.
MAX_VALUE = float(2**53)
BAD_VALUES = ["NaN", "Infinity", "-Infinity", "-1", "-0.5", "1e308", str(MAX_VALUE * 2)]


@pytest.fixture
def db(pg_dsn: str) -> Iterator[Database]:
    database = Database(pg_dsn)
    yield database
    database.close()


def _insert(db: Database, instance: str, labels: str, value: str) -> None:
    # As a database writer would: the text goes through PostgreSQL's own float8 input ('NaN', 'Infinity').
    db.execute("INSERT INTO xps_counters (instance, node, name, labels, value) "
               "VALUES (?, 'evil', ?, ?, CAST(? AS DOUBLE PRECISION))", (instance, NAME, labels, value))


def test_rows_holding_no_count_are_left_out_and_the_rest_still_sum(db: Database) -> None:
    store = CounterStore(db, instance="a#1", node="a")
    store.publish({NAME: {(("key", "orders"), ("result", "ok"), ("version", "2")): 7}})
    labels = '[["key","orders"],["result","ok"],["version","2"]]'
    for i, value in enumerate(BAD_VALUES):
        _insert(db, f"evil#{i}", labels, value)
    _insert(db, "fine#1", labels, str(MAX_VALUE))  # the bound itself is a count
    rows = store.rows(NAME)
    assert sorted(value for _, _, value in rows) == [7.0, MAX_VALUE]
    assert all(math.isfinite(v) and v >= 0 for _, _, v in rows)
    assert store.total(NAME, key="orders") == 7.0 + MAX_VALUE
    assert store.total(NAME, nodes=["evil"]) == MAX_VALUE


@pytest.fixture
def ring(pg_dsn: str, tmp_path: Path) -> Iterator[Keyring]:
    first = _node(tmp_path, "n0", pg_dsn)
    first.create("orders", "AES-256-GCM")
    yield first
    first.close()


def test_a_nan_counter_row_does_not_fail_the_canary_watch(ring: Keyring, pg_dsn: str) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    orch = Orchestrator(ring, node="n0", lease_ttl=30, interval=0.1)
    try:
        orch.migrate(SuiteMigration("m", keys=("orders",), target="XCHACHA20-POLY1305", canary=1.0, watch=3600))
        orch.tick()
        assert orch.migration_status()[0]["phase"] == "watching"
        canary = ring.describe("orders").active_version
        db = Database(pg_dsn)
        try:
            for i, value in enumerate(BAD_VALUES):
                for result in ("ok", "auth"):
                    labels = f'[["key","orders"],["result","{result}"],["version","{canary}"]]'
                    _insert(db, f"evil#{i}", labels, value)
        finally:
            db.close()
        orch.tick()  # was: ValueError: cannot convert float NaN to integer, at every tick
        assert orch.migration_status()[0]["phase"] == "watching"  # no data: no decision
    finally:
        orch.stop()
