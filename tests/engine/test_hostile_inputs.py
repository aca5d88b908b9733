"""Inputs built to mislead: lying lengths, buffers that change under a call, huge inputs.

Each of these came out of an adversarial review. The rule they pin: the engine checks, and the
provider reads, the same bytes; a caller's odd input is the caller's typed error and never a
provider fault (fault listeners roll capsules back); an authentication failure keeps nothing of
what failed to verify reachable from the error.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import Engine, EngineConfig, SecretBytes
from xpscerpto.errors import AuthError, KeyError_, NonceError, PolicyError
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider

KEY = bytes(range(32))
LARGE = 256 * 1024  # past every built-in provider's tag-separate threshold (128 KiB)


class LieLen(bytes):
    """Says it holds 32 bytes (or whatever ``claim`` is), whatever its buffer holds."""

    claim = 32

    def __len__(self) -> int:
        return self.claim


class LieLen12(LieLen):
    claim = 12


class LieLen16(LieLen):
    claim = 16


class BoomLen(bytes):
    def __len__(self) -> int:
        raise RuntimeError("len")


class BoomLenBytearray(bytearray):
    def __len__(self) -> int:
        raise RuntimeError("len")


class BoomHash(str):
    def __hash__(self) -> int:
        raise RuntimeError("hash")


class BoomEq(str):
    def __hash__(self) -> int:
        return hash("AES-256-GCM")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")


class BoomLenList(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("len")


class BoomIterTuple(tuple):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("iter")


class BoomBytes(bytes):
    def __bytes__(self) -> bytes:
        raise RuntimeError("__bytes__")


class ShortBytes(bytes):
    def __bytes__(self) -> bytes:
        return b"x"


@pytest.fixture
def faults() -> Iterator[tuple[Engine, list[tuple[str, str, str]]]]:
    eng = Engine()
    seen: list[tuple[str, str, str]] = []
    eng.add_fault_listener(lambda provider, op, exc: seen.append((provider, op, type(exc).__name__)))
    yield eng, seen


# -- lengths that lie --------------------------------------------------------------------------


def test_a_key_whose_len_lies_cannot_turn_aes_256_into_aes_128() -> None:
    short = LieLen(bytes(16))
    with pytest.raises(KeyError_, match="key: expected 32 bytes, got 16"):
        xps.aead.encrypt("AES-256-GCM", short, b"attack at dawn")
    sealed = AESGCM(bytes(16)).encrypt(bytes(12), b"m", b"")
    with pytest.raises(KeyError_, match="got 16"):
        xps.aead.decrypt("AES-256-GCM", short, bytes(12), sealed[:-16], sealed[-16:])
    with pytest.raises(KeyError_, match="got 16"):
        xps.aead.open("AES-256-GCM", short, xps.Sealed.of(bytes(12), sealed, 16))


def test_a_subclass_key_that_tells_the_truth_works() -> None:
    key = LieLen(KEY)  # 32 bytes that say 32
    s = xps.aead.encrypt("AES-256-GCM", key, b"m")
    assert xps.aead.open("AES-256-GCM", KEY, s) == b"m"


@pytest.mark.parametrize("algo", ["AES-256-GCM", "CHACHA20-POLY1305"])
def test_a_nonce_whose_len_lies_is_a_nonce_error_everywhere(algo: str) -> None:
    nonce = LieLen12(bytes(16))  # 16 bytes that say 12
    s = xps.aead.encrypt(algo, KEY, b"m")
    keyed = xps.aead.keyed(algo, KEY)
    calls: list[Callable[[], object]] = [
        lambda: xps.aead.encrypt(algo, KEY, b"m", b"", nonce),
        lambda: xps.aead.decrypt(algo, KEY, nonce, s.ciphertext, s.tag),
        lambda: keyed.encrypt(b"m", b"", nonce),
        lambda: keyed.encrypt_wire(nonce, b"m"),
        lambda: keyed.decrypt(nonce, s.ciphertext_and_tag),
    ]
    for call in calls:
        with pytest.raises(NonceError, match="nonce: expected 12 bytes, got 16"):
            call()


def test_a_nonce_whose_bytes_method_lies_is_read_as_the_bytes_it_holds() -> None:
    nonce = ShortBytes(bytes(range(12)))
    s = xps.aead.encrypt("AES-256-GCM", KEY, b"m", b"", nonce)
    assert s.nonce == bytes(range(12)) and type(s.nonce) is bytes
    assert xps.aead.open("AES-256-GCM", KEY, s) == b"m"


@pytest.mark.parametrize("size", [64, LARGE])
def test_a_tag_whose_len_lies_fails_authentication(size: int) -> None:
    s = xps.aead.encrypt("AES-256-GCM", KEY, bytes(size))
    for tag in (LieLen16(s.tag[:4]), LieLen16(s.tag + b"\x00" * 4)):
        with pytest.raises(AuthError, match="tag: expected 16 bytes"):
            xps.aead.decrypt("AES-256-GCM", KEY, s.nonce, s.ciphertext, tag)


# -- a ciphertext that changes during the call ---------------------------------------------------


class _Mutator:
    """The caller's buffer, and a switch a spy provider flips between its two reads."""

    target: bytearray | None = None
    reads: list[tuple[type, bool]] = []  # noqa: RUF012  (a test's scratch)


