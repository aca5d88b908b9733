"""Bad input and abuse, each over real sockets on 127.0.0.1 against a real asyncio server.

Every bad connection ends with a typed error on the side that detects it, the server's
handler never sees a byte from it, the failure is counted under its reason, and the same
server then serves a good client (``_still_serves``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from cryptography import x509
from xpscerpto.audit import AuditLog
from xpscerpto.channel import Channel, ChannelAuthError, ChannelConfig, ChannelServer, Identity, Trust, connect, serve
from xpscerpto.channel._session import Handshake, encode_auth, signed_content
from xpscerpto.channel.pki import CertificateAuthority

from .conftest import FAST, Pki, now, run
from .proxy import Hook, Proxy, passthrough


@dataclass
class Outcome:
    client_error: xps.XpsError | None
    received: list[bytes]
    failures: Counter[str]
    replies: list[bytes] = field(default_factory=list)


async def _wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def _still_serves(server: ChannelServer, pki: Pki) -> None:
    """A good client still completes a handshake with ``server`` (its handler runs)."""
    before = server.failures.established
    async with await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                             config=FAST):
        await _wait_for(lambda: server.failures.established == before + 1)


async def _scenario(pki: Pki, *, client: Identity | None = None, server_id: Identity | None = None,
                    server_trust: Trust | None = None, client_trust: Trust | None = None,
                    expected_name: str = "server.test", server_names: tuple[str, ...] | None = ("client.test",),
                    config: ChannelConfig = FAST, client_config: ChannelConfig | None = None,
                    c2s: Hook = passthrough, s2c: Hook = passthrough, messages: tuple[bytes, ...] = (b"hello",),
                    client_hs: type[Handshake] | None = None, expect_server_failure: bool = True,
                    still_serves: bool = True) -> Outcome:
    received: list[bytes] = []

    async def handler(ch: Channel) -> None:
        while m := await ch.recv():
            received.append(m)
            await ch.send(m)

    server = await serve("127.0.0.1", 0, server_id or pki.server, server_trust or pki.trust, handler,
                         expected_names=server_names, config=config)
    proxy = Proxy(server.port, c2s, s2c)
    port = await proxy.start()
    error: xps.XpsError | None = None
    replies: list[bytes] = []
    try:
        async with server:
            try:
                if client_hs is not None:
                    ch = await _connect_with(client_hs, port, client or pki.client, client_trust or pki.trust,
                                             expected_name, client_config or config)
                else:
                    ch = await connect("127.0.0.1", port, client or pki.client, client_trust or pki.trust,
                                       expected_name=expected_name, config=client_config or config)
                async with ch:
                    for m in messages:
                        await ch.send(m)
                        replies.append(await ch.recv())
            except xps.XpsError as exc:
                error = exc
            if expect_server_failure:
                await _wait_for(lambda: sum(server.failures.failures.values()) > 0)
            out = Outcome(error, list(received), Counter(server.failures.failures), replies)
            if still_serves:
                await _still_serves(server, pki)
            return out
    finally:
        await proxy.close()


async def _connect_with(cls: type[Handshake], port: int, identity: Identity, trust: Trust, name: str,
                        cfg: ChannelConfig) -> Channel:
    from xpscerpto.channel.aio import _handshake

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hs = cls(initiator=True, identity=identity, trust=trust, config=cfg, expected_names=(name,),
             engine=xps.default_engine())
    est = await _handshake(hs, reader, writer)
    return Channel(reader, writer, est, cfg)


# -- certificates the server must refuse -----------------------------------------------------

def _bad_clients(pki: Pki) -> dict[str, tuple[Identity, str, dict[str, Any]]]:
    other = CertificateAuthority.create("Other Root")
    deep = pki.root
    for i in range(4):
        deep = CertificateAuthority.create(f"Deep {i}", parent=deep)
    past = now() - dt.timedelta(days=10)
    only_sign_certs = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    revoked_id = pki.identity("revoked", dns=["client.test"])
    revoked_ca = pki.inter.revoke(revoked_id.chain[0].serial_number)
    return {
        "wrong CA": (Identity(*_issue(other, "client", dns=["client.test"])), "cert-untrusted", {}),
        "expired": (pki.identity("client", dns=["client.test"], not_before=past,
                                 not_after=now() - dt.timedelta(days=1)), "cert-expired", {}),
        "not yet valid": (pki.identity("client", dns=["client.test"], not_before=now() + dt.timedelta(days=1)),
                          "cert-not-yet-valid", {}),
        "revoked": (revoked_id, "cert-revoked",
                    {"server_trust": Trust([pki.root.certificate], [pki.root.crl(), revoked_ca.crl()])}),
        "wrong name": (pki.identity("client", dns=["intruder.test"]), "cert-name", {}),
        "wrong key usage": (pki.identity("client", dns=["client.test"], key_usage=only_sign_certs), "cert-usage", {}),
        "no client EKU": (pki.identity("client", dns=["client.test"],
                                       extended_key_usage=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                          "cert-usage", {}),
        "chain too long": (Identity(*_issue(deep, "client", dns=["client.test"])), "chain-too-long",
                           {"server_trust": Trust([pki.root.certificate], max_chain=4)}),
        "expired CRL": (pki.client, "crl-expired", {"server_trust": Trust(
            [pki.root.certificate],
            [pki.root.crl(), pki.inter.crl(last_update=now() - dt.timedelta(days=9),
                                           next_update=now() - dt.timedelta(days=2))])}),
        "missing CRL": (pki.client, "crl-missing",
                        {"server_trust": Trust([pki.root.certificate], [pki.root.crl()])}),
    }


def _issue(ca: CertificateAuthority, name: str, **kw: Any) -> tuple[list[x509.Certificate], bytearray]:
    chain, key = ca.issue(name, **kw)
    return chain, bytearray(key.private_bytes_raw())


CLIENT_CASES = ["wrong CA", "expired", "not yet valid", "revoked", "wrong name", "wrong key usage", "no client EKU",
                "chain too long", "expired CRL", "missing CRL"]


@pytest.mark.parametrize("case", CLIENT_CASES)
def test_server_refuses_a_bad_client_certificate(pki: Pki, case: str) -> None:
    identity, reason, kwargs = _bad_clients(pki)[case]
    # Under a trust without the intermediate's current CRL no client passes: nothing to re-check.
    out = run(_scenario(pki, client=identity, still_serves=case not in ("expired CRL", "missing CRL"), **kwargs))
    assert out.failures == Counter({reason: 1})
    assert out.received == [] and out.replies == []
    # XX: the client sent its certificate last; it learns of the refusal as a cut connection.
    assert isinstance(out.client_error, xps.AuthError) and out.client_error.reason == "eof"


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong CA", "cert-untrusted"), ("wrong name", "cert-name"), ("expired", "cert-expired")])
def test_client_refuses_a_bad_server_certificate(pki: Pki, case: str, reason: str) -> None:
    other = CertificateAuthority.create("Other Root")
    servers = {
        "wrong CA": Identity(*_issue(other, "server", dns=["server.test"])),
        "wrong name": pki.identity("server", dns=["elsewhere.test"]),
        "expired": pki.identity("server", dns=["server.test"], not_before=now() - dt.timedelta(days=9),
                                not_after=now() - dt.timedelta(days=1)),
    }
    out = run(_scenario(pki, server_id=servers[case], still_serves=False))
    assert isinstance(out.client_error, ChannelAuthError) and out.client_error.reason == reason
    assert str(out.client_error).startswith("XPS_ERR_AUTH: peer certificate:")
    assert out.failures == Counter({"eof": 1}) and out.received == []


class WrongHashSigner(Handshake):
    """A real attacker: signs a handshake hash other than the one both sides hold."""

    def _write(self) -> bytes:
        hs = self._hs
        assert hs is not None and self._proto is not None
        if hs.message_index != self._my_slot:
            return super()._write()
        ident, proto = self._identity, self._proto.name

        def auth(h: bytes) -> bytes:
            wrong = bytes([h[0] ^ 1]) + h[1:]
            return encode_auth(ident.chain_der, ident.sign(signed_content(proto, True, wrong, hs.static_public or b"")))

        from xpscerpto.channel._session import frame

        return frame(hs.write_message(auth))


def test_a_signature_over_the_wrong_hash_is_refused(pki: Pki) -> None:
    out = run(_scenario(pki, client_hs=WrongHashSigner))
    assert out.failures == Counter({"bad-signature": 1}) and out.received == []


# -- handshake messages altered in flight ------------------------------------------------------

def _flip(target: int, at: int = -1) -> Hook:
    def hook(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i != target:
            return [rec], False
        b = bytearray(rec)
        b[at] ^= 0x01
        return [bytes(b)], False
    return hook


def _cut(target: int, keep: int) -> Hook:
    def hook(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        return ([rec[:keep]], True) if i == target else ([rec], False)
    return hook


def test_tampered_handshake_messages(pki: Pki) -> None:
    # message 3 (client -> server, record 2): the server fails to authenticate it.
    out = run(_scenario(pki, c2s=_flip(2)))
    assert out.failures == Counter({"auth": 1}) and out.received == []
    # message 2 (server -> client, record 1): the client refuses; the server sees it leave.
    out = run(_scenario(pki, s2c=_flip(1, at=10)))
    assert isinstance(out.client_error, xps.AuthError) and out.failures == Counter({"eof": 1})
    # message 1's ephemeral key: both sides hash different transcripts; the client fails on message 2.
    out = run(_scenario(pki, c2s=_flip(1, at=5)))
    assert isinstance(out.client_error, xps.AuthError) and out.received == []


def test_rewritten_offer_is_not_a_downgrade(pki: Pki) -> None:
    """A proxy rewriting the offered protocol (prologue-bound) breaks the handshake."""
    offer = b"Noise_XX_25519_AESGCM_SHA256"

    def rewrite(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i == 0:
            body = rec[2:].replace(b"Noise_XX_25519_ChaChaPoly_SHA256", offer)
            body = body[:5] + bytes([len(offer)]) + body[6:]
            return [len(body).to_bytes(2, "big") + body], False
        return [rec], False

    out = run(_scenario(pki, c2s=rewrite))
    assert isinstance(out.client_error, xps.AuthError) and out.received == []


def test_replayed_handshake_is_refused(pki: Pki) -> None:
    recorded: list[bytes] = []

    async def main() -> Counter[str]:
        server = await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                             expected_names=["client.test"], config=FAST)
        proxy = Proxy(server.port)
        port = await proxy.start()
        async with server:
            async with await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test",
                                     config=FAST):
                pass
            await _wait_for(lambda: len(proxy.seen["c2s"]) >= 3)
            recorded.extend(proxy.seen["c2s"][:3])
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"".join(recorded))  # preamble, message 1, message 3 of the old session
            await writer.drain()
            await _wait_for(lambda: sum(server.failures.failures.values()) > 0)
            assert (await reader.read()).startswith(b"\x00\x06XPSC\x01\x00")  # preamble + message 2, then cut
            writer.close()
            await _still_serves(server, pki)
            await proxy.close()
            return server.failures.failures

    assert run(main()) == Counter({"auth": 1})


def test_reordered_handshake_records(pki: Pki) -> None:
    held: list[bytes] = []

    def swap(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i == 0:
            held.append(rec)
            return [], False
        if i == 1:
            return [rec, held[0]], False
        return [rec], False

    out = run(_scenario(pki, c2s=swap))
    assert out.failures == Counter({"malformed": 1}) and out.received == []
    assert isinstance(out.client_error, xps.PolicyError) and out.client_error.reason == "malformed"


def test_truncated_handshake_message(pki: Pki) -> None:
    out = run(_scenario(pki, c2s=_cut(2, keep=40)))
    assert out.failures == Counter({"truncated": 1}) and out.received == []


# -- transport records altered in flight (client records 3.. are data) -------------------------

MSGS = (b"first", b"second", b"third")


def test_replayed_transport_record(pki: Pki) -> None:
    def dup(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        return ([rec, rec] if i == 3 else [rec]), False

    out = run(_scenario(pki, c2s=dup, messages=MSGS, expect_server_failure=False))
    assert out.received == [b"first"]  # the replay killed the channel: nothing after it is delivered
    assert isinstance(out.client_error, xps.AuthError)


def test_reordered_transport_records(pki: Pki) -> None:
    held: list[bytes] = []

    def swap(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        if i == 3:
            held.append(rec)
            return [], False
        if i == 4:
            return [rec, held[0]], False
        return [rec], False

    async def main() -> list[bytes]:
        received: list[bytes] = []
        errors: list[xps.XpsError] = []

        async def handler(ch: Channel) -> None:
            try:
                while m := await ch.recv():
                    received.append(m)
            except xps.XpsError as exc:
                errors.append(exc)

        server = await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=FAST)
        proxy = Proxy(server.port, swap)
        port = await proxy.start()
        async with server:
            ch = await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test", config=FAST)
            await ch.send(b"one")
            await ch.send(b"two")
            await _wait_for(lambda: errors)
            await ch.close()
            await proxy.close()
        assert isinstance(errors[0], xps.AuthError) and errors[0].reason == "auth"
        return received

    assert run(main()) == []


def test_truncated_transport_record(pki: Pki) -> None:
    async def main() -> tuple[list[bytes], list[xps.XpsError]]:
        received: list[bytes] = []
        errors: list[xps.XpsError] = []

        async def handler(ch: Channel) -> None:
            try:
                while m := await ch.recv():
                    received.append(m)
            except xps.XpsError as exc:
                errors.append(exc)

        server = await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=FAST)
        proxy = Proxy(server.port, _cut(3, keep=20))
        port = await proxy.start()
        async with server:
            ch = await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test", config=FAST)
            await ch.send(b"a message long enough to be cut in the middle")
            await _wait_for(lambda: errors)
            await ch.close()
            await proxy.close()
        return received, errors

    received, errors = run(main())
    assert received == [] and errors[0].reason == "truncated" and isinstance(errors[0], xps.AuthError)


def test_cut_connection_is_not_a_clean_end(pki: Pki) -> None:
    """Dropping the CLOSE record (a truncation attack on the stream) is an error, not EOF."""
    async def main() -> list[Any]:
        results: list[Any] = []

        async def handler(ch: Channel) -> None:
            try:
                results.append(await ch.recv())
                results.append(await ch.recv())
            except xps.XpsError as exc:
                results.append(exc)

        def drop_close(i: int, rec: bytes) -> tuple[list[bytes], bool]:
            return ([], True) if i == 4 else ([rec], False)

        server = await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=FAST)
        proxy = Proxy(server.port, drop_close)
        port = await proxy.start()
        async with server:
            ch = await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test", config=FAST)
            await ch.send(b"only")
            await ch.close()
            await _wait_for(lambda: len(results) == 2)
            await proxy.close()
        return results

    first, second = run(main())
    assert first == b"only" and isinstance(second, xps.AuthError) and second.reason == "eof"


def test_oversized_transport_record(pki: Pki) -> None:
    small = ChannelConfig(handshake_timeout_seconds=1.0, max_frame=1024)

    def inflate(i: int, rec: bytes) -> tuple[list[bytes], bool]:
        return ([b"\xff\xff" + bytes(100)], False) if i == 3 else ([rec], False)

    async def main() -> list[xps.XpsError]:
        errors: list[xps.XpsError] = []

        async def handler(ch: Channel) -> None:
            try:
                await ch.recv()
            except xps.XpsError as exc:
                errors.append(exc)

        server = await serve("127.0.0.1", 0, pki.server, pki.trust, handler, config=small)
        proxy = Proxy(server.port, inflate)
        port = await proxy.start()
        async with server:
            ch = await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test", config=small)
            await ch.send(b"x")
            await _wait_for(lambda: errors)
            await ch.close()
            await _still_serves(server, pki)
            await proxy.close()
        return errors

    (err,) = run(main())
    assert isinstance(err, xps.PolicyError) and err.reason == "oversized"


def test_a_message_over_max_message_is_refused_by_the_sender(pki: Pki) -> None:
    async def main() -> None:
        cfg = ChannelConfig(max_message=1000)
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0)) as server:
            ch = await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                               config=cfg)
            with pytest.raises(xps.PolicyError, match="max_message"):
                await ch.send(bytes(1001))
            await ch.close()

    run(main())


# -- clients that cost the server time ------------------------------------------------------------

def test_silent_client_and_slow_client_are_dropped_at_the_deadline(pki: Pki) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=0.3)

    async def main() -> tuple[Counter[str], bool]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=cfg) as server:
            silent_r, silent_w = await asyncio.open_connection("127.0.0.1", server.port)
            slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
            dropped = False
            # one byte at a time of a valid preamble, every 50 ms: would take 2 s, the deadline is 0.3 s
            for b in (b"\x00\x25XPSC\x01\x20Noise_XX_25519_ChaChaPoly_SHA256")[:40]:
                try:
                    slow_w.write(bytes([b]))
                    await slow_w.drain()
                except ConnectionError:
                    dropped = True
                    break
                await asyncio.sleep(0.05)
                if slow_r.at_eof() or slow_w.is_closing():
                    dropped = True
                    break
            assert await silent_r.read() == b""  # the server closed the silent connection
            await _wait_for(lambda: server.failures.failures["timeout"] == 2)
            for w in (silent_w, slow_w):
                w.close()
            await _still_serves(server, pki)
            return server.failures.failures, dropped or slow_r.at_eof()

    failures, dropped = run(main())
    assert failures == Counter({"timeout": 2}) and dropped


def test_pending_handshakes_are_capped(pki: Pki) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=0.5, max_pending_handshakes=4)

    async def main() -> tuple[str | None, Counter[str]]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=cfg) as server:
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
            await _wait_for(lambda: server.pending == 4)
            with pytest.raises(xps.PolicyError) as info:
                await connect("127.0.0.1", server.port, pki.client, pki.trust, expected_name="server.test",
                              config=cfg)
            await _wait_for(lambda: server.pending == 0)  # the idle ones hit the deadline
            await _still_serves(server, pki)
            for _, w in idle:
                w.close()
            return info.value.reason, server.failures.failures

    reason, failures = run(main())
    assert reason == "busy" and failures == Counter({"busy": 1, "timeout": 4})


def _from(source: str, port: int) -> socket.socket:
    """A raw connection to 127.0.0.1 from another loopback address (any 127/8 works on Linux)."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(5)
    return s


