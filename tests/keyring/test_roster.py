"""The roster: rows deleted, added, or put back from an older copy of the database are refused.

Row seals bind a row's content; the roster binds the set of rows (review F3/F7). Every scenario
edits the real database file with sqlite3 (what someone who can write only keyring.db can do)
and then opens the keyring as a service would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.errors import AuthError, ErrorCode, XpsError
from xpscerpto.keyring import ApprovalRequest, Approvals, Keyring
from xpscerpto.keyring import keyring as keyring_module
from xpscerpto.keyring.integrity import KeyringTampered
from xpscerpto.keyring.keyring import RECHECK_SECONDS
from xpscerpto.keyring.store import RosterCheck, Store
from xpscerpto.signing import generate_keypair, load_private_key

from .test_home_policy import events, ok, refused, xps
from .test_keyring import Clock, _keyring_config

DATA = Path(__file__).with_name("data")
DAY = 86400.0


def _open(home: Path, database: str = "keyring.db", *, approvals: int = 1, **kw: object) -> Keyring:
    """Each home is always opened with the same policy (the home records it)."""
    gates = XpsConfig.from_mapping({"approvals": {"revoke": approvals, "destroy": approvals}}).approvals
    config = XpsConfig.from_mapping({"keyring": {"database": database}}).keyring
    return Keyring(home, approvals=gates, config=config, **kw)  # type: ignore[arg-type]


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[Path]:
    """A home whose database has a row of every kind the roster covers, one journal record
    still queued, and a used approval."""
    generate_keypair(tmp_path / "op1")
    signer = load_private_key(tmp_path / "op1.key")
    home = tmp_path / "home"
    ring = _open(home)
    ring.register_operator(tmp_path / "op1.pub", "op1")
    ring.create("k")
    ring.rotate("k")  # version 1 retired, version 2 active
    ring.create("gone")
    ring.create("next")
    kid = ring.describe("gone").key_id
    ring.revoke("gone", "ticket-1", approvals=Approvals(ApprovalRequest.new(
        "revoke", kid, reason="ticket-1", ttl=DAY, now=ring.clock(), keyring=ring.keyring_id)).signed_by(*signer))
    grant_kid = f"{kid}:{ring.describe('next').key_id}"
    ring.grant_rewrap("gone", "next", reason="ticket-2", approvals=Approvals(ApprovalRequest.new(
        "rewrap", grant_kid, reason="ticket-2", ttl=DAY, now=ring.clock(),
        keyring=ring.keyring_id)).signed_by(*signer))
    with ring.store.write() as db:  # as if the journal append had failed: the record stays queued
        ring.outbox.add(db, "KEY_CREATE", name="queued")
    ring.close()
    yield home


def _sql(home: Path, *statements: str) -> None:
    with sqlite3.connect(home / "keyring.db") as db:
        for statement in statements:
            db.execute(statement)


def _rows(home: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(home / "keyring.db") as db:
        return db.execute(sql).fetchall()


def _refused_as_roster(home: Path, text: str = "do not match its sealed roster") -> None:
    with pytest.raises(KeyringTampered) as caught:
        _open(home)
    assert caught.value.code is ErrorCode.POLICY and text in str(caught.value)


def test_the_populated_home_opens_and_every_covered_table_has_rows(populated: Path) -> None:
    for table in ("keys", "versions", "operators", "rewrap_grants", "approvals_used", "outbox"):
        assert _rows(populated, f"SELECT count(*) FROM {table}")[0][0] > 0, table
    with _open(populated, clock=lambda: 1e12) as ring:  # far later: not an expired-grant artefact either
        assert ring.describe("k").active_version == 2


@pytest.mark.parametrize("delete", [
    "DELETE FROM keys WHERE name = 'next'",
    "DELETE FROM versions WHERE version = 1",
    "DELETE FROM operators",
    "DELETE FROM rewrap_grants",
    "DELETE FROM approvals_used",  # what a replayed approval needs
    "DELETE FROM outbox",  # a journal record lost before delivery
])
def test_a_deleted_row_is_refused(populated: Path, delete: str) -> None:
    # Foreign keys are off in this plain connection, as for any editor of the file.
    _sql(populated, delete)
    _refused_as_roster(populated)


def test_an_added_copy_of_a_sealed_row_is_refused(populated: Path) -> None:
    # A used approval's nonce is a row anyone could add (no seal of its own): the roster notices.
    _sql(populated, "INSERT INTO approvals_used VALUES ('f' || hex(randomblob(16)), 1.0)")
    _refused_as_roster(populated)


def test_an_older_copy_of_a_revoked_keys_rows_put_back_is_refused(tmp_path: Path) -> None:
    """Review F3: copy a key's rows from a backup taken before its revocation."""
    home = tmp_path / "home"
    with _open(home, approvals=0) as ring:
        ring.create("k")
    backup = tmp_path / "backup.db"
    shutil.copy(home / "keyring.db", backup)
    with _open(home, approvals=0) as ring:
        ring.revoke("k", "compromised")
    with sqlite3.connect(home / "keyring.db") as db:
        db.execute("ATTACH DATABASE ? AS old", (str(backup),))
        db.execute("DELETE FROM keys WHERE name = 'k'")
        db.execute("DELETE FROM versions WHERE key_id NOT IN (SELECT key_id FROM keys)")
        db.execute("INSERT INTO keys SELECT * FROM old.keys WHERE name = 'k'")
        db.execute("INSERT INTO versions SELECT * FROM old.versions")
    assert _rows(home, "SELECT state FROM keys WHERE name = 'k'") == [("active",)]  # each row's seal holds
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        _open(home, approvals=0)


