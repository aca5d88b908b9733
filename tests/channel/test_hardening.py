"""Hostile and careless inputs the channel must turn into typed refusals, over real sockets.

Certificates cryptography cannot fully parse, handshakes failing on an unexpected error, an
accept loop out of descriptors or threads, tiny or oversized fragments, partial CRLs, names
that fold onto others, nonces set back, a wipe racing a rekey, wrong types at the public API
and out-of-range command-line values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.channel import (
    Channel,
    ChannelAuthError,
    ChannelConfig,
    FailureLog,
    Identity,
    PeerCertificate,
    Trust,
    blocking,
    connect,
    serve,
)
from xpscerpto.channel._noise import CipherState, HandshakeState
from xpscerpto.channel.pki import CertificateAuthority
from xpscerpto.channel.transport import DATA, MIN_FRAGMENT, MORE, Transport
from xpscerpto.cli.main import main

from .conftest import FAST, Pki, now, run

ED25519_OID = b"\x06\x03\x2b\x65\x70"


# -- malformed certificates ----------------------------------------------------------------------

def _unknown_key_algorithm(der: bytes) -> bytes:
    """The DER with its SubjectPublicKeyInfo algorithm changed to an OID no library knows (1.3.101.127)."""
    at = [i for i in range(len(der)) if der[i:i + 5] == ED25519_OID][1]  # tbs signature, SPKI, outer signature
    return der[:at] + b"\x06\x03\x2b\x65\x7f" + der[at + 5:]


def _bad_version(der: bytes) -> bytes:
    """The DER with X.509 version 6: cryptography raises InvalidVersion, which is no ValueError."""
    at = der.find(b"\xa0\x03\x02\x01\x02")
    return der[:at] + b"\xa0\x03\x02\x01\x05" + der[at + 5:]


def _bad_issuer_utf8(der: bytes) -> bytes:
    """The DER with a 0x80 byte in the issuer's UTF8String CN: it loads, and ``.issuer`` raises ValueError."""
    cn = b"Test Intermediate"
    at = der.find(b"\x0c" + bytes([len(cn)]) + cn)
    out = bytearray(der)
    out[at + 2] = 0x80
    return bytes(out)


TAMPERS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "unknown key algorithm": (_unknown_key_algorithm, "cert-key-type"),
    "bad version": (_bad_version, "cert-malformed"),
    "bad issuer UTF-8": (_bad_issuer_utf8, "cert-malformed"),
}


def _tampered(pki: Pki, name: str, case: str) -> Identity:
    """A fresh identity whose leaf, as sent in the handshake, is ``case``'s malformed DER."""
    ident = pki.identity(name, dns=[f"{name}.test"])
    ident.chain_der = (TAMPERS[case][0](ident.chain_der[0]), *ident.chain_der[1:])
    return ident


@pytest.mark.parametrize("case", TAMPERS)
def test_a_certificate_that_does_not_fully_parse_is_refused_typed(pki: Pki, case: str) -> None:
    tamper, reason = TAMPERS[case]
    chain = [tamper(pki.client.chain_der[0]), pki.client.chain_der[1]]
    with pytest.raises(ChannelAuthError) as info:
        pki.trust.verify(chain, purpose="client", expected_names=None)
    assert info.value.reason == reason
    assert "1.3.101.127" not in str(info.value) and "Intermediate" not in str(info.value)


@pytest.mark.parametrize("case", TAMPERS)
def test_the_asyncio_server_counts_a_malformed_client_certificate_and_keeps_serving(pki: Pki, case: str) -> None:
    bad = _tampered(pki, "client", case)

    async def main() -> tuple[xps.XpsError, Counter[str]]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=FAST) as server:
            with pytest.raises(xps.XpsError) as info:
                async with await connect("127.0.0.1", server.port, bad, pki.trust, expected_name="server.test",
                                         config=FAST) as ch:
                    await ch.recv()  # XX: the client learns of the refusal as a cut connection
            await _wait_for(lambda: sum(server.failures.failures.values()) == 1)
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                     config=FAST):
                await _wait_for(lambda: server.failures.established == 1)
            return info.value, Counter(server.failures.failures)

    error, failures = run(main())
    assert failures == Counter({TAMPERS[case][1]: 1})
    assert isinstance(error, xps.AuthError) and error.reason == "eof"


