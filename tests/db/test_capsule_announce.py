"""Capsule announcements on a real PostgreSQL: one node enables or rolls back, the others follow."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.updater import COMMITTED, Updater, rollback_offline
from xpscerpto.db import Database
from xpscerpto.db.capsule_announce import Announcer
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home

from tests.capsules.test_cli_service import wait_for
from tests.capsules.test_updater import FAST_GATES, OP, Publisher, _states, _updater, publisher

__all__ = ["publisher"]


def _other_node(publisher: Publisher, name: str, *, trusted: bool = True) -> tuple[xps.Engine, Updater]:
    home = Home.resolve(publisher.tmp / name)
    if trusted:
        shutil.copy2(publisher.home.trust, home.trust)
    eng = xps.Engine()
    return eng, _updater(eng, home)


def _journal_key(up: Updater) -> bytes:
    """The node's journal key (a journal gets its key with its first record)."""
    if not up.audit.tail(1):
        up.audit.record("TEST_NODE_START")
    return up.audit.public_key()


def _events(up: Updater, event: str) -> list[dict[str, object]]:
    return [e for e in up.audit.tail(200) if e["event"] == event]


def test_an_enable_and_a_rollback_on_one_node_reach_the_others_which_verify_themselves(
        publisher: Publisher, pg_dsn: str) -> None:
    eng_a = xps.Engine()
    a = _updater(eng_a, publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    eng_c, c = _other_node(publisher, "home-c", trusted=False)  # its trust store pins nobody
    # a follows b's rollbacks: it pins b's journal key (a fleet sharing one key would need none).
    nodes = [Announcer(pg_dsn, up, node=n, poll=0.5, peers=peers).start()
             for up, n, peers in ((a, "a", [_journal_key(b)]), (b, "b", []), (c, "c", []))]
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: eng_b.table.provider_for(OP) == cap.name, "node b to enable the announced capsule")
        enable_b = _events(b, "PATCH_ENABLE")[-1]
        assert enable_b["operator"] == "announce:a" and enable_b["sha256"] == cap.sha256
        assert "PATCH_VERIFY" in [e["event"] for e in b.audit.tail(200)]  # b verified it itself
        wait_for(lambda: bool(_events(c, "PATCH_REJECT")), "node c to refuse it")
        assert eng_c.table.provider_for(OP) == "sodium"  # c's trust store refuses: c stays as it was
        # A rollback on b (an operator there) is announced and followed by a.
        b.rollback(OP, operator="ops")
        wait_for(lambda: eng_a.table.provider_for(OP) == "sodium", "node a to roll back")
        assert _events(a, "PATCH_ROLLBACK")[-1]["operator"] == "announce:b"
        time.sleep(1.0)  # a few more polls: nothing echoes back and forth
        db = Database(pg_dsn)
        try:
            rows = db.execute("SELECT action, node FROM xps_capsule_events ORDER BY id").fetchall()
        finally:
            db.close()
        assert rows == [("enable", "a"), ("rollback", "b")]
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


def test_a_node_that_starts_later_catches_up_with_what_was_announced(publisher: Publisher, pg_dsn: str) -> None:
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.5).start()
    cap = a.apply(publisher.capsule("1.0.0"))
    wait_for(lambda: first.last_error is None and _announced(pg_dsn) == 1, "the announcement")
    eng_b, b = _other_node(publisher, "home-b")
    late = Announcer(pg_dsn, b, node="b", poll=0.5).start()
    try:
        wait_for(lambda: eng_b.table.provider_for(OP) == cap.name, "node b to catch up")
    finally:
        late.stop()
        first.stop()
        a.close()
        b.close()


def _announced(dsn: str) -> int:
    db = Database(dsn)
    try:
        row = db.execute("SELECT count(*) FROM xps_capsule_events").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def test_announced_bytes_altered_in_the_database_are_refused_by_the_receiving_node(
        publisher: Publisher, pg_dsn: str) -> None:
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    first = Announcer(pg_dsn, a, node="a", poll=0.5).start()
    cap = a.apply(publisher.capsule("1.0.0"))
    wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    db = Database(pg_dsn)
    try:  # someone with write access to the database swaps a byte of the capsule
        raw = bytearray(db.execute("SELECT raw FROM xps_capsules").fetchone()[0])  # type: ignore[index]
        raw[len(raw) // 2] ^= 1
        db.execute("UPDATE xps_capsules SET raw = ?", (bytes(raw),))
    finally:
        db.close()
    late = Announcer(pg_dsn, b, node="b", poll=0.5).start()
    try:
        wait_for(lambda: bool(_events(b, "PATCH_REJECT")), "node b to refuse the altered bytes")
        assert eng_b.table.provider_for(OP) == "sodium"
        assert cap.sha256 not in {x.sha256 for x in b.state.active}
    finally:
        late.stop()
        first.stop()
        a.close()
        b.close()


def test_an_announcement_whose_bytes_were_deleted_is_a_journaled_refusal(publisher: Publisher, pg_dsn: str) -> None:
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    first = Announcer(pg_dsn, a, node="a", poll=0.5).start()
    a.apply(publisher.capsule("1.0.0"))
    wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    db = Database(pg_dsn)
    try:
        db.execute("DELETE FROM xps_capsules")
    finally:
        db.close()
    late = Announcer(pg_dsn, b, node="b", poll=0.5).start()
    try:
        wait_for(lambda: any(e.get("phase") == "announce" for e in _events(b, "PATCH_REJECT")), "node b to refuse")
        assert eng_b.table.provider_for(OP) == "sodium" and late.last_error is None
    finally:
        late.stop()
        first.stop()
        a.close()
        b.close()


def test_an_unreadable_event_row_does_not_stop_the_rows_after_it(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: an 'enable' whose sha256 was 70 KB of text failed its own refusal record at
    # every poll (the journal refuses a record that large), so the node never followed anything
    # again — here, a genuine rollback announced after it.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.3).start(),
             Announcer(pg_dsn, b, node="b", poll=0.3, peers=[_journal_key(a)]).start()]
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: eng_b.table.provider_for(OP) == cap.name, "node b to enable the announced capsule")
        db = Database(pg_dsn)
        try:
            for sha, node in (("f" * 70000, "ghost"), ("0" * 64, "\x1b[2J" * 100), ("F" * 64, "ghost")):
                db.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node) "
                           "VALUES ('enable', ?, 'x', '1.0.0', ?)", (sha, node))
        finally:
            db.close()
        a.rollback(OP, operator="ops")
        wait_for(lambda: eng_b.table.provider_for(OP) == "sodium", "node b to follow the rollback after them")
        wait_for(lambda: [e for e in _events(b, "PATCH_REJECT") if e.get("phase") == "announce"],
                 "node b to journal the rows it ignored")  # after the batch they were in
        refusal = [e for e in _events(b, "PATCH_REJECT") if e.get("phase") == "announce"][-1]
        assert "3 announcement row(s) ignored" in str(refusal["detail"])
        assert "ghost" not in str(refusal) and "f" * 64 not in str(refusal) and nodes[1].last_error is None
    finally:
        for n in nodes:
            n.stop()
        a.close()
        b.close()