def test_a_missing_or_edited_roster_is_refused(populated: Path) -> None:
    roster = _rows(populated, "SELECT v FROM meta WHERE k = 'roster'")[0][0]
    value, seal = roster.split(":")
    _sql(populated, "DELETE FROM meta WHERE k = 'roster'")
    _refused_as_roster(populated, "roster is missing or damaged")
    flipped = f"{int(value, 16) ^ 1:064x}:{seal}"
    _sql(populated, f"INSERT INTO meta VALUES ('roster', '{flipped}')")
    _refused_as_roster(populated, "roster of its rows fails its integrity seal")
    for damaged in ("", "zz", value, f"{value[:-1]}:{seal}", f"{value}:"):
        _sql(populated, "UPDATE meta SET v = ? WHERE k = 'roster'".replace("?", f"'{damaged}'"))
        with pytest.raises(KeyringTampered):
            _open(populated)


def test_rosters_of_several_old_copies_cannot_be_combined(tmp_path: Path) -> None:
    """XOR of three past rosters is the roster of a mix of their rows: it has no seal."""
    home = tmp_path / "home"
    copies = []
    with _open(home, approvals=0) as ring:
        ring.create("a")
        ring.create("b")
    for step in ("a", "b"):
        copies.append(_rows(home, "SELECT v FROM meta WHERE k = 'roster'")[0][0])
        with _open(home, approvals=0) as ring:
            ring.rotate(step)
    copies.append(_rows(home, "SELECT v FROM meta WHERE k = 'roster'")[0][0])
    mixed = 0
    for c in copies:
        mixed ^= int(c.split(":")[0], 16)
    for c in copies:
        _sql(home, f"UPDATE meta SET v = '{mixed:064x}:{c.split(':')[1]}' WHERE k = 'roster'")
        with pytest.raises(KeyringTampered, match="roster of its rows fails its integrity seal"):
            _open(home, approvals=0)