def _two_reads(data: Any) -> bytes:
    first = bytes(memoryview(data))
    if _Mutator.target is not None:
        _Mutator.target[0] ^= 1  # "another thread" writes between the tag check and the decryption
    second = bytes(memoryview(data))
    _Mutator.reads.append((type(data), first == second))
    return first


class _SpyCipher:
    def __init__(self, key: Any) -> None:
        self._inner = AESGCM(key)

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self._inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self._inner.decrypt(nonce, _two_reads(data), aad)


class SpyAesGcm256(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    detached_from = 1024

    def cipher(self, key: Any) -> _SpyCipher:
        return _SpyCipher(key)

    def decrypt_detached(self, key: Any, nonce: bytes, ciphertext: Any, tag: Any, associated_data: Any) -> bytes:
        return AESGCM(key).decrypt(nonce, _two_reads(ciphertext) + bytes(tag), associated_data)


class SpyPlugin:
    __name__ = "spy-two-reads-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="spy-two-reads", backend="AESGCM read twice (test)", version="0",
                              implementations={"aead.aes256gcm": SpyAesGcm256()}))


@pytest.fixture(scope="module")
def spy_engine() -> Engine:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": "spy-two-reads"}, autotune=False), plugins=[SpyPlugin()])
    assert eng.aead.info("AES-256-GCM")["provider"] == "spy-two-reads"
    return eng


@pytest.mark.parametrize("shape", ["bytearray", "writable memoryview"])
@pytest.mark.parametrize("call", ["decrypt large", "keyed.decrypt"])
def test_a_provider_reading_twice_sees_one_snapshot_of_a_mutable_ciphertext(
        spy_engine: Engine, shape: str, call: str) -> None:
    s = spy_engine.aead.encrypt("AES-256-GCM", KEY, bytes(4096))
    buf = bytearray(s.ciphertext if call == "decrypt large" else s.ciphertext_and_tag)
    arg = buf if shape == "bytearray" else memoryview(buf)
    _Mutator.target, _Mutator.reads = buf, []
    try:
        if call == "decrypt large":
            out = spy_engine.aead.decrypt("AES-256-GCM", KEY, s.nonce, arg, s.tag)
        else:
            out = spy_engine.aead.keyed("AES-256-GCM", KEY).decrypt(s.nonce, arg)
    finally:
        _Mutator.target = None
    assert out == bytes(4096)
    assert _Mutator.reads == [(bytes, True)]  # the provider got immutable bytes: both reads agreed


def test_immutable_ciphertexts_reach_the_provider_without_a_copy(spy_engine: Engine) -> None:
    s = spy_engine.aead.encrypt("AES-256-GCM", KEY, bytes(4096))
    _Mutator.reads = []
    keyed = spy_engine.aead.keyed("AES-256-GCM", KEY)
    assert keyed.decrypt(s.nonce, s.ciphertext_and_tag) == bytes(4096)
    assert keyed.decrypt(s.nonce, memoryview(s.ciphertext_and_tag)) == bytes(4096)  # a read-only view of bytes
    assert [t for t, _ in _Mutator.reads] == [bytes, memoryview]


@pytest.mark.parametrize("algo", ["CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AES-256-GCM"])
def test_a_concurrent_writer_never_gets_unauthenticated_plaintext_out(algo: str) -> None:
    # The real providers, a real second thread: what the review found returned plaintext of a
    # ciphertext no tag covered (ChaCha20-Poly1305 in OpenSSL and libsodium read it twice).
    pt = bytes(LARGE)
    s = xps.aead.encrypt(algo, KEY, pt)
    keyed = xps.aead.keyed(algo, KEY)
    buf = bytearray(s.ciphertext)
    wire = bytearray(s.ciphertext_and_tag)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            buf[0] ^= 1
            wire[0] ^= 1
            buf[0] ^= 1
            wire[0] ^= 1

    t = threading.Thread(target=flip)
    t.start()
    wrong = 0
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for call in (lambda: xps.aead.decrypt(algo, KEY, s.nonce, buf, s.tag),
                         lambda: keyed.decrypt(s.nonce, wire)):
                try:
                    out = call()
                except AuthError:
                    continue
                wrong += out != pt
    finally:
        stop.set()
        t.join()
    assert wrong == 0


# -- what a provider cannot be blamed for ---------------------------------------------------------


