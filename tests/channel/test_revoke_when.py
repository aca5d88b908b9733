"""``CertificateAuthority.revoke(when=...)`` refuses a time no CRL can carry (naive, before 1950,
past datetime's range once in UTC, not a datetime) with XPS_ERR_POLICY naming ``when``; the CA
and its ``revoked.json`` are left as they were, and ``xps pki crl`` keeps working."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.channel.identity import load_crls
from xpscerpto.channel.pki import CertificateAuthority
from xpscerpto.cli.main import main
from xpscerpto.errors import ErrorCode, PolicyError

UTC = dt.UTC
_MINUS5 = dt.timezone(dt.timedelta(hours=-5))
_PLUS1 = dt.timezone(dt.timedelta(hours=1))


class _NoOffset(dt.tzinfo):
    """A tzinfo that gives no offset: the datetime is naive by Python's own definition."""

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta | None:
        return None

    def dst(self, d: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, d: dt.datetime | None) -> str | None:
        return None


class _BadOffset(_NoOffset):
    """A tzinfo whose offset Python refuses (not strictly within a day)."""

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta | None:
        return dt.timedelta(hours=30)


BAD = {
    "naive": dt.datetime(2020, 1, 1, 12, 0),
    "naive by its tzinfo": dt.datetime(2020, 1, 1, 12, 0, tzinfo=_NoOffset()),
    "naive before 1950": dt.datetime(1900, 1, 1),
    "an invalid offset": dt.datetime(2020, 1, 1, tzinfo=_BadOffset()),
    "before 1950": dt.datetime(1949, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    "before 1950 once in UTC": dt.datetime(1950, 1, 1, 0, 30, tzinfo=_PLUS1),
    "year 1": dt.datetime(1, 1, 1, tzinfo=UTC),
    "after 9999 once in UTC": dt.datetime(9999, 12, 31, 20, 0, tzinfo=_MINUS5),
    "a date": dt.date(2020, 1, 1),
    "a string": "2020-01-01T00:00:00+00:00",
    "a timestamp": 1_600_000_000,
}
GOOD = {
    "1950 in UTC": dt.datetime(1950, 1, 1, tzinfo=UTC),
    "1950 in UTC from another zone": dt.datetime(1949, 12, 31, 19, 0, tzinfo=_MINUS5),
    "last UTCTime second": dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    "first GeneralizedTime": dt.datetime(2050, 1, 1, tzinfo=UTC),
    "last datetime": dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    "another zone": dt.datetime(2030, 6, 1, 12, 0, tzinfo=_PLUS1),
}


def _xps(*args: str) -> int:
    return main(list(args))


@pytest.fixture
def cadir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root CA in ./ca with one serial already revoked (so revoked.json has content)."""
    monkeypatch.chdir(tmp_path)
    assert _xps("pki", "init-ca", "ca", "--name", "Root") == 0
    CertificateAuthority.load(tmp_path / "ca").revoke(1111, "first").save_revoked(tmp_path / "ca")
    return tmp_path


@pytest.mark.parametrize("when", BAD.values(), ids=BAD.keys())
def test_bad_when_is_refused_and_nothing_changes(cadir: Path, when: Any) -> None:
    before = (cadir / "ca" / "revoked.json").read_bytes()
    ca = CertificateAuthority.load(cadir / "ca")
    with pytest.raises(PolicyError) as ei:
        ca.revoke(2222, "second", when=when)
    assert ei.value.code is ErrorCode.POLICY
    assert "when" in str(ei.value)
    assert [r.serial for r in ca.revoked] == [1111]
    assert (cadir / "ca" / "revoked.json").read_bytes() == before
    assert _xps("pki", "crl", "--ca", "ca", "--out", "ca.crl") == 0
    (crl,) = load_crls((cadir / "ca.crl").read_bytes())
    assert [r.serial_number for r in crl] == [1111]


@pytest.mark.parametrize("when", BAD.values(), ids=BAD.keys())
def test_bad_when_is_refused_for_a_serial_already_revoked(cadir: Path, when: Any) -> None:
    ca = CertificateAuthority.load(cadir / "ca")
    with pytest.raises(PolicyError, match="when"):
        ca.revoke(1111, "again", when=when)


@pytest.mark.parametrize("when", GOOD.values(), ids=GOOD.keys())
def test_every_time_a_crl_can_carry_is_kept(cadir: Path, when: dt.datetime) -> None:
    CertificateAuthority.load(cadir / "ca").revoke(2222, "second", when=when).save_revoked(cadir / "ca")
    assert _xps("pki", "crl", "--ca", "ca", "--out", "ca.crl") == 0
    (crl,) = load_crls((cadir / "ca.crl").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(2222)
    assert entry is not None
    assert entry.revocation_date_utc == when.replace(microsecond=0)


def test_default_when_is_now(cadir: Path) -> None:
    start = dt.datetime.now(UTC).replace(microsecond=0)
    ca = CertificateAuthority.load(cadir / "ca").revoke(2222)
    (rev,) = [r for r in ca.revoked if r.serial == 2222]
    assert rev.time.utcoffset() == dt.timedelta(0)
    assert start <= rev.time <= dt.datetime.now(UTC)
    (entry,) = [r for r in ca.crl() if r.serial_number == 2222]
    assert entry.revocation_date_utc is not None


BAD_SERIAL = {"zero": 0, "negative": -5, "2**159": 2**159, "huge": 10**400, "a bool": True, "a str": "2222",
              "a float": 2222.0}


@pytest.mark.parametrize("serial", BAD_SERIAL.values(), ids=BAD_SERIAL.keys())
def test_bad_serial_is_refused_and_nothing_changes(cadir: Path, serial: Any) -> None:
    ca = CertificateAuthority.load(cadir / "ca")
    with pytest.raises(PolicyError, match="POLICY: serial: ") as ei:
        ca.revoke(serial, "second")
    assert ei.value.code is ErrorCode.POLICY
    assert [r.serial for r in ca.revoked] == [1111]
    assert [r.serial_number for r in ca.crl()] == [1111]


@pytest.mark.parametrize("reason", [b"bytes", 7, None], ids=["bytes", "int", "None"])
def test_reason_that_is_no_str_is_refused(cadir: Path, reason: Any) -> None:
    ca = CertificateAuthority.load(cadir / "ca")
    with pytest.raises(PolicyError, match="POLICY: reason: "):
        ca.revoke(2222, reason)
    ca.save_revoked(cadir / "ca")
    assert [r.serial for r in CertificateAuthority.load(cadir / "ca").revoked] == [1111]


@pytest.mark.parametrize("field", ["last_update", "next_update"])
@pytest.mark.parametrize("when", BAD.values(), ids=BAD.keys())
def test_crl_window_that_no_crl_can_carry_is_refused(cadir: Path, field: str, when: Any) -> None:
    with pytest.raises(PolicyError, match=f"POLICY: {field}: "):
        CertificateAuthority.load(cadir / "ca").crl(**{field: when})


def test_crl_window_from_another_zone_is_kept_in_utc(cadir: Path) -> None:
    last = dt.datetime(2030, 6, 1, 12, 0, tzinfo=_PLUS1)
    crl = CertificateAuthority.load(cadir / "ca").crl(last_update=last, next_update=last + dt.timedelta(days=2))
    assert crl.last_update_utc == last
    assert crl.next_update_utc == last + dt.timedelta(days=2)
