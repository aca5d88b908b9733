"""Review API-3: a SecretBytes given as a signature's message or context is the caller's error.

The route checked the message but passed the SecretBytes itself to the provider, whose
TypeError became XPS_ERR_INTERNAL and a fault report (the capsule updater's rollback trigger).
It is refused now as the AEAD API refuses a SecretBytes plaintext, before any provider runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from xpscerpto import Engine, EngineConfig, SecretBytes
from xpscerpto.errors import PolicyError
from xpscerpto.interfaces import Provider, Signature

_REFUSAL = "pass secret data as SecretBytes.view(), not SecretBytes"


class _Recording(Signature):
    """The openssl provider's own signature scheme, recording each call that reaches it."""

    def __init__(self, inner: Any, calls: list[str]) -> None:
        self._inner, self._calls = inner, calls
        self.public_key_size = inner.public_key_size
        self.secret_key_size = inner.secret_key_size
        self.signature_size = inner.signature_size

    def generate(self) -> Any:
        return self._inner.generate()

    def public_key(self, secret_key: Any) -> Any:
        return self._inner.public_key(secret_key)

    def sign(self, secret_key: Any, message: Any, context: Any) -> Any:
        self._calls.append("sign")
        return self._inner.sign(secret_key, message, context)

    def verify(self, public_key: Any, message: Any, signature: Any, context: Any) -> Any:
        self._calls.append("verify")
        return self._inner.verify(public_key, message, signature, context)

    def load(self, secret_key: Any) -> Any:
        loaded = self._inner.load(secret_key)
        calls = self._calls

        class _Loaded:
            def sign(self, message: Any, context: Any) -> Any:
                calls.append("loaded.sign")
                return loaded.sign(message, context)
        return _Loaded()


@pytest.fixture
def engine() -> tuple[Engine, list[str], list[tuple[str, str, str]]]:
    from xpscerpto.plugins import openssl
    base = openssl.make_provider()
    calls: list[str] = []
    rec = Provider(name="recording", backend="test", version="1", implementations={
        op: _Recording(base.implementations[op], calls) for op in ("sig.ed25519", "sig.mldsa65")})
    eng = Engine(EngineConfig(providers=("openssl", "recording"),
                              prefer={"sig.ed25519": "recording", "sig.mldsa65": "recording"}))
    eng.publish(eng.build_table([*eng.state.providers, rec], EngineConfig(
        providers=("openssl", "recording"), prefer={"sig.ed25519": "recording", "sig.mldsa65": "recording"})))
    faults: list[tuple[str, str, str]] = []
    eng.add_fault_listener(lambda p, op, exc: faults.append((p, op, type(exc).__name__)))
    return eng, calls, faults


def _cases(eng: Engine) -> dict[str, tuple[str, Callable[[SecretBytes], Any]]]:
    pk, sk = eng.ed25519.generate_keypair()
    mpk, msk = eng.mldsa65.generate_keypair()
    keyed = eng.ed25519.keyed(sk)
    mkeyed = eng.mldsa65.keyed(msk)
    return {
        "ed25519.sign message": ("message", lambda s: eng.ed25519.sign(sk, s)),
        "ed25519.keyed.sign message": ("message", keyed.sign),
        "ed25519.verify message": ("message", lambda s: eng.ed25519.verify(pk, s, bytes(64))),
        "mldsa65.sign message": ("message", lambda s: eng.mldsa65.sign(msk, s)),
        "mldsa65.keyed.sign message": ("message", mkeyed.sign),
        "mldsa65.verify message": ("message", lambda s: eng.mldsa65.verify(mpk, s, bytes(3309))),
        "mldsa65.sign context": ("context", lambda s: eng.mldsa65.sign(msk, b"m", s)),
        "mldsa65.keyed.sign context": ("context", lambda s: mkeyed.sign(b"m", s)),
        "mldsa65.verify context": ("context", lambda s: eng.mldsa65.verify(mpk, b"m", bytes(3309), s)),
        "ed25519.keyed.sign context": ("context", lambda s: keyed.sign(b"m", s)),
    }


def test_a_secret_message_or_context_is_refused_before_the_provider_and_is_no_fault(
        engine: tuple[Engine, list[str], list[tuple[str, str, str]]]) -> None:
    eng, calls, faults = engine
    cases = _cases(eng)
    calls.clear()
    for name, (field, call) in cases.items():
        for secret in (SecretBytes(b"a secret to sign"), SecretBytes(b"")):
            with pytest.raises(PolicyError) as info:
                call(secret)
            assert str(info.value) == f"XPS_ERR_POLICY: {field}: {_REFUSAL}", name
            assert "secret to sign" not in str(info.value)
    assert calls == [] and faults == []


def test_the_secret_s_view_is_still_signed_and_verified(
        engine: tuple[Engine, list[str], list[tuple[str, str, str]]]) -> None:
    eng, calls, faults = engine
    pk, sk = eng.ed25519.generate_keypair()
    secret = SecretBytes(b"a derived secret")
    sig = eng.ed25519.sign(sk, secret.view())
    eng.ed25519.verify(pk, secret.view(), sig)
    assert eng.ed25519.keyed(sk).sign(secret.view()) == sig
    assert faults == [] and "sign" in calls
