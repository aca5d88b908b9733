"""The seed's hot-patch switches act (issue 11): ``require_signature``, ``run_selftests`` and
``rollback_on_error``, off only in development mode, and journaled whenever they are off.

Each behaviour is shown against its default: the same capsule refused (or rolled back) with
the switch on, so none of these tests can pass by an updater that ignores the switch.
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.capsules.isolate import Gates
from xpscerpto.capsules.refusal import Refusal
from xpscerpto.capsules.service import WatchService
from xpscerpto.capsules.updater import StagePlan, Updater
from xpscerpto.config import XpsConfig

from .conftest import (
    GATES,
    GOOD_AEAD,
    OP,
    PLAN,
    Capsule,
    CapsuleFactory,
    UpdaterMaker,
    aead_alias,
    aes_vector,
    assert_never_ran,
    assert_not_in_this_process,
    kat_file,
    marker_pids,
    round_trip,
    wait_until,
)
from .test_isolation import wrapped

DEV = replace(GATES, development=True)
UNSIGNED_OK = replace(DEV, require_signature=False)
NO_SELFTESTS = replace(DEV, run_selftests=False)
FAULT_ENV = "XPS_TEST_SWITCH_FAULT"

# Correct, until the test sets FAULT_ENV in this process: a bug that shows after cutover.
LATENT_FAULT = GOOD_AEAD.replace(
    "    def cipher(self, key):\n",
    "    def cipher(self, key):\n"
    "        import os\n"
    f"        if os.environ.get({FAULT_ENV!r}) == '1':\n"
    "            raise RuntimeError('latent bug')\n")


# Correct until the test sets WRONG_ENV; then every encryption comes out with its first byte
# flipped, and no exception: only the sampled check after cutover can tell.
WRONG_ENV = "XPS_TEST_SWITCH_WRONG"
LATENT_WRONG = wrapped(encrypt=f"""
    import os
    out = self.inner.encrypt(nonce, data, aad)
    return bytes([out[0] ^ 1]) + out[1:] if os.environ.get({WRONG_ENV!r}) == "1" else out
