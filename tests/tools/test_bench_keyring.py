"""Smoke test for tools/bench_keyring.py: it runs, reports every requested cell, and writes sane JSON.

It asserts no timing target (``--quick`` figures are not meaningful, and the benchmark is a
report for a noisy machine). Tink is an optional bench extra: the tink rows must be there
exactly when tink is importable in the benchmark's environment, and the run must succeed
either way, so one test also hides tink from the subprocess to cover the path CI takes.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_keyring.py"
ALGOS = ("AES-256-GCM", "XCHACHA20-POLY1305")
SIZES = (64, 65536)
LABELS = {64: "64B", 1024: "1KiB", 65536: "64KiB"}
OPS = ("encrypt", "decrypt")
ROW_POSITIVE = ("us", "gbps", "all_median_us", "min_us")

# Runs the benchmark with every ``tink`` import failing as if the package were not installed.
WITHOUT_TINK = """
import runpy, sys

class NoTink:
    def find_spec(self, name, path=None, target=None):
        if name == "tink" or name.startswith("tink."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTink())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def finite(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)


def tink_importable() -> bool:
    """Whether the benchmark's interpreter (this one, in a fresh process) finds tink."""
    proc = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('tink') "
                           "is not None)"], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip() == "True"


def run_bench(tmp_path: Path, *args: str, hide_tink: bool = False) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench_keyring.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--tmpdir", str(tmp_path), "--json", str(out), *args]
    if hide_tink:
        cmd = [sys.executable, "-c", WITHOUT_TINK, *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


def check(stdout: str, doc: dict[str, Any], algos: tuple[str, ...], sizes: tuple[int, ...], tink: bool) -> None:
    cells = {(a, s, op) for a in algos for s in sizes for op in OPS}
    peers = ("keyring", "raw", "tink") if tink else ("keyring", "raw")

    # One row per (peer, algorithm, size, op), and nothing else.
    got = [(r["peer"], r["algo"], r["size"], r["op"]) for r in doc["rows"]]
    assert sorted(got) == sorted((p, *cell) for p in peers for cell in cells)
    for row in doc["rows"]:
        for key in ROW_POSITIVE:
            assert finite(row[key]) and row[key] > 0, (key, row)
        assert row["iterations"] >= 1 and row["rounds"] >= 1 and row["rounds_used"] >= 1

    # One comparison per cell: keyring/raw always, keyring/tink (and the target) iff tink ran.
    assert {(c["algo"], c["size"], c["op"]) for c in doc["comparisons"]} == cells
    assert len(doc["comparisons"]) == len(cells)
    for cmp in doc["comparisons"]:
        raw = cmp["keyring_over_raw"]
        assert finite(raw["ratio"]) and raw["ratio"] > 0 and finite(raw["ratio_spread"]), cmp
        if tink:
            assert finite(cmp["keyring_over_tink"]["ratio"]) and cmp["keyring_over_tink"]["ratio"] > 0, cmp
            assert isinstance(cmp["target"]["met"], bool) and isinstance(cmp["target"]["uncertain"], bool)
        else:
            assert cmp["keyring_over_tink"] is None and cmp["target"] is None
        pattern = rf"^{re.escape(cmp['algo'])}\s+{LABELS[cmp['size']]}\s+{cmp['op']}\s"
        assert re.search(pattern, stdout, re.MULTILINE), f"no printed row for {cmp}"

    # The cost breakdown: every cell, finite components that add up to the keyring total.
    assert {(b["algo"], b["size"], b["op"]) for b in doc["breakdown"]} == cells
    for b in doc["breakdown"]:
        parts = [v for v in b["components_us"].values() if v is not None]
        assert all(finite(v) for v in parts), b
        assert math.isclose(sum(parts), b["keyring_us"], rel_tol=1e-6, abs_tol=1e-6), b
        assert (b["tink_us"] is not None) == tink
    reserve = doc["reservation"]
    assert finite(reserve["trip_us"]) and finite(reserve["per_call_us"]) and reserve["usage_block"] >= 1
    assert all(finite(c["ratio"]) and c["ratio"] > 0 for c in doc["aa_control"])

    assert doc["tink_available"] is tink
    assert "where the keyring's time goes" in stdout
    if tink:
        assert "keyring per call <= tink: MET" in stdout
    else:
        assert "tink is not installed" in stdout and "not judged" in stdout


def test_default_run_reports_every_cell(tmp_path: Path) -> None:
    tink = tink_importable()
    stdout, doc = run_bench(tmp_path)
    check(stdout, doc, ALGOS, SIZES, tink)


def test_without_tink_reports_keyring_vs_raw(tmp_path: Path) -> None:
    stdout, doc = run_bench(tmp_path, "--algos", "AES-256-GCM", "--sizes", "64,1K", hide_tink=True)
    check(stdout, doc, ("AES-256-GCM",), (64, 1024), tink=False)
