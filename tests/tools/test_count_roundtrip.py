"""Smoke test for tools/count_roundtrip.py: every stack's round trip runs (natively; no count asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "count_roundtrip.py"


def test_every_stack_round_trips_natively() -> None:
    out = subprocess.run([sys.executable, str(TOOL), "--native", "--calls", "20"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert re.findall(r"^(\w+) +[0-9.]+ us per round trip", out, re.M) == ["channel", "tls", "plain"]


def test_an_unknown_stack_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(TOOL), "--stacks", "quic"], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 2 and "--stacks" in proc.stderr
