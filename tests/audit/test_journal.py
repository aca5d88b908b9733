"""The audit journal: hash chain, signed checkpoints, tamper detection, torn tails, concurrency.

Every tamper test edits the real file the way an attacker with write access would — often
re-computing hashes with an independent implementation of the documented format (below),
so only the chain links and the checkpoint signatures stand in the way.

Tests on the ``log`` fixture run twice: on the file journal and on the shared PostgreSQL
journal (``xps_audit``), where the attacker rewrites the table's rows instead of the file's
lines (row order is the table's ``seq`` column, as the verifier reads it). Tests of what only a
file has (torn tails, permissions, a deleted file) are marked ``file_only``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from xpscerpto import InternalError, KeyError_, PolicyError, SecretBytes, XpsError
from xpscerpto.audit import GENESIS, AuditLog, AuditTampered, checkpoint_message, read_public_key, record_message
from xpscerpto.audit.journal import AuditPublicKeyMissing

SECRET = bytes(range(0x41, 0x41 + 32))


# --- an independent implementation of the on-disk format -------------------------------------

def canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def rehash(rec: dict[str, Any]) -> str:
    return hashlib.sha256(canon({k: v for k, v in rec.items() if k != "hash"})).hexdigest()


#: journal path -> the PostgreSQL database holding its records (the ``postgresql`` backend).
_PG: dict[Path, str] = {}


def read(path: Path) -> list[dict[str, Any]]:
    if path in _PG:
        return [json.loads(line) for line in _pg_lines(_PG[path])]
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write(path: Path, recs: list[dict[str, Any]]) -> None:
    if path in _PG:  # the attacker rewrites the table: row i holds the i-th line, as a file would
        _pg_rewrite(_PG[path], [canon(r).decode() for r in recs])
        return
    path.write_bytes(b"".join(canon(r) + b"\n" for r in recs))


def _pg_lines(dsn: str) -> list[str]:
    from xpscerpto.db import Database

    db = Database(dsn)
    try:
        return [line for (line,) in db.execute("SELECT line FROM xps_audit ORDER BY seq").fetchall()]
    finally:
        db.close()


def _pg_rewrite(dsn: str, lines: list[str]) -> None:
    from xpscerpto.db import Database

    db = Database(dsn)
    try:
        with db.transaction() as tx:
            tx.execute("DELETE FROM xps_audit")
            for i, line in enumerate(lines, 1):
                rec = json.loads(line)
                tx.execute("INSERT INTO xps_audit (seq, time, line) VALUES (?, ?, ?)",
                           (i, str(rec.get("time", "")) if isinstance(rec, dict) else "", line))
    finally:
        db.close()


_OPENED: list[AuditLog] = []


def reopen(path: Path, **kw: Any) -> AuditLog:
    """Another handle on the journal at ``path``, on the same backend as the ``log`` fixture."""
    if path in _PG:
        from xpscerpto.db.audit_store import PgAuditLog

        log: AuditLog = PgAuditLog(_PG[path], path, **kw)
        _OPENED.append(log)
        return log
    return AuditLog(path, **kw)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_file = metafunc.definition.get_closest_marker("file_only") is not None
        metafunc.parametrize("backend", ["file"] if only_file else ["file", "postgresql"])


def rechain(recs: list[dict[str, Any]], start: int = 0, *, renumber: bool = False) -> None:
    """What an attacker does after an edit: fix seq (optionally), prev and hash from ``start`` on."""
    for i in range(start, len(recs)):
        if renumber:
            recs[i]["seq"] = i + 1
        recs[i]["prev"] = recs[i - 1]["hash"] if i else GENESIS
        recs[i]["hash"] = rehash(recs[i])


def expect_tamper(log: AuditLog, seq: int | None, reason: str, **kw: Any) -> AuditTampered:
    with pytest.raises(AuditTampered) as ei:
        log.verify(**kw)
    e = ei.value
    assert isinstance(e, XpsError)
    assert e.code == "XPS_ERR_INTERNAL"
    assert (e.seq, e.reason) == (seq, reason), str(e)
    assert str(e).startswith("XPS_ERR_INTERNAL: audit journal ")
    assert reason in str(e)
    if seq is not None:
        assert f"seq {seq}" in str(e)
    return e


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def log(path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[AuditLog]:
    """12 events with a checkpoint after every 5: seq 1-5, CHECKPOINT 6, 7-11, CHECKPOINT 12, 13-14."""
    if backend == "postgresql":
        from xpscerpto.db.audit_store import PgAuditLog

        dsn = request.getfixturevalue("pg_dsn")
        _PG[path] = dsn
        log: AuditLog = PgAuditLog(dsn, path, checkpoint_every=5)
    else:
        log = AuditLog(path, checkpoint_every=5)
    for i in range(12):
        log.record("PATCH_LOAD", i=i, sha256=f"{i:064x}", operator="alice")
    yield log
    if backend == "postgresql":
        _PG.pop(path, None)
        for opened in [log, *_OPENED]:
            opened.close()  # type: ignore[attr-defined]
        _OPENED.clear()


@pytest.mark.file_only
def test_the_log_is_the_documented_chain(log: AuditLog, path: Path) -> None:
    recs = read(path)
    assert [r["seq"] for r in recs] == list(range(1, 15))
    assert [r["seq"] for r in recs if r["event"] == "CHECKPOINT"] == [6, 12]
    raw = path.read_bytes().splitlines()
    pub = Ed25519PublicKey.from_public_bytes(read_public_key(path.with_suffix(".pub")))
    for i, rec in enumerate(recs):
        assert raw[i] == canon(rec)  # one canonical JSON object per line
        assert rec["hash"] == rehash(rec)
        assert rec["prev"] == (recs[i - 1]["hash"] if i else GENESIS)
        assert rec["time"].endswith("Z")
        if rec["event"] == "CHECKPOINT":
            assert (rec["signed_seq"], rec["signed_hash"]) == (rec["seq"] - 1, recs[i - 1]["hash"])
            assert rec["key"] == path.with_suffix(".pub").read_text().strip()
            assert rec["every"] == 5  # the interval it was written with
            pub.verify(bytes.fromhex(rec["sig"]), checkpoint_message(rec["signed_seq"], rec["signed_hash"]))
        else:
            assert {"event", "time", "seq", "prev", "hash", "rsig", "i", "sha256", "operator"} == set(rec)
        # Every record carries its own signature over its content (prev included).
        pub.verify(bytes.fromhex(rec["rsig"]), record_message(rec))
    report = log.verify()
    assert (report.records, report.checkpoints, report.last_seq) == (14, 2, 14)
    assert (report.last_checkpoint_seq, report.after_checkpoint, report.checkpoint_every) == (12, 2, 5)
    assert report.last_hash == recs[-1]["hash"]
    assert report.torn_tail == 0
    assert report.warnings == ()
    assert report.as_dict()["last_seq"] == 14


def test_a_long_chain_verifies_and_ends_on_a_checkpoint(path: Path) -> None:
    log = AuditLog(path, checkpoint_every=10)
    for i in range(100):
        log.record("PATCH_STAGE", i=i, phase="canary", share=0.25, operations=["aead.aes-256-gcm"])
    report = log.verify(public_key=read_public_key(path.with_suffix(".pub")))
    assert (report.records, report.checkpoints, report.after_checkpoint) == (110, 10, 0)


def test_record_returns_what_was_written_and_tail_returns_the_newest(log: AuditLog, path: Path) -> None:
    rec = log.record("PATCH_ENABLE", name="demo", version="1.2", table_version=7, publisher=["k1", "k2"])
    assert rec == read(path)[-1]
    assert rec["seq"] == 15 and rec["prev"] == read(path)[-2]["hash"]
    assert [e["seq"] for e in log.tail(3)] == [13, 14, 15]
    assert log.tail(3)[-1]["table_version"] == 7
    assert len(log.tail(1000)) == 15
    assert log.tail(0) == []
    assert AuditLog(path.with_name("nothing.log")).tail() == []


def test_tail_reads_beyond_one_block(path: Path) -> None:
    log = AuditLog(path, checkpoint_every=1000)
    for i in range(300):
        log.record("PATCH_LOAD", i=i, detail="x" * 500)  # > 64 KiB per 100 lines
    assert path.stat().st_size > 3 * 64 * 1024
    assert [e["i"] for e in log.tail(250)] == list(range(50, 300))


# --- tampering ---------------------------------------------------------------------------------

def test_a_modified_field_value_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[2]["operator"] = "mallory"
    write(path, recs)
    expect_tamper(log, 3, "modified")


def test_a_modified_record_with_a_recomputed_hash_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[2]["operator"] = "mallory"
    recs[2]["hash"] = rehash(recs[2])
    write(path, recs)
    e = expect_tamper(log, 3, "modified")
    assert "recomputed" in str(e)


def test_a_modified_seq_field_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[3]["seq"] = 40
    write(path, recs)
    expect_tamper(log, 4, "modified")


def test_a_deleted_middle_record_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    del recs[3]
    write(path, recs)
    e = expect_tamper(log, 4, "deleted")
    assert e.line == 4


def test_several_deleted_records_are_named(log: AuditLog, path: Path) -> None:
    recs = read(path)
    del recs[2:4]
    write(path, recs)
    e = expect_tamper(log, 3, "deleted")
    assert "3..4" in str(e)


def test_the_deleted_first_record_is_detected(log: AuditLog, path: Path) -> None:
    write(path, read(path)[1:])
    expect_tamper(log, 1, "deleted")


def test_an_inserted_record_with_a_recomputed_hash_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    forged = {"seq": 4, "time": recs[2]["time"], "event": "PATCH_ROLLBACK", "operator": "mallory",
              "prev": recs[2]["hash"]}
    forged["hash"] = rehash(forged)
    recs.insert(3, forged)
    write(path, recs)
    e = expect_tamper(log, 4, "inserted")
    assert e.line == 5  # the genuine seq 4, whose prev no longer matches


def test_an_inserted_record_with_a_bad_hash_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    forged = {"seq": 4, "time": recs[2]["time"], "event": "PATCH_ROLLBACK", "prev": recs[2]["hash"], "hash": "0" * 64}
    recs.insert(3, forged)
    write(path, recs)
    expect_tamper(log, 4, "inserted")


def test_an_inserted_record_with_an_out_of_range_seq_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    forged = {"seq": 999, "time": recs[2]["time"], "event": "PATCH_ROLLBACK", "prev": "ab" * 32}
    forged["hash"] = rehash(forged)
    recs.insert(3, forged)
    write(path, recs)
    expect_tamper(log, 999, "inserted")


def test_a_replayed_copy_of_a_record_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs.insert(8, dict(recs[1]))
    write(path, recs)
    e = expect_tamper(log, 2, "inserted")
    assert "a copy of seq 2" in str(e)


def test_two_swapped_records_are_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[2], recs[3] = recs[3], recs[2]
    write(path, recs)
    expect_tamper(log, 3, "reordered")


def test_a_record_moved_further_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    moved = recs.pop(2)
    recs.insert(9, moved)
    write(path, recs)
    e = expect_tamper(log, 3, "reordered")
    assert "line 10" in str(e)


def test_swapping_the_last_two_records_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[-1], recs[-2] = recs[-2], recs[-1]
    write(path, recs)
    expect_tamper(log, 13, "reordered")


def test_deleting_the_record_before_a_checkpoint_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    assert recs[5]["event"] == "CHECKPOINT"
    del recs[4]
    write(path, recs)
    expect_tamper(log, 5, "deleted")


def test_deleting_the_record_before_a_checkpoint_and_rechaining_breaks_its_signature(log: AuditLog,
                                                                                     path: Path) -> None:
    recs = read(path)
    del recs[4]
    cp = recs[4]
    cp["signed_seq"], cp["signed_hash"] = 4, recs[3]["hash"]  # make it look like it covers seq 4
    rechain(recs, 4, renumber=True)
    write(path, recs)
    e = expect_tamper(log, 5, "bad checkpoint signature")
    assert "does not verify" in str(e)


def test_rewriting_history_behind_a_checkpoint_is_caught_by_its_signature(log: AuditLog, path: Path) -> None:
    recs = read(path)
    recs[1]["operator"] = "mallory"
    rechain(recs, 1)  # every hash and prev consistent again
    write(path, recs)
    e = expect_tamper(log, 6, "bad checkpoint signature")
    assert "does not cover" in str(e)
    recs[5]["signed_hash"] = recs[4]["hash"]  # and the checkpoint's own claim too
    rechain(recs, 5)
    write(path, recs)
    expect_tamper(log, 6, "bad checkpoint signature")


def sign_checkpoint(path: Path, rec: dict[str, Any]) -> None:
    """What an attacker holding ``audit.key`` does: re-sign a checkpoint for its (new) place."""
    sk = Ed25519PrivateKey.from_private_bytes(path.with_suffix(".key").read_bytes())
    rec["signed_seq"], rec["signed_hash"] = rec["seq"] - 1, rec["prev"]
    rec["sig"] = sk.sign(checkpoint_message(rec["signed_seq"], rec["signed_hash"])).hex()


def rechain_signing(path: Path, recs: list[dict[str, Any]], start: int = 0) -> None:
    """rechain(), renumbering, and re-signing every checkpoint and every record with the genuine key."""
    sk = Ed25519PrivateKey.from_private_bytes(path.with_suffix(".key").read_bytes())
    for i in range(start, len(recs)):
        recs[i]["seq"] = i + 1
        recs[i]["prev"] = recs[i - 1]["hash"] if i else GENESIS
        if recs[i]["event"] == "CHECKPOINT":
            sign_checkpoint(path, recs[i])
        recs[i]["rsig"] = sk.sign(record_message(recs[i])).hex()  # the key's holder re-signs records too
        recs[i]["hash"] = rehash(recs[i])


def test_stripping_the_checkpoints_and_rewriting_history_is_detected(log: AuditLog, path: Path) -> None:
    # Review finding M1: without the position check this verified with 0 checkpoints, no warning.
    recs = [r for r in read(path) if r["event"] != "CHECKPOINT"]
    assert len(recs) == 12
    recs[0]["operator"] = "mallory"  # record 1
    rechain(recs, renumber=True)
    write(path, recs)
    e = expect_tamper(log, 6, "missing checkpoint")  # the first due seq (checkpoint_every=5)
    assert e.line == 6
    assert "holds PATCH_LOAD" in str(e)


def test_stripping_a_single_checkpoint_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    del recs[11]  # the checkpoint at seq 12; 13 and 14 renumbered to 12 and 13
    rechain(recs, 11, renumber=True)
    write(path, recs)
    expect_tamper(log, 12, "missing checkpoint")


def test_a_checkpoint_at_a_position_that_is_not_due_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    # A copy of a genuine checkpoint, moved: its signature covers another record.
    recs.insert(2, dict(recs[5]))
    rechain(recs, 2, renumber=True)
    write(path, recs)
    expect_tamper(log, 3, "bad checkpoint signature")
    # Correctly signed with the genuine key (which sits next to the log) and every=5: the
    # position alone gives it away.
    sign_checkpoint(path, recs[2])
    rechain(recs, 2)
    write(path, recs)
    e = expect_tamper(log, 3, "unexpected checkpoint")
    assert "multiples of 6" in str(e)


def test_an_extra_checkpoint_appended_at_the_end_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    extra = {**recs[11], "seq": 15, "prev": recs[-1]["hash"]}
    sign_checkpoint(path, extra)
    extra["hash"] = rehash(extra)
    write(path, [*recs, extra])
    expect_tamper(log, 15, "unexpected checkpoint")


def test_a_log_written_with_another_interval_does_not_verify(path: Path) -> None:
    writer = AuditLog(path, checkpoint_every=5)
    for i in range(12):
        writer.record("PATCH_LOAD", i=i)
    assert writer.verify().checkpoints == 2
    # A verifier configured otherwise checks the journal's own interval (review finding: a
    # command run without the writers' configuration called a genuine journal tampered) ...
    report = AuditLog(path, checkpoint_every=10).verify()
    assert (report.checkpoint_every, report.checkpoints) == (5, 2)
    assert any("checkpointed every 5 records, not every 10" in w for w in report.warnings)
    # ... unless it asks for its interval explicitly: the first checkpoint names both intervals.
    e = expect_tamper(AuditLog(path, checkpoint_every=10), 6, "checkpoint interval", checkpoint_every=10)
    assert "checkpoint_every=5" in str(e) and "checkpoint_every=10" in str(e)
    expect_tamper(AuditLog(path), 6, "checkpoint interval", checkpoint_every=10)
    assert AuditLog(path).verify(checkpoint_every=5).checkpoints == 2
    # It expects more: a due position holds an ordinary record.
    e = expect_tamper(writer, 4, "missing checkpoint", checkpoint_every=3)
    assert "its checkpoints say checkpoint_every=5" in str(e)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(PolicyError):
            writer.verify(checkpoint_every=bad)  # type: ignore[arg-type]


def test_a_checkpoint_without_its_interval_does_not_verify(log: AuditLog, path: Path) -> None:
    recs = read(path)
    del recs[5]["every"]  # the field is not signed; only the verifier's interval counts
    rechain(recs, 5)
    write(path, recs)
    e = expect_tamper(log, 6, "checkpoint interval")
    assert "no valid interval" in str(e)


def test_an_attacker_holding_the_key_is_caught_only_by_an_anchor(log: AuditLog, path: Path) -> None:
    # The documented limit: the key lives next to the log, so a home-writer can re-sign.
    anchor = log.verify()
    seq3_hash = read(path)[2]["hash"]
    pinned = read_public_key(path.with_suffix(".pub"))
    recs = [r for r in read(path) if r["event"] != "CHECKPOINT"]
    recs[0]["operator"] = "mallory"
    for at in (5, 11):  # checkpoints back where they are due
        recs.insert(at, {"seq": 0, "time": recs[at - 1]["time"], "event": "CHECKPOINT", "key": pinned.hex(),
                         "every": 5})
    rechain_signing(path, recs)
    write(path, recs)
    assert log.verify().checkpoints == 2
    assert log.verify(public_key=pinned).checkpoints == 2  # same key: pinning cannot tell
    expect_tamper(log, 14, "modified", anchor=(anchor.last_seq, anchor.last_hash))
    expect_tamper(log, 3, "modified", anchor=(3, seq3_hash))  # any earlier exported state will do


def test_a_forged_checkpoint_signature_is_detected(log: AuditLog, path: Path) -> None:
    recs = read(path)
    sig = bytearray.fromhex(recs[11]["sig"])
    sig[0] ^= 1
    recs[11]["sig"] = sig.hex()
    rechain(recs, 11)
    write(path, recs)
    expect_tamper(log, 12, "bad checkpoint signature")


def test_a_checkpoint_signed_by_another_key_is_detected(log: AuditLog, path: Path) -> None:
    pinned = read_public_key(path.with_suffix(".pub"))
    mallory = Ed25519PrivateKey.generate()
    mallory_pub = mallory.public_key().public_bytes_raw().hex()
    recs = read(path)
    for i in range(len(recs)):  # re-sign every checkpoint and record with mallory's key, re-chain
        rec = recs[i]
        rec["prev"] = recs[i - 1]["hash"] if i else GENESIS
        if rec["event"] == "CHECKPOINT":
            rec["signed_hash"], rec["key"] = rec["prev"], mallory_pub
            rec["sig"] = mallory.sign(checkpoint_message(rec["signed_seq"], rec["signed_hash"])).hex()
        rec["rsig"] = mallory.sign(record_message(rec)).hex()
        rec["hash"] = rehash(rec)
    write(path, recs)
    e = expect_tamper(log, 6, "bad checkpoint signature")
    assert "not the expected key" in str(e)

    # The attacker also swaps the .pub next to the log: only a pinned key catches it.
    path.with_suffix(".pub").write_text(mallory_pub + "\n")
    assert log.verify().checkpoints == 2
    expect_tamper(log, 6, "bad checkpoint signature", public_key=pinned)
    expect_tamper(log, 6, "bad checkpoint signature", public_key=pinned.hex())
    assert reopen(path, checkpoint_every=5).verify(public_key=mallory_pub).warnings == ()
    # ...and the journal refuses to sign further checkpoints with a key that .pub disowns.
    with pytest.raises(KeyError_, match="does not match the signing key"):
        reopen(path).record("PATCH_LOAD")


def test_a_checkpoint_without_a_public_key_is_not_trusted(log: AuditLog, path: Path) -> None:
    path.with_suffix(".pub").unlink()
    with pytest.raises(AuditPublicKeyMissing) as ei:  # typed KEY: no signature was checked (review F3)
        log.verify()
    assert (ei.value.code, ei.value.seq) == ("XPS_ERR_KEY", 6) and "missing" in str(ei.value)
    assert log.verify(public_key=log._pub_hex).checkpoints == 2


def test_a_pinned_key_that_differs_from_the_pub_file_is_warned_about(log: AuditLog, path: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    expect_tamper(log, 6, "bad checkpoint signature", public_key=other)
    with pytest.raises(KeyError_):
        log.verify(public_key=b"short")
    with pytest.raises(KeyError_):
        log.verify(public_key="zz" * 32)


@pytest.mark.file_only
def test_malformed_lines_are_detected(log: AuditLog, path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)

    def write_lines(ls: list[bytes]) -> None:
        path.write_bytes(b"".join(ls))

    write_lines([*lines[:3], b"not json\n", *lines[3:]])
    e = expect_tamper(log, 4, "malformed line")
    assert e.line == 4
    # Same content, different spelling: still an edit.
    respaced = json.dumps(json.loads(lines[3]), sort_keys=True).encode() + b"\n"
    write_lines([*lines[:3], respaced, *lines[4:]])
    e = expect_tamper(log, 4, "malformed line")
    assert "canonical" in str(e)
    # A duplicated key that the JSON parser would silently resolve.
    dup = lines[3].replace(b'"event":', b'"event":"X","event":', 1)
    write_lines([*lines[:3], dup, *lines[4:]])
    expect_tamper(log, 4, "malformed line")
    write_lines([*lines[:3], b"[1,2]\n", *lines[4:]])
    expect_tamper(log, 4, "malformed line")


def test_truncating_the_newest_records_needs_an_exported_anchor(log: AuditLog, path: Path) -> None:
    anchor = log.verify()
    recs = read(path)
    write(path, recs[:-2])  # the two records after the last checkpoint
    assert log.verify().last_seq == 12  # by design: nothing in the file can show this
    e = expect_tamper(log, 13, "deleted", anchor=(anchor.last_seq, anchor.last_hash))
    assert "anchor" in str(e)
    # Rewriting them (re-hashed) instead of deleting: the anchor's hash no longer matches.
    recs[-1]["operator"] = "mallory"
    rechain(recs, 13)
    write(path, recs)
    expect_tamper(log, 14, "modified", anchor=(anchor.last_seq, anchor.last_hash))
    with pytest.raises(PolicyError):
        log.verify(anchor=(-1, "ab" * 32))


@pytest.mark.file_only
def test_a_deleted_or_emptied_log_with_its_key_left_behind_is_detected(log: AuditLog, path: Path) -> None:
    path.write_bytes(b"")
    expect_tamper(log, 1, "deleted")
    path.unlink()
    e = expect_tamper(log, 1, "deleted")
    assert "missing" in str(e)


@pytest.mark.file_only
@pytest.mark.parametrize("how", ["unlink", "empty"])
@pytest.mark.parametrize("writer", ["same", "new"])
def test_a_deleted_or_emptied_log_is_not_restarted_by_the_next_record(
        log: AuditLog, path: Path, how: str, writer: str) -> None:
    # A new chain from genesis would verify again and hide the deletion for good.
    if how == "unlink":
        path.unlink()
    else:
        path.write_bytes(b"")
    w = log if writer == "same" else AuditLog(path)
    for record in (lambda: w.record("KEY_REVOKE", name="k1"),
                   lambda: w.record_once("KEY_ROTATE", "ab" * 8, since=time.time(), name="k1")):
        with pytest.raises(AuditTampered) as ei:
            record()
        assert (ei.value.reason, ei.value.code) == ("deleted", "XPS_ERR_INTERNAL")
        assert path.exists() == (how == "empty")  # a refusal creates no empty log either
        expect_tamper(AuditLog(path), 1, "deleted")


@pytest.mark.file_only
@pytest.mark.parametrize("keep", [1, 40, -1])
def test_a_log_cut_to_less_than_its_first_record_is_not_restarted(log: AuditLog, path: Path, keep: int) -> None:
    # Found by a review: a journal cut to one byte verified as "OK: 0 records" (a warning), and
    # the next record "repaired" it to nothing and started a new chain from genesis.
    first = path.read_bytes().split(b"\n", 1)[0]
    path.write_bytes(first[:keep])
    e = expect_tamper(AuditLog(path), 1, "deleted")
    assert "torn to less than one record" in str(e)
    for w in (log, AuditLog(path)):
        with pytest.raises(AuditTampered, match="torn to less than one record"):
            w.record("KEY_REVOKE", name="k1")
        with pytest.raises(AuditTampered, match="torn to less than one record"):
            w.check_writable()
    assert path.read_bytes() == first[:keep]  # nothing repaired, nothing written


@pytest.mark.file_only
def test_a_first_record_torn_by_a_crash_before_the_key_was_published_is_still_repaired(tmp_path: Path) -> None:
    # What the refusal above must not break: no .pub yet, so a torn first line is a crash.
    path = tmp_path / "fresh.log"
    path.write_bytes(b'{"seq":1,"tim')
    AuditLog(path).record("KEY_CREATE", name="k")
    assert [r["event"] for r in AuditLog(path).tail(5)] == ["AUDIT_REPAIRED", "KEY_CREATE"]
    AuditLog(path).verify()


@pytest.mark.file_only
def test_a_writer_whose_log_and_pub_were_both_deleted_does_not_restart_them(log: AuditLog, path: Path) -> None:
    log.pub_path.unlink()
    path.unlink()
    with pytest.raises(AuditTampered, match="this writer has appended"):
        log.record("KEY_REVOKE", name="k1")
    assert not path.exists()
    # A new writer cannot tell (both files are gone, as documented); it starts a new journal.
    assert AuditLog(path).record("KEY_CREATE", name="k2")["seq"] == 1


@pytest.mark.parametrize("n", [None, "3", b"3", 3.0, True, [3]])
def test_tail_refuses_what_is_not_an_int(log: AuditLog, n: object) -> None:
    with pytest.raises(PolicyError, match="n: expected an int"):
        log.tail(n)  # type: ignore[arg-type]


def test_tail_of_a_huge_count_is_every_record(log: AuditLog) -> None:
    assert [r["seq"] for r in log.tail(10**400)] == list(range(1, 15))


def test_a_fresh_log_verifies_empty_and_creates_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    report = log.verify()
    assert (report.records, report.last_seq, report.last_hash) == (0, 0, GENESIS)
    assert log.tail() == []
    assert list(tmp_path.iterdir()) == []


def test_audit_tampered_pickles(log: AuditLog, path: Path) -> None:
    recs = read(path)
    del recs[3]
    write(path, recs)
    with pytest.raises(AuditTampered) as ei:
        log.verify()
    back = pickle.loads(pickle.dumps(ei.value))
    assert (type(back), back.seq, back.reason, back.line, str(back)) == (
        AuditTampered, 4, "deleted", 4, str(ei.value))


# --- torn tail -----------------------------------------------------------------------------------

@pytest.mark.file_only
def test_a_torn_tail_warns_and_the_next_record_repairs_it(log: AuditLog, path: Path) -> None:
    before = read(path)
    half = canon({"seq": 15, "event": "PATCH_ENABLE", "operator": "alice"})[:30]
    with path.open("ab") as f:
        f.write(half)  # a crash in the middle of the write
    report = log.verify()
    assert report.last_seq == 14
    assert report.torn_tail == len(half)
    assert any("truncated tail" in w for w in report.warnings)
    e = expect_tamper(log, 15, "truncated tail", strict=True)
    assert e.line == 15
    assert [r["seq"] for r in log.tail(2)] == [13, 14]  # tail skips the torn line

    rec = log.record("PATCH_ENABLE", operator="alice")
    recs = read(path)
    assert recs[:14] == before
    repaired = recs[14]
    assert repaired["event"] == "AUDIT_REPAIRED"
    assert (repaired["seq"], repaired["action"], repaired["bytes"]) == (15, "truncated", len(half))
    assert repaired["sha256"] == hashlib.sha256(half).hexdigest()
    assert repaired["prev"] == before[-1]["hash"]
    assert rec["seq"] == 16 and rec["prev"] == repaired["hash"]
    report = log.verify(strict=True)
    assert (report.last_seq, report.torn_tail, report.warnings) == (16, 0, ())


@pytest.mark.file_only
def test_a_record_missing_only_its_newline_is_kept(log: AuditLog, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert log.verify().torn_tail > 0
    log.record("PATCH_LOAD", i=99)
    recs = read(path)
    assert recs[13]["seq"] == 14 and recs[13]["event"] == "PATCH_LOAD"
    assert (recs[14]["event"], recs[14]["action"], recs[14]["repaired_seq"]) == ("AUDIT_REPAIRED", "completed", 14)
    assert recs[15]["i"] == 99
    assert log.verify(strict=True).last_seq == 16


def test_a_crash_between_a_record_and_its_checkpoint_warns_and_is_caught_up(log: AuditLog, path: Path) -> None:
    recs = read(path)
    write(path, recs[:11])  # the append of seq 11 + CHECKPOINT 12 kept only its first line
    report = log.verify()
    assert (report.last_seq, report.torn_tail) == (11, 0)
    assert [w.split(":")[0] for w in report.warnings] == ["missing checkpoint"]
    e = expect_tamper(log, 12, "missing checkpoint", strict=True)
    assert "ends at seq 11" in str(e)
    rec = log.record("PATCH_ENABLE")
    after = read(path)
    assert (after[11]["seq"], after[11]["event"], after[11]["signed_seq"]) == (12, "CHECKPOINT", 11)
    assert after[11]["every"] == 5
    assert rec["seq"] == 13
    assert log.verify(strict=True).checkpoints == 2


@pytest.mark.file_only
@pytest.mark.parametrize("torn", ["checkpoint", "newline"])
def test_a_torn_append_before_a_checkpoint_is_repaired_with_the_checkpoint_first(log: AuditLog, path: Path,
                                                                                torn: str) -> None:
    recs = read(path)
    data = b"".join(canon(r) + b"\n" for r in recs[:11])
    # Cut in the middle of the CHECKPOINT line, or only the newline of seq 11 is missing.
    path.write_bytes(data + canon(recs[11])[:40] if torn == "checkpoint" else data[:-1])
    report = log.verify()
    assert report.torn_tail > 0
    log.record("PATCH_ENABLE")
    after = read(path)
    assert [r["event"] for r in after[10:]] == ["PATCH_LOAD", "CHECKPOINT", "AUDIT_REPAIRED", "PATCH_ENABLE"]
    assert after[12]["action"] == ("truncated" if torn == "checkpoint" else "completed")
    report = log.verify(strict=True)
    assert (report.last_seq, report.checkpoints, report.warnings) == (14, 2, ())


def test_a_log_that_is_only_a_torn_line_is_repaired(path: Path) -> None:
    path.write_bytes(b'{"seq":1,"ev')
    log = AuditLog(path)
    assert log.verify().torn_tail == 12
    log.record("PATCH_LOAD")
    assert [r["event"] for r in read(path)] == ["AUDIT_REPAIRED", "PATCH_LOAD"]
    assert log.verify(strict=True).last_seq == 2


@pytest.mark.file_only
def test_appending_after_a_malformed_last_line_is_refused(log: AuditLog, path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"garbage\n")
    size = path.stat().st_size
    with pytest.raises(AuditTampered) as ei:
        log.record("PATCH_LOAD")
    assert ei.value.reason == "malformed line"
    assert path.stat().st_size == size


# --- concurrency ---------------------------------------------------------------------------------

CHILD = """
import sys
from xpscerpto.audit import AuditLog
log = AuditLog(sys.argv[1], checkpoint_every=int(sys.argv[3]))
sys.stdin.readline()  # start together
for i in range(200):
    log.record("TEST_WRITE", writer=sys.argv[2], i=i)