@pytest.mark.parametrize("case", TAMPERS)
def test_the_blocking_server_counts_a_malformed_client_certificate_and_its_thread_lives(
        pki: Pki, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed = _no_thread_crashes(monkeypatch)
    bad = _tampered(pki, "client", case)
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=FAST) as server:
        with pytest.raises(xps.AuthError) as info, \
                blocking.connect("127.0.0.1", server.port, bad, pki.trust, expected_name="server.test",
                                 config=FAST) as ch:
            ch.recv()
        assert info.value.reason == "eof"
        _wait(lambda: server._idle == 1)  # the thread went back to wait for work: it did not die
        with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            ch.send(b"still here")
            assert ch.recv() == b"still here"
        assert server.failures.failures == Counter({TAMPERS[case][1]: 1})
    assert crashed == []


def test_a_client_refuses_a_server_certificate_with_an_unknown_key_algorithm(pki: Pki) -> None:
    odd_server = _tampered(pki, "server", "unknown key algorithm")
    counted = FailureLog()

    async def main() -> ChannelAuthError:
        async with await serve("127.0.0.1", 0, odd_server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=FAST) as server:
            with pytest.raises(ChannelAuthError) as info:
                await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                              config=FAST, failures=counted)
            return info.value

    assert run(main()).reason == "cert-key-type"
    with blocking.serve("127.0.0.1", 0, odd_server, pki.trust, _echo, config=FAST) as bserver:
        with pytest.raises(ChannelAuthError) as info:
            blocking.connect("127.0.0.1", bserver.port, pki.client, pki.trust, expected_name="server.test",
                             config=FAST, failures=counted)
        assert info.value.reason == "cert-key-type"
    assert counted.failures == Counter({"cert-key-type": 2})


class _BuggyTrust(Trust):
    """A Trust whose next verification fails the way a bug would: an untyped error quoting peer data."""

    __slots__ = ("armed",)
    armed: bool

    def verify(self, *args: Any, **kwargs: Any) -> PeerCertificate:
        if self.armed:
            self.armed = False
            raise RuntimeError("unexpected 1.3.101.127")
        return super().verify(*args, **kwargs)


def _buggy(pki: Pki) -> _BuggyTrust:
    trust = _BuggyTrust([pki.root.certificate], [pki.root.crl(), pki.inter.crl()])
    trust.armed = True
    return trust


def test_an_unexpected_handshake_error_is_counted_closed_and_survived_by_both_servers(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed = _no_thread_crashes(monkeypatch)

    async def main() -> tuple[xps.XpsError, Counter[str], int]:
        async with await serve("127.0.0.1", 0, pki.server, _buggy(pki), lambda ch: asyncio.sleep(0),
                               config=FAST) as server:
            with pytest.raises(xps.XpsError) as info:
                async with await connect("127.0.0.1", server.port, pki.client, pki.trust,
                                         expected_name="server.test", config=FAST) as ch:
                    await ch.recv()
            await _wait_for(lambda: sum(server.failures.failures.values()) == 1)
            async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                                     config=FAST):
                await _wait_for(lambda: server.failures.established == 1)
            return info.value, Counter(server.failures.failures), server.pending

    error, failures, pending = run(main())
    assert failures == Counter({"internal": 1}) and pending == 0
    assert isinstance(error, xps.AuthError) and error.reason == "eof"

    with blocking.serve("127.0.0.1", 0, pki.server, _buggy(pki), _echo, config=FAST) as bserver:
        with pytest.raises(xps.AuthError), \
                blocking.connect("127.0.0.1", bserver.port, pki.client, pki.trust, expected_name="server.test",
                                 config=FAST) as ch:
            ch.recv()
        _wait(lambda: bserver._idle == 1)
        with blocking.connect("127.0.0.1", bserver.port, pki.client, pki.trust, expected_name="server.test") as ch:
            ch.send(b"ok")
            assert ch.recv() == b"ok"
        assert bserver.failures.failures == Counter({"internal": 1})
    assert crashed == []


