"""hkdf.derive runs the provider's extract and expand back to back: same bytes as the two
public steps, its intermediate PRK zeroed whatever happens, a provider's fault typed."""

from __future__ import annotations

import os
from typing import Any

import pytest
from xpscerpto import Engine, EngineConfig, KeyError_, PolicyError, ProviderError, SecretBytes
from xpscerpto.interfaces import Buffer, Kdf, Provider
from xpscerpto.plugins.openssl import HkdfSha256Impl

OP = "kdf.hkdf_sha256"


class _Spy(Kdf):
    """OpenSSL's HKDF, keeping each PRK it hands out (to look at after the call)."""

    hash_size = 32
    max_output = 255 * 32

    def __init__(self, *, short_prk: bool = False, expand_fails: bool = False,
                 during_extract: Any = None) -> None:
        self.real = HkdfSha256Impl()
        self.prks: list[bytearray] = []
        self.short_prk, self.expand_fails = short_prk, expand_fails
        self.during_extract = during_extract  # what "another thread" does while extract runs

    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        prk = self.real.extract(salt, ikm)
        if self.during_extract is not None:
            self.during_extract()
        if self.short_prk:
            prk = prk[:16]
        self.prks.append(prk)
        return prk

    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        if self.expand_fails:
            raise RuntimeError("provider fault")
        return self.real.expand(prk, info, length)


def _engine(spy: _Spy) -> Any:
    eng = Engine(EngineConfig(providers=("openssl",)))
    spy_provider = Provider(name="spy", backend="test", version="1", implementations={OP: spy})
    eng.publish(eng.build_table([*eng.state.providers, spy_provider],
                                EngineConfig(providers=("openssl", "spy"), prefer={OP: "spy"})))
    assert eng.hkdf.provider == "spy"
    return eng


def test_derive_equals_extract_then_expand_and_zeroes_its_prk() -> None:
    spy = _Spy()
    eng = _engine(spy)
    ikm, salt, info = os.urandom(32), SecretBytes(os.urandom(32)), b"ctx"
    with eng.hkdf.extract(salt, ikm) as prk, eng.hkdf.expand(prk, info, 80) as two_steps:
        expected = bytes(two_steps.view())
    spy.prks.clear()
    with eng.hkdf.derive(ikm, 80, salt=salt, info=info) as okm:
        assert bytes(okm.view()) == expected
    assert len(spy.prks) == 1 and spy.prks[0] == bytearray(32)  # zeroed in place


def test_a_failing_expand_is_a_provider_fault_and_the_prk_is_still_zeroed() -> None:
    spy = _Spy(expand_fails=True)
    eng = _engine(spy)
    with pytest.raises(ProviderError) as info:
        eng.hkdf.derive(b"k" * 32, 64, salt=b"s" * 32)
    assert "kkkk" not in str(info.value) and "ssss" not in str(info.value)
    assert spy.prks == [bytearray(32)]


def test_a_short_prk_from_a_provider_is_a_fault_not_an_output() -> None:
    spy = _Spy(short_prk=True)
    eng = _engine(spy)
    with pytest.raises(ProviderError):
        eng.hkdf.derive(b"k" * 32, 64)
    assert spy.prks == [bytearray(16)]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"ikm": b"k" * 32, "length": 0}, KeyError_),
    ({"ikm": b"k" * 32, "length": 255 * 32 + 1}, KeyError_),
    ({"ikm": b"k" * 32, "length": True}, KeyError_),
    ({"ikm": 12, "length": 32}, KeyError_),
    ({"ikm": b"k" * 32, "length": 32, "salt": 5}, PolicyError),
    ({"ikm": b"k" * 32, "length": 32, "info": [1]}, PolicyError),
    ({"ikm": b"k" * 32, "length": 32, "salt": memoryview(b"abcd")[::2]}, PolicyError),
])
def test_bad_arguments_are_refused_before_the_provider_runs(kwargs: dict[str, Any], error: type) -> None:
    spy = _Spy()
    eng = _engine(spy)
    with pytest.raises(error):
        eng.hkdf.derive(**kwargs)
    assert spy.prks == []


def test_a_wiped_ikm_is_refused() -> None:
    eng = _engine(_Spy())
    ikm = SecretBytes(b"k" * 32)
    ikm.wipe()
    with pytest.raises(KeyError_):
        eng.hkdf.derive(ikm, 32)


@pytest.mark.parametrize("call", ["derive", "extract"])
def test_a_secret_salt_wiped_during_the_call_gives_no_result(call: str) -> None:
    # Another thread wiping the salt while the provider runs (done from inside the provider,
    # so the interleaving is certain): the output may come from a zeroed salt, so none is returned.
    salt = SecretBytes(os.urandom(32))
    spy = _Spy(during_extract=salt.wipe)
    eng = _engine(spy)
    with pytest.raises(PolicyError) as info:
        if call == "derive":
            eng.hkdf.derive(b"k" * 32, 64, salt=salt)
        else:
            eng.hkdf.extract(salt, b"k" * 32)
    assert "during the call" in str(info.value)
    assert spy.prks == [bytearray(32)]  # the PRK was zeroed in place either way
