"""A call racing ``SecretBytes.wipe()`` never computes with a zeroed key (issue 10, item 1).

Two kinds of test. The threaded ones run real calls on two threads while a third wipes the
secret, with a tiny switch interval so the threads interleave inside calls; every result that
comes back must be the one the real key gives (a ciphertext that opens under the key and not
under ``bytes(32)``, the true shared secret and never X25519 of the zero scalar), and every
refusal must be XPS_ERR_KEY. The deterministic ones make the wipe happen at the worst moment,
inside the provider call, through a real provider with a hook (a race cannot be scheduled).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import Engine, EngineConfig, KeyError_, SecretBytes
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider
from xpscerpto.plugins import openssl

ZERO = bytes(32)
ROUNDS = 60


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond, so they interleave inside the engine's calls."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _race(call: Callable[[SecretBytes], Any], secret_bytes: bytes, calls: int = 40) -> tuple[list[Any], int]:
    """Two threads run ``call(secret)`` while a third wipes the secret: (results, refusals)."""
    results: list[Any] = []
    refusals = [0]
    problems: list[BaseException] = []
    for rnd in range(ROUNDS):
        secret = SecretBytes(secret_bytes)
        start = threading.Barrier(3)

        def worker(secret: SecretBytes = secret, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(calls):
                try:
                    results.append(call(secret))
                except KeyError_:
                    refusals[0] += 1
                except BaseException as exc:  # anything else is a finding
                    problems.append(exc)

        def wiper(secret: SecretBytes = secret, start: threading.Barrier = start, rnd: int = rnd) -> None:
            start.wait()
            time.sleep(2e-5 * (rnd % 8))  # wipe at a different point of the workers' runs each round
            secret.wipe()

        threads = [threading.Thread(target=worker), threading.Thread(target=worker), threading.Thread(target=wiper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert problems == [], [f"{type(p).__name__}: {p}" for p in problems]
    return results, refusals[0]


AEADS = ["AES-256-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AEGIS-256", "AES-256-GCM-SIV"]


@pytest.mark.parametrize("algo", AEADS)
def test_aead_encrypt_racing_a_wipe_never_seals_under_a_zeroed_key(algo: str, fast_switching: None) -> None:
    key = os.urandom(32)
    sealed, refused = _race(lambda s: xps.aead.encrypt(algo, s, b"m" * 64), key)
    assert sealed and refused  # both sides of the race happened
    for s in sealed:
        assert xps.aead.open(algo, key, s) == b"m" * 64  # made with the whole key...
        with pytest.raises(xps.AuthError):
            xps.aead.open(algo, ZERO, s)  # ...and never with the zeroed one


@pytest.mark.parametrize("algo", ["AES-256-GCM", "XCHACHA20-POLY1305"])
def test_aead_decrypt_racing_a_wipe_returns_only_what_the_key_sealed(algo: str, fast_switching: None) -> None:
    key = os.urandom(32)
    # A forgery under the all-zero key: it must never open while the real key is being wiped.
    forged = xps.aead.encrypt(algo, ZERO, b"forged under zeros")
    genuine = xps.aead.encrypt(algo, key, b"genuine")

    def call(s: SecretBytes) -> bytes:
        try:
            return xps.aead.open(algo, s, forged)
        except xps.AuthError:
            return xps.aead.decrypt(algo, s, genuine.nonce, genuine.ciphertext, genuine.tag)

    opened, refused = _race(call, key)
    assert refused
    assert set(opened) <= {b"genuine"}


def _seal_and_open(call: str, key: bytes) -> tuple[Callable[[Any, int], Any], Callable[[Any], bytes]]:
    """How to seal message ``i`` with a KeyedAead through ``call``, and how to open the result."""
    if call == "encrypt":
        return (lambda keyed, i: keyed.encrypt(b"m" * 64),
                lambda s: xps.aead.open("CHACHA20-POLY1305", key, s))
    return (lambda keyed, i: (i.to_bytes(12, "little"), keyed.encrypt_wire(i.to_bytes(12, "little"), b"m" * 64)),
            lambda s: xps.aead.decrypt("CHACHA20-POLY1305", key, s[0], s[1][:-16], s[1][-16:]))


@pytest.mark.parametrize("call", ["encrypt", "encrypt_wire"])
def test_keyed_aead_encrypt_racing_its_wipe_never_seals_under_a_zeroed_key(fast_switching: None, call: str) -> None:
    key = os.urandom(32)
    seal, open_ = _seal_and_open(call, key)
    sealed: list[Any] = []
    refused = 0
    counter = itertools.count()  # distinct nonces for encrypt_wire, across threads and rounds
    for rnd in range(ROUNDS):
        keyed = xps.aead.keyed("CHACHA20-POLY1305", key)
        start = threading.Barrier(3)
        lock = threading.Lock()

        def worker(keyed: Any = keyed, start: threading.Barrier = start, lock: threading.Lock = lock) -> None:
            nonlocal refused
            start.wait()
            for _ in range(40):
                try:
                    s = seal(keyed, next(counter))
                except KeyError_:
                    with lock:
                        refused += 1
                else:
                    sealed.append(s)

        def wiper(keyed: Any = keyed, start: threading.Barrier = start, rnd: int = rnd) -> None:
            start.wait()
            time.sleep(2e-5 * (rnd % 8))
            keyed.wipe()

        threads = [threading.Thread(target=worker), threading.Thread(target=worker), threading.Thread(target=wiper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sealed and refused
    for s in sealed:
        assert open_(s) == b"m" * 64


def test_x25519_racing_a_wipe_never_returns_the_zero_scalars_secret(fast_switching: None) -> None:
    sk = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    seed = sk.private_bytes_raw()
    peer_raw = peer.public_bytes_raw()
    true_shared = sk.exchange(peer)
    shared, refused = _race(lambda s: xps.x25519.derive_shared(s, peer_raw).reveal(), seed, calls=20)
    assert shared and refused
    assert set(shared) == {true_shared}  # never X25519(0, pk), which anyone can compute
    publics, _ = _race(xps.x25519.public_key, seed, calls=20)
    assert set(publics) == {sk.public_key().public_bytes_raw()}


def test_signing_kdf_and_kem_racing_a_wipe_return_only_results_of_the_whole_key(fast_switching: None) -> None:
    _pk, sk = xps.ed25519.generate_keypair()
    seed = sk.reveal()
    sigs, refused = _race(lambda s: xps.ed25519.sign(s, b"msg"), seed, calls=20)
    assert sigs and refused
    assert set(sigs) == {xps.ed25519.sign(seed, b"msg")}

    ikm = os.urandom(32)
    expected = xps.hkdf.derive(ikm, 32, info=b"i").reveal()
    okms, _ = _race(lambda s: xps.hkdf.derive(s, 32, info=b"i").reveal(), ikm, calls=20)
    assert set(okms) == {expected}
    prk_expected = xps.hkdf.expand(ikm, b"i", 32).reveal()
    okms, _ = _race(lambda s: xps.hkdf.expand(s, b"i", 32).reveal(), ikm, calls=20)
    assert set(okms) == {prk_expected}

    ek, dk = xps.mlkem768.generate_keypair()
    ct, ss = xps.mlkem768.encapsulate(ek)
    secrets, _ = _race(lambda s: xps.mlkem768.decapsulate(s, ct).reveal(), dk.reveal(), calls=5)
    assert set(secrets) == {ss.reveal()}


# -- the wipe at the worst moment, deterministically ---------------------------------------------


def test_a_temporary_secret_key_is_not_wiped_under_the_call() -> None:
    # SecretBytes(k) made in the call expression: the engine holds it for the whole call, so its
    # finalizer cannot zero the key between the length check and the provider (it used to).
    key = os.urandom(32)
    for algo in AEADS:
        s = xps.aead.encrypt(algo, SecretBytes(key), b"temporary")
        assert xps.aead.open(algo, key, s) == b"temporary"
        assert xps.aead.open(algo, SecretBytes(key), s) == b"temporary"
        assert xps.aead.decrypt(algo, SecretBytes(key), s.nonce, s.ciphertext, s.tag) == b"temporary"


_VICTIM: list[SecretBytes] = []
_VIEWS: list[memoryview] = []


def _wipe_victim() -> None:
    """What the racing thread does, run from inside the provider call (the worst moment).

    A view is held over the secret meanwhile (another thread reading it), so the wipe zeroes
    the buffer the call already holds instead of emptying it.
    """
    if _VICTIM:
        secret = _VICTIM.pop()
        _VIEWS.append(secret.view())
        secret.wipe()


class _WipingAesGcm(Aead):
    """Real AES-256-GCM whose key schedule is built after the caller's secret was wiped."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = openssl.AesGcm256.auth_errors
    checks_buffers = True

    def cipher(self, key: Any) -> AESGCM:
        _wipe_victim()
        return AESGCM(key)  # the key buffer is zeros (or empty) by now