def test_one_source_holds_at_most_max_pending_per_source_slots(pki: Pki) -> None:
    # Idle sockets from one address fill its share only: another address still gets in, and
    # the first address's next connection gets `busy` at once, until its slots free up.
    from xpscerpto.channel._session import refusal

    cfg = ChannelConfig(handshake_timeout_seconds=1.0, max_pending_handshakes=8, max_pending_per_source=2)

    async def main() -> tuple[bytes, bytes, Counter[str]]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=cfg) as server:
            idle = [_from("127.0.0.2", server.port) for _ in range(2)]
            await _wait_for(lambda: server.pending == 2)
            third = _from("127.0.0.2", server.port)
            refused = await asyncio.to_thread(third.recv, 100)
            await _still_serves(server, pki)  # from 127.0.0.1: a full handshake and a message
            await _wait_for(lambda: server.pending == 0, timeout=10)  # the idle ones hit the deadline
            again = _from("127.0.0.2", server.port)  # its slots are free again
            await _wait_for(lambda: server.pending == 1)
            for s in (*idle, third, again):
                s.close()
            await _wait_for(lambda: server.pending == 0, timeout=10)
            return refused, refusal("busy"), server.failures.failures

    refused, busy, failures = run(main(), timeout=30)
    assert refused == busy and failures["busy"] == 1 and failures["timeout"] >= 2


