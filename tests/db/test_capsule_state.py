"""The routing state in PostgreSQL (``hotpatch.state_database``): one row per node, committed in
one statement, locked across processes (and released by a killed holder), refused — never reset —
when the row the home recorded is gone or damaged."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from xpscerpto.capsules.store import ActiveCapsule, RoutingState
from xpscerpto.db import Database
from xpscerpto.db.capsule_state import PgStateStore
from xpscerpto.errors import PolicyError, UpdateError
from xpscerpto.home import Home

from tests.capsules.test_cli_service import NAME, OP, published, wait_for

__all__ = ["published"]


def _cap(i: int) -> ActiveCapsule:
    return ActiveCapsule(f"cap-{i}", "1.0.0", f"{i:064x}", (f"aead.op{i}",))


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home.resolve(tmp_path / "home")
    h.initialise(policy={})
    return h


def test_a_commit_is_the_row_and_a_recorded_row_that_vanished_is_refused_not_reset(pg_dsn: str, home: Home) -> None:
    store = PgStateStore(pg_dsn, node="a", home=home)
    assert store.load() == RoutingState()
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    assert [a.name for a in PgStateStore(pg_dsn, node="a", home=home).load().active] == ["cap-1"]
    assert home.record().stores["routing"] == store.ref and not home.state.exists()
    db = Database(pg_dsn)
    try:
        db.execute("DELETE FROM xps_capsule_state WHERE node = 'a'")
        with pytest.raises(UpdateError, match="missing, though this home recorded it") as info:
            PgStateStore(pg_dsn, node="a", home=home).load()
        assert info.value.reason == "state"
        for doc in ("not json", "[]", '{"active": 7, "highest": {}}', '{"format": 1}'):
            db.execute("INSERT INTO xps_capsule_state (node, doc) VALUES ('a', ?) ON CONFLICT (node) DO UPDATE "
                       "SET doc = excluded.doc", (doc,))
            with pytest.raises(UpdateError, match="xps_capsule_state node 'a'") as info:
                store.load()
            assert info.value.reason == "state"
    finally:
        db.close()
        store.close()


def test_a_home_keeps_its_routing_state_where_it_was_created(pg_dsn: str, home: Home) -> None:
    RoutingState().save(home.state)
    home.register_store("routing")
    with pytest.raises(PolicyError, match="a home keeps its stores where they were created"):
        PgStateStore(pg_dsn, node="a", home=home)
    other = Home.resolve(home.root.parent / "other")
    other.initialise(policy={})
    PgStateStore(pg_dsn, node="b", home=other).save(RoutingState())
    with pytest.raises(PolicyError, match="routing store"):
        PgStateStore(pg_dsn, node="c", home=other)  # another node's row for this home: refused
    for bad in ("", "x" * 201, "a\nb", 7):
        with pytest.raises(PolicyError, match="node"):
            PgStateStore(pg_dsn, node=bad, home=other)  # type: ignore[arg-type]


def test_racing_writers_of_one_node_lose_no_update(pg_dsn: str, home: Home) -> None:
    stores = [PgStateStore(pg_dsn, node="a", home=home) for _ in range(4)]
    errors: list[BaseException] = []

    def add(store: PgStateStore, first: int) -> None:
        try:
            for i in range(first, first + 10):
                with store.lock():
                    store.save(store.load().enable(_cap(i), operator="t"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(s, 100 * n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(stores[0].load().active) == 40
    for s in stores:
        s.close()


def test_a_holder_killed_with_the_lock_releases_it(pg_dsn: str, tmp_path: Path, home: Home) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from xpscerpto.db.capsule_state import PgStateStore
        from xpscerpto.home import Home
        store = PgStateStore({pg_dsn!r}, node="a", home=Home.resolve({str(home.root)!r}))
        with store.lock():
            print("locked", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # Another home (another lock file), the same node: only the database lock stands between.
        probe = PgStateStore(pg_dsn, node="a", home=Home.resolve(tmp_path / "probe"))
        got = threading.Event()

        def take() -> None:
            with probe.lock():
                got.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(0.5)  # held by the other process
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert got.wait(10)  # the server released it with the dead process's connection
        t.join(5)
        probe.close()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_database_outage_during_a_commit_keeps_the_previous_state(pg_dsn: str, home: Home,
                                                                    pg_server: object) -> None:
    store = PgStateStore(pg_dsn, node="a", home=home)
    store.save(RoutingState().enable(_cap(1), operator="t"))
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        with pytest.raises(UpdateError, match="cannot write") as info:
            store.save(RoutingState().enable(_cap(2), operator="t"))
        assert info.value.reason == "io"
    finally:
        pg_server.start()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while True:
        try:
            assert [a.name for a in store.load().active] == ["cap-1"]
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    store.close()


def test_a_watch_service_configured_for_the_database_commits_there_and_offline_commands_follow(
        published: tuple[Path, Path, Path], pg_dsn: str, tmp_path: Path) -> None:
    capsule, _pub, home = published
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"hotpatch": {"state_database": pg_dsn, "node": "node-a"}}))
    base = [sys.executable, "-m", "xpscerpto", "--config", str(config), "--home", str(home)]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    proc = subprocess.Popen([*base, "watch", str(inbox), "--polling"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("watching")
        shutil.copy2(capsule, inbox / NAME)

        def status() -> dict[str, object]:
            out = subprocess.run([*base, "status", "--json"], capture_output=True, text=True, check=True)
            return dict(json.loads(out.stdout))

        wait_for(lambda: status()["routes"].get(OP) == "xchacha20-openssl", "the capsule enabled")  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not (home / "state.json").exists()  # committed to the database row instead
    offline = status()
    assert offline["running"] is False and [a["name"] for a in offline["active"]] == ["xchacha20-openssl"]  # type: ignore[index, union-attr]
    subprocess.run([*base, "rollback", OP], check=True, capture_output=True, text=True)
    assert status()["active"] == []


def test_the_database_dying_during_a_cutover_leaves_routing_as_it_was_and_a_retry_lands(
        tmp_path: Path, pg_dsn: str, pg_server: object) -> None:
    import xpscerpto as xps
    from xpscerpto.capsules.updater import StagePlan, Updater

    from tests.capsules.test_updater import FAST_GATES, Publisher

    pub = Publisher(tmp_path)
    states = PgStateStore(pg_dsn, node="node-a", home=pub.home)
    eng = xps.Engine()
    up = Updater(eng, pub.home, gates=FAST_GATES, state_store=states,
                 plan=StagePlan(canary_share=1.0, canary_seconds=2.0, dual_run_seconds=0, drain_timeout=10))
    up.restore()
    before = eng.table.provider_for(OP)
    outcome: list[BaseException | str] = []

    def apply() -> None:
        try:
            outcome.append(up.apply(pub.capsule("1.0.0")).version)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=apply)
    worker.start()
    wait_for(lambda: eng.table.provider_for(OP) == "xchacha20-openssl", "the canary serving")
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        worker.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], xps.XpsError), outcome  # typed, not a crash
        assert eng.table.provider_for(OP) == before  # nothing committed: routing as it was
    finally:
        pg_server.start()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while True:  # the same capsule again, once the database is back: it lands and is committed
        try:
            assert up.apply(pub.capsule("1.0.0")).version == "1.0.0"
            break
        except xps.XpsError:
            assert time.monotonic() < deadline, "the retry never landed"
            time.sleep(0.5)
    assert eng.table.provider_for(OP) == "xchacha20-openssl"
    assert [a.version for a in states.load().active] == ["1.0.0"]
    up.close()
    states.close()


def _put_row(dsn: str, doc: bytes | str) -> None:
    db = Database(dsn)
    try:
        db.execute("UPDATE xps_capsule_state SET doc = ? WHERE node = 'a'",
                   (doc.decode("ascii") if isinstance(doc, bytes) else doc,))
    finally:
        db.close()


def _row(dsn: str) -> str:
    db = Database(dsn)
    try:
        row = db.execute("SELECT doc FROM xps_capsule_state WHERE node = 'a'").fetchone()
        assert row is not None
        return str(row[0])
    finally:
        db.close()


def test_a_row_edited_or_put_back_in_the_database_is_refused(pg_dsn: str, home: Home) -> None:
    # Review finding: the row's digest is one anyone can recompute, so a database writer rewrote
    # it to "nothing enabled" with empty version memory; the node served the built-in provider
    # after a restart, journaled nothing, and took an older capsule again.
    store = PgStateStore(pg_dsn, node="a", home=home)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    older = _row(pg_dsn)
    with store.lock():
        store.save(store.load().enable(_cap(2), operator="t"))
    current = _row(pg_dsn)
    for forged in (RoutingState().to_bytes(), RoutingState().enable(_cap(3), operator="x").to_bytes(), older):
        _put_row(pg_dsn, forged)
        with pytest.raises(UpdateError, match="not the state this node last committed") as info:
            PgStateStore(pg_dsn, node="a", home=home).load()
        assert info.value.reason == "state"
    _put_row(pg_dsn, current)
    assert [a.name for a in store.load().active] == ["cap-1", "cap-2"]
    store.close()


@pytest.mark.parametrize("damage", ["delete", "empty", "truncate", "garbage", "another node", "directory"])
def test_a_damaged_anchor_is_a_clear_refusal_never_a_reset(pg_dsn: str, home: Home, damage: str) -> None:
    store = PgStateStore(pg_dsn, node="a", home=home)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    anchor = home.root / "state.anchor"
    text = anchor.read_text()
    assert home.record().stores["routing_anchor"] == "state.anchor"
    if damage == "delete":
        anchor.unlink()
    elif damage == "empty":
        anchor.write_text("")
    elif damage == "truncate":
        anchor.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        anchor.write_bytes(b"\xff\x00" * 10)
    elif damage == "another node":
        anchor.write_text(text.replace('"node": "a"', '"node": "b"'))
    else:
        anchor.unlink()
        anchor.mkdir()
    with pytest.raises((UpdateError, PolicyError), match="anchor") as info:
        PgStateStore(pg_dsn, node="a", home=home).load()
    assert "sha256:" not in str(info.value)
    with pytest.raises((UpdateError, PolicyError), match="anchor"), store.lock():
        store.save(RoutingState())  # never re-created by a save either
    assert "cap-1" in _row(pg_dsn)
    store.close()


def test_a_row_written_before_anchors_existed_is_adopted_once(pg_dsn: str, home: Home) -> None:
    store = PgStateStore(pg_dsn, node="a", home=home)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    # As an earlier release left it: the row, and a home that records no anchor.
    (home.root / "state.anchor").unlink()
    record = json.loads(home.record_path.read_text())
    del record["stores"]["routing_anchor"]
    home.record_path.write_text(json.dumps(record))
    upgraded = PgStateStore(pg_dsn, node="a", home=home)
    assert [a.name for a in upgraded.load().active] == ["cap-1"]
    assert home.record().stores["routing_anchor"] == "state.anchor"
    _put_row(pg_dsn, RoutingState().to_bytes())
    with pytest.raises(UpdateError, match="not the state this node last committed"):
        PgStateStore(pg_dsn, node="a", home=home).load()
    upgraded.close()
    store.close()


KILLER = textwrap.dedent("""
    import os, signal, sys
    from xpscerpto.capsules.store import ActiveCapsule
    from xpscerpto.db import capsule_state
    from xpscerpto.home import Home
    dsn, root, point = sys.argv[1], sys.argv[2], sys.argv[3]
    writes = []
    real = capsule_state.PgStateStore._write_anchor
    def write_then_die(self, *digests):
        real(self, *digests)
        writes.append(digests)
        if point == "before-row" and len(digests) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    capsule_state.PgStateStore._write_anchor = write_then_die
    if point == "after-row":
        from xpscerpto.db.postgres import Database
        real_execute = Database.execute
        def execute_then_die(self, sql, parameters=()):
            out = real_execute(self, sql, parameters)
            if sql.startswith("INSERT INTO xps_capsule_state"):
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        Database.execute = execute_then_die
    store = capsule_state.PgStateStore(dsn, node="a", home=Home.resolve(root))
    with store.lock():
        store.save(store.load().enable(ActiveCapsule("cap-2", "1.0.0", "2" * 64, ("aead.op2",)), operator="t"))
