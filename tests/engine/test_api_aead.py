"""The AEAD API over every algorithm the default engine routes: round trips, every bad input,
authentication failures, nonce policy, and provider faults wrapped as ProviderError."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
import xpscerpto.kat
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import (
    AEAD,
    AuthError,
    Engine,
    EngineConfig,
    KeyError_,
    NonceError,
    PolicyError,
    ProviderError,
    Sealed,
    SecretBytes,
    XpsError,
)
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider

CODE = {
    AuthError: "XPS_ERR_AUTH",
    KeyError_: "XPS_ERR_KEY",
    NonceError: "XPS_ERR_NONCE",
    PolicyError: "XPS_ERR_POLICY",
    ProviderError: "XPS_ERR_INTERNAL",
}


@dataclass(frozen=True)
class Algo:
    member: AEAD
    operation: str
    compact: str
    key_size: int
    nonce_size: int
    tag_size: int

    @property
    def name(self) -> str:
        return self.member.value


# The README's table of AEAD algorithms: sizes are the algorithms' definitions.
ALGOS: dict[str, Algo] = {a.name: a for a in (
    Algo(AEAD.AES_128_GCM, "aead.aes128gcm", "aes128gcm", 16, 12, 16),
    Algo(AEAD.AES_256_GCM, "aead.aes256gcm", "aes256gcm", 32, 12, 16),
    Algo(AEAD.CHACHA20_POLY1305, "aead.chacha20poly1305", "chacha20poly1305", 32, 12, 16),
    Algo(AEAD.XCHACHA20_POLY1305, "aead.xchacha20poly1305", "xchacha20poly1305", 32, 24, 16),
    Algo(AEAD.AES_256_GCM_SIV, "aead.aes256gcmsiv", "aes256gcmsiv", 32, 12, 16),
    Algo(AEAD.AEGIS_256, "aead.aegis256", "aegis256", 32, 32, 32),
)}
ALGO_LIST = list(ALGOS.values())
ALGO_IDS = list(ALGOS)
# One algorithm per built-in provider, for matrices whose handling does not depend on the cipher.
REPRESENTATIVE = [ALGOS["AES-256-GCM"], ALGOS["XCHACHA20-POLY1305"]]
REPRESENTATIVE_IDS = [a.name for a in REPRESENTATIVE]

PLAINTEXT = b"attack at dawn -- PLAINTEXT-MARKER-7f3a"
AAD = b"header v1"

by_algo = pytest.mark.parametrize("algo", ALGO_LIST, ids=ALGO_IDS)
by_representative = pytest.mark.parametrize("algo", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)


def _key(algo: Algo) -> bytes:
    return bytes(range(1, algo.key_size + 1))


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


def _assert_no_plaintext(e: BaseException) -> None:
    for text in (str(e), repr(e), repr(e.args)):
        assert PLAINTEXT not in text.encode()
        assert PLAINTEXT.hex() not in text
        assert "PLAINTEXT-MARKER" not in text


# -- sizes and round trips -----------------------------------------------------------------------


def test_every_public_aead_member_is_covered() -> None:
    assert set(AEAD) == {a.member for a in ALGO_LIST}


@by_algo
def test_info_reports_the_algorithm_sizes(algo: Algo) -> None:
    info = xps.aead.info(algo.member)
    assert info["operation"] == algo.operation
    assert (info["key_size"], info["nonce_size"], info["tag_size"]) == (
        algo.key_size, algo.nonce_size, algo.tag_size)
    assert isinstance(info["provider"], str) and info["provider"]


AAD_CASES = {"no aad": b"", "with aad": AAD}
PLAINTEXTS = {"empty": b"", "short": PLAINTEXT, "1 MiB": bytes(range(256)) * 4096}


@by_algo
@pytest.mark.parametrize("aad", list(AAD_CASES.values()), ids=list(AAD_CASES))
@pytest.mark.parametrize("plaintext", list(PLAINTEXTS.values()), ids=list(PLAINTEXTS))
def test_round_trip_decrypt_and_open(algo: Algo, aad: bytes, plaintext: bytes) -> None:
    key = _key(algo)
    # Without aad, exercise the default (empty) argument.
    s = xps.aead.encrypt(algo.member, key, plaintext, aad) if aad else xps.aead.encrypt(algo.member, key, plaintext)
    assert type(s) is Sealed
    assert len(s.nonce) == algo.nonce_size
    assert s.tag_size == algo.tag_size
    assert len(s.tag) == algo.tag_size
    assert len(s.ciphertext) == len(plaintext)
    if plaintext:
        assert bytes(s.ciphertext) != plaintext
    assert xps.aead.decrypt(algo.member, key, s.nonce, s.ciphertext, s.tag, aad) == plaintext
    assert xps.aead.open(algo.member, key, s, aad) == plaintext
    if not aad:
        assert xps.aead.decrypt(algo.member, key, s.nonce, s.ciphertext, s.tag) == plaintext
        assert xps.aead.open(algo.member, key, s) == plaintext


def _kat_cases() -> tuple[list[tuple[Algo, dict[str, Any]]], list[str]]:
    """Self-test vectors (data files) whose tag length is the algorithm's, per algorithm."""
    folder = Path(xpscerpto.kat.__file__).with_name("selftest")
    cases, ids = [], []
    for algo in ALGO_LIST:
        doc = json.loads((folder / f"{algo.operation}.json").read_text())
        for i, raw in enumerate(doc["vectors"]):
            v = {k: (bytes.fromhex(x) if k not in ("source", "result") else x) for k, x in raw.items()}
            if len(v["tag"]) != algo.tag_size:
                continue  # a vector for another tag length (Wycheproof AEGIS-256 with 128-bit tags)
            cases.append((algo, v))
            ids.append(f"{algo.name}-{i}-{v['result']}")
    return cases, ids