class _WipingX25519(openssl.X25519Impl):
    def exchange(self, secret_key: Any, peer_public_key: Any) -> bytearray:
        _wipe_victim()
        try:
            sk = X25519PrivateKey.from_private_bytes(bytes(secret_key) or ZERO)
        except ValueError:
            sk = X25519PrivateKey.from_private_bytes(ZERO)
        return bytearray(sk.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public_key))))


class _WipingPlugin:
    __name__ = "wiping-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="wiping", backend="cryptography (test hook)", version="0",
                              implementations={"aead.aes256gcm": _WipingAesGcm(), "kex.x25519": _WipingX25519()}))


@pytest.fixture(scope="module")
def wiping_engine() -> Engine:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": "wiping", "kex.x25519": "wiping"}),
                 plugins=[_WipingPlugin()])
    assert eng.aead.info("AES-256-GCM")["provider"] == "wiping"
    assert eng.x25519.provider == "wiping"
    return eng


def test_a_wipe_inside_the_provider_call_discards_the_ciphertext(wiping_engine: Engine) -> None:
    for nonce in (None, os.urandom(12)):
        secret = SecretBytes(os.urandom(32))
        _VICTIM.append(secret)
        with pytest.raises(KeyError_, match="key: SecretBytes was wiped"):
            wiping_engine.aead.encrypt("AES-256-GCM", secret, b"would be sealed under zeros", nonce=nonce)
        assert secret.wiped


