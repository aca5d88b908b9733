"""The hot-patch service in-process: whatever it started (the updater's fault watcher, the
control socket, the inbox observer and worker) ends with it, also when it fails to start."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.capsules.service import WatchService
from xpscerpto.config import XpsConfig


def _started_since(before: set[threading.Thread]) -> list[str]:
    """Names of the threads alive now that were not alive in ``before``."""
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())


def test_a_service_refused_at_construction_leaves_no_thread_behind(tmp_path: Path) -> None:
    """The updater (and its fault watcher) was made before the inbox refused its arguments, and
    nothing was left to stop it: every refused WatchService kept a thread for good."""
    before = set(threading.enumerate())
    with pytest.raises(xps.PolicyError, match="settle_seconds"):
        WatchService(xps.Engine(), tmp_path / "inbox", tmp_path / "home", settle_seconds=-1)
    assert _started_since(before) == []


def test_a_failed_start_leaves_no_thread_behind(tmp_path: Path) -> None:
    """A start refused before the socket opened (here: an unreadable overrides file) left the
    updater's fault watcher running."""
    home = tmp_path / "home"
    before = set(threading.enumerate())
    svc = WatchService(xps.Engine(), tmp_path / "inbox", home)
    (home / "overrides.json").write_text("[")
    with pytest.raises(xps.PolicyError, match="overrides"):
        svc.start()
    assert _started_since(before) == []


def test_stop_ends_every_thread_of_a_running_service(short_root: Path) -> None:
    before = set(threading.enumerate())
    svc = WatchService(xps.Engine(), short_root / "inbox", short_root / "home", polling=True).start()
    alive = _started_since(before)
    assert "xps-fault-watch" in alive and "xps-control" in alive and "xps-inbox" in alive, alive
    svc.stop()
    assert _started_since(before) == []


def test_an_offline_rollback_during_the_services_restore_is_refused(short_root: Path) -> None:
    """An offline rollback ran while a just-started service restored the home, before its control
    socket opened; the service then served, and later saved, the state it had loaded over it
    (review of the updater races). The rollback is made at the restore itself."""
    from xpscerpto.capsules.updater import rollback_offline
    from xpscerpto.home import Home

    home = Home.resolve(short_root / "home")
    svc = WatchService(xps.Engine(), short_root / "inbox", home, polling=True)
    restore = svc.updater.restore
    refused: list[BaseException] = []

    def restore_under_an_offline_rollback(*, sole_engine: bool = False) -> object:
        try:
            rollback_offline(home, "aead.xchacha20poly1305")
        except xps.XpsError as exc:
            refused.append(exc)
        return restore(sole_engine=sole_engine)

    svc.updater.restore = restore_under_an_offline_rollback  # type: ignore[method-assign]
    try:
        svc.start()
    finally:
        svc.stop()
    (exc,) = refused
    assert isinstance(exc, xps.UpdateError) and exc.reason == "engine-running"
    with pytest.raises(xps.UpdateError) as ei:  # the engine is gone: the rollback runs (and finds nothing)
        rollback_offline(home, "aead.xchacha20poly1305")
    assert ei.value.reason == "not-found"


@pytest.mark.parametrize("plant", ["symlink", "folder"])
def test_a_lock_file_that_is_a_link_or_a_folder_is_a_typed_refusal(tmp_path: Path, plant: str) -> None:
    from xpscerpto.capsules.updater import rollback_offline
    from xpscerpto.home import Home

    home = Home.resolve(tmp_path / "home")
    lock = home.root / "control.sock.lock"
    elsewhere = tmp_path / "elsewhere"
    if plant == "symlink":
        lock.symlink_to(elsewhere)  # followed, it would lock (and create) a file outside the home
    else:
        lock.mkdir()
    with pytest.raises(xps.UpdateError) as ei:
        rollback_offline(home, "aead.xchacha20poly1305")
    assert ei.value.reason == "io" and "cannot open lock file" in str(ei.value)
    assert not elsewhere.exists()


