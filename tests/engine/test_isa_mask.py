"""The incident mask: parsing, matching, the environment, and OpenSSL's AVX-512 demotion."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xpscerpto import isa_mask
from xpscerpto.errors import PolicyError


@pytest.mark.parametrize(("text", "tokens", "strict"), [
    ("", set(), True),
    ("-jit", {"jit"}, True),
    # Review API-5: the engine refuses an entry without its '-' (or with '+'); plugin
    # discovery's lenient parse still drops it.
    ("-jit, -AVX512 +sse2", {"jit", "avx512"}, False),
    ("  -sodium\t-openssl,,-jit-openssl ", {"sodium", "openssl", "jit-openssl"}, True),
    ("jit avx512 -", set(), False),  # only '-token' entries remove anything
])
def test_parse(text: str, tokens: set[str], strict: bool) -> None:
    assert isa_mask.parse(text, strict=strict) == tokens


@pytest.mark.parametrize("bad", ["-jit;rm", "-" + "a" * 65, "-jït"])
def test_parse_refuses_odd_tokens_without_echoing_them(bad: str) -> None:
    with pytest.raises(PolicyError) as info:
        isa_mask.parse(bad)
    assert bad[1:] not in str(info.value)


@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(PolicyError, match="mask: expected a string"):
        isa_mask.parse(value)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_parse_only_ever_raises_policy_error(text: str) -> None:
    try:
        out = isa_mask.parse(text)
    except PolicyError:
        return
    assert all(t and t == t.lower() for t in out)


def test_masked_by_backend_then_cpu_feature_prefix() -> None:
    assert isa_mask.masked_by(("jit", "openssl"), (), frozenset({"openssl"})) == "-openssl"
    assert isa_mask.masked_by(("sodium",), ("avx512f", "avx2"), frozenset({"avx512"})) == "-avx512"
    assert isa_mask.masked_by(("sodium",), ("avx2",), frozenset({"avx512", "jit"})) is None
    assert isa_mask.masked_by(("OpenSSL",), (), frozenset({"openssl"})) == "-openssl"


def test_effective_joins_environment_and_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isa_mask.MASK_ENV, "-sodium")
    assert isa_mask.effective(("jit",)) == {"sodium", "jit"}
    monkeypatch.setenv(isa_mask.MASK_ENV, "-so;dium")
    with pytest.raises(PolicyError, match=isa_mask.MASK_ENV) as info:
        isa_mask.effective()
    assert "so;dium" not in str(info.value)
    monkeypatch.delenv(isa_mask.MASK_ENV)
    assert isa_mask.effective() == frozenset()


def test_cpu_flags_are_read_from_the_machine() -> None:
    flags = isa_mask.cpu_flags()
    assert isinstance(flags, frozenset)
    if os.path.exists("/proc/cpuinfo"):
        assert flags, "a Linux machine lists its CPU flags"
        assert all(f == f.lower() for f in flags)


def test_demote_openssl_sets_the_variable_only_when_asked_and_not_overriding_the_operator() -> None:
    env: dict[str, str] = {}
    assert isa_mask.demote_openssl(env) is False and env == {}
    env = {isa_mask.MASK_ENV: "-jit"}
    assert isa_mask.demote_openssl(env) is False and "OPENSSL_ia32cap" not in env
    env = {isa_mask.MASK_ENV: "-avx512", "OPENSSL_ia32cap": "~0x0"}
    assert isa_mask.demote_openssl(env) is True and env["OPENSSL_ia32cap"] == "~0x0"
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    AESGCM(bytes(32))  # OpenSSL is loaded in this process now
    env = {isa_mask.MASK_ENV: "-avx512"}
    # Too late, and nothing is pretended.
    assert isa_mask.demote_openssl(env) is False and "OPENSSL_ia32cap" not in env


def _child(code: str, mask: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in (isa_mask.MASK_ENV, "OPENSSL_ia32cap")}
    if mask is not None:
        env[isa_mask.MASK_ENV] = mask
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_importing_xpscerpto_first_demotes_openssl_in_a_real_process() -> None:
    code = ("import os, xpscerpto as x; k = x.random_bytes(32); "
            "s = x.aead.encrypt('AES-256-GCM', k, b'm'); assert x.aead.open('AES-256-GCM', k, s) == b'm'; "
            "print(os.environ.get('OPENSSL_ia32cap')); print(x.isa_mask.openssl_demotion())")
    value, said = _child(code, "-avx512").splitlines()
    assert value == isa_mask.OPENSSL_AVX512_OFF
    assert said.startswith("OPENSSL_ia32cap=")
    value, said = _child(code, None).splitlines()
    assert value == "None" and said == "not requested"


def test_importing_cryptography_first_is_reported_not_hidden() -> None:
    code = ("import cryptography.hazmat.primitives.ciphers.aead, os, xpscerpto as x; "
            "print(os.environ.get('OPENSSL_ia32cap')); print(x.isa_mask.openssl_demotion())")
    value, said = _child(code, "-avx512").splitlines()
    assert value == "None"
    assert said.startswith("requested, but OpenSSL was loaded before")


@pytest.mark.parametrize("bad", ["-jit;rm", "-" + "a" * 65, "-jït", "-:"])
def test_lenient_parse_drops_odd_tokens_and_keeps_the_rest(bad: str) -> None:
    assert isa_mask.parse(f"{bad} -jit", strict=False) == {"jit"}
    with pytest.raises(PolicyError):
        isa_mask.parse(f"{bad} -jit")


@pytest.mark.parametrize(("given", "tokens"), [
    (("jit",), ("jit",)), (("-jit",), ("jit",)), (("JIT", "-Avx512"), ("avx512", "jit")), (["sodium"], ("sodium",)),
    ((), ()),
])
def test_an_engine_config_built_in_code_takes_the_mask_as_the_file_does(given: object, tokens: tuple[str, ...]) -> None:
    # Found by a review: ("-jit",) and ("JIT",) were kept as given and masked nothing, silently.
    from xpscerpto.settings import EngineConfig

    assert EngineConfig(isa_mask=given).isa_mask == tokens  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["-jit", ("jit\n",), (42,), ("",), ("-",), ("a b",), ("x" * 65,), None, {"jit"}])
def test_an_engine_config_refuses_a_mask_it_cannot_apply(given: object) -> None:
    from xpscerpto.settings import EngineConfig

    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: isa_mask: ") as info:
        EngineConfig(isa_mask=given)  # type: ignore[arg-type]
    assert "jit\n" not in str(info.value) and "a b" not in str(info.value)
