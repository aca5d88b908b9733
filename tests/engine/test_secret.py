"""SecretBytes, secure_wipe and constant_time_eq: wipeable, never printed, pickled or copied."""

from __future__ import annotations

import array
import contextlib
import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import xpscerpto as xps
from hypothesis import given
from hypothesis import strategies as st
from xpscerpto import KeyError_, SecretBytes, constant_time_eq, secure_wipe

# A key nobody would mistake for filler: every byte distinct and printable, so a leak shows in
# any rendering (raw, repr, hex, latin-1).
SECRET = bytes(range(0x41, 0x41 + 32))


def _renderings(secret: bytes) -> list[str]:
    return [repr(secret), secret.hex(), secret.hex().upper(), secret.decode("latin-1"),
            secret[:8].hex(), repr(secret[:8])[2:-1]]


def _assert_no_leak(text: str, secret: bytes = SECRET) -> None:
    for form in _renderings(secret):
        assert form not in text, f"secret leaked as {form!r} in {text!r}"


def _expect_key_error(fn: Callable[[], object], field: str) -> KeyError_:
    with pytest.raises(KeyError_) as ei:
        fn()
    e = ei.value
    assert type(e) is KeyError_
    assert e.code == "XPS_ERR_KEY"
    assert str(e).startswith("XPS_ERR_KEY: ")
    assert field in str(e)
    return e


# -- redaction -----------------------------------------------------------------------------------


def test_repr_and_str_are_redacted() -> None:
    s = SecretBytes(SECRET)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"k": s})):
        _assert_no_leak(text)
        assert "redacted" in text
    assert repr(s) == "SecretBytes(<redacted, 32 bytes>)"


def test_repr_after_wipe_says_wiped() -> None:
    s = SecretBytes(SECRET)
    s.wipe()
    assert repr(s) == "SecretBytes(<redacted, wiped>)"
    _assert_no_leak(repr(s))


# Each API call given SECRET-derived material of a size the call rejects (as SecretBytes or as
# bytes) must raise XPS_ERR_KEY whose message, args and repr carry none of those bytes.
_SHORT = SECRET[:31]
_LONG = SECRET + SECRET[:1]
_AEAD_CALLS: dict[str, Callable[[Any], object]] = {
    "aead.encrypt": lambda k: xps.aead.encrypt("AES-256-GCM", k, b"pt"),
    "aead.decrypt": lambda k: xps.aead.decrypt("AES-256-GCM", k, bytes(12), b"ct", bytes(16)),
    "aead.open": lambda k: xps.aead.open("AES-256-GCM", k, xps.Sealed.of(bytes(12), bytes(18), 16)),
}
LEAK_CASES: dict[str, tuple[Callable[[Any], object], bytes]] = {
    **{f"{name} short key": (call, _SHORT) for name, call in _AEAD_CALLS.items()},
    **{f"{name} long key": (call, _LONG) for name, call in _AEAD_CALLS.items()},
    "ed25519.sign short": (lambda k: xps.ed25519.sign(k, b"m"), _SHORT),
    "ed25519.sign long": (lambda k: xps.ed25519.sign(k, b"m"), _LONG),
    "ed25519.public_key short": (xps.ed25519.public_key, _SHORT),
    "mldsa65.sign short": (lambda k: xps.mldsa65.sign(k, b"m"), _SHORT),
    "x25519.derive_shared short": (lambda k: xps.x25519.derive_shared(k, bytes(range(32))), _SHORT),
    "x25519.public_key long": (xps.x25519.public_key, _LONG),
    "mlkem768.decapsulate short": (lambda k: xps.mlkem768.decapsulate(k, bytes(1088)), _SHORT),
    "hkdf.expand short prk": (lambda k: xps.hkdf.expand(k, b"info", 32), _SHORT),
}


@pytest.mark.parametrize(("call", "material"), list(LEAK_CASES.values()), ids=list(LEAK_CASES))
@pytest.mark.parametrize("wrap", [SecretBytes, bytes], ids=["SecretBytes", "bytes"])
def test_api_errors_never_contain_the_key(call: Callable[[Any], object], material: bytes,
                                          wrap: type) -> None:
    with pytest.raises(xps.XpsError) as ei:
        call(wrap(material))
    e = ei.value
    assert type(e) is KeyError_
    for text in (str(e), repr(e), repr(e.args)):
        _assert_no_leak(text, material)


