"""The shared audit journal on PostgreSQL: one chain across nodes, same checks as the file journal."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from xpscerpto.audit import AuditLog
from xpscerpto.audit.config import AuditConfig
from xpscerpto.audit.journal import AuditTampered
from xpscerpto.db import Database
from xpscerpto.db.audit_store import PgAuditLog
from xpscerpto.errors import KeyError_, PolicyError


def _nodes(tmp_path: Path, dsn: str, n: int, every: int = 100) -> list[PgAuditLog]:
    """``n`` nodes' journals: node 0 makes the key at its first record, the others copy it."""
    first = PgAuditLog(dsn, tmp_path / "n0" / "audit.log", checkpoint_every=every)
    (tmp_path / "n0").mkdir()
    first.record("NODE_UP", node="n0")
    out = [first]
    for i in range(1, n):
        home = tmp_path / f"n{i}"
        home.mkdir()
        shutil.copy2(tmp_path / "n0" / "audit.key", home / "audit.key")
        out.append(PgAuditLog(dsn, home / "audit.log", checkpoint_every=every))
    return out


def _rows(dsn: str, sql: str, params: tuple[object, ...] = ()) -> None:
    db = Database(dsn)
    try:
        db.execute(sql, params)
    finally:
        db.close()


def test_records_from_racing_nodes_form_one_verified_chain_with_checkpoints(pg_dsn: str, tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, pg_dsn, 3, every=5)

    def write(log: PgAuditLog, i: int) -> None:
        for k in range(20):
            log.record("KEY_ROTATE", node=i, k=k)

    threads = [threading.Thread(target=write, args=(log, i)) for i, log in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in nodes:  # every node verifies the whole chain against its own pinned .pub
        report = log.verify()
        assert report.records == 1 + 60 + report.checkpoints and report.checkpoints == report.records // 6
    events = [e for e in nodes[1].tail(1000) if e["event"] == "KEY_ROTATE"]
    assert sorted((e["node"], e["k"]) for e in events) == sorted((i, k) for i in range(3) for k in range(20))
    for log in nodes:
        log.close()


def test_record_once_delivers_a_txid_once_across_nodes(pg_dsn: str, tmp_path: Path) -> None:
    import time

    a, b = _nodes(tmp_path, pg_dsn, 2)
    first = a.record_once("KEY_CREATE", "00112233aabbccdd", since=time.time(), name="k")
    again = b.record_once("KEY_CREATE", "00112233aabbccdd", since=time.time(), name="k")
    assert first["seq"] == again["seq"]
    assert [e["event"] for e in b.tail(10)].count("KEY_CREATE") == 1
    a.close()
    b.close()


def test_a_node_with_another_key_or_none_is_refused_before_writing(pg_dsn: str, tmp_path: Path) -> None:
    a = _nodes(tmp_path, pg_dsn, 1)[0]
    stranger = PgAuditLog(pg_dsn, tmp_path / "stranger" / "audit.log")
    (tmp_path / "stranger").mkdir()
    AuditLog(tmp_path / "stranger" / "local.log").record("X")  # a key of its own, beside...
    shutil.copy2(tmp_path / "stranger" / "local.key", tmp_path / "stranger" / "audit.key")
    with pytest.raises(KeyError_, match="not the journal's"):
        stranger.record("KEY_ROTATE")
    keyless = PgAuditLog(pg_dsn, tmp_path / "keyless" / "audit.log")
    (tmp_path / "keyless").mkdir()
    with pytest.raises(KeyError_):
        keyless.record("KEY_ROTATE")
    assert not (tmp_path / "keyless" / "audit.key").exists()  # no key made for a chain that has one
    assert [e["event"] for e in a.tail(10)] == ["NODE_UP"]
    for log in (a, stranger, keyless):
        log.close()


@pytest.mark.parametrize(("tamper", "reason"), [
    ("UPDATE xps_audit SET line = replace(line, '\"n1\"', '\"n9\"') WHERE seq = 2", "modified"),
    ("DELETE FROM xps_audit WHERE seq = 2", "deleted"),
    ("UPDATE xps_audit SET line = 'not json' WHERE seq = 2", "malformed line"),
    ("DELETE FROM xps_audit", "deleted"),
])
def test_edited_rows_are_found_by_verify(pg_dsn: str, tmp_path: Path, tamper: str, reason: str) -> None:
    a, b = _nodes(tmp_path, pg_dsn, 2)
    b.record("NODE_UP", node="n1")
    a.record("KEY_ROTATE", version=2)
    _rows(pg_dsn, tamper)
    with pytest.raises(AuditTampered) as info:
        a.verify()
    assert info.value.reason == reason
    a.close()
    b.close()


def test_a_corrupted_last_row_stops_appends_with_a_clear_error(pg_dsn: str, tmp_path: Path) -> None:
    a = _nodes(tmp_path, pg_dsn, 1)[0]
    _rows(pg_dsn, "UPDATE xps_audit SET line = '{' WHERE seq = 1")
    with pytest.raises(AuditTampered, match="cannot be continued"):
        a.record("KEY_ROTATE")
    with pytest.raises(AuditTampered):
        a.check_writable()
    a.close()


def test_the_configuration_selects_the_shared_journal(pg_dsn: str, tmp_path: Path) -> None:
    log = AuditConfig(database=pg_dsn).journal(tmp_path, tmp_path / "audit.log")
    assert isinstance(log, PgAuditLog)
    log.record("NODE_UP")
    assert not (tmp_path / "audit.log").exists()  # records live in the database only
    log.close()
    with pytest.raises(PolicyError, match=r"audit\.database"):
        AuditConfig.from_mapping({"database": "postgresql://u:pw@h/db"})


def test_mentions_asks_the_shared_journal(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "n0").mkdir()
    log = PgAuditLog(pg_dsn, tmp_path / "n0" / "audit.log")
    log.record("NOTE", text='"event":"HOME_INIT"')  # a value holding the words is no record of the event
    assert not log.mentions("HOME_INIT") and log.mentions("NOTE")
    log.record("HOME_INIT")
    assert log.mentions("HOME_INIT")
    with pytest.raises(PolicyError, match="audit event"):
        log.mentions("home'); DROP TABLE xps_audit; --")
    log.close()


def test_a_nested_row_matching_a_txid_is_no_earlier_delivery_and_no_untyped_error(pg_dsn: str,
                                                                                   tmp_path: Path) -> None:
    # Review finding: record_once parsed the row it found with a bare json.loads, so a database
    # writer's line nested 100,000 deep that mentions the txid raised RecursionError.
    import time

    (log,) = _nodes(tmp_path, pg_dsn, 1)
    nested = "[" * 100_000 + '"txid":"00aa11bb22cc"' + "]" * 100_000
    _rows(pg_dsn, "INSERT INTO xps_audit (seq, time, line) VALUES (2, '2999-01-01T00:00:00.000000Z', ?)", (nested,))
    with pytest.raises(AuditTampered, match="malformed line"):  # the chain's last row is no record
        log.record_once("KEY_ROTATE", "00aa11bb22cc", since=time.time())
    _rows(pg_dsn, "DELETE FROM xps_audit WHERE seq = 2")
    first = log.record_once("KEY_ROTATE", "00aa11bb22cc", since=time.time())
    assert log.record_once("KEY_ROTATE", "00aa11bb22cc", since=time.time()) == first  # delivered once
    log.close()


def test_a_node_configured_with_another_interval_keeps_the_journals(pg_dsn: str, tmp_path: Path) -> None:
    # One journal, one interval: a node started without the fleet's audit.checkpoint_every wrote
    # checkpoints at its own, and the shared chain then verified under none.
    a, b = _nodes(tmp_path, pg_dsn, 2, every=3)
    for k in range(5):
        a.record("KEY_ROTATE", k=k)
    other = PgAuditLog(pg_dsn, tmp_path / "n1" / "audit.log")  # default interval (100)
    for k in range(8):
        other.record("KEY_ROTATE", k=k)
    report = a.verify()
    assert report.checkpoints == report.records // 4 and report.records == 1 + 13 + report.checkpoints
    for log in (a, b, other):
        log.close()


def test_a_record_carrying_checkpoint_text_does_not_hide_the_real_checkpoint(pg_dsn: str, tmp_path: Path) -> None:
    # Review finding: the newest checkpoint was the newest row *mentioning* one; a record with
    # {"event": "CHECKPOINT"} in a field of its own hid the real one, and every later append on
    # every node was refused as if the journal had none.
    (log,) = _nodes(tmp_path, pg_dsn, 1, every=5)
    for k in range(6):
        log.record("KEY_ROTATE", k=k)
    log.record("CONFIG_CHANGE", value={"event": "CHECKPOINT"})
    fresh = PgAuditLog(pg_dsn, tmp_path / "n0" / "audit.log", checkpoint_every=5)  # nothing cached
    for k in range(6):
        fresh.record("KEY_ROTATE", k=k)
    report = fresh.verify()
    assert report.checkpoints == report.records // 6 >= 2
    for j in (log, fresh):
        j.close()
