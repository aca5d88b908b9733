"""Review findings on the configuration: what a forbid entry, a prefer key or a number of days
means must be what the operator wrote, and every bad value is a PolicyError naming the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.config import XpsConfig, policy_changes
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError
from xpscerpto.interfaces import OPERATIONS
from xpscerpto.settings import EngineConfig, Policy


def _routes(cfg: XpsConfig | EngineConfig) -> set[str]:
    engine_cfg = cfg.engine if isinstance(cfg, XpsConfig) else cfg
    from dataclasses import replace

    return set(Engine(replace(engine_cfg, autotune=False)).table.routes)


def _forbid(*entries: str) -> XpsConfig:
    return XpsConfig.from_mapping({"crypto": {"policy": {"forbid": list(entries)}}})


# -- H3: every documented algorithm name forbids its algorithm --------------------------------


@pytest.mark.parametrize("op", [op for op, spec in OPERATIONS.items() if spec.aliases])
def test_every_documented_name_of_an_algorithm_forbids_it(op: str) -> None:
    for name in (op, *OPERATIONS[op].aliases):
        assert op not in _routes(_forbid(name)), name


def test_spellings_of_aes128_forbid_it() -> None:
    for entry in ("AES-128-GCM", "AES_128_GCM", "aes-128-gcm", "aes128gcm", "aes128", "aes-128", "AES128",
                  "aead.aes128*", "AEAD.AES128GCM"):
        routes = _routes(_forbid(entry))
        assert "aead.aes128gcm" not in routes and "aead.aes256gcm" in routes, entry


def test_the_seeds_aes_gcm_forbids_aes256_gcm_only() -> None:
    routes = _routes(_forbid("AES_GCM"))
    assert "aead.aes256gcm" not in routes and "aead.aes128gcm" in routes


@pytest.mark.parametrize("entry", ["AES-129-GCM", "aes128gmc", "tok5", "aead.aes512*", "", "x" * 3000])
def test_an_entry_that_forbids_nothing_is_refused_naming_the_key(entry: str) -> None:
    with pytest.raises(PolicyError, match=re.escape("config key 'crypto.policy.forbid':")) as exc:
        _forbid(entry)
    assert "x" * 100 not in str(exc.value)
    # Algorithms xpscerpto does not offer stay valid entries: the Appendix C example keeps loading.
    for foreign in ("sha1", "SHA-1", "des", "md5"):
        assert _routes(_forbid(foreign)) == _routes(XpsConfig.defaults())
    cfg = _forbid("sha1", "des")
    assert cfg.engine.policy.forbid == ("sha1", "des")
    assert XpsConfig.from_mapping(cfg.to_document()) == cfg


def test_an_emergency_forbid_with_the_documented_name_forbids_it() -> None:
    class Journal:
        def record(self, event: str, **fields: Any) -> None:
            pass

    new = XpsConfig.defaults().emergency_change("crypto.policy.forbid", ["AES-128-GCM"], operator="o", reason="r",
                                                audit=Journal())
    assert "aead.aes128gcm" not in _routes(new)
    with pytest.raises(PolicyError, match=re.escape("'engine.policy.forbid'")):
        XpsConfig.defaults().emergency_change("crypto.policy.forbid", ["AES-129-GCM"], operator="o", reason="r",
                                              audit=Journal())


# -- L2: a Policy / EngineConfig built in code -------------------------------------------------


def test_a_bare_string_forbid_is_refused_not_ignored() -> None:
    with pytest.raises(PolicyError, match=re.escape("'policy.forbid': expected a list of strings")):
        Policy(forbid="aes128")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [42, None, [1], {"aes128": 1}])
def test_a_forbid_of_another_type_is_a_policy_error(value: object) -> None:
    with pytest.raises(PolicyError, match=re.escape("'policy.forbid'")):
        Engine(EngineConfig(policy=Policy(forbid=value), autotune=False))  # type: ignore[arg-type]


def test_a_list_given_in_code_is_copied_and_resolved() -> None:
    forbid = ["AES-128-GCM"]
    cfg = EngineConfig(policy=Policy(forbid=forbid), autotune=False)  # type: ignore[arg-type]
    forbid.clear()
    eng = Engine(cfg)
    eng.rebuild()
    assert cfg.policy.forbid == ("aead.aes128gcm",) and "aead.aes128gcm" not in eng.table.routes


def test_allow_providers_and_nonce_are_checked_in_code() -> None:
    allow = ["aead.*"]
    policy = Policy(allow=allow)  # type: ignore[arg-type]
    allow.append("sig.*")
    assert policy.allow == ("aead.*",)
    with pytest.raises(PolicyError, match=re.escape("'policy.allow'")):
        Policy(allow="aead.*")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="'providers'"):
        EngineConfig(providers="sodium")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="'nonce'"):
        EngineConfig(nonce="APP")  # type: ignore[arg-type]


# -- L3: prefer keys ---------------------------------------------------------------------------


def test_a_prefer_key_in_a_documented_spelling_is_the_operation() -> None:
    cfg = XpsConfig.from_mapping({"crypto": {"engine": {"prefer": {"CHACHA20-POLY1305": "sodium"}, "autotune": False}}})
    assert dict(cfg.engine.prefer) == {"aead.chacha20poly1305": "sodium"}
    route = Engine(cfg.engine).table.routes["aead.chacha20poly1305"]
    assert (route.provider, route.chosen_by) == ("sodium", "preference")
    # An unknown provider name is kept: a capsule may install it later.
    later = XpsConfig.from_mapping({"crypto": {"engine": {"prefer": {"AES-256-GCM": "from-a-capsule"}}}})
    assert dict(later.engine.prefer) == {"aead.aes256gcm": "from-a-capsule"}


@pytest.mark.parametrize("key", ["aead.chacha20poly1350", "chacha", "x" * 500])
def test_a_prefer_key_that_is_no_operation_is_refused(key: str) -> None:
    with pytest.raises(PolicyError, match=re.escape("config key 'crypto.engine.prefer':")) as exc:
        XpsConfig.from_mapping({"crypto": {"engine": {"prefer": {key: "sodium"}}}})
    assert "x" * 100 not in str(exc.value)


def test_two_spellings_of_one_prefer_key_are_refused() -> None:
    with pytest.raises(PolicyError, match="given twice"):
        XpsConfig.from_mapping({"crypto": {"engine": {"prefer": {"AES-256-GCM": "sodium", "AES_GCM": "openssl"}}}})


# -- L1: two spellings of one AEAD under max_encryptions --------------------------------------


def test_two_spellings_of_one_aead_under_max_encryptions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("crypto:\n  keyring:\n    max_encryptions:\n      AES-256-GCM: 1000\n      AES_GCM: 4294967296\n")
    with pytest.raises(PolicyError, match=re.escape("'crypto.keyring.max_encryptions.AES_GCM': AES-256-GCM is "
                                                    "already limited")):
        XpsConfig.load(path)


# -- M3: days and request lifetimes are bounded ------------------------------------------------


@pytest.mark.parametrize(("section", "key", "value"), [
    ("keyring", "dual_window_days", 1.0e300), ("keyring", "destroy_after_days", 1.0e300),
    ("keyring", "dual_window_days", 1e13), ("keyring", "destroy_after_days", 36501),
    ("approvals", "request_ttl", 1.0e300), ("approvals", "request_ttl", "36501d"),
])
def test_durations_past_100_years_are_refused_naming_the_key(section: str, key: str, value: object) -> None:
    with pytest.raises(PolicyError, match=re.escape(f"config key 'crypto.{section}.{key}':")):
        XpsConfig.from_mapping({"crypto": {section: {key: value}}})


def test_the_legacy_windows_are_bounded_too_and_100_years_is_accepted() -> None:
    for key in ("dual_window", "destroy_after"):
        with pytest.raises(PolicyError, match=re.escape(f"config key 'keyring.{key}':")):
            XpsConfig.from_mapping({"keyring": {key: 1e300}})
    cfg = XpsConfig.from_mapping({"crypto": {"keyring": {"dual_window_days": 36500, "destroy_after_days": 36500}}})
    assert cfg.keyring.destroy_after_seconds == 36500 * 86400.0


# -- H1 (the judgement; the CLI shape is in tests/keyring/test_retention_policy.py) -------------


@pytest.mark.parametrize("key", ["keyring.dual_window", "keyring.destroy_after"])
def test_a_shorter_window_or_retention_is_not_a_tightening(key: str) -> None:
    old = XpsConfig.defaults().security_policy()
    (change,) = policy_changes(old, {**old, key: 0})
    assert change.loosens


# -- L4: caller input is described, never repeated in full -------------------------------------


@pytest.mark.parametrize("key", ["x" * 5000, "sk_live_" + "0123456789abcdef" * 5])
def test_emergency_and_get_do_not_echo_a_long_key(key: str) -> None:
    cfg = XpsConfig.defaults()
    for call in (lambda: cfg.emergency_change(key, [], operator="a", reason="r", audit=None),  # type: ignore[arg-type]
                 lambda: cfg.get(key)):
        with pytest.raises(PolicyError) as exc:
            call()
        assert key not in str(exc.value) and "a string of" in str(exc.value)


@pytest.mark.parametrize("doc", [
    {"crypto": {"approvals": {"revoke": 1, "emergency_revoke": 10**5000}}},
    {"crypto": {"approvals": {"revoke": -10**5000}}},
    {"crypto": {"keyring": {"usage_block": -10**5000}}},
    {"crypto": {"keyring": {"max_encryptions": {"AES-256-GCM": 10**5000}}}},
])
def test_huge_ints_are_described_in_a_policy_error(doc: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match="an int of about 5000 digits"):
        XpsConfig.from_mapping(doc)


# -- L6: `xps tune --cached` shows only what routing may pick, escaped ---------------------------
# (here rather than under tests/cli: this change set may add tests only to these files)


def test_tune_cached_lists_no_ineligible_winner_and_no_terminal_escape(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path),
               XPS_SIMD_ISA_MASK="-jit,-openssl", XPS_AUTOTUNE="0")
    env.pop("XPS_AUTOTUNE_CACHE", None)
    code = ("from dataclasses import replace\nfrom xpscerpto.engine import Engine\n"
            "from xpscerpto.config import XpsConfig\n"
            "print(Engine(replace(XpsConfig.defaults().engine, autotune=False)).tuning_fingerprint())")
    fp = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                        timeout=120).stdout.strip()
    ops = ["aead.chacha20poly1305", "aead.xchacha20poly1305", "aead.aes256gcm"]
    for name in ("openssl", "evil\x1b[31m"):  # masked here; no such provider
        doc = {"format": 1, "fingerprint": fp, "created": "2030-01-01T00:00:00Z",
               "winners": {op: {"stateless": [name] * 4, "keyed": [name] * 4} for op in ops},
               "measurements": [{"operation": op, "provider": name, "shape": s, "bucket": b, "seconds": 1e-9}
                                for op in ops for s in ("stateless", "keyed") for b in range(4)]}
        cache = tmp_path / "cache" / "xpscerpto"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "autotune.json").write_text(json.dumps(doc))
        out = subprocess.run([sys.executable, "-m", "xpscerpto", "tune", "--cached"], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and f"{name[:4]} " not in out.stdout, out.stdout
        assert "cached winners not eligible here (routing ignores them): " + ", ".join(sorted(ops)) in out.stdout