def test_wiped_key_error_does_not_leak_the_former_secret() -> None:
    s = SecretBytes(SECRET)
    s.wipe()
    e = _expect_key_error(lambda: xps.ed25519.sign(s, b"m"), "secret_key")
    _assert_no_leak(str(e))


# -- pickling and copying --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_not_picklable(protocol: int) -> None:
    s = SecretBytes(SECRET)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s, protocol=protocol)


def test_not_picklable_inside_a_container() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"key": SecretBytes(SECRET)})


COPIERS: dict[str, Callable[[Any], Any]] = {"copy.copy": copy.copy, "copy.deepcopy": copy.deepcopy}


@pytest.mark.parametrize("copier", list(COPIERS.values()), ids=list(COPIERS))
def test_copy_refused(copier: Callable[[Any], Any]) -> None:
    s = SecretBytes(SECRET)
    with pytest.raises(TypeError, match="cannot be copied"):
        copier(s)
    assert s == SECRET  # the original is untouched


def test_explicit_copy_through_view_works() -> None:
    s = SecretBytes(SECRET)
    c = SecretBytes(s.view())
    assert c == s
    c.wipe()
    assert s == SECRET  # an independent buffer


# -- wiping --------------------------------------------------------------------------------------


class _SnapshotOnDelete(bytearray):
    """A bytearray that records its content when it is emptied (what wipe saw just before)."""

    snapshot: bytes | None = None

    def __delitem__(self, key: Any) -> None:
        self.snapshot = bytes(self)
        super().__delitem__(key)


def _instrumented(buf: bytearray) -> SecretBytes:
    """A SecretBytes over ``buf``: take() adopts no subclass (review API-2), so it is set here."""
    s = SecretBytes.take(bytearray(len(buf)))
    s._buf = buf
    return s


def test_wipe_zeroes_the_buffer_before_emptying_it() -> None:
    buf = _SnapshotOnDelete(SECRET)
    s = _instrumented(buf)
    s.wipe()
    assert buf.snapshot == bytes(len(SECRET))
    assert len(buf) == 0
    assert s.wiped is True
    assert len(s) == 0
    assert not s


def test_wipe_zeroes_memory_seen_through_a_view_taken_before() -> None:
    # The memory a caller already looked at must read as zeros after wipe(), and wipe() must
    # complete (mark the object wiped) even though a view of the buffer is still alive.
    s = SecretBytes(SECRET)
    v = s.view()
    s.wipe()
    assert bytes(v) in (b"", bytes(len(SECRET)))
    assert SECRET not in bytes(v)
    assert s.wiped is True


def test_secret_whose_wipe_met_a_live_view_is_not_usable_as_a_key() -> None:
    # Whatever wipe() does about a live view, the SecretBytes must never become usable as an
    # all-zero key afterwards.
    s = SecretBytes(SECRET)
    v = s.view()
    with contextlib.suppress(BufferError):
        s.wipe()
    _expect_key_error(lambda: xps.aead.encrypt("AES-256-GCM", s, b"pt"), "key")
    v.release()


def test_wipe_is_idempotent() -> None:
    s = SecretBytes(SECRET)
    s.wipe()
    s.wipe()
    assert s.wiped is True
    assert len(s) == 0


def test_new_secret_is_not_wiped() -> None:
    s = SecretBytes(SECRET)
    assert s.wiped is False
    assert bool(s) is True
    assert len(s) == 32


def test_context_manager_wipes_on_exit() -> None:
    buf = _SnapshotOnDelete(SECRET)
    with _instrumented(buf) as s:
        assert s == SECRET
        assert s.wiped is False
    assert s.wiped is True
    assert buf.snapshot == bytes(32)
    assert len(s) == 0