KAT_CASES, KAT_IDS = _kat_cases()


def test_kat_cases_cover_every_algorithm() -> None:
    assert {a.name for a, _ in KAT_CASES} == set(ALGOS)


@pytest.mark.parametrize(("algo", "v"), KAT_CASES, ids=KAT_IDS)
def test_known_answer_through_the_api(algo: Algo, v: dict[str, Any]) -> None:
    if v["result"] == "valid":
        s = xps.aead.encrypt(algo.name, v["key"], v["msg"], v["aad"], nonce=v["nonce"])
        assert s.ciphertext_and_tag == v["ct"] + v["tag"]
        assert s.nonce == v["nonce"]
        assert xps.aead.decrypt(algo.name, v["key"], v["nonce"], v["ct"], v["tag"], v["aad"]) == v["msg"]
    else:
        _raises(AuthError, None, lambda: xps.aead.decrypt(
            algo.name, v["key"], v["nonce"], v["ct"], v["tag"], v["aad"]))


# -- algorithm names -----------------------------------------------------------------------------


@by_algo
def test_enum_member_string_name_and_aliases_are_interchangeable(algo: Algo) -> None:
    key = _key(algo)
    names: list[Any] = [algo.member, algo.name, algo.operation, algo.compact]
    for enc_name in names:
        s = xps.aead.encrypt(enc_name, key, PLAINTEXT, AAD)
        for dec_name in names:
            assert xps.aead.decrypt(dec_name, key, s.nonce, s.ciphertext, s.tag, AAD) == PLAINTEXT
            assert xps.aead.open(dec_name, key, s, AAD) == PLAINTEXT


BAD_ALGOS: dict[str, Any] = {
    "unknown name": "AES-512-GCM",
    "empty string": "",
    "None": None,
    "int": 42,
    "bytes name": b"AES-256-GCM",
    "list (unhashable)": ["AES-256-GCM"],
    "signature operation": "sig.ed25519",
    "kdf operation": "kdf.hkdf_sha256",
}
_S12 = Sealed.of(bytes(12), bytes(20), 16)
AEAD_CALLS: dict[str, Callable[[Any], object]] = {
    "encrypt": lambda a: xps.aead.encrypt(a, bytes(32), PLAINTEXT),
    "decrypt": lambda a: xps.aead.decrypt(a, bytes(32), bytes(12), b"ct", bytes(16)),
    "open": lambda a: xps.aead.open(a, bytes(32), _S12),
    "info": xps.aead.info,
}


@pytest.mark.parametrize("call", list(AEAD_CALLS.values()), ids=list(AEAD_CALLS))
@pytest.mark.parametrize("name", list(BAD_ALGOS.values()), ids=list(BAD_ALGOS))
def test_unknown_algorithm_is_policy_error_naming_algo(call: Callable[[Any], object], name: Any) -> None:
    _raises(PolicyError, "algo", lambda: call(name))


def test_unrouted_algorithm_is_policy_error_naming_algo() -> None:
    eng = Engine(EngineConfig(policy=xps.Policy(forbid=("aes128",))))
    e = _raises(PolicyError, "algo", lambda: eng.aead.encrypt("AES-128-GCM", bytes(16), b"x"))
    assert "forbid" in str(e)
    # the other algorithms keep working on that engine
    s = eng.aead.encrypt("AES-256-GCM", bytes(32), b"x")
    assert eng.aead.open("AES-256-GCM", bytes(32), s) == b"x"


# -- bad keys ------------------------------------------------------------------------------------


