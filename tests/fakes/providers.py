"""Test providers over real pyca/cryptography, each with one deliberate property.

They are real plugins (a ``@hookimpl`` on an object) so tests exercise the same discovery,
validation, self-test and routing path as the built-ins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider


class RealAesGcm256(Aead):
    """AES-256-GCM exactly as cryptography computes it."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    cipher: Any = AESGCM


class _WrongCipher:
    def __init__(self, key: bytes) -> None:
        self._inner = AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        out = bytearray(self._inner.encrypt(nonce, data, aad))
        out[0] ^= 1  # a miscompiled kernel: wrong first byte
        return bytes(out)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._inner.decrypt(nonce, data, aad)


class WrongAesGcm256(RealAesGcm256):
    """Produces wrong ciphertext: must fail its KAT and never be routed."""

    def cipher(self, key: Any) -> _WrongCipher:
        return _WrongCipher(bytes(key))


@dataclass
class ProviderPlugin:
    """A plugin object registering the given providers."""

    providers: tuple[Provider, ...]
    __name__: str = "test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        for p in self.providers:
            registry.add(p)


def aes_provider(name: str, impl: Aead | None = None, priority: int = 0) -> Provider:
    """A provider implementing only aead.aes256gcm."""
    return Provider(name=name, backend="test", version="1",
                    implementations={"aead.aes256gcm": impl or RealAesGcm256()}, priority=priority)
