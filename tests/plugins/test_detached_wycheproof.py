"""Every built-in tag-separate decrypt against the Wycheproof files of its algorithm.

The engine sends only large messages (from ``detached_from`` on) to ``decrypt_detached``, and
Wycheproof's messages are small, so the public-API conformance run (tests/kat) never reaches
these functions: here each vector goes to the provider's ``decrypt_detached`` directly, with
the ciphertext and the tag as separate buffers. A valid vector must give its message; an
invalid one must raise the provider's authentication error and return nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.interfaces import Aead
from xpscerpto.kat.wycheproof import WycheproofCase, load_wycheproof
from xpscerpto.plugins import openssl, sodium

VECTOR_DIR = Path(__file__).resolve().parents[2] / "kat" / "wycheproof"

FILES = {
    "aead.aes128gcm": ("aes_gcm_test.json", 128),
    "aead.aes256gcm": ("aes_gcm_test.json", 256),
    "aead.chacha20poly1305": ("chacha20_poly1305_test.json", 256),
    "aead.xchacha20poly1305": ("xchacha20_poly1305_test.json", 256),
}


def _detached_impls() -> list[tuple[str, str, Aead]]:
    out = []
    for provider in (openssl.make_provider(), sodium.make_provider()):
        for op, impl in provider.implementations.items():
            if isinstance(impl, Aead) and type(impl).decrypt_detached is not Aead.decrypt_detached and op in FILES:
                out.append((provider.name, op, impl))
    return out


IMPLS = _detached_impls()


def _params() -> list[Any]:
    out = []
    for provider, op, impl in IMPLS:
        file, bits = FILES[op]
        for case in load_wycheproof(VECTOR_DIR / file):
            d = case.data
            if case.group["keySize"] == bits and len(d["iv"]) == impl.nonce_size and len(d["tag"]) == impl.tag_size:
                out.append(pytest.param(impl, case, id=f"{case.id}-{op}-{provider}"))
    return out


def test_the_builtin_tag_separate_decrypts_are_the_expected_ones() -> None:
    assert {(p, op) for p, op, _ in IMPLS} >= {
        ("openssl", "aead.aes128gcm"), ("openssl", "aead.aes256gcm"), ("openssl", "aead.chacha20poly1305"),
        ("sodium", "aead.chacha20poly1305"), ("sodium", "aead.xchacha20poly1305")}


@pytest.mark.parametrize(("impl", "case"), _params())
def test_decrypt_detached_meets_wycheproof(impl: Aead, case: WycheproofCase) -> None:
    d = case.data
    args = (d["key"], d["iv"], d["ct"], d["tag"], d["aad"])
    if case.result == "valid":
        assert impl.decrypt_detached(*args) == d["msg"]
        # Any byte buffer, not only bytes.
        assert impl.decrypt_detached(bytearray(d["key"]), d["iv"], memoryview(d["ct"]), bytearray(d["tag"]),
                                     memoryview(d["aad"])) == d["msg"]
    elif case.result == "invalid":
        with pytest.raises(impl.auth_errors):
            impl.decrypt_detached(*args)
    else:  # "acceptable": either answer, but a plaintext only if it is the message
        with contextlib.suppress(impl.auth_errors):
            assert impl.decrypt_detached(*args) == d["msg"]
