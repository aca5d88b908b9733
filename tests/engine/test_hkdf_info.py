"""HKDF's ``info`` is public context: a SecretBytes passed there is refused (XPS_ERR_POLICY,
naming ``info``, nothing echoed) before the provider runs; ``salt``, ``ikm`` and ``prk`` keep
taking SecretBytes, since they may be secret."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto import Engine, EngineConfig, PolicyError, SecretBytes, XpsError
from xpscerpto.errors import ErrorCode
from xpscerpto.interfaces import Buffer, Kdf, Provider
from xpscerpto.plugins.openssl import HkdfSha256Impl

OP = "kdf.hkdf_sha256"
# Distinct printable bytes: an echo shows in any rendering.
SECRET_INFO = bytes(range(0x41, 0x41 + 32))


class _Counting(Kdf):
    """OpenSSL's HKDF, counting the provider calls (a refusal must come before any)."""

    hash_size = 32
    max_output = 255 * 32

    def __init__(self) -> None:
        self.real = HkdfSha256Impl()
        self.calls = 0

    def extract(self, salt: Buffer, ikm: Buffer) -> bytearray:
        self.calls += 1
        return self.real.extract(salt, ikm)

    def expand(self, prk: Buffer, info: Buffer, length: int) -> bytearray:
        self.calls += 1
        return self.real.expand(prk, info, length)


@pytest.fixture
def spied() -> tuple[Any, _Counting, list[object]]:
    """An engine whose HKDF is served by the counting provider, and the faults it reported."""
    spy = _Counting()
    eng = Engine(EngineConfig(providers=("openssl",)))
    provider = Provider(name="spy", backend="test", version="1", implementations={OP: spy})
    eng.publish(eng.build_table([*eng.state.providers, provider],
                                EngineConfig(providers=("openssl", "spy"), prefer={OP: "spy"})))
    assert eng.hkdf.provider == "spy"
    faults: list[object] = []
    eng.add_fault_listener(lambda *a: faults.append(a))
    return eng, spy, faults


def _refused(fn: Callable[[], object]) -> XpsError:
    with pytest.raises(PolicyError) as ei:
        fn()
    err = ei.value
    assert err.code is ErrorCode.POLICY
    text = f"{err} {err!r} {err.args}"
    assert "info" in str(err)
    for rendering in (repr(SECRET_INFO)[2:-1], SECRET_INFO.hex(), SECRET_INFO[:8].hex(), SECRET_INFO.decode()):
        assert rendering not in text
    return err


def _calls(eng: Any) -> dict[str, Callable[[SecretBytes], object]]:
    prk = SecretBytes(os.urandom(32))
    return {
        "derive": lambda info: eng.hkdf.derive(os.urandom(32), 32, salt=b"salt", info=info),
        "expand": lambda info: eng.hkdf.expand(prk, info, 32),
    }


@pytest.mark.parametrize("call", ["derive", "expand"])
def test_secretbytes_info_is_refused_before_the_provider_runs(
        spied: tuple[Any, _Counting, list[object]], call: str) -> None:
    eng, spy, faults = spied
    info = SecretBytes(SECRET_INFO)
    _refused(lambda: _calls(eng)[call](info))
    assert spy.calls == 0
    assert faults == []
    # Refused, not consumed: the caller's secret is left as it was.
    assert not info.wiped and bytes(info.view()) == SECRET_INFO


@pytest.mark.parametrize("call", ["derive", "expand"])
def test_wiped_secretbytes_info_is_refused_too(spied: tuple[Any, _Counting, list[object]], call: str) -> None:
    eng, spy, _ = spied
    info = SecretBytes(SECRET_INFO)
    info.wipe()
    _refused(lambda: _calls(eng)[call](info))
    assert spy.calls == 0


def test_default_engine_refuses_secretbytes_info() -> None:
    info: Any = SecretBytes(SECRET_INFO)  # Any: what a caller ignoring the Buffer annotation passes
    with info:
        _refused(lambda: xps.hkdf.derive(os.urandom(32), 32, info=info))
        with xps.hkdf.extract(b"salt", os.urandom(32)) as prk:
            _refused(lambda: xps.hkdf.expand(prk, info, 32))


def test_salt_ikm_and_prk_still_take_secretbytes(spied: tuple[Any, _Counting, list[object]]) -> None:
    eng, spy, _ = spied
    ikm, salt, info = os.urandom(32), os.urandom(32), b"public context"
    with SecretBytes(ikm) as s_ikm, SecretBytes(salt) as s_salt, \
            eng.hkdf.derive(s_ikm, 48, salt=s_salt, info=info) as okm:
        one_shot = bytes(okm.view())
    with SecretBytes(ikm) as s_ikm, SecretBytes(salt) as s_salt, eng.hkdf.extract(s_salt, s_ikm) as prk, \
            eng.hkdf.expand(prk, info, 48) as okm:
        assert bytes(okm.view()) == one_shot
    with eng.hkdf.derive(ikm, 48, salt=salt, info=info) as okm:
        assert bytes(okm.view()) == one_shot
    assert spy.calls == 6


def test_info_as_a_plain_buffer_view_is_accepted(spied: tuple[Any, _Counting, list[object]]) -> None:
    eng, _, _ = spied
    ikm = os.urandom(32)
    with SecretBytes(SECRET_INFO) as info, info.view() as view, eng.hkdf.derive(ikm, 32, info=view) as a, \
            eng.hkdf.derive(ikm, 32, info=SECRET_INFO) as b:
        assert bytes(a.view()) == bytes(b.view())