def test_an_unexpected_handshake_error_reaches_the_client_typed_and_counted(pki: Pki) -> None:
    counted = FailureLog()

    async def main() -> xps.XpsError:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=FAST) as server:
            with pytest.raises(xps.XpsError) as info:
                await connect("127.0.0.1", server.port, pki.client, _buggy(pki), expected_name="server.test",
                              config=FAST, failures=counted)
            return info.value

    errors = [run(main())]
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=FAST) as server, \
            pytest.raises(xps.XpsError) as info:
        blocking.connect("127.0.0.1", server.port, pki.client, _buggy(pki), expected_name="server.test",
                         config=FAST, failures=counted)
    errors.append(info.value)
    for err in errors:
        assert isinstance(err, xps.InternalError) and err.reason == "internal"
        assert "1.3.101.127" not in str(err)
    assert counted.failures == Counter({"internal": 2})


# -- the blocking accept loop --------------------------------------------------------------------

# Runs in its own process: it lowers RLIMIT_NOFILE and fills the descriptor table, so that the
# server's accept() really fails with EMFILE, then frees the descriptors and connects again.
_EMFILE_SCRIPT = r"""
import json, os, resource, socket, sys, time
from xpscerpto.channel import ChannelConfig, Trust, blocking
from xpscerpto.channel.pki import CertificateAuthority

ca = CertificateAuthority.create("CA")
server, client = ca.issue_identity("server", dns=["server.test"]), ca.issue_identity("client", dns=["client.test"])
trust = Trust([ca.certificate])

def echo(ch):
    while m := ch.recv():
        ch.send(m)

out = {}
with blocking.serve("127.0.0.1", 0, server, trust, echo) as srv:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    waiting = socket.socket()  # made first: connecting it needs no descriptor
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    waiting.connect(("127.0.0.1", srv.port))  # queued; accept() has no descriptor to give it
    end = time.monotonic() + 5
    while getattr(srv, "accept_errors", 0) == 0 and srv._thread.is_alive() and time.monotonic() < end:
        time.sleep(0.01)
    out["accept_errors"] = getattr(srv, "accept_errors", None)
    for fd in fillers:
        os.close(fd)
    waiting.close()
    try:
        with blocking.connect("127.0.0.1", srv.port, client, trust, expected_name="server.test",
                              config=ChannelConfig(handshake_timeout_seconds=3)) as ch:
            ch.send(b"after the shortage")
            out["reply"] = ch.recv().decode()
    except Exception as exc:
        out["reply"] = type(exc).__name__
    out["accepting"] = srv._thread.is_alive()
print(json.dumps(out))
"""


def test_the_blocking_server_keeps_accepting_after_running_out_of_descriptors() -> None:
    res = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"accept_errors": out["accept_errors"], "reply": "after the shortage", "accepting": True}
    assert out["accept_errors"] >= 1
    assert "Traceback" not in res.stderr
    assert res.stderr.count("still accepting (logged once)") == 1


def test_a_connection_thread_that_cannot_start_refuses_that_client_only(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    crashed = _no_thread_crashes(monkeypatch)
    start = threading.Thread.start
    refused: list[threading.Thread] = []

    def at_the_thread_limit(self: threading.Thread) -> None:
        if self.name == "xps-channel-conn" and not refused:
            refused.append(self)
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", at_the_thread_limit)
    with blocking.serve("127.0.0.1", 0, pki.server, pki.trust, _echo, config=FAST) as server:
        with pytest.raises(xps.PolicyError) as info:
            blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=FAST)
        assert info.value.reason == "busy"
        with blocking.connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test") as ch:
            ch.send(b"next")
            assert ch.recv() == b"next"
        assert server.failures.failures == Counter({"busy": 1}) and server.accept_errors == 1
        assert not server._conns or len(server._conns) == 1  # the refused connection is not kept
    assert crashed == []


# -- fragments and max_message -------------------------------------------------------------------

