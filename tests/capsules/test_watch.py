"""The watched-folder inbox, with real files, real threads and real watchdog observers.

Every behaviour runs under both the native (inotify) observer and the polling observer.
Waits are bounded polls for an outcome on disk; nothing asserts on speed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from xpscerpto.capsules.watch import Inbox, InboxResult

POLL = 0.1  # polling observer interval
SETTLE = 0.3  # quick tests
DEADLINE = 10.0  # bounded wait for an outcome; generous for loaded CI machines


class Recorder:
    """Accepts content starting with b"GOOD", rejects the rest; b"BOOM" raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Path]] = []
        self.lock = threading.Lock()

    def __call__(self, raw: bytes, path: Path) -> InboxResult:
        with self.lock:
            self.calls.append((raw, path))
        if raw.startswith(b"BOOM"):
            raise RuntimeError("boom in handler")
        if raw.startswith(b"GOOD"):
            return InboxResult(True, "accepted", f"ok {len(raw)} bytes")
        return InboxResult(False, "bad-signature", "signature does not verify")

    def seen(self) -> list[bytes]:
        with self.lock:
            return [raw for raw, _ in self.calls]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def drop(directory: Path, name: str, data: bytes) -> Path:
    """Atomic drop: write NAME.part, then rename it into place."""
    part = directory / f"{name}.part"
    part.write_bytes(data)
    os.replace(part, directory / name)
    return directory / name


