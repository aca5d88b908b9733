"""Publisher keys, detached manifest signatures, and the trust store.

Capsule signatures are made and checked with pyca/cryptography's Ed25519 *directly*, never
through the engine's routing table: a capsule may replace ``sig.ed25519``, and the code that
decides whether to accept capsules must not be replaceable by one.
"""

from .keys import PublisherKey, generate_keypair, key_id, load_private_key, load_public_key, sign, verify
from .trust import Rejection, TrustedKey, TrustStore, VerificationResult

__all__ = [
    "PublisherKey",
    "Rejection",
    "TrustStore",
    "TrustedKey",
    "VerificationResult",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign",
    "verify",
]
