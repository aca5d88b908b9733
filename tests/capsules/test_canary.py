"""Transitional implementations: a candidate that fails never fails the call it was tried on."""

from __future__ import annotations

from typing import Any

import pytest
from xpscerpto.capsules._canary import transitional
from xpscerpto.plugins.sodium import XChaCha20Poly1305Impl

OP = "aead.xchacha20poly1305"
KEY, NONCE = bytes(range(32)), bytes(24)


class _CipherRaises(XChaCha20Poly1305Impl):
    """A candidate whose keyed-cipher construction raises (a fault no real provider shows on demand)."""

    def cipher(self, key: Any) -> Any:  # type: ignore[override]
        raise MemoryError


@pytest.mark.parametrize("mode", ["canary", "dual-run", "sampled"])
def test_a_candidate_whose_cipher_raises_is_reported_and_the_current_one_answers(mode: str) -> None:
    """Its cipher() was called outside the candidate's guard: the exception failed the call and
    was charged by provider name, not reported to the trial."""
    faults: list[str] = []
    current = XChaCha20Poly1305Impl()
    wrapped = transitional(OP, current, _CipherRaises(), mode=mode, share=1.0, fault=faults.append)
    out = wrapped.cipher(KEY).encrypt(NONCE, b"data", b"aad")
    assert out == current.cipher(KEY).encrypt(NONCE, b"data", b"aad")
    assert faults == [f"{mode} cipher raised MemoryError where the current implementation did not"]
    assert wrapped.cipher(KEY).decrypt(NONCE, out, b"aad") == b"data"
    assert len(faults) == 2
