"""The ``xps`` command as a real subprocess: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def xps(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


@pytest.mark.parametrize("autotune", ["0", None], ids=["autotune-off", "autotune-default"])
def test_demo_runs_end_to_end(autotune: str | None) -> None:
    # The suite runs with XPS_AUTOTUNE=0; a user's shell has autotune on, and a background
    # measurement publishing a table mid-demo once broke the rollback step. Run both.
    env = dict(os.environ)
    if autotune is None:
        env.pop("XPS_AUTOTUNE", None)
    out = xps("demo", env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    for expected in ("power-on self-tests", "routing table", "AES-256-GCM", "rejected: XPS_ERR_AUTH",
                     "Ed25519", "ML-DSA-65", "X25519 shared secrets agree", "ML-KEM-768",
                     "served by xchacha20-openssl", "0 failed", "still opens inside the dual-key window",
                     "decryption now fails opaquely", "hash-chained records verified",
                     "dispatch: measure the providers", "measurements (result of",
                     # The test environment has psycopg and the server binaries (tools/test.sh).
                     "rotations [('orders-hourly', 2)] by leader", "node-b refused to encrypt",
                     "-> retired: a classic offer is refused (pq-required)", "demo complete"):
        assert expected in out.stdout


def test_providers_json_lists_every_operation() -> None:
    out = xps("providers", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["table_version"] == 1
    assert data["routes"]["aead.aes256gcm"]["provider"] == "openssl"
    assert data["routes"]["aead.xchacha20poly1305"]["provider"] == "sodium"
    assert {p["name"] for p in data["providers"]} >= {"openssl", "sodium"}


def test_providers_text_shows_unrouted_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "xps.toml"
    cfg.write_text('[policy]\nforbid = ["aes128"]\n')
    out = xps("--config", str(cfg), "providers")
    assert out.returncode == 0, out.stderr
    assert "aead.aes128gcm" in out.stdout and "NOT ROUTED: forbidden by policy" in out.stdout


def test_selftest_reports_every_provider_and_operation() -> None:
    out = xps("selftest", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {(r["provider"], r["operation"]) for r in rows} >= {
        ("openssl", "aead.aes256gcm"), ("sodium", "aead.aegis256"), ("openssl", "sig.mldsa65")}
    assert all(r["passed"] and r["vectors"] > 0 for r in rows)


def test_bad_config_exits_nonzero_with_one_line_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "xps.toml"
    cfg.write_text("polcy = 1\n")
    out = xps("--config", str(cfg), "providers")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("xps: error: XPS_ERR_POLICY: config: unknown key 'polcy'")


def test_version() -> None:
    out = xps("version")
    assert out.returncode == 0 and out.stdout.startswith("xpscerpto ")
