"""Smoke test for tools/bench_metrics.py: it runs and reports every cell with its ratios (no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_metrics.py"


def test_the_metrics_benchmark_reports_every_cell() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--budget", "0.001"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    rows = re.findall(r"^(encrypt|decrypt\(nonce, ct, tag\)) +(\d+) B: counted/plain [0-9.]+x, plain/raw [0-9.]+x",
                      out, re.M)
    assert sorted(rows) == sorted((op, size) for op in ("encrypt", "decrypt(nonce, ct, tag)")
                                  for size in ("64", "1048576"))
