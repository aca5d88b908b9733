"""One process-wide record of application-supplied nonces, for keyed and stateless AEADs (review API-4).

Every KeyedAead used to keep its own record of the nonces it sealed under, separate from the
stateless API's record: the same (key, nonce) could seal two different messages through
``aead.encrypt`` then ``aead.keyed(...).encrypt``, through two keyed objects over one key, or
keyed then stateless; and KEYED_NONCE_LIMIT ("refused until the key is rotated") started again
from zero with a new object over the same key.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator

import pytest
import xpscerpto as xps
import xpscerpto.engine as engine_mod
from xpscerpto import Engine, EngineConfig, NonceError, SecretBytes

NONCE_SIZES = {"AES-256-GCM": 12, "CHACHA20-POLY1305": 12, "XCHACHA20-POLY1305": 24, "AEGIS-256": 32}
ALGOS = list(NONCE_SIZES)

Seal = Callable[[str, bytes, bytes, bytes], bytes]


def _stateless(algo: str, key: bytes, msg: bytes, nonce: bytes) -> bytes:
    return xps.aead.encrypt(algo, key, msg, nonce=nonce).ciphertext_and_tag


def _keyed(algo: str, key: bytes, msg: bytes, nonce: bytes) -> bytes:
    return xps.aead.keyed(algo, key).encrypt(msg, nonce=nonce).ciphertext_and_tag


def _keyed_wire(algo: str, key: bytes, msg: bytes, nonce: bytes) -> bytes:
    return xps.aead.keyed(algo, bytearray(key)).encrypt_wire(nonce, msg)


def _keyed_secret(algo: str, key: bytes, msg: bytes, nonce: bytes) -> bytes:
    return xps.aead.keyed(algo, SecretBytes(key)).encrypt_wire(bytearray(nonce), msg)


# Another engine of the process, with its own configuration (nonce policy app).
OTHER = Engine(EngineConfig(nonce="app", autotune=False), lazy=True)


def _other_engine_keyed(algo: str, key: bytes, msg: bytes, nonce: bytes) -> bytes:
    return OTHER.aead.keyed(algo, key).encrypt(msg, nonce=nonce).ciphertext_and_tag


PATHS: dict[str, Seal] = {"stateless": _stateless, "keyed": _keyed, "keyed-wire-bytearray-key": _keyed_wire,
                          "keyed-secretbytes-key": _keyed_secret, "keyed-other-engine": _other_engine_keyed}
# Every (first, second) pair in which at least one side is a keyed object (stateless then
# stateless is tests/engine/test_nonce_reuse.py's).
PAIRS = [(a, b) for a in PATHS for b in PATHS if "keyed" in a or "keyed" in b]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
def test_a_nonce_sealed_once_cannot_seal_another_message_under_the_same_key(algo: str, first: str,
                                                                               second: str) -> None:
    key, nonce = os.urandom(32), os.urandom(NONCE_SIZES[algo])
    wire = PATHS[first](algo, key, b"attack at dawn", nonce)
    with pytest.raises(NonceError, match="nonce: already used with this key"):
        PATHS[second](algo, key, b"attack at dusk", nonce)
    # A retry of the same message reproduces the same bytes: allowed, whichever path.
    assert PATHS[second](algo, key, b"attack at dawn", nonce) == wire
    assert xps.aead.keyed(algo, key).decrypt(nonce, wire) == b"attack at dawn"


def test_the_shared_record_is_per_algorithm_and_per_key() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    xps.aead.keyed("AES-256-GCM", key).encrypt(b"one", nonce=nonce)
    xps.aead.keyed("CHACHA20-POLY1305", key).encrypt(b"two", nonce=nonce)  # another algorithm
    xps.aead.keyed("AES-256-GCM", os.urandom(32)).encrypt(b"three", nonce=nonce)  # another key
    xps.aead.encrypt("AES-256-GCM", os.urandom(32), b"four", nonce=nonce)


def test_an_object_still_remembers_its_own_nonces_once_the_shared_record_forgot_them(
        small_cache: engine_mod._NonceCache) -> None:
    keyed = xps.aead.keyed("AES-256-GCM", os.urandom(32))
    first = os.urandom(12)
    keyed.encrypt(b"one", nonce=first)
    for _ in range(20):  # pushes `first` out of the 8-entry shared record
        xps.aead.encrypt("AES-256-GCM", os.urandom(32), b"x", nonce=os.urandom(12))
    with pytest.raises(NonceError, match="already used"):
        keyed.encrypt(b"two", nonce=first)


def test_caller_owned_nonces_are_neither_checked_nor_recorded() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    xps.aead.encrypt("AES-256-GCM", key, b"one", nonce=nonce)
    counter = xps.aead.keyed("AES-256-GCM", key, nonce_reuse="caller")
    counter.encrypt(b"the protocol's own business", nonce=nonce)  # the caller said it owns the nonces
    other = os.urandom(12)
    counter.encrypt(b"not recorded", nonce=other)
    xps.aead.encrypt("AES-256-GCM", key, b"so this is not refused", nonce=other)


def test_aes_gcm_siv_keyed_objects_are_not_recorded() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    xps.aead.keyed("AES-256-GCM-SIV", key).encrypt(b"one", nonce=nonce)
    xps.aead.keyed("AES-256-GCM-SIV", key).encrypt(b"two", nonce=nonce)
    xps.aead.encrypt("AES-256-GCM-SIV", key, b"three", nonce=nonce)


def test_auto_nonces_of_keyed_objects_are_not_recorded_or_counted() -> None:
    before = (len(engine_mod._NONCES._seen), len(engine_mod._NONCES._counts))
    keyed = xps.aead.keyed("AES-256-GCM", os.urandom(32))
    for _ in range(100):
        keyed.encrypt(b"m")
    assert (len(engine_mod._NONCES._seen), len(engine_mod._NONCES._counts)) == before


def test_two_keyed_objects_racing_on_one_nonce_cannot_both_seal() -> None:
    for _ in range(50):
        key, nonce = os.urandom(32), os.urandom(12)
        objects = [xps.aead.keyed("AES-256-GCM", key) for _ in range(2)]
        results: list[object] = []
        start = threading.Barrier(2)

        def seal(keyed: engine_mod.KeyedAead, msg: bytes, nonce: bytes = nonce, start: threading.Barrier = start,
                 results: list[object] = results) -> None:
            start.wait()
            try:
                results.append(keyed.encrypt(msg, nonce=nonce))
            except NonceError as e:
                results.append(e)

        threads = [threading.Thread(target=seal, args=(k, m)) for k, m in zip(objects, (b"one", b"two"), strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(isinstance(r, NonceError) for r in results) == 1


# -- KEYED_NONCE_LIMIT: per key, whichever objects seal -------------------------------------------


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[engine_mod._NonceCache]:
    cache = engine_mod._NonceCache(8)
    monkeypatch.setattr(engine_mod, "_NONCES", cache)
    yield cache


LIMIT_REFUSED = "limit per key; rotate the key"


def test_the_limit_counts_across_keyed_objects_over_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "KEYED_NONCE_LIMIT", 5)
    key = os.urandom(32)
    nonces = [os.urandom(12) for _ in range(7)]
    first = xps.aead.keyed("CHACHA20-POLY1305", key)
    for n in nonces[:3]:
        first.encrypt(b"m", nonce=n)
    second = xps.aead.keyed("CHACHA20-POLY1305", SecretBytes(key))
    for n in nonces[3:5]:
        second.encrypt_wire(n, b"m")
    for keyed in (first, second, xps.aead.keyed("CHACHA20-POLY1305", key)):
        with pytest.raises(NonceError, match=LIMIT_REFUSED):
            keyed.encrypt(b"m", nonce=nonces[5])
    # Retries of what the key sealed stay allowed, from any object; auto nonces are not limited.
    assert second.encrypt(b"m", nonce=nonces[0]) == first.encrypt(b"m", nonce=nonces[0])
    second.encrypt(b"auto nonces are not limited")
    # Another key, or the same key under another algorithm, has its own count.
    xps.aead.keyed("CHACHA20-POLY1305", os.urandom(32)).encrypt(b"m", nonce=nonces[6])
    xps.aead.keyed("XCHACHA20-POLY1305", key).encrypt(b"m", nonce=os.urandom(24))


def test_dropping_or_wiping_the_objects_does_not_reset_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "KEYED_NONCE_LIMIT", 3)
    key = os.urandom(32)
    for _ in range(3):
        keyed = xps.aead.keyed("AES-256-GCM", key)
        keyed.encrypt(b"m", nonce=os.urandom(12))
        keyed.wipe()
        del keyed
    gc.collect()
    with pytest.raises(NonceError, match=LIMIT_REFUSED):
        xps.aead.keyed("AES-256-GCM", key).encrypt(b"m", nonce=os.urandom(12))


def test_the_per_key_counts_are_bounded_and_hold_no_key_bytes(small_cache: engine_mod._NonceCache) -> None:
    keys = [bytes([0x41 + i]) * 32 for i in range(20)]
    for key in keys:
        xps.aead.keyed("AES-256-GCM", key).encrypt(b"m", nonce=os.urandom(12))
    assert len(small_cache._counts) == 8 and len(small_cache._seen) == 8
    held = repr(small_cache.__dict__).encode()
    for key in keys:
        assert key not in held and key.hex().encode() not in held
    for key_id in small_cache._counts:
        assert len(key_id) == 16