def test_context_manager_wipes_when_the_block_raises() -> None:
    s = SecretBytes(SECRET)
    with pytest.raises(RuntimeError, match="inside"), s:
        raise RuntimeError("inside")
    assert s.wiped is True
    assert len(s) == 0


def test_context_manager_returns_self() -> None:
    s = SecretBytes(SECRET)
    with s as inner:
        assert inner is s


# A wiped SecretBytes given as the key of each API must fail with XPS_ERR_KEY naming the field,
# never act as an empty or all-zero key.
def _wiped() -> SecretBytes:
    s = SecretBytes(SECRET)
    s.wipe()
    return s


_sealed = xps.Sealed.of(bytes(12), bytes(20), 16)
WIPED_KEY_CASES: dict[str, tuple[Callable[[SecretBytes], object], str]] = {
    "aead.encrypt AES-256-GCM": (lambda k: xps.aead.encrypt("AES-256-GCM", k, b"pt"), "key"),
    "aead.encrypt XCHACHA20-POLY1305": (
        lambda k: xps.aead.encrypt("XCHACHA20-POLY1305", k, b"pt"), "key"),
    "aead.decrypt": (lambda k: xps.aead.decrypt("AES-256-GCM", k, bytes(12), b"c", bytes(16)), "key"),
    "aead.open": (lambda k: xps.aead.open("AES-256-GCM", k, _sealed), "key"),
    "ed25519.sign": (lambda k: xps.ed25519.sign(k, b"m"), "secret_key"),
    "ed25519.public_key": (xps.ed25519.public_key, "secret_key"),
    "mldsa65.sign": (lambda k: xps.mldsa65.sign(k, b"m"), "secret_key"),
    "x25519.derive_shared": (lambda k: xps.x25519.derive_shared(k, bytes(range(32))), "secret_key"),
    "mlkem768.decapsulate": (lambda k: xps.mlkem768.decapsulate(k, bytes(1088)), "secret_key"),
    "hkdf.derive": (lambda k: xps.hkdf.derive(k, 32), "ikm"),
    "hkdf.expand": (lambda k: xps.hkdf.expand(k, b"", 32), "prk"),
}


@pytest.mark.parametrize(("call", "field"), list(WIPED_KEY_CASES.values()), ids=list(WIPED_KEY_CASES))
def test_wiped_secret_used_as_key_raises_key_error(call: Callable[[SecretBytes], object],
                                                    field: str) -> None:
    _expect_key_error(lambda: call(_wiped()), field)


def test_wiped_generated_signing_key_is_refused() -> None:
    _pk, sk = xps.ed25519.generate_keypair()
    sk.wipe()
    _expect_key_error(lambda: xps.ed25519.sign(sk, b"m"), "secret_key")


# -- equality, hashing, construction -------------------------------------------------------------


EQUAL_TO: dict[str, object] = {
    "bytes": SECRET,
    "bytearray": bytearray(SECRET),
    "SecretBytes": SecretBytes(SECRET),
}
NOT_EQUAL_TO: dict[str, object] = {
    "bytes differing in last byte": SECRET[:-1] + b"\x00",
    "bytes differing in first byte": b"\x00" + SECRET[1:],
    "shorter bytes": SECRET[:-1],
    "longer bytes": SECRET + b"\x00",
    "empty bytes": b"",
    "other SecretBytes": SecretBytes(bytes(32)),
    "str of same text": SECRET.decode(),
    "int": 0,
    "None": None,
}


@pytest.mark.parametrize("other", list(EQUAL_TO.values()), ids=list(EQUAL_TO))
def test_equal(other: object) -> None:
    s = SecretBytes(SECRET)
    assert s == other
    assert other == s
    assert (s != other) is False
    assert (other != s) is False


@pytest.mark.parametrize("other", list(NOT_EQUAL_TO.values()), ids=list(NOT_EQUAL_TO))
def test_not_equal(other: object) -> None:
    s = SecretBytes(SECRET)
    assert s != other
    assert (s == other) is False
    assert other != s


def test_wiped_secret_no_longer_equals_its_old_value() -> None:
    s = SecretBytes(SECRET)
    s.wipe()
    assert s != SECRET
    assert s != bytes(32)


