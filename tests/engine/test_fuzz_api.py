"""Property: every public engine function gives a correct result or an XpsError with a valid
code, and no caller bytes in its message (issue 10).

Each target below draws its arguments from a mix of good values and everything a caller can
get wrong: wrong types, huge ints, released, strided and wide-format memoryviews, wiped
SecretBytes, malformed Sealed. A call that returns is checked for correctness (a ciphertext
opens, a signature verifies, a length is what was asked); a call that raises must raise an
XpsError whose code is one of the six and whose message, args and repr carry none of the
caller's bytes (only a type and a length may be described).

``RECORD`` turns the assertions into a log, so the same targets can be run against an older
install to count what it got wrong (how the report's before/after figures were made).
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import xpscerpto as xps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto import ErrorCode, Sealed, SecretBytes, XpsError

#: When a list, violations are appended here as (target, kind) instead of failing the test.
RECORD: list[tuple[str, str]] | None = None

# A str argument carries this marker, so an echoed string shows in a message whatever it says.
MARK = "\u2603zz"
CODES = {c.value for c in ErrorCode}
AEAD_NAMES = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AES-256-GCM-SIV",
              "AEGIS-256", "aead.aes256gcm", "aes256gcm", xps.AEAD.AES_256_GCM, xps.AEAD.AEGIS_256]
SIZES = {"AES-128-GCM": (16, 12, 16), "AEGIS-256": (32, 32, 32), "XCHACHA20-POLY1305": (32, 24, 16)}


def _sizes(algo: Any) -> tuple[int, int, int]:
    """(key, nonce, tag) sizes of a known name; AES-256-GCM's for anything else."""
    name = getattr(algo, "value", algo)
    for k, v in SIZES.items():
        if name == k:
            return v
    return (32, 12, 16)


# -- values a caller can pass -----------------------------------------------------------------


def _released() -> memoryview:
    v = memoryview(bytearray(b"released view bytes"))
    v.release()
    return v


def _wiped(data: bytes) -> SecretBytes:
    s = SecretBytes(data)
    s.wipe()
    return s


huge_ints = st.one_of(st.integers(min_value=2**63, max_value=2**200), st.integers(max_value=-(2**63)),
                      st.just(10**100), st.just(-1))
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), huge_ints, st.floats(allow_nan=True),
    st.text(max_size=12).map(lambda t: MARK + t), st.lists(st.integers(-5, 300), max_size=40),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(object()), st.just(()),
    st.builds(_released), st.builds(lambda n: memoryview(array.array("I", range(n))), st.integers(0, 12)),
)


