"""Wycheproof's ChaCha20-Poly1305 and XChaCha20-Poly1305 files against every jit implementation.

One test per vector per implementation, each checked twice: on the raw provider contract
(``cipher(key).encrypt/decrypt``) and through the public API of an engine pinned to the jit
provider (the jit providers are not built-ins yet, so tests/kat/test_wycheproof.py cannot see
them). Valid vectors must give exactly the expected output; invalid ones AuthError; a nonce of
another size NonceError.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from xpscerpto import AuthError, Engine, EngineConfig, ErrorCode, NonceError, Sealed
from xpscerpto.kat.wycheproof import WycheproofCase, load_wycheproof
from xpscerpto.plugins import jit

VECTOR_DIR = Path(__file__).resolve().parents[2] / "kat" / "wycheproof"
FILES = {
    "chacha20_poly1305_test.json": ("aead.chacha20poly1305", "CHACHA20-POLY1305", 12, ("jit",)),
    "xchacha20_poly1305_test.json": ("aead.xchacha20poly1305", "XCHACHA20-POLY1305", 24, ("jit", "jit-openssl")),
}


@cache
def cases(file: str) -> tuple[WycheproofCase, ...]:
    return tuple(load_wycheproof(VECTOR_DIR / file))


RUNS = [(provider, case) for file, (_, _, _, providers) in FILES.items() for case in cases(file)
        for provider in providers]
PARAMS = [pytest.param(provider, case, id=f"{case.id}-{provider}") for provider, case in RUNS]


def test_every_vector_is_parametrised() -> None:
    assert len(PARAMS) == len(RUNS) == len({p.id for p in PARAMS})
    for file, (_, _, _, providers) in FILES.items():
        got = sorted((provider, case.tc_id) for provider, case in RUNS if case.file == file)
        assert got == sorted((provider, c.tc_id) for provider in providers for c in cases(file))
        assert len(cases(file)) > 300


@pytest.fixture(scope="module")
def engines(jit_ready: jit.JitStatus) -> dict[str, Engine]:
    return {name: Engine(EngineConfig(providers=(name,), autoload_plugins=False))
            for name in ("jit", "jit-openssl")}


def refused(error: type[AuthError | NonceError], fn: Any, *args: Any) -> None:
    with pytest.raises(error) as info:
        fn(*args)
    assert type(info.value) is error
    assert info.value.code == {AuthError: ErrorCode.AUTH, NonceError: ErrorCode.NONCE}[error]


@pytest.mark.parametrize(("provider", "case"), PARAMS)
def test_vector(engines: dict[str, Engine], provider: str, case: WycheproofCase) -> None:
    op, algo, nonce_size, _ = FILES[case.file]
    (p,) = [p for p in jit.make_providers(mask="") if p.name == provider]
    cipher: Any = p.implementations[op].cipher  # type: ignore[attr-defined]
    api = engines[provider].aead
    assert engines[provider].table.provider_for(op) == provider
    d = case.data
    key, iv, aad, msg, ct, tag = d["key"], d["iv"], d["aad"], d["msg"], d["ct"], d["tag"]

    if len(iv) != nonce_size:
        assert case.result == "invalid"
        refused(NonceError, cipher(key).encrypt, iv, msg, aad)
        refused(NonceError, cipher(key).decrypt, iv, ct + tag, aad)
        refused(NonceError, api.encrypt, algo, key, msg, aad, iv)
        refused(NonceError, api.decrypt, algo, key, iv, ct, tag, aad)
        return
    if case.result == "valid":
        assert cipher(key).encrypt(iv, msg, aad) == ct + tag
        assert cipher(key).decrypt(iv, ct + tag, aad) == msg
        # Vectors repeat (key, nonce) pairs across messages by design: the caller vouches.
        sealed = api.encrypt(algo, key, msg, aad, nonce=iv, nonce_reuse="caller")
        assert sealed.ciphertext_and_tag == ct + tag
        assert api.decrypt(algo, key, iv, ct, tag, aad) == msg
        assert api.open(algo, key, Sealed.of(iv, ct + tag, 16), aad) == msg
        return
    assert case.result == "invalid", case.result
    refused(AuthError, cipher(key).decrypt, iv, ct + tag, aad)
    refused(AuthError, api.decrypt, algo, key, iv, ct, tag, aad)
    refused(AuthError, api.open, algo, key, Sealed.of(iv, ct + tag, 16), aad)