"""


def test_two_processes_append_concurrently(path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), name, "7"], stdin=subprocess.PIPE)
             for name in ("a", "b")]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]

    report = AuditLog(path, checkpoint_every=7).verify()  # the writers' interval
    recs = read(path)
    writes = [r for r in recs if r["event"] == "TEST_WRITE"]
    assert len(writes) == 400
    assert report.records == len(recs) >= 400
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))  # no duplicate, no gap
    assert report.checkpoints == len(recs) // 8 > 0
    for name in ("a", "b"):  # each writer's records in its own order
        assert [r["i"] for r in writes if r["writer"] == name] == list(range(200))
    # Both processes raced to create the key; exactly one key exists and signed everything.
    assert {r["key"] for r in recs if r["event"] == "CHECKPOINT"} == {path.with_suffix(".pub").read_text().strip()}
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit.key", "audit.log", "audit.pub"]


def test_threads_and_two_instances_append_concurrently(path: Path) -> None:
    logs = [AuditLog(path, checkpoint_every=9), AuditLog(path, checkpoint_every=9)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(50):
                logs[n % 2].record("TEST_WRITE", thread=n, i=i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    recs = read(path)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert sum(r["event"] == "TEST_WRITE" for r in recs) == 400
    assert logs[0].verify().checkpoints == len(recs) // 10


# --- what may be recorded ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    SECRET, bytearray(SECRET), memoryview(SECRET), SecretBytes(SECRET),
    [SECRET], {"inner": {"key": SecretBytes(SECRET)}}, ("ok", bytearray(SECRET)),
], ids=["bytes", "bytearray", "memoryview", "SecretBytes", "in-list", "in-dict", "in-tuple"])
def test_secrets_and_raw_bytes_are_refused(path: Path, value: Any) -> None:
    log = AuditLog(path)
    with pytest.raises(PolicyError) as ei:
        log.record("KEY_CREATED", key_id="k1", key=value)
    assert ei.value.reason == "secret-field"
    assert "never recorded" in str(ei.value)
    for form in (repr(SECRET), SECRET.hex(), SECRET.decode("latin-1")):
        assert form not in str(ei.value)
    with pytest.raises(PolicyError):  # refused even when it would have been rate-limited away
        log.record_rate_limited("CRYPTO_FAIL_AUTH", "b", 1, key=value)
    assert not path.exists()


@pytest.mark.parametrize(("event", "fields", "reason"), [
    ("patch_load", {}, "bad-event"),
    ("", {}, "bad-event"),
    ("A" * 65, {}, "bad-event"),
    ("CHECKPOINT", {}, "bad-event"),
    ("AUDIT_REPAIRED", {}, "bad-event"),
    ("PATCH_LOAD", {"seq": 1}, "reserved-field"),
    ("PATCH_LOAD", {"hash": "0" * 64}, "reserved-field"),
    ("PATCH_LOAD", {"time": "yesterday"}, "reserved-field"),
    ("PATCH_LOAD", {"suppressed": 3}, "reserved-field"),
    ("PATCH_LOAD", {"x": {1, 2}}, "not-json"),
    ("PATCH_LOAD", {"x": object()}, "not-json"),
    ("PATCH_LOAD", {"x": {1: "a"}}, "not-json"),
    ("PATCH_LOAD", {"x": "y" * 70_000}, "too-large"),
])
def test_bad_events_and_fields_are_refused(path: Path, event: str, fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(PolicyError) as ei:
        AuditLog(path).record(event, **fields)
    assert ei.value.reason == reason
    assert not path.exists()


def test_values_are_stored_as_plain_json(path: Path) -> None:
    from xpscerpto.errors import ErrorCode
    rec = AuditLog(path).record("PATCH_REJECT", reason=ErrorCode.UPDATE, slowdown={"aead": float("inf")},
                                operations=("a", "b"), ok=True, none=None)
    assert rec["reason"] == "XPS_ERR_UPDATE" and type(rec["reason"]) is str
    assert rec["slowdown"] == {"aead": "inf"}
    assert rec["operations"] == ["a", "b"]
    assert read(path)[0] == rec
    assert AuditLog(path).verify().records == 1


def test_bad_constructor_arguments_are_refused(path: Path) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(PolicyError):
            AuditLog(path, checkpoint_every=bad)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        AuditLog(path, signing_key=path)


# --- the key -----------------------------------------------------------------------------------

def test_the_key_is_created_0600_after_the_first_record(path: Path) -> None:
    log = AuditLog(path, checkpoint_every=1)
    log.record("PATCH_LOAD")
    key, pub = path.with_suffix(".key"), path.with_suffix(".pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    sk = Ed25519PrivateKey.from_private_bytes(key.read_bytes())
    assert pub.read_text() == sk.public_key().public_bytes_raw().hex() + "\n"
    assert read(path)[1]["key"] == pub.read_text().strip()
    # A second instance reuses the key rather than making a new one.
    AuditLog(path, checkpoint_every=1).record("PATCH_LOAD")
    assert {r["key"] for r in read(path) if r["event"] == "CHECKPOINT"} == {pub.read_text().strip()}


def test_an_explicit_key_path_is_used(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys" / "journal.seed"
    keyfile.parent.mkdir()
    log = AuditLog(tmp_path / "audit.log", signing_key=keyfile, checkpoint_every=1)
    log.record("PATCH_LOAD")
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert not (tmp_path / "audit.key").exists()
    assert log.verify().checkpoints == 1


@pytest.mark.parametrize(("content", "mode", "message"), [
    (os.urandom(32), 0o644, "readable by group or others"),
    (os.urandom(31), 0o600, "expected a 32-byte"),
    (os.urandom(33), 0o600, "expected a 32-byte"),
])
def test_a_bad_key_file_is_refused(path: Path, content: bytes, mode: int, message: str) -> None:
    log = AuditLog(path)
    log.record("PATCH_LOAD")
    key = path.with_suffix(".key")
    key.unlink()
    path.with_suffix(".pub").unlink()
    key.write_bytes(content)
    key.chmod(mode)
    size = path.stat().st_size
    with pytest.raises(KeyError_, match=message):
        AuditLog(path).record("PATCH_LOAD")
    assert path.stat().st_size == size  # refused before anything was written


def test_a_symlinked_key_is_refused(path: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    path.with_suffix(".key").symlink_to(target)
    log = AuditLog(path)
    with pytest.raises(KeyError_):
        log.record("PATCH_LOAD")


# --- rate limiting -----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail_auth(log: AuditLog, bucket: str = "aead.aes-256-gcm", per_minute: int = 10) -> dict[str, Any] | None:
    return log.record_rate_limited("CRYPTO_FAIL_AUTH", bucket, per_minute, operation="aead.decrypt",
                                   provider="builtin")


def test_a_burst_of_auth_failures_is_rate_limited(path: Path) -> None:
    clock = Clock()
    log = AuditLog(path, clock=clock)
    passed = [r for r in (fail_auth(log) for _ in range(1000)) if r is not None]
    assert len(passed) == 10
    assert sum(r["event"] == "CRYPTO_FAIL_AUTH" for r in read(path)) == 10
    assert all("suppressed" not in r for r in passed)

    # Real events are not pushed out of the tail by the flood.
    log.record("PATCH_ENABLE", name="demo")
    assert log.tail(1)[0]["event"] == "PATCH_ENABLE"

    clock.now = 59.9  # the window still holds the first ten
    assert fail_auth(log) is None
    clock.now = 60.0
    rec = fail_auth(log)
    assert rec is not None and rec["suppressed"] == 991
    nxt = fail_auth(log)
    assert nxt is not None and "suppressed" not in nxt
    assert sum(r["event"] == "CRYPTO_FAIL_AUTH" for r in read(path)) == 12
    assert log.verify().records == 13


def test_the_window_rolls_and_buckets_are_independent(path: Path) -> None:
    clock = Clock()
    log = AuditLog(path, clock=clock)
    assert all(fail_auth(log) is not None for _ in range(5))
    clock.now = 30.0
    assert all(fail_auth(log) is not None for _ in range(5))
    clock.now = 45.0
    assert fail_auth(log) is None  # ten within the last minute
    assert fail_auth(log, bucket="other-key") is not None  # another bucket has its own window
    assert log.record_rate_limited("CRYPTO_FAIL_SIG", "aead.aes-256-gcm", 10) is not None  # and another event
    clock.now = 60.0  # the five from t=0 left the window; those from t=30 did not
    recs = [fail_auth(log) for _ in range(6)]
    assert [r is not None for r in recs] == [True] * 5 + [False]
    assert recs[0] is not None and recs[0]["suppressed"] == 1


def test_many_buckets_stay_bounded(path: Path) -> None:
    log = AuditLog(path, clock=Clock(), checkpoint_every=10_000)
    passed = sum(fail_auth(log, bucket=f"peer-{i}", per_minute=1) is not None for i in range(3000))
    assert passed == 1025  # 1024 windows, then one shared overflow window
    assert log.verify().records == 1025


def test_rate_limit_arguments_are_checked(path: Path) -> None:
    log = AuditLog(path)
    for per_minute in (0, -5, True):
        with pytest.raises(PolicyError):
            log.record_rate_limited("CRYPTO_FAIL_AUTH", "b", per_minute)
    with pytest.raises(PolicyError):
        log.record_rate_limited("CRYPTO_FAIL_AUTH", 7, 1)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        log.record_rate_limited("CRYPTO_FAIL_AUTH", "b", 1, suppressed=4)


# --- a journal a service could not continue is refused before it starts (issue 10 item 9) -------

def test_a_deleted_key_is_not_silently_replaced_once_records_exist(log: AuditLog, path: Path) -> None:
    log.record("PATCH_LOAD")
    before = read(path)
    key = path.with_suffix(".key")
    key.unlink()
    fresh = reopen(path)
    with pytest.raises(KeyError_) as ei:
        fresh.record("PATCH_LOAD")
    assert "restore it from a backup" in str(ei.value)
    assert not key.exists()
    with pytest.raises(KeyError_):
        fresh.check_writable()
    assert not key.exists() and read(path) == before


def test_check_writable_refuses_a_malformed_last_line_and_writes_nothing(log: AuditLog, path: Path) -> None:
    log.record("PATCH_LOAD")
    log.check_writable()
    with path.open("ab") as f:
        f.write(b"garbage\n")
    size = path.stat().st_size
    with pytest.raises(AuditTampered):
        AuditLog(path).check_writable()
    assert path.stat().st_size == size


def test_check_writable_accepts_a_new_or_torn_journal_and_creates_nothing(tmp_path: Path) -> None:
    AuditLog(tmp_path / "new.log").check_writable()
    assert list(tmp_path.iterdir()) == []
    torn = tmp_path / "torn.log"
    torn.write_bytes(b'{"seq":1,"ev')
    AuditLog(torn).check_writable()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torn.log"]


@pytest.mark.parametrize("since", [1e300, -1e300, 10**400, -(10**400), float("inf"), float("nan"), 253402300800])
def test_record_once_refuses_a_since_no_date_can_hold_and_writes_nothing(tmp_path: Path, since: float) -> None:
    # Found by the keyring fuzz pass: datetime raised OSError/ValueError/OverflowError here.
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(PolicyError, match="since"):
        log.record_once("KEY_CREATE", "0123abcd", since=since)
    assert not (tmp_path / "audit.log").exists() or (tmp_path / "audit.log").stat().st_size == 0


def test_record_once_takes_the_last_representable_second(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    assert log.record_once("KEY_CREATE", "0123abcd", since=253402300799)["seq"] == 1


# --- mentions ----------------------------------------------------------------------------------

def test_mentions_finds_an_event_and_only_a_records_own(path: Path) -> None:
    log = AuditLog(path)
    assert not log.mentions("HOME_INIT")  # no journal yet
    log.record("NOTE", text='"event":"HOME_INIT"', detail={"k": "HOME_INIT"})  # escaped inside values
    assert not log.mentions("HOME_INIT")
    log.record("HOME_INIT")
    assert log.mentions("HOME_INIT") and log.mentions("NOTE") and not log.mentions("HOME")


def test_mentions_finds_a_record_split_across_read_chunks(tmp_path: Path) -> None:
    needle = b'"event":"HOME_INIT"'

    def journal(name: str, pad: int) -> AuditLog:
        log = AuditLog(tmp_path / name)
        log.record("NOTE", pad="x" * 40_000)  # records are at most 64 KiB: two make the distance
        log.record("NOTE", pad="x" * pad)
        log.record("HOME_INIT")
        return log

    probe = journal("probe.log", 1000)
    # Pad so that the last record's event straddles the 64 KiB read boundary.
    log = journal("audit.log", 1000 + 64 * 1024 - probe.path.read_bytes().index(needle) - 5)
    at = log.path.read_bytes().index(needle)
    assert at < 64 * 1024 < at + len(needle)
    assert log.mentions("HOME_INIT")


@pytest.mark.parametrize("event", ["", "home_init", "X" * 65, 7, None, b"HOME_INIT", '"event"'])
def test_mentions_refuses_what_is_no_event_name(path: Path, event: object) -> None:
    with pytest.raises(PolicyError, match="audit event"):
        AuditLog(path).mentions(event)  # type: ignore[arg-type]


# --- review findings: hostile lines, hostile files, the journal's own interval ------------------

#: One line of ``[`` far deeper than the JSON parser's stack, yet shorter than a record may be.
NESTED = b"[" * 60_000


def append_raw(path: Path, line: bytes) -> None:
    """A line no writer made (a home-writer's, or a database writer's row) after the newest record."""
    if path in _PG:
        from xpscerpto.db import Database

        db = Database(_PG[path])
        try:
            (top,) = db.execute("SELECT max(seq) FROM xps_audit").fetchone() or (0,)
            db.execute("INSERT INTO xps_audit (seq, time, line) VALUES (?, ?, ?)", (top + 1, "2099", line.decode()))
        finally:
            db.close()
        return
    with path.open("ab") as f:
        f.write(line + b"\n")


def stored_lines(path: Path) -> list[bytes]:
    if path in _PG:
        return [line.encode() for line in _pg_lines(_PG[path])]
    return path.read_bytes().splitlines()


def test_a_deeply_nested_line_is_a_malformed_line_to_every_reader(log: AuditLog, path: Path) -> None:
    # Found by a review: verify, record, record_once, check_writable and tail all raised an
    # untyped RecursionError (and `xps audit verify` printed a traceback).
    append_raw(path, NESTED)
    before = stored_lines(path)
    e = expect_tamper(log, 15, "malformed line")
    assert "nested too deeply" in str(e) and e.line == 15
    for attempt in (lambda: log.record("PATCH_LOAD"), lambda: reopen(path).record("PATCH_LOAD"),
                    lambda: log.record_once("KEY_CREATE", "ab" * 8, since=time.time()),
                    lambda: log.record_rate_limited("CRYPTO_FAIL_AUTH", "b", 5), log.check_writable):
        with pytest.raises(AuditTampered) as ei:
            attempt()
        assert ei.value.reason == "malformed line", str(ei.value)
    assert [r["seq"] for r in log.tail(100)] == list(range(1, 15))  # shown as what it is: not a record
    assert stored_lines(path) == before  # nothing written after it


@pytest.mark.file_only
def test_a_deeply_nested_line_inside_or_torn_at_the_end_is_handled_as_any_bad_line(log: AuditLog,
                                                                                     path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:3], NESTED + b"\n", *lines[3:]]))
    e = expect_tamper(log, 4, "malformed line")
    assert e.line == 4
    assert len(log.tail(100)) == 14
    # A crash mid-append leaves a torn last line; one of nesting is repaired like any other.
    path.write_bytes(b"".join(lines) + NESTED)
    assert log.verify().torn_tail == len(NESTED)
    log.check_writable()
    log.record("PATCH_LOAD")
    assert [r["event"] for r in log.tail(2)] == ["AUDIT_REPAIRED", "PATCH_LOAD"]
    assert log.tail(2)[0]["action"] == "truncated"
    assert log.verify(strict=True).records == 16


def test_records_of_skips_lines_nested_beyond_the_parser() -> None:
    from xpscerpto.audit.journal import records_of

    assert records_of([NESTED, b'{"seq":1}', NESTED.decode(), "[1]"]) == [{"seq": 1}]


# The journal's checkpoint interval is its own (review finding: a command run without the
# writers' --config wrote checkpoints at another interval, and then no interval verified).

@pytest.mark.file_only
def test_a_writer_configured_otherwise_keeps_the_journals_interval(path: Path) -> None:
    first = AuditLog(path, checkpoint_every=2)
    for i in range(4):
        first.record("PATCH_LOAD", i=i)  # 1, 2, CHECKPOINT 3, 4, 5, CHECKPOINT 6
    other = AuditLog(path)  # the default 100: a command run without the writers' configuration
    for i in range(4):
        other.record("KEY_CREATE", i=i)
    first.record("PATCH_LOAD", i=4)
    recs = read(path)
    checkpoints = [r for r in recs if r["event"] == "CHECKPOINT"]
    assert [r["seq"] for r in checkpoints] == [3, 6, 9, 12]
    assert {r["every"] for r in checkpoints} == {2}
    for verifier in (AuditLog(path), AuditLog(path, checkpoint_every=2), AuditLog(path, checkpoint_every=7)):
        report = verifier.verify(strict=True)
        assert (report.records, report.checkpoints, report.checkpoint_every) == (13, 4, 2)
    assert AuditLog(path, checkpoint_every=2).verify().warnings == ()
    (warning,) = AuditLog(path).verify().warnings
    assert "checkpointed every 2 records, not every 100" in warning
    # Asked for explicitly, another interval is still checked (and refused).
    e = expect_tamper(AuditLog(path), 3, "checkpoint interval", checkpoint_every=100)
    assert "checkpoint_every=2" in str(e)


@pytest.mark.file_only
def test_a_writer_refuses_an_interval_the_journal_has_already_passed(path: Path) -> None:
    old = AuditLog(path)  # the default 100: four records, no checkpoint yet
    for i in range(4):
        old.record("PATCH_LOAD", i=i)
    with path.open("ab") as f:
        f.write(b'{"seq":5,"ti')  # and a torn tail, which a refusal must not cut off unrecorded
    before = path.read_bytes()
    small = AuditLog(path, checkpoint_every=2)  # due at seq 3, which holds a record
    for attempt in (lambda: small.record("KEY_CREATE"), small.check_writable,
                    lambda: small.record_once("KEY_CREATE", "ab" * 8, since=time.time())):
        with pytest.raises(PolicyError) as ei:
            attempt()
        assert ei.value.reason == "checkpoint-interval"
        assert "checkpoint_every: 2" in str(ei.value) and "at least 4" in str(ei.value)
    assert path.read_bytes() == before
    # An interval whose first position is still ahead (here: just due) is the journal's from then on.
    AuditLog(path, checkpoint_every=4).record("KEY_CREATE")
    assert [r["event"] for r in read(path)][4:] == ["CHECKPOINT", "AUDIT_REPAIRED", "KEY_CREATE"]  # owed one first
    old.record("KEY_ROTATE")
    report = AuditLog(path, checkpoint_every=4).verify(strict=True)
    assert (report.records, report.checkpoints, report.checkpoint_every) == (8, 1, 4)


def test_the_journals_interval_cannot_be_widened_by_editing_it(log: AuditLog, path: Path) -> None:
    # Re-signed with the key beside the log: only the position of the first checkpoint, which
    # must be the first one due under its own `every`, gives the edit away.
    recs = read(path)
    for rec in recs:
        if rec["event"] == "CHECKPOINT":
            rec["every"] = 11
    rechain_signing(path, recs)
    write(path, recs)
    e = expect_tamper(log, 6, "unexpected checkpoint")
    assert "multiples of 12" in str(e)


def test_an_anchor_at_seq_0_must_carry_the_genesis_hash(log: AuditLog, tmp_path: Path) -> None:
    # Found by a review: `--anchor 0:<any hex>` was accepted without a look at the hash.
    with pytest.raises(PolicyError, match="seq 0") as ei:
        log.verify(anchor=(0, "ab" * 32))
    assert "ab" * 32 not in str(ei.value)
    assert log.verify(anchor=(0, GENESIS)).last_seq == 14
    assert AuditLog(tmp_path / "empty.log").verify(anchor=(0, GENESIS)).anchor == f"0:{GENESIS}"


# A directory or FIFO where the journal keeps a file (found by a review: untyped
# IsADirectoryError, and reads or writes that waited forever on a FIFO).

_PROBE = """
import sys
from xpscerpto.audit import AuditLog
from xpscerpto.errors import XpsError
log = AuditLog(sys.argv[1], checkpoint_every=5)
op = {"verify": log.verify, "record": lambda: log.record("PATCH_LOAD"), "check_writable": log.check_writable,
      "tail": log.tail, "mentions": lambda: log.mentions("PATCH_LOAD")}[sys.argv[2]]
