"""Identities, trust and the small CA: files, passphrases, and refusals of corrupt state."""

from __future__ import annotations

import datetime as dt
import os
import pickle
from pathlib import Path

import pytest
import xpscerpto as xps
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.channel import ChannelAuthError, Identity, Trust
from xpscerpto.channel.pki import CertificateAuthority, write_private_key

from .conftest import Pki, now


def test_identity_load_plain_and_encrypted(pki: Pki, tmp_path: Path) -> None:
    chain, key = pki.inter.issue("svc", dns=["svc.test"])
    (tmp_path / "svc.crt").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    write_private_key(tmp_path / "plain.key", key)
    write_private_key(tmp_path / "enc.key", key, b"correct horse")
    assert (tmp_path / "enc.key").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()
    (tmp_path / "svc.static").write_bytes(bytes(range(32)))
    a = Identity.load(tmp_path / "svc.crt", tmp_path / "plain.key", static_key=tmp_path / "svc.static")
    b = Identity.load(tmp_path / "svc.crt", tmp_path / "enc.key", passphrase=b"correct horse")
    assert a.chain_der == b.chain_der and a.static_public == xps.x25519.public_key(bytes(range(32)))
    with pytest.raises(xps.KeyError_, match="passphrase"):
        Identity.load(tmp_path / "svc.crt", tmp_path / "enc.key", passphrase=b"wrong")
    with pytest.raises(xps.KeyError_, match="no passphrase"):
        Identity.load(tmp_path / "svc.crt", tmp_path / "enc.key")
    with pytest.raises(xps.PolicyError, match="already exists"):
        write_private_key(tmp_path / "enc.key", key)
    assert "redacted" in repr(a)
    with pytest.raises(TypeError):
        pickle.dumps(a)


def test_identity_refuses_a_key_that_is_not_the_leafs(pki: Pki) -> None:
    chain, key = pki.inter.issue("svc", dns=["svc.test"])
    with pytest.raises(xps.KeyError_, match="does not match"):
        Identity(chain, bytes(32))
    with pytest.raises(xps.KeyError_, match="static_key"):
        Identity(chain, bytearray(key.private_bytes_raw()), static_key=bytes(5))


BAD_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("content", [b"", b"garbage", BAD_PEM])
def test_trust_refuses_unreadable_ca_files(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "ca.crt").write_bytes(content)
    with pytest.raises(xps.PolicyError):
        Trust.load([tmp_path / "ca.crt"])
    with pytest.raises(xps.PolicyError, match="cannot read"):
        Trust.load([tmp_path / "missing.crt"])


def test_trust_steps_name_their_reason(pki: Pki) -> None:
    trust = pki.trust
    good = pki.client.chain_der
    assert trust.verify(good, purpose="client", expected_names=["spiffe://test/client"]).names == (
        "client.test", "spiffe://test/client")
    assert trust.verify(good, purpose="client", expected_names=["CLIENT.test."]).subject == "CN=client"
    cases = {
        "cert-missing": [],
        "cert-malformed": [b"\x30\x03\x02\x01\x01"],
        "cert-untrusted": [good[0]],  # the intermediate left out
        "chain-too-long": [good[0]] * 5,
    }
    for reason, chain in cases.items():
        with pytest.raises(ChannelAuthError) as info:
            trust.verify(chain, purpose="client", expected_names=None)
        assert info.value.reason == reason
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(good, purpose="client", expected_names=None, now=now() + dt.timedelta(days=30))
    assert info.value.reason == "crl-expired"  # the CRLs (7 days) expire before the certificates
    with pytest.raises(ChannelAuthError) as info:
        trust.verify([good[1]], purpose="client", expected_names=None)
    assert info.value.reason == "cert-usage"  # a CA certificate presented as a leaf


def test_an_unknown_critical_extension_is_refused(pki: Pki) -> None:
    chain, _key = pki.inter.issue("svc", dns=["client.test"])
    leaf = chain[0]
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(leaf.public_key()).serial_number(leaf.serial_number)
               .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    builder = builder.add_extension(unknown, critical=True)
    odd = builder.sign(pki.inter._key, None)
    with pytest.raises(ChannelAuthError) as info:
        pki.trust.verify([odd.public_bytes(serialization.Encoding.DER), chain[1].public_bytes(
            serialization.Encoding.DER)], purpose="client", expected_names=None)
    assert info.value.reason == "cert-extension"


