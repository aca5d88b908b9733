"""``hotpatch.trust_store``: the pinned publisher keys can live outside the home.

Whoever can write the home can write its trust.json: pinning their own key there would let
their capsule's code run in the engine. With the trust store outside the home (read-only to the
engine's user), that pin is never read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto import Engine
from xpscerpto.capsules.policy_record import trust_digest
from xpscerpto.capsules.updater import Updater
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.signing import TrustStore

from .conftest import DEMO_OP, GATES, PLAN, CapsuleFactory, assert_never_ran, closed_at_teardown, restored


def _updater(home: Path, trust: Path | None) -> Updater:
    return restored(closed_at_teardown(Updater(Engine(), home=home, gates=GATES, plan=PLAN, trust_path=trust)))


def test_a_key_pinned_in_the_home_is_not_read_when_the_trust_store_is_elsewhere(
        factory: CapsuleFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    outside = tmp_path / "etc" / "trust.json"
    outside.parent.mkdir()
    factory.trust(factory.signer("alice")).save(outside)  # the operator's pins
    factory.pin(home, factory.signer("mallory"))  # someone who can write the home pins their key
    up = _updater(home, outside)
    evil = factory.build(factory.demo_source(), [factory.signer("mallory")])
    with pytest.raises(XpsError, match="not a trusted key"):
        up.apply(evil.raw)
    assert_never_ran(evil)
    assert up.engine.table.provider_for(DEMO_OP) != "capsule"
    good = factory.build(factory.demo_source(version="1.0.1"), [factory.signer("alice")])
    up.apply(good.raw)
    assert [(a.name, a.version) for a in up.state.active] == [("xchacha20-openssl", "1.0.1")]


def test_the_default_is_the_homes_trust_json(factory: CapsuleFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    factory.pin(home, factory.signer("alice"))
    up = _updater(home, None)
    assert up.trust_path == Home.resolve(home).trust
    up.apply(factory.build(factory.demo_source()).raw)
    assert len(up.state.active) == 1


def test_xps_trust_writes_where_the_configuration_says(factory: CapsuleFactory, tmp_path: Path) -> None:
    home, outside, cfg = tmp_path / "home", tmp_path / "etc" / "trust.json", tmp_path / "xps.yaml"
    outside.parent.mkdir()
    cfg.write_text(f"crypto:\n  hotpatch:\n    trust_store: {outside}\n")
    pub = factory.root / "keys" / "alice.pub"
    factory.signer("alice")
    run = [sys.executable, "-m", "xpscerpto", "--home", str(home), "--config", str(cfg), "trust"]
    out = subprocess.run([*run, "add", str(pub), "--ops", "aead.*"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(outside.read_text())["keys"]
    assert not (home / "trust.json").exists()
    listed = subprocess.run([*run, "list", "--json"], capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and json.loads(listed.stdout) == json.loads(outside.read_text())
    change = [json.loads(line) for line in (home / "audit.log").read_text().splitlines()
              if '"TRUST_CHANGE"' in line][-1]
    assert change["store"] == str(outside)


def _journal(home: Path, event: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines() if f'"{event}"' in line]


def test_patch_enable_names_the_trust_store_the_capsule_was_verified_against(
        factory: CapsuleFactory, tmp_path: Path) -> None:
    """The store changes between verification and enable (an unpin during the stages): the
    record says what let the capsule in, not what a later reading finds."""
    home, outside = tmp_path / "home", tmp_path / "etc" / "trust.json"
    outside.parent.mkdir()
    alice, bob = factory.signer("alice"), factory.signer("bob")
    factory.trust(alice, bob).save(outside)
    used = trust_digest(TrustStore.load(outside))
    up = _updater(home, outside)

    def unpin_during_stages(event: str, fields: object) -> None:
        if event == "PATCH_STAGE":
            factory.trust(bob).save(outside)

    up.add_event_listener(unpin_during_stages)
    up.apply(factory.build(factory.demo_source(), [alice]).raw)
    enable = _journal(home, "PATCH_ENABLE")[-1]
    policy = enable["policy"]
    assert isinstance(policy, dict)
    assert policy["trust_digest"] == used != trust_digest(TrustStore.load(outside))
    assert [p["keyid"] for p in policy["pins"]] == [alice.keyid]


@pytest.mark.parametrize("damage", ["truncated", "deleted", "directory"])
def test_a_damaged_trust_store_does_not_block_taking_a_capsule_out(
        factory: CapsuleFactory, tmp_path: Path, damage: str) -> None:
    home, outside = tmp_path / "home", tmp_path / "etc" / "trust.json"
    outside.parent.mkdir()
    factory.trust(factory.signer("alice")).save(outside)
    up = _updater(home, outside)
    cap = up.apply(factory.build(factory.demo_source(), [factory.signer("alice")]).raw)
    assert up.engine.table.provider_for(DEMO_OP) == cap.name
    if damage == "truncated":
        outside.write_text(outside.read_text()[:30])
    else:
        outside.unlink()
        if damage == "directory":
            outside.mkdir()
    up.rollback(cap.name, operator="oncall")
    assert up.state.active == () and up.engine.table.provider_for(DEMO_OP) != cap.name
    record = _journal(home, "PATCH_ROLLBACK")[-1]
    policy = record["policy"]
    assert isinstance(policy, dict) and policy["pins"] == []
    if damage == "deleted":  # no store pins nobody: the record says so, as for a home without one
        assert policy["trust_digest"] == trust_digest(TrustStore())
    else:
        assert policy["trust_digest"] is None and policy["trust_error"] == "XPS_ERR_POLICY"


def _xps(home: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cfg = ("--config", str(config)) if config is not None else ()
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *cfg, *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("value", ["trust.json", "etc/trust.json", "/etc/xps/../xps/trust.json", "./trust.json"])
def test_a_trust_store_that_is_not_an_absolute_plain_path_is_refused(value: str) -> None:
    with pytest.raises(PolicyError, match=r"hotpatch\.trust_store': expected an absolute path"):
        XpsConfig.from_mapping({"crypto": {"hotpatch": {"trust_store": value}}})


@pytest.mark.parametrize("where", ["inside", "symlink-to-inside", "home-itself"])
def test_a_trust_store_inside_the_home_is_refused(tmp_path: Path, where: str) -> None:
    home = Home.resolve(tmp_path / "home")
    path = {"inside": home.root / "pins.json", "symlink-to-inside": tmp_path / "etc" / "trust.json",
            "home-itself": home.root}[where]
    if where == "symlink-to-inside":
        path.parent.mkdir()
        path.symlink_to(home.root / "pins.json")
    cfg = XpsConfig.from_mapping({"crypto": {"hotpatch": {"trust_store": str(path)}}})
    with pytest.raises(PolicyError, match="inside the home"):
        cfg.hotpatch.trust_path(home)


def test_a_trust_store_behind_a_symlink_loop_is_a_typed_refusal(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    cfg = XpsConfig.from_mapping({"crypto": {"hotpatch": {"trust_store": str(tmp_path / "a")}}})
    with pytest.raises(PolicyError, match="cannot be resolved"):
        cfg.hotpatch.trust_path(home)


def test_the_home_records_its_trust_store_and_refuses_an_engine_that_forgot_it(
        factory: CapsuleFactory, tmp_path: Path) -> None:
    home, outside, cfg = tmp_path / "home", tmp_path / "etc" / "trust.json", tmp_path / "xps.yaml"
    outside.parent.mkdir()
    cfg.write_text(f"crypto:\n  hotpatch:\n    trust_store: {outside}\n")
    factory.signer("alice")
    added = _xps(home, "trust", "add", str(factory.root / "keys" / "alice.pub"), "--ops", "aead.*", config=cfg)
    assert added.returncode == 0, added.stderr
    assert json.loads((home / "home.json").read_text())["stores"]["trust"] == str(outside)
    factory.pin(home, factory.signer("mallory"))  # someone who can write the home pins their key there
    forgot = _xps(home, "trust", "list")  # started without the configuration
    assert forgot.returncode == 2 and "XPS_ERR_POLICY" in forgot.stderr and str(outside) in forgot.stderr
    with pytest.raises(PolicyError, match="trust store"):
        Updater(Engine(), home=home, gates=GATES, plan=PLAN)
    up = _updater(home, outside)  # told where: the home's pin is never read
    evil = factory.build(factory.demo_source(), [factory.signer("mallory")])
    with pytest.raises(XpsError, match="not a trusted key"):
        up.apply(evil.raw)
    assert_never_ran(evil)
    outside.unlink()  # a recorded store that disappears is refused, never read as "no pins"
    gone = _xps(home, "trust", "list", config=cfg)
    assert gone.returncode == 2 and "missing, though this home recorded it" in gone.stderr


def test_trust_add_into_a_missing_folder_is_refused_before_anything_is_journaled(tmp_path: Path,
                                                                                  factory: CapsuleFactory) -> None:
    home, cfg = tmp_path / "home", tmp_path / "xps.yaml"
    cfg.write_text(f"crypto:\n  hotpatch:\n    trust_store: {tmp_path / 'nowhere' / 'trust.json'}\n")
    factory.signer("alice")
    out = _xps(home, "trust", "add", str(factory.root / "keys" / "alice.pub"), "--ops", "aead.*", config=cfg)
    assert out.returncode == 2 and "XPS_ERR_POLICY" in out.stderr and "folder does not exist" in out.stderr
    assert not (home / "audit.log").exists() or '"TRUST_CHANGE"' not in (home / "audit.log").read_text()


def test_an_offline_rollback_without_the_configuration_still_takes_the_capsule_out(
        factory: CapsuleFactory, tmp_path: Path) -> None:
    """The home records a trust store elsewhere and the operator forgot --config: the rollback
    needs no pins, so it happens, and its record says the store was not read (never the digest
    of HOME/trust.json, which a home writer may have filled)."""
    home, outside, cfg = tmp_path / "home", tmp_path / "etc" / "trust.json", tmp_path / "xps.yaml"
    outside.parent.mkdir()
    cfg.write_text(f"crypto:\n  hotpatch:\n    trust_store: {outside}\n")
    factory.signer("alice")
    assert _xps(home, "trust", "add", str(factory.root / "keys" / "alice.pub"), "--ops", "aead.*",
                config=cfg).returncode == 0
    factory.pin(home, factory.signer("mallory"))
    up = _updater(home, outside)
    cap = up.apply(factory.build(factory.demo_source(), [factory.signer("alice")]).raw)
    up.close()
    out = _xps(home, "rollback", cap.name)  # no engine running, no --config
    assert out.returncode == 0, out.stderr
    after = closed_at_teardown(Updater(Engine(), home=home, gates=GATES, plan=PLAN, trust_path=outside))
    assert after.state.active == ()
    policy = _journal(home, "PATCH_ROLLBACK")[-1]["policy"]
    assert isinstance(policy, dict) and policy["trust_digest"] is None and policy["trust_error"] == "XPS_ERR_POLICY"
