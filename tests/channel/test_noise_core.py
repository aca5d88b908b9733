"""The handshake core's own rules: protocol names, misuse, nonces, truncation, auth slots."""

from __future__ import annotations

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto.channel._noise import MAX_NONCE, CipherState, HandshakeState, SymmetricState, keyed_aead
from xpscerpto.channel._patterns import PATTERNS, UnsupportedProtocol, parse_protocol
from xpscerpto.channel._session import auth_slot


@pytest.mark.parametrize(("name", "error", "match"), [
    ("Noise_XX_25519_ChaChaPoly", xps.PolicyError, "not a Noise protocol name"),
    ("noise_XX_25519_ChaChaPoly_SHA256", xps.PolicyError, "not a Noise protocol name"),
    ("Noise_XXpsk9_25519_ChaChaPoly_SHA256", xps.PolicyError, "psk9"),
    ("Noise_XXpsk0+psk0_25519_ChaChaPoly_SHA256", xps.PolicyError, "repeated"),
    ("Noise_XXhfs_25519_ChaChaPoly_SHA256", xps.PolicyError, "go together"),
    ("Noise_XX_25519+MLKEM768_ChaChaPoly_SHA256", xps.PolicyError, "go together"),
    ("Noise_Nhfs_25519+MLKEM768_ChaChaPoly_SHA256", xps.PolicyError, "interactive"),
    ("Noise_XXhfs_25519+Kyber1024_ChaChaPoly_SHA256", UnsupportedProtocol, "KEM"),
    ("N" * 300, xps.PolicyError, "255"),
])
def test_bad_protocol_names(name: str, error: type[xps.XpsError], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_protocol(name)


@pytest.mark.parametrize("name", [["Noise_XX_25519_ChaChaPoly_SHA256"], None, b"Noise_XX_25519_ChaChaPoly_SHA256",
                                  {"a": 1}, 10**400])
def test_a_protocol_name_that_is_not_a_str_is_a_policy_error_even_unhashable(name: object) -> None:
    # parse_protocol is cached: the type check comes before the cache, which would raise TypeError.
    with pytest.raises(xps.PolicyError, match="expected a Noise protocol name"):
        parse_protocol(name)  # type: ignore[arg-type]


def test_a_str_subclass_cannot_poison_the_protocol_cache() -> None:
    class Liar(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("Noise_XX_25519_ChaChaPoly_SHA256")

    good = parse_protocol("Noise_XX_25519_ChaChaPoly_SHA256")
    assert parse_protocol(Liar("Noise_IK_25519_AESGCM_BLAKE2b")).name == "Noise_IK_25519_AESGCM_BLAKE2b"
    assert parse_protocol("Noise_XX_25519_ChaChaPoly_SHA256") == good
    with pytest.raises(xps.PolicyError, match="not a Noise protocol name"):
        parse_protocol(Liar("not a protocol"))


def test_modifiers_are_applied_by_rule() -> None:
    p = parse_protocol("Noise_XXhfs_25519+MLKEM768_AESGCM_BLAKE2b")
    assert p.pattern.messages == (("e", "e1"), ("e", "ee", "ekem1", "s", "es"), ("s", "se"))
    assert parse_protocol("Noise_NKpsk0+psk2_25519_ChaChaPoly_SHA256").pattern.messages == (
        ("psk", "e", "es"), ("e", "ee", "psk"))
    assert len(PATTERNS) == 38


@pytest.mark.parametrize(("pattern", "initiator_slot", "responder_slot"), [
    ("XX", 2, 1), ("IK", 0, 1), ("NK", 0, 1), ("KK", 0, 1), ("XK", 2, 1), ("NN", None, 1), ("KN", None, 1)])
def test_auth_slots(pattern: str, initiator_slot: int | None, responder_slot: int | None) -> None:
    p = PATTERNS[pattern]
    assert auth_slot(p, True) == initiator_slot and auth_slot(p, False) == responder_slot


def _cipher(engine: xps.Engine, key: bytes = bytes(range(32))) -> CipherState:
    c = CipherState(engine, "ChaChaPoly")
    c.initialize_key(key)
    return c


def test_the_last_nonce_is_never_used(engine: xps.Engine) -> None:
    a, b = _cipher(engine), _cipher(engine)
    a.set_nonce(MAX_NONCE - 1)
    b.set_nonce(MAX_NONCE - 1)
    assert b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(xps.NonceError, match="used up"):
        a.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(xps.NonceError):
        b.decrypt_with_ad(b"", bytes(32))
    a.rekey()  # rekey does not reset the counter
    assert a.n == MAX_NONCE
    with pytest.raises(xps.NonceError):
        a.set_nonce(MAX_NONCE + 1)


def test_a_failed_decrypt_keeps_the_counter(engine: xps.Engine) -> None:
    a, b = _cipher(engine), _cipher(engine)
    good = a.encrypt_with_ad(b"", b"x")
    with pytest.raises(xps.AuthError):
        b.decrypt_with_ad(b"", good[:-1] + bytes([good[-1] ^ 1]))
    assert b.n == 0 and b.decrypt_with_ad(b"", good) == b"x" and b.n == 1
    with pytest.raises(xps.AuthError, match="shorter than its tag"):
        b.decrypt_with_ad(b"", b"short")


def test_keyed_aead_is_the_engines_routed_keyed_aead(engine: xps.Engine) -> None:
    k = keyed_aead(engine, "CHACHA20-POLY1305", bytes(32))
    assert isinstance(k, xps.engine.KeyedAead) and "via openssl" in repr(k)


def _pair(engine: xps.Engine, name: str = "Noise_NN_25519_ChaChaPoly_SHA256") -> tuple[HandshakeState, HandshakeState]:
    return (HandshakeState(name, initiator=True, engine=engine), HandshakeState(name, initiator=False, engine=engine))


def test_messages_out_of_turn_and_early_split_are_refused(engine: xps.Engine) -> None:
    i, r = _pair(engine)
    with pytest.raises(xps.PolicyError, match="peer's to write"):
        r.write_message(b"")
    with pytest.raises(xps.PolicyError, match="this side's to write"):
        i.read_message(b"x" * 32)
    with pytest.raises(xps.PolicyError, match="before the last message"):
        i.split()
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    with pytest.raises(xps.PolicyError, match="already finished"):
        i.write_message(b"")


def test_truncated_and_oversized_messages(engine: xps.Engine) -> None:
    i, r = _pair(engine)
    with pytest.raises(xps.AuthError, match="truncated"):
        r.read_message(i.write_message(b"")[:31])
    i, r = _pair(engine)
    r.read_message(i.write_message(b""))
    with pytest.raises(xps.AuthError, match="truncated"):
        i.read_message(r.write_message(b"")[:40])
    i, r = _pair(engine)
    with pytest.raises(xps.PolicyError, match="65535"):
        r.read_message(bytes(70000))
    with pytest.raises(xps.PolicyError, match="payload"):
        i.write_message(bytes(65535))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"s": bytes(31)}, "s"), ({"rs": bytes(33)}, "rs"), ({"e": "key"}, "e"), ({"psks": [bytes(16)]}, "psks"),
])
def test_bad_keys_are_typed_errors(engine: xps.Engine, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(xps.KeyError_, match=field):
        HandshakeState("Noise_XX_25519_ChaChaPoly_SHA256", initiator=True, engine=engine, **kwargs)  # type: ignore[arg-type]


def test_a_missing_pre_message_key_is_named(engine: xps.Engine) -> None:
    with pytest.raises(xps.KeyError_, match="rs"):
        HandshakeState("Noise_IK_25519_ChaChaPoly_SHA256", initiator=True, engine=engine)


def test_hybrid_round_trip_through_the_engine(engine: xps.Engine) -> None:
    i, r = _pair(engine, "Noise_NNhfs_25519+MLKEM768_ChaChaPoly_BLAKE2b")
    m1 = i.write_message(b"")
    assert len(m1) == 32 + 1184
    r.read_message(m1)
    m2 = r.write_message(b"pq")
    assert len(m2) == 32 + 1088 + 16 + 2 + 16
    assert i.read_message(m2) == b"pq" and i.handshake_hash == r.handshake_hash


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_as_anything_but_xps_errors(engine: xps.Engine, data: bytes) -> None:
    for name in ("Noise_XX_25519_ChaChaPoly_SHA256", "Noise_XXhfs_25519+MLKEM768_AESGCM_SHA256"):
        i, r = _pair(engine, name)
        try:
            r.read_message(data)
            i.read_message(r.write_message(b""))  # i expects message 2 from r: fed r's real one
        except xps.XpsError as exc:
            assert len(data) < 4 or data.hex() not in str(exc)


@pytest.mark.parametrize("step", ["mix_key", "mix_key_and_hash", "split"])
def test_a_wiped_chaining_key_is_refused_not_read_as_an_empty_salt(step: str) -> None:
    # HKDF takes an empty salt as HashLen zeros: a wiped ck must not quietly become one.
    eng = xps.default_engine()
    ss = SymmetricState(eng, parse_protocol("Noise_XX_25519_ChaChaPoly_SHA256"))
    ss.ck.wipe()
    with pytest.raises(xps.PolicyError):
        if step == "split":
            ss.split(eng, "ChaChaPoly")
        else:
            getattr(ss, step)(b"k" * 32)
    assert not ss.cipher.has_key()
