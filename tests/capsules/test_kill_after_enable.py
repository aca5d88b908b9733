"""`xps watch` killed after committing a dropped capsule, before filing the file (review F4).

The kill is real: strace injects SIGKILL into the watch process at the first ``openat`` of
``INBOX/accepted`` (the filing of the accepted drop), i.e. after ``state.json`` holds the enable
and before the file leaves the inbox. At the next start the same bytes are found again; they
are the capsule that serves, so they are filed as accepted (``PATCH_VERIFY`` with
``already_active``), never refused as a rollback of themselves.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto.capsules.updater import Updater
from xpscerpto.errors import UpdateError

from tests.strace_kill import cannot_trace, strace

from .conftest import CapsuleFactory, UpdaterMaker, rejections
from .test_cli_service import DEMO, NAME, OP, Watcher, audit_events, published, status, tool, wait_for, watchers

__all__ = ["published", "watchers"]



def _drop(inbox: Path, name: str, raw: bytes) -> None:
    """Drop ``raw`` as ``name`` the way a careful operator does: write aside, then rename in."""
    part = inbox / f".{name}.part"
    part.write_bytes(raw)
    part.rename(inbox / name)


def _watch_killed_when_filing(home: Path, inbox: Path) -> subprocess.Popen[str]:
    """``xps watch`` under strace, killed (SIGKILL) on entering its first open of ``accepted/``."""
    accepted = inbox.resolve() / "accepted"  # created by the watch itself, opened only to file a drop
    proc = subprocess.Popen(
        [strace(), "-f", "-qq", "-o", "/dev/null", "-P", str(accepted), "-e", "trace=openat",
         "-e", "inject=openat:signal=KILL:when=1",
         sys.executable, "-m", "xpscerpto", "--home", str(home), "watch", str(inbox)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket and the inbox are up
    if not line.startswith("watching"):
        proc.kill()
        _, err = proc.communicate(timeout=30)
        cannot_trace(err)
        raise AssertionError(f"xps watch under strace did not start: {line!r} {err[:2000]}")
    return proc


def _events_since(home: Path, seq: int) -> list[dict]:
    return [e for e in audit_events(home) if e["seq"] > seq]


def test_a_drop_committed_before_a_kill_is_filed_as_accepted_at_the_next_start(  # type: ignore[no-untyped-def]
        published, tmp_path: Path, watchers) -> None:
    capsule, _, home = published
    raw = capsule.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    inbox = tmp_path / "inbox"

    killed = _watch_killed_when_filing(home, inbox)
    try:
        _drop(inbox, NAME, raw)
        killed.wait(180)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(30)
    assert killed.returncode in (-9, 137), killed.returncode  # SIGKILL, not an orderly end
    # The kill hit the promised window: committed, journaled, but the drop not filed.
    assert (inbox / NAME).exists()
    assert not (inbox / "accepted" / NAME).exists() and list((inbox / "rejected").iterdir()) == []
    offline = status(home)
    assert [a["sha256"] for a in offline["active"]] == [sha]
    before = audit_events(home)
    assert [e["sha256"] for e in before if e["event"] == "PATCH_ENABLE"] == [sha]
    last_seq = before[-1]["seq"]

    watchers.append(Watcher(home, inbox))
    wait_for(lambda: not (inbox / NAME).exists(), "the drop to be filed after the restart")
    assert (inbox / "accepted" / NAME).exists()
    assert (inbox / "accepted" / f"{NAME}.result").exists()
    assert list((inbox / "rejected").iterdir()) == []
    after = _events_since(home, last_seq)
    assert [e for e in after if e["event"] == "PATCH_REJECT"] == []
    assert [e for e in after if e["event"] == "PATCH_ENABLE"] == []  # nothing enabled twice
    said = [e for e in after if e["event"] == "PATCH_VERIFY"]
    assert len(said) == 1 and said[0]["sha256"] == sha and said[0]["already_active"] is True
    live = status(home)
    assert [a["sha256"] for a in live["active"]] == [sha] and live["routes"][OP] == "xchacha20-openssl"
    assert live["refused"] == []

    # Same name and version, other bytes (the manifest lists a co-signer): still a rollback.
    tool("keygen", "--out", str(tmp_path / "bob"))
    other = tmp_path / "other.capsule"
    tool("build", str(DEMO), "--key", str(tmp_path / "alice.key"), "--cosigner", str(tmp_path / "bob.pub"),
         "--out", str(other))
    assert other.read_bytes() != raw
    _drop(inbox, "other.capsule", other.read_bytes())
    wait_for((inbox / "rejected" / "other.capsule.reason").exists, "the other 1.0.0 to be refused")
    assert (inbox / "rejected" / "other.capsule.reason").read_text().startswith("rollback:")
    # An older version: refused as ever.
    src = tmp_path / "older-src"
    shutil.copytree(DEMO, src)
    toml = src / "capsule.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "0.9.0"', 1))
    older = tmp_path / "older.capsule"
    tool("build", str(src), "--key", str(tmp_path / "alice.key"), "--out", str(older))
    _drop(inbox, "older.capsule", older.read_bytes())
    wait_for((inbox / "rejected" / "older.capsule.reason").exists, "the older version to be refused")
    assert (inbox / "rejected" / "older.capsule.reason").read_text().startswith("rollback:")
    assert [a["sha256"] for a in status(home)["active"]] == [sha]


def _history(up: Updater) -> int:
    return len(up.state.history)


def test_the_active_capsule_applied_again_changes_nothing_and_says_so(factory: CapsuleFactory,
                                                                      make_updater: UpdaterMaker) -> None:
    home = factory.root.parent / "home"
    factory.pin(home, factory.signer())
    up = make_updater(home)
    raw = factory.build(factory.demo_source()).raw
    first = up.apply(raw)
    table, history, state = up.engine.table.version, _history(up), up.state
    again = up.apply(raw)
    assert again == first
    assert up.state == state and _history(up) == history  # no enable of itself over itself
    assert up.engine.table.version == table
    assert rejections(up) == []
    said = [e for e in up.audit.tail(50) if e["event"] == "PATCH_VERIFY"]
    assert said[-1]["already_active"] is True and said[-1]["sha256"] == first.sha256
    assert [e["event"] for e in up.audit.tail(50)].count("PATCH_ENABLE") == 1
    # After a restart (as `xps watch` restarts after a kill) too.
    up.close()
    later = make_updater(home)
    assert later.apply(raw) == first
    assert rejections(later) == []
    # A different capsule of the same version, and an older one, are still refused.
    same_version = factory.build(factory.demo_source(), [factory.signer(), factory.signer("bob")]).raw
    older = factory.build(factory.demo_source(version="0.9.0")).raw
    for refused in (same_version, older):
        with pytest.raises(UpdateError) as ei:
            later.apply(refused)
        assert ei.value.reason == "rollback", ei.value
    assert [a.sha256 for a in later.state.active] == [first.sha256]
