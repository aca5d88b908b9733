"""Keyed signers and key-agreement keys: same results as the stateless API, rebinding, wiping."""

from __future__ import annotations

import os
import pickle
import threading

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.errors import KeyError_, PolicyError, XpsError
from xpscerpto.settings import EngineConfig

SECRET = (b"\xa5SECRET-MARK\x5a" * 3)[:32]  # recognisable in any message


@pytest.mark.parametrize("provider", ["openssl", "sodium"])
def test_keyed_signing_matches_stateless_signing(provider: str) -> None:
    eng = xps.Engine(EngineConfig(prefer={"sig.ed25519": provider}, autotune=False))
    pk, sk = eng.ed25519.generate_keypair()
    signer = eng.ed25519.keyed(sk)
    assert signer.public_key == pk and signer.provider == provider
    for msg in (b"", b"m", os.urandom(1000), bytearray(b"view"), memoryview(b"xyz")):
        sig = signer.sign(msg)
        assert sig == eng.ed25519.sign(sk, msg)  # Ed25519 is deterministic
        eng.ed25519.verify(pk, msg, sig)
    signer.wipe()
    with pytest.raises(KeyError_, match="wiped"):
        signer.sign(b"m")
    with pytest.raises(KeyError_, match="wiped"):
        _ = signer.public_key


@pytest.mark.parametrize("provider", ["openssl", "sodium"])
def test_keyed_exchange_matches_derive_shared_and_refuses_low_order_points(provider: str) -> None:
    eng = xps.Engine(EngineConfig(prefer={"kex.x25519": provider}, autotune=False))
    a_pk, a_sk = eng.x25519.generate_keypair()
    b_pk, b_sk = eng.x25519.generate_keypair()
    mine = eng.x25519.keyed(a_sk)
    assert mine.public_key == a_pk
    assert mine.exchange(b_pk) == eng.x25519.derive_shared(b_sk, a_pk)
    with pytest.raises(KeyError_, match="low-order"):
        mine.exchange(bytes(32))
    with pytest.raises(KeyError_, match="peer_public_key"):
        mine.exchange(b"short")
    mine.wipe()
    with pytest.raises(KeyError_, match="wiped"):
        mine.exchange(b_pk)


@pytest.mark.parametrize("provider", ["openssl", "sodium"])
def test_generate_keyed_holds_a_fresh_key_whose_public_key_is_its_own(provider: str) -> None:
    eng = xps.Engine(EngineConfig(prefer={"kex.x25519": provider}, autotune=False))
    a, b = eng.x25519.generate_keyed(), eng.x25519.generate_keyed()
    assert a.provider == provider and a.public_key != b.public_key
    # The public key given at construction is the one the secret really has.
    assert a.public_key == eng.x25519.public_key(a._secret)  # type: ignore[attr-defined]
    c_pk, c_sk = eng.x25519.generate_keypair()
    assert a.exchange(c_pk) == eng.x25519.derive_shared(c_sk, a.public_key)
    assert a.exchange(b.public_key) == b.exchange(a.public_key)
    # A new table rebinds it, and the public key stays right.
    other = "sodium" if provider == "openssl" else "openssl"
    eng.publish(eng.build_table(config=EngineConfig(prefer={"kex.x25519": other}, autotune=False)))
    assert a.provider == other and a.exchange(c_pk) == eng.x25519.derive_shared(c_sk, a.public_key)
    a.wipe()
    with pytest.raises(KeyError_, match="wiped"):
        a.exchange(c_pk)
    assert b.exchange(c_pk) == eng.x25519.derive_shared(c_sk, b.public_key)


def test_a_keyed_signer_follows_a_new_routing_table() -> None:
    eng = xps.Engine(EngineConfig(prefer={"sig.ed25519": "openssl"}, autotune=False))
    pk, sk = eng.ed25519.generate_keypair()
    signer = eng.ed25519.keyed(sk)
    assert signer.provider == "openssl"
    table = eng.build_table(config=EngineConfig(prefer={"sig.ed25519": "sodium"}, autotune=False))
    eng.publish(table)
    assert signer.provider == "sodium"
    eng.ed25519.verify(pk, b"after", signer.sign(b"after"))