def test_200_concurrent_handshakes(pki: Pki) -> None:
    cfg = ChannelConfig(handshake_timeout_seconds=15.0, max_pending_handshakes=256)

    async def one(port: int, i: int) -> bytes:
        async with await connect("127.0.0.1", port, pki.client, pki.trust, expected_name="server.test",
                                 config=cfg) as ch:
            await ch.send(b"n%d" % i)
            return await ch.recv()

    async def main() -> tuple[list[bytes], int, Counter[str]]:
        from .conftest import echo

        async with await serve("127.0.0.1", 0, pki.server, pki.trust, echo, config=cfg) as server:
            replies = await asyncio.gather(*(one(server.port, i) for i in range(200)))
            return replies, server.failures.established, server.failures.failures

    replies, established, failures = run(main(), timeout=60)
    assert replies == [b"n%d" % i for i in range(200)] and established == 200 and not failures


def test_garbage_and_refused_offers(pki: Pki) -> None:
    async def raw(port: int, data: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(data)
        await w.drain()
        out = await r.read()
        w.close()
        return out

    async def main() -> tuple[list[bytes], Counter[str]]:
        cfg = ChannelConfig(handshake_timeout_seconds=1.0, accept=("Noise_XX_*",))
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=cfg) as server:
            name = b"Noise_IK_25519_ChaChaPoly_SHA256"
            replies = [
                await raw(server.port, b"\x00\x05hello"),
                await raw(server.port, b"\x00\x26XPSC\x01\x20" + name),
                await raw(server.port, b"\x00\x26XPSC\x01\x20Noise_XX_448_ChaChaPoly_SHA256xx"[:40]),
                await raw(server.port, b"\x00\x0bXPSC\x01\x05Noise"),
            ]
            await _still_serves(server, pki)
            return replies, server.failures.failures

    replies, failures = run(main())
    assert replies[0] == b"\x00\x06XPSC\x01\x04"  # malformed
    assert replies[1] == b"\x00\x06XPSC\x01\x01"  # protocol refused (IK not accepted here)
    assert failures["malformed"] + failures["protocol-refused"] == 4


