"""The jit providers as the engine sees them: records, masks, the keyed ciphers' contract.

Everything runs against the kernels warmed once per session (``jit_ready``); what happens
before warm-up, or without numba, is in test_jit_lifecycle.py (fresh processes).
"""

from __future__ import annotations

import array
import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto import AuthError, Engine, EngineConfig, KeyError_, NonceError, PolicyError, SecretBytes, XpsError
from xpscerpto._plugins import validate_provider
from xpscerpto.interfaces import Provider
from xpscerpto.plugins import jit

XCHACHA, CHACHA = "aead.xchacha20poly1305", "aead.chacha20poly1305"
# (provider, operation) -> nonce size: every implementation the jit module offers.
IMPLS = {("jit", CHACHA): 12, ("jit", XCHACHA): 24, ("jit-openssl", XCHACHA): 24}


def impl(provider: str, op: str) -> Any:
    (p,) = [p for p in jit.make_providers(mask="") if p.name == provider]
    return p.implementations[op]


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


# -- records and readiness ------------------------------------------------------------------------


def test_ready_status_describes_every_implementation(jit_ready: jit.JitStatus) -> None:
    assert jit_ready and jit_ready.state == "ready"
    assert jit_ready.numba_version and jit_ready.seconds is not None and jit_ready.seconds > 0
    assert jit_ready.cache_dir is not None and Path(jit_ready.cache_dir).is_dir()
    assert {(k.provider, k.operation) for k in jit_ready.kernels} == set(IMPLS)
    flags = cpu_flags()
    for k in jit_ready.kernels:
        assert k.constant_time is True
        assert "jit" in k.backends
        assert ("openssl" in k.backends) == (k.provider == "jit-openssl")
        assert k.cpu_features and k.cpu_features <= flags, k.cpu_features - flags
        assert k.weight > 0
    assert {(r.provider, r.operation) for r in jit_ready.selftests} == set(IMPLS)
    assert all(r.passed and r.vectors > 0 for r in jit_ready.selftests)


def test_providers_are_valid_records_ranked_below_the_built_ins(jit_ready: jit.JitStatus) -> None:
    providers = jit.make_providers(mask="")
    assert [p.name for p in providers] == ["jit", "jit-openssl"]
    for p in providers:
        assert isinstance(p, Provider)
        assert validate_provider(p) is None
        assert p.constant_time is True
        assert p.priority < 90  # never preferred by static priority over sodium (90) or openssl (100)
    assert set(providers[0].implementations) == {CHACHA, XCHACHA}
    assert set(providers[1].implementations) == {XCHACHA}


def test_warm_up_again_returns_the_same_outcome_without_work(jit_ready: jit.JitStatus) -> None:
    assert jit.warm_up(mask="") is jit_ready
    assert jit.status(mask="") is jit_ready


@pytest.mark.parametrize(("mask", "expected"), [
    ("", ["jit", "jit-openssl"]),
    ("-jit", []),
    ("-JIT", []),
    ("-openssl", ["jit"]),
    ("-sodium, +jit", ["jit", "jit-openssl"]),
    ("-avx2 -sse2", []),  # every x86-64 build is compiled with SSE2
])
def test_mask_takes_out_backends_and_cpu_features(jit_ready: jit.JitStatus, mask: str, expected: list[str]) -> None:
    assert [p.name for p in jit.make_providers(mask=mask)] == expected
    state = jit.status(mask=mask)
    assert state.state == ("masked" if "jit" in mask.lower().replace("+jit", "") else "ready")
    if state.state == "masked":
        assert "XPS_SIMD_ISA_MASK (-jit)" in state.reason


def test_avx512_mask_follows_what_the_kernels_were_compiled_for(jit_ready: jit.JitStatus) -> None:
    compiled_avx512 = any(f.startswith("avx512") for k in jit_ready.kernels for f in k.cpu_features)
    assert compiled_avx512 == any(f.startswith("avx512") for f in cpu_flags())
    assert bool(jit.make_providers(mask="-avx512")) is not compiled_avx512