try:
    op()
    print("ok")
except XpsError as exc:
    print(type(exc).__name__, exc)
"""


def probe(path: Path, op: str) -> str:
    """What ``op`` does on the journal at ``path``, in a child that is killed if it waits."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(path), op], capture_output=True, text=True,
                             timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{op} waited on the FIFO instead of refusing it")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout.strip()


@pytest.mark.file_only
@pytest.mark.parametrize(("name", "refused"), [
    ("audit.log", {"verify", "record", "check_writable", "tail", "mentions"}),
    ("audit.key", {"record", "check_writable"}),
    ("audit.pub", {"verify", "record", "check_writable"}),
], ids=["log", "key", "pub"])
def test_a_fifo_in_place_of_a_journal_file_is_refused_without_waiting(log: AuditLog, path: Path, name: str,
                                                                      refused: set[str]) -> None:
    victim = path.with_name(name)
    victim.unlink()
    os.mkfifo(victim, 0o600)
    for op in ("verify", "record", "check_writable", "tail", "mentions"):
        out = probe(path, op)
        if op in refused:
            kind = "InternalError" if name == "audit.log" else "KeyError_"
            assert out.startswith(kind) and f"{victim}" in out and "not a regular file" in out, (op, out)
        else:
            assert out == "ok", (op, out)
    assert stat.S_ISFIFO(victim.lstat().st_mode)  # refused, not replaced


