"""Temp files a writer killed mid-write left behind: removed once stale, and nothing else ever.

The kills are real: a child process runs ``xps init`` (or one ``atomic_write``) and is SIGKILLed
by this process while it holds its temp file. The only thing injected is *where* it stops: the
child's ``os.replace`` / ``os.link`` / ``os.unlink`` of the temp named below signals the parent
and waits to be killed, so the kill lands at that exact point every run.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from xpscerpto._atomic import STALE_TEMP_SECONDS, atomic_write, create_exclusive, sweep_stale_temps, temp_target
from xpscerpto.home import Home

OLD = time.time() - STALE_TEMP_SECONDS - 60  # an mtime older than the threshold


def _age(path: Path) -> None:
    os.utime(path, (OLD, OLD), follow_symlinks=False)


# argv: kill point (replace|link|unlink), temp-name prefix, fd to signal on, then the job:
#   init HOME        -> `xps --home HOME init`
#   write FILE       -> atomic_write(FILE, 1 MiB)
PAUSER = """
import os, signal, sys
point, prefix, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
orig = getattr(os, point)
def paused(*a, **k):
    if os.path.basename(os.fspath(a[0])).startswith(prefix):
        os.write(fd, b"!")
        while True:
            signal.pause()  # the parent SIGKILLs us here
    return orig(*a, **k)
setattr(os, point, paused)
if sys.argv[4] == "init":
    from xpscerpto.cli import main
    main(["--home", sys.argv[5], "init"])
else:
    from pathlib import Path
    from xpscerpto._atomic import atomic_write
    atomic_write(Path(sys.argv[5]), b"\\xa5" * (1 << 20))
os.write(fd, b"done")
"""


def _kill_at(point: str, prefix: str, *job: str) -> None:
    """Run ``job`` in a child, SIGKILL it when it reaches ``point`` for a temp named ``prefix…``."""
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", PAUSER, point, prefix, str(w), *job], pass_fds=(w,),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 120)
        got = os.read(r, 1) if ready else b""
        if got != b"!":
            child.kill()
            pytest.fail(f"the child never reached {point} of {prefix}*: {child.communicate()[1].decode()[-2000:]}")
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    finally:
        os.close(r)
        if child.poll() is None:
            child.kill()
        child.wait(60)
        assert child.stderr is not None
        child.stderr.close()


def _temps(folder: Path, target: str) -> list[Path]:
    return [folder / n for n in os.listdir(folder) if temp_target(n) == target]


@pytest.mark.parametrize(("point", "target", "size"), [
    ("link", "audit.key", 32),      # create_exclusive: the audit signing seed, before its link
    ("unlink", "audit.key", 32),    # create_exclusive: after the link, the temp still a second name
    ("replace", "home.json", None),  # atomic_write (mkstemp's spelling): the home's record
], ids=["audit-key-before-link", "audit-key-after-link", "home-json-before-replace"])
def test_a_killed_writers_temp_is_removed_by_the_next_home_open_once_stale(
        tmp_path: Path, point: str, target: str, size: int | None) -> None:
    home = tmp_path / "home"
    _kill_at(point, f".{target}.", "init", str(home))
    (temp,) = _temps(home, target)
    st = temp.lstat()
    assert st.st_size == (size or st.st_size) > 0 and st.st_mode & 0o777 == 0o600
    secret = temp.read_bytes()
    linked = point == "unlink"
    assert (home / target).exists() == linked  # killed before (or after) it was published
    others = {n: (home / n).lstat().st_ino for n in os.listdir(home) if n != temp.name}

    Home.resolve(home)  # fresh: maybe a live writer's, so left alone
    assert temp.exists() and temp.read_bytes() == secret

    _age(temp)
    Home.resolve(home)
    assert not temp.exists() and not _temps(home, target)
    assert {n: (home / n).lstat().st_ino for n in os.listdir(home)} == others  # nothing else touched
    if linked:  # the temp was the audit key's second name: removing it left the key as it was
        assert (home / target).read_bytes() == secret and (home / target).stat().st_nlink == 1


def test_a_killed_rewrite_of_a_file_outside_the_home_is_cleaned_at_its_next_write(tmp_path: Path) -> None:
    """What `xps key rewrap` does to the caller's blob files: atomic_write beside them."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"old")
    _kill_at("replace", ".blob.", "write", str(blob))
    (temp,) = _temps(tmp_path, "blob")
    assert temp.stat().st_size == 1 << 20 and blob.read_bytes() == b"old"
    _age(temp)
    planted = {n: tmp_path / n for n in (".other.abcdefgh.tmp", ".blob.0123456789abcdef.tmp",
                                          ".blob.zzzzzzzz.tmp")}
    for p in planted.values():
        p.write_bytes(b"x")
    _age(planted[".other.abcdefgh.tmp"])
    _age(planted[".blob.0123456789abcdef.tmp"])

    atomic_write(blob, b"new")
    assert blob.read_bytes() == b"new"
    assert not temp.exists() and not planted[".blob.0123456789abcdef.tmp"].exists()  # stale, of this name
    assert planted[".blob.zzzzzzzz.tmp"].exists()   # fresh: maybe a live writer's
    assert planted[".other.abcdefgh.tmp"].exists()  # another file's: outside the home, not ours to judge