@settings(max_examples=40, deadline=None)
@given(chain=st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_chains_are_refused_with_a_reason(pki: Pki, chain: list[bytes]) -> None:
    with pytest.raises(ChannelAuthError) as info:
        pki.trust.verify(chain, purpose="server", expected_names=["server.test"])
    assert info.value.reason and all(c.hex() not in str(info.value) for c in chain if len(c) > 3)


def test_ca_directory_round_trip_and_corruption(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("Dir CA")
    ca.save(tmp_path / "ca", b"pw")
    assert oct((tmp_path / "ca").stat().st_mode & 0o777) == "0o700"
    loaded = CertificateAuthority.load(tmp_path / "ca", b"pw").revoke(42, "test")
    loaded.save_revoked(tmp_path / "ca")
    assert [r.serial for r in CertificateAuthority.load(tmp_path / "ca", b"pw").revoked] == [42]
    rev = tmp_path / "ca" / "revoked.json"
    for broken in (b"", b"{", b'{"revoked": [{"serial": "zz"}]}', b'{"other": 1}'):
        rev.write_bytes(broken)
        with pytest.raises(xps.PolicyError, match=r"revoked\.json"):
            CertificateAuthority.load(tmp_path / "ca", b"pw")
    rev.unlink()
    with pytest.raises(xps.PolicyError, match="cannot read"):
        CertificateAuthority.load(tmp_path / "ca", b"pw")
    other = CertificateAuthority.create("Other")
    other.save(tmp_path / "other")
    os.replace(tmp_path / "other" / "ca.key", tmp_path / "ca" / "ca.key")
    loaded.save_revoked(tmp_path / "ca")
    with pytest.raises(xps.KeyError_, match="does not belong"):
        CertificateAuthority.load(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").write_bytes(b"truncated")
    with pytest.raises(xps.KeyError_):
        CertificateAuthority.load(tmp_path / "ca")


def test_remembered_signatures_never_vouch_for_a_different_one(pki: Pki) -> None:
    trust = pki.trust_with()
    good = pki.client.chain_der
    trust.verify(good, purpose="client", expected_names=None)  # remembers the leaf's, the CA's and CRLs' signatures
    forged = bytearray(good[0])
    forged[-1] ^= 0x01  # the last byte of the signature
    with pytest.raises(ChannelAuthError) as info:
        trust.verify([bytes(forged), good[1]], purpose="client", expected_names=None)
    assert info.value.reason in ("cert-untrusted", "cert-malformed")
    other = CertificateAuthority.create("Test Intermediate", parent=CertificateAuthority.create("Test Root"))
    chain, _ = other.issue("client", dns=["client.test"])  # same names, other keys
    with pytest.raises(ChannelAuthError):
        trust.verify([c.public_bytes(serialization.Encoding.DER) for c in chain], purpose="client",
                     expected_names=None)


# -- the verified-chain cache ------------------------------------------------------------------------

def _der(chain: list[x509.Certificate]) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in chain]


def test_a_remembered_chain_is_still_checked_against_the_clock_and_the_names(pki: Pki) -> None:
    trust = pki.trust_with()
    chain, _ = pki.inter.issue("short", dns=["short.test"], days=2)
    der = _der(chain)
    first = trust.verify(der, purpose="client", expected_names=["short.test"])
    assert trust.verify(der, purpose="client", expected_names=["short.test"]) is first  # served from memory
    cases = [
        ({"expected_names": ["other.test"]}, "cert-name"),
        ({"expected_names": None, "now": now() + dt.timedelta(days=3)}, "cert-expired"),
        ({"expected_names": None, "now": now() - dt.timedelta(days=1)}, "cert-not-yet-valid"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(ChannelAuthError) as info:
            trust.verify(der, purpose="client", **kwargs)  # type: ignore[arg-type]
        assert info.value.reason == reason
    long_lived = pki.client.chain_der
    trust.verify(long_lived, purpose="client", expected_names=None)
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(long_lived, purpose="client", expected_names=None, now=now() + dt.timedelta(days=8))
    assert info.value.reason == "crl-expired"


def test_a_chain_remembered_for_one_purpose_is_checked_afresh_for_the_other(pki: Pki) -> None:
    trust = pki.trust_with()
    chain, _ = pki.inter.issue("clientonly", dns=["c.test"],
                               extended_key_usage=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    der = _der(chain)
    trust.verify(der, purpose="client", expected_names=None)
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(der, purpose="server", expected_names=None)
    assert info.value.reason == "cert-usage"


def test_a_refused_chain_is_not_remembered_and_limits_apply_before_memory(pki: Pki) -> None:
    trust = pki.trust_with()
    revoked_ca = CertificateAuthority.create("Test Intermediate", parent=pki.root)
    chain, _ = revoked_ca.issue("r", dns=["r.test"])
    der = _der(chain)
    strict = Trust([pki.root.certificate], [pki.root.crl(), revoked_ca.crl()])
    peer = strict.verify(der, purpose="client", expected_names=None)
    revoked_ca = revoked_ca.revoke(chain[0].serial_number)
    later = Trust([pki.root.certificate], [pki.root.crl(), revoked_ca.crl()])
    for _ in range(2):  # a refusal is never remembered as a success
        with pytest.raises(ChannelAuthError) as info:
            later.verify(der, purpose="client", expected_names=None)
        assert info.value.reason == "cert-revoked"
    assert peer.names == ("r.test",)
    good = pki.client.chain_der
    trust.verify(good, purpose="client", expected_names=None)
    trust.max_chain = 1
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(good, purpose="client", expected_names=None)
    assert info.value.reason == "chain-too-long"
    trust.max_chain = 4
    altered = [good[0][:-1] + bytes([good[0][-1] ^ 1]), good[1]]
    with pytest.raises(ChannelAuthError):
        trust.verify(altered, purpose="client", expected_names=None)
    as_views = [bytearray(c) for c in good]  # not bytes: the full checks, same outcome
    assert trust.verify(as_views, purpose="client", expected_names=None).names == ("client.test", "spiffe://test/client")