def test_unhashable() -> None:
    s = SecretBytes(SECRET)
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        {s}  # noqa: B018
    with pytest.raises(TypeError):
        {s: 1}  # noqa: B018


def test_constructor_copies_its_input() -> None:
    src = bytearray(SECRET)
    s = SecretBytes(src)
    src[0] ^= 0xFF
    assert s == SECRET
    s.wipe()
    assert src[1:] == SECRET[1:]  # wiping the secret does not touch the caller's buffer


CONSTRUCT_FROM: dict[str, object] = {
    "bytes": SECRET,
    "bytearray": bytearray(SECRET),
    "memoryview": memoryview(SECRET),
}


@pytest.mark.parametrize("src", list(CONSTRUCT_FROM.values()), ids=list(CONSTRUCT_FROM))
def test_construct_from_bytes_like(src: Any) -> None:
    s = SecretBytes(src)
    assert s == SECRET
    assert len(s) == 32


def test_int_constructor_refused() -> None:
    # bytes(32) would make 32 zero bytes; a "secret" of zeros must not be one keystroke away.
    with pytest.raises(TypeError, match="random_bytes"):
        SecretBytes(32)  # type: ignore[arg-type]


def test_take_adopts_the_buffer_without_copying() -> None:
    buf = bytearray(SECRET)
    s = SecretBytes.take(buf)
    assert s == SECRET
    buf[0] = 0x00  # the caller's buffer *is* the secret's buffer
    assert s.reveal()[0] == 0x00
    assert s.wiped is False
    s.wipe()
    assert len(buf) == 0  # wiped through the adopted object
    assert s.wiped is True


def test_view_is_read_only_and_shares_memory() -> None:
    buf = bytearray(SECRET)
    s = SecretBytes.take(buf)
    v = s.view()
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 0  # type: ignore[index]
    buf[1] = 0x00
    assert v[1] == 0
    v.release()


def test_reveal_is_an_immutable_copy() -> None:
    s = SecretBytes(SECRET)
    r = s.reveal()
    assert type(r) is bytes
    assert r == SECRET
    s.wipe()
    assert r == SECRET  # the copy is the caller's responsibility


# -- secure_wipe ---------------------------------------------------------------------------------


def test_secure_wipe_bytearray() -> None:
    b = bytearray(SECRET)
    secure_wipe(b)
    assert b == bytearray(32)
    assert len(b) == 32  # zeroed in place, not resized


@pytest.mark.parametrize("size", [0, 1, 4096, 4097, 1 << 20])
def test_secure_wipe_zeroes_a_bytearray_in_place_whatever_its_size(size: int) -> None:
    # Small bytearrays take a different path (slice assignment) than large ones (memset): both
    # must write the same storage a view taken before sees, not swap in a new buffer.
    b = bytearray(b"\xa5" * size)
    view = memoryview(b)
    secure_wipe(b)
    assert len(b) == size
    assert view.tobytes() == bytes(size)
    view.release()


@given(data=st.binary(min_size=0, max_size=9000), start=st.integers(0, 9000), view_first=st.booleans())
def test_secure_wipe_zeroes_any_bytearray_and_only_in_place(data: bytes, start: int, view_first: bool) -> None:
    b = bytearray(data)
    storage = memoryview(b) if view_first else None  # an exported view pins the storage
    tail = memoryview(b)[min(start, len(b)):]
    secure_wipe(b)
    assert b == bytearray(len(data)) and tail.tobytes() == bytes(len(tail))
    if storage is not None:
        assert storage.tobytes() == bytes(len(data))
        storage.release()
    tail.release()


def test_secure_wipe_memoryview_zeroes_the_underlying_buffer() -> None:
    b = bytearray(SECRET)
    secure_wipe(memoryview(b))
    assert b == bytearray(32)


def test_secure_wipe_memoryview_slice_zeroes_only_the_slice() -> None:
    b = bytearray(SECRET)
    secure_wipe(memoryview(b)[4:12])
    assert b[:4] == SECRET[:4]
    assert b[4:12] == bytes(8)
    assert b[12:] == SECRET[12:]