def test_a_removed_policy_seal_is_refused_even_without_the_home_mark(populated: Path) -> None:
    """Someone who writes the whole home (not the KEK) deletes the sealed policy *and* the mark
    in home.json, then loosens the approvals: the policy is sealed with the integrity key, so
    the database alone says it was removed."""
    _sql(populated, "DELETE FROM meta WHERE k IN ('policy', 'policy_seal')")
    record = json.loads((populated / "home.json").read_text())
    record.pop("sealed", None)
    record["policy"]["approvals.revoke"] = record["policy"]["approvals.destroy"] = 0
    (populated / "home.json").write_text(json.dumps(record))
    with pytest.raises(KeyringTampered, match="sealed copy of the home's policy is missing"):
        _open(populated, approvals=0)
    assert _rows(populated, "SELECT v FROM meta WHERE k = 'policy'") == []


def test_writers_racing_keep_the_roster_exact(tmp_path: Path) -> None:
    """Four keyrings on one database (SQLite serialises their writers) create, rotate and
    encrypt past many block reservations at once; the roster still adds up afterwards."""
    home = tmp_path / "home"
    config = XpsConfig.from_mapping(
        {"keyring": {"database": "keyring.db", "default_policy": "max_encryptions=64"}}).keyring
    Keyring(home, config=config).close()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with Keyring(home, config=config) as ring:
                ring.create(f"k{i}")
                for n in range(300):
                    ring.encrypt(f"k{i}", b"x")
                    if n % 100 == 99:
                        ring.rotate(f"k{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Keyring(home, config=config) as ring:
        assert {k.name for k in ring.list()} == {"k0", "k1", "k2", "k3"}
        assert all(ring.describe(f"k{i}").active_version >= 4 for i in range(4))


def test_the_roster_is_kept_on_postgresql_too(tmp_path: Path, pg_dsn: str) -> None:
    import psycopg

    home = tmp_path / "home"
    with _open(home, pg_dsn, approvals=0) as ring:
        ring.create("k")
        ring.rotate("k")
    with _open(home, pg_dsn, approvals=0) as ring:  # two opens, each checking it
        assert ring.describe("k").active_version == 2
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        db.execute("DELETE FROM versions WHERE version = 1")
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        _open(home, pg_dsn, approvals=0)


# -- a home from the release before the roster ---------------------------------------------


@pytest.fixture
def v2_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(DATA / "v2-home", home)
    home.chmod(0o700)
    for name in ("kek.key", "audit.key", "keyring.db", "audit.log", "home.json", "state.json"):
        (home / name).chmod(0o600)  # git keeps no modes; the release wrote these 0600
    (home / "capsules").mkdir(mode=0o700)  # git keeps no empty folders
    return home


def test_a_home_from_the_previous_release_gets_its_roster_once(v2_home: Path) -> None:
    before = _rows(v2_home, "SELECT v FROM meta WHERE k = 'integrity_key'")[0][0]
    assert _rows(v2_home, "SELECT v FROM meta WHERE k = 'roster'") == []
    assert "orders" in ok(xps(v2_home, "key", "list"))
    # The same integrity key, wrapped again to mark the roster; every old seal still verifies.
    assert _rows(v2_home, "SELECT v FROM meta WHERE k = 'integrity_key'")[0][0] != before
    assert ok(xps(v2_home, "key", "decrypt", stdin=(DATA / "v2-orders.blob").read_bytes())) == "kept secret"
    refused(xps(v2_home, "key", "decrypt", stdin=(DATA / "v2-gone.blob").read_bytes()), "XPS_ERR_AUTH")
    ok(xps(v2_home, "key", "rotate", "orders"))
    sealed = [e for e in events(v2_home) if e["event"] == "KEYRING_SEALED"]
    assert [e.get("scope") for e in sealed] == ["roster"]  # once, not at every open
    _sql(v2_home, "DELETE FROM versions WHERE version = 1 AND key_id = "
                  "(SELECT key_id FROM keys WHERE name = 'orders')")
    refused(xps(v2_home, "key", "list"), "do not match its sealed roster")


def test_a_previous_release_home_missing_its_sealed_policy_is_not_given_a_roster(v2_home: Path) -> None:
    _sql(v2_home, "DELETE FROM meta WHERE k IN ('policy', 'policy_seal')")
    refused(xps(v2_home, "key", "list"), "sealed copy of the home's policy is missing")
    assert _rows(v2_home, "SELECT v FROM meta WHERE k = 'roster'") == []


def test_errors_here_are_xps_errors(populated: Path) -> None:
    _sql(populated, "DELETE FROM keys WHERE name = 'k'")
    with pytest.raises(XpsError):
        _open(populated)


# -- review of the roster: schema edits, the old integrity key, damaged columns -------------------

#: Rebuild a table without its primary key and put a second copy of a row in (review F1: with an
#: XOR roster, two copies cancelled out; the sum would notice, the schema check refuses first).
NO_PRIMARY_KEY = {
    "keys": "CREATE TABLE t2 AS SELECT * FROM keys WHERE 0; INSERT INTO t2 SELECT * FROM keys; "
            "INSERT INTO t2 SELECT * FROM keys WHERE name = 'k'; DROP TABLE keys; ALTER TABLE t2 RENAME TO keys;",
    "operators": "CREATE TABLE t2 AS SELECT * FROM operators WHERE 0; INSERT INTO t2 SELECT * FROM operators; "
                 "DROP TABLE operators; ALTER TABLE t2 RENAME TO operators;",
    "approvals_used": "CREATE TABLE t2 (nonce TEXT, used REAL); INSERT INTO t2 SELECT * FROM approvals_used; "
                      "DROP TABLE approvals_used; ALTER TABLE t2 RENAME TO approvals_used;",
    "key names": "CREATE TABLE t2 (key_id TEXT PRIMARY KEY, name TEXT, algorithm TEXT, policy TEXT, "
                 "rotate_every REAL, max_encryptions INTEGER, state TEXT, created REAL, updated REAL, "
                 "revoke_reason TEXT, mac TEXT); INSERT INTO t2 SELECT * FROM keys; DROP TABLE keys; "
                 "ALTER TABLE t2 RENAME TO keys;",
    "trigger": "CREATE TRIGGER keep AFTER UPDATE OF state ON keys BEGIN SELECT 1; END;",
    "view": "CREATE VIEW v AS SELECT * FROM keys;",
}


@pytest.mark.parametrize("edit", sorted(NO_PRIMARY_KEY))
def test_a_schema_that_could_hold_duplicates_or_revive_rows_is_refused(populated: Path, edit: str) -> None:
    with sqlite3.connect(populated / "keyring.db") as db:
        db.executescript(NO_PRIMARY_KEY[edit])
    with pytest.raises(KeyringTampered, match="its schema was edited"):
        _open(populated)


def test_two_copies_of_a_row_do_not_cancel_out(populated: Path) -> None:
    """The accumulator itself: a sum, where XOR let a doubled row vanish."""
    with _open(populated) as ring, ring.store.snapshot() as db:
        entries = list(ring.store._entries(db))
        doubled = sum(ring.store._tag(e) for e in [*entries, entries[0], entries[0]]) % (1 << 256)
        assert doubled != ring.store._roster_of_rows(db)


def test_the_old_integrity_key_put_back_after_the_upgrade_is_refused(v2_home: Path) -> None:
    """Review F2: the pre-roster wrapped key is in every older backup. The upgrade resealed every
    row under a new key, so the old one verifies none of them: no fresh roster is built."""
    legacy = _rows(v2_home, "SELECT v FROM meta WHERE k = 'integrity_key'")[0][0]
    ok(xps(v2_home, "key", "list"))
    _sql(v2_home, f"UPDATE meta SET v = '{legacy}' WHERE k = 'integrity_key'", "DELETE FROM meta WHERE k = 'roster'")
    refused(xps(v2_home, "key", "list"), "fails its integrity seal")
    assert _rows(v2_home, "SELECT v FROM meta WHERE k = 'roster'") == []
    # And with the sealed policy gone too and home.json loosened: refused, nothing sealed from home.json.
    _sql(v2_home, "DELETE FROM meta WHERE k IN ('policy', 'policy_seal')")
    record = json.loads((v2_home / "home.json").read_text())
    record.pop("sealed", None)
    record["policy"]["approvals.revoke"] = 0
    (v2_home / "home.json").write_text(json.dumps(record))
    refused(xps(v2_home, "key", "list"), "XPS_ERR_POLICY")
    assert _rows(v2_home, "SELECT v FROM meta WHERE k IN ('policy', 'roster')") == []


def test_the_upgrade_never_seals_home_json_policy(v2_home: Path) -> None:
    _sql(v2_home, "DELETE FROM meta WHERE k IN ('policy', 'policy_seal')")
    record = json.loads((v2_home / "home.json").read_text())
    record.pop("sealed", None)  # the mark gone too: still refused
    (v2_home / "home.json").write_text(json.dumps(record))
    refused(xps(v2_home, "key", "list"), "sealed copy of the home's policy is missing")
    assert _rows(v2_home, "SELECT v FROM meta WHERE k = 'roster'") == []


def test_a_new_keyring_database_is_journaled(tmp_path: Path) -> None:
    """Review F7: a database deleted and its record removed from home.json comes back empty;
    the journal shows a second KEYRING_CREATE."""
    home = tmp_path / "home"
    with _open(home, approvals=0) as ring:
        assert [e["event"] for e in ring.audit.tail(5)] == ["KEYRING_CREATE"]
        assert ring.audit.tail(1)[0]["store"] == "sqlite"


@pytest.mark.parametrize("value", ["'not json'", "42", "x'00'"])
def test_a_damaged_rewrap_grant_is_refused_typed(populated: Path, value: str) -> None:
    """Review F5: a grant's approvers were parsed before its seal was checked (JSONDecodeError)."""
    with _open(populated) as ring:
        kid = ring.describe("gone").key_id
        _sql(populated, f"UPDATE rewrap_grants SET approvers = {value}")
        with pytest.raises(KeyringTampered, match="rewrap grant of a key is damaged") as caught:
            ring.store.grant(kid)
        assert "not json" not in str(caught.value)


@pytest.mark.parametrize("value", ["'yesterday'", "x'01'", "-1"])
def test_damaged_usage_counters_are_refused_typed(populated: Path, value: str) -> None:
    """Usage counters are not sealed (they inform); damage to them is a typed refusal, not a
    TypeError later in arithmetic (review F5)."""
    column = "decryptions" if value == "-1" else "last_used"
    with _open(populated) as ring:
        _sql(populated, f"UPDATE versions SET {column} = {value}")
        with pytest.raises(XpsError, match="usage counters") as caught:
            ring.unused_for("k", 2)
        assert "yesterday" not in str(caught.value)


def test_a_huge_schema_value_is_not_echoed(populated: Path) -> None:
    _sql(populated, "UPDATE meta SET v = '" + "9" * 100_000 + "' WHERE k = 'schema'")
    with pytest.raises(XpsError) as caught:
        _open(populated)
    assert len(str(caught.value)) < 400 and "999999" not in str(caught.value)


def test_opening_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """The roster is checked in a read snapshot: an open proceeds while another process holds a
    write transaction (on PostgreSQL the write lock is shared by every node)."""
    populated = tmp_path / "home"
    with _open(populated) as ring:
        ring.create("k")
    writer = sqlite3.connect(populated / "keyring.db", isolation_level=None, timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE versions SET decryptions = decryptions")  # holds the write lock, commits nothing
    try:
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(_open(populated).close()), daemon=True)
        t.start()
        t.join(20)
        assert done == [None], "the open waited for the writer"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# -- an open keyring: rows put back while it runs ------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Keyring, Keyring, Clock]]:
    """Two keyrings open on one home (two processes, as far as the database can tell), one clock."""
    clock = Clock()
    config = _keyring_config(database="keyring.db")
    a = Keyring(tmp_path / "home", clock=clock, config=config)
    b = Keyring(tmp_path / "home", clock=clock, config=config)
    yield a, b, clock
    b.close()
    a.close()


def _full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, count the full roster checks (every keyring of the test)."""
    checks = [0]
    real = Store.checked_rows

    def counted(self: Store, db: Any) -> RosterCheck:
        checks[0] += 1
        return real(self, db)

    monkeypatch.setattr(Store, "checked_rows", counted)
    return checks


def _key_rows(home: Path, kid: str) -> tuple[list[tuple], list[tuple]]:
    """The key's row and its version rows as they are now (the "older copy" put back later)."""
    return (_rows(home, f"SELECT * FROM keys WHERE key_id = '{kid}'"),
            _rows(home, f"SELECT * FROM versions WHERE key_id = '{kid}'"))


def _put_back(home: Path, kid: str, keys: list[tuple], versions: list[tuple], roster: str | None = None) -> None:
    with sqlite3.connect(home / "keyring.db") as db:
        db.execute("DELETE FROM versions WHERE key_id = ?", (kid,))
        if keys:
            db.execute("DELETE FROM keys WHERE key_id = ?", (kid,))
        for row in keys:
            db.execute(f"INSERT INTO keys VALUES ({', '.join('?' * len(row))})", row)
        for row in versions:
            db.execute(f"INSERT INTO versions VALUES ({', '.join('?' * len(row))})", row)
        if roster is not None:
            db.execute("UPDATE meta SET v = ? WHERE k = 'roster'", (roster,))


@pytest.mark.parametrize("seen_revoked", [False, True])
def test_a_revoked_key_s_older_rows_put_back_do_not_revive_it_in_an_open_keyring(
        tmp_path: Path, pair: tuple[Keyring, Keyring, Clock], seen_revoked: bool) -> None:
    a, b, clock = pair
    home = tmp_path / "home"
    a.create("k")
    blob = a.encrypt("k", b"m")
    assert b.decrypt(blob) == b"m" and b.decrypt(b.encrypt("k", b"n")) == b"n"  # b holds k
    kid = a.describe("k").key_id
    keys, versions = _key_rows(home, kid)
    a.revoke("k", "compromised")
    if seen_revoked:  # b re-reads and sees the revocation (its roster check passes then)
        clock.advance(RECHECK_SECONDS)
        with pytest.raises(AuthError):
            b.decrypt(blob)
    _put_back(home, kid, keys, versions)  # sealed rows, from before the revocation
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        b.encrypt("k", b"m")
    with pytest.raises(AuthError):
        b.decrypt(blob)
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):  # and at the next open, as before
        Keyring(home, config=_keyring_config(database="keyring.db"))