def _records(build: Callable[[Transport], bytes], *, config: ChannelConfig = FAST,
             client_config: ChannelConfig | None = None, pki: Pki) -> tuple[list[bytes], list[xps.XpsError]]:
    """Send the raw records ``build`` seals on an established channel; what the server's handler got."""
    received: list[bytes] = []
    errors: list[xps.XpsError] = []

    async def handler(ch: Channel) -> None:
        try:
            while m := await ch.recv():
                received.append(m)
        except xps.XpsError as exc:
            errors.append(exc)

    async def main() -> None:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=config) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                               config=client_config or FAST)
            with contextlib.suppress(ConnectionError):  # the server may cut the connection mid-write
                ch._writer.write(build(ch.transport))
                await ch._writer.drain()
            await ch.close()
            await _wait_for(lambda: errors or (server.failures.established and not server._tasks))

    run(main())
    return received, errors


def test_fragments_smaller_than_any_sender_makes_are_refused(pki: Pki) -> None:
    def tiny(t: Transport) -> bytes:  # 40000 one-byte fragments took the asyncio server 23 s before
        return b"".join(t._record(MORE, b"x") for _ in range(40_000)) + t._record(DATA, b"x")

    received, errors = _records(tiny, pki=pki)
    assert received == [] and len(errors) == 1
    assert isinstance(errors[0], xps.PolicyError) and errors[0].reason == "malformed"
    assert "fragment" in str(errors[0])


def test_fragments_of_the_minimum_size_reassemble(pki: Pki) -> None:
    def smallest(t: Transport) -> bytes:
        return b"".join(t._record(MORE, bytes([i % 256]) * MIN_FRAGMENT) for i in range(3000)) + t._record(DATA, b"!")

    received, errors = _records(smallest, pki=pki)
    assert errors == []
    assert received == [b"".join(bytes([i % 256]) * MIN_FRAGMENT for i in range(3000)) + b"!"]


def test_a_sender_with_the_smallest_max_frame_reaches_a_default_receiver(pki: Pki) -> None:
    small = ChannelConfig(handshake_timeout_seconds=1.0, max_frame=64)
    message = bytes(range(256)) * 40
    received, errors = _records(lambda t: t.seal(message), client_config=small, pki=pki)
    assert errors == [] and received == [message]


def test_fragments_beyond_max_message_are_refused_when_they_cross_it(pki: Pki) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=1.0, max_message=1000)

    def many(t: Transport) -> bytes:
        return b"".join(t._record(MORE, b"y" * 100) for _ in range(10)) + t._record(DATA, b"z")

    received, errors = _records(many, config=cfg, pki=pki)
    assert received == [] and [e.reason for e in errors] == ["oversized"]


@pytest.mark.parametrize(("size", "delivered"), [(100, True), (101, False), (60_000, False)])
def test_a_one_record_message_is_held_to_max_message_too(pki: Pki, size: int, delivered: bool) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=1.0, max_message=100)
    received, errors = _records(lambda t: t.seal(b"m" * size), config=cfg, pki=pki)
    if delivered:
        assert received == [b"m" * size] and errors == []
    else:
        assert received == [] and len(errors) == 1
        assert isinstance(errors[0], xps.PolicyError) and errors[0].reason == "oversized"


# -- CRLs that are not the issuer's full list ------------------------------------------------------

def _crl(ca: CertificateAuthority, *extensions: tuple[x509.ExtensionType, bool]) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
               .last_update(now() - dt.timedelta(hours=1)).next_update(now() + dt.timedelta(days=1))
               .add_extension(x509.CRLNumber(2), critical=False))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(ca._key, None)


def _idp(**scope: Any) -> x509.IssuingDistributionPoint:
    args = {"full_name": None, "relative_name": None, "only_contains_user_certs": False,
            "only_contains_ca_certs": False, "only_some_reasons": None, "indirect_crl": False,
            "only_contains_attribute_certs": False, **scope}
    return x509.IssuingDistributionPoint(**args)


PARTIAL_CRLS: dict[str, tuple[x509.ExtensionType, bool]] = {
    "delta": (x509.DeltaCRLIndicator(1), True),
    "only CA certificates": (_idp(only_contains_ca_certs=True), True),
    "only user certificates": (_idp(only_contains_user_certs=True), True),
    "only some reasons": (_idp(only_some_reasons=frozenset({x509.ReasonFlags.key_compromise})), True),
    "indirect": (_idp(indirect_crl=True), True),
    "one distribution point": (_idp(full_name=[x509.UniformResourceIdentifier("http://crl.test/1.crl")]), True),
    "unknown critical extension": (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"),
                                                              b"\x05\x00"), True),
}