def test_create_exclusive_removes_stale_temps_of_its_name(tmp_path: Path) -> None:
    stale = tmp_path / f".kek.key.{os.urandom(8).hex()}.tmp"
    stale.write_bytes(b"k" * 32)
    _age(stale)
    assert create_exclusive(tmp_path / "kek.key", b"K" * 32)
    assert not stale.exists() and (tmp_path / "kek.key").read_bytes() == b"K" * 32


def test_the_pattern_matches_every_name_the_writers_make(tmp_path: Path) -> None:
    """Both spellings, from the same calls _atomic makes (mkstemp's alphabet is CPython's to change)."""
    for _ in range(200):
        fd, name = tempfile.mkstemp(dir=tmp_path, prefix=".state.json.", suffix=".tmp")
        os.close(fd)
        assert temp_target(Path(name).name) == "state.json", name
        assert temp_target(f".audit.key.{os.urandom(8).hex()}.tmp") == "audit.key"
    assert temp_target(".a.b.c.abcdefgh.tmp") == "a.b.c"


@pytest.mark.parametrize("name", [
    ".x.abcdefg.tmp", ".x.abcdefghi.tmp", ".x.ABCDEFGH.tmp", ".x.abc-efgh.tmp", "x.abcdefgh.tmp",
    ".x.abcdefgh.tmpx", ".x.abcdefgh.part", ".x.abcdefgh", ".abcdefgh.tmp", "..abcdefgh.tmp",
    ".x.0123456789ab.tmp",         # capsules/watch.py's own temps (12 hex digits): not ours
    ".x.0123456789ABCDEF.tmp", ".x.0123456789abcdeg.tmp", ".x.0123456789abcdef0.tmp", ".hidden", ".tmp",
])
def test_a_name_not_spelled_exactly_like_ours_is_left_alone(tmp_path: Path, name: str) -> None:
    assert temp_target(name) is None
    f = tmp_path / name
    f.write_bytes(b"user data")
    _age(f)
    assert sweep_stale_temps(tmp_path) == []
    Home.resolve(tmp_path)
    assert f.read_bytes() == b"user data"


def test_a_symlink_named_like_a_temp_is_neither_followed_nor_removed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "elsewhere.key"
    secret.write_bytes(b"S" * 32)
    _age(secret)
    home = Home.resolve(tmp_path / "home")
    home.initialise(policy={})  # a home: every temp-shaped name in it is looked at
    links = [home.root / ".audit.key.0123456789abcdef.tmp", home.root / ".home.json.abcdefgh.tmp",
             home.capsules / ".x.capsule.abcdefgh.tmp"]
    for link in links:
        link.symlink_to(secret)
        _age(link)
    dangling = home.root / ".kek.key.zzzzzzzz.tmp"
    dangling.symlink_to(tmp_path / "nowhere")
    _age(dangling)
    with caplog.at_level(logging.WARNING, logger="xpscerpto._atomic"):
        assert Home.resolve(home.root).sweep_stale_temps() == []
    for link in [*links, dangling]:
        assert link.is_symlink()
    assert secret.read_bytes() == b"S" * 32 and secret.stat().st_nlink == 1
    assert "not a regular file" in caplog.text and ".audit.key.0123456789abcdef.tmp" in caplog.text
    assert "SSSS" not in caplog.text


def test_a_folder_or_fifo_named_like_a_temp_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / ".state.json.abcdefgh.tmp"
    folder.mkdir()
    (folder / "inside").write_bytes(b"keep")
    fifo = tmp_path / ".trust.json.0123456789abcdef.tmp"
    os.mkfifo(fifo)  # opening it would block: the sweep must not
    for p in (folder / "inside", folder, fifo):
        _age(p)
    assert sweep_stale_temps(tmp_path) == []
    assert (folder / "inside").read_bytes() == b"keep" and fifo.exists()


