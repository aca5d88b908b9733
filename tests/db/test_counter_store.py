"""The fleet counters table: each process writes its own rows, readers sum every node's."""

from __future__ import annotations

import math

import pytest
from xpscerpto.db import Database
from xpscerpto.db.counter_store import CounterStore

NAME = "xps_channel_handshakes_total"
OK = (("pq", "true"), ("result", "ok"))
FAIL = (("pq", "true"), ("result", "auth"))


@pytest.fixture
def db(pg_dsn: str) -> Database:
    database = Database(pg_dsn)
    yield database
    database.close()


def test_sums_cover_every_instance_and_a_restart_adds_rows_instead_of_lowering_them(db: Database) -> None:
    a, b = CounterStore(db, instance="a#1", node="a"), CounterStore(db, instance="b#1", node="b")
    a.publish({NAME: {OK: 5, FAIL: 1}})
    b.publish({NAME: {OK: 3}})
    a.publish({NAME: {OK: 7}})  # cumulative: the newer value replaces this instance's row
    assert b.total(NAME, result="ok") == 10 and b.total(NAME, pq="true") == 11
    assert a.total(NAME, nodes=["b"]) == 3
    restarted = CounterStore(db, instance="a#2", node="a")  # the process came back, counting from 0
    restarted.publish({NAME: {OK: 2}})
    assert a.total(NAME, nodes=["a"], result="ok") == 9


def test_non_numbers_and_non_finite_values_are_not_written(db: Database) -> None:
    store = CounterStore(db, instance="a#1", node="a")
    assert store.publish({NAME: {OK: math.nan, FAIL: math.inf, (("x", "y"),): "7"}}) == 0  # type: ignore[dict-item]
    assert store.publish({}) == 0 and store.total(NAME) == 0


@pytest.mark.parametrize("labels", ["not json", "{}", "[[1]]", "[1, 2]", "null", '[["pq", 1]]', '[["a", "b", "c"]]'])
def test_a_row_edited_outside_xps_counts_for_nothing_instead_of_failing_the_reader(db: Database, labels: str) -> None:
    store = CounterStore(db, instance="a#1", node="a")
    store.publish({NAME: {OK: 4}})
    db.execute("INSERT INTO xps_counters (instance, node, name, labels, value) VALUES ('x', 'x', ?, ?, 99)",
               (NAME, labels))
    assert store.total(NAME) == 4
