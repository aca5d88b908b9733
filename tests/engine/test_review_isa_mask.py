"""Review API-5: an incident mask entry that would remove nothing is refused, not ignored.

``XPS_SIMD_ISA_MASK=jit`` (no sign), ``-jit`` with U+2212 for its sign (pasted from a chat), ``--jit``,
``- jit``, ``+jit`` and ``-jti`` (a typo) all once started an engine with jit still serving,
silently. A misspelled entry is now refused; a well-formed token that names nothing known (a
typo such as ``-jti``, or a capsule's provider not loaded yet) is kept, since capsule and plugin
names are valid tokens, and reported once as a warning when a table is built. A known token is
a built-in backend, a loaded provider or a CPU feature named the way ``/proc/cpuinfo`` names it,
whether or not this machine has it (a fleet's mask names features some machines lack).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import xpscerpto as xps
from xpscerpto import isa_mask
from xpscerpto.errors import PolicyError
from xpscerpto.settings import EngineConfig

# (mask, something the message says about it)
BAD = [
    ("jit", "entry 1 has no '-'"),
    ("\u2212jit", "U+2212"),
    ("--jit", "more than one '-'"),
    ("- jit", "a '-' without a token"),
    ("+jit", "'+'"),
    ("-jit, jti", "entry 2 has no '-'"),
    ("-jit -\u212aey", "non-ASCII"),  # the Kelvin sign lower-cases to an ASCII 'k'
    ("-" + "x" * 70, "at most 64"),
]


@pytest.mark.parametrize(("mask", "said"), BAD)
def test_the_environment_mask_refuses_what_removes_nothing(monkeypatch: pytest.MonkeyPatch, mask: str,
                                                           said: str) -> None:
    monkeypatch.setenv(isa_mask.MASK_ENV, mask)
    with pytest.raises(PolicyError) as info:
        isa_mask.effective()
    msg = str(info.value)
    assert msg.startswith(f"XPS_ERR_POLICY: {isa_mask.MASK_ENV}: ") and said in msg, msg
    assert len(msg) < 400 and "x" * 30 not in msg
    with pytest.raises(PolicyError, match=isa_mask.MASK_ENV):
        xps.Engine(EngineConfig(autotune=False))  # the engine does not start with it


@pytest.mark.parametrize(("mask", "said"), BAD)
def test_the_configured_mask_refuses_the_same(mask: str, said: str) -> None:
    for value in (mask, [e for e in mask.replace(",", " ").split(" ") if e]):
        with pytest.raises(PolicyError) as info:
            EngineConfig.from_mapping({"isa_mask": value})
        assert "'isa_mask'" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("mask", ["-jit", "-JIT", "-jit-openssl", "-openssl", "-sodium", "-avx512", "-AVX512",
                                  "-avx2, -sha_ni -aes", "-avx512f,-avx512_vbmi2", "-sse4_2", "-asimd -pmull",
                                  "-sha2", "", " , ", "-vaes -vpclmulqdq -gfni"])
def test_known_backends_and_cpu_features_are_accepted_on_any_machine(monkeypatch: pytest.MonkeyPatch,
                                                                     mask: str) -> None:
    monkeypatch.setenv(isa_mask.MASK_ENV, mask)
    assert isa_mask.effective() == isa_mask.parse(mask)
    assert EngineConfig.from_mapping({"isa_mask": mask}).isa_mask == tuple(sorted(isa_mask.parse(mask)))


def test_every_flag_of_this_machine_is_a_known_token() -> None:
    flags = sorted(f for f in isa_mask.cpu_flags() if isa_mask._TOKEN.fullmatch(f))
    assert isa_mask.parse(" ".join(f"-{f}" for f in flags)) == frozenset(flags)


def test_a_feature_this_machine_lacks_is_still_accepted() -> None:
    lacking = sorted(isa_mask.CPU_FEATURES - isa_mask.cpu_flags())
    assert lacking  # no machine has both x86 and arm64 features
    assert isa_mask.parse(" ".join(f"-{f}" for f in lacking)) == frozenset(lacking)


def test_code_configuration_keeps_plugin_provider_names_but_refuses_odd_spellings() -> None:
    # A program names the providers it registers itself (a plugin passed to Engine()).
    assert EngineConfig(isa_mask=("later", "-jit")).isa_mask == ("jit", "later")
    for bad in ("--jit", "+jit", "\u2212jit", "- jit", "", "-", "-\u212aey"):
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: isa_mask: "):
            EngineConfig(isa_mask=(bad,))


def test_the_lenient_parse_of_plugin_discovery_drops_odd_entries_without_raising() -> None:
    assert isa_mask.parse("jit \u2212jit --jit +jit -jti -jit", strict=False) == {"jit", "jti"}


def test_a_token_naming_nothing_known_is_kept_and_reported_once(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # A capsule's provider is a valid token before it is loaded; a typo is said, not silent.
    monkeypatch.setenv(isa_mask.MASK_ENV, "-jti, -jit, -" + "y" * 40)
    monkeypatch.setattr(isa_mask, "_REPORTED", set())
    with caplog.at_level("WARNING", logger="xpscerpto"):
        eng = xps.Engine(EngineConfig(autotune=False))
        xps.Engine(EngineConfig(autotune=False))
    said = [r.getMessage() for r in caplog.records if "incident mask" in r.getMessage()]
    assert len(said) == 1 and "-jti" in said[0] and "a 40-character token" in said[0], said
    assert "-jit," not in said[0] and "y" * 30 not in said[0]
    assert "jit" not in (eng.table.provider_for("aead.xchacha20poly1305") or "")  # the known token still masks
    assert isa_mask.unmatched({"jti", "jit", "avx512", "mycapsule"}, [("mycapsule", ())]) == {"jti"}
    # A truncated name removes nothing (names match exactly), so it is said too; a feature
    # family prefix does remove (features match by prefix).
    assert isa_mask.unmatched({"sodiu", "sod", "openss", "avx5", "mycaps"}, [("mycapsule", ())]) == {
        "sodiu", "sod", "openss", "mycaps"}


def test_a_misspelled_entry_in_the_environment_stops_a_real_process_with_the_typed_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPS_", "NUMBA_"))}
    env[isa_mask.MASK_ENV] = "\u2212jit"
    code = ("import xpscerpto as xps\n"
            "try:\n    xps.Engine(xps.EngineConfig(autotune=False)).start()\n"
            "except xps.PolicyError as e:\n    print(e.code, str(e).split(':')[1].strip())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.stdout.strip() == f"XPS_ERR_POLICY {isa_mask.MASK_ENV}", out.stderr[-2000:]