@pytest.mark.parametrize("case", PARTIAL_CRLS)
def test_a_partial_crl_cannot_un_revoke_a_certificate(pki: Pki, case: str, tmp_path: Path) -> None:
    revoked = pki.identity("revoked", dns=["client.test"])
    base = pki.inter.revoke(revoked.chain[0].serial_number).crl(last_update=now() - dt.timedelta(hours=2))
    with pytest.raises(ChannelAuthError) as info:
        Trust([pki.root.certificate], [pki.root.crl(), base]).verify(revoked.chain_der, purpose="client",
                                                                       expected_names=None)
    assert info.value.reason == "cert-revoked"
    partial = _crl(pki.inter, PARTIAL_CRLS[case])  # newer than the base, and revoking nothing
    with pytest.raises(xps.PolicyError, match="crls"):
        Trust([pki.root.certificate], [pki.root.crl(), base, partial])
    (tmp_path / "ca.crt").write_bytes(pki.root.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "partial.crl").write_bytes(partial.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(xps.PolicyError, match="crls"):
        Trust.load([tmp_path / "ca.crt"], [tmp_path / "partial.crl"])


def test_a_full_crl_with_ordinary_extensions_is_used(pki: Pki) -> None:
    revoked = pki.identity("revoked", dns=["client.test"])
    full = (x509.CertificateRevocationListBuilder().issuer_name(pki.inter.certificate.subject)
            .last_update(now() - dt.timedelta(hours=1)).next_update(now() + dt.timedelta(days=1))
            .add_extension(x509.CRLNumber(7), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.inter._key.public_key()),
                           critical=False)
            .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(revoked.chain[0].serial_number)
                                     .revocation_date(now() - dt.timedelta(hours=1))
                                     .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                                     .build())
            .sign(pki.inter._key, None))
    trust = Trust([pki.root.certificate], [pki.root.crl(), full])
    with pytest.raises(ChannelAuthError) as info:
        trust.verify(revoked.chain_der, purpose="client", expected_names=None)
    assert info.value.reason == "cert-revoked"
    assert trust.verify(pki.client.chain_der, purpose="client", expected_names=None).names[0] == "client.test"


# -- names ------------------------------------------------------------------------------------------