def test_a_flood_of_events_without_bytes_is_journaled_in_bounded_records(publisher: Publisher,
                                                                          pg_dsn: str) -> None:
    from xpscerpto.db.capsule_announce import BATCH, MAX_REFUSALS

    eng_b, b = _other_node(publisher, "home-b")
    Announcer(pg_dsn, b, node="b", poll=0.3).start().stop()  # migrates the database
    db = Database(pg_dsn)
    try:
        with db.transaction() as tx:
            for i in range(3 * BATCH):
                tx.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node) "
                           "VALUES ('enable', ?, 'x', '1.0.0', 'ghost')", (f"{i:064x}",))
        before = len(b.audit.tail(100000))
        late = Announcer(pg_dsn, b, node="b", poll=0.3).start()
        try:
            wait_for(lambda: late._seen >= 3 * BATCH, "node b to read every event")
        finally:
            late.stop()
        added = b.audit.tail(100000)[before:]
        assert all(e["event"] == "PATCH_REJECT" for e in added)
        assert len(added) == 3 * (MAX_REFUSALS + 1)  # per batch: ten named, one count of the rest
        assert eng_b.table.provider_for(OP) == "sodium"
    finally:
        db.close()
        b.close()


def test_a_node_name_that_others_could_not_read_is_refused(publisher: Publisher, pg_dsn: str) -> None:
    _, b = _other_node(publisher, "home-b")
    try:
        for name in ("", "n" * 201, "a\nb", "nœud", 7):
            with pytest.raises(PolicyError, match="node"):
                Announcer(pg_dsn, b, node=name)  # type: ignore[arg-type]
    finally:
        b.close()


def test_a_rollback_event_needs_the_signature_of_a_trusted_node(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: one INSERT of a 'rollback' event (node 'ghost') took the capsule out of every
    # node, and version memory then refused it again: the fleet stayed on the old provider.
    a = _updater(xps.Engine(), publisher.home)
    a_key = _journal_key(a)
    # c's journal signs with a's key (copied before c's first record), as a fleet's nodes do.
    home_c = Home.resolve(publisher.tmp / "home-c")
    shutil.copy2(publisher.home.audit.with_suffix(".key"), home_c.audit.with_suffix(".key"))
    eng_b, b = _other_node(publisher, "home-b")
    eng_c, c = _other_node(publisher, "home-c")
    assert c.audit.public_key() == a_key
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.3).start(),
             Announcer(pg_dsn, b, node="b", poll=0.3).start(),  # trusts only its own journal key
             Announcer(pg_dsn, c, node="c", poll=0.3).start()]  # shares a's journal key
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        for eng in (eng_b, eng_c):
            wait_for(lambda eng=eng: eng.table.provider_for(OP) == cap.name, "the nodes to enable the capsule")
        db = Database(pg_dsn)
        try:  # a database writer's forgeries: unsigned, garbage, and a signature by an unknown key
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from xpscerpto.audit.journal import STATEMENT_PREFIX
            from xpscerpto.db.capsule_announce import _statement

            mallory = Ed25519PrivateKey.generate()
            forged = mallory.sign(STATEMENT_PREFIX + _statement("rollback", cap.sha256, cap.name, cap.version, "a", 3))
            for signer, sig in ((None, None), ("00" * 32, "11" * 64), (a_key.hex(), forged.hex()),
                                (mallory.public_key().public_bytes_raw().hex(), forged.hex())):
                db.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node, signer, sig) "
                           "VALUES ('rollback', ?, ?, ?, 'a', ?, ?)", (cap.sha256, cap.name, cap.version, signer, sig))
        finally:
            db.close()
        wait_for(lambda: len([e for e in _events(c, "PATCH_REJECT") if e.get("reason") == "untrusted"]) == 4,
                 "node c to refuse the four forged rollbacks")
        assert eng_b.table.provider_for(OP) == cap.name and eng_c.table.provider_for(OP) == cap.name
        # A genuine rollback on a: c (same journal key) follows it, b (another key, no peers) does not.
        a.rollback(OP, operator="ops")
        wait_for(lambda: eng_c.table.provider_for(OP) == "sodium", "node c to follow a's signed rollback")
        wait_for(lambda: len([e for e in _events(b, "PATCH_REJECT") if e.get("reason") == "untrusted"]) == 5,
                 "node b to refuse a rollback by a node it does not trust")
        assert eng_b.table.provider_for(OP) == cap.name
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


