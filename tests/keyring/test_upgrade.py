"""A home written by the previous release (keyring schema 1, operators.json, no home.json) is
adopted explicitly, upgraded in place, sealed and journaled — and then protected like a new one."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from .test_home_policy import events, ok, refused, xps

DATA = Path(__file__).with_name("data")


@pytest.fixture
def old_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(DATA / "v1-home", home)
    home.chmod(0o700)
    for secret in ("kek.key", "audit.key", "keyring.db", "audit.log", "operators.json"):
        (home / secret).chmod(0o600)  # git keeps no modes; the release wrote these 0600
    return home


def test_an_old_home_is_refused_until_adopted_then_upgraded_and_sealed(old_home: Path) -> None:
    refused(xps(old_home, "key", "list"), "no home.json", "xps init --adopt")
    out = ok(xps(old_home, "init", "--adopt"))
    assert "initialised" in out
    names = [e["event"] for e in events(old_home)]
    assert "KEYRING_SEALED" in names and "OPERATORS_IMPORTED" in names and "HOME_INIT" in names
    # Operators moved into the sealed database; the file is set aside, not read again.
    assert not (old_home / "operators.json").exists() and (old_home / "operators.json.imported").exists()
    assert ok(xps(old_home, "operator", "list")).split()[0] == json.loads(
        (DATA / "op1.pub").read_text())["keyid"]
    # What the old release encrypted still opens; what it revoked stays revoked.
    assert ok(xps(old_home, "key", "decrypt", stdin=(DATA / "orders.blob").read_bytes())) == "kept secret"
    refused(xps(old_home, "key", "decrypt", stdin=(DATA / "gone.blob").read_bytes()), "XPS_ERR_AUTH")
    info = json.loads(ok(xps(old_home, "key", "describe", "orders", "--json")))
    assert [(v["version"], v["state"], v["algorithm"]) for v in info["versions"]] == [
        (1, "retired", "AES-256-GCM"), (2, "active", "AES-256-GCM")]
    # The old journal verifies: its records predate per-record signatures (a warned prefix).
    report = ok(xps(old_home, "audit", "verify"))
    assert "unsigned prefix" in report
    refused(xps(old_home, "audit", "verify", "--strict"), "unsigned record")


def test_after_the_upgrade_the_old_state_is_sealed_against_edits(old_home: Path) -> None:
    ok(xps(old_home, "init", "--adopt"))
    with sqlite3.connect(old_home / "keyring.db") as db:
        db.execute("UPDATE keys SET state = 'active' WHERE name = 'gone'")
        db.execute("UPDATE versions SET state = 'active' WHERE key_id = (SELECT key_id FROM keys WHERE name='gone')")
    refused(xps(old_home, "key", "decrypt", stdin=(DATA / "gone.blob").read_bytes()), "XPS_ERR_AUTH")
    refused(xps(old_home, "key", "describe", "gone"), "fails its integrity seal")


def test_an_operators_file_dropped_in_later_is_refused_not_read(old_home: Path, tmp_path: Path) -> None:
    ok(xps(old_home, "init", "--adopt"))
    shutil.copy(old_home / "operators.json.imported", old_home / "operators.json")
    refused(xps(old_home, "key", "list"), "operators are kept in the keyring database", "remove it")


def _forge(home: Path, script: str) -> None:
    with sqlite3.connect(home / "keyring.db") as db:
        db.executescript(script)


#: Unseal every row, revive the revoked key, reset its nonce budget, and make the database say it
#: is still being upgraded: a write to keyring.db alone, no KEK (review F1).
RESEAL = """
UPDATE keys SET state = 'active' WHERE name = 'gone';
UPDATE versions SET state = 'active', encryptions = 0 WHERE key_id = (SELECT key_id FROM keys WHERE name = 'gone');
UPDATE keys SET mac = NULL; UPDATE versions SET mac = NULL;
DELETE FROM meta WHERE k IN ('integrity_key', 'policy', 'policy_seal');
"""


@pytest.mark.parametrize("marker", ["INSERT INTO meta VALUES ('upgrading', '1')",
                                    "UPDATE meta SET v = '1' WHERE k = 'schema'"])
def test_a_sealed_keyring_is_never_sealed_afresh(old_home: Path, marker: str) -> None:
    ok(xps(old_home, "init", "--adopt"))  # upgraded and sealed; the home records it
    assert json.loads((old_home / "home.json").read_text())["sealed"] == ["keyring"]
    _forge(old_home, RESEAL + marker + ";")
    for command in (("key", "list"), ("key", "describe", "gone")):
        refused(xps(old_home, *command), "no integrity key, though this home recorded it sealed")
    refused(xps(old_home, "key", "decrypt", stdin=(DATA / "gone.blob").read_bytes()), "XPS_ERR_POLICY")
    # Nothing was sealed meanwhile: the database still has no integrity key.
    with sqlite3.connect(old_home / "keyring.db") as db:
        assert db.execute("SELECT v FROM meta WHERE k = 'integrity_key'").fetchone() is None


def test_a_removed_policy_seal_is_refused_not_resealed_from_home_json(old_home: Path) -> None:
    """Review F2: delete the database's sealed policy, then loosen home.json's approvals."""
    ok(xps(old_home, "init", "--adopt"))
    _forge(old_home, "DELETE FROM meta WHERE k IN ('policy', 'policy_seal');")
    record = json.loads((old_home / "home.json").read_text())
    record["policy"]["approvals.revoke"] = record["policy"]["approvals.destroy"] = 0
    (old_home / "home.json").write_text(json.dumps(record))
    refused(xps(old_home, "key", "list"), "sealed copy of the home's policy is missing")
    with sqlite3.connect(old_home / "keyring.db") as db:
        assert db.execute("SELECT v FROM meta WHERE k = 'policy'").fetchone() is None


def test_a_home_recorded_before_the_seal_mark_is_marked_at_its_next_open(old_home: Path) -> None:
    ok(xps(old_home, "init", "--adopt"))
    record = json.loads((old_home / "home.json").read_text())
    del record["sealed"]  # as every home.json written before the mark existed
    (old_home / "home.json").write_text(json.dumps(record))
    ok(xps(old_home, "key", "list"))
    assert json.loads((old_home / "home.json").read_text())["sealed"] == ["keyring"]


@pytest.mark.parametrize("sealed", [[], ["keyring", "keyring"], ["nope"], "keyring", [1]])
def test_a_malformed_seal_mark_is_refused(old_home: Path, sealed: object) -> None:
    ok(xps(old_home, "init", "--adopt"))
    record = json.loads((old_home / "home.json").read_text())
    record["sealed"] = sealed
    (old_home / "home.json").write_text(json.dumps(record))
    refused(xps(old_home, "key", "list"), "'sealed' must list known store names")


def test_without_the_home_mark_an_unsealed_database_is_still_only_sealed_by_adoption(old_home: Path) -> None:
    """Someone who can write the whole home removes the mark too: a service's open still does
    not seal the forged rows; only an operator's explicit `xps init --adopt` would."""
    ok(xps(old_home, "init", "--adopt"))
    record = json.loads((old_home / "home.json").read_text())
    del record["sealed"]
    (old_home / "home.json").write_text(json.dumps(record))
    _forge(old_home, RESEAL + "UPDATE meta SET v = '1' WHERE k = 'schema';")
    for command in (("key", "list"), ("key", "describe", "gone")):
        refused(xps(old_home, *command), "no integrity key", "sealed once, by `xps init --adopt`")
    with sqlite3.connect(old_home / "keyring.db") as db:
        assert db.execute("SELECT v FROM meta WHERE k = 'integrity_key'").fetchone() is None


def test_adopting_a_home_that_has_a_record_is_refused(old_home: Path) -> None:
    ok(xps(old_home, "init", "--adopt"))
    refused(xps(old_home, "init", "--adopt"), "has a home.json and a sealed keyring already")
    ok(xps(old_home, "init"))  # without --adopt: "already initialised", nothing sealed afresh


def test_an_adoption_that_failed_halfway_can_be_retried(old_home: Path) -> None:
    """Review: home.json was written, then adoption failed (a damaged operators.json); the retry
    was refused for the record, every other command for the unsealed database."""
    good = (old_home / "operators.json").read_bytes()
    (old_home / "operators.json").write_text("{")
    refused(xps(old_home, "init", "--adopt"), "operators")
    # The refused adoption's record is removed (a record left behind stood as the home's policy).
    assert not (old_home / "home.json").exists()
    (old_home / "operators.json").write_bytes(good)
    ok(xps(old_home, "init", "--adopt"))
    assert ok(xps(old_home, "key", "decrypt", stdin=(DATA / "orders.blob").read_bytes())) == "kept secret"