def byte_buffers(sizes: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Byte strings of the drawn size in every form the API accepts, and the bad forms of them."""
    data = sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n))
    return st.one_of(
        data,
        data.map(bytearray),
        data.map(memoryview),
        data.map(lambda b: memoryview(bytearray(b)).toreadonly()),
        data.map(lambda b: memoryview(b + b)[::2]),  # strided: the right length, not contiguous
        data.map(lambda b: memoryview(bytearray(b)).cast("c")),
        data.map(lambda b: memoryview(b * 4).cast("I") if b else memoryview(array.array("I"))),  # wide format
        data.map(SecretBytes),
        data.map(_wiped),
        st.builds(_released),
    )


def values(sizes: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.one_of(byte_buffers(sizes), junk)


def near(*good: int) -> st.SearchStrategy[int]:
    """Sizes around the right ones (and 0), so lengths are both right and off by a little."""
    off = [0, 1, *(g - 1 for g in good if g), *(g + 1 for g in good)]
    return st.one_of(st.sampled_from(good), st.sampled_from(off), st.integers(0, 80))


algos = st.one_of(st.sampled_from(AEAD_NAMES), st.sampled_from(["sig.ed25519", "kdf.hkdf_sha256", ""]),
                  byte_buffers(st.integers(8, 40)), junk)


# -- the property -----------------------------------------------------------------------------


def _forms(value: Any) -> list[str]:
    """How a caller's value could show up in a message (empty for values safe to print)."""
    if isinstance(value, SecretBytes):
        return [] if value.wiped else _byte_forms(value.reveal())
    if isinstance(value, memoryview):
        try:
            return _byte_forms(value.tobytes())
        except ValueError:  # released
            return []
    if isinstance(value, bytes | bytearray):
        return _byte_forms(bytes(value))
    if isinstance(value, str):
        return [MARK] if MARK in value else []
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**32:
        return [str(value)]
    if isinstance(value, tuple):  # Sealed included: its own __iter__ is under test, not used here
        return [f for v in tuple.__iter__(value) for f in _forms(v)]
    if isinstance(value, list):
        return [f for v in value for f in _forms(v)]
    if isinstance(value, dict):
        return [f for kv in value.items() for v in kv for f in _forms(v)]
    return []


def _byte_forms(b: bytes) -> list[str]:
    if len(b) < 8:  # too short to tell an echo from a coincidence
        return []
    return [repr(b)[2:-1], b.hex(), b[:8].hex(), b.decode("latin-1")]


@dataclass
class Outcome:
    ok: bool
    result: Any = None


def _violation(target: str, kind: str) -> None:
    if RECORD is None:
        raise AssertionError(f"{target}: {kind}")
    RECORD.append((target, kind))


def call(target: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    """Run ``fn``: a result, or an XpsError with a valid code and none of the arguments' bytes."""
    forms = [f for v in (*args, *kwargs.values()) for f in _forms(v)]
    try:
        return Outcome(True, fn(*args, **kwargs))
    except XpsError as e:
        if e.code not in CODES:
            _violation(target, f"invalid code {e.code!r}")
        texts = (str(e), repr(e), repr(e.args))
        for form in forms:
            if any(form in t for t in texts):
                _violation(target, f"caller bytes in message: {type(e).__name__}")
                break
        return Outcome(False)
    except Exception as e:
        _violation(target, f"untyped {type(e).__name__}")
        return Outcome(False)


def check(target: str, cond: bool, what: str) -> None:
    if not cond:
        _violation(target, f"wrong result: {what}")


def _plain(value: Any) -> bytes | None:
    """The bytes a good buffer value stands for (None for anything the API must refuse)."""
    if isinstance(value, SecretBytes):
        return None if value.wiped else value.reveal()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, memoryview):
        try:
            if value.c_contiguous and value.itemsize == 1 and value.ndim == 1:
                return value.tobytes()
        except ValueError:
            return None
    return None


# -- targets ----------------------------------------------------------------------------------


def t_aead_encrypt(data: st.DataObject) -> None:
    algo = data.draw(algos)
    k, n, _t = _sizes(algo)
    key, pt, aad = data.draw(values(near(k))), data.draw(values(st.integers(0, 70))), data.draw(values(near(0, 16)))
    nonce = data.draw(st.one_of(st.none(), values(near(n))))
    before = _plain(key)
    out = call("aead.encrypt", xps.aead.encrypt, algo, key, pt, aad, nonce=nonce)
    if out.ok:
        s = out.result
        check("aead.encrypt", type(s) is Sealed and type(s.nonce) is bytes, "a Sealed with a bytes nonce")
        check("aead.encrypt", before is not None and _plain(pt) is not None and _plain(aad) is not None,
              "accepted a bad buffer")
        if before is not None:
            check("aead.encrypt", xps.aead.open(algo, before, s, _plain(aad) or b"") == _plain(pt), "round trip")


def t_aead_decrypt(data: st.DataObject) -> None:
    algo = data.draw(algos)
    k, n, t = _sizes(algo)
    args = (data.draw(values(near(k))), data.draw(values(near(n))), data.draw(values(st.integers(0, 40))),
            data.draw(values(near(t))), data.draw(values(near(0, 16))))
    out = call("aead.decrypt", xps.aead.decrypt, algo, *args)
    check("aead.decrypt", not out.ok, "random ciphertext authenticated")


def _sealed_values(n: int, t: int) -> st.SearchStrategy[Any]:
    good = st.builds(lambda nonce, wire: Sealed.of(nonce, wire, t), st.binary(min_size=n, max_size=n),
                     st.binary(min_size=t, max_size=t + 30))
    odd = st.builds(lambda parts: _try(lambda: Sealed(parts)),
                    st.one_of(st.tuples(), st.tuples(junk), st.tuples(values(near(n)), values(near(t)), junk),
                              st.tuples(junk, junk, junk, junk)))
    return st.one_of(good, odd, junk, st.tuples(st.binary(max_size=n), st.binary(max_size=40), st.integers()))


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except XpsError as e:
        return e  # the refusal itself is then passed on as a (wrong) argument


def t_aead_open(data: st.DataObject) -> None:
    algo = data.draw(algos)
    k, n, t = _sizes(algo)
    out = call("aead.open", xps.aead.open, algo, data.draw(values(near(k))), data.draw(_sealed_values(n, t)),
               data.draw(values(near(0, 16))))
    check("aead.open", not out.ok, "random ciphertext authenticated")


def t_aead_info(data: st.DataObject) -> None:
    out = call("aead.info", xps.aead.info, data.draw(algos))
    if out.ok:
        check("aead.info", set(out.result) >= {"key_size", "nonce_size", "tag_size", "provider"}, "sizes")


def t_keyed(data: st.DataObject) -> None:
    algo = data.draw(algos)
    k, n, t = _sizes(algo)
    key = data.draw(values(near(k)))
    before = _plain(key)
    out = call("aead.keyed", xps.aead.keyed, algo, key)
    if not out.ok:
        return
    keyed = out.result
    check("aead.keyed", before is not None, "accepted a bad key")
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["encrypt", "encrypt_wire", "decrypt", "open", "wipe"]))
        if op == "encrypt_wire":
            pt, aad = data.draw(values(st.integers(0, 40))), data.draw(values(near(0, 16)))
            nonce = data.draw(values(near(n)))
            r = call("KeyedAead.encrypt_wire", keyed.encrypt_wire, nonce, pt, aad)
            if r.ok and before is not None:
                opened = xps.aead.decrypt(algo, before, _plain(nonce), r.result[:-t], r.result[-t:], _plain(aad) or b"")
                check("KeyedAead.encrypt_wire", opened == _plain(pt), "round trip")
        elif op == "encrypt":
            pt, aad = data.draw(values(st.integers(0, 40))), data.draw(values(near(0, 16)))
            nonce = data.draw(st.one_of(st.none(), values(near(n))))
            r = call("KeyedAead.encrypt", keyed.encrypt, pt, aad, nonce)
            if r.ok and before is not None:
                check("KeyedAead.encrypt", xps.aead.open(algo, before, r.result, _plain(aad) or b"") == _plain(pt),
                      "round trip")
        elif op == "decrypt":
            r = call("KeyedAead.decrypt", keyed.decrypt, data.draw(values(near(n))),
                     data.draw(values(st.integers(0, 50))), data.draw(values(near(0, 16))))
            check("KeyedAead.decrypt", not r.ok, "random ciphertext authenticated")
        elif op == "open":
            r = call("KeyedAead.open", keyed.open, data.draw(_sealed_values(n, t)), data.draw(values(near(0, 16))))
            check("KeyedAead.open", not r.ok, "random ciphertext authenticated")
        else:
            call("KeyedAead.wipe", keyed.wipe)


