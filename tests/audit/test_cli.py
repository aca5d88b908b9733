"""``terminal_safe``: whatever a journal field holds, one printable line comes out (issue 8 item 8)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xpscerpto.audit.cli import _anchor, terminal_safe
from xpscerpto.audit.journal import GENESIS
from xpscerpto.errors import PolicyError


@given(st.text())
def test_any_text_becomes_one_printable_line(text: str) -> None:
    out = terminal_safe(text)
    assert out.isprintable()
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    if text.isprintable():
        assert out == text  # nothing to escape: unchanged


def test_forged_lines_and_escape_sequences_are_shown_not_obeyed() -> None:
    forged = "a.capsule\n    99 2026-01-01T00:00:00Z PATCH_ENABLE\x1b[2K\u202e"
    assert terminal_safe(forged) == "a.capsule\\n    99 2026-01-01T00:00:00Z PATCH_ENABLE\\x1b[2K\\u202e"


# --- ``xps audit`` on hostile input (review findings) ---------------------------------------------

def xps(home: Path, *args: str | Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    out = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def refused(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("xps: error: "), out.stderr
    for text in expected:
        assert text in out.stderr, (text, out.stderr)
    return out.stderr


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("template") / "home"
    assert xps(home, "init").returncode == 0
    return home


@pytest.fixture
def home(initialised: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "home"
    shutil.copytree(initialised, copy)
    yield copy


def test_an_anchor_seq_must_be_ascii_digits_and_seq_0_the_genesis_hash() -> None:
    # SUPERSCRIPT TWO: isdigit() but int() refuses it (untyped ValueError); ARABIC-INDIC ONE: int() says 1.
    two, one = "\u00b2", "\u0661"
    for text in (two + ":" + "a" * 64, one + ":" + "a" * 64, "0:" + "a" * 64, "+1:" + "a" * 64, "1 :" + "a" * 64):
        with pytest.raises(PolicyError, match="--anchor") as ei:
            _anchor(text)
        assert two not in str(ei.value) and one not in str(ei.value) and "a" * 64 not in str(ei.value)
    assert _anchor("0:" + GENESIS) == (0, GENESIS)
    assert _anchor("12:" + "ab" * 32) == (12, "ab" * 32)


def test_verify_refuses_a_bad_anchor_in_one_line(home: Path) -> None:
    refused(xps(home, "audit", "verify", "--anchor", "\u00b2:" + "a" * 64), "XPS_ERR_POLICY",
            "--anchor: expected SEQ:HASH")
    refused(xps(home, "audit", "verify", "--anchor", "0:" + "a" * 64), "XPS_ERR_POLICY", "seq 0")
    assert xps(home, "audit", "verify", "--anchor", "0:" + GENESIS).returncode == 0


def test_verify_and_tail_of_a_deeply_nested_line(home: Path) -> None:
    # Found by a review: both printed a RecursionError traceback.
    with (home / "audit.log").open("ab") as f:
        f.write(b"[" * 60_000 + b"\n")
    refused(xps(home, "audit", "verify"), "malformed line", "nested too deeply")
    out = xps(home, "audit", "tail")
    assert out.returncode == 0 and "HOME_INIT" in out.stdout


def test_a_command_without_the_writers_config_keeps_the_journals_interval(home: Path, tmp_path: Path) -> None:
    # Found by a review: after one command run without --config, `xps audit verify` refused a
    # genuine journal under every interval.
    config = tmp_path / "c.yaml"
    config.write_text("crypto:\n  audit:\n    checkpoint_every: 2\n")
    for name in ("k1", "k2"):
        assert xps(home, "key", "create", name, config=config).returncode == 0
    for name in ("k3", "k4"):
        assert xps(home, "key", "create", name).returncode == 0  # the default interval is 100
    for cfg in (config, None):
        out = xps(home, "audit", "verify", "--json", config=cfg)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["checkpoint_every"] == 2 and report["checkpoints"] == report["records"] // 3 >= 2
        interval_warnings = [w for w in report["warnings"] if w.startswith("checkpoint interval")]
        assert len(interval_warnings) == (cfg is None)
