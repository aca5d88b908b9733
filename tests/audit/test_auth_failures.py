"""CRYPTO_FAIL_AUTH for the raw API: what is journaled, what is not, and never twice."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import xpscerpto as xps
from hypothesis import given
from hypothesis import strategies as st
from xpscerpto.audit import AuditLog, journal_auth_failures
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import Keyring

SECRET = b"\xa5SECRET-MARK\x5a" * 4


def _events(log: AuditLog, n: int = 100) -> list[dict[str, object]]:
    return [r for r in log.tail(n) if r.get("event") == "CRYPTO_FAIL_AUTH"]


def test_every_raw_api_auth_failure_is_journaled_without_caller_bytes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    eng = xps.Engine()
    journal_auth_failures(eng, log, per_minute=100)
    key = os.urandom(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, SECRET, b"aad")
    keyed = eng.aead.keyed("AES-256-GCM", key)
    pk, _sk = eng.ed25519.generate_keypair()
    failing = [
        lambda: eng.aead.decrypt("AES-256-GCM", key, sealed.nonce, sealed.ciphertext, sealed.tag, SECRET),
        lambda: eng.aead.open("AES-256-GCM", key, sealed, SECRET),
        lambda: keyed.decrypt(sealed.nonce, sealed.ciphertext_and_tag, SECRET),
        lambda: eng.ed25519.verify(pk, SECRET, bytes(64)),
    ]
    for call in failing:
        with pytest.raises(xps.AuthError):
            call()
    records = _events(log)
    assert [(r["operation"], r["call"], r["source"]) for r in records] == [
        ("aead.aes256gcm", "decrypt", "api"), ("aead.aes256gcm", "open", "api"),
        ("aead.aes256gcm", "keyed.decrypt", "api"), ("sig.ed25519", "verify", "api")]
    text = (tmp_path / "audit.log").read_bytes()
    for secret in (SECRET, key, sealed.nonce, sealed.tag):
        assert secret not in text and secret.hex().encode() not in text
    assert log.verify().records == len(records)


def test_success_journals_nothing_and_detach_stops_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    eng = xps.Engine()
    detach = journal_auth_failures(eng, log)
    key = os.urandom(32)
    for _ in range(50):
        s = eng.aead.encrypt("AES-256-GCM", key, b"m")
        assert eng.aead.open("AES-256-GCM", key, s) == b"m"
    assert _events(log) == []
    detach()
    with pytest.raises(xps.AuthError):
        eng.aead.open("AES-256-GCM", os.urandom(32), s)
    assert _events(log) == []


def test_a_flood_of_forgeries_is_counted_not_journaled_one_by_one(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    eng = xps.Engine()
    journal_auth_failures(eng, log, per_minute=3)
    key = os.urandom(32)
    s = eng.aead.encrypt("AES-256-GCM", key, b"m")

    def forge() -> None:
        for _ in range(50):
            with pytest.raises(xps.AuthError):
                eng.aead.open("AES-256-GCM", os.urandom(32), s)

    threads = [threading.Thread(target=forge) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_events(log)) == 3  # 200 forgeries in well under a minute
    log.verify()


def test_an_unwritable_journal_never_changes_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    eng = xps.Engine()
    journal_auth_failures(eng, log)
    log.record("START")
    path.chmod(0o400)
    os.replace(path, tmp_path / "moved")
    path.mkdir()  # the journal's path is now a directory: every write fails
    with pytest.raises(xps.AuthError):
        eng.ed25519.verify(bytes(32), b"m", bytes(64))


def test_the_keyring_journals_its_own_failures_once(tmp_path: Path) -> None:
    eng = xps.Engine()
    ring = Keyring(tmp_path / "home", engine=eng)
    journal_auth_failures(eng, ring.audit)
    ring.create("orders")
    blob = bytearray(ring.encrypt("orders", b"m", aad=b"a"))
    blob[-1] ^= 1
    with pytest.raises(xps.AuthError):
        ring.decrypt(bytes(blob), aad=b"a")
    records = _events(ring.audit)
    assert len(records) == 1 and "source" not in records[0]  # the keyring's record, with its key id
    assert "key_id" in records[0]
    ring.close()


@given(st.one_of(st.integers(max_value=0), st.floats(), st.text(), st.none(), st.booleans()))
def test_per_minute_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(PolicyError):
        journal_auth_failures(xps.Engine(lazy=True), AuditLog(Path(os.devnull)), per_minute=value)  # type: ignore[arg-type]


@given(st.one_of(st.integers(), st.text(), st.none()))
def test_report_auth_failures_must_be_a_bool(value: object) -> None:
    with pytest.raises(PolicyError, match="report_auth_failures"):
        xps.aead.keyed("AES-256-GCM", bytes(32), report_auth_failures=value)  # type: ignore[arg-type]