def test_the_home_open_sweeps_capsules_and_recorded_stores_elsewhere_by_name(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home")
    home.initialise(policy={})
    outside = tmp_path / "secrets"
    outside.mkdir()
    (outside / "kek.key").write_bytes(b"K" * 32)
    home.register_store("kek", str(outside / "kek.key"))
    planted = [home.capsules / f".{'0' * 64}.capsule.abcdefgh.tmp", outside / f".kek.key.{os.urandom(8).hex()}.tmp",
               outside / ".unrelated.abcdefgh.tmp", home.capsules / "sub"]
    for p in planted[:3]:
        p.write_bytes(b"x")
    (planted[3]).mkdir()
    (planted[3] / ".deep.abcdefgh.tmp").write_bytes(b"x")  # not recursive: only where _atomic writes
    for p in [*planted, planted[3] / ".deep.abcdefgh.tmp"]:
        _age(p)
    assert sorted(p.name for p in home.sweep_stale_temps()) == sorted(p.name for p in planted[:2])
    assert not any(p.exists() for p in planted[:2])
    assert (outside / ".unrelated.abcdefgh.tmp").exists() and (planted[3] / ".deep.abcdefgh.tmp").exists()
    assert (outside / "kek.key").read_bytes() == b"K" * 32


def test_concurrent_sweeps_race_without_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = {f".f{i}.json.{os.urandom(8).hex()}.tmp" for i in range(300)}
    for n in names:
        (tmp_path / n).write_bytes(b"x")
        _age(tmp_path / n)
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        results.append(sweep_stale_temps(tmp_path))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="xpscerpto._atomic"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    flat = [n for r in results for n in r]
    assert len(results) == 4 and sorted(flat) == sorted(names)  # each removed once; vanished ones skipped
    assert not caplog.records and not os.listdir(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_temp_of_another_user_is_reported_not_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / ".audit.key.0123456789abcdef.tmp"
    f.write_bytes(b"s" * 32)
    os.chown(f, 65534, 65534)
    _age(f)
    with caplog.at_level(logging.WARNING, logger="xpscerpto._atomic"):
        assert sweep_stale_temps(tmp_path) == []
    assert f.exists() and "uid 65534" in caplog.text


def test_a_sweep_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert sweep_stale_temps(tmp_path / "missing") == []  # vanished: silent
    assert not caplog.records
    (tmp_path / "file").write_bytes(b"")
    assert sweep_stale_temps(tmp_path / "file") == []  # not a folder: silent (the write reports it)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="xpscerpto._atomic"):
        assert sweep_stale_temps(f"{tmp_path}/bad\0name") == []  # unlistable: reported, not raised
    assert "cannot list" in caplog.text


def test_a_folder_that_is_not_a_home_is_not_swept_beyond_the_homes_own_record(tmp_path: Path) -> None:
    """``--home`` pointed at someone's folder: their temp-shaped files stay until it becomes a home."""
    theirs = [tmp_path / ".notes.txt.abcdefgh.tmp", tmp_path / f".draft.{os.urandom(8).hex()}.tmp",
              tmp_path / "capsules" / ".x.capsule.abcdefgh.tmp"]
    ours = tmp_path / ".home.json.abcdefgh.tmp"  # an `xps init` killed before its record landed
    (tmp_path / "capsules").mkdir()
    for p in [*theirs, ours]:
        p.write_bytes(b"data")
        _age(p)
    home = Home.resolve(tmp_path)
    assert all(p.read_bytes() == b"data" for p in theirs) and not ours.exists()

    home.initialise(policy={})  # now it is a home: every temp-shaped name in it is ours
    assert sorted(p.name for p in home.sweep_stale_temps()) == sorted(p.name for p in theirs)
    assert not any(p.exists() for p in theirs)


def test_a_temp_dated_in_the_future_is_stale_not_kept_for_ever(tmp_path: Path) -> None:
    """A temp whose mtime is ahead (another host's clock, a clock set back) was never removed."""
    ahead = tmp_path / ".state.json.abcdefgh.tmp"
    near = tmp_path / ".trust.json.abcdefgh.tmp"
    for p, offset in ((ahead, STALE_TEMP_SECONDS + 60), (near, 30)):
        p.write_bytes(b"x")
        t = time.time() + offset
        os.utime(p, (t, t))
    assert sweep_stale_temps(tmp_path) == [ahead.name]
    assert near.exists()  # a few seconds ahead: maybe a live writer's


WRITE_AS_NOBODY = """
import os, sys
from pathlib import Path
from xpscerpto._atomic import atomic_write  # imported first: nobody cannot read root's Python
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
atomic_write(Path(sys.argv[1]), b"new", 0o600)
print("written")
"""


def test_a_write_into_a_folder_it_cannot_read_succeeds_and_says_it_was_not_synced(tmp_path: Path) -> None:
    """The folder's fsync needs read permission: after the rename had replaced the file, the
    write raised PermissionError as if it had failed. Root is not refused by modes, so as root
    the writer is a child running as nobody."""
    root = Path(tempfile.mkdtemp(prefix="xps-wx-"))
    try:
        folder = root / "wx"
        folder.mkdir()
        target = folder / "blob"
        target.write_bytes(b"old")
        if os.geteuid() == 0:
            os.chmod(root, 0o711)
            for p in (folder, target):
                os.chown(p, 65534, 65534)
        os.chmod(folder, 0o300)  # write and search, no read
        run = subprocess.run([sys.executable, "-c", WRITE_AS_NOBODY, str(target)], check=False,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout == "written\n", run.stderr[-2000:]
        assert "cannot open folder" in run.stderr and "may not survive a power loss" in run.stderr
        os.chmod(folder, 0o700)
        assert target.read_bytes() == b"new"
        assert [n for n in os.listdir(folder) if n != "blob"] == []  # no temp left behind
    finally:
        if (root / "wx").exists():
            os.chmod(root / "wx", 0o700)
        shutil.rmtree(root, ignore_errors=True)