def test_an_open_keyring_rechecks_the_roster_only_when_something_changed(
        pair: tuple[Keyring, Keyring, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, clock = pair
    a.create("k")
    blob = a.encrypt("k", b"m")
    checks = _full_checks(monkeypatch)
    assert b.decrypt(blob) == b"m"
    assert checks[0] == 1  # a's writes changed the roster since b opened
    for _ in range(3):  # nothing changed: re-reads compare, they do not sum every row
        clock.advance(RECHECK_SECONDS)
        assert b.decrypt(blob) == b"m"
    assert checks[0] == 1
    a.create("other")  # a legitimate change elsewhere: one more full check, and it passes
    clock.advance(RECHECK_SECONDS)
    assert b.decrypt(blob) == b"m"
    assert checks[0] == 2


def test_rows_and_roster_put_back_as_the_last_check_saw_them_are_caught_by_the_next_full_check(
        tmp_path: Path, pair: tuple[Keyring, Keyring, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything b reads matches its last check exactly; only a later full check (other rows
    # changed since) can tell. It runs once that check is ROSTER_FULL_SECONDS old.
    monkeypatch.setattr(keyring_module, "ROSTER_FULL_SECONDS", 0.3)
    a, b, clock = pair
    home = tmp_path / "home"
    a.create("k")
    blob = a.encrypt("k", b"m")
    assert b.decrypt(blob) == b"m"  # b's last check: now
    kid = a.describe("k").key_id
    keys, versions = _key_rows(home, kid)
    roster = _rows(home, "SELECT v FROM meta WHERE k = 'roster'")[0][0]
    a.revoke("k", "compromised")
    a.create("other")  # a later change that stays: this is a mix, not a whole-database rollback
    _put_back(home, kid, keys, versions, roster)
    time.sleep(0.4)
    clock.advance(1.0)
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        b.encrypt("k", b"m")


def test_exported_material_comes_only_from_rows_the_roster_vouches_for(
        tmp_path: Path, pair: tuple[Keyring, Keyring, Clock]) -> None:
    a, b, _ = pair
    home = tmp_path / "home"
    a.create("k")
    kid = a.describe("k").key_id
    keys, versions = _key_rows(home, kid)
    a.revoke("k", "compromised")
    _put_back(home, kid, keys, versions)  # the revoked key's rows, from before
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        b.get("k")


def test_a_granted_rewrap_does_not_open_a_destroyed_version_put_back(
        tmp_path: Path, pair: tuple[Keyring, Keyring, Clock]) -> None:
    a, b, _ = pair
    home = tmp_path / "home"
    a.create("k")
    a.create("next")
    blob = a.encrypt("k", b"secret")
    kid = a.describe("k").key_id
    a.revoke("k", "compromised")
    _, versions = _key_rows(home, kid)  # revoked, material still there
    a.grant_rewrap("k", "next", reason="migrate")
    a.destroy("k")
    b.encrypt("next", b"warm")  # b's check passes after the destroy; next's handle is fresh
    _put_back(home, kid, [], versions)  # only the version row put back
    with pytest.raises(KeyringTampered, match="do not match its sealed roster"):
        b.rewrap_revoked([blob])


def test_a_keyring_s_own_writes_do_not_cost_its_next_re_read_a_full_check(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # usage_block 1: every encryption reserves (writes the version row and the roster). The
    # last check is carried past those writes; only another process's change needs a full one.
    clock = Clock()
    config = _keyring_config(database="keyring.db", usage_block=1)
    ring = Keyring(tmp_path / "home", clock=clock, config=config)
    try:
        ring.create("k")
        checks = _full_checks(monkeypatch)
        blobs = []
        for _ in range(20):
            blobs.append(ring.encrypt("k", b"m"))
            clock.advance(RECHECK_SECONDS)  # every call re-reads
        assert all(ring.decrypt(b) == b"m" for b in blobs)
        assert checks[0] <= 1  # at most the one after create (made before the count started)
        assert ring.describe("k").versions[0].encryptions == 20
        other = Keyring(tmp_path / "home", clock=clock, config=config)
        try:
            other.create("elsewhere")  # another process's write: the next re-read checks in full
        finally:
            other.close()
        clock.advance(RECHECK_SECONDS)
        before = checks[0]
        ring.encrypt("k", b"m")
        assert checks[0] == before + 1
    finally:
        ring.close()


def test_forged_blobs_naming_unknown_keys_cost_no_roster_check(pair: tuple[Keyring, Keyring, Clock],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Only rows about to be used are checked: a forged blob after another process's write
    # would otherwise cost a full check (about 12 ms per 1,000 keys) under the keyring's lock.
    a, b, _ = pair
    a.create("k")
    blob = a.encrypt("k", b"m")
    checks = _full_checks(monkeypatch)
    for i in range(20):
        a.create(f"other{i}")  # another process writes between every forged blob
        forged = blob[:1] + os.urandom(8) + blob[9:]  # a key id nobody has
        with pytest.raises(AuthError):
            b.decrypt(forged)
    assert checks[0] == 0
    assert b.decrypt(blob) == b"m" and checks[0] == 1  # a real key's rows: checked once
