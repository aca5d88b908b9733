"""Configuration: validation names the bad key; files load; policy semantics; Appendix C (XpsConfig)."""

from __future__ import annotations

import dataclasses
import doctest
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import xpscerpto.config as config_module
import yaml
from xpscerpto import AEAD, EngineConfig, Policy, PolicyError
from xpscerpto.audit import AuditLog
from xpscerpto.config import (
    EMERGENCY_KEYS,
    AeadDefaults,
    ApprovalsConfig,
    AuditConfig,
    ChannelConfig,
    HotpatchConfig,
    KekConfig,
    KeyringConfig,
    XpsConfig,
    parse_duration,
    parse_size,
)


def test_defaults() -> None:
    cfg = EngineConfig.from_mapping({})
    assert cfg == EngineConfig()
    assert cfg.nonce == "auto" and cfg.policy == Policy()


def test_full_mapping() -> None:
    cfg = EngineConfig.from_mapping({
        "policy": {"allow": ["aead.*"], "forbid": ["aes128"]}, "nonce": "app",
        "prefer": {"aead.chacha20poly1305": "sodium"}, "providers": ["openssl", "sodium"],
        "autoload_plugins": False})
    assert cfg.policy == Policy(allow=("aead.*",), forbid=("aes128",))
    assert cfg.nonce == "app" and cfg.prefer == {"aead.chacha20poly1305": "sodium"}
    assert cfg.providers == ("openssl", "sodium") and cfg.autoload_plugins is False


@pytest.mark.parametrize(("data", "names"), [
    ({"polcy": {}}, "unknown key 'polcy'"),
    ({"policy": {"forbidden": []}}, "unknown key 'forbidden'"),
    ({"policy": []}, "'policy': expected Mapping"),
    ({"policy": {"forbid": "sha1"}}, "'policy.forbid': expected a list of strings"),
    ({"policy": {"allow": [1]}}, "'policy.allow': expected a list of strings"),
    ({"nonce": "random"}, "'nonce': expected 'auto' or 'app'"),
    ({"prefer": {"aead.aes256gcm": 3}}, "'prefer.aead.aes256gcm': expected str"),
    ({"providers": "openssl"}, "'providers': expected a list of strings"),
    ({"autoload_plugins": "yes"}, "'autoload_plugins': expected bool"),
], ids=["unknown-top", "unknown-policy", "policy-type", "forbid-type", "allow-type", "nonce-value",
        "prefer-type", "providers-type", "autoload-type"])
def test_bad_config_raises_policy_error_naming_the_key(data: dict, names: str) -> None:
    with pytest.raises(PolicyError) as ei:
        EngineConfig.from_mapping(data)
    assert ei.value.code == "XPS_ERR_POLICY"
    assert names in str(ei.value)


def test_toml_and_json_files(tmp_path: Path) -> None:
    toml = tmp_path / "xps.toml"
    toml.write_text('nonce = "app"\n[policy]\nforbid = ["sha1", "des"]\n')
    assert EngineConfig.from_file(toml).policy.forbid == ("sha1", "des")
    js = tmp_path / "xps.json"
    js.write_text('{"policy": {"forbid": ["aes128"]}}')
    assert EngineConfig.from_file(js).policy.forbid == ("aes128",)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.toml", None, "No such file"),
    ("bad.toml", "nonce = ", "not valid toml"),
    ("bad.json", "{", "not valid json"),
    ("list.json", "[1]", "'config': expected Mapping"),
], ids=["missing", "bad-toml", "bad-json", "not-a-mapping"])
def test_bad_config_file_is_a_typed_error(
        tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolicyError, match=message):
        EngineConfig.from_file(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "too-large", "nested-json", "nested-yaml"])
def test_a_config_path_that_is_not_a_small_regular_file_is_refused_without_blocking(
        tmp_path: Path, kind: str) -> None:
    # A FIFO would block the reader for ever and /dev/zero never end: neither may be read.
    path = tmp_path / ("config.json" if kind == "nested-json" else "config.yaml")
    message = "not a regular file"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "too-large":
        path.write_text("# padding\n" * 200_000)
        message = "larger than 1048576 bytes"
    elif kind == "nested-json":
        path.write_text("[" * 100_000 + "]" * 100_000)
        message = "not valid json"
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
        message = "not valid yaml"
    with pytest.raises(PolicyError, match=message):
        XpsConfig.load(path)


# --------------------------------------------------------------------------- Appendix C: XpsConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.+?)```", DOCS.read_text(), re.S)


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and key != "prefer":
            out += _dotted_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


ALL_KEYS = _dotted_keys(XpsConfig.defaults().to_mapping())  # the per-section (earlier file) layout
DOC_KEYS = _dotted_keys(XpsConfig.defaults().to_document())  # the Appendix C document


