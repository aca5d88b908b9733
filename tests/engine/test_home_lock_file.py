"""``HOME/home.lock`` that is no regular file: a typed refusal, and nothing created or opened elsewhere.

Review F2: the lock was opened with ``O_CREAT`` and without ``O_NOFOLLOW``, so a symlink planted
there made every ``xps`` command create (and lock) a file wherever it pointed, and a directory
there gave a raw ``IsADirectoryError``. Real homes, real ``xps`` processes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REMOVE = "; remove it so it is created again"


def xps(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with a keyring, a KEK and a journal (what `xps key list` creates on first use)."""
    h = tmp_path / "home"
    out = xps(h, "key", "list")
    assert out.returncode == 0, out.stderr
    assert stat.S_ISREG((h / "home.lock").lstat().st_mode)
    return h


def _files(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in home.iterdir() if p.is_file() and not p.is_symlink()}


def test_a_symlink_there_is_refused_and_nothing_is_created_where_it_points(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "created-by-xps"
    outside.parent.mkdir()
    (home / "home.lock").unlink()
    (home / "home.lock").symlink_to(outside)
    before = _files(home)
    out = xps(home, "key", "list")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr == (f"xps: error: XPS_ERR_POLICY: home lock {str(home / 'home.lock')!r}: cannot open "
                          f"(a symlink){REMOVE}\n")
    assert not os.path.lexists(outside)
    assert os.readlink(home / "home.lock") == str(outside)  # left for the operator to see and remove
    assert _files(home) == before


def test_a_symlink_to_an_existing_file_is_not_opened(home: Path, tmp_path: Path) -> None:
    """Root following a link to /etc/passwd opened it read-write; here a file of our own stands in."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chmod(victim, 0o644)
    before = victim.stat()
    (home / "home.lock").unlink()
    (home / "home.lock").symlink_to(victim)
    out = xps(home, "trust", "threshold", "1")  # a change: takes the home lock to record the home
    assert out.returncode == 2 and "cannot open (a symlink)" in out.stderr and "XPS_ERR_POLICY" in out.stderr
    after = victim.stat()
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (before.st_mode, before.st_size, before.st_mtime_ns)


def test_a_directory_there_is_a_typed_refusal_not_a_raw_errno(home: Path) -> None:
    (home / "home.lock").unlink()
    (home / "home.lock").mkdir()
    out = xps(home, "key", "list")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "IsADirectoryError" not in out.stderr and "XPS_ERR_INTERNAL" not in out.stderr
    assert out.stderr == (f"xps: error: XPS_ERR_POLICY: home lock {str(home / 'home.lock')!r}: cannot open "
                          f"(a directory){REMOVE}\n")


def test_a_fifo_there_is_refused_without_hanging(home: Path) -> None:
    (home / "home.lock").unlink()
    os.mkfifo(home / "home.lock")
    out = xps(home, "key", "list")  # xps() times out rather than hang
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr == (f"xps: error: XPS_ERR_POLICY: home lock {str(home / 'home.lock')!r}: cannot lock "
                          f"(not a regular file){REMOVE}\n")


def test_a_first_run_on_an_empty_home_with_a_planted_symlink_creates_nothing_elsewhere(tmp_path: Path) -> None:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    outside = tmp_path / "outside-lock"
    (h / "home.lock").symlink_to(outside)
    out = xps(h, "key", "list")
    assert out.returncode == 2 and "cannot open (a symlink)" in out.stderr
    assert not os.path.lexists(outside)
    assert not (h / "home.json").exists() and not (h / "keyring.db").exists()


def test_once_removed_the_lock_is_created_again_as_a_private_file(home: Path) -> None:
    (home / "home.lock").unlink()
    (home / "home.lock").mkdir()
    assert xps(home, "key", "list").returncode == 2
    (home / "home.lock").rmdir()
    out = xps(home, "key", "list")
    assert out.returncode == 0, out.stderr
    mode = (home / "home.lock").lstat().st_mode
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600
