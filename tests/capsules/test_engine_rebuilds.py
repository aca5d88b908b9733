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


def _rebuilding(eng: xps.Engine) -> tuple[threading.Event, threading.Thread]:
    """The engine republishing its table without pause (what an autotune result does, often)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            eng.rebuild()

    thread = threading.Thread(target=run, name="test-rebuilds")
    thread.start()
    return stop, thread


def test_an_emergency_mask_change_racing_the_engines_own_rebuilds_is_applied(make_updater: UpdaterMaker) -> None:
    # Found by a review: the updater built its table outside the engine's lock, so a rebuild in
    # between made 91 of 100 reconfigure calls fail with InternalError (table.version).
    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often: the race shows within a few calls
    cfg = replace(xps.EngineConfig(), autotune=False)
    eng = xps.Engine(cfg)
    up = make_updater(engine=eng)
    masked = replace(cfg, isa_mask=("sodium",))
    stop, thread = _rebuilding(eng)
    try:
        for i in range(60):
            up.reconfigure(masked if i % 2 == 0 else cfg)
            served = {r.provider for r in eng.table.routes.values()}
            assert ("sodium" in served) is (i % 2 == 1), i
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)


def test_a_capsule_enabled_and_rolled_back_while_the_engine_rebuilds_goes_live_and_comes_out(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(GOOD_AEAD))
    eng = xps.Engine()
    up = make_updater(engine=eng)
    stop, thread = _rebuilding(eng)
    try:
        up.apply(cap.raw)
        assert eng.table.provider_for(OP) == "hotfix-aesgcm"
        up.rollback("hotfix-aesgcm")
        assert eng.table.provider_for(OP) == "openssl"
    finally:
        stop.set()
        thread.join()


def test_providers_added_by_racing_callers_are_added_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a review: the names were checked before the self-tests and not again after them.
    import time

    import xpscerpto.kat as kat
    from xpscerpto.plugins import openssl

    real = kat.run_selftest

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(0.02)  # widens the window between the check and the add, as a loaded machine does
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kat, "run_selftest", slow)
    eng = xps.Engine(replace(xps.EngineConfig(), autotune=False))
    extra = replace(openssl.make_provider(), name="openssl-x")
    threads = [threading.Thread(target=eng.add_providers, args=([extra],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [p.name for p in eng.state.providers]
    assert names.count("openssl-x") == 1 and len(names) == len(set(names))
    assert len([r for r in eng.state.selftests if r.provider == "openssl-x"]) == len(extra.implementations)