def _bad_keys(algo: Algo) -> dict[str, Any]:
    n = algo.key_size
    other = 16 if n == 32 else 32  # the size of a sibling algorithm's key
    return {
        "one byte short": bytes(n - 1),
        "one byte long": bytes(n + 1),
        "empty": b"",
        f"{other} bytes (other algorithm's size)": bytes(other),
        "str of the right length": "k" * n,
        "str of a wrong length": "k" * (n - 1),
        "int": 7,
        "None": None,
        "list of ints": [0] * n,
    }


BAD_KEY_CASES = [(a, k) for a in ALGO_LIST for k in _bad_keys(a).values()]
BAD_KEY_IDS = [f"{a.name}-{name}" for a in ALGO_LIST for name in _bad_keys(a)]


def _with_key(method: str, algo: Algo, key: Any) -> Callable[[], object]:
    nonce = bytes(algo.nonce_size)
    if method == "encrypt":
        return lambda: xps.aead.encrypt(algo.member, key, PLAINTEXT)
    if method == "encrypt with nonce":
        return lambda: xps.aead.encrypt(algo.member, key, PLAINTEXT, nonce=nonce)
    if method == "decrypt":
        return lambda: xps.aead.decrypt(algo.member, key, nonce, b"ct", bytes(algo.tag_size))
    sealed = Sealed.of(nonce, bytes(2 + algo.tag_size), algo.tag_size)
    return lambda: xps.aead.open(algo.member, key, sealed)


KEY_METHODS = ["encrypt", "encrypt with nonce", "decrypt", "open"]


@pytest.mark.parametrize("method", KEY_METHODS)
@pytest.mark.parametrize(("algo", "key"), BAD_KEY_CASES, ids=BAD_KEY_IDS)
def test_bad_key_is_key_error_naming_key(method: str, algo: Algo, key: Any) -> None:
    e = _raises(KeyError_, "key", _with_key(method, algo, key))
    assert isinstance(e, ValueError)


@pytest.mark.parametrize("method", KEY_METHODS)
@by_algo
def test_wrong_key_size_message_gives_expected_and_actual(method: str, algo: Algo) -> None:
    e = _raises(KeyError_, "key", _with_key(method, algo, bytes(algo.key_size - 1)))
    assert str(e) == f"XPS_ERR_KEY: key: expected {algo.key_size} bytes, got {algo.key_size - 1}"


# -- bad nonces ----------------------------------------------------------------------------------


def _bad_nonce_sizes(algo: Algo) -> dict[str, bytes]:
    n = algo.nonce_size
    return {"one byte short": bytes(n - 1), "one byte long": bytes(n + 1), "empty": b"",
            "half": bytes(n // 2)}


BAD_NONCE_CASES = [(a, v) for a in ALGO_LIST for v in _bad_nonce_sizes(a).values()]
BAD_NONCE_IDS = [f"{a.name}-{name}" for a in ALGO_LIST for name in _bad_nonce_sizes(a)]


@pytest.mark.parametrize(("algo", "nonce"), BAD_NONCE_CASES, ids=BAD_NONCE_IDS)
def test_wrong_nonce_size_on_encrypt_is_nonce_error(algo: Algo, nonce: bytes) -> None:
    e = _raises(NonceError, "nonce", lambda: xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT,
                                                              nonce=nonce))
    assert f"expected {algo.nonce_size} bytes, got {len(nonce)}" in str(e)
    assert isinstance(e, ValueError)


@pytest.mark.parametrize(("algo", "nonce"), BAD_NONCE_CASES, ids=BAD_NONCE_IDS)
def test_wrong_nonce_size_on_decrypt_is_nonce_error(algo: Algo, nonce: bytes) -> None:
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    _raises(NonceError, "nonce", lambda: xps.aead.decrypt(algo.member, _key(algo), nonce, s.ciphertext,
                                                          s.tag))


@pytest.mark.parametrize(("algo", "nonce"), BAD_NONCE_CASES, ids=BAD_NONCE_IDS)
def test_wrong_nonce_size_on_open_is_nonce_error(algo: Algo, nonce: bytes) -> None:
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    bad = Sealed.of(nonce, s.ciphertext_and_tag, s.tag_size)
    _raises(NonceError, "nonce", lambda: xps.aead.open(algo.member, _key(algo), bad))


def _bad_nonce_types(algo: Algo) -> dict[str, Any]:
    return {"str of the right length": "n" * algo.nonce_size, "int": 12,
            "list of ints": [0] * algo.nonce_size}


BAD_NONCE_TYPE_CASES = [(a, v) for a in ALGO_LIST for v in _bad_nonce_types(a).values()]
BAD_NONCE_TYPE_IDS = [f"{a.name}-{name}" for a in ALGO_LIST for name in _bad_nonce_types(a)]


@pytest.mark.parametrize(("algo", "nonce"), BAD_NONCE_TYPE_CASES, ids=BAD_NONCE_TYPE_IDS)
def test_wrong_nonce_type_on_encrypt_is_nonce_error(algo: Algo, nonce: Any) -> None:
    _raises(NonceError, "nonce", lambda: xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT, nonce=nonce))