def test_mask_from_the_environment(jit_ready: jit.JitStatus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jit.MASK_ENV, "-openssl")
    assert [p.name for p in jit.make_providers()] == ["jit"]
    monkeypatch.setenv(jit.MASK_ENV, "-jit")
    assert jit.make_providers() == ()
    assert jit.status().state == "masked"
    assert jit.warm_up().state == "masked"


# -- through the engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(jit_ready: jit.JitStatus) -> dict[str, Engine]:
    """One engine per jit provider, registered through the plugin hook and pinned to it."""
    return {name: Engine(EngineConfig(providers=(name,), autoload_plugins=False))
            for name in ("jit", "jit-openssl")}


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_engine_routes_and_round_trips(engines: dict[str, Engine], provider: str, op: str) -> None:
    engine = engines[provider]
    assert engine.table.provider_for(op) == provider
    assert not [r for r in engine.state.selftests if not r.passed]
    algo = "XCHACHA20-POLY1305" if op == XCHACHA else "CHACHA20-POLY1305"
    key = SecretBytes(os.urandom(32))
    for size in (0, 1, 64, 1000):
        msg = os.urandom(size)
        sealed = engine.aead.encrypt(algo, key, msg, b"aad")
        assert engine.aead.open(algo, key, sealed, b"aad") == msg
        nonce, ct, tag = sealed
        assert engine.aead.decrypt(algo, key, nonce, ct, tag, b"aad") == msg
        with pytest.raises(AuthError):
            engine.aead.open(algo, key, sealed, b"other aad")
    keyed = engine.aead.keyed(algo, key)
    sealed = keyed.encrypt(b"hello")
    assert keyed.decrypt(sealed.nonce, sealed.ciphertext_and_tag) == b"hello"


def test_the_hook_registers_nothing_before_anything_is_ready(jit_ready: jit.JitStatus) -> None:
    class Registry:
        added: list[Provider] = []  # noqa: RUF012 - a throwaway stand-in for ProviderRegistry

        def add(self, provider: Provider) -> None:
            self.added.append(provider)

    registry = Registry()
    jit.xps_register_providers(registry)  # ready, with the environment's mask
    assert [p.name for p in registry.added] == [p.name for p in jit.make_providers()]