# -- audit ------------------------------------------------------------------------------------------

def test_failures_are_journaled_rate_limited_and_redacted(pki: Pki, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    bad = pki.identity("client", dns=["intruder.test"])

    async def main() -> int:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               expected_names=["client.test"], config=FAST, audit=log,
                               audit_per_minute=3) as server:
            for _ in range(8):
                ch = await connect("127.0.0.1", server.port, bad, pki.trust, expected_name="server.test",
                                   config=FAST)
                with pytest.raises(xps.AuthError):
                    await ch.recv()
                await ch.close()
            await _wait_for(lambda: server.failures.failures["cert-name"] == 8)
            await _still_serves(server, pki)
            return server.failures.established

    assert run(main()) == 1
    events = [e for e in log.tail(50) if e["event"] == "CHANNEL_HANDSHAKE_FAIL"]
    assert len(events) == 3
    assert {e["reason"] for e in events} == {"cert-name"} and {e["role"] for e in events} == {"responder"}
    assert events[0]["code"] == "XPS_ERR_AUTH" and events[0]["peer"] == "127.0.0.1"
    text = (tmp_path / "audit.log").read_text()
    assert "intruder" not in text and "client.test" not in text
    log.verify()


def test_a_raw_socket_peer_that_resets_mid_handshake(pki: Pki) -> None:
    async def main() -> Counter[str]:
        async with await serve("127.0.0.1", 0, pki.server, pki.trust, lambda ch: asyncio.sleep(0),
                               config=FAST) as server:
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"\x00\x26XPSC\x01\x20Noise_XX_25519_ChaChaPoly_SHA256\x00\x20" + bytes(10))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # RST
            await _wait_for(lambda: sum(server.failures.failures.values()) == 1)
            await _still_serves(server, pki)
            return server.failures.failures

    assert set(run(main())) <= {"truncated", "eof"}
