"""Wycheproof conformance: every applicable vector, through the public API, for every provider.

Each vector file (``kat/wycheproof/*.json``, see ``SOURCE.md`` there) is run against an engine
pinned to each provider that implements the file's algorithm, one pytest test per vector per
provider (ids ``<file>#<tcId>-<provider>``). Vectors are data: nothing here restates a vector.

* ``valid`` -> the exact expected output; ``invalid`` -> the engine's typed error (exact class
  and ``.code``); ``acceptable`` -> either.
* A vector the API cannot express (a nonce, tag or key size it does not take, an expanded
  private key, fixed encapsulation randomness, external mu) is not skipped: the call is made
  and checked to raise, or what the API *can* do with the vector is checked, and the vector is
  counted in its own column of the summary table printed at the end of the run (conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest
from xpscerpto import (
    AuthError,
    Engine,
    ErrorCode,
    KeyError_,
    NonceError,
    PolicyError,
    Sealed,
    SecretBytes,
    XpsError,
)
from xpscerpto.interfaces import OPERATIONS
from xpscerpto.kat.wycheproof import WycheproofCase, load_wycheproof
from xpscerpto.plugins import openssl, sodium

VECTOR_DIR = Path(__file__).resolve().parents[2] / "kat" / "wycheproof"

# Outcome columns of the summary table (see conftest.py).
RAN_VALID = "ran-valid"
RAN_INVALID = "ran-invalid"
ACCEPTABLE = "acceptable"
REJECTED = "rejected-by-API"
NOT_EXPRESSIBLE = "not-expressible"
PARTIAL = "partial"

# Which operations each built-in provider implements, from the providers themselves.
PROVIDERS: dict[str, frozenset[str]] = {
    p.name: frozenset(p.implementations)
    for p in sorted((openssl.make_provider(), sodium.make_provider()), key=lambda p: p.name)
}

# The error code each typed error must carry (asserted, not taken from the class under test).
CODES: dict[type[XpsError], ErrorCode] = {
    AuthError: ErrorCode.AUTH,
    KeyError_: ErrorCode.KEY,
    NonceError: ErrorCode.NONCE,
    PolicyError: ErrorCode.POLICY,
}

# Sizes fixed by the algorithms (and, for ML-*, the engine's seed-form secret keys).
ED25519_PK = 32
MLKEM768_SEED, MLKEM768_EK, MLKEM768_CT, MLKEM768_SS = 64, 1184, 1088, 32
MLDSA65_SEED, MLDSA65_PK, MLDSA65_SIG = 32, 1952, 3309
MAX_CONTEXT = 255


@dataclass(frozen=True)
class AeadFamily:
    """An AEAD vector file: Wycheproof ``keySize`` (bits) -> operation, and the API's sizes."""

    ops_by_key_bits: dict[int, str]
    nonce_size: int
    tag_size: int  # the tag size of the engine's operation (bytes)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.ops_by_key_bits.values())


AEAD_FILES: dict[str, AeadFamily] = {
    "aes_gcm_test.json": AeadFamily({128: "aead.aes128gcm", 256: "aead.aes256gcm"}, 12, 16),
    "aes_gcm_siv_test.json": AeadFamily({256: "aead.aes256gcmsiv"}, 12, 16),
    "chacha20_poly1305_test.json": AeadFamily({256: "aead.chacha20poly1305"}, 12, 16),
    "xchacha20_poly1305_test.json": AeadFamily({256: "aead.xchacha20poly1305"}, 24, 16),
    # libsodium's AEGIS-256 (the engine's aead.aegis256) uses a 256-bit tag; Wycheproof's is 128.
    "aegis256_test.json": AeadFamily({256: "aead.aegis256"}, 32, 32),
}

# Every vector file, and the operations that make it applicable to a provider.
FILE_OPS: dict[str, tuple[str, ...]] = {
    **{f: fam.ops for f, fam in AEAD_FILES.items()},
    "ed25519_test.json": ("sig.ed25519",),
    "x25519_test.json": ("kex.x25519",),
    "hkdf_sha256_test.json": ("kdf.hkdf_sha256",),
    "mlkem_768_test.json": ("kem.mlkem768",),
    "mlkem_768_encaps_test.json": ("kem.mlkem768",),
    "mlkem_768_keygen_seed_test.json": ("kem.mlkem768",),
    "mlkem_768_semi_expanded_decaps_test.json": ("kem.mlkem768",),
    "mldsa_65_sign_seed_test.json": ("sig.mldsa65",),
    "mldsa_65_sign_noseed_test.json": ("sig.mldsa65",),
    "mldsa_65_verify_test.json": ("sig.mldsa65",),
}