# -- the keyed ciphers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_every_buffer_type_gives_the_same_answer(jit_ready: jit.JitStatus, provider: str, op: str) -> None:
    ns = IMPLS[(provider, op)]
    key, nonce, msg, aad = os.urandom(32), os.urandom(ns), os.urandom(100), os.urandom(20)
    want = impl(provider, op).cipher(key).encrypt(nonce, msg, aad)
    strided = bytearray(200)
    strided[::2] = msg

    def forms(b: bytes) -> list[Any]:
        return [b, bytearray(b), memoryview(b), memoryview(bytearray(b)).toreadonly(), array.array("B", b)]

    for k in forms(key):
        c = impl(provider, op).cipher(k)
        for n in forms(nonce):
            assert c.encrypt(n, msg, aad) == want
        for m in forms(msg):
            assert c.encrypt(nonce, m, aad) == want
        for a in forms(aad):
            assert c.encrypt(nonce, msg, a) == want
            assert c.decrypt(nonce, bytearray(want), a) == msg
        assert c.decrypt(nonce, memoryview(want), aad) == msg
    assert impl(provider, op).cipher(key).encrypt(nonce, msg, None) == impl(provider, op).cipher(key).encrypt(
        nonce, msg, b"")
    assert type(impl(provider, op).cipher(key).decrypt(nonce, want, aad)) is bytes


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_buffers_the_engine_refuses_are_refused_by_the_kernels_first(jit_ready: jit.JitStatus, provider: str,
                                                                    op: str) -> None:
    # The jit providers declare checks_buffers, so the engine puts no check in front of them:
    # a strided, wide-format or released view must be refused here, before anything is computed
    # (as pyca/cryptography does), never read as bytes.
    ns = IMPLS[(provider, op)]
    key, nonce, msg, aad = os.urandom(32), os.urandom(ns), os.urandom(100), os.urandom(20)
    assert impl(provider, op).checks_buffers
    wire = impl(provider, op).cipher(key).encrypt(nonce, msg, aad)
    strided = bytearray(200)
    strided[::2] = msg
    released = memoryview(msg)
    released.release()
    bad = [memoryview(strided)[::2], memoryview(array.array("I", msg[:100 // 4 * 4])), released]
    c = impl(provider, op).cipher(key)
    for b in bad:
        for call in (lambda: c.encrypt(nonce, b, aad), lambda: c.encrypt(nonce, msg, b),  # noqa: B023
                     lambda: c.decrypt(nonce, b, aad), lambda: c.decrypt(nonce, wire, b)):  # noqa: B023
            with pytest.raises((BufferError, ValueError, TypeError)):
                call()
    for k in (memoryview(bytes(64))[::2], memoryview(array.array("I", key)), released):
        with pytest.raises((BufferError, ValueError, TypeError)):
            impl(provider, op).cipher(k)


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_the_cipher_keeps_its_own_copy_and_wipes_it(jit_ready: jit.JitStatus, provider: str, op: str) -> None:
    ns = IMPLS[(provider, op)]
    key = bytearray(os.urandom(32))
    nonce, msg = os.urandom(ns), b"m" * 40
    c = impl(provider, op).cipher(key)
    want = c.encrypt(nonce, msg, b"")
    key[:] = bytes(32)  # the caller wipes theirs: the cipher must not follow
    assert c.encrypt(nonce, msg, b"") == want
    owned = c._key
    assert type(owned) is bytearray and owned is not key and any(owned)
    del c
    gc.collect()
    assert owned == bytearray(32), "the cipher's key copy was not zeroed when it went"


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_bad_inputs_raise_typed_errors_naming_the_field_not_the_bytes(jit_ready: jit.JitStatus, provider: str,
                                                                       op: str) -> None:
    ns = IMPLS[(provider, op)]
    secret = b"\x13\x37" * 16
    c = impl(provider, op).cipher(secret)
    nonce = os.urandom(ns)
    cases: list[tuple[type[XpsError], Any]] = [
        (KeyError_, lambda: impl(provider, op).cipher(secret[:31]).encrypt(nonce, b"x", b"")),
        (KeyError_, lambda: impl(provider, op).cipher(secret + b"!").decrypt(nonce, bytes(40), b"")),
        (KeyError_, lambda: impl(provider, op).cipher("k" * 32)),
        (KeyError_, lambda: impl(provider, op).cipher(32)),
        (NonceError, lambda: c.encrypt(nonce[:-1], b"x", b"")),
        (NonceError, lambda: c.decrypt(nonce + b"\x00", bytes(40), b"")),
        (PolicyError, lambda: c.encrypt(nonce, "text", b"")),
        (PolicyError, lambda: c.encrypt(nonce, b"x", 5)),
        (PolicyError, lambda: c.decrypt(nonce, [1, 2, 3] * 10, b"")),
        (PolicyError, lambda: c.encrypt(str(nonce), b"x", b"")),
        (AuthError, lambda: c.decrypt(nonce, bytes(15), b"")),
        (AuthError, lambda: c.decrypt(nonce, b"", b"")),
        (AuthError, lambda: c.decrypt(nonce, secret + bytes(16), b"")),
    ]
    for error, call in cases:
        with pytest.raises(error) as info:
            call()
        assert type(info.value) is error
        text = str(info.value)
        assert secret.hex() not in text and repr(secret)[2:-1] not in text and "\\x13\\x37" not in text


def test_a_cipher_made_before_warm_up_refuses_rather_than_compiling() -> None:
    """The classes exist before warm-up; their kernels are stand-ins that raise (run in a fresh
    process by test_jit_lifecycle.py; here: the stand-in itself)."""
    from xpscerpto import InternalError

    with pytest.raises(InternalError, match="not warmed up"):
        jit._not_warm(b"", b"", bytearray())


# -- races ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "op"), sorted(IMPLS))
def test_threads_sharing_one_cipher_get_their_own_answers(jit_ready: jit.JitStatus, provider: str, op: str) -> None:
    ns = IMPLS[(provider, op)]
    c = impl(provider, op).cipher(os.urandom(32))
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(200):
                msg = bytes([seed]) * (i % 300)
                nonce = os.urandom(ns)
                sealed = c.encrypt(nonce, msg, bytes([i % 256]))
                assert c.decrypt(nonce, sealed, bytes([i % 256])) == msg
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_a_buffer_resized_by_another_thread_gives_an_answer_or_a_typed_error(jit_ready: jit.JitStatus) -> None:
    """The kernel re-checks every length it was given, so a racing resize can never make it read
    or write out of bounds; the call answers for one consistent view or refuses."""
    c = impl("jit", XCHACHA).cipher(os.urandom(32))
    data = bytearray(4096)
    stop = threading.Event()

    def resize() -> None:
        while not stop.is_set():
            data.extend(b"\x00" * 64)
            del data[-64:]
            data.extend(b"\x01" * 32)
            del data[-32:]

    t = threading.Thread(target=resize)
    t.start()
    outcomes: set[str] = set()
    try:
        for _ in range(3000):
            nonce = os.urandom(24)
            try:
                out = c.encrypt(nonce, data, b"")
            except PolicyError:
                outcomes.add("refused")
                continue
            assert len(out) - 16 in (4096, 4096 + 64, 4096 + 32)
            outcomes.add("sealed")
    finally:
        stop.set()
        t.join()
    assert "sealed" in outcomes


# -- hypothesis -----------------------------------------------------------------------------------

_ANY = st.one_of(
    st.binary(max_size=80), st.binary(max_size=80).map(bytearray),
    st.binary(max_size=80).map(memoryview),  # type: ignore[arg-type]  # memoryview is generic in typeshed
    st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=10), st.none(),
    st.lists(st.integers(0, 255), max_size=5), st.floats(allow_nan=True),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(IMPLS)), key=_ANY, nonce=_ANY, data=_ANY, aad=_ANY, decrypt=st.booleans())
def test_any_inputs_give_an_answer_or_an_xps_error(jit_ready: jit.JitStatus, which: tuple[str, str], key: Any,
                                                   nonce: Any, data: Any, aad: Any, decrypt: bool) -> None:
    provider, op = which
    try:
        c = impl(provider, op).cipher(key)
        out = (c.decrypt if decrypt else c.encrypt)(nonce, data, aad)
    except XpsError as exc:
        for value in (key, nonce, data, aad):
            if isinstance(value, bytes | bytearray) and len(value) >= 4:
                assert bytes(value).hex() not in str(exc)
        return
    assert type(out) is bytes
    if not decrypt:
        assert len(out) == len(memoryview(data).cast("B")) + 16


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mask=st.one_of(st.text(max_size=40), st.sampled_from(["-jit", " -JIT,", "-openssl\t-avx512", "--", "-"])))
def test_any_mask_text_is_read_without_error(jit_ready: jit.JitStatus, mask: str) -> None:
    tokens = jit.mask_tokens(mask)
    assert all(t and t == t.lower() for t in tokens)
    providers = jit.make_providers(mask=mask)
    assert (jit.status(mask=mask).state == "masked") == ("jit" in tokens)
    assert not providers or "jit" not in tokens


@pytest.mark.parametrize("bad", [5, b"/tmp/x", 2.5, ["/tmp"], "/tmp/a\x00b"])
def test_bad_arguments_are_refused_and_change_nothing(jit_ready: jit.JitStatus, bad: Any) -> None:
    before = jit.status(mask="")
    if not isinstance(bad, str):
        for call in (lambda: jit.mask_tokens(bad), lambda: jit.status(mask=bad), lambda: jit.make_providers(mask=bad),
                     lambda: jit.warm_up(mask=bad)):
            with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: mask: expected a string"):
                call()
    for call in (lambda: jit.warm_up(bad, mask=""), lambda: jit.start_warm_up(bad, mask="")):
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: cache_dir: expected a path"):
            call()
    assert jit.status(mask="") is before