@pytest.mark.parametrize(("algo", "nonce"), BAD_NONCE_TYPE_CASES, ids=BAD_NONCE_TYPE_IDS)
def test_wrong_nonce_type_on_decrypt_is_nonce_error(algo: Algo, nonce: Any) -> None:
    _raises(NonceError, "nonce", lambda: xps.aead.decrypt(algo.member, _key(algo), nonce, b"ct",
                                                          bytes(algo.tag_size)))


@by_algo
def test_missing_nonce_on_decrypt_is_nonce_error(algo: Algo) -> None:
    _raises(NonceError, "nonce", lambda: xps.aead.decrypt(algo.member, _key(algo), None, b"ct",  # type: ignore[arg-type]
                                                          bytes(algo.tag_size)))


@pytest.fixture(scope="module")
def app_engine() -> Engine:
    return Engine(EngineConfig(nonce="app"))


@by_algo
def test_app_nonce_policy_without_nonce_is_nonce_error(app_engine: Engine, algo: Algo) -> None:
    e = _raises(NonceError, "nonce", lambda: app_engine.aead.encrypt(algo.member, _key(algo), PLAINTEXT))
    assert "app" in str(e)


@by_algo
def test_app_nonce_policy_with_nonce_round_trips(app_engine: Engine, algo: Algo) -> None:
    nonce = bytes(range(algo.nonce_size))
    s = app_engine.aead.encrypt(algo.member, _key(algo), PLAINTEXT, AAD, nonce=nonce)
    assert s.nonce == nonce
    assert app_engine.aead.open(algo.member, _key(algo), s, AAD) == PLAINTEXT
    assert app_engine.aead.decrypt(algo.member, _key(algo), nonce, s.ciphertext, s.tag, AAD) == PLAINTEXT
    # the same call on the default (auto) engine gives the same bytes: the nonce is the only input
    auto = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT, AAD, nonce=nonce)
    assert auto == s


@by_algo
def test_app_nonce_policy_wrong_nonce_size_is_nonce_error(app_engine: Engine, algo: Algo) -> None:
    _raises(NonceError, "nonce", lambda: app_engine.aead.encrypt(
        algo.member, _key(algo), PLAINTEXT, nonce=bytes(algo.nonce_size + 1)))


@by_algo
def test_auto_nonces_are_fresh_for_every_encryption(algo: Algo) -> None:
    key = _key(algo)
    sealed = [xps.aead.encrypt(algo.member, key, PLAINTEXT) for _ in range(64)]
    assert len({s.nonce for s in sealed}) == 64
    assert len({s.ciphertext_and_tag for s in sealed}) == 64
    assert all(len(s.nonce) == algo.nonce_size for s in sealed)


# -- authentication failures ---------------------------------------------------------------------


def _flip(data: bytes | memoryview, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


# scenario -> (sealed, key, aad) -> (key, nonce, ciphertext, tag, aad) given to decrypt
Parts = tuple[bytes, bytes, bytes, bytes, bytes]
TAMPERS: dict[str, Callable[[Sealed, bytes, bytes], Parts]] = {
    "flipped first ciphertext byte": lambda s, k, a: (k, s.nonce, _flip(s.ciphertext, 0), s.tag, a),
    "flipped last ciphertext byte": lambda s, k, a: (k, s.nonce, _flip(s.ciphertext, -1), s.tag, a),
    "truncated ciphertext": lambda s, k, a: (k, s.nonce, bytes(s.ciphertext)[:-1], s.tag, a),
    "extended ciphertext": lambda s, k, a: (k, s.nonce, bytes(s.ciphertext) + b"\x00", s.tag, a),
    "empty ciphertext": lambda s, k, a: (k, s.nonce, b"", s.tag, a),
    "flipped first tag byte": lambda s, k, a: (k, s.nonce, s.ciphertext, _flip(s.tag, 0), a),
    "flipped last tag byte": lambda s, k, a: (k, s.nonce, s.ciphertext, _flip(s.tag, -1), a),
    "all-zero tag": lambda s, k, a: (k, s.nonce, s.ciphertext, bytes(len(s.tag)), a),
    "wrong aad": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag, b"header v2"),
    "missing aad": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag, b""),
    "extra aad byte": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag, a + b"\x00"),
    "wrong key": lambda s, k, a: (_flip(k, 0), s.nonce, s.ciphertext, s.tag, a),
    "wrong nonce": lambda s, k, a: (k, _flip(s.nonce, 0), s.ciphertext, s.tag, a),
}
TRUNCATED_TAG: dict[str, Callable[[Sealed, bytes, bytes], Parts]] = {
    "tag one byte short": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag[:-1], a),
    "tag one byte long": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag + b"\x00", a),
    "tag of 12 bytes": lambda s, k, a: (k, s.nonce, s.ciphertext, s.tag[:12], a),
    "empty tag": lambda s, k, a: (k, s.nonce, s.ciphertext, b"", a),
}
ALL_TAMPERS = {**TAMPERS, **TRUNCATED_TAG}


