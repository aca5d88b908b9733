"""NameConstraints on a CA of the path bound the names below it, critical or not (review C1).

A sub-CA the root limits to ``partner.test`` must not be able to vouch for ``server.test``,
whether its NameConstraints extension is marked critical or not; constraint types the verifier
does not implement are refused, never skipped.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from xpscerpto.channel import Channel, ChannelAuthError, Identity, Trust, connect, serve
from xpscerpto.channel.pki import CertificateAuthority

from .conftest import run


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _constrained_ca(parent: CertificateAuthority, nc: x509.NameConstraints | None, *, critical: bool,
                    cn: str = "Partner sub-CA") -> CertificateAuthority:
    """A CA signed by ``parent`` carrying ``nc`` (the pki module has no option for it)."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(parent.certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                              critical=True))
    if nc is not None:
        builder = builder.add_extension(nc, critical=critical)
    cert = builder.sign(parent._key, None)
    return CertificateAuthority((cert, *parent.chain), key)


def _constrained_root(nc: x509.NameConstraints, *, critical: bool) -> CertificateAuthority:
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("Constrained Root")).issuer_name(_name("Constrained Root"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(nc, critical=critical)
            .sign(key, None))
    return CertificateAuthority((cert,), key)


def _leaf_with_sans(ca: CertificateAuthority, sans: list[x509.GeneralName]) -> list[bytes]:
    """A leaf with any SAN types (``issue`` only makes DNS and URI names)."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf")).issuer_name(ca.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca._key, None))
    return [c.public_bytes(serialization.Encoding.DER) for c in (leaf, *ca._below_root())]


def _chain(ca: CertificateAuthority, dns: list[str] = [], uris: list[str] = []) -> list[bytes]:  # noqa: B006
    chain, _ = ca.issue("leaf", dns=dns, uris=uris)
    return [c.public_bytes(serialization.Encoding.DER) for c in chain]


def _permit(*names: str) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=[x509.DNSName(n) for n in names], excluded_subtrees=None)


ROOT = CertificateAuthority.create("NC Root")
TRUST = Trust([ROOT.certificate])


def _refused(trust: Trust, chain: list[bytes], expected: list[str] | None = None) -> str:
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(chain, purpose="server", expected_names=expected)
    assert info.value.reason is not None
    return info.value.reason


@pytest.mark.parametrize("critical", [False, True])
def test_name_outside_the_permitted_subtree_is_refused(critical: bool) -> None:
    sub = _constrained_ca(ROOT, _permit("partner.test"), critical=critical)
    assert _refused(TRUST, _chain(sub, dns=["server.test"]), ["server.test"]) == "cert-name"
    # Refused even when the caller expects no particular name: the chain itself is invalid.
    assert _refused(TRUST, _chain(sub, dns=["server.test"])) == "cert-name"
    # Label boundaries: "evilpartner.test" is not under "partner.test".
    assert _refused(TRUST, _chain(sub, dns=["evilpartner.test"])) == "cert-name"
    # One name outside is enough, even next to a permitted one.
    assert _refused(TRUST, _chain(sub, dns=["api.partner.test", "server.test"]), ["api.partner.test"]) == "cert-name"


@pytest.mark.parametrize("critical", [False, True])
def test_names_inside_the_permitted_subtree_are_accepted(critical: bool) -> None:
    sub = _constrained_ca(ROOT, _permit("Partner.TEST"), critical=critical)
    for name in ("partner.test", "api.partner.test", "A.B.Partner.test"):
        peer = TRUST.verify(_chain(sub, dns=[name]), purpose="server", expected_names=[name])
        assert peer.names == (name,)


def test_excluded_subtree_is_refused_inside_a_permitted_one() -> None:
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("partner.test")],
                              excluded_subtrees=[x509.DNSName("secret.partner.test")])
    sub = _constrained_ca(ROOT, nc, critical=False)
    assert _refused(TRUST, _chain(sub, dns=["secret.partner.test"])) == "cert-name"
    assert _refused(TRUST, _chain(sub, dns=["db.secret.partner.test"])) == "cert-name"
    TRUST.verify(_chain(sub, dns=["www.partner.test"]), purpose="server", expected_names=["www.partner.test"])


def test_constraints_of_a_higher_ca_bind_the_whole_path() -> None:
    upper = _constrained_ca(ROOT, _permit("partner.test"), critical=True, cn="Upper")
    lower = _constrained_ca(upper, None, critical=False, cn="Lower")  # itself unconstrained
    trust = Trust([ROOT.certificate], max_chain=4)
    assert _refused(trust, _chain(lower, dns=["server.test"])) == "cert-name"
    trust.verify(_chain(lower, dns=["x.partner.test"]), purpose="server", expected_names=["x.partner.test"])


@pytest.mark.parametrize("critical", [False, True])
def test_constraints_on_the_trust_anchor_apply(critical: bool) -> None:
    root = _constrained_root(_permit("partner.test"), critical=critical)
    trust = Trust([root.certificate])
    assert _refused(trust, _chain(root, dns=["server.test"])) == "cert-name"
    trust.verify(_chain(root, dns=["x.partner.test"]), purpose="server", expected_names=["x.partner.test"])


def test_uri_constraints_apply_to_the_uri_host() -> None:
    nc = x509.NameConstraints(permitted_subtrees=[x509.UniformResourceIdentifier(".partner.test")],
                              excluded_subtrees=None)
    sub = _constrained_ca(ROOT, nc, critical=False)
    TRUST.verify(_chain(sub, uris=["spiffe://svc.partner.test/api"]), purpose="server",
                 expected_names=["spiffe://svc.partner.test/api"])
    for uri in ("spiffe://server.test/api", "https://10.0.0.1/", "spiffe:///no-host", "urn://[::1]/x"):
        assert _refused(TRUST, _chain(sub, uris=[uri])) == "cert-name", uri
    # A DNS constraint does not constrain URIs (RFC 5280 4.2.1.10), nor the reverse.
    TRUST.verify(_chain(sub, dns=["server.test"]), purpose="server", expected_names=["server.test"])


def test_ip_constraints_are_enforced() -> None:
    # The CA/Browser Forum's "technically constrained" shape: DNS permitted, every IP excluded.
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("partner.test")],
                              excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                                                 x509.IPAddress(ipaddress.ip_network("::/0"))])
    sub = _constrained_ca(ROOT, nc, critical=True)
    TRUST.verify(_chain(sub, dns=["api.partner.test"]), purpose="server", expected_names=["api.partner.test"])
    chain = _leaf_with_sans(sub, [x509.DNSName("api.partner.test"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
    assert _refused(TRUST, chain, ["api.partner.test"]) == "cert-name"


@pytest.mark.parametrize("critical", [False, True])
@pytest.mark.parametrize("subtree", [
    x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Partner")])),
    x509.RFC822Name("partner.test"),
    x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
])
def test_constraint_types_not_implemented_are_refused_not_ignored(critical: bool, subtree: x509.GeneralName) -> None:
    for nc in (x509.NameConstraints(permitted_subtrees=[x509.DNSName("partner.test"), subtree], excluded_subtrees=None),
               x509.NameConstraints(permitted_subtrees=None, excluded_subtrees=[subtree])):
        sub = _constrained_ca(ROOT, nc, critical=critical)
        assert _refused(TRUST, _chain(sub, dns=["api.partner.test"]), ["api.partner.test"]) == "cert-extension"


def test_the_repeat_of_a_refused_chain_is_refused_again() -> None:
    sub = _constrained_ca(ROOT, _permit("partner.test"), critical=False)
    chain = _chain(sub, dns=["server.test"])
    for _ in range(2):  # nothing refused is remembered as checked
        assert _refused(TRUST, chain, ["server.test"]) == "cert-name"


@pytest.mark.parametrize("critical", [False, True])
def test_client_refuses_a_constrained_sub_ca_out_of_bounds_over_a_socket(critical: bool) -> None:
    sub = _constrained_ca(ROOT, _permit("partner.test"), critical=critical)
    chain, key = sub.issue("evil", dns=["server.test"])
    evil = Identity(chain, bytearray(key.private_bytes_raw()))
    client = ROOT.issue_identity("client", dns=["client.test"])
    got: list[bytes] = []

    async def handler(ch: Channel) -> None:
        await ch.send(b"hello from the partner's sub-CA")

    async def attempt() -> str | None:
        async with await serve("127.0.0.1", 0, evil, TRUST, handler) as server:
            try:
                ch = await connect("127.0.0.1", server.port, client, TRUST, expected_name="server.test")
            except ChannelAuthError as exc:
                return exc.reason
            got.append(await ch.recv())
            await ch.close()
            return None

    assert run(attempt()) == "cert-name"
    assert got == []
