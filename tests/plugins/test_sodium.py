"""The sodium provider's AEADs, which call libsodium through PyNaCl's compiled cffi module.

PyNaCl's own bindings are the reference: same bytes out, same refusals, for every input shape
the engine's buffer contract allows; and the checks libsodium itself does not make (it reads
exactly a key's and a nonce's size from whatever pointer it gets) happen before the call.
"""

from __future__ import annotations

import array
from typing import Any

import nacl.bindings as b
import nacl.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto import SecretBytes
from xpscerpto.plugins.sodium import _AegisKeyed, _ChaChaKeyed, _XChaChaKeyed

# (keyed class, PyNaCl encrypt, PyNaCl decrypt, nonce size, tag size)
CASES: list[tuple[Any, Any, Any, int, int]] = [
    (_ChaChaKeyed, b.crypto_aead_chacha20poly1305_ietf_encrypt, b.crypto_aead_chacha20poly1305_ietf_decrypt, 12, 16),
    (_XChaChaKeyed, b.crypto_aead_xchacha20poly1305_ietf_encrypt, b.crypto_aead_xchacha20poly1305_ietf_decrypt, 24,
     16),
    (_AegisKeyed, b.crypto_aead_aegis256_encrypt, b.crypto_aead_aegis256_decrypt, 32, 32),
]
IDS = ["chacha20poly1305", "xchacha20poly1305", "aegis256"]


@pytest.mark.parametrize(("cls", "enc", "dec", "npub", "tag"), CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=600), aad=st.binary(max_size=64),
       seed=st.binary(min_size=32, max_size=32))
def test_same_bytes_as_pynacl_for_every_buffer_shape(cls: Any, enc: Any, dec: Any, npub: int, tag: int, key: bytes,
                                                      data: bytes, aad: bytes, seed: bytes) -> None:
    nonce = seed[:npub]
    wire = enc(data, aad, nonce, key)
    for shape in (bytes, bytearray, memoryview):
        cipher = cls(shape(key))
        assert cipher.encrypt(nonce, shape(data), shape(aad)) == wire
        assert cipher.decrypt(nonce, shape(wire), shape(aad)) == data == dec(wire, aad, nonce, key)
    assert cls(key).encrypt(nonce, data, None) == enc(data, b"", nonce, key)  # None is empty aad


@pytest.mark.parametrize(("cls", "enc", "dec", "npub", "tag"), CASES, ids=IDS)
def test_forgeries_and_short_inputs_are_refused_before_any_plaintext(cls: Any, enc: Any, dec: Any, npub: int,
                                                                     tag: int) -> None:
    key, nonce = bytes(range(32)), bytes(npub)
    wire = enc(b"attack at dawn", b"hdr", nonce, key)
    cipher = cls(key)
    flipped = bytearray(wire)
    flipped[0] ^= 1
    for bad, aad in ((bytes(flipped), b"hdr"), (wire, b"hdR"), (wire[:-1], b"hdr"), (wire[:tag - 1], b"hdr"),
                     (b"", b"hdr"), (wire[-tag:], b"hdr")):
        with pytest.raises(nacl.exceptions.CryptoError):
            cipher.decrypt(nonce, bad, aad)
    assert cipher.decrypt(nonce, enc(b"", b"", nonce, key), b"") == b""  # a tag alone is a valid empty message


@pytest.mark.parametrize(("cls", "enc", "dec", "npub", "tag"), CASES, ids=IDS)
def test_wrong_key_and_nonce_sizes_never_reach_libsodium(cls: Any, enc: Any, dec: Any, npub: int, tag: int) -> None:
    for key in (b"", bytes(31), bytes(33), bytearray(16), memoryview(bytes(64))):
        with pytest.raises(nacl.exceptions.TypeError, match="Key must be"):
            cls(key)
    cipher = cls(bytes(32))
    wire = enc(b"m", b"", bytes(npub), bytes(32))
    for nonce in (b"", bytes(npub - 1), bytes(npub + 1), bytearray(npub - 1)):
        with pytest.raises(nacl.exceptions.TypeError, match="Nonce must be"):
            cipher.encrypt(nonce, b"m", b"")
        with pytest.raises(nacl.exceptions.TypeError, match="Nonce must be"):
            cipher.decrypt(nonce, wire, b"")


@pytest.mark.parametrize(("cls", "enc", "dec", "npub", "tag"), CASES, ids=IDS)
def test_buffers_outside_the_contract_are_refused_not_read_raw(cls: Any, enc: Any, dec: Any, npub: int,
                                                                tag: int) -> None:
    cipher, nonce = cls(bytes(32)), bytes(npub)
    strided = memoryview(bytes(64))[::2]
    ints = memoryview(array.array("I", [1, 2, 3, 4]))
    released = memoryview(b"abcd")
    released.release()
    for bad in (strided, ints, released, 7, "text", None):
        for call in (lambda x: cipher.encrypt(nonce, x, b""), lambda x: cipher.decrypt(nonce, x, b""),
                     lambda x: cipher.encrypt(nonce, b"m", x if x is not None else 7)):
            with pytest.raises((TypeError, BufferError, ValueError)):
                call(bad)
    for bad_key in (strided, ints, released, 7, "k" * 32):
        with pytest.raises((TypeError, BufferError, ValueError)):
            cls(bad_key)


def test_a_wipeable_key_is_read_in_place_so_wiping_leaves_no_copy() -> None:
    """The keyed cipher holds no copy of a SecretBytes' key: wiping it changes what it computes."""
    secret = SecretBytes(bytes(range(32)))
    nonce = bytes(24)
    cipher = _XChaChaKeyed(secret._buf)
    before = cipher.encrypt(nonce, b"m", b"")
    assert before == b.crypto_aead_xchacha20poly1305_ietf_encrypt(b"m", b"", nonce, bytes(range(32)))
    secret.wipe()  # the cipher's pointer keeps the buffer; its bytes are now zeros
    assert cipher.encrypt(nonce, b"m", b"") == b.crypto_aead_xchacha20poly1305_ietf_encrypt(b"m", b"", nonce,
                                                                                            bytes(32))
