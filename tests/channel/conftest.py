"""Fixtures for the channel tests: a real PKI (root, intermediate, leaves, CRLs) and helpers
that run a real server on 127.0.0.1 and talk to it over real sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import xpscerpto as xps
from xpscerpto.channel import Channel, ChannelConfig, Identity, Trust
from xpscerpto.channel.pki import CertificateAuthority

T = TypeVar("T")

#: Short limits so that abuse tests take a fraction of a second each.
FAST = ChannelConfig(handshake_timeout_seconds=1.0)


@dataclass
class Pki:
    root: CertificateAuthority
    inter: CertificateAuthority
    server: Identity
    client: Identity
    trust: Trust

    def identity(self, name: str, ca: CertificateAuthority | None = None, **kwargs: Any) -> Identity:
        chain, key = (ca or self.inter).issue(name, **kwargs)
        return Identity(chain, bytearray(key.private_bytes_raw()))

    def trust_with(self, **kwargs: Any) -> Trust:
        return Trust([self.root.certificate], [self.root.crl(), self.inter.crl()], **kwargs)


@pytest.fixture(scope="session")
def pki() -> Pki:
    root = CertificateAuthority.create("Test Root")
    inter = CertificateAuthority.create("Test Intermediate", parent=root)
    server = Identity(*_pair(inter, "server", dns=["server.test"]))
    client = Identity(*_pair(inter, "client", dns=["client.test"], uris=["spiffe://test/client"]))
    trust = Trust([root.certificate], [root.crl(), inter.crl()])
    return Pki(root, inter, server, client, trust)


def _pair(ca: CertificateAuthority, name: str, **kwargs: Any) -> tuple[Any, bytearray]:
    chain, key = ca.issue(name, **kwargs)
    return chain, bytearray(key.private_bytes_raw())


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run a coroutine on a fresh event loop, bounded in time (no test may hang)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def echo(ch: Channel) -> None:
    while msg := await ch.recv():
        await ch.send(msg)


Handler = Callable[[Channel], Awaitable[None]]


def handshake_records(wire: bytes) -> list[bytes]:
    """The handshake messages in ``wire`` (each behind its 2-byte big-endian length)."""
    out = []
    while wire:
        n = int.from_bytes(wire[:2], "big")
        out.append(wire[2:2 + n])
        wire = wire[2 + n:]
    return out


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="session")
def engine() -> xps.Engine:
    return xps.default_engine()
