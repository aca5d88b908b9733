"""``xps key rewrap FILE…`` named a FIFO, a device, a directory or a huge file (found by a review).

The blob files were read with ``Path.read_bytes()``: a FIFO blocked the command for ever (opening
one waits for a writer), ``/dev/zero`` filled memory. Every file now goes through
``read_stored``: refused by what it is, before anything of it is read. The commands run as real
subprocesses with a timeout (a hang fails the test) and an address-space limit (a read of
``/dev/zero`` fails it instead of filling the machine's memory).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from xpscerpto.keyring.cli import MAX_BLOB_FILE

#: Seconds a refused rewrap may take; the old code never returned on a FIFO.
TIMEOUT = 60
#: Address space of each command: room for the interpreter, far below what /dev/zero would take.
MEMORY = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def xps(home: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *args], input=stdin,
                          capture_output=True, timeout=TIMEOUT, check=False, preexec_fn=_limit_memory)


def ok(out: subprocess.CompletedProcess[bytes]) -> str:
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def _key_id(blob: bytes) -> str:
    return blob[1:9].hex()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


def _oversized(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(MAX_BLOB_FILE + 1)  # sparse: no disk used


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "not a regular file"),
    "symlink to /dev/zero": (_dev_zero, "not a regular file"),
    "directory": (_directory, "not a regular file"),
    "oversized": (_oversized, f"larger than {MAX_BLOB_FILE} bytes"),
}


def _refusal(out: subprocess.CompletedProcess[bytes]) -> str:
    """The one error line of a refused command (no traceback, exit 2)."""
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A home whose key ``k`` was rotated, and three blobs of its retired version 1."""
    root = tmp_path_factory.mktemp("rotated")
    home = root / "home"
    ok(xps(home, "key", "create", "k"))
    blobs = [xps(home, "key", "encrypt", "k", "--aad", "a", stdin=b"secret %d" % i).stdout for i in range(3)]
    ok(xps(home, "key", "rotate", "k"))
    return home, blobs


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes], str]:
    """A home with revoked key ``old`` and active ``new``: three blobs of ``old``, and ``new``'s id."""
    root = tmp_path_factory.mktemp("revoked")
    home = root / "home"
    ok(xps(home, "key", "create", "old"))
    new = ok(xps(home, "key", "create", "new")).strip()
    blobs = [xps(home, "key", "encrypt", "old", "--aad", "a", stdin=b"secret %d" % i).stdout for i in range(3)]
    ok(xps(home, "key", "revoke", "old", "--reason", "incident"))
    return home, blobs, new


def _files(folder: Path, blobs: list[bytes]) -> list[Path]:
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"b{i}"
        path.write_bytes(blob)
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_rewrap_refuses_a_file_that_is_not_a_sane_blob_file_and_writes_nothing(
        tmp_path: Path, rotated: tuple[Path, list[bytes]], kind: str) -> None:
    home, blobs = rotated
    make, why = HOSTILE[kind]
    first, last = _files(tmp_path, blobs[:2])
    bad = tmp_path / "bad"
    make(bad)
    line = _refusal(xps(home, "key", "rewrap", str(first), str(bad), str(last), "--aad", "a"))
    assert line == f"xps: error: XPS_ERR_POLICY: rewrap: file {str(bad)!r}: cannot read ({why})"
    # All or nothing: the file before the bad one is not rewritten either.
    assert first.read_bytes() == blobs[0] and last.read_bytes() == blobs[1]


def test_rewrap_refuses_dev_zero_named_directly(tmp_path: Path, rotated: tuple[Path, list[bytes]]) -> None:
    home, blobs = rotated
    (first,) = _files(tmp_path, blobs[:1])
    line = _refusal(xps(home, "key", "rewrap", str(first), "/dev/zero", "--aad", "a"))
    assert line == "xps: error: XPS_ERR_POLICY: rewrap: file '/dev/zero': cannot read (not a regular file)"
    assert first.read_bytes() == blobs[0]


def test_rewrap_still_rewraps_regular_blob_files(tmp_path: Path, rotated: tuple[Path, list[bytes]]) -> None:
    home, blobs = rotated
    paths = _files(tmp_path, blobs)
    assert "rewrapped 3 of 3 file(s)" in ok(xps(home, "key", "rewrap", *map(str, paths), "--aad", "a"))
    for path, blob in zip(paths, blobs, strict=True):
        assert path.read_bytes()[9:13] == (2).to_bytes(4, "big")
        assert ok(xps(home, "key", "decrypt", "--aad", "a", stdin=path.read_bytes())) != ""
        assert path.read_bytes() != blob


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero"])
def test_rewrap_from_revoked_stops_at_the_bad_file_and_resumes(
        tmp_path: Path, revoked: tuple[Path, list[bytes], str], kind: str) -> None:
    home, blobs, new = revoked
    first, second = _files(tmp_path, blobs[:2])
    make, why = HOSTILE[kind]
    bad = tmp_path / "bad"
    make(bad)
    cmd = ["key", "rewrap", "--from-revoked", "old", "--to", "new", "--reason", "incident", "--aad", "a"]
    line = _refusal(xps(home, *cmd, str(first), str(bad), str(second)))
    assert line == (f"xps: error: XPS_ERR_POLICY: rewrap: file {str(bad)!r}: cannot read ({why}); "
                    "1 file(s) before it were rewrapped (run again to resume)")
    # As documented: the files before the bad one are done, the ones after it untouched.
    assert _key_id(first.read_bytes()) == new
    assert second.read_bytes() == blobs[1]
    bad.unlink()  # the operator takes the wrong path out and runs the command again
    assert "rewrapped 1 of 2 file(s)" in ok(xps(home, *cmd, str(first), str(second)))
    assert _key_id(second.read_bytes()) == new
    for path, plain in ((first, b"secret 0"), (second, b"secret 1")):
        assert xps(home, "key", "decrypt", "--aad", "a", stdin=path.read_bytes()).stdout == plain


def test_the_bound_is_in_the_help() -> None:
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "key", "rewrap", "--help"], capture_output=True,
                         timeout=TIMEOUT, check=False)
    assert "at most 1 GiB" in " ".join(out.stdout.decode().split())

