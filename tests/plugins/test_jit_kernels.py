"""The numba kernels themselves: published known answers, length refusals, compiled code.

Vectors are data (``kat/rfc8439/primitives.json``, see its SOURCE.md): one test per vector.
Differential tests against OpenSSL and libsodium are in test_jit_differential.py, the AEAD
Wycheproof files in test_jit_wycheproof.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.poly1305 import Poly1305
from xpscerpto.plugins import jit

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "kat" / "rfc8439" / "primitives.json").read_text())
# Block (16/64 B), two-block Poly1305 step (from 64 B), wide ChaCha20 (above 128 B, 1 KiB batches),
# wide Poly1305 (from 1 KiB, 8 KiB chunks) edges.
SIZES = (0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 192, 193, 255, 256, 257, 320, 321,
         1023, 1024, 1025, 2047, 2048, 2049, 2063, 4095, 4096, 8191, 8192, 8193, 65536, 65537)


def kernels() -> Any:
    """The compiled kernels module (importing it is only allowed once warm-up ran)."""
    from xpscerpto.plugins import _jit_kernels

    return _jit_kernels


def by_source(section: str) -> list[Any]:
    return [pytest.param(v, id=v["source"]) for v in VECTORS[section]]


@pytest.mark.parametrize("v", by_source("hchacha20"))
def test_hchacha20_known_answer(jit_ready: jit.JitStatus, v: dict[str, Any]) -> None:
    out = bytearray(32)
    assert kernels().hchacha20(bytes.fromhex(v["key"]), bytes.fromhex(v["input"]), out) == 0
    assert out.hex() == v["subkey"]


@pytest.mark.parametrize("v", by_source("chacha20"))
def test_chacha20_known_answer(jit_ready: jit.JitStatus, v: dict[str, Any]) -> None:
    pt = bytes.fromhex(v["plaintext"])
    out = bytearray(len(pt))
    assert kernels().chacha20_xor(bytes.fromhex(v["key"]), bytes.fromhex(v["nonce"]), v["counter"], pt, out) == 0
    assert out.hex() == v["ciphertext"]


@pytest.mark.parametrize("v", by_source("poly1305"))
def test_poly1305_known_answer(jit_ready: jit.JitStatus, v: dict[str, Any]) -> None:
    out = bytearray(16)
    assert kernels().poly1305_mac(bytes.fromhex(v["key"]), bytes.fromhex(v["msg"]), out) == 0
    assert out.hex() == v["tag"]


@pytest.mark.parametrize("size", SIZES)
def test_chacha20_matches_openssl_at_every_block_and_batch_edge(jit_ready: jit.JitStatus, size: int) -> None:
    key, nonce, data = os.urandom(32), os.urandom(12), os.urandom(size)
    for counter in (0, 1, 0x7FFFFFFF, (1 << 32) - 1 - (size + 63) // 64):
        out = bytearray(size)
        assert kernels().chacha20_xor(key, nonce, counter, data, out) == 0
        want = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None).encryptor()
        assert bytes(out) == want.update(data), counter


@pytest.mark.parametrize("size", SIZES)
def test_poly1305_matches_openssl_at_every_block_and_lane_edge(jit_ready: jit.JitStatus, size: int) -> None:
    for key in (os.urandom(32), b"\xff" * 32):
        data = os.urandom(size)
        out = bytearray(16)
        assert kernels().poly1305_mac(key, data, out) == 0
        assert bytes(out) == Poly1305.generate_tag(key, data)
        ones = b"\xff" * size  # every limb at its maximum: the carries and the final reduction
        assert kernels().poly1305_mac(key, ones, out) == 0
        assert bytes(out) == Poly1305.generate_tag(key, ones)


def test_hchacha20_matches_the_demo_capsules_openssl_derivation(jit_ready: jit.JitStatus) -> None:
    """An independent derivation: HChaCha20 recovered from OpenSSL's ChaCha20 keystream."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "capsules" / "demo-capsule" / "xchacha.py"
    spec = importlib.util.spec_from_file_location("demo_xchacha", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for _ in range(64):
        key, nonce = os.urandom(32), os.urandom(24)
        out = bytearray(32)
        assert kernels().hchacha20(key, nonce, out) == 0  # reads nonce[:16]
        assert bytes(out) == demo.hchacha20(key, nonce[:16])


def test_chacha20_refuses_a_counter_that_would_wrap(jit_ready: jit.JitStatus) -> None:
    k = kernels()
    key, nonce = os.urandom(32), os.urandom(12)
    last = (1 << 32) - 1
    assert k.chacha20_xor(key, nonce, last, bytes(64), bytearray(64)) == 0  # exactly the last block
    out = bytearray(65)
    assert k.chacha20_xor(key, nonce, last, bytes(65), out) == k.BAD_LENGTH  # would need block 2^32
    assert out == bytearray(65)
    for counter in (-1, 1 << 32):
        assert k.chacha20_xor(key, nonce, counter, b"", bytearray()) == k.BAD_LENGTH


# Every entry point, called with one buffer of the wrong length at a time: it must return
# BAD_LENGTH and leave the output untouched (numba does no bounds checks: the kernels must).
BAD_CALLS = {
    "hchacha20 short key": ("hchacha20", (31, 16), 32),
    "hchacha20 long key": ("hchacha20", (33, 24), 32),
    "hchacha20 short input": ("hchacha20", (32, 15), 32),
    "hchacha20 short output": ("hchacha20", (32, 16), 31),
    "poly1305 short key": ("poly1305_mac", (31, 10), 16),
    "poly1305 short output": ("poly1305_mac", (32, 10), 15),
    "chacha20 short key": ("chacha20_xor", (31, 12, "ctr", 10), 10),
    "chacha20 short nonce": ("chacha20_xor", (32, 11, "ctr", 10), 10),
    "chacha20 output size": ("chacha20_xor", (32, 12, "ctr", 10), 11),
    "seal short key": ("chacha20poly1305_seal", (31, 12, 10, 3), 26),
    "seal long nonce": ("chacha20poly1305_seal", (32, 13, 10, 3), 26),
    "seal output size": ("chacha20poly1305_seal", (32, 12, 10, 3), 25),
    "open short key": ("chacha20poly1305_open", (31, 12, 26, 3), 10),
    "open short nonce": ("chacha20poly1305_open", (32, 11, 26, 3), 10),
    "open output size": ("chacha20poly1305_open", (32, 12, 26, 3), 11),
    "open shorter than a tag": ("chacha20poly1305_open", (32, 12, 15, 3), 0),
    "xseal short key": ("xchacha20poly1305_seal", (31, 24, 10, 3), 26),
    "xseal 12-byte nonce": ("xchacha20poly1305_seal", (32, 12, 10, 3), 26),
    "xseal output size": ("xchacha20poly1305_seal", (32, 24, 10, 3), 27),
    "xopen short key": ("xchacha20poly1305_open", (31, 24, 26, 3), 10),
    "xopen 25-byte nonce": ("xchacha20poly1305_open", (32, 25, 26, 3), 10),
    "xopen output size": ("xchacha20poly1305_open", (32, 24, 26, 3), 9),
    "xopen shorter than a tag": ("xchacha20poly1305_open", (32, 24, 15, 3), 0),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_every_entry_point_refuses_wrong_lengths_and_writes_nothing(jit_ready: jit.JitStatus, name: str) -> None:
    fn_name, sizes, out_size = BAD_CALLS[name]
    args: list[Any] = [1 if s == "ctr" else b"\xaa" * int(s) for s in sizes]
    out = bytearray(out_size)
    assert getattr(kernels(), fn_name)(*args, out) == kernels().BAD_LENGTH
    assert out == bytearray(out_size)


def test_a_refused_tag_writes_no_plaintext(jit_ready: jit.JitStatus) -> None:
    k = kernels()
    key, nonce, msg = os.urandom(32), os.urandom(24), os.urandom(300)
    sealed = bytearray(len(msg) + 16)
    assert k.xchacha20poly1305_seal(key, nonce, msg, b"aad", sealed) == 0
    for at in (0, len(msg) - 1, len(msg), len(sealed) - 1):
        bad = bytearray(sealed)
        bad[at] ^= 0x80
        out = bytearray(len(msg))
        assert k.xchacha20poly1305_open(key, nonce, bytes(bad), b"aad", out) == 0
        assert out == bytearray(len(msg)), f"plaintext written after a refused tag (flip at {at})"
    out = bytearray(len(msg))
    assert k.xchacha20poly1305_open(key, nonce, bytes(sealed), b"aad", out) == 1
    assert out == msg


def test_entry_points_refuse_other_argument_types_instead_of_compiling(jit_ready: jit.JitStatus) -> None:
    """Explicit signatures: the dispatcher raises for a new type, it never compiles on a call."""
    import numpy as np

    for name, dispatcher in kernels().KERNELS.items():
        assert len(dispatcher.signatures) == 1, name
        with pytest.raises(TypeError, match="No matching definition"):
            dispatcher(*(np.zeros(32, np.uint8),) * len(dispatcher.signatures[0]))
        assert len(dispatcher.signatures) == 1, name


# x86-64 floating-point arithmetic and conversions: a uint64 op int64 promotion would show here.
_FLOAT_OPS = re.compile(r"^\s+v?(add|sub|mul|div|sqrt|min|max)[sp][sd]\s|^\s+v?cvt|^\s+f[a-z0-9]+\s", re.MULTILINE)


def test_compiled_kernels_have_no_floating_point_instruction(jit_ready: jit.JitStatus) -> None:
    """Integer-only arithmetic: what the constant-time argument in _jit_kernels relies on.

    numba types ``uint64 op int64`` as float64; one such slip in the limb arithmetic would be
    both wrong and data-dependent in time. The session compiled into a fresh directory, so the
    assembly is available (numba cannot show it for code loaded from its cache).
    """
    for name, dispatcher in kernels().KERNELS.items():
        asm = dispatcher.inspect_asm(dispatcher.signatures[0])
        instructions = len(re.findall(r"^\t[a-z]", asm, re.MULTILINE))
        assert instructions > 500, f"{name}: {instructions} instructions: not the compiled kernel?"
        found = _FLOAT_OPS.findall(asm)
        assert not found, f"{name}: floating-point instructions {sorted(set(found))}"
