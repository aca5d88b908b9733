"""XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) on OpenSSL's ChaCha20 core.

XChaCha20-Poly1305(key, nonce24) = ChaCha20-Poly1305(HChaCha20(key, nonce24[:16]),
0x00000000 || nonce24[16:]). OpenSSL has no HChaCha20, but its ChaCha20 keystream gives it:
a ChaCha20 block is ``rounds(state) + state`` word-wise, and HChaCha20 is words 0-3 and 12-15
of ``rounds(state)`` for the same initial state (constants, key, and the 16-byte input in the
counter/nonce words). Subtracting the known initial state recovers them exactly.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from xpscerpto.interfaces import Aead, Buffer

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_ZEROS = bytes(64)
_MASK = 0xFFFFFFFF


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The HChaCha20 subkey for a 32-byte key and a 16-byte nonce."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(_ZEROS)
    out = struct.unpack("<16I", block)
    inp = struct.unpack("<4I", nonce16)
    words = [(out[i] - _SIGMA[i]) & _MASK for i in range(4)]
    words += [(out[12 + i] - inp[i]) & _MASK for i in range(4)]
    return struct.pack("<8I", *words)


class _Keyed:
    __slots__ = ("_key",)

    def __init__(self, key: Buffer) -> None:
        self._key = bytes(key)

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))
        return sub.encrypt(b"\x00\x00\x00\x00" + nonce[16:], data, aad)

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))
        return sub.decrypt(b"\x00\x00\x00\x00" + nonce[16:], data, aad)


class XChaCha20Poly1305(Aead):
    key_sizes = (32,)
    nonce_size = 24
    tag_size = 16
    auth_errors = (InvalidTag,)

    def cipher(self, key: Buffer) -> _Keyed:
        return _Keyed(key)
