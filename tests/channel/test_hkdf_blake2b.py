"""kdf.hkdf_blake2b: the self-test vectors (computed with hmac+hashlib) through the engine API."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto._namespaces import HkdfAPI
from xpscerpto.kat.selftest import selftest_vectors


@pytest.fixture(scope="module")
def hkdf() -> HkdfAPI:
    return HkdfAPI(xps.default_engine(), "kdf.hkdf_blake2b")


@pytest.mark.parametrize("v", selftest_vectors("kdf.hkdf_blake2b"), ids=lambda v: v["source"][:40])
def test_vectors_through_the_api(hkdf: HkdfAPI, v: dict[str, Any]) -> None:
    assert hkdf.derive(v["ikm"], v["size"], salt=v["salt"], info=v["info"]) == v["okm"]
    assert hkdf.expand(hkdf.extract(v["salt"], v["ikm"]), v["info"], v["size"]) == v["okm"]


def test_it_is_routed_and_self_tested(hkdf: HkdfAPI) -> None:
    eng = xps.default_engine()
    assert hkdf.provider == "openssl"
    assert any(r.operation == "kdf.hkdf_blake2b" and r.passed and r.vectors == 6 for r in eng.state.selftests)


def test_policy_can_forbid_it() -> None:
    eng = xps.Engine(xps.EngineConfig(policy=xps.Policy(forbid=("blake2b",))))
    assert "kdf.hkdf_blake2b" in eng.table.unrouted and eng.table.provider_for("kdf.hkdf_sha256") == "openssl"
    with pytest.raises(xps.PolicyError, match=r"kdf\.hkdf_blake2b: not available"):
        HkdfAPI(eng, "kdf.hkdf_blake2b").extract(b"", b"ikm")


@pytest.mark.parametrize(("call", "error", "field"), [
    (lambda h: h.expand(bytes(63), b"", 32), xps.KeyError_, "prk"),
    (lambda h: h.expand(bytes(64), b"", 255 * 64 + 1), xps.KeyError_, "length"),
    (lambda h: h.extract("salt", b"ikm"), xps.PolicyError, "salt"),
    (lambda h: h.derive(b"ikm", 0), xps.KeyError_, "length"),
])
def test_bad_input_is_a_typed_error(hkdf: HkdfAPI, call: Any, error: type[xps.XpsError], field: str) -> None:
    with pytest.raises(error, match=field):
        call(hkdf)


@settings(max_examples=40, deadline=None)
@given(salt=st.binary(max_size=200), ikm=st.binary(max_size=200), n=st.integers(1, 3 * 64))
def test_matches_hmac_hashlib(hkdf: HkdfAPI, salt: bytes, ikm: bytes, n: int) -> None:
    def mac(k: bytes, d: bytes) -> bytes:
        return hmac.new(k, d, lambda *a: hashlib.blake2b(*a, digest_size=64)).digest()

    prk = mac(salt or bytes(64), ikm)
    t1 = mac(prk, b"\x01")
    t2 = mac(prk, t1 + b"\x02")
    t3 = mac(prk, t2 + b"\x03")
    assert hkdf.derive(ikm, n, salt=salt) == (t1 + t2 + t3)[:n]
