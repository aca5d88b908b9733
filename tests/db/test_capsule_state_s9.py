"""Review s9, F7: a home that never committed to a ``xps_capsule_state`` row does not adopt one it
finds under its node name (planted by a database writer, or another home's with the same
``hotpatch.node``); only a home of the earlier release, which records that row as its routing
store but has no anchor yet, adopts it, once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.store import ActiveCapsule, RoutingState
from xpscerpto.capsules.updater import Updater
from xpscerpto.db import Database
from xpscerpto.db.capsule_state import PgStateStore
from xpscerpto.errors import UpdateError
from xpscerpto.home import Home

from tests.capsules.test_updater import FAST_GATES, NO_TRIAL, OP, Publisher

#: What a database writer plants: version memory no genuine capsule is newer than.
PLANTED = RoutingState(highest={"xchacha20-openssl": "99.0.0"}, op_highest={OP: "99.0.0"})


def _cap(i: int) -> ActiveCapsule:
    return ActiveCapsule(f"cap-{i}", "1.0.0", f"{i:064x}", (f"aead.op{i}",))


def _home(root: Path) -> Home:
    h = Home.resolve(root)
    h.initialise(policy={})
    return h


def _put(dsn: str, node: str, doc: bytes) -> None:
    db = Database(dsn)
    try:
        db.execute("INSERT INTO xps_capsule_state (node, doc) VALUES (?, ?)", (node, doc.decode("ascii")))
    finally:
        db.close()


def _row(dsn: str, node: str) -> str | None:
    db = Database(dsn)
    try:
        row = db.execute("SELECT doc FROM xps_capsule_state WHERE node = ?", (node,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


def _assert_refused(info: pytest.ExceptionInfo[UpdateError], node: str) -> None:
    message = str(info.value)
    assert info.value.reason == "state"
    assert "\n" not in message and "sha256:" not in message
    assert f"node {node!r}" in message and "hotpatch.node" in message and "remove the row" in message


@pytest.mark.parametrize("recorded", [True, False], ids=["home.json", "no home.json"])
def test_a_new_home_refuses_a_row_planted_for_its_node_name(pg_dsn: str, tmp_path: Path, recorded: bool) -> None:
    home = _home(tmp_path / "home") if recorded else Home.resolve(tmp_path / "home")
    _put(pg_dsn, "node-c", PLANTED.to_bytes())
    store = PgStateStore(pg_dsn, node="node-c", home=home)
    try:
        with pytest.raises(UpdateError, match="already exists") as info:
            store.load()
        _assert_refused(info, "node-c")
        with pytest.raises(UpdateError, match="already exists") as info, store.lock():
            store.save(RoutingState())  # nor overwritten by a first save that skipped the load
        _assert_refused(info, "node-c")
    finally:
        store.close()
    # Nothing adopted: no anchor, no recorded store, the row as the writer left it.
    assert not (home.root / "state.anchor").exists()
    assert not recorded or not {"routing", "routing_anchor"} & set(home.record().stores)
    assert _row(pg_dsn, "node-c") == PLANTED.to_bytes().decode()


def test_the_reviewers_repro_a_planted_version_memory_stops_the_start_not_every_capsule(
        pg_dsn: str, tmp_path: Path) -> None:
    pub = Publisher(tmp_path)
    _put(pg_dsn, "node-c", PLANTED.to_bytes())
    store = PgStateStore(pg_dsn, node="node-c", home=pub.home)
    up = Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL, state_store=store)
    try:
        with pytest.raises(UpdateError, match="already exists") as info:
            up.restore()
        _assert_refused(info, "node-c")
    finally:
        up.close()
        store.close()
    # The operator's remedy: remove the row. The node then starts empty and takes genuine capsules.
    db = Database(pg_dsn)
    try:
        db.execute("DELETE FROM xps_capsule_state WHERE node = 'node-c'")
    finally:
        db.close()
    store = PgStateStore(pg_dsn, node="node-c", home=pub.home)
    up = Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL, state_store=store)
    try:
        up.restore()
        assert up.apply(pub.capsule("1.0.0"), operator="ops").version == "1.0.0"
        assert dict(store.load().highest) == {"xchacha20-openssl": "1.0.0"}
    finally:
        up.close()
        store.close()


def test_a_second_home_on_the_same_node_name_is_refused_and_the_first_keeps_its_row(
        pg_dsn: str, tmp_path: Path) -> None:
    first, second = _home(tmp_path / "first"), _home(tmp_path / "second")
    a = PgStateStore(pg_dsn, node="n", home=first)
    with a.lock():
        a.save(a.load().enable(_cap(1), operator="t"))
    committed = _row(pg_dsn, "n")
    b = PgStateStore(pg_dsn, node="n", home=second)
    try:
        with pytest.raises(UpdateError, match="already exists") as info:
            b.load()
        _assert_refused(info, "n")
        with pytest.raises(UpdateError, match="already exists"), b.lock():
            b.save(RoutingState().enable(_cap(2), operator="t"))
    finally:
        b.close()
    assert _row(pg_dsn, "n") == committed
    assert [c.name for c in a.load().active] == ["cap-1"]  # the first home's row, still its own
    # Another node name for the second home: a row of its own.
    other = PgStateStore(pg_dsn, node="n2", home=second)
    with other.lock():
        other.save(other.load().enable(_cap(2), operator="t"))
    assert [c.name for c in other.load().active] == ["cap-2"]
    other.close()
    a.close()


def test_the_upgrade_of_a_home_that_records_the_row_still_adopts_it_once(pg_dsn: str, tmp_path: Path) -> None:
    home = _home(tmp_path / "home")
    store = PgStateStore(pg_dsn, node="a", home=home)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    store.close()
    # As the earlier release left it: `routing` recorded with this row, no anchor.
    (home.root / "state.anchor").unlink()
    record = json.loads(home.record_path.read_text())
    del record["stores"]["routing_anchor"]
    home.record_path.write_text(json.dumps(record))
    upgraded = PgStateStore(pg_dsn, node="a", home=home)
    try:
        with upgraded.lock():
            assert [c.name for c in upgraded.load().active] == ["cap-1"]
            upgraded.save(upgraded.load().enable(_cap(2), operator="t"))
        assert home.record().stores["routing_anchor"] == "state.anchor"
        again = PgStateStore(pg_dsn, node="a", home=home)
        assert [c.name for c in again.load().active] == ["cap-1", "cap-2"]
        again.close()
    finally:
        upgraded.close()


def test_a_first_save_with_the_database_away_is_an_io_refusal(pg_dsn: str, tmp_path: Path,
                                                              pg_server: object) -> None:
    home = _home(tmp_path / "home")
    store = PgStateStore(pg_dsn, node="a", home=home)
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        with pytest.raises(UpdateError, match="cannot write") as info:
            store.save(RoutingState().enable(_cap(1), operator="t"))
        assert info.value.reason == "io"
    finally:
        pg_server.start()  # type: ignore[attr-defined]
        store.close()
