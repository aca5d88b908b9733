"""The specification's Appendix C document is the configuration format, verbatim."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto import AEAD, PolicyError
from xpscerpto.config import XpsConfig

SEED = """\
crypto:
  aead:
    default: AES_GCM
    nonce: auto         # auto | app
  keyring:
    rotation_days: 365
    dual_window_days: 30
    destroy_after_days: 180
  policy:
    forbid: [sha1, des]
  hotpatch:
    require_signature: true
    run_selftests: true
    rollback_on_error: true
  tls:
    rekey_messages: 2_000_000
    rekey_minutes: 60
"""


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "xps.yaml"
    path.write_text(SEED)
    return path


def test_the_seed_file_loads_unchanged_and_every_key_takes_effect(seed_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation: this is the documented format
        cfg = XpsConfig.load(seed_file)
    assert cfg.aead.default_algorithm is AEAD.AES_256_GCM  # AES_GCM means AES-256-GCM
    assert cfg.keyring.default_algorithm is AEAD.AES_256_GCM  # keys created without one use it
    assert cfg.engine.nonce == "auto"
    assert cfg.keyring.default_policy == "rotate=365d"
    assert cfg.keyring.dual_window_seconds == 30 * 86400
    assert cfg.keyring.destroy_after_seconds == 180 * 86400
    assert cfg.engine.policy.forbid == ("sha1", "des")
    assert (cfg.hotpatch.require_signature, cfg.hotpatch.run_selftests, cfg.hotpatch.rollback_on_error) == (
        True, True, True)
    assert cfg.channel.rekey_after_messages == 2_000_000 and cfg.channel.rekey_after_seconds == 3600


def test_every_seed_value_is_read_not_defaulted(tmp_path: Path) -> None:
    text = (SEED.replace("AES_GCM", "XCHACHA20_POLY1305").replace("nonce: auto", "nonce: app")
            .replace("365", "90").replace("dual_window_days: 30", "dual_window_days: 7")
            .replace("180", "45").replace("[sha1, des]", "[aes128]")
            .replace("rollback_on_error: true", "rollback_on_error: false")
            .replace("2_000_000", "1_000").replace("rekey_minutes: 60", "rekey_minutes: 5"))
    cfg = XpsConfig.load(_write(tmp_path, text))
    assert cfg.aead.default_algorithm is AEAD.XCHACHA20_POLY1305 and cfg.engine.nonce == "app"
    assert cfg.keyring.default_policy == "rotate=90d" and cfg.keyring.dual_window_seconds == 7 * 86400
    assert cfg.keyring.destroy_after_seconds == 45 * 86400 and cfg.engine.policy.forbid == ("aes128",)
    assert cfg.hotpatch.rollback_on_error is False
    assert cfg.channel.rekey_after_messages == 1000 and cfg.channel.rekey_after_seconds == 300


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_config_show_prints_the_seed_shape_and_it_loads_back(seed_file: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path / "h"), "--config",
                          str(seed_file), "config", "show"], capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    assert list(shown) == ["crypto"]
    crypto = shown["crypto"]
    assert crypto["aead"] == {"default": "AES-256-GCM", "nonce": "auto"}
    assert crypto["keyring"]["rotation_days"] == 365 and crypto["keyring"]["destroy_after_days"] == 180
    assert crypto["tls"]["rekey_messages"] == 2_000_000 and crypto["tls"]["rekey_minutes"] == 60
    back = tmp_path / "shown.json"
    back.write_text(out.stdout)
    assert XpsConfig.load(back) == XpsConfig.load(seed_file)


def test_document_round_trips_for_every_section() -> None:
    cfg = XpsConfig.from_mapping({"crypto": {
        "aead": {"default": "AEGIS-256", "nonce": "app"}, "policy": {"allow": ["aead.*"], "forbid": ["des"]},
        "engine": {"prefer": {"aead.chacha20poly1305": "sodium"}, "providers": ["sodium"],
                   "autoload_plugins": False},
        "keyring": {"rotation_days": "never", "dual_window_days": 1.5, "destroy_after_days": 0,
                    "database": "k.db", "usage_block": 3, "max_encryptions": {"AES-256-GCM": 10},
                    "kek": {"provider": "pkcs11", "module": "/lib/p11.so"}},
        "approvals": {"revoke": 2, "destroy": 1, "emergency_revoke": 1, "request_ttl": "2h"},
        "hotpatch": {"require_signature": False, "development": True, "canary_seconds": 5},
        "tls": {"rekey_messages": 7, "rekey_minutes": 0.5, "rekey_bytes": "1MiB"},
        "audit": {"checkpoint_every": 3, "auth_fail_per_minute": 2}}})
    assert cfg.keyring.default_policy == "rotate=never" and cfg.keyring.dual_window_seconds == 1.5 * 86400
    assert cfg.channel.rekey_after_seconds == 30.0
    assert XpsConfig.from_mapping(cfg.to_document()) == cfg
    assert XpsConfig.from_mapping(XpsConfig.defaults().to_document()) == XpsConfig.defaults()


@pytest.mark.parametrize(("doc", "names"), [
    ({"crypto": {"aead": {"default": "AES_GCX"}}}, "'crypto.aead.default': expected an AEAD"),
    ({"crypto": {"aead": {"nonce": "random"}}}, "'crypto.aead.nonce': expected 'auto' or 'app'"),
    ({"crypto": {"aead": {"default_algorithm": "AES_GCM"}}}, "unknown key 'default_algorithm' at 'crypto.aead."),
    ({"crypto": {"keyring": {"rotation_days": 0}}}, "'crypto.keyring.rotation_days': must be > 0"),
    ({"crypto": {"keyring": {"rotation_days": "365d"}}}, "'crypto.keyring.rotation_days': expected a number of days"),
    ({"crypto": {"keyring": {"dual_window_days": -1}}}, "'crypto.keyring.dual_window_days'"),
    ({"crypto": {"keyring": {"destroy_after_days": True}}}, "'crypto.keyring.destroy_after_days'"),
    ({"crypto": {"keyring": {"dual_window": "7d"}}}, "unknown key 'dual_window' at 'crypto.keyring.dual_window'"),
    ({"crypto": {"policy": {"forbid": "sha1"}}}, "'crypto.policy.forbid': expected a list of strings"),
    ({"crypto": {"hotpatch": {"require_signature": "yes"}}}, "'crypto.hotpatch.require_signature': expected true"),
    ({"crypto": {"hotpatch": {"require_signature": False}}}, "needs 'crypto.hotpatch.development: true'"),
    ({"crypto": {"hotpatch": {"run_selftests": False}}}, "'crypto.hotpatch.run_selftests': false removes a gate"),
    ({"crypto": {"tls": {"rekey_messages": 0}}}, "'crypto.tls.rekey_messages': must be >= 1"),
    ({"crypto": {"tls": {"rekey_minutes": 0}}}, "'crypto.tls.rekey_minutes': a number of minutes must be"),
    ({"crypto": {"tls": {"rekey_after": "1h"}}}, "unknown key 'rekey_after' at 'crypto.tls.rekey_after'"),
    ({"crypto": {"engine": {"nonce": "app"}}}, "unknown key 'nonce' at 'crypto.engine.nonce'"),
    ({"crypto": {"channel": {}}}, "unknown key 'channel' at 'crypto.channel'"),
    ({"crypto": None}, "'crypto': expected Mapping, got null"),
    ({"crypto": {}, "engine": {}}, "unknown key 'engine'"),
    ({"crypto": {"keyring": {"kek": {"provider": "hsm"}}}}, "'crypto.keyring.kek.provider': expected 'file'"),
], ids=lambda v: "" if isinstance(v, dict) else v[:40])
def test_document_errors_name_the_dotted_key(doc: dict, names: str) -> None:
    with pytest.raises(PolicyError) as info:
        XpsConfig.from_mapping(doc)
    assert names in str(info.value)


def test_default_policy_is_checked_when_the_file_loads_not_at_key_create() -> None:
    with pytest.raises(PolicyError, match=r"'keyring\.default_policy': policy\.rotate: expected a positive duration"):
        XpsConfig._from_sections({"keyring": {"default_policy": "rotate=soon"}})


def test_the_earlier_layout_still_loads_with_a_deprecation_warning(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("engine:\n  policy:\n    forbid: [aes128]\nkeyring:\n  dual_window: 7d\n")
    with pytest.warns(DeprecationWarning, match="pre-Appendix C layout; put them under 'crypto:'"):
        cfg = XpsConfig.load(old)
    assert cfg.engine.policy.forbid == ("aes128",) and cfg.keyring.dual_window_seconds == 7 * 86400
    assert cfg == XpsConfig.from_mapping({"crypto": {"policy": {"forbid": ["aes128"]},
                                                     "keyring": {"dual_window_days": 7}}})


@pytest.mark.parametrize("name", ["AES_GCM", "AES_256_GCM", "AES-256-GCM"])
def test_the_seed_algorithm_names_work_in_the_api(name: str) -> None:
    key = bytes(32)
    sealed = xps.aead.encrypt(name, key, b"m")
    assert xps.aead.open("AES-256-GCM", key, sealed) == b"m"
    assert xps.aead.info(name)["operation"] == "aead.aes256gcm"


def test_emergency_change_accepts_the_document_spelling() -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict]] = []

        def record(self, event: str, **fields: object) -> None:
            self.events.append((event, fields))

    sink = Sink()
    new = XpsConfig.defaults().emergency_change("crypto.policy.forbid", ["aes128"], operator="op", reason="CVE",
                                                audit=sink)
    assert new.engine.policy.forbid == ("aes128",) and new.get("crypto.policy.forbid") == ["aes128"]
    assert sink.events[0][1]["key"] == "engine.policy.forbid"
