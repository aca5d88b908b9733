"""Application-supplied nonces are never reused under one key (issue 11, Appendix B XPS_ERR_NONCE).

Keyed AEADs record every explicit nonce exactly, and refuse further explicit nonces once
KEYED_NONCE_LIMIT have been sealed under the key (by any KeyedAead of the process); the
stateless API and every KeyedAead share one bounded per-process record of keyed hashes of
(algorithm, key, nonce) (tests/engine/test_review_api_nonces.py). Sealing the same message
again under the same pair reproduces the same ciphertext and is allowed; another message is
refused and its ciphertext never returned.
Auto nonces, ``nonce_reuse="caller"`` and AES-GCM-SIV are not recorded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import xpscerpto as xps
import xpscerpto.engine as engine_mod
from xpscerpto import Engine, EngineConfig, NonceError, SecretBytes

NONCE_SIZES = {"AES-128-GCM": 12, "AES-256-GCM": 12, "CHACHA20-POLY1305": 12, "XCHACHA20-POLY1305": 24,
               "AEGIS-256": 32}
KEY_SIZES = {"AES-128-GCM": 16}
REUSE_REFUSED = list(NONCE_SIZES)


def _key(algo: str) -> bytes:
    return os.urandom(KEY_SIZES.get(algo, 32))


@pytest.mark.parametrize("algo", REUSE_REFUSED)
def test_stateless_encrypt_refuses_a_nonce_reused_for_another_message(algo: str) -> None:
    key, nonce = _key(algo), os.urandom(NONCE_SIZES[algo])
    first = xps.aead.encrypt(algo, key, b"attack at dawn", nonce=nonce)
    with pytest.raises(NonceError, match="nonce: already used with this key"):
        xps.aead.encrypt(algo, key, b"attack at dusk", nonce=nonce)
    with pytest.raises(NonceError):  # the aad is part of the message too
        xps.aead.encrypt(algo, key, b"attack at dawn", b"other aad", nonce=nonce)
    assert xps.aead.open(algo, key, first) == b"attack at dawn"


@pytest.mark.parametrize("algo", REUSE_REFUSED)
def test_stateless_encrypt_allows_sealing_the_same_message_again(algo: str) -> None:
    # A retry reproduces the same ciphertext byte for byte: it reveals nothing new.
    key, nonce = _key(algo), os.urandom(NONCE_SIZES[algo])
    assert xps.aead.encrypt(algo, key, b"m", b"a", nonce=nonce) == xps.aead.encrypt(algo, key, b"m", b"a", nonce=nonce)


def test_the_pair_is_per_key_per_algorithm_and_in_every_form() -> None:
    nonce = os.urandom(12)
    k1, k2 = os.urandom(32), os.urandom(32)
    xps.aead.encrypt("AES-256-GCM", k1, b"one", nonce=nonce)
    xps.aead.encrypt("AES-256-GCM", k2, b"two", nonce=nonce)  # another key: fine
    xps.aead.encrypt("CHACHA20-POLY1305", k1, b"two", nonce=nonce)  # another algorithm: fine
    for key, n in ((SecretBytes(k1), nonce), (bytearray(k1), bytearray(nonce)), (memoryview(k1), memoryview(nonce))):
        with pytest.raises(NonceError):
            xps.aead.encrypt(xps.AEAD.AES_256_GCM, key, b"three", nonce=n)


def test_every_engine_of_the_process_shares_the_record() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    Engine(EngineConfig(nonce="app")).aead.encrypt("AES-256-GCM", key, b"one", nonce=nonce)
    with pytest.raises(NonceError):
        xps.aead.encrypt("AES-256-GCM", key, b"two", nonce=nonce)


def test_nonce_policy_app_refuses_reuse() -> None:
    eng = Engine(EngineConfig(nonce="app"))
    key, nonce = os.urandom(32), os.urandom(24)
    eng.aead.encrypt("XCHACHA20-POLY1305", key, b"one", nonce=nonce)
    with pytest.raises(NonceError):
        eng.aead.encrypt("XCHACHA20-POLY1305", key, b"two", nonce=nonce)


def test_a_failed_encryption_does_not_use_up_the_nonce() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    with pytest.raises(xps.PolicyError):
        xps.aead.encrypt("AES-256-GCM", key, "not bytes", nonce=nonce)  # type: ignore[arg-type]
    xps.aead.encrypt("AES-256-GCM", key, b"now the real message", nonce=nonce)


def test_caller_owned_nonces_and_aes_gcm_siv_are_not_refused() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    xps.aead.encrypt("AES-256-GCM", key, b"one", nonce=nonce, nonce_reuse="caller")
    xps.aead.encrypt("AES-256-GCM", key, b"two", nonce=nonce, nonce_reuse="caller")
    # RFC 8452: under AES-GCM-SIV a repeated nonce reveals only whether two messages are equal.
    xps.aead.encrypt("AES-256-GCM-SIV", key, b"one", nonce=nonce)
    xps.aead.encrypt("AES-256-GCM-SIV", key, b"two", nonce=nonce)


def test_auto_nonces_are_not_recorded() -> None:
    before = len(engine_mod._NONCES._seen)
    key = os.urandom(32)
    for _ in range(100):
        xps.aead.encrypt("AES-256-GCM", key, b"m")
        xps.aead.keyed("AES-256-GCM", key).encrypt(b"m")
    assert len(engine_mod._NONCES._seen) == before


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[engine_mod._NonceCache]:
    cache = engine_mod._NonceCache(8)
    monkeypatch.setattr(engine_mod, "_NONCES", cache)
    yield cache


def test_the_stateless_record_is_bounded_and_forgets_the_oldest(small_cache: engine_mod._NonceCache) -> None:
    key = os.urandom(32)
    nonces = [os.urandom(12) for _ in range(9)]
    for n in nonces:
        xps.aead.encrypt("AES-256-GCM", key, b"first", nonce=n)
    assert len(small_cache._seen) == 8
    with pytest.raises(NonceError):
        xps.aead.encrypt("AES-256-GCM", key, b"second", nonce=nonces[-1])  # remembered
    xps.aead.encrypt("AES-256-GCM", key, b"second", nonce=nonces[0])  # forgotten: the documented limit


def test_the_stateless_record_holds_no_key_bytes(small_cache: engine_mod._NonceCache) -> None:
    key = bytes(range(0x41, 0x61))
    xps.aead.encrypt("AES-256-GCM", key, b"m", nonce=bytes(12))
    for digest, tag in small_cache._seen.items():
        assert digest.bit_length() <= 64 and tag.bit_length() <= 64
        assert key not in repr(small_cache.__dict__).encode()


def test_two_threads_sealing_different_messages_under_one_nonce_cannot_both_succeed() -> None:
    for _ in range(50):
        key, nonce = os.urandom(32), os.urandom(12)
        results: list[object] = []
        start = threading.Barrier(2)

        def seal(msg: bytes, key: bytes = key, nonce: bytes = nonce, start: threading.Barrier = start,
                 results: list[object] = results) -> None:
            start.wait()
            try:
                results.append(xps.aead.encrypt("AES-256-GCM", key, msg, nonce=nonce))
            except NonceError as e:
                results.append(e)

        threads = [threading.Thread(target=seal, args=(m,)) for m in (b"one", b"two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(isinstance(r, NonceError) for r in results) == 1


# -- keyed AEADs: exact, bounded -------------------------------------------------------------------


@pytest.mark.parametrize("algo", REUSE_REFUSED)
def test_keyed_aead_refuses_a_nonce_it_already_used(algo: str) -> None:
    keyed = xps.aead.keyed(algo, _key(algo))
    nonce = os.urandom(NONCE_SIZES[algo])
    s = keyed.encrypt(b"one", nonce=nonce)
    assert keyed.encrypt(b"one", nonce=bytearray(nonce)) == s  # the same message: same bytes, allowed
    with pytest.raises(NonceError, match="already used"):
        keyed.encrypt(b"two", nonce=nonce)
    assert keyed.open(s) == b"one"


@pytest.mark.parametrize("algo", REUSE_REFUSED)
def test_keyed_encrypt_wire_shares_the_record_of_nonces_with_encrypt(algo: str) -> None:
    keyed = xps.aead.keyed(algo, _key(algo))
    nonce = os.urandom(NONCE_SIZES[algo])
    wire = keyed.encrypt_wire(nonce, b"one", b"aad")
    assert keyed.encrypt(b"one", b"aad", nonce=nonce).ciphertext_and_tag == wire
    with pytest.raises(NonceError, match="already used"):
        keyed.encrypt_wire(nonce, b"two")
    with pytest.raises(NonceError, match="already used"):
        keyed.encrypt(b"two", nonce=bytearray(nonce))
    assert keyed.decrypt(nonce, wire, b"aad") == b"one"


def test_keyed_aead_refuses_explicit_nonces_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "KEYED_NONCE_LIMIT", 5)
    keyed = xps.aead.keyed("AES-256-GCM", os.urandom(32))
    nonces = [os.urandom(12) for _ in range(6)]
    for n in nonces[:5]:
        keyed.encrypt(b"m", nonce=n)
    with pytest.raises(NonceError, match="limit per key; rotate the key"):
        keyed.encrypt(b"m", nonce=nonces[5])
    keyed.encrypt(b"m", nonce=nonces[0])  # a retry of a recorded one is still fine
    keyed.encrypt(b"auto nonces are not limited")


def test_keyed_aead_for_a_counter_protocol_is_not_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "KEYED_NONCE_LIMIT", 2)
    keyed = xps.aead.keyed("CHACHA20-POLY1305", os.urandom(32), nonce_reuse="caller")
    for counter in range(10):  # past the limit: nothing is recorded
        keyed.encrypt(b"record %d" % counter, nonce=counter.to_bytes(12, "big"))
    keyed.encrypt(b"the protocol's business", nonce=(0).to_bytes(12, "big"))


def test_keyed_record_survives_a_new_routing_table() -> None:
    eng = Engine()
    keyed = eng.aead.keyed("CHACHA20-POLY1305", os.urandom(32))
    nonce = os.urandom(12)
    keyed.encrypt(b"one", nonce=nonce)
    eng.publish(eng.build_table(config=EngineConfig(prefer={"aead.chacha20poly1305": "sodium"})))
    with pytest.raises(NonceError):
        keyed.encrypt(b"two", nonce=nonce)  # now served by another provider, same key, same record
