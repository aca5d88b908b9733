"""The keyring's self-describing ciphertext.

    offset  size  field
    0       1     format (0x01)
    1       8     key id
    9       4     key version (big-endian)
    13      1     algorithm code
    14      32    key commitment: the last 32 bytes of HKDF-SHA256(version material,
                  salt "xps-keyring/v1", info key id || version || algorithm); the first
                  bytes of the same output are the AEAD key
    46      n     nonce (the algorithm's size)
    46+n    ...   ciphertext || tag

The whole header is authenticated as associated data, before the caller's own aad. The key
commitment makes a blob open under exactly one key (a GCM ciphertext can otherwise be
crafted to open under two: "invisible salamanders"); it is checked in constant time before
the AEAD runs.
"""

from __future__ import annotations

import struct

from xpscerpto.errors import AuthError

__all__ = ["ALGORITHMS", "CODES", "FORMAT", "HEADER", "NONCE_SIZES"]

FORMAT = 0x01
HEADER = struct.Struct(">B8sIB32s")  # format, key id, version, algorithm, commitment
#: Algorithm code in the envelope -> AEAD name.
ALGORITHMS = {1: "AES-256-GCM", 2: "AES-128-GCM", 3: "CHACHA20-POLY1305", 4: "XCHACHA20-POLY1305",
              5: "AES-256-GCM-SIV", 6: "AEGIS-256"}
CODES = {name: code for code, name in ALGORITHMS.items()}
NONCE_SIZES = {"AES-256-GCM": 12, "AES-128-GCM": 12, "CHACHA20-POLY1305": 12, "XCHACHA20-POLY1305": 24,
               "AES-256-GCM-SIV": 12, "AEGIS-256": 32}
def _opaque() -> AuthError:
    # One error for every malformed blob: the caller learns nothing about which part failed.
    return AuthError("keyring: decryption failed")

