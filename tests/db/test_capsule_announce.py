"""Capsule announcements on a real PostgreSQL: one node enables or rolls back, the others follow."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.updater import Updater, rollback_offline
from xpscerpto.db import Database
from xpscerpto.db.capsule_announce import Announcer
from xpscerpto.errors import PolicyError
from xpscerpto.home import Home

from tests.capsules.test_cli_service import wait_for
from tests.capsules.test_updater import OP, Publisher, _states, _updater, publisher

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
        Announcer(pg_dsn, b, node="b", poll=0.3).start().stop()  # no event yet: nothing saved
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
