"""Smoke test for tools/bench.py: it runs, reports every requested cell, and writes sane JSON.

It deliberately asserts no timing target: the benchmark is a report for a noisy machine, and
``--quick`` figures are not meaningful anyway.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench.py"
SIZES = (64, 1024, 65536, 1048576)
LABELS = {64: "64B", 1024: "1KiB", 65536: "64KiB", 1048576: "1MiB"}
OPS = ("encrypt", "decrypt", "decrypt/join", "open")  # decrypt/join: the same engine call vs raw joining ct + tag
POSITIVE = ("raw_us", "engine_us", "raw_min_us", "engine_min_us", "raw_all_median_us", "engine_all_median_us",
            "raw_gbps", "engine_gbps", "ratio", "rounds_used")
FINITE = ("delta_us", "delta_spread_us", "ratio_spread")


def run_bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


def check_rows(stdout: str, doc: dict[str, Any], expected: set[tuple[str, str, int, str]]) -> None:
    got = {(r["algo"], r["provider"], r["size"], r["op"]) for r in doc["rows"]}
    assert got == expected
    assert len(doc["rows"]) == len(expected)  # no duplicates
    for algo, provider, size, op in expected:
        pattern = rf"^{re.escape(algo)}\s+{provider}\s+{LABELS[size]}\s+{op}\s"
        assert re.search(pattern, stdout, re.MULTILINE), f"no printed row for {algo} {provider} {size} {op}"
    for row in doc["rows"]:
        for key in POSITIVE:
            value = row[key]
            assert isinstance(value, float | int) and math.isfinite(value) and value > 0, (key, row)
        for key in FINITE:
            assert math.isfinite(row[key]), (key, row)
        assert row["iterations"] >= 1 and row["rounds"] >= 1
    control = doc["aa_control"]
    assert control is not None and math.isfinite(control["delta_us"]) and control["us"] > 0


def test_default_routing_covers_every_routed_aead(tmp_path: Path) -> None:
    from xpscerpto import Engine
    from xpscerpto.interfaces import OPERATIONS

    routes = Engine().table.routes
    routed = {(OPERATIONS[op].aliases[0], r.provider) for op, r in routes.items() if op.startswith("aead.")}
    assert routed  # the built-in providers route at least AES-GCM

    stdout, doc = run_bench(tmp_path)

    expected = {(a, p, s, op) for a, p in routed for s in SIZES for op in OPS}
    check_rows(stdout, doc, expected)
    assert "hot path" in stdout
    assert "MET" in stdout or "MISSED" in stdout


def test_forced_providers_and_algo_selection(tmp_path: Path) -> None:
    stdout, doc = run_bench(
        tmp_path, "--provider", "openssl,sodium",
        "--algos", "AES-256-GCM,CHACHA20-POLY1305,XCHACHA20-POLY1305", "--sizes", "64,1024",
        "--malloc", "cold",
    )

    expected = {(a, p, s, op)
                for a, p in (("AES-256-GCM", "openssl"), ("CHACHA20-POLY1305", "openssl"),
                             ("CHACHA20-POLY1305", "sodium"), ("XCHACHA20-POLY1305", "sodium"))
                for s in (64, 1024) for op in OPS}
    check_rows(stdout, doc, expected)
    # What a forced provider cannot serve is reported as skipped, not silently dropped.
    assert any("AES-256-GCM" in n and "sodium" in n for n in doc["notes"])
    assert any("XCHACHA20-POLY1305" in n and "openssl" in n for n in doc["notes"])
    assert doc["settings"]["malloc"] == "cold"


def test_unknown_algo_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--algos", "ROT13"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "unknown AEAD" in proc.stderr