""")


@pytest.mark.parametrize(("point", "expected"), [("before-row", ["cap-1"]), ("after-row", ["cap-1", "cap-2"])])
def test_a_save_killed_between_its_writes_is_read_back_never_as_tampering(
        pg_dsn: str, home: Home, point: str, expected: list[str]) -> None:
    store = PgStateStore(pg_dsn, node="a", home=home)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    before = _row(pg_dsn)
    run = subprocess.run([sys.executable, "-c", KILLER, pg_dsn, str(home.root), point], check=False, timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert len(json.loads((home.root / "state.anchor").read_text())["digests"]) == 2
    with store.lock():  # the updater's restore: a locked load, which settles the anchor
        assert [a.name for a in store.load().active] == expected
    assert len(json.loads((home.root / "state.anchor").read_text())["digests"]) == 1
    if point == "after-row":  # the row from before the killed save may not come back now
        _put_row(pg_dsn, before)
        with pytest.raises(UpdateError, match="not the state this node last committed"):
            store.load()
    store.close()


def test_a_home_without_a_record_still_checks_the_anchor_it_wrote(pg_dsn: str, tmp_path: Path) -> None:
    # Found re-running the review's script: with no home.json (an Updater used as a library) the
    # anchor was never recorded, so every read adopted whatever row it found.
    bare = Home.resolve(tmp_path / "bare")
    assert not bare.record_path.exists()
    store = PgStateStore(pg_dsn, node="a", home=bare)
    with store.lock():
        store.save(store.load().enable(_cap(1), operator="t"))
    _put_row(pg_dsn, RoutingState().to_bytes())
    with pytest.raises(UpdateError, match="not the state this node last committed"):
        PgStateStore(pg_dsn, node="a", home=bare).load()
    store.close()
