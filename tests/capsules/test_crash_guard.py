"""CrashGuard's own files: an abnormal end is counted once per active capsule; damage is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto import UpdateError
from xpscerpto.capsules.crash_guard import CrashGuard
from xpscerpto.capsules.store import ActiveCapsule
from xpscerpto.home import Home

CAP = ActiveCapsule("x", "1.0.0", "ab" * 32, ("aead.aes256gcm",))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def guard(tmp_path: Path) -> CrashGuard:
    return CrashGuard(Home.resolve(tmp_path / "home"), limit=2)


def test_a_dead_writer_counts_one_crash_per_active_capsule(guard: CrashGuard) -> None:
    assert guard.begin([CAP]) == {}
    guard.marker.write_text(json.dumps({"pid": _dead_pid()}))
    assert guard.begin([CAP]) == {CAP.sha256: 1}
    assert guard.begin([CAP]) == {CAP.sha256: 1}  # our own marker now: no new crash
    guard.marker.write_text(json.dumps({"pid": _dead_pid()}))
    assert guard.begin([CAP]) == {CAP.sha256: 2}
    guard.clean_exit()
    assert guard.begin([CAP]) == {} and guard.marker.exists()


@pytest.mark.parametrize("damage", [b"", b"{", b"[1]", b'{"x": "1"}', b"[" * 50000])
def test_damaged_counts_are_refused_not_reset(guard: CrashGuard, damage: bytes) -> None:
    guard.counts_path.write_bytes(damage)
    with pytest.raises(UpdateError) as ei:
        guard.begin([CAP])
    assert ei.value.reason == "state" and "crashes.json" in str(ei.value)
    assert guard.counts_path.read_bytes() == damage


@pytest.mark.parametrize("marker", [b"", b"garbage", b'{"pid": "x"}', b"[" * 50000])
def test_an_unreadable_marker_counts_as_an_abnormal_end(guard: CrashGuard, marker: bytes) -> None:
    guard.marker.write_bytes(marker)
    assert guard.begin([CAP]) == {CAP.sha256: 1}


def _not_a_file(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero", "directory"])
def test_counts_that_are_no_file_are_refused_without_waiting(guard: CrashGuard, kind: str) -> None:
    """Review F10: a FIFO in place of crashes.json hung the engine's start."""
    _not_a_file(guard.counts_path, kind)
    with pytest.raises(UpdateError) as ei:
        guard.begin([CAP])
    assert ei.value.reason == "state" and "crashes.json" in str(ei.value)


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero", "directory"])
def test_a_marker_that_is_no_file_counts_as_an_abnormal_end(guard: CrashGuard, kind: str) -> None:
    _not_a_file(guard.marker, kind)
    assert guard._previous_died()


def test_a_negative_count_is_refused_not_read_as_fewer_crashes(guard: CrashGuard) -> None:
    """Review F10: -2 passed the type check and postponed quarantine of a crash-looping capsule."""
    guard.counts_path.write_text(json.dumps({CAP.sha256: -2}))
    with pytest.raises(UpdateError) as ei:
        guard.begin([CAP])
    assert ei.value.reason == "state"


def test_a_live_process_with_the_markers_pid_is_a_dead_run_for_the_sole_engine(guard: CrashGuard) -> None:
    """The dead engine's pid, reused by a live process: without the engine lock the guard cannot
    tell it from a running engine; holding it (a service), it counts the crash."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        guard.marker.write_text(json.dumps({"pid": other.pid, "run": "0" * 32}))
        assert guard.begin([CAP]) == {}  # a live pid, no lock: taken for a running engine
        guard.marker.write_text(json.dumps({"pid": other.pid, "run": "0" * 32}))
        assert guard.begin([CAP], sole_engine=True) == {CAP.sha256: 1}
        assert guard.begin([CAP], sole_engine=True) == {CAP.sha256: 1}  # our own marker now
        guard.marker.write_text(json.dumps({"pid": other.pid}))  # a marker from before run tokens
        assert guard.begin([CAP], sole_engine=True) == {CAP.sha256: 2}
    finally:
        other.kill()
        other.wait()
