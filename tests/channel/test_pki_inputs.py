"""``CertificateAuthority.create`` and ``issue`` refuse every argument they cannot turn into a
certificate with XPS_ERR_POLICY naming it (a hypothesis pass found TypeError, AttributeError and
ValueError from the x509 builder for wrong types, naive or pre-1950 times, an inverted validity).
Good inputs still give the certificate they describe."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto.channel.pki import CertificateAuthority
from xpscerpto.errors import ErrorCode, PolicyError, XpsError

NOW = dt.datetime.now(dt.UTC)
_CA = CertificateAuthority.create("Inputs CA")

BAD_ISSUE: list[tuple[str, Any]] = [
    ("dns", 7), ("dns", None), ("dns", 1.5), ("dns", "a.test"), ("dns", b"a.test"),
    ("uris", 7), ("uris", True), ("uris", "spiffe://x/y"),
    ("key", "k"), ("key", b"\x00" * 32), ("key", x25519.X25519PrivateKey.generate()),
    ("key_usage", 1), ("key_usage", "digital_signature"), ("key_usage", [1]),
    ("extended_key_usage", "1.3.6.1.5.5.7.3.1"), ("extended_key_usage", b"x"), ("extended_key_usage", 3),
    ("extended_key_usage", ["1.3.6.1.5.5.7.3.1"]), ("extended_key_usage", []),
    ("not_before", 0), ("not_before", "2030-01-01T00:00:00+00:00"), ("not_before", NOW.replace(tzinfo=None)),
    ("not_before", dt.datetime(1900, 1, 1, tzinfo=dt.UTC)),
    ("not_after", b"x"), ("not_after", 1.0e9), ("not_after", NOW - dt.timedelta(days=3650)),
    ("not_after", dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))),
    ("days", float("nan")), ("days", True), ("days", 10**30),
]
_FIELDS = {"dns", "uris", "key", "key_usage", "extended_key_usage", "not_before", "not_after", "days"}


@pytest.mark.parametrize(("field", "value"), BAD_ISSUE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_ISSUE)])
def test_issue_refuses_a_bad_argument_naming_it(field: str, value: Any) -> None:
    with pytest.raises(PolicyError) as info:
        _CA.issue("leaf", **{field: value})
    assert info.value.code is ErrorCode.POLICY and str(info.value).split(": ", 2)[1] == field, str(info.value)


BAD_CREATE: list[tuple[str, Any]] = [
    ("parent", "root"), ("parent", _CA.certificate), ("path_length", -1), ("path_length", True),
    ("path_length", 2**40), ("path_length", "1"), ("not_before", 5), ("not_after", NOW.replace(tzinfo=None)),
    ("not_after", NOW - dt.timedelta(days=1)),
]


@pytest.mark.parametrize(("field", "value"), BAD_CREATE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CREATE)])
def test_create_refuses_a_bad_argument_naming_it(field: str, value: Any) -> None:
    with pytest.raises(PolicyError) as info:
        CertificateAuthority.create("CA", **{field: value})
    assert str(info.value).split(": ", 2)[1] == field, str(info.value)


def test_explicit_validity_and_extensions_still_make_the_certificate_they_describe() -> None:
    start, end = NOW - dt.timedelta(days=2), NOW + dt.timedelta(days=1)
    key = ed25519.Ed25519PrivateKey.generate()
    east = start.astimezone(dt.timezone(dt.timedelta(hours=5)))
    client = (x509.ObjectIdentifier("1.3.6.1.5.5.7.3.2"),)
    chain, got = _CA.issue("leaf", dns=iter(["a.test"]), not_before=east, not_after=end, key=key,
                           extended_key_usage=client)
    leaf = chain[0]
    assert got is key and leaf.not_valid_before_utc == start.replace(microsecond=0)
    assert leaf.not_valid_after_utc == end.replace(microsecond=0)
    assert [str(u.dotted_string) for u in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value] == [
        "1.3.6.1.5.5.7.3.2"]
    inter = CertificateAuthority.create("Inter", parent=_CA, path_length=0, not_before=start, not_after=end)
    assert inter.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


_ANY = st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5),
                 st.booleans(), st.binary(max_size=3), st.lists(st.text(max_size=3), max_size=2),
                 st.datetimes(timezones=st.sampled_from([dt.UTC, None])))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(sorted(_FIELDS | {"name"})), value=_ANY)
def test_issue_raises_only_typed_errors(field: str, value: Any) -> None:
    kwargs = {} if field == "name" else {field: value}
    try:
        _CA.issue(value if field == "name" else "leaf", **kwargs)
    except XpsError as exc:
        assert exc.code is ErrorCode.POLICY
