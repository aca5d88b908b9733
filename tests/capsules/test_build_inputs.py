"""``make_capsule.py build SRC`` given a source holding a FIFO, a device or huge files (found by a review).

``capsule.toml`` was read with ``read_text()`` and payload files with ``read_bytes()``: a FIFO
in place of ``capsule.toml`` blocked the build for ever, a symlink to ``/dev/zero`` filled
memory, a FIFO among the payload was silently left out, and payload over the format's limits
made a capsule file that every engine refuses. They are now refused, typed, before anything is
written. The tool runs as a real subprocess with a timeout (a hang fails the test) and an
address-space limit (a read of ``/dev/zero`` fails it instead of filling the machine's memory).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto.capsules.format import Limits

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "capsules" / "demo-capsule"
LIMITS = Limits()

#: Seconds a refused build may take; the old code never returned on a FIFO.
TIMEOUT = 60
#: Address space of the tool: room for the interpreter, far below what /dev/zero would take.
MEMORY = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "make_capsule.py"), *args], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False, preexec_fn=_limit_memory)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stem = tmp_path_factory.mktemp("keys") / "alice"
    out = tool("keygen", "--out", str(stem))
    assert out.returncode == 0, out.stderr
    return stem.with_name("alice.key")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    shutil.copytree(DEMO, path)
    return path


def _sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def _refused(src: Path, key: Path, out: Path) -> str:
    """The one error line of a refused build: exit 2, no traceback, no capsule file written."""
    proc = tool("build", str(src), "--key", str(key), "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
    return proc.stderr.strip()


def test_a_fifo_as_capsule_toml_is_refused_without_blocking(src: Path, key: Path, tmp_path: Path) -> None:
    (src / "capsule.toml").unlink()
    os.mkfifo(src / "capsule.toml")
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line == (f"make_capsule.py: error: XPS_ERR_UPDATE: source: {src / 'capsule.toml'}: "
                    "not a regular file")


def test_capsule_toml_linked_to_dev_zero_is_refused_unread(src: Path, key: Path, tmp_path: Path) -> None:
    (src / "capsule.toml").unlink()
    (src / "capsule.toml").symlink_to("/dev/zero")
    assert _refused(src, key, tmp_path / "x.capsule").endswith(f"source: {src / 'capsule.toml'}: not a regular file")


def test_an_oversized_capsule_toml_is_refused(src: Path, key: Path, tmp_path: Path) -> None:
    toml = src / "capsule.toml"
    toml.write_bytes(toml.read_bytes() + b"#" * LIMITS.max_manifest_bytes)
    assert _refused(src, key, tmp_path / "x.capsule").endswith(
        f"source: {toml}: larger than {LIMITS.max_manifest_bytes} bytes")


def test_a_capsule_toml_that_is_not_utf8_is_refused(src: Path, key: Path, tmp_path: Path) -> None:
    toml = src / "capsule.toml"
    toml.write_bytes(toml.read_bytes() + b"# \xff\xfe\n")
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line == "make_capsule.py: error: XPS_ERR_UPDATE: capsule.toml: not UTF-8 text"


@pytest.mark.parametrize("where", ["helper.py", "kat/extra.json"])
def test_a_fifo_in_the_payload_is_refused_not_left_out(src: Path, key: Path, tmp_path: Path, where: str) -> None:
    os.mkfifo(src / where)
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line.endswith(f"source: {where}: not a regular file; capsules carry regular files only")


def test_a_payload_file_over_the_member_limit_is_refused(src: Path, key: Path, tmp_path: Path) -> None:
    _sparse(src / "big.bin", LIMITS.max_file_bytes + 1)
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line.endswith(f"source: big.bin: larger than {LIMITS.max_file_bytes} bytes")


def test_payload_over_the_total_limit_is_refused(src: Path, key: Path, tmp_path: Path) -> None:
    for i in range(LIMITS.max_total_bytes // LIMITS.max_file_bytes + 1):
        _sparse(src / f"part{i}.bin", LIMITS.max_file_bytes)
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line.endswith(f"source: payload larger than {LIMITS.max_total_bytes} bytes in all")


def test_more_payload_files_than_the_entry_limit_are_refused(src: Path, key: Path, tmp_path: Path) -> None:
    # The demo has two payload files; the manifest and the signatures are members too.
    for i in range(LIMITS.max_entries - 2 - 2 + 1):
        (src / f"f{i:03}.txt").write_text("x")
    line = _refused(src, key, tmp_path / "x.capsule")
    assert line.endswith(f"source: more than {LIMITS.max_entries - 2} payload files")


def test_a_source_at_the_entry_limit_still_builds(src: Path, key: Path, tmp_path: Path) -> None:
    for i in range(LIMITS.max_entries - 2 - 2):
        (src / f"f{i:03}.txt").write_text("x")
    out = tmp_path / "x.capsule"
    proc = tool("build", str(src), "--key", str(key), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{LIMITS.max_entries - 2} files" in proc.stdout
    inspected = tool("inspect", str(out))
    assert inspected.returncode == 0, inspected.stderr


def test_the_demo_source_still_builds_and_verifies(src: Path, key: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.capsule"
    proc = tool("build", str(src), "--key", str(key), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    verified = tool("verify", str(out), "--trust", str(key.with_suffix(".pub")))
    assert verified.returncode == 0, verified.stderr
    assert "2 payload files verified" in verified.stdout


def test_a_compression_bomb_is_refused_before_the_capsule_is_written(src: Path, key: Path, tmp_path: Path) -> None:
    # Within every size limit, but deflated far beyond the reader's ratio: the engine would
    # refuse the capsule, so the build must not leave one behind.
    (src / "zeros.bin").write_bytes(bytes(LIMITS.max_file_bytes))
    line = _refused(src, key, tmp_path / "x.capsule")
    assert "compression ratio above" in line
