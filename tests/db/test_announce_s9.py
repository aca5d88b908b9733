"""Capsule announcements, review s9 (several nodes on one PostgreSQL): a database writer's
unsigned rows never weaken a signed rollback; a node name belongs to one home; a change that
will not reach the fleet, or a fleet that splits, is journaled."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.build import build_capsule
from xpscerpto.capsules.updater import Updater
from xpscerpto.db import Database, announce_cursor, capsule_announce
from xpscerpto.db.capsule_announce import Announcer
from xpscerpto.errors import PolicyError

from tests.capsules.test_cli_service import wait_for
from tests.capsules.test_updater import OP, Publisher, _updater, publisher
from tests.db.test_capsule_announce import _announced, _journal_key, _other_node, _rejects, _sql, _table_away

__all__ = ["publisher"]


def _active(up: Updater) -> list[str]:
    return [x.sha256 for x in up.state.active]


def _forge(dsn: str, action: str, sha: str, name: str, version: str, node: str) -> None:
    """A database writer's row: an id from the sequence, no signature."""
    _sql(dsn, "INSERT INTO xps_capsule_events (action, sha256, name, version, node) VALUES (?, ?, ?, ?, ?)",
         (action, sha, name, version, node))


# -- F1: an unsigned rollback read with a signed one -------------------------------------------------

@pytest.mark.parametrize("forged_node", ["ghost", "b"])  # "b": the follower's own name
def test_an_unsigned_rollback_after_a_signed_one_in_the_same_batch_does_not_cancel_it(
        publisher: Publisher, pg_dsn: str, forged_node: str) -> None:
    # Review s9 F1: the unsigned row replaced the signed rollback's entry with "blocked", so a
    # node reading both in one batch (it was down) kept serving the capsule the fleet took out;
    # with the follower's own name on the row nothing at all was journaled there.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    peers = [_journal_key(a)]
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=peers).start()
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: _active(b) == [v1.sha256], "node b to follow 1.0.0")
        follower.stop()  # b is down while the operator rolls back on a
        a.rollback(OP, operator="ops")
        wait_for(lambda: _announced(pg_dsn) == 2, "the signed rollback")
        _forge(pg_dsn, "rollback", v1.sha256, v1.name, v1.version, forged_node)
        follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=peers).start()
        wait_for(lambda: follower._seen == 3, "node b to read the three events")
        assert _active(b) == [] and eng_b.table.provider_for(OP) == "sodium"
        refused = _rejects(b, "untrusted")
        assert [(e["sha256"], e["source"]) for e in refused] == [(v1.sha256, forged_node)]
        if forged_node == "b":
            assert "names this node" in str(refused[0]["detail"])
    finally:
        follower.stop()
        first.stop()
        a.close()
        b.close()


def test_an_unsigned_rollback_a_trigger_adds_to_the_announcing_transaction_does_not_cancel_it(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review s9 F1 (live nodes): a trigger on the events table inserts the shadow row inside the
    # announcing node's own transaction, so every live follower reads both rows in one batch.
    a = _updater(xps.Engine(), publisher.home)
    eng_b, b = _other_node(publisher, "home-b")
    nodes = [Announcer(pg_dsn, a, node="a", poll=0.2).start(),
             Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()]
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: _active(b) == [v1.sha256], "node b to follow 1.0.0")
        _sql(pg_dsn, """CREATE FUNCTION shadow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO xps_capsule_events (action, sha256, name, version, node)
                VALUES ('rollback', NEW.sha256, NEW.name, NEW.version, 'x');
                RETURN NULL;
            END $$""")
        _sql(pg_dsn, "CREATE TRIGGER shadow AFTER UPDATE ON xps_capsule_events FOR EACH ROW "
                     "WHEN (NEW.action = 'rollback' AND NEW.node = 'a') EXECUTE FUNCTION shadow()")
        a.rollback(OP, operator="ops")
        wait_for(lambda: nodes[1]._seen == 3, "node b to read the rollback and its shadow")
        assert _active(b) == [] and eng_b.table.provider_for(OP) == "sodium"
        assert [e["source"] for e in _rejects(b, "untrusted")] == ["x"]
    finally:
        for n in nodes:
            n.stop()
        a.close()
        b.close()


