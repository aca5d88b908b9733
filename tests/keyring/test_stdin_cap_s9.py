"""Review s9 F10: ``xps key encrypt|decrypt`` read stdin within a bound, and running out of memory
is one ``XPS_ERR_INTERNAL`` line, never a traceback.

The cap is 1 GiB (``MAX_BLOB_FILE``, the bound of ``key rewrap``); piping more than that through
a test would take a gigabyte of this machine's memory, so the in-process cases lower the module
constant (read at call time) and feed real files on stdin. The endless case is the real thing:
``/dev/zero`` on stdin of the real command under an address-space limit.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from xpscerpto.cli.main import main, run_command
from xpscerpto.keyring import cli as keyring_cli

CAP = 64 * 1024


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    assert main(["--home", str(h), "key", "create", "k"]) == 0
    monkeypatch.setattr(keyring_cli, "MAX_BLOB_FILE", CAP)
    return h


_OPENED: list[IO[str]] = []


@pytest.fixture(autouse=True)
def _close_files() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _with_stdin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: bytes) -> Path:
    """``data`` as the process's stdin (a real file), and a real file as its stdout; the stdout path."""
    src, dst = tmp_path / "stdin.bin", tmp_path / "stdout.bin"
    src.write_bytes(data)
    stdin, stdout = open(src, encoding="utf-8"), open(dst, "w", encoding="utf-8")  # noqa: SIM115 -- closed at teardown
    _OPENED.extend((stdin, stdout))
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    return dst


@pytest.mark.parametrize("argv", [["key", "encrypt", "k"], ["key", "decrypt"]])
def test_stdin_beyond_the_cap_is_refused_naming_stdin(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    dst = _with_stdin(monkeypatch, tmp_path, b"\0" * (CAP + 1))
    assert main(["--home", str(home), *argv]) == 2
    sys.stdout.flush()
    err = capsys.readouterr().err
    assert err == (f"xps: error: XPS_ERR_POLICY: stdin: more than {CAP} bytes, the most `xps key encrypt|decrypt` "
                   "reads\n")
    assert dst.read_bytes() == b""


def test_stdin_at_the_cap_round_trips(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext = bytes(range(256)) * (CAP // 256)
    assert len(plaintext) == CAP
    blob_file = _with_stdin(monkeypatch, tmp_path, plaintext)
    monkeypatch.setattr(keyring_cli, "MAX_BLOB_FILE", 1 << 30)  # the blob is larger than its plaintext
    assert main(["--home", str(home), "key", "encrypt", "k"]) == 0
    sys.stdout.flush()
    blob = blob_file.read_bytes()
    monkeypatch.setattr(keyring_cli, "MAX_BLOB_FILE", len(blob))
    (tmp_path / "in").mkdir()
    out = _with_stdin(monkeypatch, tmp_path / "in", blob)
    assert main(["--home", str(home), "key", "decrypt"]) == 0
    sys.stdout.flush()
    assert out.read_bytes() == plaintext


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))


@pytest.mark.parametrize("argv", [["key", "encrypt", "k"], ["key", "decrypt"]])
def test_endless_stdin_under_a_memory_limit_is_one_line(tmp_path: Path, argv: list[str]) -> None:
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), "key", "create", "k"], check=True,
                   capture_output=True, timeout=120)
    with open("/dev/zero", "rb") as zero:
        out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *argv], stdin=zero,
                             capture_output=True, timeout=300, check=False, preexec_fn=_limit_memory)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("xps: error: XPS_ERR_INTERNAL: MemoryError: out of memory"), err
    assert out.stdout == b""


def test_run_command_turns_memory_error_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def exhausted() -> int:
        raise MemoryError

    assert run_command("xps", exhausted) == 2
    captured = capsys.readouterr()
    assert captured.err == ("xps: error: XPS_ERR_INTERNAL: MemoryError: out of memory (an input too large for the "
                            "memory this process may use?)\n")
    assert captured.out == ""
