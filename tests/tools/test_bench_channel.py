"""Smoke test for tools/bench_channel.py: it runs all stacks and reports every ratio (no timing target)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_channel.py"


def test_bench_channel_quick_reports_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc["medians"]) == {"tls13", "channel", "noiseprotocol-xx", "channel-pq"}
    assert set(doc["ratios"]) == {"handshake_vs_tls", "throughput_vs_tls", "roundtrips_vs_tls",
                                  "roundtrips_best_chunk_vs_tls",
                                  "handshake_vs_noiseprotocol", "throughput_vs_noiseprotocol",
                                  "roundtrips_vs_noiseprotocol", "pq_handshake_vs_classic"}
    assert all(math.isfinite(v) and v > 0 for v in doc["ratios"].values())
    assert "handshake_vs_tls" in proc.stdout
