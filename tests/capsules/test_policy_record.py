"""PATCH_ENABLE / PATCH_ROLLBACK name the policy in force (issue 11, Workflow 4's fifth gate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.policy_record import config_digest, policy_fields, trust_digest
from xpscerpto.capsules.updater import Updater, rollback_offline
from xpscerpto.config import XpsConfig
from xpscerpto.signing import TrustStore, generate_keypair, load_private_key

from .conftest import closed_at_teardown
from .test_updater import FAST_GATES, NO_TRIAL, OP, Publisher


def _records(up: Updater, event: str) -> list[dict]:
    return [e for e in up.audit.tail(200) if e["event"] == event]


def test_enable_and_rollback_name_trust_digest_pin_allow_list_and_config_digest(tmp_path: Path) -> None:
    pub = Publisher(tmp_path)
    doc = XpsConfig.defaults().to_mapping()
    up = closed_at_teardown(Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL,
                                    config_document=doc))
    up.restore()
    up.apply(pub.capsule("1.0.0"))
    up.rollback(OP)
    trust = TrustStore.load(pub.home.trust)
    for event in ("PATCH_ENABLE", "PATCH_ROLLBACK"):
        policy = _records(up, event)[-1]["policy"]
        assert policy["trust_digest"] == trust_digest(trust)
        assert policy["threshold"] == 1
        assert policy["pins"] == [{"keyid": pub.signer[0].keyid, "allow": ["aead.*"]}]
        assert len(policy["config_digest"]) == 64
    enable, rollback = _records(up, "PATCH_ENABLE")[-1], _records(up, "PATCH_ROLLBACK")[-1]
    assert enable["policy"]["config_digest"] == rollback["policy"]["config_digest"]


def test_a_changed_trust_store_or_configuration_shows_in_the_next_record(tmp_path: Path) -> None:
    pub = Publisher(tmp_path)
    up = closed_at_teardown(Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL,
                                    config_document=XpsConfig.defaults().to_mapping()))
    up.restore()
    up.apply(pub.capsule("1.0.0"))
    first = _records(up, "PATCH_ENABLE")[-1]["policy"]
    # A second publisher pinned and the configuration changed (an audited emergency change).
    generate_keypair(tmp_path / "other")
    TrustStore.load(pub.home.trust).add(load_private_key(tmp_path / "other.key")[0], ["sig.*"]) \
        .save(pub.home.trust)
    changed = XpsConfig.defaults().to_mapping()
    changed["hotpatch"] = {**changed["hotpatch"], "canary_share": 0.5}
    up.reconfigure(up.engine.config, config_document=changed)
    up.apply(pub.capsule("1.0.1"))
    second = _records(up, "PATCH_ENABLE")[-1]["policy"]
    assert second["trust_digest"] != first["trust_digest"]
    assert second["config_digest"] != first["config_digest"]
    # Only the signer's pin is named, not every pin in the store.
    assert second["pins"] == first["pins"]


def test_offline_rollback_names_the_pins_that_cover_the_operation(tmp_path: Path) -> None:
    pub = Publisher(tmp_path)
    up = closed_at_teardown(Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL))
    up.restore()
    up.apply(pub.capsule("1.0.0"))
    up.close()
    rollback_offline(pub.home, OP, operator="ops", config_document={"x": 1})
    record = _records(up, "PATCH_ROLLBACK")[-1]
    assert record["mode"] == "offline"
    assert record["policy"]["pins"] == [{"keyid": pub.signer[0].keyid, "allow": ["aead.*"]}]
    assert record["policy"]["config_digest"] == config_digest({"x": 1})


def test_digests_ignore_key_order_and_name_no_key_bytes() -> None:
    assert config_digest({"a": 1, "b": 2}) == config_digest({"b": 2, "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})
    fields = policy_fields(TrustStore(), ["not-pinned"], ["aead.aes256gcm"], config_digest(None))
    assert fields["pins"] == [] and fields["threshold"] == 1
    assert trust_digest(TrustStore().with_threshold(2)) != trust_digest(TrustStore())


def test_an_offline_rollback_that_cannot_be_journaled_changes_nothing(tmp_path: Path) -> None:
    """Kill sweep finding: the state was saved first, so a failure (or a kill) before the
    journal append left a rolled-back capsule with no PATCH_ROLLBACK record, for good."""
    pub = Publisher(tmp_path)
    up = closed_at_teardown(Updater(xps.Engine(), pub.home, gates=FAST_GATES, plan=NO_TRIAL))
    up.restore()
    up.apply(pub.capsule("1.0.0"))
    up.close()
    before = pub.home.state.read_bytes()
    # The journal cannot be appended to: a real fault. (This test used a damaged trust store
    # until a rollback learned to journal that store as unreadable instead of refusing.)
    pub.home.audit.rename(pub.home.audit.with_name("audit.moved"))
    pub.home.audit.mkdir()
    with pytest.raises(xps.XpsError):
        rollback_offline(pub.home, OP, operator="ops")
    assert pub.home.state.read_bytes() == before  # still active, and nothing journaled
    pub.home.audit.rmdir()
    pub.home.audit.with_name("audit.moved").rename(pub.home.audit)
    assert all(r["event"] != "PATCH_ROLLBACK" for r in _records(up, "PATCH_ROLLBACK"))