def test_the_keyed_objects_own_their_copy_of_the_secret() -> None:
    pk, sk = xps.ed25519.generate_keypair()
    signer = xps.ed25519.keyed(sk)
    sk.wipe()  # the caller's copy: the signer keeps working
    xps.ed25519.verify(pk, b"m", signer.sign(b"m"))
    raw = bytearray(os.urandom(32))
    ex = xps.x25519.keyed(raw)
    raw[:] = bytes(32)
    assert ex.public_key == xps.x25519.public_key(ex._secret)  # type: ignore[attr-defined]


def test_keyed_objects_never_show_or_pickle_their_secret() -> None:
    seed = bytearray(SECRET)
    signer = xps.ed25519.keyed(seed)
    assert SECRET.hex() not in repr(signer) and "SECRET" not in repr(signer)
    with pytest.raises(PolicyError):
        pickle.dumps(signer)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.binary(max_size=64), st.lists(st.integers(0, 255)),
                 st.floats(), st.just(2**4000)))
def test_bad_secret_keys_are_typed_errors_without_caller_bytes(value: object) -> None:
    for make in (xps.ed25519.keyed, xps.x25519.keyed):
        try:
            make(value)  # type: ignore[arg-type]
        except XpsError as exc:
            assert isinstance(exc, KeyError_)
            if isinstance(value, bytes) and len(value) > 3:
                assert value.hex() not in str(exc) and repr(value) not in str(exc)
        else:
            assert isinstance(value, bytes) and len(value) == 32


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.floats(), st.lists(st.integers())),
       st.one_of(st.just(b""), st.integers(), st.text(min_size=1), st.binary(min_size=1, max_size=300)))
def test_bad_messages_and_contexts_are_typed_errors(message: object, context: object) -> None:
    _pk, sk = xps.ed25519.generate_keypair()
    signer = xps.ed25519.keyed(sk)
    with pytest.raises(PolicyError):
        signer.sign(message)  # type: ignore[arg-type]
    if context != b"":
        with pytest.raises(PolicyError):
            signer.sign(b"m", context)  # type: ignore[arg-type]


def test_strided_and_released_buffers() -> None:
    _pk, sk = xps.ed25519.generate_keypair()
    signer = xps.ed25519.keyed(sk)
    view = memoryview(b"abcdefgh")[::2]
    with pytest.raises(PolicyError):
        signer.sign(view)
    released = memoryview(b"abc")
    released.release()
    with pytest.raises(PolicyError):
        signer.sign(released)
    ex_pk, _ = xps.x25519.generate_keypair()
    ex = xps.x25519.keyed(os.urandom(32))
    gone = memoryview(ex_pk)
    gone.release()
    with pytest.raises(KeyError_):
        ex.exchange(gone)


def test_threads_racing_a_wipe_get_a_signature_or_a_key_error_never_anything_else() -> None:
    for _ in range(20):
        pk, sk = xps.ed25519.generate_keypair()
        signer = xps.ed25519.keyed(sk)
        start = threading.Barrier(5)
        outcomes: list[object] = []

        def sign(signer: xps.keyed.KeyedSigner = signer, start: threading.Barrier = start,
                 outcomes: list[object] = outcomes) -> None:
            start.wait()
            for _ in range(50):
                try:
                    outcomes.append(signer.sign(b"msg"))
                except KeyError_ as exc:
                    outcomes.append(exc)

        threads = [threading.Thread(target=sign) for _ in range(4)]
        for t in threads:
            t.start()
        start.wait()
        signer.wipe()
        for t in threads:
            t.join()
        sigs = [o for o in outcomes if isinstance(o, bytes)]
        assert all(xps.ed25519.is_valid(pk, b"msg", s) for s in sigs)
        assert len(outcomes) == 200
        with pytest.raises(KeyError_):
            signer.sign(b"msg")
