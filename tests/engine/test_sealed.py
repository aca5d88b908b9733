"""Sealed: the nonce, ciphertext and tag of one AEAD encryption."""

from __future__ import annotations

import copy
import pickle

import pytest
import xpscerpto as xps
from xpscerpto import Sealed

NONCE = bytes(range(12))
CT = b"CIPHERTEXT-BYTES-THAT-MUST-NOT-BE-PRINTED"
TAG = bytes(range(0xF0, 0x100))


def _sealed(ct: bytes = CT, tag: bytes = TAG, nonce: bytes = NONCE) -> Sealed:
    return Sealed.of(nonce, ct + tag, len(tag))


def test_properties() -> None:
    s = _sealed()
    assert s.nonce == NONCE
    assert type(s.nonce) is bytes
    assert isinstance(s.ciphertext, memoryview)
    assert s.ciphertext.readonly
    assert bytes(s.ciphertext) == CT
    assert s.tag == TAG
    assert type(s.tag) is bytes
    assert s.tag_size == 16
    assert s.ciphertext_and_tag == CT + TAG
    assert type(s.ciphertext_and_tag) is bytes


def test_ciphertext_view_does_not_copy_the_wire_bytes() -> None:
    s = _sealed()
    assert s.ciphertext.obj is s.ciphertext_and_tag


def test_tag_size_other_than_16() -> None:
    tag = bytes(range(32))
    s = _sealed(tag=tag)
    assert s.tag == tag
    assert s.tag_size == 32
    assert bytes(s.ciphertext) == CT


def test_empty_ciphertext() -> None:
    s = _sealed(ct=b"")
    assert bytes(s.ciphertext) == b""
    assert len(s.ciphertext) == 0
    assert s.tag == TAG
    assert s.ciphertext_and_tag == TAG


def test_unpacks_as_nonce_ciphertext_tag() -> None:
    nonce, ct, tag = _sealed()
    assert nonce == NONCE
    assert bytes(ct) == CT
    assert tag == TAG


def test_indexing_and_length_match_unpacking() -> None:
    s = _sealed()
    assert len(s) == 3
    assert s[0] == NONCE
    assert bytes(s[1]) == CT
    assert s[2] == TAG
    assert s[-1] == TAG
    assert [bytes(x) for x in s[0:2]] == [NONCE, CT]


def test_is_a_tuple() -> None:
    assert isinstance(_sealed(), tuple)


def test_equality() -> None:
    assert _sealed() == _sealed()
    assert hash(_sealed()) == hash(_sealed())
    assert _sealed() != _sealed(tag=bytes(16))
    assert _sealed() != _sealed(ct=CT[:-1] + b"?")
    assert _sealed() != _sealed(nonce=bytes(12))


def test_equal_content_with_different_tag_split_is_not_equal() -> None:
    wire = CT + TAG
    assert Sealed.of(NONCE, wire, 16) != Sealed.of(NONCE, wire, 15)


def test_repr_shows_sizes_nonce_and_tag_but_not_ciphertext() -> None:
    s = _sealed()
    r = repr(s)
    assert r.startswith("Sealed(")
    assert f"<{len(CT)} bytes>" in r
    assert NONCE.hex() in r
    assert TAG.hex() in r
    assert CT.decode() not in r
    assert CT.hex() not in r
    assert CT[:8].hex() not in r
    assert repr(CT)[2:-1] not in r
    assert str(s) == r


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1), ids=lambda p: f"protocol {p}")
def test_pickle_round_trip(protocol: int) -> None:
    s = _sealed()
    back = pickle.loads(pickle.dumps(s, protocol=protocol))
    assert type(back) is Sealed
    assert back == s
    assert back.nonce == NONCE
    assert bytes(back.ciphertext) == CT
    assert back.tag == TAG
    assert back.tag_size == 16


def test_pickle_round_trip_of_a_real_encryption_still_opens() -> None:
    key = xps.random_bytes(32)
    s = xps.aead.encrypt("AES-256-GCM", key, b"payload", b"aad")
    back = pickle.loads(pickle.dumps(s))
    assert xps.aead.open("AES-256-GCM", key, back, b"aad") == b"payload"


def test_copy_and_deepcopy_keep_type_and_value() -> None:
    s = _sealed()
    for c in (copy.copy(s), copy.deepcopy(s)):
        assert type(c) is Sealed
        assert c == s
        assert c.tag == TAG


def test_engine_output_is_consistent() -> None:
    key = xps.random_bytes(32)
    s = xps.aead.encrypt("AES-256-GCM", key, b"hello world")
    assert type(s) is Sealed
    assert len(s.nonce) == 12
    assert s.tag_size == 16
    assert len(s.tag) == 16
    assert len(s.ciphertext) == len(b"hello world")
    assert s.ciphertext_and_tag == bytes(s.ciphertext) + s.tag
