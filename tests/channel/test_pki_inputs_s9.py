"""Review s9 F7: ``channel.pki`` refuses, typed and naming the field, a common name that cannot
be encoded or printed and a CRL window whose next update is not after its last update."""

from __future__ import annotations

import datetime as dt

import pytest
from xpscerpto.channel import pki
from xpscerpto.errors import PolicyError


@pytest.mark.parametrize("name", ["\udcff", "a\ud800b", "root\x1b[2J", "a\nb", "\x00"])
def test_unencodable_or_unprintable_name_is_refused(name: str) -> None:
    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: name: ") as err:
        pki.CertificateAuthority.create(name)
    assert name not in str(err.value)
    root = pki.CertificateAuthority.create("root")
    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: name: "):
        root.issue(name, dns=["a.test"])


def test_printable_names_still_accepted() -> None:
    root = pki.CertificateAuthority.create("Root CA \u00e9\u4e2d")
    assert root.issue("leaf one", dns=["a.test"]) is not None


@pytest.mark.parametrize("kwargs", [
    {"last_update": dt.datetime.now(dt.UTC) + dt.timedelta(days=30)},
    {"last_update": dt.datetime(2030, 1, 2, tzinfo=dt.UTC), "next_update": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},
    {"last_update": dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "next_update": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},
])
def test_crl_window_backwards_is_refused(kwargs: dict[str, dt.datetime]) -> None:
    root = pki.CertificateAuthority.create("root")
    with pytest.raises(PolicyError, match="next_update: must be after last_update"):
        root.crl(**kwargs)  # type: ignore[arg-type]


def test_crl_good_window_still_signs() -> None:
    root = pki.CertificateAuthority.create("root")
    crl = root.crl(last_update=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
                   next_update=dt.datetime(2030, 1, 2, tzinfo=dt.UTC))
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
