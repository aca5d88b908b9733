"""Ed25519, ML-DSA-65, X25519, ML-KEM-768, HKDF-SHA256 and random_bytes through the public API.

Known answers come from the self-test vector files (kat/selftest/*.json). A recording provider
(a real plugin over the openssl implementations) shows that malformed inputs are refused
before any provider code runs, and that a provider fault is wrapped as ProviderError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
import xpscerpto.kat
from xpscerpto import (
    AuthError,
    Engine,
    EngineConfig,
    KeyError_,
    NonceError,
    PolicyError,
    ProviderError,
    SecretBytes,
    XpsError,
)
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Buffer, Provider
from xpscerpto.plugins import openssl

CODE = {
    AuthError: "XPS_ERR_AUTH",
    KeyError_: "XPS_ERR_KEY",
    NonceError: "XPS_ERR_NONCE",
    PolicyError: "XPS_ERR_POLICY",
    ProviderError: "XPS_ERR_INTERNAL",
}


def _raises(cls: type[XpsError], field: str | None, fn: Callable[[], object]) -> XpsError:
    """Run ``fn``; it must raise exactly ``cls`` with its code first and ``field`` named."""
    with pytest.raises(XpsError) as ei:
        fn()
    e = ei.value
    assert type(e) is cls, f"expected {cls.__name__}, got {type(e).__name__}: {e}"
    assert e.code == CODE[cls]
    assert str(e).startswith(CODE[cls] + ": ")
    if field is not None:
        assert field in str(e), f"{field!r} not named in {str(e)!r}"
    return e


@cache
def _vectors(operation: str) -> tuple[dict[str, Any], ...]:
    path = Path(xpscerpto.kat.__file__).with_name("selftest") / f"{operation}.json"
    doc = json.loads(path.read_text())
    return tuple(
        {k: (bytes.fromhex(x) if isinstance(x, str) and k not in ("source", "result") else x)
         for k, x in raw.items()}
        for raw in doc["vectors"])


def _by_source(operation: str, source: str) -> dict[str, Any]:
    (v,) = [v for v in _vectors(operation) if v["source"] == source]
    return v


def _vector_params(operation: str, pred: Callable[[dict[str, Any]], bool] = lambda v: True) -> Any:
    vs = [v for v in _vectors(operation) if pred(v)]
    assert vs, f"no vectors for {operation}"
    return pytest.mark.parametrize("v", vs, ids=[f"{i}:{v['source']}" for i, v in enumerate(vs)])


def _flip(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


# -- a recording provider ------------------------------------------------------------------------

SPY = "spy"
MAGIC = b"\xde\xad please fail \xbe\xef"


class _Calls:
    log: list[str] = []  # noqa: RUF012 - one shared log, cleared by the fixture


class SpyEd25519(openssl.Ed25519Impl):
    def generate(self) -> tuple[bytes, bytearray]:
        _Calls.log.append("ed25519.generate")
        return super().generate()

    def public_key(self, secret_key: Buffer) -> bytes:
        _Calls.log.append("ed25519.public_key")
        return super().public_key(secret_key)

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        _Calls.log.append("ed25519.sign")
        if bytes(message) == MAGIC:
            raise RuntimeError("signer exploded")
        return super().sign(secret_key, message, context)

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        _Calls.log.append("ed25519.verify")
        super().verify(public_key, message, signature, context)


class SpyMlDsa65(openssl.MlDsa65Impl):
    def generate(self) -> tuple[bytes, bytearray]:
        _Calls.log.append("mldsa65.generate")
        return super().generate()

    def public_key(self, secret_key: Buffer) -> bytes:
        _Calls.log.append("mldsa65.public_key")
        return super().public_key(secret_key)

    def sign(self, secret_key: Buffer, message: Buffer, context: bytes) -> bytes:
        _Calls.log.append("mldsa65.sign")
        return super().sign(secret_key, message, context)

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes) -> None:
        _Calls.log.append("mldsa65.verify")
        super().verify(public_key, message, signature, context)


class SpyX25519(openssl.X25519Impl):
    def generate(self) -> tuple[bytes, bytearray]:
        _Calls.log.append("x25519.generate")
        return super().generate()

    def public_key(self, secret_key: Buffer) -> bytes:
        _Calls.log.append("x25519.public_key")
        return super().public_key(secret_key)

    def exchange(self, secret_key: Buffer, peer_public_key: Buffer) -> bytearray:
        _Calls.log.append("x25519.exchange")
        return super().exchange(secret_key, peer_public_key)


class SpyMlKem768(openssl.MlKem768Impl):
    def generate(self) -> tuple[bytes, bytearray]:
        _Calls.log.append("mlkem768.generate")
        return super().generate()

    def public_key(self, secret_key: Buffer) -> bytes:
        _Calls.log.append("mlkem768.public_key")
        return super().public_key(secret_key)

    def encapsulate(self, public_key: Buffer) -> tuple[bytes, bytearray]:
        _Calls.log.append("mlkem768.encapsulate")
        return super().encapsulate(public_key)

    def decapsulate(self, secret_key: Buffer, ciphertext: Buffer) -> bytearray:
        _Calls.log.append("mlkem768.decapsulate")
        return super().decapsulate(secret_key, ciphertext)


class SpyHkdf(openssl.HkdfSha256Impl):
    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        _Calls.log.append("hkdf.extract")
        return super().extract(salt, ikm)

    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        _Calls.log.append("hkdf.expand")
        return super().expand(prk, info, length)


SPY_IMPLS: dict[str, object] = {
    "sig.ed25519": SpyEd25519(),
    "sig.mldsa65": SpyMlDsa65(),
    "kex.x25519": SpyX25519(),
    "kem.mlkem768": SpyMlKem768(),
    "kdf.hkdf_sha256": SpyHkdf(),
}


class SpyPlugin:
    __name__ = "spy-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name=SPY, backend="openssl via cryptography (recording)", version="0",
                              implementations=SPY_IMPLS))


@pytest.fixture(scope="module")
def spy_started() -> Engine:
    eng = Engine(EngineConfig(prefer=dict.fromkeys(SPY_IMPLS, SPY)), plugins=[SpyPlugin()])
    assert sorted((r.operation, r.passed) for r in eng.state.selftests if r.provider == SPY) == [
        (op, True) for op in sorted(SPY_IMPLS)]
    for op in SPY_IMPLS:
        assert eng.table.provider_for(op) == SPY
    return eng


@pytest.fixture
def spy(spy_started: Engine) -> Engine:
    _Calls.log.clear()
    return spy_started


# -- malformed inputs: refused with a typed error, before any provider code ----------------------

_ED_PK, _ED_SIG = bytes(32), bytes(64)
_MD_PK, _MD_SIG = bytes(1952), bytes(3309)
_KEM_EK, _KEM_CT = bytes(1184), bytes(1088)

# scenario -> (call on an engine, error class, field the message must name)
Case = tuple[Callable[[Engine], object], type[XpsError], str]
BAD_INPUTS: dict[str, Case] = {
    # Ed25519
    "ed25519.sign secret_key 31 bytes": (lambda e: e.ed25519.sign(bytes(31), b"m"), KeyError_, "secret_key"),
    "ed25519.sign secret_key 33 bytes": (lambda e: e.ed25519.sign(bytes(33), b"m"), KeyError_, "secret_key"),
    "ed25519.sign secret_key 64 bytes (expanded key)": (
        lambda e: e.ed25519.sign(bytes(64), b"m"), KeyError_, "secret_key"),
    "ed25519.sign secret_key empty": (lambda e: e.ed25519.sign(b"", b"m"), KeyError_, "secret_key"),
    "ed25519.sign secret_key str": (lambda e: e.ed25519.sign("k" * 32, b"m"), KeyError_, "secret_key"),
    "ed25519.sign secret_key None": (lambda e: e.ed25519.sign(None, b"m"), KeyError_, "secret_key"),
    "ed25519.sign message str": (lambda e: e.ed25519.sign(bytes(32), "m"), PolicyError, "message"),
    "ed25519.sign with context": (lambda e: e.ed25519.sign(bytes(32), b"m", b"ctx"), PolicyError, "context"),
    "ed25519.public_key secret_key 31 bytes": (
        lambda e: e.ed25519.public_key(bytes(31)), KeyError_, "secret_key"),
    "ed25519.verify public_key 31 bytes": (
        lambda e: e.ed25519.verify(bytes(31), b"m", _ED_SIG), KeyError_, "public_key"),
    "ed25519.verify public_key 33 bytes": (
        lambda e: e.ed25519.verify(bytes(33), b"m", _ED_SIG), KeyError_, "public_key"),
    "ed25519.verify public_key str": (
        lambda e: e.ed25519.verify("p" * 32, b"m", _ED_SIG), KeyError_, "public_key"),
    "ed25519.is_valid public_key 31 bytes": (
        lambda e: e.ed25519.is_valid(bytes(31), b"m", _ED_SIG), KeyError_, "public_key"),
    "ed25519.verify signature 63 bytes": (
        lambda e: e.ed25519.verify(_ED_PK, b"m", bytes(63)), AuthError, "signature"),
    "ed25519.verify signature 65 bytes": (
        lambda e: e.ed25519.verify(_ED_PK, b"m", bytes(65)), AuthError, "signature"),
    "ed25519.verify signature empty": (lambda e: e.ed25519.verify(_ED_PK, b"m", b""), AuthError, "signature"),
    "ed25519.verify signature str": (
        lambda e: e.ed25519.verify(_ED_PK, b"m", "s" * 64), AuthError, "signature"),
    "ed25519.verify message str": (lambda e: e.ed25519.verify(_ED_PK, "m", _ED_SIG), PolicyError, "message"),
    "ed25519.verify with context": (
        lambda e: e.ed25519.verify(_ED_PK, b"m", _ED_SIG, b"ctx"), PolicyError, "context"),
    "ed25519.is_valid with context": (
        lambda e: e.ed25519.is_valid(_ED_PK, b"m", _ED_SIG, b"ctx"), PolicyError, "context"),
    # ML-DSA-65
    "mldsa65.sign secret_key 31 bytes": (lambda e: e.mldsa65.sign(bytes(31), b"m"), KeyError_, "secret_key"),
    "mldsa65.sign secret_key 4032 bytes (expanded key)": (
        lambda e: e.mldsa65.sign(bytes(4032), b"m"), KeyError_, "secret_key"),
    "mldsa65.sign context 256 bytes": (
        lambda e: e.mldsa65.sign(bytes(32), b"m", bytes(256)), PolicyError, "context"),
    "mldsa65.sign context str": (lambda e: e.mldsa65.sign(bytes(32), b"m", "ctx"), PolicyError, "context"),
    "mldsa65.public_key secret_key 33 bytes": (
        lambda e: e.mldsa65.public_key(bytes(33)), KeyError_, "secret_key"),
    "mldsa65.verify public_key 1951 bytes": (
        lambda e: e.mldsa65.verify(bytes(1951), b"m", _MD_SIG), KeyError_, "public_key"),
    "mldsa65.verify signature 3308 bytes": (
        lambda e: e.mldsa65.verify(_MD_PK, b"m", bytes(3308)), AuthError, "signature"),
    "mldsa65.verify signature 3310 bytes": (
        lambda e: e.mldsa65.verify(_MD_PK, b"m", bytes(3310)), AuthError, "signature"),
    "mldsa65.verify context 256 bytes": (
        lambda e: e.mldsa65.verify(_MD_PK, b"m", _MD_SIG, bytes(256)), PolicyError, "context"),
    # X25519
    "x25519.derive_shared secret_key 31 bytes": (
        lambda e: e.x25519.derive_shared(bytes(31), bytes(range(32))), KeyError_, "secret_key"),
    "x25519.derive_shared secret_key str": (
        lambda e: e.x25519.derive_shared("k" * 32, bytes(range(32))), KeyError_, "secret_key"),
    "x25519.derive_shared peer_public_key 31 bytes": (
        lambda e: e.x25519.derive_shared(bytes(range(32)), bytes(31)), KeyError_, "peer_public_key"),
    "x25519.derive_shared peer_public_key 33 bytes": (
        lambda e: e.x25519.derive_shared(bytes(range(32)), bytes(33)), KeyError_, "peer_public_key"),
    "x25519.derive_shared peer_public_key None": (
        lambda e: e.x25519.derive_shared(bytes(range(32)), None), KeyError_, "peer_public_key"),
    "x25519.public_key secret_key 33 bytes": (
        lambda e: e.x25519.public_key(bytes(33)), KeyError_, "secret_key"),
    # ML-KEM-768
    "mlkem768.encapsulate public_key 1183 bytes": (
        lambda e: e.mlkem768.encapsulate(bytes(1183)), KeyError_, "public_key"),
    "mlkem768.encapsulate public_key 1185 bytes": (
        lambda e: e.mlkem768.encapsulate(bytes(1185)), KeyError_, "public_key"),
    "mlkem768.encapsulate public_key str": (
        lambda e: e.mlkem768.encapsulate("p" * 1184), KeyError_, "public_key"),
    "mlkem768.decapsulate secret_key 63 bytes": (
        lambda e: e.mlkem768.decapsulate(bytes(63), _KEM_CT), KeyError_, "secret_key"),
    "mlkem768.decapsulate secret_key 2400 bytes (expanded key)": (
        lambda e: e.mlkem768.decapsulate(bytes(2400), _KEM_CT), KeyError_, "secret_key"),
    "mlkem768.decapsulate ciphertext 1087 bytes": (
        lambda e: e.mlkem768.decapsulate(bytes(64), bytes(1087)), AuthError, "ciphertext"),
    "mlkem768.decapsulate ciphertext 1089 bytes": (
        lambda e: e.mlkem768.decapsulate(bytes(64), bytes(1089)), AuthError, "ciphertext"),
    "mlkem768.decapsulate ciphertext empty": (
        lambda e: e.mlkem768.decapsulate(bytes(64), b""), AuthError, "ciphertext"),
    "mlkem768.decapsulate ciphertext str": (
        lambda e: e.mlkem768.decapsulate(bytes(64), "c" * 1088), AuthError, "ciphertext"),
    "mlkem768.public_key secret_key 32 bytes": (
        lambda e: e.mlkem768.public_key(bytes(32)), KeyError_, "secret_key"),
    # HKDF-SHA256
    "hkdf.derive length 0": (lambda e: e.hkdf.derive(b"ikm", 0), KeyError_, "length"),
    "hkdf.derive length 255*32+1": (lambda e: e.hkdf.derive(b"ikm", 255 * 32 + 1), KeyError_, "length"),
    "hkdf.derive length -1": (lambda e: e.hkdf.derive(b"ikm", -1), KeyError_, "length"),
    "hkdf.derive length float": (lambda e: e.hkdf.derive(b"ikm", 32.0), KeyError_, "length"),
    "hkdf.derive length str": (lambda e: e.hkdf.derive(b"ikm", "32"), KeyError_, "length"),
    "hkdf.derive length None": (lambda e: e.hkdf.derive(b"ikm", None), KeyError_, "length"),
    "hkdf.derive length bool": (lambda e: e.hkdf.derive(b"ikm", True), KeyError_, "length"),
    "hkdf.derive ikm str": (lambda e: e.hkdf.derive("ikm", 32), KeyError_, "ikm"),
    "hkdf.derive ikm None": (lambda e: e.hkdf.derive(None, 32), KeyError_, "ikm"),
    "hkdf.derive salt str": (lambda e: e.hkdf.derive(b"ikm", 32, salt="salt"), PolicyError, "salt"),
    "hkdf.derive info str": (lambda e: e.hkdf.derive(b"ikm", 32, info="info"), PolicyError, "info"),
    "hkdf.extract ikm str": (lambda e: e.hkdf.extract(b"salt", "ikm"), KeyError_, "ikm"),
    "hkdf.extract salt None": (lambda e: e.hkdf.extract(None, b"ikm"), PolicyError, "salt"),
    "hkdf.expand prk 31 bytes": (lambda e: e.hkdf.expand(bytes(31), b"", 32), KeyError_, "prk"),
    "hkdf.expand prk empty": (lambda e: e.hkdf.expand(b"", b"", 32), KeyError_, "prk"),
    "hkdf.expand prk str": (lambda e: e.hkdf.expand("p" * 32, b"", 32), KeyError_, "prk"),
    "hkdf.expand info str": (lambda e: e.hkdf.expand(bytes(32), "info", 32), PolicyError, "info"),
    "hkdf.expand length 0": (lambda e: e.hkdf.expand(bytes(32), b"", 0), KeyError_, "length"),
    "hkdf.expand length 255*32+1": (
        lambda e: e.hkdf.expand(bytes(32), b"", 255 * 32 + 1), KeyError_, "length"),
    "hkdf.expand length float": (lambda e: e.hkdf.expand(bytes(32), b"", 32.0), KeyError_, "length"),
}


@pytest.mark.parametrize(("call", "cls", "field"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_a_typed_error_naming_the_field(call: Callable[[Engine], object],
                                                     cls: type[XpsError], field: str) -> None:
    _raises(cls, field, lambda: call(xps.default_engine()))


@pytest.mark.parametrize(("call", "cls", "field"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_before_any_provider_code_runs(spy: Engine, call: Callable[[Engine], object],
                                                            cls: type[XpsError], field: str) -> None:
    _raises(cls, field, lambda: call(spy))
    assert _Calls.log == []


def test_spy_provider_records_real_calls(spy: Engine) -> None:
    # the counterpart of the test above: a valid call does reach the provider
    pk, sk = spy.ed25519.generate_keypair()
    spy.ed25519.verify(pk, b"m", spy.ed25519.sign(sk, b"m"))
    assert _Calls.log == ["ed25519.generate", "ed25519.sign", "ed25519.verify"]


# -- Ed25519 -------------------------------------------------------------------------------------


def test_ed25519_rfc8032_test1() -> None:
    v = _by_source("sig.ed25519", "RFC 8032 7.1 TEST 1")
    assert xps.ed25519.public_key(v["sk"]) == v["pk"]
    sig = xps.ed25519.sign(v["sk"], v["msg"])
    assert sig == v["sig"]
    assert xps.ed25519.sign(v["sk"], v["msg"]) == sig  # deterministic
    assert xps.ed25519.sign(SecretBytes(v["sk"]), v["msg"]) == sig
    xps.ed25519.verify(v["pk"], v["msg"], sig)
    assert xps.ed25519.is_valid(v["pk"], v["msg"], sig) is True


@_vector_params("sig.ed25519", lambda v: "sk" in v)
def test_ed25519_deterministic_vectors(v: dict[str, Any]) -> None:
    assert xps.ed25519.public_key(v["sk"]) == v["pk"]
    assert xps.ed25519.sign(v["sk"], v["msg"]) == v["sig"]
    assert xps.ed25519.sign(bytearray(v["sk"]), memoryview(v["msg"])) == v["sig"]


@_vector_params("sig.ed25519")
def test_ed25519_verify_vectors(v: dict[str, Any]) -> None:
    if v["result"] == "valid":
        xps.ed25519.verify(v["pk"], v["msg"], v["sig"])
        assert xps.ed25519.is_valid(v["pk"], v["msg"], v["sig"]) is True
    else:
        _raises(AuthError, None, lambda: xps.ed25519.verify(v["pk"], v["msg"], v["sig"]))
        assert xps.ed25519.is_valid(v["pk"], v["msg"], v["sig"]) is False


ED_FORGERIES: dict[str, Callable[[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]] = {
    "message with one bit flipped": lambda pk, m, s: (pk, _flip(m, 0), s),
    "message with a byte appended": lambda pk, m, s: (pk, m + b"\x00", s),
    "message truncated": lambda pk, m, s: (pk, m[:-1], s),
    "empty message": lambda pk, m, s: (pk, b"", s),
    "signature R flipped": lambda pk, m, s: (pk, m, _flip(s, 0)),
    "signature S flipped": lambda pk, m, s: (pk, m, _flip(s, 40)),
    "signature last byte flipped": lambda pk, m, s: (pk, m, _flip(s, 63)),
    "all-zero signature": lambda pk, m, s: (pk, m, bytes(64)),
    "public key flipped": lambda pk, m, s: (_flip(pk, 0), m, s),
    "other public key": lambda pk, m, s: (xps.ed25519.generate_keypair()[0], m, s),
}


@pytest.mark.parametrize("forge", list(ED_FORGERIES.values()), ids=list(ED_FORGERIES))
def test_ed25519_forgery_is_auth_error(
        forge: Callable[[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]) -> None:
    pk, sk = xps.ed25519.generate_keypair()
    msg = b"transfer 100 to alice"
    sig = xps.ed25519.sign(sk, msg)
    xps.ed25519.verify(pk, msg, sig)
    fpk, fmsg, fsig = forge(pk, msg, sig)
    _raises(AuthError, None, lambda: xps.ed25519.verify(fpk, fmsg, fsig))
    assert xps.ed25519.is_valid(fpk, fmsg, fsig) is False


def test_ed25519_generated_keypair() -> None:
    pk, sk = xps.ed25519.generate_keypair()
    assert type(pk) is bytes and len(pk) == 32
    assert type(sk) is SecretBytes and len(sk) == 32
    assert xps.ed25519.public_key(sk) == pk
    sig = xps.ed25519.sign(sk, b"m")
    assert type(sig) is bytes and len(sig) == 64
    assert xps.ed25519.verify(pk, b"m", sig) is None
    assert xps.ed25519.is_valid(pk, b"m", sig) is True
    assert xps.ed25519.generate_keypair()[0] != pk


# -- ML-DSA-65 -----------------------------------------------------------------------------------


@_vector_params("sig.mldsa65")
def test_mldsa65_vectors(v: dict[str, Any]) -> None:
    ctx = v.get("ctx", b"")
    assert xps.mldsa65.public_key(v["sk"]) == v["pk"]
    xps.mldsa65.verify(v["pk"], v["msg"], v["sig"], ctx)
    # hedged signing: a fresh signature differs but verifies under the vector's key
    sig = xps.mldsa65.sign(v["sk"], v["msg"], ctx)
    xps.mldsa65.verify(v["pk"], v["msg"], sig, ctx)


@pytest.fixture(scope="module")
def mldsa_keys() -> tuple[bytes, SecretBytes]:
    return xps.mldsa65.generate_keypair()


CONTEXTS = {"no context": b"", "short context": b"app/v1", "255-byte context": bytes(range(255))}


@pytest.mark.parametrize("ctx", list(CONTEXTS.values()), ids=list(CONTEXTS))
def test_mldsa65_round_trip(mldsa_keys: tuple[bytes, SecretBytes], ctx: bytes) -> None:
    pk, sk = mldsa_keys
    sig = xps.mldsa65.sign(sk, b"message", ctx) if ctx else xps.mldsa65.sign(sk, b"message")
    assert len(sig) == 3309
    if ctx:
        xps.mldsa65.verify(pk, b"message", sig, ctx)
    else:
        xps.mldsa65.verify(pk, b"message", sig)
    assert xps.mldsa65.is_valid(pk, b"message", sig, ctx) is True


def test_mldsa65_sizes(mldsa_keys: tuple[bytes, SecretBytes]) -> None:
    pk, sk = mldsa_keys
    assert type(pk) is bytes and len(pk) == 1952
    assert type(sk) is SecretBytes and len(sk) == 32
    assert xps.mldsa65.public_key(sk) == pk


def test_mldsa65_signing_is_hedged(mldsa_keys: tuple[bytes, SecretBytes]) -> None:
    pk, sk = mldsa_keys
    a, b = xps.mldsa65.sign(sk, b"m"), xps.mldsa65.sign(sk, b"m")
    assert a != b
    xps.mldsa65.verify(pk, b"m", a)
    xps.mldsa65.verify(pk, b"m", b)


MLDSA_FORGERIES: dict[str, Callable[[bytes, bytes, bytes, bytes], tuple[bytes, bytes, bytes, bytes]]] = {
    "wrong context": lambda pk, m, s, c: (pk, m, s, b"app/v2"),
    "context dropped": lambda pk, m, s, c: (pk, m, s, b""),
    "message flipped": lambda pk, m, s, c: (pk, _flip(m, 0), s, c),
    "signature flipped": lambda pk, m, s, c: (pk, m, _flip(s, 100), c),
    "signature last byte flipped": lambda pk, m, s, c: (pk, m, _flip(s, -1), c),
    "public key flipped": lambda pk, m, s, c: (_flip(pk, 40), m, s, c),
    "all-zero signature": lambda pk, m, s, c: (pk, m, bytes(3309), c),
}


@pytest.mark.parametrize("forge", list(MLDSA_FORGERIES.values()), ids=list(MLDSA_FORGERIES))
def test_mldsa65_forgery_is_auth_error(mldsa_keys: tuple[bytes, SecretBytes], forge: Any) -> None:
    pk, sk = mldsa_keys
    msg, ctx = b"transfer 100 to alice", b"app/v1"
    sig = xps.mldsa65.sign(sk, msg, ctx)
    fpk, fmsg, fsig, fctx = forge(pk, msg, sig, ctx)
    _raises(AuthError, None, lambda: xps.mldsa65.verify(fpk, fmsg, fsig, fctx))
    assert xps.mldsa65.is_valid(fpk, fmsg, fsig, fctx) is False


def test_mldsa65_context_over_255_bytes_is_policy_error(mldsa_keys: tuple[bytes, SecretBytes]) -> None:
    pk, sk = mldsa_keys
    e = _raises(PolicyError, "context", lambda: xps.mldsa65.sign(sk, b"m", bytes(256)))
    assert "255" in str(e)
    sig = xps.mldsa65.sign(sk, b"m", bytes(255))
    _raises(PolicyError, "context", lambda: xps.mldsa65.verify(pk, b"m", sig, bytes(256)))
    _raises(PolicyError, "context", lambda: xps.mldsa65.is_valid(pk, b"m", sig, bytes(256)))


# -- X25519 --------------------------------------------------------------------------------------


@_vector_params("kex.x25519")
def test_x25519_vectors(v: dict[str, Any]) -> None:
    shared = xps.x25519.derive_shared(v["private"], v["public"])
    assert type(shared) is SecretBytes
    assert shared == v["shared"]


def test_x25519_both_sides_agree() -> None:
    a_pk, a_sk = xps.x25519.generate_keypair()
    b_pk, b_sk = xps.x25519.generate_keypair()
    assert type(a_sk) is SecretBytes and len(a_sk) == 32
    assert type(a_pk) is bytes and len(a_pk) == 32
    assert xps.x25519.public_key(a_sk) == a_pk
    ab = xps.x25519.derive_shared(a_sk, b_pk)
    ba = xps.x25519.derive_shared(b_sk, a_pk)
    assert type(ab) is SecretBytes and type(ba) is SecretBytes
    assert len(ab) == 32
    assert ab == ba
    assert ab != bytes(32)
    c_pk, _ = xps.x25519.generate_keypair()
    assert xps.x25519.derive_shared(a_sk, c_pk) != ab


def test_x25519_accepts_bytes_like_keys() -> None:
    _a_pk, a_sk = xps.x25519.generate_keypair()
    b_pk, _b_sk = xps.x25519.generate_keypair()
    expected = xps.x25519.derive_shared(a_sk, b_pk)
    assert xps.x25519.derive_shared(a_sk.reveal(), bytearray(b_pk)) == expected
    assert xps.x25519.derive_shared(bytearray(a_sk.reveal()), memoryview(b_pk)) == expected


_P = 2**255 - 19
# Public values whose shared secret is zero for every (clamped) private key: the small-order
# u-coordinates and their non-canonical encodings, built from their definitions.
LOW_ORDER = {
    "u = 0 (32 zero bytes)": 0,
    "u = 1": 1,
    "u = p - 1": _P - 1,
    "u = p (non-canonical 0)": _P,
    "u = p + 1 (non-canonical 1)": _P + 1,
    "u = 2^255 (high bit set, masks to 0)": 2**255,
    "u = 2^255 + 1 (high bit set, masks to 1)": 2**255 + 1,
}


@pytest.mark.parametrize("u", list(LOW_ORDER.values()), ids=list(LOW_ORDER))
def test_x25519_low_order_peer_key_is_key_error(u: int) -> None:
    _pk, sk = xps.x25519.generate_keypair()
    peer = u.to_bytes(32, "little")
    _raises(KeyError_, "peer_public_key", lambda: xps.x25519.derive_shared(sk, peer))


def test_x25519_all_zero_peer_key_is_refused_whatever_the_private_key() -> None:
    for sk in (bytes(32), bytes(range(32)), b"\xff" * 32):
        _raises(KeyError_, "peer_public_key", lambda sk=sk: xps.x25519.derive_shared(sk, bytes(32)))


# -- ML-KEM-768 ----------------------------------------------------------------------------------


@_vector_params("kem.mlkem768")
def test_mlkem768_vectors(v: dict[str, Any]) -> None:
    assert xps.mlkem768.public_key(v["seed"]) == v["ek"]
    k = xps.mlkem768.decapsulate(v["seed"], v["c"])
    assert type(k) is SecretBytes
    assert k == v["K"]


@pytest.fixture(scope="module")
def kem_keys() -> tuple[bytes, SecretBytes]:
    return xps.mlkem768.generate_keypair()


def test_mlkem768_round_trip(kem_keys: tuple[bytes, SecretBytes]) -> None:
    ek, dk = kem_keys
    assert type(ek) is bytes and len(ek) == 1184
    assert type(dk) is SecretBytes and len(dk) == 64
    assert xps.mlkem768.public_key(dk) == ek
    ct, ss = xps.mlkem768.encapsulate(ek)
    assert type(ct) is bytes and len(ct) == 1088
    assert type(ss) is SecretBytes and len(ss) == 32
    assert xps.mlkem768.decapsulate(dk, ct) == ss
    ct2, ss2 = xps.mlkem768.encapsulate(ek)
    assert ct2 != ct
    assert ss2 != ss


KEM_TAMPERS = {"first byte": 0, "middle byte": 544, "last byte": 1087}


@pytest.mark.parametrize("pos", list(KEM_TAMPERS.values()), ids=list(KEM_TAMPERS))
def test_mlkem768_tampered_ciphertext_gives_another_secret(kem_keys: tuple[bytes, SecretBytes],
                                                           pos: int) -> None:
    ek, dk = kem_keys
    ct, ss = xps.mlkem768.encapsulate(ek)
    bad = _flip(ct, pos)
    k1 = xps.mlkem768.decapsulate(dk, bad)  # implicit rejection: no exception
    assert type(k1) is SecretBytes and len(k1) == 32
    assert k1 != ss
    assert xps.mlkem768.decapsulate(dk, bad) == k1  # pseudo-random but deterministic


def test_mlkem768_wrong_decapsulation_key_gives_another_secret(kem_keys: tuple[bytes, SecretBytes]) -> None:
    ek, _dk = kem_keys
    _ek2, dk2 = xps.mlkem768.generate_keypair()
    ct, ss = xps.mlkem768.encapsulate(ek)
    assert xps.mlkem768.decapsulate(dk2, ct) != ss


def test_mlkem768_malformed_encapsulation_key_is_key_error() -> None:
    # Right length, but the coefficients are not reduced mod q (FIPS 203 7.2 modulus check):
    # a bad key from the caller, not a provider fault.
    _raises(KeyError_, "public_key", lambda: xps.mlkem768.encapsulate(b"\xff" * 1184))


# -- HKDF-SHA256 ---------------------------------------------------------------------------------


@_vector_params("kdf.hkdf_sha256")
def test_hkdf_vectors(v: dict[str, Any]) -> None:
    okm = xps.hkdf.derive(v["ikm"], v["size"], salt=v["salt"], info=v["info"])
    assert type(okm) is SecretBytes
    assert okm == v["okm"]
    prk = xps.hkdf.extract(v["salt"], v["ikm"])
    assert type(prk) is SecretBytes and len(prk) == 32
    assert xps.hkdf.expand(prk, v["info"], v["size"]) == v["okm"]


HKDF_LENGTHS = {"1": 1, "32": 32, "33": 33, "64": 64, "255*32 (max)": 255 * 32}


@pytest.mark.parametrize("length", list(HKDF_LENGTHS.values()), ids=list(HKDF_LENGTHS))
def test_hkdf_derive_extract_expand_agree(length: int) -> None:
    ikm, salt, info = b"input keying material", b"salt value", b"context info"
    okm = xps.hkdf.derive(ikm, length, salt=salt, info=info)
    assert type(okm) is SecretBytes and len(okm) == length
    with xps.hkdf.extract(salt, ikm) as prk:
        assert xps.hkdf.expand(prk, info, length) == okm
    # a prefix property of HKDF-Expand: shorter outputs are prefixes of longer ones
    assert xps.hkdf.derive(ikm, 255 * 32, salt=salt, info=info).reveal()[:length] == okm.reveal()


def test_hkdf_empty_salt_is_hashlen_zeros() -> None:
    assert xps.hkdf.extract(b"", b"ikm") == xps.hkdf.extract(bytes(32), b"ikm")
    assert xps.hkdf.derive(b"ikm", 42) == xps.hkdf.derive(b"ikm", 42, salt=bytes(32))


def test_hkdf_inputs_separate_outputs() -> None:
    base = xps.hkdf.derive(b"ikm", 32, salt=b"s", info=b"i")
    assert xps.hkdf.derive(b"ikm2", 32, salt=b"s", info=b"i") != base
    assert xps.hkdf.derive(b"ikm", 32, salt=b"s2", info=b"i") != base
    assert xps.hkdf.derive(b"ikm", 32, salt=b"s", info=b"i2") != base


def test_hkdf_accepts_secret_bytes() -> None:
    ikm = SecretBytes(b"shared secret material")
    okm = xps.hkdf.derive(ikm, 32, info=b"k")
    assert okm == xps.hkdf.derive(ikm.reveal(), 32, info=b"k")
    prk = xps.hkdf.extract(b"", ikm)
    assert xps.hkdf.expand(prk, b"k", 32) == okm


def test_hkdf_length_error_does_not_echo_keying_material() -> None:
    # Arguments swapped by mistake: the keying material lands in `length`. The error must name
    # the field without printing the secret it was given.
    secret = bytes(range(0x41, 0x41 + 32))
    e = _raises(KeyError_, "length", lambda: xps.hkdf.derive(64, secret))  # type: ignore[arg-type]
    for text in (str(e), repr(e.args)):
        assert repr(secret) not in text
        assert secret.decode() not in text
        assert secret[:8].decode() not in text
        assert secret.hex() not in text


# -- random_bytes --------------------------------------------------------------------------------


RANDOM_LENGTHS = {"0": 0, "1": 1, "16": 16, "32": 32, "1000": 1000, "1 MiB (max)": 1 << 20}


@pytest.mark.parametrize("n", list(RANDOM_LENGTHS.values()), ids=list(RANDOM_LENGTHS))
def test_random_bytes_length(n: int) -> None:
    out = xps.random_bytes(n)
    assert type(out) is bytes
    assert len(out) == n


def test_random_bytes_are_fresh() -> None:
    draws = {xps.random_bytes(32) for _ in range(64)}
    assert len(draws) == 64
    assert bytes(32) not in draws


BAD_N: dict[str, Any] = {
    "negative": -1,
    "above the 1 MiB cap": (1 << 20) + 1,
    "float": 32.0,
    "str": "32",
    "None": None,
    "bool": True,
    "bytes": b"\x20",
}


@pytest.mark.parametrize("n", list(BAD_N.values()), ids=list(BAD_N))
def test_random_bytes_bad_length_is_key_error(n: Any) -> None:
    e = _raises(KeyError_, "n", lambda: xps.random_bytes(n))
    assert str(e).startswith("XPS_ERR_KEY: n: ")


# -- provider faults -----------------------------------------------------------------------------


def test_signature_provider_fault_is_provider_error_chained_to_the_cause(spy: Engine) -> None:
    _pk, sk = spy.ed25519.generate_keypair()
    e = _raises(ProviderError, SPY, lambda: spy.ed25519.sign(sk, MAGIC))
    assert "sig.ed25519" in str(e)
    assert isinstance(e, xps.InternalError)
    assert isinstance(e.__cause__, RuntimeError)
    assert str(e.__cause__) == "signer exploded"
    assert sk.reveal().hex() not in str(e)


def test_engine_keeps_serving_after_a_signature_provider_fault(spy: Engine) -> None:
    pk, sk = spy.ed25519.generate_keypair()
    with pytest.raises(ProviderError):
        spy.ed25519.sign(sk, MAGIC)
    sig = spy.ed25519.sign(sk, b"ordinary message")
    spy.ed25519.verify(pk, b"ordinary message", sig)
    xps.ed25519.verify(pk, b"ordinary message", sig)  # and interoperates with the default engine
    assert spy.ed25519.provider == SPY
