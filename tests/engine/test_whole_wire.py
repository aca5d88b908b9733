"""``decrypt(nonce, ct, tag)`` of an unpacked :class:`Sealed`: its wire is decrypted as it is.

``nonce, ct, tag = sealed`` gives ``ct`` as a view of the sealed ``ciphertext || tag``. From
``WHOLE_WIRE_FROM`` bytes on, the engine hands that wire to the provider instead of joining a
copy (issue 11's call shape at 64 KiB). These tests check that it does so only when the view
really is the start of a wire that goes on with exactly the given tag: an offset view, another
tag, another object or another buffer format take the ordinary path and get its answer.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto import AuthError, Engine, EngineConfig, PolicyError, XpsError
from xpscerpto._buffers import whole_wire
from xpscerpto.engine import WHOLE_WIRE_FROM
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider

_WANTED = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AES-256-GCM-SIV", "AEGIS-256"]
ALGOS = [a for a in _WANTED if a in Engine().table.aead]  # AEGIS-256 needs libsodium >= 1.0.19
SIZES = [WHOLE_WIRE_FROM - 1, WHOLE_WIRE_FROM, 64 * 1024, 300_000]


class _RecordingCipher:
    """AES-256-GCM that remembers the object each decrypt was given."""

    seen: ClassVar[list[Any]] = []

    def __init__(self, key: Any) -> None:
        self._inner = AESGCM(bytes(key))

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self._inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        _RecordingCipher.seen.append(data)
        return self._inner.decrypt(nonce, data, aad)


class _RecordingAes(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    checks_buffers = True

    def cipher(self, key: Any) -> _RecordingCipher:
        return _RecordingCipher(key)


class _RecordingPlugin:
    __name__ = "recording-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="recording", backend="test", version="0",
                              implementations={"aead.aes256gcm": _RecordingAes()}))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def recording() -> Engine:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": "recording"}), plugins=[_RecordingPlugin()])
    assert eng.aead.info("AES-256-GCM")["provider"] == "recording"
    return eng


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("algo", ALGOS)
def test_an_unpacked_sealed_opens_at_every_size(engine: Engine, algo: str, size: int) -> None:
    info = engine.aead.info(algo)
    key, pt, aad = os.urandom(info["key_size"]), os.urandom(size), b"hdr"
    nonce, ct, tag = engine.aead.encrypt(algo, key, pt, aad)
    assert engine.aead.decrypt(algo, key, nonce, ct, tag, aad) == pt
    with pytest.raises(AuthError):
        engine.aead.decrypt(algo, key, nonce, ct, bytes([tag[0] ^ 1]) + tag[1:], aad)
    with pytest.raises(AuthError):
        engine.aead.decrypt(algo, key, nonce, ct, tag, aad + b"x")


@pytest.mark.parametrize("size", SIZES)
def test_the_wire_itself_reaches_the_provider_from_the_threshold_on(recording: Engine, size: int) -> None:
    key, pt = os.urandom(32), os.urandom(size)
    s = recording.aead.encrypt("AES-256-GCM", key, pt)
    nonce, ct, tag = s
    _RecordingCipher.seen.clear()
    assert recording.aead.decrypt("AES-256-GCM", key, nonce, ct, tag) == pt
    (given_wire,) = _RecordingCipher.seen
    assert (given_wire is s.ciphertext_and_tag) == (size >= WHOLE_WIRE_FROM)
    assert bytes(given_wire) == s.ciphertext_and_tag


@pytest.mark.parametrize("offset", [1, 8, 15, 16])
def test_a_view_of_the_wire_at_an_offset_is_not_taken_for_it(recording: Engine, offset: int) -> None:
    # len(view) + 16 == len(wire) and the wire ends with the given tag: only the start differs.
    # Decrypting the wire would return a plaintext for a (ct, tag) pair that was never sealed.
    key = os.urandom(32)
    s = recording.aead.encrypt("AES-256-GCM", key, os.urandom(64 * 1024))
    wire = s.ciphertext_and_tag
    view = memoryview(wire)[offset:len(wire) - 16 + offset]
    tag = wire[-16:]
    _RecordingCipher.seen.clear()
    with pytest.raises(AuthError):
        recording.aead.decrypt("AES-256-GCM", key, s.nonce, view, tag)
    assert all(seen is not wire for seen in _RecordingCipher.seen)


def test_a_tag_other_than_the_wires_own_is_joined_and_checked(recording: Engine) -> None:
    key = os.urandom(32)
    s = recording.aead.encrypt("AES-256-GCM", key, os.urandom(64 * 1024))
    nonce, ct, tag = s
    _RecordingCipher.seen.clear()
    with pytest.raises(AuthError):
        recording.aead.decrypt("AES-256-GCM", key, nonce, ct, bytes(16))
    assert _RecordingCipher.seen and all(seen is not s.ciphertext_and_tag for seen in _RecordingCipher.seen)
    for same_tag in (bytearray(tag), memoryview(tag)):  # the same bytes in another type: still the wire
        _RecordingCipher.seen.clear()
        recording.aead.decrypt("AES-256-GCM", key, nonce, ct, same_tag)
        (given,) = _RecordingCipher.seen
        assert given is s.ciphertext_and_tag


def test_views_of_other_objects_take_the_ordinary_path(recording: Engine) -> None:
    key, pt = os.urandom(32), os.urandom(64 * 1024)
    s = recording.aead.encrypt("AES-256-GCM", key, pt)
    wire = s.ciphertext_and_tag
    others = [memoryview(bytearray(wire))[:-16],  # mutable: copied, never decrypted in place
              memoryview(wire + b"\x00")[:-17],  # the object goes on past the tag
              memoryview(wire)[:-16].toreadonly()]  # a view of a view: same object and start
    for ct in others:
        _RecordingCipher.seen.clear()
        assert recording.aead.decrypt("AES-256-GCM", key, s.nonce, ct, s.tag) == pt
        (given,) = _RecordingCipher.seen
        assert (given is wire) == (ct.obj is wire)


@pytest.mark.parametrize("size", [100, 64 * 1024])
def test_bad_views_are_refused_alike_below_and_above_the_threshold(engine: Engine, size: int) -> None:
    key = os.urandom(32)
    s = engine.aead.encrypt("AES-256-GCM", key, os.urandom(size))
    wire = s.ciphertext_and_tag
    with pytest.raises(PolicyError, match="format 'b'"):
        engine.aead.decrypt("AES-256-GCM", key, s.nonce, memoryview(wire).cast("b")[:-16], s.tag)
    released = memoryview(wire)[:-16]
    released.release()
    with pytest.raises(PolicyError, match="released memoryview"):
        engine.aead.decrypt("AES-256-GCM", key, s.nonce, released, s.tag)
    with pytest.raises(PolicyError) as ei:
        engine.aead.decrypt("AES-256-GCM", key, s.nonce, memoryview(wire)[:-16:2], wire[-16:])
    assert wire[:8].hex() not in str(ei.value)


def test_whole_wire_answers_only_for_the_start_of_an_exact_wire() -> None:
    wire = os.urandom(100)
    tag = wire[-16:]
    assert whole_wire(memoryview(wire)[:-16], tag) is wire
    assert whole_wire(memoryview(wire)[:-16], bytearray(tag)) is wire
    assert whole_wire(memoryview(wire)[16:], wire[-32:-16]) is None  # right length, wrong end
    assert whole_wire(memoryview(wire)[:-16], os.urandom(16)) is None
    assert whole_wire(memoryview(wire)[:-15], tag) is None
    assert whole_wire(memoryview(bytearray(wire))[:-16], tag) is None
    assert whole_wire(memoryview(wire).cast("b")[:-16], tag) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 40), cut=st.integers(0, 40), tag_pick=st.sampled_from(["own", "tail", "random"]),
       extra=st.integers(0, 40))
def test_any_slice_of_a_wire_gets_the_answer_of_its_copy(engine: Engine, start: int, cut: int, tag_pick: str,
                                                         extra: int) -> None:
    key = bytes(range(32))
    s = engine.aead.encrypt("AES-256-GCM", key, b"\x5a" * (WHOLE_WIRE_FROM + extra))
    wire = s.ciphertext_and_tag
    view = memoryview(wire)[start:len(wire) - cut]
    tag = {"own": s.tag, "tail": wire[len(wire) - cut - 16:len(wire) - cut], "random": os.urandom(16)}[tag_pick]
    expected: bytes | type[XpsError]
    try:
        expected = engine.aead.decrypt("AES-256-GCM", key, s.nonce, bytes(view), bytes(tag))
    except XpsError as exc:
        expected = type(exc)
    try:
        got: bytes | type[XpsError] = engine.aead.decrypt("AES-256-GCM", key, s.nonce, view, tag)
    except XpsError as exc:
        got = type(exc)
    assert got == expected