@pytest.mark.parametrize("tamper", list(ALL_TAMPERS.values()), ids=list(ALL_TAMPERS))
@by_algo
def test_tampering_on_decrypt_is_auth_error_without_plaintext(
        tamper: Callable[[Sealed, bytes, bytes], Parts], algo: Algo) -> None:
    key = _key(algo)
    s = xps.aead.encrypt(algo.member, key, PLAINTEXT, AAD)
    k, nonce, ct, tag, aad = tamper(s, key, AAD)
    e = _raises(AuthError, None, lambda: xps.aead.decrypt(algo.member, k, nonce, ct, tag, aad))
    _assert_no_plaintext(e)


@pytest.mark.parametrize("tamper", list(TRUNCATED_TAG.values()), ids=list(TRUNCATED_TAG))
@by_algo
def test_wrong_tag_length_on_decrypt_names_tag(tamper: Callable[[Sealed, bytes, bytes], Parts],
                                               algo: Algo) -> None:
    key = _key(algo)
    s = xps.aead.encrypt(algo.member, key, PLAINTEXT, AAD)
    k, nonce, ct, tag, aad = tamper(s, key, AAD)
    _raises(AuthError, "tag", lambda: xps.aead.decrypt(algo.member, k, nonce, ct, tag, aad))


@pytest.mark.parametrize("tamper", list(ALL_TAMPERS.values()), ids=list(ALL_TAMPERS))
@by_algo
def test_tampering_on_open_is_auth_error_without_plaintext(
        tamper: Callable[[Sealed, bytes, bytes], Parts], algo: Algo) -> None:
    key = _key(algo)
    s = xps.aead.encrypt(algo.member, key, PLAINTEXT, AAD)
    k, nonce, ct, tag, aad = tamper(s, key, AAD)
    # A Sealed as it would arrive off the wire: the tag is the last tag_size bytes.
    bad = Sealed.of(nonce, bytes(ct) + tag, algo.tag_size)
    e = _raises(AuthError, None, lambda: xps.aead.open(algo.member, k, bad, aad))
    _assert_no_plaintext(e)


@by_algo
def test_open_with_a_sealed_of_another_tag_size_is_auth_error(algo: Algo) -> None:
    key = _key(algo)
    s = xps.aead.encrypt(algo.member, key, PLAINTEXT)
    other = 16 if algo.tag_size == 32 else 32
    bad = Sealed.of(s.nonce, s.ciphertext_and_tag, other)
    _raises(AuthError, "sealed", lambda: xps.aead.open(algo.member, key, bad))


CROSS = {  # same key and nonce sizes, different algorithm
    "AES-256-GCM sealed, opened as CHACHA20-POLY1305": ("AES-256-GCM", "CHACHA20-POLY1305"),
    "CHACHA20-POLY1305 sealed, opened as AES-256-GCM-SIV": ("CHACHA20-POLY1305", "AES-256-GCM-SIV"),
    "AES-256-GCM-SIV sealed, opened as AES-256-GCM": ("AES-256-GCM-SIV", "AES-256-GCM"),
}


@pytest.mark.parametrize(("sealer", "opener"), list(CROSS.values()), ids=list(CROSS))
def test_ciphertext_of_another_algorithm_is_auth_error(sealer: str, opener: str) -> None:
    key = bytes(range(32))
    s = xps.aead.encrypt(sealer, key, PLAINTEXT, AAD)
    e = _raises(AuthError, None, lambda: xps.aead.open(opener, key, s, AAD))
    _assert_no_plaintext(e)


# -- wrongly typed data --------------------------------------------------------------------------


@by_algo
def test_str_plaintext_is_policy_error_naming_plaintext(algo: Algo) -> None:
    _raises(PolicyError, "plaintext", lambda: xps.aead.encrypt(algo.member, _key(algo), "attack at dawn"))