SIG = {"ed25519": (xps.ed25519, 32, 32, 64), "mldsa65": (xps.mldsa65, 32, 1952, 3309)}


def t_signature(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SIG)))
    api, sk_size, pk_size, sig_size = SIG[name]
    pk, sk = api.generate_keypair()
    op = data.draw(st.sampled_from(["public_key", "sign", "verify", "is_valid"]))
    ctx = data.draw(st.one_of(st.just(b""), values(st.integers(0, 300))))
    if op == "public_key":
        key = data.draw(st.one_of(st.just(sk), values(near(sk_size))))
        before = _plain(key)
        r = call(f"{name}.public_key", api.public_key, key)
        if r.ok:
            check(f"{name}.public_key", before is not None and r.result == api.public_key(before), "derivation")
    elif op == "sign":
        key = data.draw(st.one_of(st.just(sk), values(near(sk_size))))
        msg = data.draw(values(st.integers(0, 40)))
        before = _plain(key)
        r = call(f"{name}.sign", api.sign, key, msg, ctx)
        if r.ok:
            check(f"{name}.sign", before is not None and api.is_valid(api.public_key(before), _plain(msg) or b"",
                                                                       r.result, _plain(ctx) or b""), "verifies")
    else:
        fn = api.verify if op == "verify" else api.is_valid
        key = data.draw(st.one_of(st.just(pk), values(near(pk_size))))
        r = call(f"{name}.{op}", fn, key, data.draw(values(st.integers(0, 40))),
                 data.draw(values(near(sig_size))), ctx)
        check(f"{name}.{op}", not r.ok or r.result in (None, False), "random signature accepted")