""")


def _events(up: Updater, name: str) -> list[dict[str, Any]]:
    return [e for e in up.audit.tail(500) if e["event"] == name]


def _wrong_kat() -> bytes:
    key, nonce = bytes(range(32)), bytes(12)
    vector = aes_vector(key, nonce, b"message", b"", "a wrong tag on purpose")
    vector["tag"] = bytes(16).hex()
    return kat_file(vector)


# -- the switches need development mode ---------------------------------------------------------


@pytest.mark.parametrize("switch", ["require_signature", "run_selftests"])
def test_a_gate_off_without_development_is_refused(switch: str) -> None:
    with pytest.raises(xps.PolicyError, match=f"gates: {switch}=False .* needs development=True"):
        Gates(**{switch: False})
    assert getattr(Gates(**{switch: False, "development": True}), switch) is False


@pytest.mark.parametrize("value", [0, 1, "false", None, 1.0])
@pytest.mark.parametrize("switch", ["require_signature", "run_selftests", "development"])
def test_a_switch_that_is_not_a_bool_is_refused(switch: str, value: object) -> None:
    with pytest.raises(xps.PolicyError, match=f"gates: {switch} must be a bool"):
        Gates(**{switch: value})


# -- require_signature --------------------------------------------------------------------------


def _capsule(factory: CapsuleFactory, signed_by: str, **source: Any) -> Capsule:
    """A capsule by ``signed_by``: "mallory" (a key nobody pinned) or "forged" (alice's key
    listed, and 64 zero bytes where her signature belongs)."""
    src = factory.source(**source)
    if signed_by == "mallory":
        return factory.build(src, [factory.signer("mallory")])
    alice = factory.signer("alice")
    raw = factory.assemble(factory.manifest_for(src, [alice]), src.files, [], signatures={alice.keyid: bytes(64)})
    return Capsule(raw, src.marker)


@pytest.mark.parametrize("signed_by", ["mallory", "forged"])
def test_require_signature_false_accepts_an_untrusted_capsule_and_says_so(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, signed_by: str) -> None:
    factory.pin(tmp_path / "home")  # alice only
    cap = _capsule(factory, signed_by)

    factory.pin(tmp_path / "strict")
    with pytest.raises(xps.UpdateError) as ei:
        make_updater(tmp_path / "strict").apply(cap.raw)
    assert ei.value.reason in (Refusal.UNTRUSTED_KEY, Refusal.UNLISTED_KEY, Refusal.BAD_SIGNATURE)
    assert_never_ran(cap)

    eng = xps.Engine()
    up = make_updater(tmp_path / "home", gates=UNSIGNED_OK, engine=eng)
    assert up.apply(cap.raw).name == "hotfix-aesgcm"
    assert eng.table.provider_for(OP) == "hotfix-aesgcm"
    round_trip(eng, OP)
    verify, = _events(up, "PATCH_VERIFY")
    assert verify["publisher"] == [] and verify["gates_off"] == ["require_signature"]
    enable, = _events(up, "PATCH_ENABLE")
    assert enable["gates_off"] == ["require_signature"]
    start, = _events(up, "PATCH_GATES")
    assert (start["phase"], start["gates_off"], start["development"]) == ("restore", ["require_signature"], True)


def test_require_signature_false_still_checks_the_payload_hashes(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    src = factory.source()
    manifest = factory.manifest_for(src)
    files = dict(src.files)
    files["hotfix.py"] += b"\nimport os; os.environ['XPS_PWNED'] = '1'\n"  # not what the manifest hashed
    raw = factory.assemble(manifest, files)
    up = make_updater(gates=UNSIGNED_OK)
    with pytest.raises(xps.UpdateError) as ei:
        up.apply(raw)
    assert ei.value.reason in (Refusal.DIGEST_MISMATCH, Refusal.SIZE_MISMATCH)
    assert "XPS_PWNED" not in os.environ
    assert not src.marker.exists()


def test_require_signature_false_still_refuses_a_downgrade(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater(gates=UNSIGNED_OK)
    up.apply(_capsule(factory, "mallory", version="1.0.1").raw)
    old = _capsule(factory, "mallory", version="1.0.0")
    with pytest.raises(xps.UpdateError) as ei:
        up.apply(old.raw)
    assert ei.value.reason is Refusal.ROLLBACK
    assert_never_ran(old)


def test_an_unsigned_capsule_is_dropped_at_restart_once_the_gate_is_back_on(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    cap = _capsule(factory, "mallory")
    make_updater(gates=UNSIGNED_OK).apply(cap.raw)
    eng = xps.Engine()
    up = make_updater(engine=eng)  # the default gates: signatures required again
    assert eng.table.provider_for(OP) == "openssl"
    reject, = [e for e in _events(up, "PATCH_REJECT") if e.get("phase") == "restore"]
    assert reject["sha256"] == cap.sha256 and reject["reason"] == "untrusted-key"
    assert up.state.active == ()
    # The first updater's start is journaled; the second, all gates on, journals none.
    assert [(e["phase"], e["gates_off"]) for e in _events(up, "PATCH_GATES")] == [("restore", ["require_signature"])]


# -- run_selftests ------------------------------------------------------------------------------


def test_run_selftests_false_skips_the_child_and_the_kats(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    factory.pin(tmp_path / "strict")
    cap = factory.build(factory.source(kat={"kat/wrong.json": _wrong_kat()}))

    with pytest.raises(xps.UpdateError) as ei:
        make_updater(tmp_path / "strict").apply(cap.raw)
    assert ei.value.reason is Refusal.KAT_FAILED
    assert_not_in_this_process(cap)  # it ran in the validation child only
    cap.marker.unlink()

    eng = xps.Engine()
    up = make_updater(tmp_path / "home", gates=NO_SELFTESTS, engine=eng)
    up.apply(cap.raw)
    assert eng.table.provider_for(OP) == "hotfix-aesgcm"
    assert marker_pids(cap.marker) == [os.getpid()]  # no validation child imported it
    kat, = _events(up, "PATCH_KAT")
    assert kat["skipped"] == "run_selftests" and "kat" not in kat
    assert _events(up, "PATCH_ENABLE")[0]["gates_off"] == ["run_selftests"]

    # A restart restores it without a validation child either (this process has the module
    # already, so nothing writes the marker unless a child imports the payload).
    eng2 = xps.Engine()
    cap.marker.unlink()
    make_updater(tmp_path / "home", gates=NO_SELFTESTS, engine=eng2)
    assert eng2.table.provider_for(OP) == "hotfix-aesgcm"
    assert not cap.marker.exists()
    # and with the gate back on, the restart's validation child refuses it
    eng3 = xps.Engine()
    up3 = make_updater(tmp_path / "home", engine=eng3)
    assert eng3.table.provider_for(OP) == "openssl" and up3.state.active == ()
    assert marker_pids(cap.marker) != [] and os.getpid() not in marker_pids(cap.marker)
    reject, = [e for e in _events(up3, "PATCH_REJECT") if e.get("phase") == "restore"]
    assert reject["reason"] == "kat-failed"


# -- rollback_on_error --------------------------------------------------------------------------


def _wait_for(up: Updater, event: str) -> list[dict[str, Any]]:
    return wait_until(lambda: _events(up, event))  # type: ignore[no-any-return]


def _rolled_back(up: Updater) -> list[dict[str, Any]]:
    """The PATCH_ROLLBACK records once the rollback is also committed: the journal record comes
    first by design (journal, then save), so seeing it does not yet mean the state changed."""
    records = _wait_for(up, "PATCH_ROLLBACK")
    wait_until(lambda: up.state.active == ())
    return records


@pytest.mark.parametrize("rollback_on_error", [True, False])
def test_rollback_on_error_decides_what_a_fault_after_cutover_does(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rollback_on_error: bool) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(LATENT_FAULT))
    eng = xps.Engine()
    up = make_updater(engine=eng, plan=replace(PLAN, rollback_on_error=rollback_on_error))
    up.apply(cap.raw)
    assert eng.table.provider_for(OP) == "hotfix-aesgcm"

    monkeypatch.setenv(FAULT_ENV, "1")
    for _ in range(5):
        with pytest.raises(xps.ProviderError):
            eng.aead.encrypt(aead_alias(OP), os.urandom(32), b"x" * 64)
    if rollback_on_error:
        assert _rolled_back(up)
        assert up.state.active == () and eng.table.provider_for(OP) == "openssl"
        assert _events(up, "PATCH_FAULT") == []
        return
    fault, = _wait_for(up, "PATCH_FAULT")
    assert (fault["sha256"], fault["action"]) == (cap.sha256, "kept")
    assert fault["detail"] == f"{OP}: RuntimeError"
    with pytest.raises(xps.ProviderError):  # still serving, and a later fault is not journaled again
        eng.aead.encrypt(aead_alias(OP), os.urandom(32), b"x" * 64)
    time.sleep(0.5)
    assert len(_events(up, "PATCH_FAULT")) == 1 and _events(up, "PATCH_ROLLBACK") == []
    assert [a.sha256 for a in up.state.active] == [cap.sha256]
    assert eng.table.provider_for(OP) == "hotfix-aesgcm"
    assert _events(up, "PATCH_GATES")[0]["gates_off"] == ["rollback_on_error"]


def test_a_wrong_answer_in_the_sampled_check_rolls_back_whatever_rollback_on_error_says(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rollback_on_error is about calls that raise; a capsule answering differently from the
    # implementation it replaced would otherwise serve ciphertext nobody can open.
    monkeypatch.delenv(WRONG_ENV, raising=False)
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(LATENT_WRONG))
    eng = xps.Engine()
    up = make_updater(engine=eng, plan=replace(PLAN, sample_seconds=30.0, sample_every=3, rollback_on_error=False))
    up.apply(cap.raw)
    monkeypatch.setenv(WRONG_ENV, "1")
    for _ in range(6):  # every third call is sampled
        eng.aead.encrypt(aead_alias(OP), os.urandom(32), b"m" * 32)
    rollback, = _rolled_back(up)
    assert rollback["sha256"] == cap.sha256 and rollback["operator"] == "auto"
    assert up.state.active == () and eng.table.provider_for(OP) == "openssl"
    assert _events(up, "PATCH_FAULT") == []


@pytest.mark.parametrize("value", [None, 0, "", [], "false"])
def test_verify_capsule_skips_the_trust_decision_only_for_false(factory: CapsuleFactory, value: object) -> None:
    from datetime import UTC, datetime

    from xpscerpto.capsules._verifier import verify_capsule

    cap = factory.build(factory.source(), [factory.signer("mallory")])
    with pytest.raises(xps.UpdateError) as ei:
        verify_capsule(cap.raw, trust=factory.trust(), highest={}, now=datetime.now(UTC),
                       require_signature=value)  # type: ignore[arg-type]
    assert ei.value.reason is Refusal.UNTRUSTED_KEY
    unsigned = verify_capsule(cap.raw, trust=factory.trust(), highest={}, now=datetime.now(UTC),
                              require_signature=False)
    assert unsigned.signed_by == frozenset() and unsigned.signature_required is False


@pytest.mark.parametrize("value", [0, None, "false", 1])
def test_a_plan_whose_rollback_switch_is_not_a_bool_is_refused(value: object) -> None:
    with pytest.raises(xps.PolicyError, match="plan: rollback_on_error must be a bool"):
        StagePlan(rollback_on_error=value)  # type: ignore[arg-type]


def test_a_capsule_loaded_without_selftests_runs_its_kats_once_they_are_back_on(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    # Loaded code is kept in memory by sha256; a rollback to it after the gates came back on
    # must not take it from there untested.
    factory.pin(tmp_path / "home")
    bad = factory.build(factory.source(version="1.0.0", kat={"kat/wrong.json": _wrong_kat()}))
    good = factory.build(factory.source(version="1.0.1"))
    eng = xps.Engine()
    up = make_updater(engine=eng, gates=NO_SELFTESTS)
    up.apply(bad.raw)
    up.apply(good.raw)
    up.reconfigure(eng.config, gates=GATES)
    up.rollback("hotfix-aesgcm")  # takes 1.0.1 out; 1.0.0, whose own KAT fails, does not come back
    assert up.state.active == () and eng.table.provider_for(OP) == "openssl"
    rollback, = _events(up, "PATCH_ROLLBACK")
    assert "1.0.0 not restored (kat-failed), built-in provider serves" in rollback["reason"]
    assert "failed its KAT" in (up.status()["tainted"] or "")


# -- journaled ----------------------------------------------------------------------------------


def test_gates_on_journal_no_gates_record_at_start(make_updater: UpdaterMaker) -> None:
    up = make_updater()
    assert _events(up, "PATCH_GATES") == [] and up.status()["gates_off"] == []


def test_a_reconfigure_that_changes_the_switches_is_journaled(make_updater: UpdaterMaker) -> None:
    eng = xps.Engine()
    up = make_updater(engine=eng)
    up.reconfigure(eng.config, gates=NO_SELFTESTS)
    up.reconfigure(eng.config, gates=NO_SELFTESTS)  # no change: nothing more
    up.reconfigure(eng.config, gates=GATES)
    records = _events(up, "PATCH_GATES")
    assert [(e["phase"], e["gates_off"]) for e in records] == [("reconfigure", ["run_selftests"]),
                                                               ("reconfigure", [])]


def test_a_start_with_gates_off_stops_when_the_journal_refuses(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    up = make_updater(restore=False, gates=UNSIGNED_OK)
    journal = Path(up.audit.path)  # type: ignore[attr-defined]
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.mkdir()  # a folder where the journal file goes: nothing can be appended
    with pytest.raises(xps.XpsError):
        up.restore()
    assert up.engine.table.provider_for(OP) == "openssl" and up.state.active == ()


def test_the_service_takes_the_switches_the_home_recorded(tmp_path: Path) -> None:
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    dev = XpsConfig.from_mapping({"crypto": {"hotpatch": {
        "development": True, "require_signature": False, "run_selftests": False, "rollback_on_error": False}}})
    WatchService(xps.Engine(), inbox, home, config=dev).updater.close()
    # Started without the configuration, and with default gates and plan passed: the record wins.
    svc = WatchService(xps.Engine(), inbox, home)
    try:
        assert svc.updater.gates.off == ("require_signature", "run_selftests")
        assert svc.updater.plan.rollback_on_error is False
        assert svc.config.hotpatch.require_signature is False  # the configuration it reports says so too
        svc.start()
        start, = _events(svc.updater, "PATCH_GATES")
        assert start["gates_off"] == ["require_signature", "run_selftests", "rollback_on_error"]
        assert svc.updater.status()["gates_off"] == start["gates_off"]
    finally:
        svc.stop()
    recorded = json.loads((home / "home.json").read_text())["policy"]
    assert recorded["hotpatch.require_signature"] is False


def test_the_service_defaults_keep_every_gate_on(tmp_path: Path) -> None:
    svc = WatchService(xps.Engine(), tmp_path / "inbox", tmp_path / "home",
                       gates=UNSIGNED_OK, config=XpsConfig.defaults())
    try:
        assert svc.updater.gates.off == () and svc.updater.plan.rollback_on_error is True
    finally:
        svc.updater.close()


@pytest.mark.parametrize(("field", "value"), [
    ("canary_share", float("nan")), ("canary_share", -0.1), ("canary_share", 1.5), ("canary_share", "0.5"),
    ("canary_seconds", 1e300), ("canary_seconds", -1), ("dual_run_seconds", float("inf")),
    ("drain_timeout", None), ("sample_seconds", 4e9), ("sample_every", 0), ("sample_every", 2.0),
    ("canary_share", True),
])
def test_a_stage_plan_it_cannot_run_is_refused_naming_the_field(field: str, value: object) -> None:
    # Found by a review: a canary of 1e300 s overflowed the trial's wait and left the refused
    # capsule's trial table serving; nan and out-of-range shares went straight into the plan.
    with pytest.raises(xps.PolicyError, match=rf"^XPS_ERR_POLICY: plan: {field} "):
        StagePlan(**{field: value})  # type: ignore[arg-type]


def test_a_trial_that_fails_with_an_unexpected_error_does_not_leave_its_table_serving(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.source(GOOD_AEAD))
    eng = xps.Engine()
    up = make_updater(engine=eng, plan=StagePlan(canary_seconds=5, dual_run_seconds=0))

    class Broken(queue.Queue[str]):  # the trial's wait failing as nothing of ours should (a bug, an interrupt)
        def get(self, block: bool = True, timeout: float | None = None) -> str:
            assert eng.table.provider_for(OP) == "hotfix-aesgcm"  # the trial table serves now
            raise RuntimeError("unexpected")

    up._stage_fault = Broken()
    # Not a verdict on the capsule, still a refusal: typed, and journaled like any other.
    with pytest.raises(xps.UpdateError) as ei:
        up.apply(cap.raw)
    assert ei.value.reason == "internal" and isinstance(ei.value.__cause__, RuntimeError)
    assert "unexpected" not in str(ei.value)  # named by type only
    assert eng.table.provider_for(OP) == "openssl" and up.state.active == ()
    reject = [r for r in up.audit.tail(50) if r["event"] == "PATCH_REJECT"]
    assert reject and reject[-1]["reason"] == "internal" and reject[-1]["sha256"] == cap.sha256
