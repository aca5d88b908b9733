"""A caller's mistake is typed, names the argument, never echoes the caller's bytes and is never
counted as a provider's fault (issue 10, items 2 and 5-8)."""

from __future__ import annotations

import array
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import (
    AuthError,
    Engine,
    EngineConfig,
    KeyError_,
    KeyTypeError,
    NonceError,
    PolicyError,
    Sealed,
    SecretBytes,
    XpsError,
)
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider

# Distinct printable bytes: an echo shows in any rendering.
KEY = bytes(range(0x41, 0x41 + 32))


def _renderings(b: bytes) -> list[str]:
    return [repr(b)[2:-1], b.hex(), b[:8].hex(), b.decode("latin-1")]


def _expect(cls: type[XpsError], field: str | None, fn: Callable[[], object]) -> XpsError:
    with pytest.raises(XpsError) as ei:
        fn()
    e = ei.value
    assert isinstance(e, cls), f"expected {cls.__name__}, got {type(e).__name__}: {e}"
    if field is not None:
        assert field in str(e), f"{field!r} not named in {e}"
    return e


# -- item 2: no caller bytes in messages ----------------------------------------------------------


KEY_AS_ALGO: dict[str, Callable[[Any], object]] = {
    "aead.encrypt": lambda a: xps.aead.encrypt(a, KEY, b"m"),
    "aead.decrypt": lambda a: xps.aead.decrypt(a, KEY, bytes(12), b"c", bytes(16)),
    "aead.open": lambda a: xps.aead.open(a, KEY, Sealed.of(bytes(12), bytes(20), 16)),
    "aead.info": xps.aead.info,
    "aead.keyed": lambda a: xps.aead.keyed(a, KEY),
}
ALGO_FORMS: dict[str, Any] = {"bytes": KEY, "bytearray": bytearray(KEY), "str": KEY.decode("latin-1"),
                              "memoryview": memoryview(KEY), "SecretBytes": SecretBytes(KEY)}


@pytest.mark.parametrize("form", list(ALGO_FORMS.values()), ids=list(ALGO_FORMS))
@pytest.mark.parametrize("call", list(KEY_AS_ALGO.values()), ids=list(KEY_AS_ALGO))
def test_a_key_passed_as_the_algorithm_is_not_echoed(call: Callable[[Any], object], form: Any) -> None:
    e = _expect(PolicyError, "algo", lambda: call(form))
    for text in (str(e), repr(e), repr(e.args)):
        for rendering in _renderings(KEY):
            assert rendering not in text
    assert "unknown AEAD algorithm" in str(e) and "AES-256-GCM" in str(e)  # what would have worked


@pytest.mark.parametrize("call", [
    lambda: xps.random_bytes(int.from_bytes(KEY, "big")),
    lambda: xps.hkdf.derive(KEY, int.from_bytes(KEY, "big")),
    lambda: xps.hkdf.expand(KEY, b"", -int.from_bytes(KEY, "big")),
    lambda: Sealed.of(bytes(12), bytes(20), int.from_bytes(KEY, "big")),
], ids=["random_bytes", "hkdf.derive", "hkdf.expand", "Sealed.of"])
def test_a_key_passed_as_a_huge_int_is_not_echoed(call: Callable[[], object]) -> None:
    e = _expect(XpsError, None, call)
    assert str(int.from_bytes(KEY, "big")) not in str(e)
    assert "bits" in str(e)


# -- item 5: buffers checked before any provider, never a fault ---------------------------------


def _released() -> memoryview:
    v = memoryview(bytearray(32))
    v.release()
    return v


def _bad_buffers(n: int) -> dict[str, Any]:
    """Buffers with ``n`` items, each of a shape the API refuses."""
    return {
        "strided view": memoryview(bytes(2 * n))[::2],
        "released view": _released(),
        "wide-format view": memoryview(array.array("I", bytes(4 * n))),
        "wide-format array": array.array("I", bytes(4 * n)),
        "signed-byte view": memoryview(bytes(n)).cast("b"),
        "str": "x" * n,
    }


