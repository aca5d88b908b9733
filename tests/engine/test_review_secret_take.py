"""Review API-2: ``SecretBytes.take`` adopts only a plain ``bytearray``.

It once adopted any subclass. The call paths read a SecretBytes' buffer with ``len()``, so a
subclass claiming 32 bytes for a 16-byte key made AES-256-GCM run as AES-128-GCM, and made
Ed25519 and X25519 report the caller's key as a provider fault (XPS_ERR_INTERNAL, fault
listeners: the capsule updater's rollback trigger).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto import Engine, EngineConfig, SecretBytes
from xpscerpto.errors import KeyError_, KeyTypeError, XpsError


class _Lying(bytearray):
    """Claims 32 bytes whatever it holds."""

    def __len__(self) -> int:
        return 32


class _Honest(bytearray):
    """A subclass that does nothing odd: still not adopted (its methods could change)."""


@pytest.fixture
def faults() -> tuple[Engine, list[tuple[str, str, str]]]:
    eng = Engine(EngineConfig(providers=("openssl", "sodium")))
    seen: list[tuple[str, str, str]] = []
    eng.add_fault_listener(lambda p, op, exc: seen.append((p, op, type(exc).__name__)))
    return eng, seen


def _take16() -> SecretBytes:
    return SecretBytes.take(_Lying(bytes(range(1, 17))))


_CALLS: dict[str, Callable[[Engine], Any]] = {
    "aead.encrypt AES-256-GCM": lambda e: e.aead.encrypt("AES-256-GCM", _take16(), b"attack at dawn"),
    "aead.decrypt AES-256-GCM": lambda e: e.aead.decrypt("AES-256-GCM", _take16(), bytes(12), b"c", bytes(16)),
    "aead.keyed AES-256-GCM": lambda e: e.aead.keyed("AES-256-GCM", _take16()),
    "ed25519.sign": lambda e: e.ed25519.sign(_take16(), b"m"),
    "ed25519.public_key": lambda e: e.ed25519.public_key(_take16()),
    "x25519.derive_shared": lambda e: e.x25519.derive_shared(_take16(), e.x25519.generate_keypair()[0]),
}


@pytest.mark.parametrize("name", list(_CALLS))
def test_a_lying_subclass_is_refused_before_any_call_and_is_no_fault(
        name: str, faults: tuple[Engine, list[tuple[str, str, str]]]) -> None:
    eng, seen = faults
    refusal = r"^XPS_ERR_KEY: buf: SecretBytes\.take adopts a plain bytearray, got _Lying of 16 bytes"
    with pytest.raises(KeyTypeError, match=refusal):
        _CALLS[name](eng)
    assert seen == []


@pytest.mark.parametrize("cls", [_Lying, _Honest])
def test_take_refuses_every_subclass_without_echoing_its_bytes(cls: type[bytearray]) -> None:
    buf = cls(b"\x01secret-key-bytes")
    with pytest.raises(XpsError) as info:
        SecretBytes.take(buf)
    err = info.value
    assert isinstance(err, KeyError_) and isinstance(err, TypeError) and err.code == "XPS_ERR_KEY"
    assert str(err).startswith("XPS_ERR_KEY: buf: ") and "secret-key" not in str(err)
    assert bytearray.__len__(buf) == 17 and buf == b"\x01secret-key-bytes"  # left as it was: not adopted


def test_take_still_adopts_a_plain_bytearray_in_place() -> None:
    buf = bytearray(range(32))
    s = SecretBytes.take(buf)
    assert type(s._buf) is bytearray and s._buf is buf
    assert xps.aead.open("AES-256-GCM", s, xps.aead.encrypt("AES-256-GCM", s, b"m")) == b"m"
    s.wipe()
    assert len(buf) == 0


def test_the_other_constructors_never_hold_a_subclass() -> None:
    for src in (_Lying(bytes(16)), _Honest(bytes(16)), memoryview(_Honest(bytes(16)))):
        s = SecretBytes(src)
        assert type(s._buf) is bytearray and bytearray.__len__(s._buf) == 16 and len(s) == 16
    keyed = xps.aead.keyed("AES-256-GCM", SecretBytes(_Honest(bytes(32))))
    assert type(keyed._key._buf) is bytearray