@cache
def cases(file: str) -> tuple[WycheproofCase, ...]:
    return tuple(load_wycheproof(VECTOR_DIR / file))


def case_ops(case: WycheproofCase) -> tuple[str, ...]:
    """The operations a vector exercises (an AES key size with no operation: all of the file's)."""
    family = AEAD_FILES.get(case.file)
    if family is None:
        return FILE_OPS[case.file]
    op = family.ops_by_key_bits.get(case.group["keySize"])
    return (op,) if op is not None else family.ops


def params(*files: str) -> Iterator[Any]:
    """One param per (vector, provider implementing what the vector exercises)."""
    for file in files:
        for case in cases(file):
            for provider, implemented in PROVIDERS.items():
                if any(op in implemented for op in case_ops(case)):
                    yield pytest.param(provider, case, id=f"{case.id}-{provider}")


# Materialised once: the completeness test checks these lists against the files.
PARAMS: dict[str, list[Any]] = {file: list(params(file)) for file in FILE_OPS}


def expect(error: type[XpsError], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> XpsError:
    """Call ``fn`` and check it raises exactly ``error`` carrying exactly its code."""
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert type(info.value) is error, f"expected {error.__name__}, got {type(info.value).__name__}"
    assert info.value.code == CODES[error], f"{error.__name__} with code {info.value.code}"
    return info.value


def routed(engine: Engine, op: str, provider: str) -> None:
    """The pinned engine serves ``op`` with ``provider`` (not unrouted by a failed self-test)."""
    assert engine.table.provider_for(op) == provider, engine.table.unrouted.get(op)


def alias(op: str) -> str:
    """The AEAD API name of an operation, e.g. ``AES-256-GCM``."""
    return OPERATIONS[op].aliases[0]


def secret_eq(value: object, expected: bytes) -> None:
    """``value`` is a SecretBytes equal (constant-time ``==``) to ``expected``."""
    assert isinstance(value, SecretBytes), type(value).__name__
    assert value == expected, f"got {value.reveal().hex()}, expected {expected.hex()}"


# -- completeness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(FILE_OPS))
def test_every_vector_is_parametrised(file: str) -> None:
    """Every test of every file runs once for each provider implementing its algorithm."""
    doc = json.loads((VECTOR_DIR / file).read_text())
    loaded = cases(file)
    assert len(loaded) == doc["numberOfTests"] == sum(len(g["tests"]) for g in doc["testGroups"])
    assert len({c.tc_id for c in loaded}) == len(loaded), "duplicate tcId"
    providers = [p for p, impl in PROVIDERS.items() if any(op in impl for op in FILE_OPS[file])]
    assert providers, f"{file}: no provider implements {FILE_OPS[file]}"
    got = sorted((p.values[0], p.values[1].tc_id) for p in PARAMS[file])
    assert got == sorted((p, c.tc_id) for p in providers for c in loaded)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_aead_api_sizes(engine_for: Callable[[str], Engine], provider: str) -> None:
    """The sizes the AEAD tests rely on are the ones the API reports."""
    engine = engine_for(provider)
    checked = 0
    for family in AEAD_FILES.values():
        for bits, op in family.ops_by_key_bits.items():
            if op in PROVIDERS[provider]:
                info = engine.aead.info(alias(op))
                assert (info["operation"], info["provider"]) == (op, provider)
                assert (info["key_size"], info["nonce_size"], info["tag_size"]) == (
                    bits // 8, family.nonce_size, family.tag_size)
                checked += 1
    assert checked == sum(op.startswith("aead.") for op in PROVIDERS[provider])


# -- AEAD -----------------------------------------------------------------------------------------


# Wycheproof seals different messages under one (key, iv) on purpose; a known-answer test owns
# its nonces, so it tells the engine's nonce-reuse refusal that it does.
KAT_NONCES: Literal["caller"] = "caller"


@pytest.mark.parametrize(("provider", "case"), [p for f in AEAD_FILES for p in PARAMS[f]])
def test_aead(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
              provider: str, case: WycheproofCase) -> None:
    family = AEAD_FILES[case.file]
    engine = engine_for(provider)
    aead = engine.aead
    d = case.data
    key, iv, aad, msg, ct, tag = d["key"], d["iv"], d["aad"], d["msg"], d["ct"], d["tag"]
    wire = Sealed.of(iv, ct + tag, len(tag))  # the vector's own ciphertext, for aead.open
    op = family.ops_by_key_bits.get(case.group["keySize"])

    if op is None:
        # A key size with no operation (AES-192-GCM, AES-128-GCM-SIV): every operation of the
        # family refuses the key.
        tally(case.file, provider, REJECTED)
        ops = [o for o in family.ops if o in PROVIDERS[provider]]
        assert ops
        for other in ops:
            routed(engine, other, provider)
            expect(KeyError_, aead.encrypt, alias(other), key, msg, aad, nonce=iv)
            expect(KeyError_, aead.decrypt, alias(other), key, iv, ct, tag, aad)
            expect(KeyError_, aead.open, alias(other), key, wire, aad)
        return

    routed(engine, op, provider)
    algo = alias(op)

    if len(iv) != family.nonce_size:
        # A nonce size the API does not take (valid for AES-GCM in general, or InvalidNonceSize).
        tally(case.file, provider, REJECTED)
        expect(NonceError, aead.encrypt, algo, key, msg, aad, nonce=iv)
        expect(NonceError, aead.decrypt, algo, key, iv, ct, tag, aad)
        expect(NonceError, aead.open, algo, key, wire, aad)
        return

    if len(tag) != family.tag_size:
        # AEGIS-256 with a 128-bit tag: the API only takes 256-bit tags. The ciphertext does not
        # depend on the tag size, so it is still a known answer for valid vectors.
        tally(case.file, provider, REJECTED)
        if case.result == "valid":
            sealed = aead.encrypt(algo, key, msg, aad, nonce=iv, nonce_reuse=KAT_NONCES)
            out = sealed.ciphertext_and_tag
            assert out[: len(ct)] == ct
            assert len(out) == len(ct) + family.tag_size
            assert aead.decrypt(algo, key, iv, out[: len(ct)], out[len(ct):], aad) == msg
            assert aead.open(algo, key, sealed, aad) == msg
        expect(AuthError, aead.decrypt, algo, key, iv, ct, tag, aad)
        expect(AuthError, aead.open, algo, key, wire, aad)
        return

    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        sealed = aead.encrypt(algo, key, msg, aad, nonce=iv, nonce_reuse=KAT_NONCES)
        assert isinstance(sealed, Sealed)
        assert sealed.ciphertext_and_tag == ct + tag
        assert sealed.nonce == iv
        assert bytes(sealed.ciphertext) == ct
        assert sealed.tag == tag
        assert aead.decrypt(algo, key, iv, ct, tag, aad) == msg
        assert aead.open(algo, key, wire, aad) == msg
    else:
        assert case.result == "invalid", case.result
        tally(case.file, provider, RAN_INVALID)
        expect(AuthError, aead.decrypt, algo, key, iv, ct, tag, aad)
        expect(AuthError, aead.open, algo, key, wire, aad)


# -- Ed25519 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "case"), PARAMS["ed25519_test.json"])
def test_ed25519_verify(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                        provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "sig.ed25519", provider)
    pk, msg, sig = case.group["publicKey"], case.data["msg"], case.data["sig"]
    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        assert engine.ed25519.verify(pk, msg, sig) is None
        assert engine.ed25519.is_valid(pk, msg, sig) is True
    else:
        assert case.result == "invalid", case.result
        tally(case.file, provider, RAN_INVALID)
        expect(KeyError_ if len(pk) != ED25519_PK else AuthError, engine.ed25519.verify, pk, msg, sig)


# -- X25519 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "case"), PARAMS["x25519_test.json"])
def test_x25519(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kex.x25519", provider)
    private, public, shared = case.data["private"], case.data["public"], case.data["shared"]
    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        secret_eq(engine.x25519.derive_shared(private, public), shared)
        return
    assert case.result == "acceptable", case.result
    tally(case.file, provider, ACCEPTABLE)
    if not any(shared):
        # The engine documents that an all-zero shared secret (low-order peer) is KeyError_.
        expect(KeyError_, engine.x25519.derive_shared, private, public)
        return
    try:
        result = engine.x25519.derive_shared(private, public)
    except KeyError_ as exc:  # rejecting an acceptable vector is allowed, with the typed error
        assert type(exc) is KeyError_
        assert exc.code == ErrorCode.KEY
    else:
        secret_eq(result, shared)


# -- HKDF-SHA256 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "case"), PARAMS["hkdf_sha256_test.json"])
def test_hkdf_sha256(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                     provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kdf.hkdf_sha256", provider)
    d = case.data
    ikm, salt, info, size = d["ikm"], d["salt"], d["info"], d["size"]
    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        secret_eq(engine.hkdf.derive(ikm, size, salt=salt, info=info), d["okm"])
        secret_eq(engine.hkdf.expand(engine.hkdf.extract(salt, ikm), info, size), d["okm"])
    else:
        assert case.result == "invalid", case.result
        tally(case.file, provider, RAN_INVALID)
        expect(KeyError_, engine.hkdf.derive, ikm, size, salt=salt, info=info)
        expect(KeyError_, engine.hkdf.expand, engine.hkdf.extract(salt, ikm), info, size)


# -- ML-KEM-768 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "case"), PARAMS["mlkem_768_test.json"])
def test_mlkem768_keygen_decaps(engine_for: Callable[[str], Engine],
                                tally: Callable[[str, str, str], None],
                                provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kem.mlkem768", provider)
    kem = engine.mlkem768
    seed, c, ek = case.data["seed"], case.data["c"], case.data.get("ek")
    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        assert kem.public_key(seed) == ek
        secret_eq(kem.decapsulate(seed, c), case.data["K"])
        return
    assert case.result == "invalid", case.result
    tally(case.file, provider, RAN_INVALID)
    if len(seed) != MLKEM768_SEED:
        expect(KeyError_, kem.public_key, seed)
        expect(KeyError_, kem.decapsulate, seed, c)
    else:
        assert len(c) != MLKEM768_CT, "invalid vector with well-formed seed and ciphertext"
        if ek is not None:
            assert kem.public_key(seed) == ek
        # KemRoute.decapsulate: a ciphertext of the wrong length is AuthError.
        expect(AuthError, kem.decapsulate, seed, c)


@pytest.mark.parametrize(("provider", "case"), PARAMS["mlkem_768_encaps_test.json"])
def test_mlkem768_encaps(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                         provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kem.mlkem768", provider)
    kem = engine.mlkem768
    ek = case.data["ek"]
    if case.result == "valid":
        # Encaps_internal with a fixed m: the API draws m itself, so (c, K) cannot be checked.
        tally(case.file, provider, NOT_EXPRESSIBLE)
        ct, ss = kem.encapsulate(ek)
        assert isinstance(ct, bytes)
        assert len(ct) == MLKEM768_CT
        assert isinstance(ss, SecretBytes)
        assert len(ss) == MLKEM768_SS
    else:
        assert case.result == "invalid", case.result
        # Unreduced ek (FIPS 203 section 7.2 modulus check) or an ek of the wrong length.
        tally(case.file, provider, RAN_INVALID)
        expect(KeyError_, kem.encapsulate, ek)


@pytest.mark.parametrize(("provider", "case"), PARAMS["mlkem_768_keygen_seed_test.json"])
def test_mlkem768_keygen_seed(engine_for: Callable[[str], Engine],
                              tally: Callable[[str, str, str], None],
                              provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kem.mlkem768", provider)
    kem = engine.mlkem768
    seed, ek = case.data["seed"], case.data["ek"]
    assert case.result == "valid", case.result
    # ek is checked exactly; the expanded dk is not exposed by the API (the secret key is the
    # seed), so it is checked only through a round trip against the vector's ek.
    tally(case.file, provider, PARTIAL)
    assert kem.public_key(seed) == ek
    ct, ss = kem.encapsulate(ek)
    secret_eq(kem.decapsulate(seed, ct), ss.reveal())


@pytest.mark.parametrize(("provider", "case"), PARAMS["mlkem_768_semi_expanded_decaps_test.json"])
def test_mlkem768_expanded_dk(engine_for: Callable[[str], Engine],
                              tally: Callable[[str, str, str], None],
                              provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "kem.mlkem768", provider)
    kem = engine.mlkem768
    dk, c = case.data["dk"], case.data["c"]
    assert len(dk) != MLKEM768_SEED
    # The API's decapsulation key is the 64-byte seed: an expanded dk is refused as a key.
    tally(case.file, provider, REJECTED)
    expect(KeyError_, kem.decapsulate, dk, c)
    expect(KeyError_, kem.public_key, dk)


# -- ML-DSA-65 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "case"), PARAMS["mldsa_65_sign_seed_test.json"])
def test_mldsa65_sign_seed(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                           provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "sig.mldsa65", provider)
    sig_api = engine.mldsa65
    seed, pk = case.group["privateSeed"], case.group["publicKey"]
    msg, ctx = case.data.get("msg"), case.data.get("ctx", b"")
    if case.result == "invalid":
        tally(case.file, provider, RAN_INVALID)
        if len(seed) != MLDSA65_SEED:
            expect(KeyError_, sig_api.public_key, seed)
            expect(KeyError_, sig_api.sign, seed, msg, ctx)
        else:
            assert len(ctx) > MAX_CONTEXT, "invalid vector with a well-formed seed and context"
            assert sig_api.public_key(seed) == pk
            expect(PolicyError, sig_api.sign, seed, msg, ctx)
        return
    assert case.result == "valid", case.result
    if msg is None:
        # Only mu is given: signing it needs an external-mu API, which the engine does not have.
        tally(case.file, provider, NOT_EXPRESSIBLE)
        assert sig_api.public_key(seed) == pk
        return
    # The engine signs hedged (fresh randomness), so the vector's signature cannot be reproduced:
    # the public key is exact, the vector's signature verifies and a fresh signature verifies.
    tally(case.file, provider, PARTIAL)
    assert sig_api.public_key(seed) == pk
    assert sig_api.verify(pk, msg, case.data["sig"], ctx) is None
    fresh = sig_api.sign(seed, msg, ctx)
    assert len(fresh) == MLDSA65_SIG
    assert sig_api.verify(pk, msg, fresh, ctx) is None


@pytest.mark.parametrize(("provider", "case"), PARAMS["mldsa_65_sign_noseed_test.json"])
def test_mldsa65_sign_expanded_key(engine_for: Callable[[str], Engine],
                                   tally: Callable[[str, str, str], None],
                                   provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "sig.mldsa65", provider)
    sig_api = engine.mldsa65
    sk, pk = case.group["privateKey"], case.group["publicKey"]
    msg, ctx = case.data.get("msg"), case.data.get("ctx", b"")
    assert len(sk) != MLDSA65_SEED
    # The API's signing key is the 32-byte seed: an expanded private key is refused as a key
    # (the key is checked before message and context, so mu-only vectors sign an empty message).
    tally(case.file, provider, REJECTED)
    expect(KeyError_, sig_api.sign, sk, b"" if msg is None else msg, ctx)
    expect(KeyError_, sig_api.public_key, sk)
    if case.result == "valid" and msg is not None:
        # The vector's (deterministic) signature still verifies under its public key.
        assert sig_api.verify(pk, msg, case.data["sig"], ctx) is None


@pytest.mark.parametrize(("provider", "case"), PARAMS["mldsa_65_verify_test.json"])
def test_mldsa65_verify(engine_for: Callable[[str], Engine], tally: Callable[[str, str, str], None],
                        provider: str, case: WycheproofCase) -> None:
    engine = engine_for(provider)
    routed(engine, "sig.mldsa65", provider)
    pk, msg, sig, ctx = case.group["publicKey"], case.data["msg"], case.data["sig"], case.data.get("ctx", b"")
    if case.result == "valid":
        tally(case.file, provider, RAN_VALID)
        assert engine.mldsa65.verify(pk, msg, sig, ctx) is None
        return
    assert case.result == "invalid", case.result
    tally(case.file, provider, RAN_INVALID)
    # SignatureRoute.verify checks the public-key length (KeyError_), then the signature
    # length (AuthError), then the context length (PolicyError), then the signature.
    if len(pk) != MLDSA65_PK:
        error: type[XpsError] = KeyError_
    elif len(sig) != MLDSA65_SIG:
        error = AuthError
    elif len(ctx) > MAX_CONTEXT:
        error = PolicyError
    else:
        error = AuthError
    expect(error, engine.mldsa65.verify, pk, msg, sig, ctx)