ACCEPTED: dict[str, Callable[[bytes], Any]] = {
    "bytearray": bytearray,
    "read-only view": memoryview,
    "char view": lambda b: memoryview(b).cast("c"),
    "array('B')": lambda b: array.array("B", b),
    "2-D view (plaintext only)": lambda b: memoryview(b).cast("B", (2, len(b) // 2)),
}


@pytest.mark.parametrize("wrap", list(ACCEPTED.values()), ids=list(ACCEPTED))
@pytest.mark.parametrize("provider", ["openssl", "sodium", "capsule-like"])
def test_every_provider_reads_an_accepted_buffer_as_its_bytes(engines: dict[str, Engine], provider: str,
                                                              wrap: Callable[[bytes], Any]) -> None:
    eng, algo, ns = engines[provider], ALGO_FOR[provider], NONCE_FOR[provider]
    key, nonce, pt, aad = os.urandom(32), os.urandom(ns), os.urandom(32), os.urandom(16)
    s = eng.aead.encrypt(algo, key, wrap(pt), wrap(aad), nonce=nonce)
    assert s == xps.aead.encrypt(algo, key, pt, aad, nonce=nonce)  # the same bytes, the same result
    assert eng.aead.decrypt(algo, key, nonce, wrap(bytes(s.ciphertext)), s.tag, wrap(aad)) == pt


class _Recording(Aead):
    """AES-256-GCM that counts every call reaching it (a capsule's provider, say)."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    calls = 0

    def cipher(self, key: Any) -> _RecordingCipher:
        _Recording.calls += 1
        return _RecordingCipher(AESGCM(bytes(key)))


class _RecordingCipher:
    def __init__(self, inner: AESGCM) -> None:
        self._inner = inner

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        _Recording.calls += 1
        return self._inner.encrypt(bytes(nonce), bytes(data), bytes(aad))  # accepts anything: bytes() copies

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        _Recording.calls += 1
        return self._inner.decrypt(bytes(nonce), bytes(data), bytes(aad))


class _RecordingPlugin:
    __name__ = "recording-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name="recording", backend="test", version="0",
                              implementations={"aead.aes256gcm": _Recording()}))


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {"openssl": Engine(EngineConfig(providers=("openssl",))),
            "sodium": Engine(EngineConfig(providers=("sodium",))),
            "capsule-like": Engine(EngineConfig(prefer={"aead.aes256gcm": "recording"}),
                                   plugins=[_RecordingPlugin()])}


@pytest.fixture
def faults(engines: dict[str, Engine]) -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def listener(provider: str, operation: str, exc: BaseException) -> None:
        seen.append((provider, operation))

    for eng in engines.values():
        eng.add_fault_listener(listener)
    yield seen
    for eng in engines.values():
        eng.remove_fault_listener(listener)


ALGO_FOR = {"openssl": "AES-256-GCM", "sodium": "XCHACHA20-POLY1305", "capsule-like": "AES-256-GCM"}
NONCE_FOR = {"openssl": 12, "sodium": 24, "capsule-like": 12}


def _aead_calls(eng: Engine, algo: str, ns: int,
                bad: Any) -> dict[str, tuple[type[XpsError], str, Callable[[], object]]]:
    key = bytes(32)
    s = eng.aead.encrypt(algo, key, b"m" * 32)
    keyed = eng.aead.keyed(algo, key)
    return {
        "encrypt key": (KeyError_, "key", lambda: eng.aead.encrypt(algo, bad, b"m")),
        "encrypt plaintext": (PolicyError, "plaintext", lambda: eng.aead.encrypt(algo, key, bad)),
        "encrypt aad": (PolicyError, "aad", lambda: eng.aead.encrypt(algo, key, b"m", bad)),
        "encrypt nonce": (NonceError, "nonce", lambda: eng.aead.encrypt(algo, key, b"m", nonce=bad)),
        "decrypt key": (KeyError_, "key", lambda: eng.aead.decrypt(algo, bad, s.nonce, s.ciphertext, s.tag)),
        "decrypt nonce": (NonceError, "nonce", lambda: eng.aead.decrypt(algo, key, bad, s.ciphertext, s.tag)),
        "decrypt ciphertext": (PolicyError, "ciphertext", lambda: eng.aead.decrypt(algo, key, s.nonce, bad, s.tag)),
        "decrypt tag": (AuthError, "tag", lambda: eng.aead.decrypt(algo, key, s.nonce, s.ciphertext, bad)),
        "decrypt aad": (PolicyError, "aad", lambda: eng.aead.decrypt(algo, key, s.nonce, s.ciphertext, s.tag, bad)),
        "open key": (KeyError_, "key", lambda: eng.aead.open(algo, bad, s)),
        "open aad": (PolicyError, "aad", lambda: eng.aead.open(algo, key, s, bad)),
        "keyed key": (KeyError_, "key", lambda: eng.aead.keyed(algo, bad)),
        "keyed.encrypt plaintext": (PolicyError, "plaintext", lambda: keyed.encrypt(bad)),
        "keyed.encrypt nonce": (NonceError, "nonce", lambda: keyed.encrypt(b"m", nonce=bad)),
        "keyed.encrypt_wire plaintext": (PolicyError, "plaintext", lambda: keyed.encrypt_wire(bytes(ns), bad)),
        "keyed.encrypt_wire aad": (PolicyError, "aad", lambda: keyed.encrypt_wire(bytes(ns), b"m", bad)),
        "keyed.encrypt_wire nonce": (NonceError, "nonce", lambda: keyed.encrypt_wire(bad, b"m")),
        "keyed.decrypt ciphertext": (PolicyError, "ciphertext_and_tag", lambda: keyed.decrypt(s.nonce, bad)),
        "keyed.decrypt aad": (PolicyError, "aad", lambda: keyed.decrypt(s.nonce, s.ciphertext_and_tag, bad)),
    }


BAD_KINDS = list(_bad_buffers(1))


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("provider", list(ALGO_FOR))
def test_a_bad_buffer_is_typed_names_the_argument_and_is_not_a_provider_fault(
        engines: dict[str, Engine], faults: list[tuple[str, str]], provider: str, kind: str) -> None:
    eng, algo, ns = engines[provider], ALGO_FOR[provider], NONCE_FOR[provider]
    sizes = {"key": 32, "nonce": ns, "tag": 16}
    for name in _aead_calls(eng, algo, ns, b""):
        arg = name.split()[-1]
        bad = _bad_buffers(sizes.get(arg, 32))[kind]
        cls, field, call = _aead_calls(eng, algo, ns, bad)[name]
        before = _Recording.calls
        e = _expect(XpsError, field, call)
        assert isinstance(e, cls), f"{name}: expected {cls.__name__}, got {type(e).__name__}: {e}"
        assert _Recording.calls == before, f"{name}: the provider saw the bad buffer"
    assert faults == []


NON_AEAD: dict[str, tuple[type[XpsError], str, Callable[[Any], object]]] = {
    "ed25519.sign key": (KeyError_, "secret_key", lambda b: xps.ed25519.sign(b, b"m")),
    "ed25519.sign message": (PolicyError, "message", lambda b: xps.ed25519.sign(bytes(32), b)),
    "ed25519.verify public_key": (KeyError_, "public_key", lambda b: xps.ed25519.verify(b, b"m", bytes(64))),
    "ed25519.verify signature": (AuthError, "signature", lambda b: xps.ed25519.verify(bytes(32), b"m", b)),
    "x25519.derive_shared key": (KeyError_, "secret_key", lambda b: xps.x25519.derive_shared(b, bytes(32))),
    "x25519.derive_shared peer": (KeyError_, "peer_public_key", lambda b: xps.x25519.derive_shared(bytes(32), b)),
    "mlkem768.decapsulate key": (KeyError_, "secret_key", lambda b: xps.mlkem768.decapsulate(b, bytes(1088))),
    "hkdf.extract salt": (PolicyError, "salt", lambda b: xps.hkdf.extract(b, bytes(32))),
    "hkdf.expand info": (PolicyError, "info", lambda b: xps.hkdf.expand(bytes(32), b, 32)),
    "hkdf.derive ikm": (KeyError_, "ikm", lambda b: xps.hkdf.derive(b, 32)),
}


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize(("cls", "field", "call"), list(NON_AEAD.values()), ids=list(NON_AEAD))
def test_a_bad_buffer_to_the_other_primitives_is_typed(cls: type[XpsError], field: str,
                                                       call: Callable[[Any], object], kind: str) -> None:
    size = 64 if "mlkem" in field else 32
    e = _expect(XpsError, field, lambda: call(_bad_buffers(size)[kind]))
    assert isinstance(e, cls), f"expected {cls.__name__}, got {type(e).__name__}: {e}"


# -- item 6: truncated ciphertexts are XPS_ERR_AUTH ----------------------------------------------


@pytest.mark.parametrize("algo", ["XCHACHA20-POLY1305", "AEGIS-256", "CHACHA20-POLY1305", "AES-256-GCM",
                                  "AES-256-GCM-SIV"])
@pytest.mark.parametrize("length", [0, 1, 15, 31])
def test_a_truncated_ciphertext_is_auth_and_fires_no_fault(algo: str, length: int) -> None:
    eng = Engine()
    faults: list[str] = []
    eng.add_fault_listener(lambda p, o, e: faults.append(o))
    info = eng.aead.info(algo)
    key, ns, ts = bytes(32), info["nonce_size"], info["tag_size"]
    wire = eng.aead.encrypt(algo, key, b"a message long enough").ciphertext_and_tag[:length]
    keyed = eng.aead.keyed(algo, key)
    _expect(AuthError, None, lambda: keyed.decrypt(bytes(ns), wire))
    _expect(AuthError, None, lambda: keyed.open(Sealed.of(bytes(ns), wire, ts)))
    _expect(AuthError, None, lambda: eng.aead.open(algo, key, Sealed.of(bytes(ns), wire, ts)))
    assert faults == []


# -- item 7: Sealed.nonce is immutable ------------------------------------------------------------


@pytest.mark.parametrize("algo", ["AES-256-GCM", "XCHACHA20-POLY1305"])
def test_sealed_nonce_is_a_copy_of_a_callers_bytearray(algo: str) -> None:
    ns = xps.aead.info(algo)["nonce_size"]
    key = os.urandom(32)
    for seal in (lambda n: xps.aead.encrypt(algo, key, b"m", nonce=n),
                 lambda n: xps.aead.keyed(algo, key).encrypt(b"m", nonce=n),
                 lambda n: Sealed.of(n, xps.aead.encrypt(algo, key, b"m", nonce=bytes(n)).ciphertext_and_tag, 16
                                     if algo != "AEGIS-256" else 32)):
        buf = bytearray(os.urandom(ns))
        s = seal(buf)
        assert type(s.nonce) is bytes and s.nonce == buf
        buf[:] = bytes(ns)  # the caller reuses its buffer
        assert s.nonce != buf
        assert xps.aead.open(algo, key, s) == b"m"


def test_sealed_copies_a_memoryview_wire() -> None:
    wire = bytearray(xps.aead.encrypt("AES-256-GCM", KEY, b"m", nonce=bytes(11) + b"\x01").ciphertext_and_tag)
    s = Sealed.of(bytes(11) + b"\x01", memoryview(wire), 16)
    wire[0] ^= 1
    assert type(s.ciphertext_and_tag) is bytes
    assert xps.aead.open("AES-256-GCM", KEY, s) == b"m"


# -- item 8: typed errors everywhere --------------------------------------------------------------


def _wiped() -> SecretBytes:
    s = SecretBytes(KEY)
    s.wipe()
    return s


TYPED: dict[str, tuple[type[XpsError], Callable[[], object]]] = {
    "Sealed(())": (PolicyError, lambda: Sealed(())),
    "Sealed(None)": (PolicyError, lambda: Sealed(None)),  # type: ignore[arg-type]
    "Sealed of a released view": (PolicyError, lambda: Sealed.of(_released(), b"x" * 16, 16)),
    "Sealed with a str tag size": (PolicyError, lambda: Sealed.of(bytes(12), bytes(16), "16")),  # type: ignore[arg-type]
    "Sealed of a str wire: ciphertext": (PolicyError, lambda: Sealed.of(bytes(12), "x" * 20, 16).ciphertext),  # type: ignore[arg-type]
    "Sealed of a str wire: unpacking": (PolicyError, lambda: tuple(Sealed.of(bytes(12), "x" * 20, 16))),  # type: ignore[arg-type]
    "SecretBytes(None)": (KeyTypeError, lambda: SecretBytes(None)),  # type: ignore[arg-type]
    "SecretBytes([300])": (KeyTypeError, lambda: SecretBytes([300])),  # type: ignore[arg-type]
    "SecretBytes(str)": (KeyTypeError, lambda: SecretBytes("secret")),  # type: ignore[arg-type]
    "SecretBytes(released view)": (KeyTypeError, lambda: SecretBytes(_released())),
    "SecretBytes(SecretBytes)": (KeyTypeError, lambda: SecretBytes(SecretBytes(KEY))),  # type: ignore[arg-type]
    "SecretBytes.take(bytes)": (KeyTypeError, lambda: SecretBytes.take(KEY)),  # type: ignore[arg-type]
    "constant_time_eq(None, b'')": (KeyTypeError, lambda: xps.constant_time_eq(None, b"")),  # type: ignore[arg-type]
    "constant_time_eq(str, str)": (KeyTypeError, lambda: xps.constant_time_eq("a", "a")),  # type: ignore[arg-type]
    "constant_time_eq(wiped, b'')": (KeyError_, lambda: xps.constant_time_eq(_wiped(), b"")),
    "secure_wipe(b'abc')": (KeyTypeError, lambda: xps.secure_wipe(b"abc")),  # type: ignore[arg-type]
    "secure_wipe(None)": (KeyTypeError, lambda: xps.secure_wipe(None)),  # type: ignore[arg-type]
    "secure_wipe(strided)": (KeyTypeError, lambda: xps.secure_wipe(memoryview(bytearray(8))[::2])),
    "secure_wipe(released)": (KeyTypeError, lambda: xps.secure_wipe(_released())),
    "random_bytes(2**70)": (KeyError_, lambda: xps.random_bytes(2**70)),
    "random_bytes('32')": (KeyError_, lambda: xps.random_bytes("32")),  # type: ignore[arg-type]
    "hkdf length 10**30": (KeyError_, lambda: xps.hkdf.derive(KEY, 10**30)),
    "Engine('x')": (PolicyError, lambda: Engine("x", lazy=True)),  # type: ignore[arg-type]
    "Engine(plugins=5)": (PolicyError, lambda: Engine(plugins=5, lazy=True)),  # type: ignore[arg-type]
    "Engine(lazy='yes')": (PolicyError, lambda: Engine(lazy="yes")),  # type: ignore[arg-type]
    "Engine.publish(None)": (PolicyError, lambda: Engine(lazy=True).publish(None)),  # type: ignore[arg-type]
    "Engine.build_table(5)": (PolicyError, lambda: Engine(lazy=True).build_table(5)),  # type: ignore[arg-type]
    "Engine.add_fault_listener(5)": (PolicyError, lambda: Engine(lazy=True).add_fault_listener(5)),  # type: ignore[arg-type]
    "Engine.add_table_fault_listener(5)": (PolicyError,
                                           lambda: Engine(lazy=True).add_table_fault_listener(5)),  # type: ignore[arg-type]
    "keyed nonce_reuse='x'": (PolicyError, lambda: xps.aead.keyed("AES-256-GCM", KEY, nonce_reuse="x")),  # type: ignore[arg-type]
    "encrypt nonce_reuse=None": (PolicyError, lambda: xps.aead.encrypt("AES-256-GCM", KEY, b"m", nonce=bytes(12),
                                                                      nonce_reuse=None)),  # type: ignore[arg-type]
    "open(released key)": (KeyError_, lambda: xps.aead.open("AES-256-GCM", _released(),
                                                            xps.aead.encrypt("AES-256-GCM", KEY, b"m"))),
    "decrypt(released nonce)": (NonceError, lambda: xps.aead.decrypt("AES-256-GCM", KEY, _released(), b"", bytes(16))),
    "algo is a released view": (PolicyError, lambda: xps.aead.encrypt(_released(), KEY, b"m")),  # type: ignore[arg-type]
}


@pytest.mark.parametrize(("cls", "call"), list(TYPED.values()), ids=list(TYPED))
def test_every_bad_input_raises_a_typed_error(cls: type[XpsError], call: Callable[[], object]) -> None:
    e = _expect(cls, None, call)
    assert type(e).__module__ == "xpscerpto.errors"


def test_type_errors_of_secret_helpers_are_also_type_errors() -> None:
    # Python code that expects a TypeError from these keeps working.
    for call in (lambda: SecretBytes(None), lambda: xps.secure_wipe(b"x"), lambda: xps.constant_time_eq(1, 2)):
        with pytest.raises(TypeError):
            call()  # type: ignore[no-untyped-call]


PUBLIC: dict[str, Callable[..., Any]] = {
    "aead.encrypt": xps.aead.encrypt, "aead.decrypt": xps.aead.decrypt, "aead.open": xps.aead.open,
    "aead.keyed": xps.aead.keyed, "aead.info": xps.aead.info,
    "KeyedAead.encrypt": xps.engine.KeyedAead.encrypt, "KeyedAead.decrypt": xps.engine.KeyedAead.decrypt,
    "KeyedAead.open": xps.engine.KeyedAead.open,
    "ed25519.sign": xps.ed25519.sign, "ed25519.verify": xps.ed25519.verify,
    "ed25519.public_key": xps.ed25519.public_key, "ed25519.generate_keypair": xps.ed25519.generate_keypair,
    "x25519.derive_shared": xps.x25519.derive_shared, "mlkem768.encapsulate": xps.mlkem768.encapsulate,
    "mlkem768.decapsulate": xps.mlkem768.decapsulate, "hkdf.derive": xps.hkdf.derive,
    "hkdf.extract": xps.hkdf.extract, "hkdf.expand": xps.hkdf.expand,
    "SecretBytes": SecretBytes, "SecretBytes.take": SecretBytes.take, "Sealed": Sealed, "Sealed.of": Sealed.of,
    "constant_time_eq": xps.constant_time_eq, "secure_wipe": xps.secure_wipe, "random_bytes": xps.random_bytes,
    "Engine": Engine, "Engine.publish": Engine.publish, "Engine.build_table": Engine.build_table,
    "Engine.add_fault_listener": Engine.add_fault_listener,
    "Engine.add_table_fault_listener": Engine.add_table_fault_listener,
    "Engine.add_auth_failure_listener": Engine.add_auth_failure_listener,
}


@pytest.mark.parametrize("fn", list(PUBLIC.values()), ids=list(PUBLIC))
def test_public_functions_document_what_they_raise(fn: Callable[..., Any]) -> None:
    assert "Raises:" in (fn.__doc__ or ""), f"{fn.__qualname__} has no Raises: section"