def test_malformed_control_requests_are_answered_and_never_echo_the_callers_value(short_root: Path) -> None:
    """Adversarial pass: a request missing a field or with one of the wrong type closed the
    connection without an answer (the handler thread died on KeyError/TypeError), and an
    unknown command came back in full."""
    from xpscerpto.capsules.control import request

    svc = WatchService(xps.Engine(), short_root / "inbox", short_root / "home", polling=True).start()
    try:
        sock = svc.updater.home.socket
        huge = ["x" * 5000]
        cases = [
            ({"cmd": "rollback"}, "malformed request: field 'target' missing"),
            ({"cmd": "emergency", "value": 1}, "malformed request: field 'key' missing"),
            ({"cmd": "rollback", "target": "aead.x", "to": [1]}, "to must be text"),
            ({"cmd": huge}, "cmd: unknown command"),
            ({"cmd": "nope"}, "cmd: unknown command 'nope'"),
        ]
        for payload, expected in cases:
            answer = request(sock, payload, timeout=10)
            assert answer["ok"] is False and expected in answer["error"], (payload, answer)
            assert "xxxxxxxxxx" not in answer["error"]
        assert request(sock, {"cmd": "ping"}, timeout=10)["result"] == "pong"  # still serving
    finally:
        svc.stop()


def test_a_bug_while_serving_a_request_is_answered_as_internal_and_logged_by_type_only(
        short_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that raised anything but XpsError died and the client saw the connection close
    unanswered. A bug cannot be caused on demand, so the status call is made to raise one."""
    import logging

    from xpscerpto.capsules.control import request

    svc = WatchService(xps.Engine(), short_root / "inbox", short_root / "home", polling=True).start()
    try:
        def broken(events: int = 20) -> dict[str, object]:
            raise RuntimeError("detail that must not be logged or answered")

        svc.updater.status = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="xpscerpto.capsules.control"):
            answer = request(svc.updater.home.socket, {"cmd": "status"}, timeout=10)
        assert answer == {"ok": False, "code": "XPS_ERR_INTERNAL",
                          "error": "XPS_ERR_INTERNAL: internal error (see the engine's log)"}
        assert "status failed: RuntimeError" in caplog.text and "must not" not in caplog.text
        assert request(svc.updater.home.socket, {"cmd": "ping"}, timeout=10)["result"] == "pong"
    finally:
        svc.stop()


DEVELOPMENT = {"crypto": {"hotpatch": {"development": True, "require_signature": False, "run_selftests": False}}}


@pytest.mark.parametrize("later", [
    DEVELOPMENT,  # loosens: the gates off
    {"crypto": {"hotpatch": {"rollback_on_error": False}}},  # loosens one switch
])
def test_a_later_config_cannot_switch_the_recorded_gates_off(tmp_path: Path, later: dict) -> None:
    home = tmp_path / "home"
    WatchService(xps.Engine(), tmp_path / "inbox", home, config=XpsConfig.defaults()).updater.close()
    before = set(threading.enumerate())
    with pytest.raises(xps.PolicyError, match=r"crypto\.hotpatch\..*differs from the security policy this home"):
        WatchService(xps.Engine(), tmp_path / "inbox", home, config=XpsConfig.from_mapping(later))
    assert _started_since(before) == []
    recorded = json.loads((home / "home.json").read_text())["policy"]
    assert (recorded["hotpatch.require_signature"], recorded["hotpatch.development"]) == (True, False)


def test_the_gates_a_home_recorded_in_development_are_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dev = XpsConfig.from_mapping(DEVELOPMENT)
    WatchService(xps.Engine(), tmp_path / "inbox", home, config=dev).updater.close()
    WatchService(xps.Engine(), tmp_path / "inbox", home, config=dev).updater.close()  # the same file: accepted
    # Tightening goes through `xps policy apply` as well.
    with pytest.raises(xps.PolicyError, match="require_signature': True differs"):
        WatchService(xps.Engine(), tmp_path / "inbox", home, config=XpsConfig.defaults())
