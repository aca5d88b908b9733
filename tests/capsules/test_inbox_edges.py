"""The watched folder at its edges, over the real ``xps watch`` (issue 8 items 6 and 8)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .test_cli_service import OP, Watcher, audit_events, published, status, wait_for, watchers, xps

__all__ = ["published", "watchers"]


def _inbox_rejects(home: Path) -> list[dict]:
    return [e for e in audit_events(home) if e["event"] == "PATCH_REJECT" and e.get("phase") == "inbox"]


def test_a_symlinked_outcome_folder_is_never_written_through(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    _, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (inbox / "rejected").rmdir()
    (inbox / "rejected").symlink_to(elsewhere)
    (inbox / "junk.capsule").write_bytes(b"not a capsule")
    wait_for(lambda: any("outcome folder rejected/" in e.get("detail", "") for e in _inbox_rejects(home)),
             "the refused filing to be audited")
    assert list(elsewhere.iterdir()) == []
    assert (inbox / "junk.capsule").exists()  # left where the operator put it
    assert watchers[0].proc.poll() is None


def test_a_255_byte_name_is_filed_under_a_shortened_name(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    _, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox))
    name = "a" * (255 - len(".capsule")) + ".capsule"
    (inbox / name).write_bytes(b"not a capsule")
    wait_for(lambda: not (inbox / name).exists(), "the long name to be filed")
    filed = sorted(p.name for p in (inbox / "rejected").iterdir())
    assert len(filed) == 2 and all(len(n.encode()) <= 255 for n in filed)
    reason = next(p for p in (inbox / "rejected").iterdir() if p.name.endswith(".reason"))
    assert reason.read_text().split(":")[0] in ("unknown-format", "malformed")


@pytest.mark.parametrize("kind", ["too-large", "symlink", "fifo"])
def test_refusals_by_the_folder_itself_are_audited(kind: str, published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    _, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox))
    target = inbox / f"x-{kind}.capsule"
    if kind == "too-large":
        target.write_bytes(os.urandom(1))
        with target.open("r+b") as f:
            f.truncate(128 * 1024 * 1024)  # sparse: larger than the default 64 MiB limit
    elif kind == "symlink":
        (tmp_path / "real.capsule").write_bytes(b"x")
        target.symlink_to(tmp_path / "real.capsule")
    else:
        os.mkfifo(target)
    wait_for(lambda: any(e.get("source") == target.name for e in _inbox_rejects(home)), "the audit record")
    rec = next(e for e in _inbox_rejects(home) if e.get("source") == target.name)
    assert rec["reason"] == ("too-large" if kind == "too-large" else "not-regular-file")
    assert status(home)["routes"][OP] == "sodium"


def test_audit_tail_escapes_control_characters_in_names(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    _, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox))
    forged = "evil\n     99 2026-01-01T00:00:00Z PATCH_ENABLE         name=trusted\x1b[2K.capsule"
    (tmp_path / "real").write_bytes(b"x")
    (inbox / forged).symlink_to(tmp_path / "real")
    wait_for(lambda: any(e.get("source") == forged for e in _inbox_rejects(home)), "the audit record")
    time.sleep(0.2)
    out = xps(home, "audit", "tail", "-n", "50").stdout
    assert "\x1b" not in out
    assert not any(line.lstrip().startswith("99 ") for line in out.splitlines())
    assert "evil\\n" in out