@pytest.fixture(params=[False, True], ids=["native", "polling"])
def polling(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


@pytest.fixture
def inbox(inbox_dir: Path, recorder: Recorder, polling: bool) -> Iterator[Inbox]:
    box = Inbox(inbox_dir, recorder, polling=polling, settle_seconds=SETTLE, poll_interval=POLL)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def test_observer_kind(inbox: Inbox, polling: bool) -> None:
    assert inbox.observer_kind == ("polling" if polling else "inotify")


def test_default_polling_none_uses_native_here(inbox_dir: Path, recorder: Recorder) -> None:
    with Inbox(inbox_dir, recorder, settle_seconds=SETTLE) as box:
        assert box.observer_kind == "inotify"
        drop(inbox_dir, "n.capsule", b"GOOD none")
        wait_for((inbox_dir / "accepted" / "n.capsule").exists, "accepted/n.capsule")


def test_start_creates_private_folders(inbox: Inbox, inbox_dir: Path) -> None:
    for d in (inbox_dir, inbox_dir / "accepted", inbox_dir / "rejected"):
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_atomic_rename_is_accepted_once(inbox: Inbox, inbox_dir: Path, recorder: Recorder) -> None:
    data = b"GOOD" + os.urandom(5000)
    path = drop(inbox_dir, "x.capsule", data)
    accepted = inbox_dir / "accepted" / "x.capsule"
    wait_for(lambda: (inbox_dir / "accepted" / "x.capsule.result").exists() and accepted.exists(),
             "accepted/x.capsule")
    assert inbox.wait_idle(DEADLINE)
    assert recorder.calls == [(data, path)]
    assert accepted.read_bytes() == data
    assert (inbox_dir / "accepted" / "x.capsule.result").read_text() == f"ok {len(data)} bytes\n"
    assert not path.exists()
    assert list((inbox_dir / "rejected").iterdir()) == []


def test_slow_copy_is_read_only_when_complete(inbox_dir: Path, recorder: Recorder, polling: bool) -> None:
    # Gaps between chunks are longer than the poll interval (the observer sees every chunk)
    # but shorter than the settle time (the file must not be taken as finished).
    settle, gap = 1.0, 0.25
    chunks = [b"GOOD" + os.urandom(3000)] + [os.urandom(3000) for _ in range(4)]
    full = b"".join(chunks)
    with Inbox(inbox_dir, recorder, polling=polling, settle_seconds=settle, poll_interval=POLL):
        target = inbox_dir / "slow.capsule"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for chunk in chunks:
                os.write(fd, chunk)
                time.sleep(gap)
                assert recorder.calls == [], "read while the copy was still being written"
                assert target.exists()
        finally:
            os.close(fd)
        wait_for((inbox_dir / "accepted" / "slow.capsule").exists, "accepted/slow.capsule")
    assert recorder.seen() == [full]
    assert (inbox_dir / "accepted" / "slow.capsule").read_bytes() == full


def test_rejected_gets_reason_file(inbox: Inbox, inbox_dir: Path, recorder: Recorder) -> None:
    drop(inbox_dir, "bad.capsule", b"EVIL payload")
    rejected = inbox_dir / "rejected" / "bad.capsule"
    wait_for(rejected.exists, "rejected/bad.capsule")
    assert rejected.read_bytes() == b"EVIL payload"
    reason = (inbox_dir / "rejected" / "bad.capsule.reason").read_text()
    assert reason == "bad-signature: signature does not verify\n"
    assert reason.count("\n") == 1
    assert recorder.seen() == [b"EVIL payload"]
    assert not (inbox_dir / "bad.capsule").exists()
    assert list((inbox_dir / "accepted").iterdir()) == []


def test_same_name_again_is_processed_again_and_kept(inbox: Inbox, inbox_dir: Path,
                                                     recorder: Recorder) -> None:
    acc = inbox_dir / "accepted"
    drop(inbox_dir, "a.capsule", b"GOOD first")
    wait_for((acc / "a.capsule").exists, "accepted/a.capsule")
    drop(inbox_dir, "a.capsule", b"GOOD second!")
    wait_for((acc / "a.1.capsule").exists, "accepted/a.1.capsule")
    drop(inbox_dir, "a.capsule", b"GOOD third!!")
    wait_for((acc / "a.2.capsule").exists, "accepted/a.2.capsule")
    assert inbox.wait_idle(DEADLINE)
    assert recorder.seen() == [b"GOOD first", b"GOOD second!", b"GOOD third!!"]
    assert (acc / "a.capsule").read_bytes() == b"GOOD first"
    assert (acc / "a.1.capsule").read_bytes() == b"GOOD second!"
    assert (acc / "a.2.capsule").read_bytes() == b"GOOD third!!"
    assert (acc / "a.1.capsule.result").read_text() == "ok 12 bytes\n"
    # the same name rejected lands beside its own reason, not over an accepted one
    drop(inbox_dir, "a.capsule", b"BAD")
    wait_for((inbox_dir / "rejected" / "a.capsule.reason").exists, "rejected/a.capsule.reason")


def test_file_present_before_start_is_processed(inbox_dir: Path, recorder: Recorder, polling: bool) -> None:
    inbox_dir.mkdir()
    (inbox_dir / "early.capsule").write_bytes(b"GOOD early")
    (inbox_dir / "early-bad.capsule").write_bytes(b"nope")
    with Inbox(inbox_dir, recorder, polling=polling, settle_seconds=SETTLE, poll_interval=POLL) as box:
        wait_for((inbox_dir / "accepted" / "early.capsule").exists, "accepted/early.capsule")
        wait_for((inbox_dir / "rejected" / "early-bad.capsule").exists, "rejected/early-bad")
        assert box.wait_idle(DEADLINE)
    assert sorted(recorder.seen()) == [b"GOOD early", b"nope"]


def test_non_matching_names_are_left_alone(inbox_dir: Path, recorder: Recorder, polling: bool) -> None:
    ignored = ["foo.txt", ".hidden.capsule", "x.capsule.part", "y.capsule.tmp"]
    inbox_dir.mkdir()
    (inbox_dir / "pre.txt").write_bytes(b"GOOD but not a capsule name")
    with Inbox(inbox_dir, recorder, polling=polling, settle_seconds=SETTLE, poll_interval=POLL) as box:
        for name in ignored:
            (inbox_dir / name).write_bytes(b"GOOD ignored " + name.encode())
        (inbox_dir / "sub.capsule").mkdir()  # a folder with a matching name is not a file
        # a capsule dropped after them: once it is filed, their events have been seen too
        drop(inbox_dir, "barrier.capsule", b"GOOD barrier")
        wait_for((inbox_dir / "accepted" / "barrier.capsule").exists, "the barrier capsule")
        assert box.wait_idle(DEADLINE)
        time.sleep(2 * SETTLE)  # give a wrongly picked-up file every chance to settle
        assert box.wait_idle(DEADLINE)
    assert recorder.seen() == [b"GOOD barrier"]
    for name in [*ignored, "pre.txt"]:
        assert (inbox_dir / name).is_file(), name
    assert (inbox_dir / "sub.capsule").is_dir()
    assert sorted(p.name for p in (inbox_dir / "accepted").iterdir()) == [
        "barrier.capsule", "barrier.capsule.result"]
    assert list((inbox_dir / "rejected").iterdir()) == []


def test_handler_exception_rejects_as_internal_and_continues(inbox: Inbox, inbox_dir: Path,
                                                             recorder: Recorder) -> None:
    drop(inbox_dir, "boom.capsule", b"BOOM")
    wait_for(lambda: (inbox_dir / "rejected" / "boom.capsule.reason").exists()
             and (inbox_dir / "rejected" / "boom.capsule").exists(), "rejected/boom.capsule")
    reason = (inbox_dir / "rejected" / "boom.capsule.reason").read_text()
    assert reason == "internal: RuntimeError: boom in handler\n"
    drop(inbox_dir, "after.capsule", b"GOOD after")
    wait_for((inbox_dir / "accepted" / "after.capsule").exists, "accepted/after.capsule")
    assert recorder.seen() == [b"BOOM", b"GOOD after"]


def test_symlink_is_rejected_without_being_read(inbox: Inbox, inbox_dir: Path, recorder: Recorder,
                                                tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"GOOD secret outside the inbox")
    (inbox_dir / "link.capsule").symlink_to(secret)
    wait_for((inbox_dir / "rejected" / "link.capsule").is_symlink, "rejected/link.capsule")
    assert (inbox_dir / "rejected" / "link.capsule.reason").read_text().startswith("not-regular-file: ")
    assert recorder.calls == []
    assert secret.read_bytes() == b"GOOD secret outside the inbox"


def test_stop_ends_every_thread_it_started(inbox_dir: Path, recorder: Recorder, polling: bool) -> None:
    shared: tuple[type, ...] = ()
    try:  # watchdog's process-wide inotify reader thread is shared by design; it is not ours
        from watchdog.observers.inotify_c import InotifyFD
        shared = (InotifyFD,)
    except ImportError:  # pragma: no cover - non-Linux
        pass
    before = set(threading.enumerate())
    box = Inbox(inbox_dir, recorder, polling=polling, settle_seconds=SETTLE, poll_interval=POLL)
    box.start()
    started = [t for t in set(threading.enumerate()) - before if not isinstance(t, shared)]
    names = {t.name for t in started}
    assert "xps-inbox" in names
    assert any(n.startswith("xps-inbox-") for n in names), names  # the observer thread
    drop(inbox_dir, "s.capsule", b"GOOD stop")
    wait_for((inbox_dir / "accepted" / "s.capsule").exists, "accepted/s.capsule")
    box.stop()
    assert [t for t in started if t.is_alive()] == []
    left = [t for t in set(threading.enumerate()) - before if not isinstance(t, shared)]
    assert left == []
    # after stop nothing is processed; a restart picks the waiting file up
    drop(inbox_dir, "later.capsule", b"GOOD later")
    time.sleep(2 * SETTLE)
    assert (inbox_dir / "later.capsule").exists()
    with box:
        wait_for((inbox_dir / "accepted" / "later.capsule").exists, "accepted/later.capsule")
    assert recorder.seen() == [b"GOOD stop", b"GOOD later"]


def test_import_xpscerpto_does_not_import_watchdog() -> None:
    code = ("import sys, xpscerpto, xpscerpto.capsules, xpscerpto.capsules.watch; "
            "assert 'watchdog' not in sys.modules, sorted(m for m in sys.modules if 'watchdog' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_inbox_that_cannot_be_listed_for_a_while_is_watched_again_after(
        inbox_dir: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a review: out of file descriptors, os.scandir raised EMFILE, the worker thread
    # died, and no capsule was applied again. (EMFILE stands in here: exhausting the test
    # process's descriptors would break the run itself.)
    import errno

    from xpscerpto.capsules import watch

    failures = {"left": 0}
    real = os.scandir

    def scandir(path: object) -> object:
        if failures["left"] and Path(str(path)) == inbox_dir:
            failures["left"] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(watch, "_RESCAN_SECONDS", 0.05)
    with Inbox(inbox_dir, recorder, polling=False, settle_seconds=SETTLE) as box:
        monkeypatch.setattr(watch.os, "scandir", scandir)
        failures["left"] = 5
        wait_for(lambda: failures["left"] == 0, "the failing listings")
        drop(inbox_dir, "late.capsule", b"GOOD after")
        wait_for((inbox_dir / "accepted" / "late.capsule").exists, "accepted/late.capsule")
        assert box.wait_idle(DEADLINE)
