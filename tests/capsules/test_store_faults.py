"""A damaged capsule store or state file is a refusal the operator sees, never a silent reset.

Issue 10, items 4 and 9: real ``xps watch`` / ``xps status`` processes over a real home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from xpscerpto.capsules.store import _digest

from .test_cli_service import NAME, OP, Watcher, audit_events, published, status, wait_for, watchers, xps

__all__ = ["published", "watchers"]  # fixtures, re-exported for pytest

DAMAGE: dict[str, Callable[[Path], None]] = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "corrupted": lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
    # Not a file at all (review): must neither hang nor read without end.
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),
    "symlink to /dev/zero": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
}


def _enabled(home: Path, inbox: Path, capsule: Path, watchers: list[Watcher]) -> str:
    w = Watcher(home, inbox)
    watchers.append(w)
    (inbox / NAME).write_bytes(capsule.read_bytes())
    wait_for(lambda: status(home)["active"] != [], "the capsule to be enabled")
    w.stop()
    return str(status(home)["active"][0]["sha256"])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_stored_capsule_is_refused_at_start_shown_and_audited(  # type: ignore[no-untyped-def]
        damage: str, published, tmp_path: Path, watchers) -> None:
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    sha = _enabled(home, inbox, capsule, watchers)
    DAMAGE[damage](home / "capsules" / f"{sha}.capsule")

    # Offline: the committed state still names the capsule, and status says it cannot start.
    offline = status(home)
    assert [a["sha256"] for a in offline["active"]] == [sha]
    assert [r["sha256"] for r in offline["refused"]] == [sha]
    assert "refused xchacha20-openssl 1.0.0" in xps(home, "status").stdout

    # A restart serves the built-in provider, audits the refusal, keeps the committed state.
    watchers.append(Watcher(home, inbox))
    live = status(home)
    assert live["routes"][OP] == "sodium"
    assert [r["sha256"] for r in live["refused"]] == [sha]
    reject = [e for e in audit_events(home) if e["event"] == "PATCH_REJECT" and e.get("phase") == "restore"][-1]
    assert reject["sha256"] == sha and reject["held"] is True
    assert reject["reason"] in ("state", "digest-mismatch")
    assert [a["sha256"] for a in json.loads((home / "state.json").read_bytes())["active"]] == [sha]

    # Dropping the same capsule again repairs the store and routes it; nothing is refused now.
    (inbox / "again.capsule").write_bytes(capsule.read_bytes())
    wait_for(lambda: status(home)["routes"][OP] == "xchacha20-openssl", "the repaired capsule to route")
    assert status(home)["refused"] == []
    assert (home / "capsules" / f"{sha}.capsule").read_bytes() == capsule.read_bytes()


def test_an_operator_can_roll_back_a_capsule_refused_at_start(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    sha = _enabled(home, inbox, capsule, watchers)
    (home / "capsules" / f"{sha}.capsule").unlink()
    watchers.append(Watcher(home, inbox))
    assert "in the running engine" in xps(home, "rollback", "xchacha20-openssl").stdout
    after = status(home)
    assert after["active"] == [] and after["refused"] == [] and after["routes"][OP] == "sodium"


@pytest.mark.parametrize("history", [[1, 2], ["x"], [None], {"a": 1}, "abc"])
def test_status_on_a_malformed_state_history_is_one_typed_line(  # type: ignore[no-untyped-def]
        history: object, published, tmp_path: Path, watchers) -> None:
    capsule, _, home = published
    _enabled(home, tmp_path / "inbox", capsule, watchers)
    doc = json.loads((home / "state.json").read_bytes())
    doc["history"] = history
    doc["digest"] = _digest({k: v for k, v in doc.items() if k != "digest"})  # the history check, not the digest's
    (home / "state.json").write_text(json.dumps(doc))
    out = xps(home, "status", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "XPS_ERR_UPDATE" in out.stderr and "state.json" in out.stderr


def _garbage_line(home: Path) -> None:
    with (home / "audit.log").open("ab") as f:
        f.write(b"\x00garbage{\n")


def test_watch_keeps_running_with_one_line_errors_when_the_journal_breaks(  # type: ignore[no-untyped-def]
        published, tmp_path: Path, watchers) -> None:
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    w = Watcher(home, inbox)
    watchers.append(w)
    _garbage_line(home)
    (inbox / NAME).write_bytes(capsule.read_bytes())
    wait_for(lambda: (inbox / "rejected" / f"{NAME}.reason").exists()
             or (inbox / "accepted" / f"{NAME}.result").exists(), "the drop to be filed")
    # The journal could not record the change, so nothing changed: journal first, always.
    assert (inbox / "rejected" / f"{NAME}.reason").exists()
    assert status(home)["routes"][OP] == "sodium"
    assert w.proc.poll() is None  # still serving
    w.stop()
    err = w.proc.stderr.read() if w.proc.stderr else ""
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["garbage last line", "deleted audit.key"])
def test_watch_refuses_to_start_on_a_broken_journal_with_one_line(  # type: ignore[no-untyped-def]
        damage: str, published, tmp_path: Path, watchers) -> None:
    _, _, home = published
    w = Watcher(home, tmp_path / "inbox")  # writes the journal's first records and key
    w.stop()
    if damage == "deleted audit.key":
        (home / "audit.key").unlink()
    else:
        _garbage_line(home)
    out = xps(home, "watch", str(tmp_path / "inbox"), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "audit" in out.stderr


@pytest.mark.parametrize("damage", ["fifo", "symlink to /dev/zero", "corrupted"])
def test_watch_refuses_to_start_on_damaged_overrides_with_one_line(  # type: ignore[no-untyped-def]
        damage: str, published, tmp_path: Path, watchers) -> None:
    """Review F9: a FIFO in place of overrides.json hung `xps watch` at start."""
    _, _, home = published
    w = Watcher(home, tmp_path / "inbox")
    watchers.append(w)
    xps(home, "config", "emergency", "engine.policy.forbid", '["aes128"]', "--reason", "CVE-2026-0001")
    w.stop()
    DAMAGE[damage](home / "overrides.json")
    out = xps(home, "watch", str(tmp_path / "inbox"), check=False)  # xps() times out instead of hanging
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "overrides" in out.stderr


@pytest.mark.parametrize("store", ["state.json", "audit.log", "home.json"])
@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_home_run_only_by_watch_refuses_a_lost_store(  # type: ignore[no-untyped-def]
        store: str, damage: str, published, tmp_path: Path, watchers) -> None:
    """Found in this session's sweep: a home that only `xps watch` ever ran had no home.json, so a
    deleted state.json read as "nothing enabled" (the patch and its version memory gone)."""
    capsule, _, home = published
    _enabled(home, tmp_path / "inbox", capsule, watchers)
    assert {"routing", "audit"} <= set(json.loads((home / "home.json").read_bytes())["stores"])
    DAMAGE[damage](home / store)
    out = xps(home, "watch", str(tmp_path / "inbox"), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert (store if store != "home.json" else "home.json") in out.stderr
    if store == "state.json":
        status_out = xps(home, "status", check=False)
        assert status_out.returncode == 2 and "state.json" in status_out.stderr


def test_a_full_disk_during_a_drop_is_a_typed_audited_refusal(published, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A real full file system: the watcher runs in its own mount namespace, where the home's
    capsule store is a 64 KiB tmpfs filled to the last page before the capsule arrives."""
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    (home / "capsules").mkdir(exist_ok=True)
    script = ('mount -t tmpfs -o size=64k xps-full "$1" && { head -c 1048576 /dev/zero > "$1/filler" 2>/dev/null; '
              'true; } && exec "$2" -m xpscerpto --home "$3" watch "$4"')
    unshare = ["unshare", "-m"] if os.getuid() == 0 else ["unshare", "-rm"]
    proc = subprocess.Popen([*unshare, "sh", "-c", script, "sh", str(home / "capsules"), sys.executable,
                             str(home), str(inbox)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("watching"), line + (proc.stderr.read() if proc.stderr else "")
        (inbox / NAME).write_bytes(capsule.read_bytes())
        reason = inbox / "rejected" / f"{NAME}.reason"
        wait_for(reason.exists, "the refusal to be filed")
        assert reason.read_text().startswith("io: ") and "capsule store: cannot write" in reason.read_text()
        assert "No space left on device" in reason.read_text()
        reject = [e for e in audit_events(home) if e["event"] == "PATCH_REJECT"][-1]
        assert reject["reason"] == "io"
        assert "PATCH_ENABLE" not in {e["event"] for e in audit_events(home)}
        live = status(home)
        assert live["routes"][OP] == "sodium" and live["active"] == []
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        proc.wait(20)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_trust_store_holds_the_committed_capsules_never_retires_them(  # type: ignore[no-untyped-def]
        damage: str, published, tmp_path: Path, watchers) -> None:
    # Found by a review: an unreadable trust.json at restart read as "nothing is pinned any
    # more", and restore() dropped every committed capsule from state.json.
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    sha = _enabled(home, inbox, capsule, watchers)
    trust = home / "trust.json"
    good = trust.read_bytes()
    DAMAGE[damage](trust)

    watchers.append(Watcher(home, inbox))
    live = status(home)
    assert live["routes"][OP] == "sodium"
    assert [r["sha256"] for r in live["refused"]] == [sha]
    reject = [e for e in audit_events(home) if e["event"] == "PATCH_REJECT" and e.get("phase") == "restore"][-1]
    assert reject["sha256"] == sha and reject["held"] is True and reject["reason"] == "io"
    assert "trust store" in reject["detail"]
    assert [a["sha256"] for a in json.loads((home / "state.json").read_bytes())["active"]] == [sha]

    # The operator restores trust.json: the next start routes the capsule again.
    watchers.pop().stop()
    trust.unlink(missing_ok=True)  # not write_bytes() through it: opening a FIFO to write waits for a reader
    trust.write_bytes(good)
    watchers.append(Watcher(home, inbox))
    wait_for(lambda: status(home)["routes"][OP] == "xchacha20-openssl", "the held capsule to route again")
    assert status(home)["refused"] == []