@pytest.mark.file_only
def test_a_directory_in_place_of_the_log_is_refused_typed(log: AuditLog, path: Path) -> None:
    path.unlink()
    path.mkdir()
    for attempt in (log.verify, log.check_writable, log.tail, lambda: log.mentions("PATCH_LOAD"),
                    lambda: log.record("PATCH_LOAD"), lambda: AuditLog(path).record("PATCH_LOAD")):
        with pytest.raises(InternalError, match="cannot open") as ei:
            attempt()
        assert str(path) in str(ei.value)
    assert path.is_dir() and not any(path.iterdir())


@pytest.mark.file_only
@pytest.mark.parametrize("writer", ["same", "new"])
def test_check_writable_refuses_a_deleted_log_as_record_does(log: AuditLog, path: Path, writer: str) -> None:
    # Found by a review: check_writable() passed while record() refused 'deleted'.
    path.unlink()
    w = log if writer == "same" else AuditLog(path)
    with pytest.raises(AuditTampered) as by_check:
        w.check_writable()
    with pytest.raises(AuditTampered) as by_record:
        w.record("PATCH_LOAD")
    assert by_check.value.reason == by_record.value.reason == "deleted"
    assert "missing" in str(by_check.value)
    assert not path.exists()


@pytest.mark.file_only
def test_a_pub_lost_to_a_crash_after_the_first_record_is_named_and_rewritten(path: Path) -> None:
    # The .pub follows a new journal's first record (so a .pub beside a missing log means
    # deletion); kill -9 between the two leaves a journal without one.
    AuditLog(path).record("HOME_INIT", operator="cli")
    path.with_suffix(".pub").unlink()
    with pytest.raises(AuditPublicKeyMissing) as ei:  # typed KEY, not "bad record signature" (review F3)
        AuditLog(path).verify()
    assert (ei.value.code, ei.value.seq) == ("XPS_ERR_KEY", 1)
    assert "killed before it published the key" in str(ei.value)
    AuditLog(path).check_writable()
    assert AuditLog(path).verify(strict=True).records == 1