def t_x25519(data: st.DataObject) -> None:
    _pk, sk = xps.x25519.generate_keypair()
    peer_pk, peer_sk = xps.x25519.generate_keypair()
    key = data.draw(st.one_of(st.just(sk), values(near(32))))
    before = _plain(key)
    if data.draw(st.booleans()):
        r = call("x25519.public_key", xps.x25519.public_key, key)
        if r.ok:
            check("x25519.public_key", before is not None, "accepted a bad key")
        return
    peer = data.draw(st.one_of(st.just(peer_pk), values(near(32))))
    r = call("x25519.derive_shared", xps.x25519.derive_shared, key, peer)
    if r.ok and before is not None and peer is peer_pk:
        check("x25519.derive_shared", r.result == xps.x25519.derive_shared(peer_sk, xps.x25519.public_key(before)),
              "agreement")


def t_mlkem(data: st.DataObject) -> None:
    ek, dk = xps.mlkem768.generate_keypair()
    op = data.draw(st.sampled_from(["public_key", "encapsulate", "decapsulate"]))
    if op == "public_key":
        call("mlkem768.public_key", xps.mlkem768.public_key, data.draw(st.one_of(st.just(dk), values(near(64)))))
    elif op == "encapsulate":
        key = data.draw(st.one_of(st.just(ek), values(near(1184))))
        r = call("mlkem768.encapsulate", xps.mlkem768.encapsulate, key)
        if r.ok and key is ek:
            ct, ss = r.result
            check("mlkem768.encapsulate", xps.mlkem768.decapsulate(dk, ct) == ss, "decapsulates")
    else:
        ct, ss = xps.mlkem768.encapsulate(ek)
        key = data.draw(st.one_of(st.just(dk), values(near(64))))
        cts = data.draw(st.one_of(st.just(ct), values(near(1088))))
        r = call("mlkem768.decapsulate", xps.mlkem768.decapsulate, key, cts)
        if r.ok and key is dk and cts is ct:
            check("mlkem768.decapsulate", r.result == ss, "shared secret")


lengths = st.one_of(st.integers(-2, 8200), huge_ints, junk)


def t_hkdf(data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(["derive", "extract", "expand"]))
    if op == "derive":
        length = data.draw(lengths)
        r = call("hkdf.derive", xps.hkdf.derive, data.draw(values(st.integers(0, 40))), length,
                 salt=data.draw(values(st.integers(0, 40))), info=data.draw(values(st.integers(0, 40))))
    elif op == "extract":
        r = call("hkdf.extract", xps.hkdf.extract, data.draw(values(st.integers(0, 40))),
                 data.draw(values(st.integers(0, 40))))
        length = 32
    else:
        length = data.draw(lengths)
        r = call("hkdf.expand", xps.hkdf.expand, data.draw(values(near(32))), data.draw(values(st.integers(0, 40))),
                 length)
    if r.ok:
        check(f"hkdf.{op}", type(r.result) is SecretBytes and len(r.result) == length, "length")


def t_secret_bytes(data: st.DataObject) -> None:
    src = data.draw(values(st.integers(0, 40)))
    before = _plain(src)
    r = call("SecretBytes", SecretBytes, src)
    if r.ok:
        s = r.result
        check("SecretBytes", before is not None and s == before and s.reveal() == before, "copy of the input")
        other = data.draw(values(st.integers(0, 40)))
        call("SecretBytes.__eq__", lambda: s == other)
        call("SecretBytes.view", s.view)
        call("SecretBytes.wipe", s.wipe)
        check("SecretBytes", s.wiped and len(s) == 0 and not s, "wiped")
    r = call("SecretBytes.take", SecretBytes.take, data.draw(values(st.integers(0, 40))))
    if r.ok:
        check("SecretBytes.take", isinstance(r.result, SecretBytes), "a SecretBytes")