@pytest.mark.parametrize("peers", [b"x" * 32, [b"short"], [bytearray(32)], ["00" * 32], [None], 7])
def test_a_bad_peer_key_is_refused(publisher: Publisher, pg_dsn: str, peers: object) -> None:
    _, b = _other_node(publisher, "home-b")
    try:
        with pytest.raises(PolicyError, match="peers"):
            Announcer(pg_dsn, b, node="b", peers=peers)  # type: ignore[arg-type]
    finally:
        b.close()


def test_a_node_catching_up_never_enables_a_capsule_rolled_back_by_a_node_it_does_not_trust(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: the unverified rollback was skipped altogether, so the enable before it was
    # the capsule's last event and a node starting later enabled the rolled-back version.
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.3).start()
    v1 = a.apply(publisher.capsule("1.0.0"))
    v2 = a.apply(publisher.capsule("2.0.0"))
    a.rollback(v2.sha256, operator="ops")  # a signed rollback; a is back on 1.0.0
    wait_for(lambda: _announced(pg_dsn) == 3, "the three announcements")
    eng_b, b = _other_node(publisher, "home-b")  # its own journal key, a not among its peers
    late = Announcer(pg_dsn, b, node="b", poll=0.3).start()
    try:
        wait_for(lambda: eng_b.table.provider_for(OP) == v1.name and b.state.active, "node b to catch up")
        wait_for(lambda: [e for e in _events(b, "PATCH_REJECT") if e.get("reason") == "untrusted"],
                 "node b to journal the rollback it cannot verify")
        assert [x.sha256 for x in b.state.active] == [v1.sha256]
    finally:
        late.stop()
        first.stop()
        a.close()
        b.close()


def test_a_signed_rollback_copied_into_a_new_row_does_not_take_back_a_capsule_an_operator_restored(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review finding (fifth session): the signature named no time or place, so a database
    # writer could re-insert an old signed rollback after an operator had brought the capsule
    # back (`rollback --to`), and every node trusting the signer took it out again.
    a = _updater(xps.Engine(), publisher.home)
    _journal_key(a)
    home_c = Home.resolve(publisher.tmp / "home-c")
    shutil.copy2(publisher.home.audit.with_suffix(".key"), home_c.audit.with_suffix(".key"))  # a fleet's key
    eng_c, c = _other_node(publisher, "home-c")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.3).start(), Announcer(pg_dsn, c, node="c", poll=0.3).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: [x.sha256 for x in c.state.active] == [v1.sha256], "node c to enable 1.0.0")
        a.rollback(OP, operator="ops")
        wait_for(lambda: not c.state.active, "node c to follow the signed rollback")
        # On c an operator brings 1.0.0 back: 2.0.0 first, then `rollback --to` 1.0.0.
        v2 = c.apply(publisher.capsule("2.0.0"))
        c.rollback(v2.sha256, to=v1.version, operator="ops")
        assert [x.sha256 for x in c.state.active] == [v1.sha256]
        db = Database(pg_dsn)
        try:  # the database writer copies a's genuine, signed rollback of 1.0.0 into a new row
            db.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node, signer, sig) "
                       "SELECT action, sha256, name, version, node, signer, sig FROM xps_capsule_events "
                       "WHERE action = 'rollback' AND node = 'a'")
        finally:
            db.close()
        wait_for(lambda: [e for e in _events(c, "PATCH_REJECT") if e.get("reason") == "untrusted"],
                 "node c to refuse the copied rollback")
        assert [x.sha256 for x in c.state.active] == [v1.sha256] and eng_c.table.provider_for(OP) == v1.name
    finally:
        for n in nodes:
            n.stop()
        a.close()
        c.close()


def test_a_restarted_node_resumes_after_the_events_it_followed(publisher: Publisher, pg_dsn: str) -> None:
    # It used to read the table from the start at every restart: each refusal journaled again,
    # and every old event a chance to act again.
    eng_b, b = _other_node(publisher, "home-b")
    Announcer(pg_dsn, b, node="b", poll=0.3).start().stop()
    db = Database(pg_dsn)
    try:
        db.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node) "
                   "VALUES ('rollback', ?, 'x', '1.0.0', 'ghost')", ("ab" * 32,))
        newest = int(db.execute("SELECT max(id) FROM xps_capsule_events").fetchone()[0])  # type: ignore[index]
    finally:
        db.close()

    def untrusted() -> int:
        return len([e for e in _events(b, "PATCH_REJECT") if e.get("reason") == "untrusted"])

    follower = Announcer(pg_dsn, b, node="b", poll=0.3).start()
    try:
        wait_for(lambda: untrusted() == 1 and follower._seen == newest, "node b to refuse the unsigned rollback")
    finally:
        follower.stop()
    cursor = json.loads((b.home.root / "announce.json").read_text())
    assert cursor["seen"] == newest and cursor["node"] == "b"
    again = Announcer(pg_dsn, b, node="b", poll=0.3).start()
    try:
        assert again._seen == newest
        time.sleep(1.0)  # a few polls
        assert untrusted() == 1 and again.last_error is None
    finally:
        again.stop()
        b.close()
    assert eng_b.table.provider_for(OP) == "sodium"


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    elif how == "garbage":
        path.write_bytes(b"\xff\x00not json")
    elif how == "negative":
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "seen": -1}))
    elif how == "another-node":
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "node": "z"}))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "unpublishable-pending":  # a NUL in a name: the database would refuse it for ever
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "pending": [["enable", "ab" * 32, "x\u0000y", "1.0.0"]]}))


def _sql(dsn: str, statement: str, params: tuple[object, ...] = ()) -> None:
    db = Database(dsn)
    try:
        db.execute(statement, params)
    finally:
        db.close()


def _ghost_enable(dsn: str) -> None:
    """An unsigned enable from a node nobody trusts: a row to follow past, never to act on."""
    _sql(dsn, "INSERT INTO xps_capsule_events (action, sha256, name, version, node) "
              "VALUES ('enable', ?, 'x', '1.0.0', 'ghost')", ("cd" * 32,))