@pytest.mark.parametrize("n", [10**5000, -(10**5000), 2**2048], ids=["5001-digits", "minus-5001-digits", "2049-bits"])
def test_an_int_too_large_to_write_is_refused_typed(path: Path, n: int) -> None:
    # Found by a review: an untyped ValueError ("Exceeds the limit ... for integer string conversion").
    with pytest.raises(PolicyError) as ei:
        AuditLog(path).record("PATCH_LOAD", count={"n": [n]})
    assert ei.value.reason == "not-json"
    assert "audit field count{key 0}[0]: int wider than 2048 bits" in str(ei.value)
    assert not path.exists()
    assert AuditLog(path).record("PATCH_LOAD", n=2**2048 - 1)["n"] == 2**2048 - 1  # the widest kept
    assert AuditLog(path).verify().records == 1


def test_a_refusal_names_a_field_by_position_not_by_a_key_the_caller_chose(path: Path) -> None:
    # Found by a review: `audit field data.sk_live_…: bytes refused` echoed a secret used as a key.
    token = "sk_live_4111111111111111"
    for fields, where in (({"data": {"ok": 1, token: b"\x00"}}, "audit field data{key 1}: bytes refused"),
                          ({"data": [{token: {"x": SECRET}}]}, "audit field data[0]{key 0}{key 0}: bytes refused"),
                          ({token: b"\x00"}, "audit field #0: bytes refused"),
                          ({"key_id": "k", "Password=hunter2": SECRET}, "audit field #1: bytes refused")):
        with pytest.raises(PolicyError) as ei:
            AuditLog(path).record("KEY_CREATED", **fields)
        assert where in str(ei.value)
        assert token not in str(ei.value) and "4111" not in str(ei.value) and "hunter2" not in str(ei.value)
    with pytest.raises(PolicyError, match="audit field operator: bytes refused"):
        AuditLog(path).record("KEY_CREATED", operator=b"alice")  # a name as code writes one is shown
    assert not path.exists()