# -- F2: an unsigned enable after a signed `rollback --to` --------------------------------------------

def _fleet_rolled_back_to(publisher: Publisher, pg_dsn: str, to: str) -> tuple[Updater, Updater, list[str]]:
    """a enables 1.0.0 (b follows, then goes down), 1.1.0, then `rollback --to TO` on a; the shas."""
    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()
    try:
        v1 = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: _active(b) == [v1.sha256], "node b to follow 1.0.0")
        follower.stop()
        v2 = a.apply(publisher.capsule("1.1.0"))
        a.rollback(v2.sha256, to=to, operator="ops")
        wait_for(lambda: _announced(pg_dsn) == 3, "the three announcements")
    finally:
        follower.stop()
        first.stop()
    return a, b, [v1.sha256, v2.sha256]


def test_an_unsigned_enable_after_a_signed_rollback_to_does_not_bring_back_a_version_it_took_out(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review s9 F2: the unsigned enable of 1.0.0 (another sha than the rolled-back 1.1.0) dropped
    # the signed name decision: b, down while serving 1.0.0, kept it silently at its restart,
    # and a new node c enabled 1.0.0, while the fleet serves the built-in provider.
    a, b, (s10, _) = _fleet_rolled_back_to(publisher, pg_dsn, "built-in")
    _forge(pg_dsn, "enable", s10, "xchacha20-openssl", "1.0.0", "ghost")
    _, c = _other_node(publisher, "home-c")
    peers = [_journal_key(a)]
    nodes = [Announcer(pg_dsn, up, node=n, poll=0.2, peers=peers).start() for up, n in ((b, "b"), (c, "c"))]
    try:
        for node in nodes:
            wait_for(lambda node=node: node._seen == 4, "the nodes to read the four events")
        for up in (b, c):
            assert _active(up) == [] and up.engine.table.provider_for(OP) == "sodium"
            assert [e["sha256"] for e in _rejects(up, "untrusted")] == [s10]
        assert [e["to"] for e in b.audit.tail(200) if e["event"] == "PATCH_ROLLBACK"] == ["built-in"]
        assert not [e for e in c.audit.tail(200) if e["event"] == "PATCH_ENABLE"]
    finally:
        for n in nodes:
            n.stop()
        for up in (a, b, c):
            up.close()


def test_an_unsigned_enable_in_a_later_batch_than_the_rollback_to_is_refused_too(
        publisher: Publisher, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The decision was read in an earlier batch: only the same sha was checked then.
    a, b, (s10, _) = _fleet_rolled_back_to(publisher, pg_dsn, "built-in")
    b.close()
    _forge(pg_dsn, "enable", s10, "xchacha20-openssl", "1.0.0", "ghost")
    monkeypatch.setattr(capsule_announce, "BATCH", 3)  # the three genuine events, then the forged one
    eng_c, c = _other_node(publisher, "home-c")
    late = Announcer(pg_dsn, c, node="c", poll=0.2, peers=[_journal_key(a)]).start()
    try:
        wait_for(lambda: late._seen == 4, "node c to read the four events")
        assert _active(c) == [] and eng_c.table.provider_for(OP) == "sodium"
        assert [e["sha256"] for e in _rejects(c, "untrusted")] == [s10]
    finally:
        late.stop()
        a.close()
        c.close()


def test_an_unsigned_enable_newer_than_the_rollback_to_took_out_is_still_followed(
        publisher: Publisher, pg_dsn: str) -> None:
    # Enables need no signature (each node verifies the capsule): a newer release from a node
    # this one does not trust ends the decision, as before.
    a, b, _ = _fleet_rolled_back_to(publisher, pg_dsn, "built-in")
    _, z = _other_node(publisher, "home-z")  # a node nobody pins
    z_ann = Announcer(pg_dsn, z, node="z", poll=0.2).start()
    try:
        wait_for(lambda: z_ann._seen == 3, "node z to catch up")
        v2 = z.apply(publisher.capsule("2.0.0"))
        wait_for(lambda: _announced(pg_dsn) == 4, "z's enable")
    finally:
        z_ann.stop()
    follower = Announcer(pg_dsn, b, node="b", poll=0.2, peers=[_journal_key(a)]).start()
    try:
        wait_for(lambda: _active(b) == [v2.sha256], "node b to follow 2.0.0")
        assert not _rejects(b, "untrusted")
    finally:
        follower.stop()
        for up in (a, b, z):
            up.close()


# -- F4: one node name, two homes ---------------------------------------------------------------------

def test_a_second_home_under_a_claimed_node_name_is_refused_at_start(publisher: Publisher, pg_dsn: str) -> None:
    # Review s9 F4: each node skips the events naming it; two homes under one name (the CLI's
    # default `local`) never followed each other, silently. Only homes without home.json were refused.
    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    b.home.initialise(policy={}, adopt=True)  # a CLI home: it records its cursor file
    try:
        Announcer(pg_dsn, a, node="local", poll=0.2).start().stop()
        with pytest.raises(PolicyError, match=r"another home.*--node") as err:
            Announcer(pg_dsn, b, node="local", poll=0.2).start()
        assert err.value.code.value == "XPS_ERR_POLICY"
        Announcer(pg_dsn, a, node="local", poll=0.2).start().stop()  # its own home restarts
        Announcer(pg_dsn, b, node="local-2", poll=0.2).start().stop()  # another name is fine
    finally:
        a.close()
        b.close()


def _previous_release_cursor(home: Path, node: str, database: str) -> None:
    """announce.json as the previous release wrote it (no home id)."""
    (home / "announce.json").write_text(json.dumps({"format": announce_cursor.FORMAT, "node": node,
                                                    "database": database, "pending": [], "seen": 0}))


def test_homes_upgraded_from_the_previous_release_claim_their_name_once(publisher: Publisher, pg_dsn: str) -> None:
    # Two homes that already followed under one name (the previous release recorded no home):
    # the first to start now claims it, the second is refused.
    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    _sql(pg_dsn, "INSERT INTO xps_announce_nodes (node) VALUES ('local')")
    database = pg_dsn.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    for up in (a, b):
        _previous_release_cursor(up.home.root, "local", database)
    try:
        Announcer(pg_dsn, a, node="local", poll=0.2).start().stop()
        claimed = json.loads((a.home.root / "announce.json").read_text())["home"]
        with pytest.raises(PolicyError, match=r"another home"):
            Announcer(pg_dsn, b, node="local", poll=0.2).start()
        assert "home" not in json.loads((b.home.root / "announce.json").read_text())  # refused before writing
        Announcer(pg_dsn, a, node="local", poll=0.2).start().stop()
        assert json.loads((a.home.root / "announce.json").read_text())["home"] == claimed
    finally:
        a.close()
        b.close()


# -- F5: a change that never reaches the fleet ---------------------------------------------------------

def _outbox(up: Updater) -> list[list[str]]:
    return list(json.loads((up.home.root / "announce.json").read_text())["pending"])


def test_a_change_whose_stored_bytes_are_unreadable_is_journaled_as_not_announced(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review s9 F5: the change was dropped from the outbox for good, and only last_error (read by
    # nothing) said so; the fleet diverged silently.
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    _table_away(pg_dsn, True)
    try:
        cap = a.apply(publisher.capsule("1.0.0"))
        wait_for(lambda: first.last_error is not None and len(_outbox(a)) == 1, "the announcement to wait")
    finally:
        first.stop()  # the process ends; the change waits in announce.json
        _table_away(pg_dsn, False)
    (a.home.capsules / f"{cap.sha256}.capsule").write_bytes(b"damaged")
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    try:
        wait_for(lambda: not _outbox(a), "the outbox to empty")
        dropped = _rejects(a, "not-announced")  # journaled before it left the outbox
        assert len(dropped) == 1 and dropped[0]["sha256"] == cap.sha256 and dropped[0]["phase"] == "announce"
        assert dropped[0]["name"] == cap.name and dropped[0]["version"] == cap.version
        assert "damaged" not in json.dumps(dropped[0]) and first.not_announced == 1
        assert _announced(pg_dsn) == 0 and first.pending == 0
    finally:
        first.stop()
        a.close()


def test_a_change_dropped_because_too_many_waited_is_journaled_and_not_announced(
        publisher: Publisher, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(announce_cursor, "MAX_PENDING", 2)
    a = _updater(xps.Engine(), publisher.home)
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    try:
        _table_away(pg_dsn, True)
        try:
            v1 = a.apply(publisher.capsule("1.0.0"))
            a.rollback(OP, operator="ops")
            v2 = a.apply(publisher.capsule("2.0.0"))
            wait_for(lambda: len(_outbox(a)) == 2, "the oldest change to be dropped from the outbox")
            time.sleep(0.6)  # a few rounds of the announcer
        finally:
            _table_away(pg_dsn, False)
        wait_for(lambda: not _outbox(a) and _announced(pg_dsn) >= 2, "the outbox to empty")
        dropped = _rejects(a, "not-announced")
        assert [(e["action"], e["sha256"]) for e in dropped] == [("enable", v1.sha256)]
        db = Database(pg_dsn)
        try:  # what the journal says is what the fleet got: the dropped enable never reached it
            rows = db.execute("SELECT action, sha256 FROM xps_capsule_events ORDER BY id").fetchall()
        finally:
            db.close()
        assert rows == [("rollback", v1.sha256), ("enable", v2.sha256)]
        assert first.pending == 0 and first.not_announced == 1
    finally:
        first.stop()
        a.close()


# -- F6: the fleet splits on one operation --------------------------------------------------------------

def test_an_announced_enable_refused_by_version_memory_while_another_capsule_serves_is_journaled_diverged(
        publisher: Publisher, pg_dsn: str) -> None:
    # Review s9 F6: two nodes enabling different capsules of one version at the same time each
    # refused the other's as a "rollback"; nothing said the fleet now routes the operation two ways.
    a = _updater(xps.Engine(), publisher.home)
    _, b = _other_node(publisher, "home-b")
    raw_a = publisher.capsule("1.1.0")
    variant = publisher.tmp / "src-1.1.0-variant"
    shutil.copytree(publisher.tmp / "src-1.1.0", variant)
    module = variant / "xchacha.py"
    module.write_text(module.read_text().replace('"""XChaCha20-Poly1305', '"""A build of XChaCha20-Poly1305', 1))
    mine = b.apply(build_capsule(variant, [publisher.signer]))  # b's own, before it follows the fleet
    first = Announcer(pg_dsn, a, node="a", poll=0.2).start()
    try:
        theirs = a.apply(raw_a)
        assert theirs.sha256 != mine.sha256
        wait_for(lambda: _announced(pg_dsn) == 1, "a's enable")
        late = Announcer(pg_dsn, b, node="b", poll=0.2).start()
        try:
            wait_for(lambda: late._seen == 1, "node b to read a's enable")
        finally:
            late.stop()
        assert _active(b) == [mine.sha256]
        assert [e for e in b.audit.tail(200) if e["event"] == "PATCH_REJECT" and e.get("reason") == "rollback"
                and e.get("operator") == "announce:a"]  # the updater's own refusal, as before
        diverged = _rejects(b, "diverged")
        assert len(diverged) == 1 and diverged[0]["sha256"] == theirs.sha256
        assert theirs.sha256 in str(diverged[0]["detail"]) and mine.sha256 in str(diverged[0]["detail"])
    finally:
        first.stop()
        a.close()
        b.close()
