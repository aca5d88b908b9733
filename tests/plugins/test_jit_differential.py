"""The jit kernels as an independent reference for the openssl and sodium providers, and back.

Random keys, nonces, messages and associated data at every size edge (block, lane batch and
chunk boundaries of the kernels included): every implementation of an operation must produce
the same bytes, open each other's output, and refuse the same tampering.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from xpscerpto import AuthError
from xpscerpto.plugins import jit, openssl, sodium

XCHACHA, CHACHA = "aead.xchacha20poly1305", "aead.chacha20poly1305"
# The issue's edges, plus the kernels' own: the two-block Poly1305 step (from 64 B), 16-lane
# ChaCha20 batches (above 128 B, 1 KiB each), 8-lane Poly1305 groups (from 1 KiB) and their
# 64-group chunks (8 KiB).
SIZES = (0, 1, 15, 16, 17, 63, 64, 65, 96, 97, 127, 128, 129, 193, 255, 256, 257, 1023, 1024, 1025,
         2047, 2048, 2049, 4095, 4096, 8191, 8192, 8193, 16384 + 17, 65536, 65536 + 1, (1 << 20) + 3)
AAD_SIZES = (0, 1, 16, 17, 300)


def implementations(op: str) -> dict[str, Any]:
    """provider name -> implementation of ``op``, from every provider that has one."""
    out: dict[str, Any] = {}
    for p in (openssl.make_provider(), sodium.make_provider(), *jit.make_providers(mask="")):
        if op in p.implementations:
            out[p.name] = p.implementations[op]
    return out


def opens(impl: Any, key: bytes, nonce: bytes, wire: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None if the implementation refused (its own auth error or AuthError)."""
    try:
        return impl.cipher(key).decrypt(nonce, wire, aad)  # type: ignore[no-any-return]
    except (AuthError, *impl.auth_errors):
        return None


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("op", [CHACHA, XCHACHA])
def test_every_implementation_agrees(jit_ready: jit.JitStatus, op: str, size: int) -> None:
    impls = implementations(op)
    assert {"jit"} | ({"sodium", "jit-openssl"} if op == XCHACHA else {"openssl", "sodium"}) <= set(impls)
    nonce_size = 24 if op == XCHACHA else 12
    for aad_size in AAD_SIZES if size <= 4096 else (0, 17):
        key, nonce = os.urandom(32), os.urandom(nonce_size)
        msg, aad = os.urandom(size), os.urandom(aad_size)
        wires = {name: i.cipher(key).encrypt(nonce, msg, aad) for name, i in impls.items()}
        assert len(set(wires.values())) == 1, {n: w[-16:].hex() for n, w in wires.items()}
        wire = wires["jit"]
        assert len(wire) == size + 16
        for name, i in impls.items():
            assert opens(i, key, nonce, wire, aad) == msg, name


@pytest.mark.parametrize("size", (0, 1, 16, 63, 64, 65, 300, 1024, 4097, 65536))
@pytest.mark.parametrize("op", [CHACHA, XCHACHA])
def test_every_implementation_refuses_the_same_tampering(jit_ready: jit.JitStatus, op: str, size: int) -> None:
    impls = implementations(op)
    nonce_size = 24 if op == XCHACHA else 12
    key, nonce, msg, aad = os.urandom(32), os.urandom(nonce_size), os.urandom(size), os.urandom(20)
    wire = impls["jit"].cipher(key).encrypt(nonce, msg, aad)
    flips = sorted({0, size // 2, max(size - 1, 0), size, size + 15}) if size else [0, 15]
    for at in flips:
        for bit in (0x01, 0x80):
            bad = bytearray(wire)
            bad[at] ^= bit
            for name, i in impls.items():
                assert opens(i, key, nonce, bytes(bad), aad) is None, (name, at, bit)
    other_nonce = bytearray(nonce)
    other_nonce[-1] ^= 1
    other_key = bytearray(key)
    other_key[0] ^= 1
    for name, i in impls.items():
        assert opens(i, key, bytes(other_nonce), wire, aad) is None, name
        assert opens(i, bytes(other_key), nonce, wire, aad) is None, name
        assert opens(i, key, nonce, wire, aad + b"!") is None, name
        if size:  # (shorter than a tag, libsodium's binding raises ValueError: the engine never asks)
            assert opens(i, key, nonce, wire[:-1], aad) is None, name


def test_xchacha_uses_the_whole_nonce(jit_ready: jit.JitStatus) -> None:
    """The HChaCha20 part (nonce[:16]) and the ChaCha20 part (nonce[16:]) both matter."""
    key, msg = os.urandom(32), os.urandom(100)
    for name, i in implementations(XCHACHA).items():
        base = os.urandom(24)
        seen = {i.cipher(key).encrypt(base, msg, b"")}
        for at in (0, 15, 16, 23):
            n = bytearray(base)
            n[at] ^= 1
            seen.add(i.cipher(key).encrypt(bytes(n), msg, b""))
        assert len(seen) == 5, name