def test_the_interval_is_looked_up_once_per_journal_not_at_every_append(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding: every append walked back to the newest checkpoint, so filling a journal
    # with a large interval cost time quadratic in it (30 ms per append at 20,000 records).
    from xpscerpto.audit import journal

    calls = []
    real = journal._newest_checkpoint

    def counted(fd: int, end: int, begin: int = 0) -> object:
        calls.append(end)
        return real(fd, end, begin)

    monkeypatch.setattr(journal, "_newest_checkpoint", counted)
    log = AuditLog(tmp_path / "audit.log", checkpoint_every=3)
    for k in range(40):
        log.record("KEY_ROTATE", k=k)
    assert len(calls) <= 4  # until the first checkpoint is seen, then never again
    report = log.verify()
    assert report.checkpoints == report.records // 4 == 13
    # A journal restored from a backup (another file) is looked up again.
    shutil.copy2(tmp_path / "audit.log", tmp_path / "copy")
    os.replace(tmp_path / "copy", tmp_path / "audit.log")
    before = len(calls)
    log.record("KEY_ROTATE", k=40)
    assert len(calls) == before + 1


def test_a_journal_without_a_checkpoint_yet_is_read_only_where_it_grew(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # With a large interval a journal has no checkpoint for long: each append read it all back.
    from xpscerpto.audit import journal

    spans = []
    real = journal._newest_checkpoint

    def counted(fd: int, end: int, begin: int = 0) -> object:
        spans.append(end - begin)
        return real(fd, end, begin)

    monkeypatch.setattr(journal, "_newest_checkpoint", counted)
    log = AuditLog(tmp_path / "audit.log", checkpoint_every=1000)
    for k in range(200):
        log.record("KEY_ROTATE", k=k, detail="x" * 200)
    assert len(spans) == 199 and max(spans[1:]) < 2 * 600  # one record's line, not the journal
    other = AuditLog(tmp_path / "audit.log", checkpoint_every=1000)  # another writer reads it once
    other.record("KEY_ROTATE", k=200)
    assert spans[-1] > 100 * 300
    assert log.verify().records == 201
