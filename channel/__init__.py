"""The secure channel between services (seed Workflow 5): mutual authentication on Noise.

Two services authenticate each other with X.509 certificates (Ed25519 keys) inside a Noise
handshake (``Noise_XX_25519_ChaChaPoly_SHA256`` by default; IK/NK/KK, AESGCM, BLAKE2b, PSK
and the hybrid post-quantum ``XXhfs`` with ML-KEM-768 from the same core), then exchange
length-prefixed AEAD records with directional keys, counter nonces and in-band Rekey(). Every
primitive is served by the engine's routing table. The wire format is in docs/CHANNEL.md.

* :func:`connect` / :func:`serve` / :class:`Channel`: asyncio streams (:mod:`.aio`);
* :mod:`xpscerpto.channel.blocking`: the same on plain sockets and threads;
* :class:`Identity`, :class:`Trust`: certificates, CAs, CRLs (:mod:`.identity`);
* :mod:`xpscerpto.channel.pki`: a small CA for tests and demos (``xps pki``);
* :mod:`xpscerpto.channel.vectors`: cacophony test-vector replay (``xps channel vectors``).

Example:
    >>> from xpscerpto.channel import ChannelConfig
    >>> ChannelConfig().offered_protocol
    'Noise_XX_25519_ChaChaPoly_SHA256'
"""

from ._failures import EVENT as HANDSHAKE_FAIL_EVENT
from ._failures import FailureLog
from .aio import Channel, ChannelServer, ConnectError, ConnectTimeout, IdleTimeout, connect, serve
from .config import ChannelConfig
from .identity import ChannelAuthError, Identity, PeerCertificate, Trust

__all__ = [
    "HANDSHAKE_FAIL_EVENT",
    "Channel",
    "ChannelAuthError",
    "ChannelConfig",
    "ChannelServer",
    "ConnectError",
    "ConnectTimeout",
    "FailureLog",
    "Identity",
    "IdleTimeout",
    "PeerCertificate",
    "Trust",
    "connect",
    "serve",
]