@by_algo
def test_str_aad_on_encrypt_is_policy_error_naming_aad(algo: Algo) -> None:
    _raises(PolicyError, "aad", lambda: xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT, "header"))


@by_algo
def test_str_ciphertext_on_decrypt_is_policy_error_naming_ciphertext(algo: Algo) -> None:
    _raises(PolicyError, "ciphertext", lambda: xps.aead.decrypt(
        algo.member, _key(algo), bytes(algo.nonce_size), "ciphertext", bytes(algo.tag_size)))


@by_algo
def test_str_aad_on_decrypt_is_policy_error_naming_aad(algo: Algo) -> None:
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    _raises(PolicyError, "aad", lambda: xps.aead.decrypt(algo.member, _key(algo), s.nonce, s.ciphertext,
                                                         s.tag, "header"))


@by_algo
def test_str_aad_on_open_is_policy_error_naming_aad(algo: Algo) -> None:
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    _raises(PolicyError, "aad", lambda: xps.aead.open(algo.member, _key(algo), s, "header"))


NON_BUFFERS: dict[str, Any] = {"int": 5, "None": None, "list of ints": [1, 2, 3], "float": 1.5}


@pytest.mark.parametrize("value", list(NON_BUFFERS.values()), ids=list(NON_BUFFERS))
@by_representative
def test_non_buffer_plaintext_is_policy_error_naming_plaintext(algo: Algo, value: Any) -> None:
    _raises(PolicyError, "plaintext", lambda: xps.aead.encrypt(algo.member, _key(algo), value))


NON_BUFFER_AADS = {k: v for k, v in NON_BUFFERS.items() if v is not None}


@pytest.mark.parametrize("value", list(NON_BUFFER_AADS.values()), ids=list(NON_BUFFER_AADS))
@by_representative
def test_non_buffer_aad_is_policy_error_naming_aad(algo: Algo, value: Any) -> None:
    _raises(PolicyError, "aad", lambda: xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT, value))


@by_representative
def test_aad_none_means_empty_aad_on_every_provider(algo: Algo) -> None:
    # Chosen behaviour: None is "no associated data" (as cryptography treats it), identically
    # whichever provider serves the algorithm.
    key, nonce = _key(algo), bytes(algo.nonce_size)
    s = xps.aead.encrypt(algo.member, key, PLAINTEXT, None, nonce=nonce)
    assert s == xps.aead.encrypt(algo.member, key, PLAINTEXT, b"", nonce=nonce)
    assert xps.aead.open(algo.member, key, s, None) == PLAINTEXT
    assert xps.aead.decrypt(algo.member, key, s.nonce, s.ciphertext, s.tag, b"") == PLAINTEXT


@pytest.mark.parametrize("value", list(NON_BUFFERS.values()), ids=list(NON_BUFFERS))
@by_representative
def test_non_buffer_ciphertext_is_policy_error_naming_ciphertext(algo: Algo, value: Any) -> None:
    _raises(PolicyError, "ciphertext", lambda: xps.aead.decrypt(
        algo.member, _key(algo), bytes(algo.nonce_size), value, bytes(algo.tag_size)))


def _bad_tags(algo: Algo) -> dict[str, Any]:
    return {"str of the tag length": "t" * algo.tag_size, "int": 16, "None": None,
            "list of ints": [0] * algo.tag_size}


BAD_TAG_CASES = [(a, v) for a in REPRESENTATIVE for v in _bad_tags(a).values()]
BAD_TAG_IDS = [f"{a.name}-{name}" for a in REPRESENTATIVE for name in _bad_tags(a)]


@pytest.mark.parametrize(("algo", "tag"), BAD_TAG_CASES, ids=BAD_TAG_IDS)
def test_non_buffer_tag_is_auth_error_naming_tag(algo: Algo, tag: Any) -> None:
    # Like a wrong-length tag (and a wrongly typed signature): XPS_ERR_AUTH naming the field,
    # never a provider fault -- the provider is not even reached.
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    _raises(AuthError, "tag", lambda: xps.aead.decrypt(algo.member, _key(algo), s.nonce, s.ciphertext, tag))


@by_representative
def test_sealed_with_str_ciphertext_is_policy_error(algo: Algo) -> None:
    bad = Sealed.of(bytes(algo.nonce_size), "x" * (algo.tag_size + 4), algo.tag_size)  # type: ignore[arg-type]
    e = _raises(PolicyError, None, lambda: xps.aead.open(algo.member, _key(algo), bad))
    assert "sealed" in str(e) or "ciphertext" in str(e)