def _follow_once(dsn: str, node: Updater) -> int:
    """Start a follower on ``node``, let it read the newest event, stop it; its cursor."""
    follower = Announcer(dsn, node, node="b", poll=0.3).start()
    try:
        wait_for(lambda: follower._seen > 0, "node b to read the event")
    finally:
        follower.stop()
    return follower._seen


@pytest.mark.parametrize("how", ["deleted", "emptied", "truncated", "garbage", "negative", "another-node",
                                 "directory", "unpublishable-pending"])
def test_a_damaged_cursor_is_a_refusal_never_a_restart_from_the_first_event(publisher: Publisher, pg_dsn: str,
                                                                             how: str) -> None:
    _, b = _other_node(publisher, "home-b")
    try:
        if not b.home.record_path.exists():
            b.home.initialise(policy={}, adopt=True)
        Announcer(pg_dsn, b, node="b", poll=0.3).start().stop()  # no event yet: the cursor starts at 0
        _ghost_enable(pg_dsn)
        _follow_once(pg_dsn, b)
        assert b.home.store_exists("announce_cursor")
        _damage(b.home.root / "announce.json", how)
        with pytest.raises(PolicyError, match=r"announce\.json") as err:
            Announcer(pg_dsn, b, node="b", poll=0.3)
        assert "ghost" not in str(err.value)
    finally:
        b.close()


def test_a_cursor_past_the_newest_event_is_refused_at_start(publisher: Publisher, pg_dsn: str) -> None:
    # The table was reset or restored from an older backup: following from the cursor would
    # skip every new event unseen.
    _, b = _other_node(publisher, "home-b")
    try:
        _ghost_enable(pg_dsn)
        _follow_once(pg_dsn, b)
        _sql(pg_dsn, "TRUNCATE xps_capsule_events")
        late = Announcer(pg_dsn, b, node="b", poll=0.3)
        try:
            with pytest.raises(PolicyError, match="newest is 0"):
                late.start()
        finally:
            late.database.close()
    finally:
        b.close()


def _table_away(dsn: str, away: bool) -> None:
    """Make the events table unreachable for writers (a real database error), or bring it back."""
    db = Database(dsn)
    try:
        if away:
            db.execute("ALTER TABLE xps_capsule_events RENAME TO xps_capsule_events_away")
        else:
            db.execute("ALTER TABLE xps_capsule_events_away RENAME TO xps_capsule_events")
    finally:
        db.close()


def test_changes_made_while_the_database_is_away_survive_a_restart_and_keep_their_order(
        publisher: Publisher, pg_dsn: str) -> None:
    # The outgoing queue was in memory: a change made while the database refused writes, or just
    # before a kill -9, was never announced; and a failed announcement went to the back of the
    # queue, so an enable and its rollback could reach the table swapped.
    a = _updater(xps.Engine(), publisher.home)
    _journal_key(a)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    _table_away(pg_dsn, True)
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        a.rollback(OP, operator="ops")
        v2 = a.apply(publisher.capsule("2.0.0"))
        wait_for(lambda: first.last_error is not None, "an announcement to fail")
        time.sleep(0.7)  # a few more failing rounds
        pending = json.loads((publisher.home.root / "announce.json").read_text())["pending"]
        assert [(p[0], p[1]) for p in pending] == [("enable", v1.sha256), ("rollback", v1.sha256),
                                                   ("enable", v2.sha256)]
    finally:
        first.stop()  # the process ends here: its in-memory queue is gone
        _table_away(pg_dsn, False)
    again = Announcer(pg_dsn, a, node="a", poll=0.2).start()  # the restart
    try:
        wait_for(lambda: _announced(pg_dsn) == 3, "the three changes to be announced after the restart")
        db = Database(pg_dsn)
        try:
            rows = db.execute("SELECT action, sha256 FROM xps_capsule_events ORDER BY id").fetchall()
        finally:
            db.close()
        assert rows == [("enable", v1.sha256), ("rollback", v1.sha256), ("enable", v2.sha256)]
        wait_for(lambda: not json.loads((publisher.home.root / "announce.json").read_text())["pending"],
                 "the outbox to empty")
    finally:
        again.stop()
    eng_b, b = _other_node(publisher, "home-b")
    late = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()
    try:
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v2.sha256], "node b to end on 2.0.0")
        assert eng_b.table.provider_for(OP) == v2.name
    finally:
        late.stop()
        a.close()
        b.close()


def test_a_slow_publisher_is_not_skipped_by_followers(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: an event id was taken early in the publisher's transaction and committed
    # seconds later (signing waits on the journal's lock); a faster publisher's later id became
    # visible first, followers moved their cursor past the slow one, and never read it (the
    # cursor is on disk now, so no restart healed it). Publishers now hold one advisory lock
    # from taking an id to committing it. The slow signing stands in for a journal that waits.
    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    _, c = _other_node(publisher, "home-c")
    real_sign = a.audit.sign_statement

    def slow_sign(statement: bytes) -> tuple[bytes, bytes]:
        time.sleep(2.0)
        return real_sign(statement)

    a.audit.sign_statement = slow_sign  # type: ignore[method-assign]
    nodes = [Announcer(pg_dsn, up, node=n, poll=0.2).start() for up, n in ((a, "a"), (b, "b"), (c, "c"))]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))  # its event: id taken now, committed 2 s later
        time.sleep(0.5)
        v2 = b.apply(publisher.capsule("2.0.0"))
        b.rollback(v2.sha256, operator="ops")
        wait_for(lambda: _announced(pg_dsn) == 3, "the three announcements", timeout=30)
        db = Database(pg_dsn)
        try:
            rows = db.execute("SELECT action, node FROM xps_capsule_events ORDER BY id").fetchall()
        finally:
            db.close()
        assert rows == [("enable", "a"), ("enable", "b"), ("rollback", "b")]  # ids in commit order
        wait_for(lambda: v1.sha256 in {x.sha256 for x in c.state.active}, "node c to enable a's capsule")
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