def _leaf_with(pki: Pki, *names: x509.GeneralName) -> list[bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(pki.inter.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - dt.timedelta(hours=1)).not_valid_after(now() + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .sign(pki.inter._key, None))
    return [c.public_bytes(serialization.Encoding.DER) for c in (leaf, pki.inter.certificate)]


@pytest.mark.parametrize(("san", "expected"), [
    (x509.DNSName._init_without_validation("\u212aafka.internal"), "kafka.internal"),  # KELVIN SIGN lowers to k
    (x509.DNSName._init_without_validation("ka\u0301fka.internal"), "ka\u0301fka.internal".encode("idna").decode()),
    (x509.DNSName("spiffe://prod/payments"), "spiffe://prod/payments"),  # a DNS SAN is no URI
    (x509.UniformResourceIdentifier("server.test"), "server.test"),  # a URI SAN is no DNS name
    (x509.UniformResourceIdentifier("spiffe://prod/Payments"), "spiffe://prod/payments"),  # URIs: exact
])
def test_names_match_only_their_own_type_in_ascii(pki: Pki, san: x509.GeneralName, expected: str) -> None:
    chain = _leaf_with(pki, san)
    with pytest.raises(ChannelAuthError) as info:
        pki.trust.verify(chain, purpose="server", expected_names=[expected])
    assert info.value.reason == "cert-name"


def test_names_that_do_match(pki: Pki) -> None:
    chain = _leaf_with(pki, x509.DNSName("Svc.Example"), x509.UniformResourceIdentifier("spiffe://prod/svc"),
                       x509.DNSName._init_without_validation("\u212aafka.internal"))
    for expected in ("svc.example", "SVC.EXAMPLE.", "spiffe://prod/svc"):
        peer = pki.trust.verify(chain, purpose="server", expected_names=[expected])
    assert peer.names == ("Svc.Example", "spiffe://prod/svc")  # the non-ASCII SAN is not offered for matching


@pytest.mark.parametrize("expected", ["\u212aafka.internal", "", "tab\there", b"server.test", None, 42])
def test_an_expected_name_that_is_not_printable_ascii_text_is_a_policy_error(pki: Pki, expected: object) -> None:
    with pytest.raises(xps.PolicyError, match="expected_names"):
        pki.trust.verify(pki.server.chain_der, purpose="server", expected_names=[expected])  # type: ignore[list-item]


# -- the Noise core ----------------------------------------------------------------------------------

def test_set_nonce_never_goes_back(engine: xps.Engine) -> None:
    cs = CipherState(engine, "ChaChaPoly")
    cs.initialize_key(bytes(range(32)))
    first = cs.encrypt_with_ad(b"", b"attack at dawn!!")
    for lower in (0, cs.n - 1):
        with pytest.raises(xps.NonceError, match="never go back"):
            cs.set_nonce(lower)
    assert cs.n == 1
    cs.set_nonce(1)  # the next nonce itself, and any later one, are fine
    cs.set_nonce(10)
    assert cs.encrypt_with_ad(b"", b"retreat at noon!") != first and cs.n == 11


def test_a_wipe_racing_a_rekey_leaves_no_live_key(engine: xps.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    cs = CipherState(engine, "ChaChaPoly")
    cs.initialize_key(bytes(32))
    bind = CipherState._bind
    made: list[Any] = []
    wiper: list[threading.Thread] = []

    def bind_then_wipe_from_another_thread(self: CipherState, key: Any) -> Any:
        # The new key exists, not yet installed: the moment a close() in another thread hits.
        made.append(bind(self, key))
        wiper.append(threading.Thread(target=self.wipe))
        wiper[0].start()
        wiper[0].join(0.2)  # long enough for an unsynchronised wipe() to finish
        return made[0]

    monkeypatch.setattr(CipherState, "_bind", bind_then_wipe_from_another_thread)
    cs.rekey()
    wiper[0].join(5)
    assert not cs.has_key()
    with pytest.raises(xps.KeyError_):
        cs.encrypt_with_ad(b"", b"after the wipe")
    with pytest.raises(xps.KeyError_):  # the key rekey() made was wiped as well, not left behind
        made[0].encrypt_wire(bytes(12), b"x", b"")


# -- wrong types at the public API ------------------------------------------------------------------

def _released() -> memoryview:
    view = memoryview(b"server.test")
    view.release()
    return view


def _wrong_calls(pki: Pki, engine: xps.Engine) -> dict[str, Callable[[], object]]:
    trust, chain = pki.trust, pki.client.chain_der
    return {
        "verify purpose str": lambda: trust.verify(chain, purpose="str", expected_names=None),  # type: ignore[arg-type]
        "verify purpose None": lambda: trust.verify(chain, purpose=None, expected_names=None),  # type: ignore[arg-type]
        "verify purpose list": lambda: trust.verify(chain, purpose=[], expected_names=None),  # type: ignore[arg-type]
        "verify chain None": lambda: trust.verify(None, purpose="client", expected_names=None),  # type: ignore[arg-type]
        "verify chain released": lambda: trust.verify([_released()], purpose="client",  # type: ignore[list-item]
                                                      expected_names=None),
        "verify names released": lambda: trust.verify(chain, purpose="client", expected_names=_released()),  # type: ignore[arg-type]
        "verify now naive": lambda: trust.verify(chain, purpose="client", expected_names=None,
                                                 now=dt.datetime(2030, 1, 1)),
        "Identity chain str": lambda: Identity("str", bytearray(32)),  # type: ignore[arg-type]
        "Identity chain int": lambda: Identity(-1, bytearray(32)),  # type: ignore[arg-type]
        "Trust cas None": lambda: Trust(None),  # type: ignore[arg-type]
        "Trust cas released": lambda: Trust(_released()),  # type: ignore[arg-type]
        "Trust crls of str": lambda: Trust([pki.root.certificate], ["crl"]),  # type: ignore[list-item]
        "blocking.serve port -1": lambda: blocking.serve("127.0.0.1", -1, pki.server, trust, _echo),
        "blocking.serve port 70000": lambda: blocking.serve("127.0.0.1", 70000, pki.server, trust, _echo),
        "blocking.serve port None": lambda: blocking.serve("127.0.0.1", None, pki.server, trust, _echo),  # type: ignore[arg-type]
        "blocking.connect config -1": lambda: blocking.connect("127.0.0.1", 1, pki.client, trust,
                                                               expected_name="x", config=-1),  # type: ignore[arg-type]
        "blocking.connect port 1.5": lambda: blocking.connect("127.0.0.1", 1.5, pki.client, trust,  # type: ignore[arg-type]
                                                              expected_name="x"),
        "blocking.connect host int": lambda: blocking.connect(0, 1, pki.client, trust, expected_name="x"),  # type: ignore[arg-type]
        "blocking.connect identity None": lambda: blocking.connect("127.0.0.1", 1, None, trust,  # type: ignore[arg-type]
                                                                   expected_name="x"),
        "blocking.connect name released": lambda: blocking.connect("127.0.0.1", 1, pki.client, trust,
                                                                   expected_name=_released()),  # type: ignore[arg-type]
        "connect config -1": lambda: run(connect("127.0.0.1", 1, pki.client, trust, expected_name="x",
                                                 config=-1)),  # type: ignore[arg-type]
        "serve port -1": lambda: run(serve("127.0.0.1", -1, pki.server, trust, lambda ch: asyncio.sleep(0))),
        "HandshakeState prologue int": lambda: HandshakeState("Noise_XX_25519_ChaChaPoly_SHA256", initiator=True,
                                                              engine=engine, prologue=10**18),  # type: ignore[arg-type]
        "HandshakeState prologue None": lambda: HandshakeState("Noise_XX_25519_ChaChaPoly_SHA256", initiator=True,
                                                               engine=engine, prologue=None),  # type: ignore[arg-type]
    }


WRONG_CALLS = [
    "verify purpose str", "verify purpose None", "verify purpose list", "verify chain None", "verify chain released",
    "verify names released", "verify now naive", "Identity chain str", "Identity chain int", "Trust cas None",
    "Trust cas released", "Trust crls of str", "blocking.serve port -1", "blocking.serve port 70000",
    "blocking.serve port None", "blocking.connect config -1", "blocking.connect port 1.5",
    "blocking.connect host int", "blocking.connect identity None", "blocking.connect name released",
    "connect config -1", "serve port -1", "HandshakeState prologue int", "HandshakeState prologue None"]


@pytest.mark.parametrize("call", WRONG_CALLS)
def test_a_wrong_type_at_the_public_api_is_a_policy_error(pki: Pki, engine: xps.Engine, call: str) -> None:
    with pytest.raises(xps.PolicyError):
        _wrong_calls(pki, engine)[call]()


@settings(max_examples=60, deadline=None)
@given(port=st.one_of(st.integers(-2**70, -1), st.integers(65536, 2**70), st.floats(), st.booleans(), st.none(),
                      st.text(max_size=5)))
def test_any_port_outside_0_to_65535_is_a_policy_error(pki: Pki, port: object) -> None:
    with pytest.raises(xps.PolicyError, match="port"):
        blocking.serve("127.0.0.1", port, pki.server, pki.trust, _echo)  # type: ignore[arg-type]
    with pytest.raises(xps.PolicyError, match="port"):
        blocking.connect("127.0.0.1", port, pki.client, pki.trust, expected_name="x")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(purpose=st.one_of(st.text(max_size=8), st.none(), st.integers(), st.binary(max_size=8)))
def test_any_purpose_but_client_or_server_is_a_policy_error(pki: Pki, purpose: object) -> None:
    if purpose in ("client", "server"):
        return
    with pytest.raises(xps.PolicyError, match="purpose"):
        pki.trust.verify(pki.client.chain_der, purpose=purpose, expected_names=None)  # type: ignore[arg-type]


# -- the command line ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    home = ["--home", str(d / "home")]
    assert main([*home, "pki", "init-ca", str(d / "ca"), "--name", "CA"]) == 0
    assert main([*home, "pki", "issue", "--ca", str(d / "ca"), "--name", "s", "--dns", "s.test",
                 "--out", str(d / "s")]) == 0
    return d


CLI_CASES = {
    "issue for 100000000 days": ["pki", "issue", "--ca", "{d}/ca", "--name", "a", "--dns", "a.test", "--days",
                                 "100000000", "--out", "{d}/a1"],
    "issue for -5 days": ["pki", "issue", "--ca", "{d}/ca", "--name", "a", "--dns", "a.test", "--days", "-5",
                          "--out", "{d}/a2"],
    "init-ca for 99999999 days": ["pki", "init-ca", "{d}/ca2", "--name", "X", "--days", "99999999"],
    "crl for 1e300 days": ["pki", "crl", "--ca", "{d}/ca", "--out", "{d}/c.crl", "--days", "1e300"],
    "crl for inf days": ["pki", "crl", "--ca", "{d}/ca", "--out", "{d}/c.crl", "--days", "inf"],
    "crl for nan days": ["pki", "crl", "--ca", "{d}/ca", "--out", "{d}/c.crl", "--days", "nan"],
    "crl for -1 days": ["pki", "crl", "--ca", "{d}/ca", "--out", "{d}/c.crl", "--days", "-1"],
    "unicode dns": ["pki", "issue", "--ca", "{d}/ca", "--name", "a", "--dns", "\u00fcn\u00efcode.test",
                    "--out", "{d}/a3"],
    "connect to port 70000": ["channel", "connect", "--cert", "{d}/s.crt", "--key", "{d}/s.key", "--ca",
                              "{d}/ca/ca.crt", "--port", "70000", "--expect-name", "x"],
    "connect to port -1": ["channel", "connect", "--cert", "{d}/s.crt", "--key", "{d}/s.key", "--ca",
                           "{d}/ca/ca.crt", "--port", "-1", "--expect-name", "x"],
    "serve on port -1": ["channel", "serve", "--cert", "{d}/s.crt", "--key", "{d}/s.key", "--ca", "{d}/ca/ca.crt",
                         "--port", "-1"],
    "serve on port 70000": ["channel", "serve", "--cert", "{d}/s.crt", "--key", "{d}/s.key", "--ca",
                            "{d}/ca/ca.crt", "--port", "70000"],
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_out_of_range_command_line_values_are_one_line_policy_errors(
        cli_pki: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{d}", str(cli_pki)) for a in CLI_CASES[case]]
    capsys.readouterr()
    assert main(["--home", str(cli_pki / "home"), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "XPS_ERR_POLICY" in err and "Traceback" not in err
    assert not (cli_pki / "a1.crt").exists() and not (cli_pki / "ca2").exists()


def test_a_certificate_with_an_unknown_key_algorithm_on_the_command_line(
        cli_pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = x509.load_pem_x509_certificate((cli_pki / "s.crt").read_bytes())
    (cli_pki / "odd.crt").write_bytes(_unknown_key_algorithm(cert.public_bytes(serialization.Encoding.DER)))
    capsys.readouterr()
    assert main(["--home", str(cli_pki / "home"), "channel", "connect", "--cert", str(cli_pki / "odd.crt"), "--key",
                 str(cli_pki / "s.key"), "--ca", str(cli_pki / "ca" / "ca.crt"), "--port", "1",
                 "--expect-name", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "XPS_ERR_KEY" in err and "not Ed25519" in err


# -- helpers -------------------------------------------------------------------------------------------

def _echo(ch: blocking.BlockingChannel) -> None:
    while msg := ch.recv():
        ch.send(msg)


def _wait(cond: Callable[[], object], timeout: float = 5.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    assert cond(), "condition not reached"


async def _wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def _no_thread_crashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any thread that dies of an exception (a server thread must not)."""
    crashed: list[str] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: crashed.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type}"))
    return crashed