@by_representative
def test_secret_bytes_plaintext_is_encrypted_or_refused_as_policy_error(algo: Algo) -> None:
    # Wrapping a key: either accepted (and it round-trips) or refused as XPS_ERR_POLICY naming
    # the plaintext -- never reported as a provider fault.
    secret = SecretBytes(bytes(range(32)))
    try:
        s = xps.aead.encrypt(algo.member, _key(algo), secret)
    except XpsError as e:
        assert type(e) is PolicyError, f"{type(e).__name__}: {e}"
        assert "plaintext" in str(e)
    else:
        assert xps.aead.open(algo.member, _key(algo), s) == secret.reveal()


NOT_SEALED: dict[str, Callable[[Sealed], Any]] = {
    "bytes of ciphertext||tag": lambda s: s.ciphertext_and_tag,
    "None": lambda s: None,
    "str": lambda s: "sealed",
    "list of parts": lambda s: [s.nonce, s.ciphertext_and_tag, s.tag_size],
    "dict": lambda s: {"nonce": s.nonce, "ciphertext": s.ciphertext_and_tag},
    "tuple of unpacked parts": tuple,
    "plain tuple in Sealed's layout": lambda s: (s.nonce, s.ciphertext_and_tag, s.tag_size),
}


@pytest.mark.parametrize("make", list(NOT_SEALED.values()), ids=list(NOT_SEALED))
@by_representative
def test_open_with_non_sealed_is_policy_error_naming_sealed(algo: Algo,
                                                            make: Callable[[Sealed], Any]) -> None:
    s = xps.aead.encrypt(algo.member, _key(algo), PLAINTEXT)
    _raises(PolicyError, "sealed", lambda: xps.aead.open(algo.member, _key(algo), make(s)))


# -- accepted buffer types -----------------------------------------------------------------------


BUFFER_TYPES: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview of bytearray": lambda b: memoryview(bytearray(b)),
}


@pytest.mark.parametrize("wrap", list(BUFFER_TYPES.values()), ids=list(BUFFER_TYPES))
@by_algo
def test_bytes_like_inputs_are_accepted_everywhere(algo: Algo, wrap: Callable[[bytes], Any]) -> None:
    key, nonce = _key(algo), bytes(range(algo.nonce_size))
    s = xps.aead.encrypt(algo.member, wrap(key), wrap(PLAINTEXT), wrap(AAD), nonce=wrap(nonce))
    reference = xps.aead.encrypt(algo.member, key, PLAINTEXT, AAD, nonce=nonce)
    assert s.ciphertext_and_tag == reference.ciphertext_and_tag
    assert bytes(s.nonce) == nonce
    out = xps.aead.decrypt(algo.member, wrap(key), wrap(nonce), wrap(bytes(s.ciphertext)), wrap(s.tag),
                           wrap(AAD))
    assert out == PLAINTEXT
    assert xps.aead.open(algo.member, wrap(key), reference, wrap(AAD)) == PLAINTEXT


@by_algo
def test_secret_bytes_key_is_accepted(algo: Algo) -> None:
    with SecretBytes(_key(algo)) as key:
        s = xps.aead.encrypt(algo.member, key, PLAINTEXT, AAD)
        assert xps.aead.open(algo.member, key, s, AAD) == PLAINTEXT
        assert xps.aead.decrypt(algo.member, key, s.nonce, s.ciphertext, s.tag, AAD) == PLAINTEXT
        # interoperates with the same key given as bytes
        assert xps.aead.open(algo.member, _key(algo), s, AAD) == PLAINTEXT
        assert key.wiped is False  # using a key does not consume it


def test_derived_secret_bytes_key_is_accepted() -> None:
    key = xps.hkdf.derive(b"input keying material", 32, info=b"aead key")
    s = xps.aead.encrypt("CHACHA20-POLY1305", key, PLAINTEXT)
    assert xps.aead.open("CHACHA20-POLY1305", key.reveal(), s) == PLAINTEXT


def test_plaintext_is_not_aliased_by_the_result() -> None:
    buf = bytearray(PLAINTEXT)
    key = bytes(32)
    s = xps.aead.encrypt("AES-256-GCM", key, buf)
    buf[:] = bytes(len(buf))
    assert xps.aead.open("AES-256-GCM", key, s) == PLAINTEXT


# -- provider faults -----------------------------------------------------------------------------


MAGIC = b"\xde\xad provider please fail \xbe\xef"
FAULTY = "faulty_test_provider"


class _FaultyCipher:
    """AES-GCM that fails like a broken backend on one magic input."""

    def __init__(self, key: bytes) -> None:
        self._inner = AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if bytes(data) == MAGIC:
            raise RuntimeError("backend exploded on encrypt")
        return self._inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if bytes(aad) == MAGIC:
            raise RuntimeError("backend exploded on decrypt")
        return self._inner.decrypt(nonce, data, aad)