class Recorder:
    """A real, minimal audit sink: keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        self.events.append((event, fields))
        return {"event": event, **fields}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_documented_ones() -> None:
    cfg = XpsConfig.defaults()
    assert cfg == XpsConfig() == XpsConfig.from_mapping({})
    assert cfg.engine == EngineConfig() and cfg.keyring == KeyringConfig()
    assert cfg.aead == AeadDefaults(default_algorithm=AEAD.AES_256_GCM)
    assert cfg.keyring.database == "keyring.db" and cfg.keyring.default_algorithm == "AES-256-GCM"
    assert cfg.keyring.default_policy == "rotate=365d"
    assert cfg.keyring.dual_window_seconds == 30 * 86400 and cfg.keyring.usage_block == 16384
    assert dict(cfg.keyring.max_encryptions) == {
        "AES-128-GCM": 2**32, "AES-256-GCM": 2**32, "CHACHA20-POLY1305": 2**32,
        "AES-256-GCM-SIV": 2**48, "XCHACHA20-POLY1305": 2**64 - 1, "AEGIS-256": 2**64 - 1}
    assert set(cfg.keyring.max_encryptions) == {a.value for a in AEAD}
    assert cfg.keyring.kek == KekConfig("file", "kek.key", None, "xps", "XPS_PKCS11_PIN", "xps-kek")
    assert cfg.approvals == ApprovalsConfig(0, 0, 0, 86400.0)
    assert cfg.hotpatch == HotpatchConfig(0.1, 0.0, 0.0, 60.0, 2 * 1024**3, 2.0, 65536, 0.5, 30.0)
    assert cfg.channel == ChannelConfig(1048576, 1024**3, 3600.0)
    assert cfg.audit == AuditConfig(100, 10)


def test_docs_example_is_exactly_the_defaults(tmp_path: Path) -> None:
    full = _yaml_blocks()[1]
    raw = yaml.safe_load(full)
    assert _dotted_keys(raw) == DOC_KEYS  # every key, in the documented order
    assert XpsConfig.load(_write(tmp_path, "xps.yaml", full)) == XpsConfig.defaults()


def test_docs_production_example_loads(tmp_path: Path) -> None:
    cfg = XpsConfig.load(_write(tmp_path, "prod.yml", _yaml_blocks()[2]))
    assert cfg.engine.nonce == "app" and cfg.engine.policy.forbid == ("sha1", "aes128")
    assert cfg.keyring.kek.provider == "pkcs11" and cfg.approvals.emergency_revoke == 1


def test_every_key_is_documented_in_the_docs_table_and_the_module_docstring() -> None:
    docs = DOCS.read_text()
    module_doc = config_module.__doc__ or ""
    for key in DOC_KEYS:
        assert f"| `{key}` |" in docs, key
        generic = re.sub(r"^crypto\.keyring\.max_encryptions\..*", "crypto.keyring.max_encryptions.<AEAD>", key)
        assert f"``{generic}``" in module_doc, key
    for key in ALL_KEYS:  # the earlier layout's names are in its mapping table
        generic = re.sub(r"^keyring\.max_encryptions\..*", "keyring.max_encryptions.<AEAD>", key)
        assert f"| `{generic}` |" in docs, key
    for key in EMERGENCY_KEYS:
        assert f"`{key}`" in docs


def test_module_docstring_examples_run() -> None:
    assert doctest.testmod(config_module).failed == 0


def test_sections_are_frozen() -> None:
    cfg = XpsConfig.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.approvals.revoke = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.keyring.max_encryptions["AES-256-GCM"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        XpsConfig.from_mapping({"engine": {"prefer": {"aead.aes256gcm": "b"}}}).engine.prefer[  # type: ignore[index]
            "aead.aes256gcm"] = "c"


OVERRIDES: list[tuple[str, Any, Any]] = [
    # (dotted key, value in the file, resulting attribute value)
    ("engine.nonce", "app", "app"),
    ("engine.autoload_plugins", False, False),
    ("engine.providers", ["sodium"], ("sodium",)),
    ("engine.prefer", {"aead.aes256gcm": "sodium"}, {"aead.aes256gcm": "sodium"}),
    ("engine.policy.allow", ["aead.*"], ("aead.*",)),
    ("engine.policy.forbid", ["sha1", "aead.aes128*"], ("sha1", "aead.aes128*")),
    ("engine.policy.require_constant_time", False, False),
    ("engine.isa_mask", ["-jit", "-AVX512"], ("avx512", "jit")),
    ("engine.autotune", False, False),
    ("aead.default_algorithm", "CHACHA20-POLY1305", AEAD.CHACHA20_POLY1305),
    ("keyring.database", "keys/main.db", "keys/main.db"),
    ("keyring.default_algorithm", "AEGIS-256", AEAD.AEGIS_256),
    ("keyring.default_policy", "rotate=90d", "rotate=90d"),
    ("keyring.dual_window", "7d", 604800.0),
    ("keyring.usage_block", 1, 1),
    ("keyring.max_encryptions.AES-256-GCM", 1000, 1000),
    ("keyring.kek.provider", "file", "file"),
    ("keyring.kek.path", "/etc/xps/kek", "/etc/xps/kek"),
    ("keyring.kek.module", "/usr/lib/libsofthsm2.so", "/usr/lib/libsofthsm2.so"),
    ("keyring.kek.token_label", "prod", "prod"),
    ("keyring.kek.pin_env", "MY_PIN", "MY_PIN"),
    ("keyring.kek.key_label", "kek-2", "kek-2"),
    ("approvals.revoke", 3, 3),
    ("approvals.destroy", 2, 2),
    ("approvals.emergency_revoke", 0, 0),
    ("approvals.request_ttl", "12h", 43200.0),
    ("keyring.destroy_after", "90d", 90 * 86400.0),
    ("hotpatch.require_signature", True, True),
    ("hotpatch.run_selftests", True, True),
    ("hotpatch.rollback_on_error", False, False),
    ("hotpatch.development", True, True),
    ("hotpatch.canary_share", 0.5, 0.5),
    ("hotpatch.canary_seconds", "90m", 5400.0),
    ("hotpatch.dual_run_seconds", 30, 30.0),
    ("hotpatch.timeout", "45s", 45.0),
    ("hotpatch.memory", "512MiB", 512 * 1024**2),
    ("hotpatch.max_slowdown", 3, 3.0),
    ("hotpatch.bench_bytes", 0, 0),
    ("hotpatch.settle", 2.5, 2.5),
    ("hotpatch.drain_timeout", "2m", 120.0),
    ("hotpatch.sample_every", 16, 16),
    ("hotpatch.sample", "10s", 10.0),
    ("hotpatch.state_database", None, None),  # alone only null: a database needs hotpatch.node too
    ("hotpatch.node", "node-a", "node-a"),
    ("hotpatch.trust_store", "/etc/xps/trust.json", "/etc/xps/trust.json"),
    ("channel.rekey_after_messages", 1000, 1000),
    ("channel.rekey_after_bytes", "1MiB", 1024**2),
    ("channel.rekey_after", "30m", 1800.0),
    ("channel.protocol", "Noise_IK_25519_AESGCM_SHA256", "Noise_IK_25519_AESGCM_SHA256"),
    ("channel.accept", ["Noise_XX_*"], ("Noise_XX_*",)),
    ("channel.require_pq", True, True),
    ("channel.max_frame", 4096, 4096),
    ("channel.max_message", "1MiB", 1024**2),
    ("channel.handshake_timeout", "5s", 5.0),
    ("channel.idle_timeout", "5m", 300.0),
    ("channel.max_pending_handshakes", 8, 8),
    ("channel.max_pending_per_source", 4, 4),
    ("audit.checkpoint_every", 1, 1),
    ("audit.auth_fail_per_minute", 1, 1),
    ("audit.signing_key", "/etc/xps/audit.key", "/etc/xps/audit.key"),
    ("audit.database", "postgresql://xps@db/keys", "postgresql://xps@db/keys"),
]
_ATTRS = {"dual_window": "dual_window_seconds", "request_ttl": "request_ttl_seconds",
          "timeout": "timeout_seconds", "memory": "memory_bytes", "settle": "settle_seconds",
          "drain_timeout": "drain_timeout_seconds", "rekey_after": "rekey_after_seconds",
          "destroy_after": "destroy_after_seconds", "handshake_timeout": "handshake_timeout_seconds",
          "idle_timeout": "idle_timeout_seconds",
          "sample": "sample_seconds"}


def _nest(key: str, value: Any) -> dict[str, Any]:
    if key.startswith("keyring.max_encryptions."):
        return {"keyring": {"max_encryptions": {key.rsplit(".", 1)[1]: value}}}
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _attr(cfg: XpsConfig, key: str) -> Any:
    if key.startswith("keyring.max_encryptions."):
        return cfg.keyring.max_encryptions[key.rsplit(".", 1)[1]]
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, _ATTRS.get(part, part))
    return obj


def test_a_state_database_needs_a_node_and_no_password() -> None:
    cfg = XpsConfig.from_mapping({"hotpatch": {"state_database": "postgresql://db.internal/xps", "node": "a"}})
    assert (cfg.hotpatch.state_database, cfg.hotpatch.node) == ("postgresql://db.internal/xps", "a")
    with pytest.raises(PolicyError, match=r"'hotpatch\.node': required with"):
        XpsConfig.from_mapping({"hotpatch": {"state_database": "postgresql://db.internal/xps"}})
    with pytest.raises(PolicyError, match="password") as info:
        XpsConfig.from_mapping({"hotpatch": {"state_database": "postgresql://u:hunter2@db/xps", "node": "a"}})
    assert "hunter2" not in str(info.value)
    for node in ("", "a\nb", 5, "x" * 201):
        with pytest.raises(PolicyError, match=r"hotpatch\.node"):
            XpsConfig.from_mapping({"hotpatch": {"node": node}})


def test_override_table_covers_every_key() -> None:
    covered = {k for k, _, _ in OVERRIDES}
    expected = {k for k in ALL_KEYS if not k.startswith("keyring.max_encryptions.")}
    assert covered >= expected
    assert covered - expected == {"keyring.max_encryptions.AES-256-GCM"}


@pytest.mark.parametrize(("key", "value", "expected"), OVERRIDES, ids=[k for k, _, _ in OVERRIDES])
def test_every_key_is_overridable(key: str, value: Any, expected: Any) -> None:
    cfg = XpsConfig.from_mapping(_nest(key, value))
    assert _attr(cfg, key) == expected
    assert _attr(cfg, key) != _attr(XpsConfig.defaults(), key) or key in {
        "keyring.kek.provider", "approvals.emergency_revoke",  # default is the only legal lone value
        "hotpatch.require_signature", "hotpatch.run_selftests",  # false needs hotpatch.development too
        "hotpatch.state_database"}  # a database needs hotpatch.node too (test_a_state_database_needs_a_node)
    # nothing else moved
    assert {k: v for k, v in _flat(cfg).items() if k != key} == {
        k: v for k, v in _flat(XpsConfig.defaults()).items() if k != key}


def _flat(cfg: XpsConfig) -> dict[str, Any]:
    data = cfg.to_mapping()
    return {k: _get(data, k) for k in ALL_KEYS}


def _get(data: dict[str, Any], key: str) -> Any:
    if key.startswith("keyring.max_encryptions."):
        return data["keyring"]["max_encryptions"][key.rsplit(".", 1)[1]]
    for part in key.split("."):
        data = data[part]
    return data


def test_partial_max_encryptions_keeps_the_other_defaults() -> None:
    cfg = XpsConfig.from_mapping({"keyring": {"max_encryptions": {"AES-128-GCM": 5}}})
    assert cfg.keyring.max_encryptions["AES-128-GCM"] == 5
    assert cfg.keyring.max_encryptions[AEAD.AEGIS_256] == 2**64 - 1


def test_pkcs11_kek_with_module() -> None:
    cfg = XpsConfig.from_mapping({"keyring": {"kek": {"provider": "pkcs11", "module": "/lib/p11.so"}}})
    assert cfg.keyring.kek == KekConfig(provider="pkcs11", module="/lib/p11.so")


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-root", {"engin": {}}, "unknown key 'engin'"),
    ("unknown-engine", {"engine": {"noncee": "auto"}}, "'engine.noncee'"),
    ("unknown-policy", {"engine": {"policy": {"deny": []}}}, "'engine.policy.deny'"),
    ("unknown-keyring", {"keyring": {"db": "x"}}, "'keyring.db'"),
    ("unknown-kek", {"keyring": {"kek": {"providr": "file"}}}, "'keyring.kek.providr'"),
    ("unknown-hotpatch", {"hotpatch": {"timeout_s": 1}}, "'hotpatch.timeout_s'"),
    ("unknown-channel", {"channel": {"rekey": 1}}, "'channel.rekey'"),
    ("unknown-audit", {"audit": {"every": 1}}, "'audit.every'"),
    ("unknown-approvals", {"approvals": {"revok": 1}}, "'approvals.revok'"),
    ("unknown-aead", {"aead": {"algorithm": "AES-256-GCM"}}, "'aead.algorithm'"),
    ("section-not-mapping", {"hotpatch": [1]}, "'hotpatch': expected Mapping"),
    ("section-null", {"channel": None}, "'channel': expected Mapping, got null"),
    ("engine-not-mapping", {"engine": "auto"}, "'engine': expected Mapping"),
    ("kek-not-mapping", {"keyring": {"kek": "file"}}, "'keyring.kek': expected Mapping"),
    ("nonce", {"engine": {"nonce": "random"}}, "'engine.nonce': expected 'auto' or 'app'"),
    ("autoload", {"engine": {"autoload_plugins": "yes"}}, "'engine.autoload_plugins': expected bool"),
    ("constant-time", {"engine": {"policy": {"require_constant_time": 1}}},
     "'engine.policy.require_constant_time': expected bool"),
    ("autotune", {"engine": {"autotune": "on"}}, "'engine.autotune': expected bool"),
    ("mask-not-list", {"engine": {"isa_mask": 5}}, "'engine.isa_mask': expected a list of strings"),
    ("mask-plus", {"engine": {"isa_mask": ["+sse2"]}}, "'engine.isa_mask': each entry is '-token'"),
    ("mask-chars", {"engine": {"isa_mask": "-jit;rm"}}, "'engine.isa_mask': a token may hold only"),
    ("providers", {"engine": {"providers": "openssl"}}, "'engine.providers': expected a list of strings"),
    ("prefer", {"engine": {"prefer": {"aead.x": 1}}}, "'engine.prefer.aead.x': expected str"),
    ("forbid", {"engine": {"policy": {"forbid": "sha1"}}}, "'engine.policy.forbid': expected a list"),
    ("allow", {"engine": {"policy": {"allow": [1]}}}, "'engine.policy.allow': expected a list"),
    ("aead-algo", {"aead": {"default_algorithm": "DES"}}, "'aead.default_algorithm': expected an AEAD"),
    ("aead-algo-case", {"aead": {"default_algorithm": "aes-256-gcm"}}, "'aead.default_algorithm'"),
    ("keyring-algo", {"keyring": {"default_algorithm": 256}}, "'keyring.default_algorithm': expected an AEAD"),
    ("database-empty", {"keyring": {"database": ""}}, "'keyring.database': expected a non-empty string"),
    ("database-type", {"keyring": {"database": 3}}, "'keyring.database': expected a non-empty string"),
    ("policy-type", {"keyring": {"default_policy": None}}, "'keyring.default_policy'"),
    ("dual-window-neg", {"keyring": {"dual_window": -1}}, "'keyring.dual_window': a duration must be"),
    ("dual-window-unit", {"keyring": {"dual_window": "30 days"}}, "'keyring.dual_window': expected a duration"),
    ("dual-window-bool", {"keyring": {"dual_window": True}}, "'keyring.dual_window': expected a duration"),
    ("dual-window-inf", {"keyring": {"dual_window": float("inf")}}, "'keyring.dual_window'"),
    ("usage-block-0", {"keyring": {"usage_block": 0}}, "'keyring.usage_block': must be >= 1"),
    ("usage-block-bool", {"keyring": {"usage_block": True}}, "'keyring.usage_block': expected an integer"),
    ("usage-block-float", {"keyring": {"usage_block": 10.0}}, "'keyring.usage_block': expected an integer"),
    ("max-enc-name", {"keyring": {"max_encryptions": {"DES": 5}}}, "'keyring.max_encryptions.DES'"),
    ("max-enc-zero", {"keyring": {"max_encryptions": {"AES-256-GCM": 0}}},
     "'keyring.max_encryptions.AES-256-GCM': must be >= 1"),
    ("max-enc-str", {"keyring": {"max_encryptions": {"AES-256-GCM": "2^32"}}},
     "'keyring.max_encryptions.AES-256-GCM': expected an integer"),
    ("max-enc-type", {"keyring": {"max_encryptions": [1]}}, "'keyring.max_encryptions': expected Mapping"),
    ("kek-provider", {"keyring": {"kek": {"provider": "hsm"}}},
     "config key 'keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'"),
    ("kek-pkcs11-no-module", {"keyring": {"kek": {"provider": "pkcs11"}}}, "'keyring.kek.module': required"),
    ("kek-module-type", {"keyring": {"kek": {"module": 5}}}, "'keyring.kek.module'"),
    ("kek-pin-literal", {"keyring": {"kek": {"pin_env": "1234"}}}, "'keyring.kek.pin_env': expected the name"),
    ("kek-path-empty", {"keyring": {"kek": {"path": " "}}}, "'keyring.kek.path'"),
    ("approvals-neg", {"approvals": {"revoke": -1}}, "'approvals.revoke': must be >= 0"),
    ("approvals-bool", {"approvals": {"destroy": False}}, "'approvals.destroy': expected an integer"),
    ("emergency-more", {"approvals": {"revoke": 1, "emergency_revoke": 2}},
     "'approvals.emergency_revoke': must be <= approvals.revoke"),
    ("ttl-zero", {"approvals": {"request_ttl": 0}}, "'approvals.request_ttl': must be > 0"),
    ("canary-share-high", {"hotpatch": {"canary_share": 1.5}}, "'hotpatch.canary_share': must be in [0, 1]"),
    ("canary-share-neg", {"hotpatch": {"canary_share": -0.1}}, "'hotpatch.canary_share'"),
    ("canary-share-str", {"hotpatch": {"canary_share": "10%"}}, "'hotpatch.canary_share': expected a number"),
    ("canary-seconds-neg", {"hotpatch": {"canary_seconds": "-5s"}}, "'hotpatch.canary_seconds'"),
    ("timeout-zero", {"hotpatch": {"timeout": "0s"}}, "'hotpatch.timeout': must be > 0"),
    ("memory-decimal-unit", {"hotpatch": {"memory": "2GB"}}, "'hotpatch.memory': expected a size"),
    ("memory-float", {"hotpatch": {"memory": 1.5}}, "'hotpatch.memory': expected a size"),
    ("memory-neg", {"hotpatch": {"memory": -1}}, "'hotpatch.memory': a size must be >= 0"),
    ("slowdown-low", {"hotpatch": {"max_slowdown": 0.5}}, "'hotpatch.max_slowdown': must be >= 1"),
    ("slowdown-bool", {"hotpatch": {"max_slowdown": True}}, "'hotpatch.max_slowdown': expected a number"),
    ("slowdown-nan", {"hotpatch": {"max_slowdown": float("nan")}}, "'hotpatch.max_slowdown'"),
    ("bench-neg", {"hotpatch": {"bench_bytes": -1}}, "'hotpatch.bench_bytes'"),
    ("settle-type", {"hotpatch": {"settle": [1]}}, "'hotpatch.settle': expected a duration"),
    ("drain-neg", {"hotpatch": {"drain_timeout": -0.5}}, "'hotpatch.drain_timeout'"),
    ("rekey-msgs-0", {"channel": {"rekey_after_messages": 0}}, "'channel.rekey_after_messages': must be >= 1"),
    ("rekey-bytes-0", {"channel": {"rekey_after_bytes": "0KiB"}}, "'channel.rekey_after_bytes': must be > 0"),
    ("rekey-after-str", {"channel": {"rekey_after": "soon"}}, "'channel.rekey_after': expected a duration"),
    ("checkpoint-0", {"audit": {"checkpoint_every": 0}}, "'audit.checkpoint_every': must be >= 1"),
    ("auth-fail-neg", {"audit": {"auth_fail_per_minute": -3}}, "'audit.auth_fail_per_minute': must be >= 1"),
    ("auth-fail-zero", {"audit": {"auth_fail_per_minute": 0}}, "'audit.auth_fail_per_minute': must be >= 1"),
    ("audit-db-password", {"audit": {"database": "postgresql://xps:hunter2@db/keys"}},
     "'audit.database': a password in the URL is refused"),
    ("audit-db-scheme", {"audit": {"database": "mysql://db/keys"}}, "'audit.database': expected a postgresql:// URL"),
    ("max-enc-above-safe", {"keyring": {"max_encryptions": {"AES-256-GCM": 2**33}}},
     "exceeds the safe bound 4294967296 for random nonces"),
    ("root-not-mapping", [], "'config': expected Mapping"),  # type: ignore[list-item]
    # Too large for a float: a typed refusal, never OverflowError, and the number not repeated.
    ("huge-rekey-minutes", {"crypto": {"tls": {"rekey_minutes": 10**400}}},
     "'crypto.tls.rekey_minutes': a number of minutes out of range, got an int of about 400 digits"),
    ("huge-days", {"crypto": {"keyring": {"rotation_days": 10**5000}}},
     "'crypto.keyring.rotation_days': a number of days out of range, got an int of about 5000 digits"),
    ("huge-duration", {"hotpatch": {"timeout": 10**400}}, "'hotpatch.timeout': a duration out of range"),
    ("huge-number", {"hotpatch": {"max_slowdown": -(10**400)}}, "'hotpatch.max_slowdown': a number out of range"),
    ("long-string", {"hotpatch": {"timeout": "9" * 5000}}, "got a string of 5000 characters"),
    # Finite days or minutes whose seconds are not: 'config show' would print Infinity.
    ("days-to-inf", {"crypto": {"keyring": {"dual_window_days": 1e305}}},
     "'crypto.keyring.dual_window_days': a number of days out of range"),
    ("retention-to-inf", {"crypto": {"keyring": {"destroy_after_days": 1e305}}},
     "'crypto.keyring.destroy_after_days': a number of days out of range"),
    ("minutes-to-inf", {"crypto": {"tls": {"rekey_minutes": 1e307}}},
     "'crypto.tls.rekey_minutes': a number of minutes out of range"),
    ("rotation-too-short", {"crypto": {"keyring": {"rotation_days": 1e-15}}},
     "'crypto.keyring.rotation_days': a rotation period of 1e-15 days is out of range"),
    ("policy-superscript-digit", {"keyring": {"default_policy": "rotate=90d,max_encryptions=\u00b2"}},
     "policy.max_encryptions: expected a positive integer"),
    # NUL passed as text and failed later as a raw ValueError from the path or C library
    ("nul-trust-store", {"hotpatch": {"trust_store": "/etc/xps/tr\x00ust.json"}},
     "'hotpatch.trust_store': a NUL character is not allowed"),
    ("nul-audit-key", {"audit": {"signing_key": "/etc/a\x00.key"}}, "'audit.signing_key': a NUL character"),
    ("nul-kek-path", {"keyring": {"kek": {"path": "kek\x00"}}}, "'keyring.kek.path': a NUL character"),
    ("nul-kek-module", {"keyring": {"kek": {"module": "/usr/lib/x\x00.so"}}}, "'keyring.kek.module': a NUL"),
    ("nul-token-label", {"keyring": {"kek": {"token_label": "x\x00"}}}, "'keyring.kek.token_label': a NUL"),
]


@pytest.mark.parametrize(("data", "names"), [(d, n) for _, d, n in BAD], ids=[i for i, _, _ in BAD])
def test_bad_values_name_the_key(data: dict[str, Any], names: str) -> None:
    with pytest.raises(PolicyError) as ei:
        XpsConfig.from_mapping(data)
    assert ei.value.code == "XPS_ERR_POLICY"
    assert names in str(ei.value)


def test_unknown_key_message_lists_the_known_keys() -> None:
    with pytest.raises(PolicyError, match=r"unknown key 'providr' at 'keyring\.kek\.providr' \(known: key_label, "):
        XpsConfig.from_mapping({"keyring": {"kek": {"providr": "x"}}})


def test_pin_itself_never_appears_in_the_error() -> None:
    with pytest.raises(PolicyError) as ei:
        XpsConfig.from_mapping({"keyring": {"kek": {"pin_env": "s3cr3t-p1n!"}}})
    assert "s3cr3t" not in str(ei.value)


@pytest.mark.parametrize(("text", "seconds"), [
    (0, 0.0), (45, 45.0), (2.5, 2.5), ("45", 45.0), ("45s", 45.0), ("0.5s", 0.5), ("250ms", 0.25),
    ("90m", 5400.0), ("12h", 43200.0), ("30d", 2592000.0), ("2w", 1209600.0), (" 1h ", 3600.0),
    ("1.5h", 5400.0), ("10 s", 10.0),
])
def test_duration_parsing(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-5s", "5x", "5S", "5 minutes", "1h30m", True, None, [1], "inf",
                                  float("nan"), -1])
def test_bad_durations(text: object) -> None:
    with pytest.raises(PolicyError, match=r"'t\.key'"):
        parse_duration(text, "t.key")


@pytest.mark.parametrize(("text", "size"), [
    (0, 0), (512, 512), ("512", 512), ("512B", 512), ("64KiB", 65536), ("1MiB", 1048576),
    ("2GiB", 2147483648), ("1TiB", 1024**4), ("8 KiB", 8192), ("9" * 30, 10**30 - 1),
])
def test_size_parsing(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5GiB", "2GB", "1kib", "-1KiB", "KiB", True, 1.0, None, -1,
                                  "9" * 5000, "9" * 5000 + "KiB", "1" * 31 + "B"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(PolicyError, match=r"'t\.key'"):
        parse_size(text, "t.key")


def test_round_trip_through_plain_data_yaml_and_json(tmp_path: Path) -> None:
    cfg = XpsConfig.from_mapping({k.split(".")[0]: {} for k in ALL_KEYS})
    assert XpsConfig.from_mapping(cfg.to_mapping()) == cfg
    changed = XpsConfig.from_mapping({
        "engine": {"nonce": "app", "providers": ["sodium"], "prefer": {"aead.aes256gcm": "sodium"},
                   "policy": {"allow": ["aead.*"], "forbid": ["sha1"]}, "autoload_plugins": False},
        "aead": {"default_algorithm": "AEGIS-256"},
        "keyring": {"dual_window": "0.5s", "max_encryptions": {"AES-128-GCM": 7},
                    "kek": {"provider": "pkcs11", "module": "/p11.so"}},
        "approvals": {"revoke": 2, "emergency_revoke": 1, "request_ttl": "90m"},
        "hotpatch": {"canary_share": 0.25, "memory": "1MiB", "settle": 0.1},
        "channel": {"rekey_after": "250ms"},
        "audit": {"checkpoint_every": 7}})
    for cfg in (XpsConfig.defaults(), changed):
        data = cfg.to_mapping()
        assert XpsConfig.from_mapping(data) == cfg
        assert XpsConfig.load(_write(tmp_path, "c.yaml", yaml.safe_dump(data))) == cfg
        assert XpsConfig.load(_write(tmp_path, "c.json", json.dumps(data))) == cfg
    assert changed.to_mapping()["keyring"]["dual_window"] == 0.5
    assert changed.to_mapping()["hotpatch"]["memory"] == 1024**2
    assert changed.to_mapping()["aead"]["default_algorithm"] == "AEGIS-256"
    assert type(changed.to_mapping()["aead"]["default_algorithm"]) is str


def test_yaml_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "xps.yaml", "engine:\n  policy:\n    forbid: [aes128]\nhotpatch:\n  timeout: 2m\n")
    cfg = XpsConfig.load(path)
    assert cfg.engine.policy.forbid == ("aes128",) and cfg.hotpatch.timeout_seconds == 120.0
    assert EngineConfig.from_file(path) == cfg.engine  # the CLI's entry point reads YAML too


def test_empty_yaml_file_is_all_defaults(tmp_path: Path) -> None:
    assert XpsConfig.load(_write(tmp_path, "empty.yml", "# nothing set\n")) == XpsConfig.defaults()


def test_full_schema_in_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "xps.toml", '[engine.policy]\nforbid = ["des"]\n[keyring.kek]\nprovider = "file"\n'
                                        '[channel]\nrekey_after_bytes = "64MiB"\n')
    cfg = XpsConfig.load(path)
    assert cfg.engine.policy.forbid == ("des",) and cfg.channel.rekey_after_bytes == 64 * 1024**2


def test_legacy_flat_engine_files_still_load(tmp_path: Path) -> None:
    toml = _write(tmp_path, "old.toml", 'nonce = "app"\n[policy]\nforbid = ["aes128"]\n')
    assert XpsConfig.load(toml).engine == EngineConfig.from_file(toml)
    assert XpsConfig.load(toml).engine.policy.forbid == ("aes128",)
    js = _write(tmp_path, "old.json", '{"providers": ["sodium"]}')
    assert XpsConfig.load(js).engine.providers == ("sodium",)
    mixed = _write(tmp_path, "mixed.toml", '[policy]\nforbid = []\n[keyring]\nusage_block = 2\n')
    with pytest.raises(PolicyError, match="unknown key 'policy'"):
        XpsConfig.load(mixed)
    flat_yaml = _write(tmp_path, "flat.yaml", "policy:\n  forbid: []\n")  # YAML is always the full schema
    with pytest.raises(PolicyError, match="unknown key 'policy'"):
        XpsConfig.load(flat_yaml)


def test_cli_error_prefix_is_unchanged_for_the_full_schema(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as ei:
        XpsConfig.load(_write(tmp_path, "xps.toml", "polcy = 1\n"))
    assert str(ei.value).startswith("XPS_ERR_POLICY: config: unknown key 'polcy'")


@pytest.mark.parametrize(("text", "key", "line"), [
    ("engine:\n  nonce: auto\n  nonce: app\n", "engine.nonce", 3),
    ("audit: {}\naudit: {}\n", "audit", 2),
    ("keyring:\n  max_encryptions:\n    AES-256-GCM: 1\n    AES-256-GCM: 2\n",
     "keyring.max_encryptions.AES-256-GCM", 4),
    ("engine:\n  prefer: {a: x, a: y}\n", "engine.prefer.a", 2),
], ids=["nested", "top", "deep", "flow"])
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = _write(tmp_path, "dup.yaml", text)
    with pytest.raises(PolicyError, match=re.escape(f"duplicate key {key!r} (line {line})")) as ei:
        XpsConfig.load(path)
    assert str(path) in str(ei.value)


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="duplicate key 'revoke'"):
        XpsConfig.load(_write(tmp_path, "dup.json", '{"approvals": {"revoke": 1, "revoke": 2}}'))


def test_yaml_merge_keys_and_aliases_are_not_duplicates(tmp_path: Path) -> None:
    text = "approvals: &a\n  revoke: 2\n  destroy: 2\nhotpatch: {canary_share: 0.5}\n"
    assert XpsConfig.load(_write(tmp_path, "ok.yaml", text)).approvals.revoke == 2
    merged = "engine:\n  policy: &p {forbid: [sha1]}\n  prefer:\n    <<: {aead.aes256gcm: x}\n    sig.ed25519: y\n"
    cfg = XpsConfig.load(_write(tmp_path, "merge.yaml", merged))
    assert cfg.engine.prefer == {"aead.aes256gcm": "x", "sig.ed25519": "y"}


@pytest.mark.parametrize(("text", "key"), [
    # an explicit key after a merge would silently replace the merged value
    ("engine:\n  policy:\n    <<: {forbid: [sha1, des]}\n    forbid: []\n", "engine.policy.forbid"),
    ("engine:\n  policy:\n    forbid: []\n    <<: {forbid: [sha1, des]}\n", "engine.policy.forbid"),
    # so would a second merged mapping, or the same one merged twice
    ("a: &a {forbid: [sha1]}\nb: &b {forbid: []}\nengine:\n  policy:\n    <<: [*a, *b]\n",
     "engine.policy.forbid"),
    ("a: &a {forbid: [sha1]}\nengine:\n  policy:\n    <<: [*a, *a]\n", "engine.policy.forbid"),
    # and a merge of a mapping that itself merged the key
    ("a: &a {forbid: [sha1]}\nb: &b {<<: *a}\nengine:\n  policy:\n    <<: *b\n    forbid: []\n",
     "engine.policy.forbid"),
])
def test_yaml_merge_cannot_override_a_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError, match=f"duplicate key '{re.escape(key)}'"):
        XpsConfig.load(_write(tmp_path, "merge.yaml", text))


def test_yaml_merge_chains_are_checked_once(tmp_path: Path) -> None:
    # forty levels of merges, each level merged from two places: every node is walked once
    text = "x0: &x0 {k0: 1}\n" + "".join(
        f"x{i}: &x{i} {{<<: [*x{i - 1}], k{i}: 1}}\n" for i in range(1, 40)) + "y: [*x39, *x39]\n"
    with pytest.raises(PolicyError, match="unknown key 'x0'"):
        XpsConfig.load(_write(tmp_path, "chain.yaml", text))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.yaml", "engine:\n  nonce: [auto\n", r"not valid yaml: .* at line \d+, column \d+"),
    ("tabs.yaml", "engine:\n\tnonce: app\n", "not valid yaml"),
    ("list.yaml", "- engine\n", "expected a mapping of sections at the top level, got list"),
    ("scalar.yaml", "hello\n", "expected a mapping of sections at the top level, got 'hello'"),
    ("two-docs.yaml", "a: 1\n---\nb: 2\n", "not valid yaml"),
    ("python-tag.yaml", "engine: !!python/object/apply:os.system [echo hi]\n", "not valid yaml"),
    ("custom-tag.yaml", "engine: !include other.yaml\n", "not valid yaml"),
    ("binary.yaml", b"\xff\xfe\x00".decode("latin-1"), "not valid yaml"),
    ("bad.toml", "engine = ", "not valid toml"),
    ("bad.json", "{", "not valid json"),
    ("xps.ini", "[engine]\n", "unsupported file type '.ini'"),
    ("missing.yaml", None, "No such file"),
], ids=["syntax", "tabs", "list-root", "scalar-root", "two-documents", "python-tag", "custom-tag", "binary",
        "toml", "json", "suffix", "missing"])
def test_bad_files_name_the_file(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="latin-1")
    with pytest.raises(PolicyError, match=message) as ei:
        XpsConfig.load(path)
    assert f"config file {str(path)!r}" in str(ei.value)


def test_alias_bomb_is_cheap(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    path = _write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(PolicyError, match="unknown key 'a0'"):
        XpsConfig.load(path)


EMERGENCY_CASES: list[tuple[str, Any, Any]] = [
    ("engine.policy.forbid", ["sha1", "aes128"], ["sha1", "aes128"]),
    ("engine.policy.allow", ["aead.*"], ["aead.*"]),
    ("engine.isa_mask", ["-avx512", "-jit"], ["-avx512", "-jit"]),
    ("hotpatch.max_slowdown", 1.5, 1.5),
    ("hotpatch.canary_share", 0, 0.0),
]


def test_emergency_case_table_covers_the_whitelist() -> None:
    assert {k for k, _, _ in EMERGENCY_CASES} == EMERGENCY_KEYS


@pytest.mark.parametrize(("key", "value", "new"), EMERGENCY_CASES, ids=[k for k, _, _ in EMERGENCY_CASES])
def test_emergency_change_returns_a_new_config_and_audits(key: str, value: Any, new: Any) -> None:
    old_cfg = XpsConfig.from_mapping({"approvals": {"revoke": 2, "emergency_revoke": 0}})
    before = old_cfg.to_mapping()
    audit = Recorder()
    new_cfg = old_cfg.emergency_change(key, value, operator="alice", reason="CVE-2031-0001", audit=audit)
    assert new_cfg is not old_cfg and old_cfg.to_mapping() == before  # the old object is unchanged
    assert new_cfg.get(key) == new
    assert {k: v for k, v in _flat(new_cfg).items() if k != key} == {
        k: v for k, v in _flat(old_cfg).items() if k != key}
    assert audit.events == [("CONFIG_EMERGENCY_CHANGE", {
        "key": key, "old": old_cfg.get(key), "new": new, "operator": "alice", "reason": "CVE-2031-0001"})]


def test_emergency_forbid_takes_effect_on_the_new_policy_only() -> None:
    cfg = XpsConfig.defaults()
    new = cfg.emergency_change("engine.policy.forbid", ["aes128"], operator="bob", reason="r", audit=Recorder())
    assert not new.engine.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm"))
    assert cfg.engine.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm"))


def test_emergency_change_writes_the_real_audit_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    XpsConfig.defaults().emergency_change("hotpatch.max_slowdown", 1.5, operator="carol", reason="incident 7",
                                          audit=log)
    (rec,) = log.tail()
    assert rec["event"] == "CONFIG_EMERGENCY_CHANGE"
    assert (rec["key"], rec["old"], rec["new"], rec["operator"], rec["reason"]) == (
        "hotpatch.max_slowdown", 2.0, 1.5, "carol", "incident 7")


@pytest.mark.parametrize("key", ["keyring.dual_window", "engine.nonce", "engine.providers", "keyring.kek.provider",
                                 "channel.rekey_after", "approvals.request_ttl", "hotpatch.timeout", "engine.policy",
                                 "approvals", "approvals.revoke", "approvals.destroy", "approvals.emergency_revoke",
                                 "nope", ""])
def test_emergency_change_refuses_other_keys(key: str) -> None:
    audit = Recorder()
    with pytest.raises(PolicyError, match=re.escape(f"config key {key!r}: not changeable at runtime")):
        XpsConfig.defaults().emergency_change(key, 1, operator="alice", reason="r", audit=audit)
    assert audit.events == []


@pytest.mark.parametrize(("key", "value", "message"), [
    ("engine.policy.forbid", "sha1", "'engine.policy.forbid': expected a list of strings"),
    ("engine.policy.allow", [1], "'engine.policy.allow': expected a list of strings"),
    ("hotpatch.max_slowdown", True, "'hotpatch.max_slowdown': expected a number"),
    ("hotpatch.max_slowdown", 0.9, "'hotpatch.max_slowdown': must be >= 1"),
    ("hotpatch.canary_share", 2, "'hotpatch.canary_share': must be in [0, 1]"),
], ids=["forbid-type", "allow-type", "bool", "slowdown", "share"])
def test_emergency_change_validates_like_loading(key: str, value: Any, message: str) -> None:
    audit = Recorder()
    with pytest.raises(PolicyError, match=re.escape(message)):
        XpsConfig.defaults().emergency_change(key, value, operator="alice", reason="r", audit=audit)
    assert audit.events == []


def test_emergency_change_needs_operator_and_reason() -> None:
    audit = Recorder()
    for operator, reason in (("", "r"), ("alice", " ")):
        with pytest.raises(PolicyError, match="must be a non-empty string"):
            XpsConfig.defaults().emergency_change("hotpatch.max_slowdown", 1.5, operator=operator, reason=reason,
                                                  audit=audit)
    assert audit.events == []


def test_emergency_change_fails_closed_when_audit_fails() -> None:
    class Broken:
        def record(self, event: str, **fields: Any) -> None:
            raise OSError("disk full")

    cfg = XpsConfig.defaults()
    with pytest.raises(OSError, match="disk full"):
        cfg.emergency_change("hotpatch.max_slowdown", 1.5, operator="a", reason="r", audit=Broken())
    assert cfg.hotpatch.max_slowdown == 2.0


def test_get_names_unknown_keys() -> None:
    assert XpsConfig.defaults().get("hotpatch.memory") == 2 * 1024**3
    with pytest.raises(PolicyError, match=r"'hotpatch\.nope': no such key"):
        XpsConfig.defaults().get("hotpatch.nope")


@pytest.mark.parametrize("days", [1e-7, 0.5, 1.25, 365, 1e300])
def test_any_accepted_rotation_days_round_trips_through_config_show(days: float) -> None:
    cfg = XpsConfig.from_mapping({"crypto": {"keyring": {"rotation_days": days}}})
    shown = cfg.to_document()
    assert XpsConfig.from_mapping(json.loads(json.dumps(shown))).keyring.default_policy == cfg.keyring.default_policy
