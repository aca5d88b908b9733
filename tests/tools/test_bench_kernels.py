"""Smoke test for tools/bench_kernels.py: every requested cell and peer is timed and reported.

No timing is asserted (``--quick`` figures mean nothing; the benchmark is a report). The run
loads the jit kernels from this session's cache, so it does not compile them again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.plugins import jit

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_kernels.py"
LABELS = {64: "64B", 1024: "1KiB"}
XCHACHA_PEERS = {"jit", "jit-keyed", "jit-openssl", "sodium", "demo"}
CHACHA_PEERS = {"jit", "openssl", "openssl-keyed", "sodium"}


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of the numba cache this process's kernels came from (warming them if needed)."""
    status = jit.warm_up(tmp_path_factory.mktemp("bench-jit-cache"), mask="")
    assert status.state == "ready" and status.cache_dir, status.reason
    return Path(status.cache_dir).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_quick_run_reports_every_cell_and_peer(kernel_cache: Path, tmp_path: Path) -> None:
    tink = importlib.util.find_spec("tink") is not None
    out = tmp_path / "bench.json"
    proc = run("--quick", "--sizes", "64,1K", "--cache-dir", str(kernel_cache), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["environment"]["jit"].startswith("loaded from the cache in ")
    cells = {(c["algo"], c["size"], c["op"]) for c in doc["cells"]}
    assert cells == {(a, s, op) for a in ("XChaCha20-Poly1305", "ChaCha20-Poly1305") for s in (64, 1024)
                     for op in ("encrypt", "decrypt")}
    assert len(doc["cells"]) == len(cells)
    for cell in doc["cells"]:
        expected = (XCHACHA_PEERS | ({"tink"} if tink else set())
                    if cell["algo"] == "XChaCha20-Poly1305" else CHACHA_PEERS)
        assert set(cell["us"]) == expected
        assert all(math.isfinite(v) and v > 0 for v in cell["us"].values()), cell
        assert cell["winner"] == min(cell["us"], key=cell["us"].get)
        assert cell["best_other"] in expected and not cell["best_other"].startswith("jit")
        for name, refs in cell["faster_than"].items():
            for ref, r in refs.items():
                assert ref != name and math.isfinite(r["ratio"]) and r["ratio"] > 0, (name, ref, r)
        for name in expected:
            pattern = rf"^\s+{re.escape(cell['algo'])}\s+{LABELS[cell['size']]}\s+{cell['op']}\s+{re.escape(name)}\s"
            assert re.search(pattern, proc.stdout, re.MULTILINE), f"no printed row for {name} in {cell['algo']}"
    assert math.isfinite(doc["aa_control"]["ratio"])
    assert "Winners (lowest time per call):" in proc.stdout
    assert ("tink is not installed" in proc.stdout) is not tink


def test_a_refused_cache_directory_ends_the_run_with_the_reason(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = run("--quick", "--sizes", "64", "--cache-dir", str(shared))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"jit kernels are unavailable: cache: cache directory {shared} is writable by "
                                   "group or others (mode 777)")