def t_sealed(data: st.DataObject) -> None:
    parts = data.draw(st.one_of(st.tuples(), st.tuples(junk), st.tuples(values(near(12)), values(near(16)), junk),
                                st.tuples(values(near(12)), values(st.integers(0, 40)), st.integers(-2, 40)),
                                junk))
    given_nonce = (_plain(parts[0]) if isinstance(parts, tuple) and len(parts) == 3
                   and not isinstance(parts[0], SecretBytes) else None)
    r = call("Sealed", Sealed, parts)
    if not r.ok and isinstance(parts, tuple) and len(parts) == 3:
        r = call("Sealed.of", Sealed.of, *parts)
    if r.ok:
        s = r.result
        nonce = call("Sealed.nonce", getattr, s, "nonce")
        if given_nonce is not None:  # a byte buffer is frozen into bytes (a non-buffer is kept as given)
            check("Sealed", nonce.ok and type(nonce.result) is bytes and nonce.result == given_nonce,
                  "bytes nonce")
        for attr in ("ciphertext", "tag", "ciphertext_and_tag", "tag_size"):
            call(f"Sealed.{attr}", getattr, s, attr)
        call("Sealed.__repr__", repr, s)
        call("Sealed.__iter__", tuple, s)


def t_constant_time_eq(data: st.DataObject) -> None:
    a, b = data.draw(values(st.integers(0, 12))), data.draw(values(st.integers(0, 12)))
    pa, pb = _plain(a), _plain(b)
    r = call("constant_time_eq", xps.constant_time_eq, a, b)
    if r.ok:
        check("constant_time_eq", pa is not None and pb is not None and r.result == (pa == pb), "equality")


def t_secure_wipe(data: st.DataObject) -> None:
    buf = data.draw(values(st.integers(0, 40)))
    r = call("secure_wipe", xps.secure_wipe, buf)
    if r.ok:
        check("secure_wipe", isinstance(buf, bytearray | memoryview) and not any(bytes(buf)), "zeroed")


def t_random_bytes(data: st.DataObject) -> None:
    n = data.draw(st.one_of(st.integers(-2, 4096), huge_ints, junk))
    r = call("random_bytes", xps.random_bytes, n)
    if r.ok:
        check("random_bytes", type(r.result) is bytes and len(r.result) == n, "length")


def t_engine(data: st.DataObject) -> None:
    config = data.draw(st.one_of(st.none(), st.just(xps.EngineConfig()), junk))
    plugins = data.draw(st.one_of(st.just(()), junk))
    r = call("Engine", xps.Engine, config, plugins=plugins, lazy=True)
    if not r.ok:
        return
    eng = r.result
    op = data.draw(st.sampled_from(["publish", "build_table", "add_fault_listener", "remove_fault_listener"]))
    arg = data.draw(junk)
    call(f"Engine.{op}", getattr(eng, op), arg)


TARGETS: dict[str, Callable[[st.DataObject], None]] = {
    "aead.encrypt": t_aead_encrypt,
    "aead.decrypt": t_aead_decrypt,
    "aead.open": t_aead_open,
    "aead.info": t_aead_info,
    "aead.keyed and KeyedAead": t_keyed,
    "ed25519 and mldsa65": t_signature,
    "x25519": t_x25519,
    "mlkem768": t_mlkem,
    "hkdf": t_hkdf,
    "SecretBytes": t_secret_bytes,
    "Sealed": t_sealed,
    "constant_time_eq": t_constant_time_eq,
    "secure_wipe": t_secure_wipe,
    "random_bytes": t_random_bytes,
    "Engine": t_engine,
}


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_public_engine_api_gives_a_result_or_a_typed_error_without_caller_bytes(
        target: Callable[[st.DataObject], None], data: st.DataObject) -> None:
    target(data)