class FaultyAesGcm256(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)

    def cipher(self, key: Any) -> _FaultyCipher:
        return _FaultyCipher(key)


class FaultyPlugin:
    __name__ = "faulty-test-plugin"

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider(name=FAULTY, backend="cryptography AESGCM (test)", version="0",
                              implementations={"aead.aes256gcm": FaultyAesGcm256()}))


@pytest.fixture(scope="module")
def faulty_engine() -> Engine:
    eng = Engine(EngineConfig(prefer={"aead.aes256gcm": FAULTY}), plugins=[FaultyPlugin()])
    kat = [r for r in eng.state.selftests if r.provider == FAULTY]
    assert [(r.operation, r.passed) for r in kat] == [("aead.aes256gcm", True)]
    assert eng.aead.info("AES-256-GCM")["provider"] == FAULTY
    return eng


FAULT_KEY = bytes(range(0x61, 0x61 + 32))


def _check_fault(e: XpsError, where: str) -> None:
    assert type(e) is ProviderError
    assert isinstance(e, xps.InternalError)
    assert e.code == "XPS_ERR_INTERNAL"
    assert FAULTY in str(e)
    assert "aead.aes256gcm" in str(e)
    assert isinstance(e.__cause__, RuntimeError)
    assert str(e.__cause__) == f"backend exploded on {where}"
    for text in (str(e), repr(e.args)):
        assert FAULT_KEY.hex() not in text
        assert FAULT_KEY.decode("latin-1") not in text


def test_provider_fault_on_encrypt_is_provider_error_naming_the_provider(faulty_engine: Engine) -> None:
    e = _raises(ProviderError, FAULTY, lambda: faulty_engine.aead.encrypt("AES-256-GCM", FAULT_KEY, MAGIC))
    _check_fault(e, "encrypt")


def test_provider_fault_on_decrypt_is_provider_error_naming_the_provider(faulty_engine: Engine) -> None:
    s = faulty_engine.aead.encrypt("AES-256-GCM", FAULT_KEY, PLAINTEXT, MAGIC)
    e = _raises(ProviderError, FAULTY, lambda: faulty_engine.aead.decrypt(
        "AES-256-GCM", FAULT_KEY, s.nonce, s.ciphertext, s.tag, MAGIC))
    _check_fault(e, "decrypt")


def test_provider_fault_on_open_is_provider_error_naming_the_provider(faulty_engine: Engine) -> None:
    s = faulty_engine.aead.encrypt("AES-256-GCM", FAULT_KEY, PLAINTEXT, MAGIC)
    e = _raises(ProviderError, FAULTY, lambda: faulty_engine.aead.open("AES-256-GCM", FAULT_KEY, s, MAGIC))
    _check_fault(e, "decrypt")


def test_engine_keeps_serving_after_a_provider_fault(faulty_engine: Engine) -> None:
    for _ in range(3):
        with pytest.raises(ProviderError):
            faulty_engine.aead.encrypt("AES-256-GCM", FAULT_KEY, MAGIC)
        s = faulty_engine.aead.encrypt("AES-256-GCM", FAULT_KEY, PLAINTEXT, AAD)
        assert faulty_engine.aead.open("AES-256-GCM", FAULT_KEY, s, AAD) == PLAINTEXT
        # output of the faulty provider is real AES-256-GCM: the default engine opens it
        assert xps.aead.open("AES-256-GCM", FAULT_KEY, s, AAD) == PLAINTEXT
    assert faulty_engine.aead.info("AES-256-GCM")["provider"] == FAULTY
    # other operations on the same engine are unaffected
    s = faulty_engine.aead.encrypt("CHACHA20-POLY1305", FAULT_KEY, MAGIC)
    assert faulty_engine.aead.open("CHACHA20-POLY1305", FAULT_KEY, s) == MAGIC
    pk, sk = faulty_engine.ed25519.generate_keypair()
    faulty_engine.ed25519.verify(pk, MAGIC, faulty_engine.ed25519.sign(sk, MAGIC))


def test_bad_input_is_still_diagnosed_before_blaming_the_provider(faulty_engine: Engine) -> None:
    # a wrongly typed key reaches the provider only on the error path; it must be XPS_ERR_KEY
    _raises(KeyError_, "key", lambda: faulty_engine.aead.encrypt("AES-256-GCM", "k" * 32, MAGIC))
    _raises(KeyError_, "key", lambda: faulty_engine.aead.encrypt("AES-256-GCM", bytes(16), MAGIC))