def test_the_cursor_names_the_database_not_the_dsn_spelling(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: the cursor compared the DSN's host text, so reaching the same database as
    # localhost instead of 127.0.0.1 (or through a standby's address) refused every start.
    _, b = _other_node(publisher, "home-b")
    try:
        _ghost_enable(pg_dsn)
        seen = _follow_once(pg_dsn, b)
        other = pg_dsn.replace("127.0.0.1", "localhost") if "127.0.0.1" in pg_dsn else pg_dsn.replace(
            "localhost", "127.0.0.1")
        assert other != pg_dsn
        again = Announcer(other, b, node="b", poll=0.3).start()
        try:
            assert again._seen == seen
        finally:
            again.stop()
    finally:
        b.close()


def test_a_refused_start_leaves_no_connection_open(publisher: Publisher, pg_dsn: str) -> None:
    _, b = _other_node(publisher, "home-b")

    def connections() -> int:
        db = Database(pg_dsn)
        try:
            row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
            return int(row[0]) if row else 0
        finally:
            db.close()

    try:
        _ghost_enable(pg_dsn)
        _follow_once(pg_dsn, b)
        _sql(pg_dsn, "TRUNCATE xps_capsule_events")
        before = connections()
        for _ in range(3):
            with pytest.raises(PolicyError, match="newest is 0"):
                Announcer(pg_dsn, b, node="b", poll=0.3).start()
        assert connections() == before
    finally:
        b.close()


def test_a_node_catching_up_does_not_enable_what_a_rollback_in_a_later_batch_took_out(
        publisher: Publisher, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding: an unverified rollback blocked the enables before it only within its own
    # batch of 500; with the enable in one batch and the rollback in the next, a node catching up
    # enabled the capsule. Batches of one event make every pair straddle a boundary.
    from xpscerpto.db import capsule_announce

    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.3).start()
    v1 = a.apply(publisher.capsule("1.0.0"))
    wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    first.stop()
    db = Database(pg_dsn)
    try:  # a rollback that node b cannot verify (an earlier release's, or a forgery)
        db.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node) "
                   "VALUES ('rollback', ?, ?, ?, 'a')", (v1.sha256, v1.name, v1.version))
    finally:
        db.close()
    monkeypatch.setattr(capsule_announce, "BATCH", 1)
    eng_b, b = _other_node(publisher, "home-b")
    late = Announcer(pg_dsn, b, node="b", poll=0.3).start()
    try:
        wait_for(lambda: late._seen == 2, "node b to read both events")
        assert not b.state.active and eng_b.table.provider_for(OP) == "sodium"
    finally:
        late.stop()
        a.close()
        b.close()


# -- a rollback made while no engine runs -------------------------------------------------------


def test_an_offline_rollback_is_announced_when_the_engine_next_starts(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding: `xps rollback` with no engine running changed only the committed state;
    # the fleet kept serving the capsule this node's operator had taken out.
    a = _updater(xps.Engine(), publisher.home)
    _journal_key(a)
    eng_b, b = _other_node(publisher, "home-b")
    followers = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
                 Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: eng_b.table.provider_for(OP) == cap.name, "node b to enable the capsule")
        followers[0].stop()
        a.close()  # node a's engine stops
        notices: list[str] = []
        rollback_offline(publisher.home, OP, operator="ops", notice=notices.append,
                         state_store=_states(publisher.home))
        assert notices == []
        pending = json.loads((publisher.home.root / "announce.json").read_text())["pending"]
        assert pending == [["rollback", cap.sha256, cap.name, cap.version]]
        eng_a = xps.Engine()
        again = _updater(eng_a, publisher.home)  # the restart: restores the rolled-back state
        assert eng_a.table.provider_for(OP) == "sodium"
        followers[0] = Announcer(pg_dsn, again, node="a", poll=0.2).start()
        wait_for(lambda: eng_b.table.provider_for(OP) == "sodium", "node b to follow the offline rollback")
        assert _events(b, "PATCH_ROLLBACK")[-1]["operator"] == "announce:a"
        wait_for(lambda: not json.loads((publisher.home.root / "announce.json").read_text())["pending"],
                 "the outbox to empty")
    finally:
        for f in followers:
            f.stop()
        b.close()


def test_a_damaged_outbox_does_not_block_an_offline_rollback(publisher: Publisher, pg_dsn: str) -> None:
    eng = xps.Engine()
    a = _updater(eng, publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    finally:
        first.stop()
        a.close()
    (publisher.home.root / "announce.json").write_text("{")
    notices: list[str] = []
    assert rollback_offline(publisher.home, OP, operator="ops", notice=notices.append,
                            state_store=_states(publisher.home)).sha256 == cap.sha256
    assert len(notices) == 1 and "not queued for the fleet" in notices[0] and "announce.json" in notices[0]
    eng_a = xps.Engine()
    _updater(eng_a, publisher.home)
    assert eng_a.table.provider_for(OP) == "sodium"  # rolled back all the same


def test_an_offline_rollback_in_a_home_outside_any_fleet_writes_no_outbox(publisher: Publisher) -> None:
    a = _updater(xps.Engine(), publisher.home)
    a.apply(publisher.capsule("1.0.0"))
    a.close()
    rollback_offline(publisher.home, OP, operator="ops", state_store=_states(publisher.home))
    assert not (publisher.home.root / "announce.json").exists()
    assert not publisher.home.store_exists("announce_cursor")


# -- rows a database writer adds, changes announced before they were committed --------------------


def _rejects(up: Updater, reason: str) -> list[dict[str, object]]:
    return [e for e in _events(up, "PATCH_REJECT") if e.get("phase") == "announce" and e.get("reason") == reason]


def test_a_row_with_an_id_the_sequence_never_handed_out_moves_no_cursor(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding G7: one row inserted with id 9e18 moved every follower's cursor there; every
    # later event (ids from the sequence, far below) was behind every cursor and never followed:
    # a signed rollback of a faulty capsule no longer reached any node, silently.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
             Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        v2 = a.apply(publisher.capsule("2.0.0"))
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v2.sha256], "node b to follow 2.0.0")
        _sql(pg_dsn, "INSERT INTO xps_capsule_events (id, action, sha256, name, version, node) "
                     "VALUES (9000000000000000000, 'rollback', ?, 'x', '1.0.0', 'x')", ("0" * 64,))
        wait_for(lambda: _rejects(b, "forged"), "node b to journal the forged row")
        a.rollback(v2.sha256, operator="ops")
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256], "node b to follow the signed rollback")
        time.sleep(1.0)  # a few more polls: the forged row is journaled once, not at every poll
        assert len(_rejects(b, "forged")) == 1 and nodes[1].last_error is None
        assert "9000000000000000000" not in str(_rejects(b, "forged")[0]["detail"])
        assert json.loads((b.home.root / "announce.json").read_text())["seen"] == 3
    finally:
        for n in nodes:
            n.stop()
    again = Announcer(pg_dsn, b, node="b", poll=0.2).start()  # a restart is not refused either
    again.stop()
    assert eng_b.table.provider_for(OP) == v1.name