def test_a_wipe_inside_the_provider_call_opens_nothing(wiping_engine: Engine) -> None:
    forged = xps.aead.encrypt("AES-256-GCM", ZERO, b"forged")
    for opener in (lambda s: wiping_engine.aead.open("AES-256-GCM", s, forged),
                   lambda s: wiping_engine.aead.decrypt("AES-256-GCM", s, forged.nonce, forged.ciphertext,
                                                        forged.tag)):
        secret = SecretBytes(os.urandom(32))
        _VICTIM.append(secret)
        with pytest.raises(KeyError_):
            opener(secret)


def test_a_wipe_inside_x25519_never_returns_the_zero_scalars_secret(wiping_engine: Engine) -> None:
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    secret = SecretBytes(X25519PrivateKey.generate().private_bytes_raw())
    _VICTIM.append(secret)
    with pytest.raises(KeyError_, match="secret_key: SecretBytes was wiped during the call"):
        wiping_engine.x25519.derive_shared(secret, peer)


def test_a_secret_wiped_while_a_keyed_aead_copies_it_is_refused() -> None:
    secret = SecretBytes(os.urandom(32))
    original_view = SecretBytes.view

    def view_then_wipe(self: SecretBytes) -> memoryview:
        v = original_view(self)
        self._wiped = True  # what wipe() does first, as if another thread began it now
        return v

    SecretBytes.view = view_then_wipe  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyError_, match="wiped"):
            xps.aead.keyed("AES-256-GCM", secret)
    finally:
        SecretBytes.view = original_view  # type: ignore[method-assign]


SODIUM_AEADS = {"CHACHA20-POLY1305": "aead.chacha20poly1305", "XCHACHA20-POLY1305": "aead.xchacha20poly1305",
                "AEGIS-256": "aead.aegis256"}


@pytest.mark.parametrize("algo", sorted(SODIUM_AEADS))
def test_sodium_reading_the_key_in_place_never_seals_under_a_wiped_key(algo: str, fast_switching: None) -> None:
    """libsodium reads a SecretBytes key in place, with the GIL released: a wipe can zero it
    mid-call, and the engine must then discard the result (stateless and keyed)."""
    eng = Engine(EngineConfig(prefer={SODIUM_AEADS[algo]: "sodium"}, autotune=False))
    assert eng.aead.info(algo)["provider"] == "sodium"
    key = os.urandom(32)
    sealed, refused = _race(lambda s: eng.aead.encrypt(algo, s, b"m" * 64), key)
    keyed_sealed, keyed_refused = _race(lambda s: eng.aead.keyed(algo, s).encrypt(b"m" * 64), key, calls=10)
    assert sealed and refused and keyed_refused
    for s in sealed + keyed_sealed:
        assert eng.aead.open(algo, key, s) == b"m" * 64
        with pytest.raises(xps.AuthError):
            eng.aead.open(algo, ZERO, s)
