"""A transport key with its counter nonce cannot be duplicated (review C7).

A copy of a live CipherState would share the key but count nonces on its own, so both would
encrypt under nonce 0, 1, … (c1 xor c2 == p1 xor p2). The channel keys waive the engine's reuse
check, so the counter is the only guard: copying and pickling are refused, as for SecretBytes.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import xpscerpto as xps
from xpscerpto.channel import ChannelConfig
from xpscerpto.channel._noise import CipherState
from xpscerpto.channel._session import Handshake
from xpscerpto.channel.transport import Transport
from xpscerpto.errors import KeyTypeError, XpsError

from .conftest import Pki, handshake_records

COPIES: dict[str, Callable[[object], object]] = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
}


def _keyed(engine: xps.Engine) -> CipherState:
    state = CipherState(engine, "ChaChaPoly")
    state.initialize_key(bytes(range(32)))
    return state


@pytest.mark.parametrize("how", COPIES)
def test_a_keyed_cipher_state_cannot_be_copied_or_pickled(engine: xps.Engine, how: str) -> None:
    state = _keyed(engine)
    with pytest.raises(KeyTypeError, match="CipherState") as info:
        COPIES[how](state)
    assert isinstance(info.value, XpsError) and isinstance(info.value, TypeError)
    # The refusal leaves the original as it was: it still encrypts, under the next nonce.
    peer = _keyed(engine)
    assert peer.decrypt_with_ad(b"", state.encrypt_with_ad(b"", b"still mine")) == b"still mine"
    assert state.n == 1


def test_a_copy_never_encrypts_under_a_nonce_already_used(engine: xps.Engine) -> None:
    """The reviewer's repro: whatever ``copy.copy`` does, no two ciphertexts share a keystream."""
    state = _keyed(engine)
    p1, p2 = b"attack at dawn!!", b"retreat at dusk!"
    try:
        other = copy.copy(state)
    except XpsError:
        other = state  # refused: the only encryptor is the original, whose counter moves on
    c1 = state.encrypt_with_ad(b"", p1)
    c2 = other.encrypt_with_ad(b"", p2)
    assert bytes(a ^ b for a, b in zip(c1, c2, strict=False))[:16] != bytes(a ^ b for a, b in zip(p1, p2, strict=True))


def test_an_unkeyed_or_wiped_cipher_state_is_refused_too(engine: xps.Engine) -> None:
    """Refused whatever its state: a copy taken before the key arrives would get it too."""
    fresh = CipherState(engine, "AESGCM")
    with pytest.raises(KeyTypeError):
        copy.copy(fresh)
    wiped = _keyed(engine)
    wiped.wipe()
    with pytest.raises(KeyTypeError):
        pickle.dumps(wiped)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_the_transport_keys_of_a_real_handshake_cannot_be_duplicated(pki: Pki, engine: xps.Engine,
                                                                     how: str) -> None:
    """Through the sans-I/O API: Established.send/recv and a Transport built on them."""
    cfg = ChannelConfig()
    ini = Handshake(initiator=True, identity=pki.client, trust=pki.trust, config=cfg,
                    expected_names=["server.test"], engine=engine)
    res = Handshake(initiator=False, identity=pki.server, trust=pki.trust, config=cfg,
                    expected_names=None, engine=engine)
    to_res = ini.start()
    while not (ini.finished and res.finished):
        to_ini = b"".join(res.receive(r) for r in handshake_records(to_res))
        to_res = b"".join(ini.receive(r) for r in handshake_records(to_ini))
    est = ini.established()
    for obj in (est.send, est.recv, Transport(est.send, est.recv, cfg)):
        with pytest.raises(KeyTypeError):
            COPIES[how](obj)
    with pytest.raises(KeyTypeError):
        copy.copy(est.send)

