"""Configuration: validation names the bad key; files load; policy semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
from xpscerpto import EngineConfig, Policy, PolicyError


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
