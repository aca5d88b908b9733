"""A KeyedAead refuses pickle, copy and deepcopy, like the other key objects (review API-6).

Before, ``pickle.dumps`` and ``copy.deepcopy`` failed with an untyped error whose kind depended
on the serving provider, and ``copy.copy`` returned an alias sharing the key and the record of
nonces: wiping the copy wiped the original.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable

import pytest
import xpscerpto as xps
from xpscerpto import PolicyError

# AES-256-GCM is served by openssl, XChaCha20-Poly1305 and AEGIS-256 by sodium.
NONCE = {"AES-256-GCM": 12, "XCHACHA20-POLY1305": 24, "AEGIS-256": 32}
COPIES: dict[str, Callable[[object], object]] = {
    **{f"pickle-{p}": (lambda o, p=p: pickle.dumps(o, protocol=p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)},
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "deepcopy-in-a-list": lambda o: copy.deepcopy([o]),
}


@pytest.mark.parametrize("algo", list(NONCE))
@pytest.mark.parametrize("how", list(COPIES))
def test_a_keyed_aead_cannot_be_pickled_or_copied(algo: str, how: str) -> None:
    key = os.urandom(32)
    keyed = xps.aead.keyed(algo, key)
    with pytest.raises(PolicyError, match="KeyedAead holds a secret and cannot be") as caught:
        COPIES[how](keyed)
    assert key.hex() not in str(caught.value) and repr(key) not in str(caught.value)
    # The original is untouched and still seals and opens.
    sealed = keyed.encrypt(b"still mine")
    assert keyed.open(sealed) == b"still mine"


def test_the_other_key_objects_refuse_as_before() -> None:
    _, sk = xps.ed25519.generate_keypair()
    for obj in (xps.ed25519.keyed(sk), xps.x25519.keyed(os.urandom(32))):
        for how in COPIES.values():
            with pytest.raises(PolicyError):
                how(obj)
