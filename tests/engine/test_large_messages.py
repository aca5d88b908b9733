"""``aead.decrypt(nonce, ciphertext, tag)`` of large messages: no per-call join buffer (issue 11).

From a provider's ``detached_from`` size on, the ciphertext and its tag are opened apart (the
provider's tag-separate decrypt) or joined in a buffer each thread reuses. These tests check
the results, never the speed (``tools/bench.py`` measures that): every path gives the same
plaintext, refuses every forgery with XPS_ERR_AUTH and returns no plaintext, and a provider
whose tag-separate decrypt is wrong never gets routed.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import xpscerpto as xps
import xpscerpto._routes as routes
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto import AuthError, Engine, EngineConfig
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider
from xpscerpto.plugins.openssl import ChaCha20Poly1305Impl

ALGOS = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AES-256-GCM-SIV", "AEGIS-256"]
SIZES = [0, 1, routes.JOIN_REUSE_FROM - 1, routes.JOIN_REUSE_FROM, 1 << 20]


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {p: Engine(EngineConfig(providers=(p,))) for p in ("openssl", "sodium")}


def _cases() -> list[tuple[str, str]]:
    out = []
    for p in ("openssl", "sodium"):
        table = Engine(EngineConfig(providers=(p,))).table
        out += [(p, a) for a in ALGOS if a in table.aead]
    return out


CASES = _cases()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("provider", "algo"), CASES, ids=[f"{a}-{p}" for p, a in CASES])
def test_decrypt_of_any_size_opens_what_was_sealed_and_nothing_forged(engines: dict[str, Engine], provider: str,
                                                                      algo: str, size: int) -> None:
    eng = engines[provider]
    faults: list[str] = []
    eng.add_fault_listener(lambda p, o, e: faults.append(o))
    info = eng.aead.info(algo)
    key, pt, aad = os.urandom(info["key_size"]), os.urandom(size), os.urandom(16)
    s = eng.aead.encrypt(algo, key, pt, aad)
    ct, tag = bytes(s.ciphertext), s.tag
    for c, t in ((ct, tag), (s.ciphertext, tag), (bytearray(ct), bytearray(tag)), (memoryview(ct), memoryview(tag))):
        assert eng.aead.decrypt(algo, key, s.nonce, c, t, aad) == pt
    bad_tag = bytes([tag[0] ^ 1]) + tag[1:]
    forgeries = [(ct, bad_tag, aad), (ct, tag, aad + b"x")]
    if size:
        forgeries.append((bytes([ct[0] ^ 1]) + ct[1:], tag, aad))
        forgeries.append((ct[:-1], tag, aad))
    for c, t, a in forgeries:
        with pytest.raises(AuthError) as ei:
            eng.aead.decrypt(algo, key, s.nonce, c, t, a)
        assert ei.value.__cause__ is None or not isinstance(ei.value.__cause__, bytes)
    assert faults == []


def test_large_joins_reuse_one_buffer_per_thread() -> None:
    eng = Engine(EngineConfig(providers=("openssl",)))
    route = eng.table.aead["AES-256-GCM-SIV"]
    assert route.decrypt_detached == route._join_decrypt  # no tag-separate decrypt: joined
    key = os.urandom(32)
    s = eng.aead.encrypt("AES-256-GCM-SIV", key, os.urandom(300_000))
    ct = bytes(s.ciphertext)  # a Sealed's own view is decrypted without any join (test_whole_wire.py)
    eng.aead.decrypt("AES-256-GCM-SIV", key, s.nonce, ct, s.tag)
    buf = routes._JOIN.buf
    assert buf is not None and len(buf) >= 300_016
    eng.aead.decrypt("AES-256-GCM-SIV", key, s.nonce, ct, s.tag)
    assert routes._JOIN.buf is buf  # reused, not allocated again
    with pytest.raises(AuthError):
        eng.aead.decrypt("AES-256-GCM-SIV", key, s.nonce, ct, bytes(16))
    assert routes._JOIN.buf is buf


def test_threads_joining_large_messages_do_not_see_each_others_bytes() -> None:
    eng = Engine(EngineConfig(providers=("openssl",)))
    errors: list[str] = []

    def work(i: int) -> None:
        key = os.urandom(32)
        for n in range(20):
            pt = bytes([i]) * (200_000 + 1000 * n)
            s = eng.aead.encrypt("AES-256-GCM-SIV", key, pt)
            if eng.aead.decrypt("AES-256-GCM-SIV", key, s.nonce, bytes(s.ciphertext), s.tag) != pt:
                errors.append(f"thread {i} round {n}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


class _ReentrantCipher:
    """AES-GCM whose decrypt first opens another large message through the engine (same thread)."""

    engine: Engine | None = None

    def __init__(self, key: Any) -> None:
        self._inner = AESGCM(bytes(key))

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self._inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        if _ReentrantCipher.engine is not None and len(data) > routes.JOIN_REUSE_FROM:
            eng, _ReentrantCipher.engine = _ReentrantCipher.engine, None
            key = os.urandom(32)
            inner = eng.aead.encrypt("AES-256-GCM-SIV", key, b"\x07" * 400_000)
            assert eng.aead.decrypt("AES-256-GCM-SIV", key, inner.nonce, bytes(inner.ciphertext),
                                    inner.tag) == b"\x07" * 400_000
        return self._inner.decrypt(nonce, bytes(data), aad)


class _ReentrantAes(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    checks_buffers = True

    def cipher(self, key: Any) -> _ReentrantCipher:
        return _ReentrantCipher(key)


class _ReentrantPlugin:
    __name__ = "reentrant-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="reentrant", backend="test", version="0",
                              implementations={"aead.aes256gcm": _ReentrantAes()}))


def test_a_provider_reentering_the_engine_gets_a_join_buffer_of_its_own() -> None:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": "reentrant"}), plugins=[_ReentrantPlugin()])
    key, pt = os.urandom(32), os.urandom(300_000)
    s = eng.aead.encrypt("AES-256-GCM", key, pt)
    _ReentrantCipher.engine = eng
    assert eng.aead.decrypt("AES-256-GCM", key, s.nonce, bytes(s.ciphertext), s.tag) == pt
    assert _ReentrantCipher.engine is None  # the inner call did run


class _AcceptsAnyTag(Aead):
    """AES-GCM whose tag-separate decrypt forgets to check the tag: must never be routed."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    checks_buffers = True
    cipher: Any = AESGCM
    detached_from = 0

    def decrypt_detached(self, key: Any, nonce: bytes, ciphertext: Any, tag: Any, associated_data: Any) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        ctx = Cipher(algorithms.AES(bytes(key)), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
        return ctx.update(bytes(ciphertext)) + ctx.finalize()


class _BrokenPlugin:
    __name__ = "broken-detached-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="broken_detached", backend="test", version="0",
                              implementations={"aead.aes256gcm": _AcceptsAnyTag()}))


