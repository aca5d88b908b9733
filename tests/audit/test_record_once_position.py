"""record_once finds an already-written record by its place in the journal, not by its time.

Review finding (round 2, F6): the search for a txid stopped at the first record older than the
change's time minus ten minutes. After a kill -9 between the journal append and the outbox
removal, a wall clock stepped back by more than ten minutes gave the next record an older time,
the search stopped there, and the next keyring open journaled the same change a second time.
Stepping the real clock back needs root and would disturb the machine, so the journal's clock
(``journal._now``) is moved; the kill -9 is real.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xpscerpto.audit.journal as journal
from xpscerpto.audit import AuditLog
from xpscerpto.keyring import Keyring


def _step_clock_back(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    monkeypatch.setattr(journal, "_now", lambda: (datetime.now(UTC) - by).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _txids(path: Path, event: str) -> Counter[str]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter(r["txid"] for r in recs if r["event"] == event)


def test_a_record_before_a_clock_step_back_is_still_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.log")
    since = time.time()
    first = log.record_once("KEY_ROTATE", "ab12cd34ef56ab78", since=since, name="orders")
    _step_clock_back(monkeypatch, timedelta(hours=1))
    for i in range(50):
        log.record("CRYPTO_FAIL_AUTH", operation="aead", attempt=i)
    again = AuditLog(tmp_path / "audit.log").record_once("KEY_ROTATE", "ab12cd34ef56ab78", since=since, name="orders")
    assert again == first
    assert _txids(tmp_path / "audit.log", "KEY_ROTATE") == {"ab12cd34ef56ab78": 1}
    assert AuditLog(tmp_path / "audit.log").verify().warnings == ()  # verify raises on a broken chain


def test_beyond_the_newest_records_the_time_window_still_finds_it(tmp_path: Path) -> None:
    # The position bound adds to the time window; with a clock that runs forward, a record
    # written within it is found however many records came after.
    log = AuditLog(tmp_path / "audit.log")
    since = time.time()
    first = log.record_once("KEY_CREATE", "0011223344556677", since=since, name="k")
    for i in range(journal._ONCE_NEWEST + 10):
        log.record("CRYPTO_FAIL_AUTH", operation="aead", attempt=i)
    assert log.record_once("KEY_CREATE", "0011223344556677", since=since, name="k") == first
    assert _txids(tmp_path / "audit.log", "KEY_CREATE") == {"0011223344556677": 1}


_CHILD = """
import os, signal, sys
from xpscerpto.keyring import Keyring
from xpscerpto.keyring.store import Store
ring = Keyring(sys.argv[1])
ring.create("orders", "AES-256-GCM")
# The kill point: right after the journal append, before the outbox row is removed.
Store.remove_outbox = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
ring.rotate("orders")
"""


def test_kill_9_then_clock_step_back_journals_the_change_once(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    child = subprocess.run([sys.executable, "-c", _CHILD, str(home)], capture_output=True, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    log = home / "audit.log"
    assert sum(_txids(log, "KEY_ROTATE").values()) == 1  # written, and still queued
    _step_clock_back(monkeypatch, timedelta(hours=1))
    AuditLog(log).record("CRYPTO_FAIL_AUTH", operation="aead")  # another writer of the journal
    with Keyring(home) as ring:  # the open delivers the queued row
        assert ring.describe("orders").active_version == 2
        assert not ring.store.outbox()
    assert list(_txids(log, "KEY_ROTATE").values()) == [1]
    assert AuditLog(log).verify().warnings == ()