@pytest.mark.parametrize("algo", ["AES-256-GCM", "CHACHA20-POLY1305"])
@pytest.mark.parametrize("field", ["plaintext", "aad"])
def test_an_input_longer_than_the_provider_takes_is_a_policy_error_not_a_fault(
        faults: tuple[Engine, list[Any]], algo: str, field: str) -> None:
    eng, seen = faults
    huge = mmap.mmap(-1, 2**31)  # sparse: nothing is read before the size is refused
    try:
        with pytest.raises(PolicyError, match=f"{field}: 2147483648 bytes is more than .* takes"):
            if field == "plaintext":
                eng.aead.encrypt(algo, KEY, huge)
            else:
                eng.aead.encrypt(algo, KEY, b"m", huge)
    finally:
        huge.close()
    assert seen == []


def test_subclasses_that_make_a_provider_fail_are_the_callers_error_not_a_fault(
        faults: tuple[Engine, list[Any]]) -> None:
    eng, seen = faults
    with pytest.raises(PolicyError, match="plaintext: a BoomLen \\(a subclass of bytes\\)"):
        eng.aead.encrypt("AES-256-GCM", KEY, BoomLen(b"m"))
    with pytest.raises(PolicyError, match="ciphertext: a BoomLen"):
        eng.aead.decrypt("AES-256-GCM", KEY, bytes(12), BoomLen(b"m"), bytes(16))
    # SecretBytes.take adopts no subclass any more (review API-2): refused before any call.
    with pytest.raises(KeyError_, match=r"buf: SecretBytes\.take adopts a plain bytearray, got BoomLenBytearray"):
        eng.aead.encrypt("AES-256-GCM", SecretBytes.take(BoomLenBytearray(KEY)), b"m")
    assert seen == []


# -- what an auth failure leaves reachable ---------------------------------------------------------


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.mark.parametrize("size", [64, LARGE])
def test_an_auth_failure_keeps_no_provider_frame_reachable(size: int) -> None:
    # No local of this frame holds the plaintext: only what the call left behind can.
    s = xps.aead.encrypt("AES-256-GCM", KEY, b"TOP-SECRET-PAYLOAD" * (size // 18 + 1))
    with pytest.raises(AuthError) as ei:
        xps.aead.decrypt("AES-256-GCM", KEY, s.nonce, s.ciphertext, bytes(16))
    for exc in _chain(ei.value):
        tb = exc.__traceback__
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                assert not (isinstance(value, bytes) and b"TOP-SECRET" in value)
            tb = tb.tb_next
        if exc is not ei.value:
            assert exc.__traceback__ is None


# -- objects whose own methods raise ---------------------------------------------------------------


@pytest.mark.parametrize("name", [BoomHash("AES-256-GCM"), BoomEq("AES-256-GCM")])
def test_algorithm_names_whose_hash_or_eq_raise_are_policy_errors(name: str) -> None:
    s = xps.aead.encrypt("AES-256-GCM", KEY, b"m")
    calls: list[Callable[[], object]] = [
        lambda: xps.aead.encrypt(name, KEY, b"m"),
        lambda: xps.aead.decrypt(name, KEY, s.nonce, s.ciphertext, s.tag),
        lambda: xps.aead.open(name, KEY, s),
        lambda: xps.aead.info(name),
        lambda: xps.aead.keyed(name, KEY),
    ]
    for call in calls:
        with pytest.raises(PolicyError, match="algo: unknown AEAD algorithm"):
            call()


@pytest.mark.parametrize("parts", [BoomLenList([bytes(12), bytes(16), 16]),
                                   BoomIterTuple((bytes(12), bytes(16), 16))])
def test_sealed_from_sequences_whose_methods_raise_is_a_policy_error(parts: Any) -> None:
    with pytest.raises(PolicyError, match="sealed: expected"):
        xps.Sealed(parts)


def test_sealed_reads_a_subclass_through_its_buffer_not_its_bytes_method() -> None:
    s = xps.Sealed((BoomBytes(bytes(12)), BoomBytes(bytes(16)), 16))
    assert type(s.nonce) is bytes and s.nonce == bytes(12)
    assert xps.Sealed.of(BoomBytes(bytes(12)), bytes(16), 16).nonce == bytes(12)


@pytest.mark.parametrize("method", ["add_providers", "rebuild", "selftest", "build_table"])
def test_engine_methods_given_a_non_iterable_raise_policy_error(method: str) -> None:
    eng = Engine()
    call = {"add_providers": lambda: eng.add_providers(5),  # type: ignore[arg-type]
            "rebuild": lambda: eng.rebuild(providers=5),  # type: ignore[arg-type]
            "selftest": lambda: eng.selftest(5),  # type: ignore[arg-type]
            "build_table": lambda: eng.build_table(5)}[method]  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        call()