def test_a_tag_separate_decrypt_that_skips_the_tag_fails_its_self_test() -> None:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": "broken_detached"}), plugins=[_BrokenPlugin()])
    (result,) = [r for r in eng.state.selftests if r.provider == "broken_detached"]
    assert not result.passed and "flipped tag" in (result.failure or "")
    assert eng.aead.info("AES-256-GCM")["provider"] == "openssl"


def test_builtin_tag_separate_decrypts_are_self_tested_and_used_for_large_messages() -> None:
    eng = Engine()
    assert all(r.passed for r in eng.state.selftests)
    table = eng.table
    for algo in ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"):
        route = table.aead[algo]
        assert route.decrypt_detached != route._join_decrypt and route.detached_from == 128 * 1024
    for algo in ("XCHACHA20-POLY1305", "AEGIS-256"):
        route = table.aead[algo]
        assert route.decrypt_detached != route._join_decrypt and route.detached_from == 0


def test_a_decrypt_detached_failure_returns_no_partial_plaintext() -> None:
    # AES-GCM's tag-separate path decrypts before it checks the tag: the plaintext it made must
    # not come back in any form, not even chained in the exception.
    key, pt = os.urandom(32), b"SECRET-PLAINTEXT-" * 20_000
    s = xps.aead.encrypt("AES-256-GCM", key, pt)
    with pytest.raises(AuthError) as ei:
        xps.aead.decrypt("AES-256-GCM", key, s.nonce, s.ciphertext, bytes(16))
    e: BaseException | None = ei.value
    while e is not None:
        assert b"SECRET-PLAINTEXT" not in repr(e.args).encode()
        e = e.__cause__ or e.__context__


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.integers(0, 70), aad_len=st.integers(0, 40), flip=st.one_of(st.none(), st.integers(0, 1 << 40)),
       where=st.sampled_from(["ciphertext", "tag", "aad"]))
def test_openssl_chacha_tag_separate_decrypt_agrees_with_the_one_shot_and_refuses_every_flipped_bit(
        extra: int, aad_len: int, flip: int | None, where: str) -> None:
    # The composed ChaCha20 + Poly1305 decrypt (from detached_from on) against cryptography's
    # one-shot AEAD: same plaintext, and any single flipped bit (ciphertext, tag, aad; padding
    # boundaries around the 16-byte blocks) is an authentication failure with nothing returned.
    impl = ChaCha20Poly1305Impl()
    size = impl.detached_from + extra
    key, nonce = os.urandom(32), os.urandom(12)
    pt, aad = os.urandom(size), os.urandom(aad_len)
    wire = ChaCha20Poly1305(key).encrypt(nonce, pt, aad)
    ct, tag = bytearray(wire[:-16]), bytearray(wire[-16:])
    buf = bytearray(aad)
    if flip is None:
        assert impl.decrypt_detached(key, nonce, ct, tag, buf) == pt
        return
    target = {"ciphertext": ct, "tag": tag, "aad": buf}[where]
    if not target:
        return
    bit = flip % (len(target) * 8)
    target[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidTag):
        impl.decrypt_detached(key, nonce, ct, tag, buf)