def test_a_cursor_an_earlier_release_moved_past_the_sequence_is_refused_at_start(
        publisher: Publisher, pg_dsn: str) -> None:
    # A node that followed such a row before this fix: its cursor would skip every new event.
    _, b = _other_node(publisher, "home-b")
    try:
        _ghost_enable(pg_dsn)
        _follow_once(pg_dsn, b)
        _sql(pg_dsn, "INSERT INTO xps_capsule_events (id, action, sha256, name, version, node) "
                     "VALUES (9000000000000000000, 'enable', ?, 'x', '1.0.0', 'x')", ("0" * 64,))
        path = b.home.root / "announce.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "seen": 9000000000000000000}))
        with pytest.raises(PolicyError, match="newest is 1 "):
            Announcer(pg_dsn, b, node="b", poll=0.3).start()
    finally:
        b.close()


def _lock_waiters(dsn: str) -> list[int]:
    db = Database(dsn)
    try:
        rows = db.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE ?",
                          ("%xps_capsule_state%",)).fetchall()
        return [int(r[0]) for r in rows]
    finally:
        db.close()


def _save_fails(dsn: str, node: str, action: Callable[[], object]) -> BaseException | None:
    """Run ``action`` while another session holds ``node``'s routing-state row; once its write
    waits on that lock, end its backend (the database fails the save for real). What it raised."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            raised.append(None)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    blocker = Database(dsn)
    try:
        with blocker.transaction() as tx:
            tx.execute("SELECT 1 FROM xps_capsule_state WHERE node = ? FOR UPDATE", (node,))
            thread = threading.Thread(target=run)
            thread.start()
            wait_for(lambda: bool(_lock_waiters(dsn)), "the state write to wait on the row lock")
            for pid in _lock_waiters(dsn):
                _sql(dsn, "SELECT pg_terminate_backend(?)", (pid,))
            thread.join(60)
    finally:
        blocker.close()
    return raised[0]


def _actions(dsn: str) -> list[tuple[str, str]]:
    db = Database(dsn)
    try:
        return [(str(r[0]), str(r[1])) for r in db.execute("SELECT action, sha256 FROM xps_capsule_events "
                                                           "ORDER BY id").fetchall()]
    finally:
        db.close()


@pytest.mark.parametrize("publisher", ["postgresql"], indirect=True)  # the save is made to fail in the database
@pytest.mark.parametrize("change", ["rollback", "enable"])
def test_a_change_whose_state_save_fails_is_never_announced(publisher: Publisher, pg_dsn: str, change: str) -> None:
    # Review finding G5: the rollback reached the outbox and the fleet before its state was
    # saved; the save then failed (the operator got XPS_ERR_UPDATE), this node kept serving the
    # capsule, and every other node had rolled it back on its word.
    eng_a = xps.Engine()
    a = _updater(eng_a, publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
             Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: eng_b.table.provider_for(OP) == v1.name, "node b to follow 1.0.0")
        v2_raw = publisher.capsule("2.0.0")
        act: Callable[[], object] = (lambda: a.rollback(OP, operator="ops")) if change == "rollback" else (
            lambda: a.apply(v2_raw))
        exc = _save_fails(pg_dsn, publisher.home.root.name, act)
        assert isinstance(exc, XpsError) and exc.code.value == "XPS_ERR_UPDATE"
        time.sleep(1.5)  # several rounds of both announcers
        assert _actions(pg_dsn) == [("enable", v1.sha256)]
        assert json.loads((publisher.home.root / "announce.json").read_text())["pending"] == []
        assert [x.sha256 for x in a.state.active] == [v1.sha256] == [x.sha256 for x in b.state.active]
        assert eng_a.table.provider_for(OP) == v1.name == eng_b.table.provider_for(OP)
    finally:
        for n in nodes:
            n.stop()


def test_the_committed_notification_comes_after_the_save(publisher: Publisher) -> None:
    # What the announcer hears: the change is in the state store by then.
    a = _updater(xps.Engine(), publisher.home)
    heard: list[tuple[str, list[str]]] = []

    def listener(event: str, fields: Mapping[str, object]) -> None:
        if event in ("PATCH_ENABLE" + COMMITTED, "PATCH_ROLLBACK" + COMMITTED, "PATCH_ENABLE", "PATCH_ROLLBACK"):
            heard.append((event, [x.version for x in _states(publisher.home).load().active]))

    a.add_event_listener(listener)
    a.apply(publisher.capsule("1.0.0"))
    a.rollback(OP, operator="ops")
    assert heard == [("PATCH_ENABLE", []), ("PATCH_ENABLE" + COMMITTED, ["1.0.0"]),
                     ("PATCH_ROLLBACK", ["1.0.0"]), ("PATCH_ROLLBACK" + COMMITTED, [])]


@pytest.mark.parametrize("publisher", ["postgresql"], indirect=True)  # the save is made to fail in the database
def test_an_offline_rollback_whose_save_fails_is_not_queued(publisher: Publisher, pg_dsn: str) -> None:
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    finally:
        first.stop()
        a.close()
    notices: list[str] = []
    exc = _save_fails(pg_dsn, publisher.home.root.name,
                      lambda: rollback_offline(publisher.home, OP, operator="ops", notice=notices.append,
                                               state_store=_states(publisher.home)))
    assert isinstance(exc, XpsError) and exc.code.value == "XPS_ERR_UPDATE"
    assert json.loads((publisher.home.root / "announce.json").read_text())["pending"] == [] and notices == []
    assert [x.sha256 for x in _states(publisher.home).load().active] == [cap.sha256]


def test_an_unsigned_enable_does_not_bring_back_a_capsule_a_trusted_node_rolled_back(
        publisher: Publisher, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding G1: after a signed rollback of 2.0.0, one unsigned 'enable' row made every
    # node that was away (or new) enable 2.0.0 again: the last event per capsule decided.
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    v1 = a.apply(publisher.capsule("1.0.0"))
    v2 = a.apply(publisher.capsule("2.0.0"))
    a.rollback(v2.sha256, operator="ops")  # signed
    wait_for(lambda: _announced(pg_dsn) == 3, "the three announcements")
    first.stop()
    _sql(pg_dsn, "INSERT INTO xps_capsule_events (action, sha256, name, version, node) VALUES ('enable', ?, ?, ?, "
                 "'ghost')", (v2.sha256, v2.name, v2.version))
    for batch, home in ((500, "home-b"), (1, "home-c")):  # the rollback in the enable's batch, or in an earlier one
        from xpscerpto.db import capsule_announce

        monkeypatch.setattr(capsule_announce, "BATCH", batch)
        eng, node = _other_node(publisher, home)
        late = Announcer(pg_dsn, node, node=home, poll=0.2, peers=[_journal_key(a)]).start()
        try:
            wait_for(lambda late=late: late._seen == 4, f"{home} to read the four events")
            assert [x.sha256 for x in node.state.active] == [v1.sha256] and eng.table.provider_for(OP) == v1.name
            assert [e["sha256"] for e in _rejects(node, "untrusted")] == [v2.sha256]
        finally:
            late.stop()
            node.close()
    a.close()


def test_an_unsigned_enable_right_after_a_signed_rollback_does_not_cancel_it(publisher: Publisher,
                                                                           pg_dsn: str) -> None:
    # Both in one batch on a node still serving the capsule: the enable was the capsule's last
    # action, so the rollback was never followed there.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: eng_b.table.provider_for(OP) == v1.name, "node b to follow 1.0.0")
        follower.stop()
        a.rollback(OP, operator="ops")
        wait_for(lambda: _announced(pg_dsn) == 2, "the signed rollback")
        _sql(pg_dsn, "INSERT INTO xps_capsule_events (action, sha256, name, version, node) VALUES ('enable', ?, ?, "
                     "?, 'ghost')", (v1.sha256, v1.name, v1.version))
        follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()
        wait_for(lambda: follower._seen == 3, "node b to read the three events")
        assert not b.state.active and eng_b.table.provider_for(OP) == "sodium"
        assert [e["sha256"] for e in _rejects(b, "untrusted")] == [v1.sha256]
    finally:
        follower.stop()
        first.stop()
        a.close()
        b.close()


def test_capsule_bytes_stored_under_another_events_sha256_are_refused(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding G1 (variant): the follower applied whatever bytes the row held, so a writer
    # could put a rolled-back (but publisher-signed) capsule under a new event's sha256.
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    v1 = a.apply(publisher.capsule("1.0.0"))
    wait_for(lambda: _announced(pg_dsn) == 1, "the announcement")
    first.stop()
    a.close()
    other = "ab" * 32
    _sql(pg_dsn, "INSERT INTO xps_capsules (sha256, raw, name, version, node) VALUES (?, ?, 'x', '2.0.0', 'ghost')",
         (other, publisher.capsule("2.0.0")))
    _sql(pg_dsn, "INSERT INTO xps_capsule_events (action, sha256, name, version, node) VALUES ('enable', ?, 'x', "
                 "'2.0.0', 'ghost')", (other,))
    eng_b, b = _other_node(publisher, "home-b")
    late = Announcer(pg_dsn, b, node="b", poll=0.2).start()
    try:
        wait_for(lambda: late._seen == 2, "node b to read both events")
        assert [x.sha256 for x in b.state.active] == [v1.sha256] and eng_b.table.provider_for(OP) == v1.name
        refusal = _rejects(b, "malformed")
        assert len(refusal) == 1 and refusal[0]["sha256"] == other and "do not match" in str(refusal[0]["detail"])
    finally:
        late.stop()
        b.close()


def test_a_rollback_to_a_chosen_version_restores_that_version_on_the_followers(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review finding G6: `rollback --to 1.0.0` was announced as a plain rollback; each follower
    # restored its own predecessor, 2.0.0, the version the operator had skipped on purpose.
    # Three versions enabled on three nodes: the speed gate (not what this is about) is loose
    # here, so a busy test machine does not refuse one.
    gates = replace(FAST_GATES, max_slowdown=20.0)
    a = _updater(xps.Engine(), publisher.home, gates=gates)
    homes = {name: Home.resolve(publisher.tmp / name) for name in ("home-b", "home-c")}
    for home in homes.values():
        shutil.copy2(publisher.home.trust, home.trust)
    eng_b, eng_c = xps.Engine(), xps.Engine()
    b, c = _updater(eng_b, homes["home-b"], gates=gates), _updater(eng_c, homes["home-c"], gates=gates)
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
             Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        a.apply(publisher.capsule("2.0.0"))
        v3_raw = publisher.capsule("3.0.0")
        v3 = a.apply(v3_raw)
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v3.sha256], "node b to follow 3.0.0")
        c.apply(v3_raw)  # c has 3.0.0 but never had 1.0.0 (not following yet)
        a.rollback(v3.sha256, to="1.0.0", operator="ops")
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256], "node b to restore 1.0.0")
        assert _events(b, "PATCH_ROLLBACK")[-1]["to"] == "1.0.0" and eng_b.table.provider_for(OP) == v1.name
        nodes.append(Announcer(pg_dsn, c, node="c", poll=0.2, peers=[_journal_key(a)]).start())
        wait_for(lambda: not c.state.active, "node c to take 3.0.0 out")
        assert eng_c.table.provider_for(OP) == "sodium"  # never its own predecessor, nor a guess
        assert _events(c, "PATCH_ROLLBACK")[-1]["to"] == "built-in"
        wait_for(lambda: _rejects(c, "restore"), "node c to journal why")
        refusal = _rejects(c, "restore")
        assert len(refusal) == 1 and "1.0.0" in str(refusal[0]["detail"])
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


def test_a_rollback_to_a_chosen_version_reaches_the_nodes_that_missed_the_rolled_back_one(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review finding F2: b was down while 3.0.0 came and `rollback 3.0.0 --to 1.0.0` took it out;
    # b never had 3.0.0, so it ignored the rollback and kept 2.0.0, the version the operator
    # skipped. A new node c catching up enabled 1.0.0, then 2.0.0, and ignored it too.
    gates = replace(FAST_GATES, max_slowdown=20.0)
    a = _updater(xps.Engine(), publisher.home, gates=gates)
    homes = {name: Home.resolve(publisher.tmp / name) for name in ("home-b", "home-c")}
    for home in homes.values():
        shutil.copy2(publisher.home.trust, home.trust)
    eng_b, eng_c = xps.Engine(), xps.Engine()
    b, c = _updater(eng_b, homes["home-b"], gates=gates), _updater(eng_c, homes["home-c"], gates=gates)
    peers = [_journal_key(a)]
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start()]
    try:
        node_b = Announcer(pg_dsn, b, node="b", poll=0.2, peers=peers).start()
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256], "node b to follow 1.0.0")
        v2 = a.apply(publisher.capsule("2.0.0"))
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v2.sha256], "node b to follow 2.0.0")
        node_b.stop()  # b is down while 3.0.0 comes and goes
        v3 = a.apply(publisher.capsule("3.0.0"))
        a.rollback(v3.sha256, to="1.0.0", operator="ops")
        nodes.append(Announcer(pg_dsn, b, node="b", poll=0.2, peers=peers).start())
        nodes.append(Announcer(pg_dsn, c, node="c", poll=0.2, peers=peers).start())  # a new node
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256], "node b to restore 1.0.0")
        wait_for(lambda: [x.sha256 for x in c.state.active] == [v1.sha256], "node c to enable 1.0.0")
        assert eng_b.table.provider_for(OP) == eng_c.table.provider_for(OP) == v1.name
        assert _events(b, "PATCH_ROLLBACK")[-1]["to"] == "1.0.0"
        # c never served a version the rollback superseded on its way to 1.0.0.
        assert [e["sha256"] for e in _events(c, "PATCH_ENABLE")] == [v1.sha256]
        assert not _rejects(b, "restore") and not _rejects(c, "restore")
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


def test_a_rollback_signed_before_events_named_a_version_still_verifies_unless_one_is_added(
        publisher: Publisher, pg_dsn: str) -> None:
    # Rows signed by the previous release (statement capsule-event/2) are plain rollbacks: they
    # stand as they are; a `to` a database writer adds to one is not covered by its signature.
    from xpscerpto.db.capsule_announce import _statement_v2

    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
             Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        v2 = a.apply(publisher.capsule("2.0.0"))
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v2.sha256], "node b to follow 2.0.0")
        db = Database(pg_dsn)
        try:
            for to in ("1.0.0", None):  # the first one with a `to` added after signing
                with db.transaction() as tx:
                    row = tx.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node) VALUES "
                                     "('rollback', ?, ?, ?, 'a') RETURNING id", (v2.sha256, v2.name, v2.version))
                    event_id = int(row.fetchone()[0])  # type: ignore[index]
                    signer, sig = a.audit.sign_statement(_statement_v2("rollback", v2.sha256, v2.name, v2.version,
                                                                       "a", event_id))
                    tx.execute("UPDATE xps_capsule_events SET signer = ?, sig = ?, restore_to = ? WHERE id = ?",
                               (signer.hex(), sig.hex(), to, event_id))
        finally:
            db.close()
        wait_for(lambda: [x.sha256 for x in b.state.active] == [v1.sha256], "node b to follow the old-style rollback")
        # The one with a `to` its signature does not cover (journaled after the batch's actions).
        wait_for(lambda: len(_rejects(b, "untrusted")) == 1, "node b to refuse the altered row")
    finally:
        for n in nodes:
            n.stop()
        a.close()
        b.close()


def test_a_deleted_cursor_in_a_home_without_a_record_is_refused(publisher: Publisher, pg_dsn: str) -> None:
    # Review finding G2: a home made through the API has no home.json to record announce.json
    # in; deleting the file restarted following from the first event, silently.
    _, b = _other_node(publisher, "home-b")
    try:
        assert not b.home.record_path.exists()
        _ghost_enable(pg_dsn)
        _follow_once(pg_dsn, b)
        (b.home.root / "announce.json").unlink()
        with pytest.raises(PolicyError, match=r"announce\.json.*followed this database before"):
            Announcer(pg_dsn, b, node="b", poll=0.3).start()
        again = Announcer(pg_dsn, b, node="b2", poll=0.3).start()  # under a new name it starts afresh
        again.stop()
    finally:
        b.close()