def test_secure_wipe_multibyte_format_zeroes_every_byte() -> None:
    a = array.array("I", [0xDEADBEEF] * 8)
    secure_wipe(memoryview(a))
    assert list(a) == [0] * 8


def test_secure_wipe_empty_buffer_is_a_no_op() -> None:
    b = bytearray()
    secure_wipe(b)
    assert b == bytearray()


READ_ONLY: dict[str, object] = {
    "bytes": SECRET,
    "read-only memoryview": memoryview(bytearray(SECRET)).toreadonly(),
    "memoryview of bytes": memoryview(SECRET),
}


@pytest.mark.parametrize("buf", list(READ_ONLY.values()), ids=list(READ_ONLY))
def test_secure_wipe_refuses_read_only(buf: Any) -> None:
    with pytest.raises(TypeError, match="read-only"):
        secure_wipe(buf)


def test_secure_wipe_on_bytes_does_not_modify_the_object() -> None:
    b = bytes(SECRET)
    with pytest.raises(TypeError):
        secure_wipe(b)  # type: ignore[arg-type]
    assert b == SECRET


# -- constant_time_eq ----------------------------------------------------------------------------


CT_EQ: dict[str, tuple[Any, Any, bool]] = {
    "equal bytes": (SECRET, bytes(SECRET), True),
    "bytes vs bytearray": (SECRET, bytearray(SECRET), True),
    "bytes vs memoryview": (SECRET, memoryview(SECRET), True),
    "SecretBytes vs bytes": (SecretBytes(SECRET), SECRET, True),
    "bytes vs SecretBytes": (SECRET, SecretBytes(SECRET), True),
    "SecretBytes vs SecretBytes": (SecretBytes(SECRET), SecretBytes(SECRET), True),
    "empty vs empty": (b"", b"", True),
    "differ in last byte": (SECRET, SECRET[:-1] + b"\x00", False),
    "differ in first byte": (SECRET, b"\x00" + SECRET[1:], False),
    "prefix": (SECRET, SECRET[:16], False),
    "empty vs non-empty": (b"", SECRET, False),
    "SecretBytes differ": (SecretBytes(SECRET), SecretBytes(bytes(32)), False),
}


@pytest.mark.parametrize(("a", "b", "expected"), list(CT_EQ.values()), ids=list(CT_EQ))
def test_constant_time_eq(a: Any, b: Any, expected: bool) -> None:
    assert constant_time_eq(a, b) is expected
    assert constant_time_eq(b, a) is expected


# -- the wipe mark (issue 10: calls racing a wipe) ---------------------------------------------------


def test_wipe_marks_the_secret_before_zeroing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A call on another thread checks the mark after its provider returns: the mark must be set
    # before a single byte is zeroed, or a call could finish on zeros and still see it clear.
    import xpscerpto.secret as secret_mod

    s = SecretBytes(SECRET)
    seen: list[tuple[bool, bytes]] = []
    real = secret_mod.secure_wipe

    def spy(buf: Any) -> None:
        seen.append((s.wiped, bytes(buf)))
        real(buf)

    monkeypatch.setattr(secret_mod, "secure_wipe", spy)
    s.wipe()
    assert seen == [(True, SECRET)]


def test_a_wiped_secret_equals_nothing_not_even_empty_bytes() -> None:
    s = SecretBytes(SECRET)
    s.wipe()
    assert s != b""
    assert s != SecretBytes(b"")
    assert not (s == bytearray())  # noqa: SIM201 (__eq__ itself is under test)


def test_secret_bytes_copies_any_byte_buffer_and_refuses_the_rest() -> None:
    assert SecretBytes(array.array("B", SECRET)) == SECRET
    assert SecretBytes(memoryview(SECRET).cast("c")) == SECRET
    for bad in (None, [65] * 32, "A" * 32, 3.0, memoryview(bytes(64))[::2], array.array("I", [1] * 8)):
        with pytest.raises(xps.KeyTypeError) as ei:
            SecretBytes(bad)  # type: ignore[arg-type]
        assert isinstance(ei.value, TypeError) and ei.value.code == "XPS_ERR_KEY"
        assert "data:" in str(ei.value)
