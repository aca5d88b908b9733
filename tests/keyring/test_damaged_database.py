"""A keyring.db damaged on disk is one typed refusal wherever the damage is first read.

Review F11: a flipped bit in a page made SQLite raise ``DatabaseError``/``OperationalError``
from whatever statement first touched it (raw, not an XpsError), and one variant quoted the
damaged column — a wrapped key — in its message.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from xpscerpto.errors import XpsError
from xpscerpto.keyring import Keyring

PAGE = 4096


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    """A home with two keys (one rotated), its keyring closed; and one blob of each key."""
    home = tmp_path_factory.mktemp("pristine") / "home"
    with Keyring(home) as ring:
        ring.create("orders")
        ring.create("logs", "XCHACHA20-POLY1305")
        ring.rotate("orders")
        blobs = ring.encrypt("orders", b"card 4111"), ring.encrypt("logs", b"line")
    with sqlite3.connect(home / "keyring.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return home, *blobs


def _use(home: Path, blobs: tuple[bytes, ...]) -> list[object]:
    """Everything a service does with the keyring: open, list, describe, decrypt, encrypt."""
    with Keyring(home) as ring:
        out: list[object] = [sorted(k.name for k in ring.list()), ring.describe("orders").name]
        out += [ring.decrypt(b) for b in blobs]
        out.append(len(ring.encrypt("logs", b"x")))
        return out


def _copy(pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(pristine[0], home)
    return home


def test_the_pristine_copy_works(pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    home = _copy(pristine, tmp_path)
    assert _use(home, pristine[1:])[:4] == [["logs", "orders"], "orders", b"card 4111", b"line"]


def test_every_page_header_flip_is_refused_or_harmless(pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    """One bit in the b-tree header of every page (type, cell count, content offset)."""
    raw = (pristine[0] / "keyring.db").read_bytes()
    outcomes = {"refused": 0, "same": 0}
    for page in range(1, len(raw) // PAGE):  # page 1 holds the file header: SQLite refuses to open it
        for offset in (0, 3, 4, 5, 6):
            at = page * PAGE + offset
            home = _copy(pristine, tmp_path / f"p{page}-{offset}")
            damaged = bytearray(raw)
            damaged[at] ^= 0x04
            (home / "keyring.db").write_bytes(bytes(damaged))
            try:
                _use(home, pristine[1:])
            except XpsError as exc:
                assert "keyring" in str(exc) or "key" in str(exc)
                outcomes["refused"] += 1
            else:
                outcomes["same"] += 1
    assert outcomes["refused"] > 0  # the damage was read, and refused as typed


def test_a_column_that_is_no_longer_text_is_refused_without_quoting_it(
        pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    home = _copy(pristine, tmp_path)
    with sqlite3.connect(home / "keyring.db") as db:
        # The wrapped key's bytes, now typed as text (one flipped serial-type bit in the page
        # does this): not UTF-8, so reading the row fails, and SQLite's message quotes them.
        db.execute("UPDATE versions SET wrapped = CAST(wrapped AS TEXT)")
    with pytest.raises(XpsError) as ei:
        _use(home, pristine[1:])
    assert "damaged" in str(ei.value) and "restore it from a backup" in str(ei.value)
    assert str(ei.value).endswith("damaged (OperationalError); restore it from a backup")


def test_a_removed_active_version_row_is_refused_typed(pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    """Review F7: deleting the active version's row raised AssertionError from encrypt."""
    home = _copy(pristine, tmp_path)
    with Keyring(home) as ring:  # deleted under a running keyring: its reads refuse, typed
        with sqlite3.connect(home / "keyring.db") as db:
            db.execute("DELETE FROM versions WHERE state = 'active' AND key_id = "
                       "(SELECT key_id FROM keys WHERE name = 'logs')")
        with pytest.raises(XpsError, match="no active version"):
            ring.encrypt("logs", b"x")
        with pytest.raises(XpsError, match="no active version"):
            ring.rotate("logs")
    with pytest.raises(XpsError, match="do not match its sealed roster"):  # and every later open
        Keyring(home)


def test_a_journal_record_queued_with_a_forged_seal_is_refused_not_delivered(
        pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    """Review F6: a row in the outbox became a chained, genuine-looking journal record."""
    home = _copy(pristine, tmp_path)
    journal = (home / "audit.log").read_bytes()
    forged = '{"key_id": "00", "name": "orders", "operator": "admin", "_seal": "' + "0" * 64 + '"}'
    with Keyring(home) as ring:  # queued under a running keyring: its next delivery refuses it
        with sqlite3.connect(home / "keyring.db") as db:
            db.execute("INSERT INTO outbox VALUES ('deadbeefdeadbeef', 0, 'KEY_DESTROY', ?)", (forged,))
        with pytest.raises(XpsError, match="queued journal record fails its integrity seal"):
            ring.outbox.deliver()
    with pytest.raises(XpsError, match="do not match its sealed roster"):  # and every later open
        Keyring(home)
    assert (home / "audit.log").read_bytes() == journal


def test_an_unsealed_queued_record_is_delivered_marked_unsealed(
        pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    """What an earlier release queued (a crash before delivery) in a database from before the
    roster: the keyring still opens, and the journal says the record carried no seal. The same
    row added to a database that has a roster is refused with it."""
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).with_name("data") / "v2-home", old)
    old.chmod(0o700)
    for f in old.iterdir():
        f.chmod(0o600)  # git keeps no modes; the release wrote these 0600
    (old / "capsules").mkdir(mode=0o700)
    home = _copy(pristine, tmp_path)
    for where in (old, home):
        with sqlite3.connect(where / "keyring.db") as db:
            db.execute("INSERT INTO outbox VALUES ('deadbeefdeadbeef', 0, 'KEY_ROTATE', ?)",
                       ('{"name": "orders", "operator": "old-release"}',))
    with Keyring(old) as ring:
        record = [e for e in ring.audit.tail(5) if e["event"] == "KEY_ROTATE"][-1]
        assert record["unsealed"] is True and record["operator"] == "old-release" and ring.store.outbox() == []
    with pytest.raises(XpsError, match="do not match its sealed roster"):
        Keyring(home)


def test_a_genuine_queued_record_is_delivered_once(pristine: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    """What a kill -9 between a change's commit and its delivery leaves: sealed, so delivered."""
    home = _copy(pristine, tmp_path)
    with Keyring(home) as ring, ring.store.write() as db:
        ring.outbox.add(db, "KEY_ROTATE", name="orders", operator="t")
    with Keyring(home) as ring:
        events = [e["event"] for e in ring.audit.tail(3)]
        assert events[-1] == "KEY_ROTATE" and ring.store.outbox() == []
