"""The engine rebuilds its table on its own (autotune results, a first-use self-test, added
providers): the updater must still charge faults to the capsule serving in that table, and end
a sampling window the rebuild copied."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules._canary import _TransitionalAead
from xpscerpto.capsules.updater import Updater

from .conftest import GOOD_AEAD, OP, PLAN, CapsuleFactory, UpdaterMaker, aead_alias, wait_until
from .test_switches import FAULT_ENV, LATENT_FAULT


def _fault_and_wait(eng: xps.Engine, up: Updater, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the serving LATENT_FAULT capsule raise on a call, then give the updater time to act."""
    monkeypatch.setenv(FAULT_ENV, "1")
    with pytest.raises(xps.ProviderError):
        eng.aead.encrypt(aead_alias(OP), os.urandom(32), b"x" * 64)
    wait_until(lambda: not up.state.active)


@pytest.mark.parametrize("rebuilds", [0, 1, 3])
def test_a_fault_in_a_table_the_engine_rebuilt_rolls_the_capsule_back(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rebuilds: int) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(LATENT_FAULT))
    eng = xps.Engine()
    up = make_updater(engine=eng)
    up.apply(cap.raw)
    for _ in range(rebuilds):
        eng.rebuild()
    assert eng.table.provider_for(OP) == "hotfix-aesgcm"
    _fault_and_wait(eng, up, monkeypatch)
    assert up.state.active == () and eng.table.provider_for(OP) == "openssl"
    rollback, = [e for e in up.audit.tail(100) if e["event"] == "PATCH_ROLLBACK"]
    assert rollback["sha256"] == cap.sha256 and "provider fault after enable" in rollback["reason"]


def test_a_fault_after_a_rollback_and_a_rebuild_is_charged_to_the_version_serving_then(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.0.1 replaced 1.0.0 and was rolled back; the engine then rebuilt the table of 1.0.0.
    monkeypatch.delenv(FAULT_ENV, raising=False)
    factory.pin(tmp_path / "home")
    eng = xps.Engine()
    up = make_updater(engine=eng)
    up.apply(factory.build(factory.source(LATENT_FAULT, version="1.0.0")).raw)
    up.apply(factory.build(factory.source(LATENT_FAULT, version="1.0.1")).raw)
    up.rollback("hotfix-aesgcm")
    assert [a.version for a in up.state.active] == ["1.0.0"]
    eng.rebuild()
    _fault_and_wait(eng, up, monkeypatch)
    assert up.state.active == () and eng.table.provider_for(OP) == "openssl"
    rollbacks = [e for e in up.audit.tail(100) if e["event"] == "PATCH_ROLLBACK"]
    assert [(e["version"], e["operator"]) for e in rollbacks] == [("1.0.1", "local"), ("1.0.0", "auto")]


def test_a_sampling_window_ends_though_the_engine_rebuilt_its_table(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(GOOD_AEAD))
    eng = xps.Engine()
    up = make_updater(engine=eng, plan=replace(PLAN, sample_seconds=0.5, sample_every=3))
    up.apply(cap.raw)

    def sampled() -> bool:
        provider = next(p for p in eng.table.providers if p.name == "hotfix-aesgcm")
        return isinstance(provider.implementations[OP], _TransitionalAead)

    assert sampled()
    eng.rebuild()  # what an autotune result does
    assert sampled()
    wait_until(lambda: not any(t.name.startswith("xps-sampling") for t in threading.enumerate()))
    assert not sampled() and eng.table.provider_for(OP) == "hotfix-aesgcm"
