"""``xps tune`` and the tuned view of ``xps providers``, as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# openssl and sodium only: the numba kernels' first compile takes a minute (tests/plugins covers them).
CONFIG = "crypto:\n  engine:\n    providers: [openssl, sodium]\n"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "xps.yaml").write_text(CONFIG)
    out = {k: v for k, v in os.environ.items() if not k.startswith("XPS_")}
    out["XPS_AUTOTUNE_CACHE"] = str(tmp_path / "cache" / "autotune.json")
    return out


def xps(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--config", str(tmp_path / "xps.yaml"), *args],
                          capture_output=True, text=True, timeout=300, check=False, env=env)


def test_tune_measures_writes_the_cache_and_providers_shows_the_tuned_routes(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    out = xps(env, tmp_path, "tune", "--json", "--budget", "0.002", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert Path(env["XPS_AUTOTUNE_CACHE"]).exists()
    for op in ("aead.chacha20poly1305", "sig.ed25519", "kex.x25519"):  # two candidates each
        rows = data["operations"][op]["stateless"]
        assert len(rows) == 4 and all(r["winner"] in ("openssl", "sodium") for r in rows)
        assert all(r["runner_up"] in ("openssl", "sodium") for r in rows[:1])
        assert op in data["routes"]
    chacha = data["routes"]["aead.chacha20poly1305"]
    assert {chacha["provider"], chacha["large_provider"] or chacha["provider"]} <= {"openssl", "sodium"}

    again = xps(env, tmp_path, "tune", "--cached", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["created"] == data["created"]  # read back, not measured again

    shown = xps(env, tmp_path, "providers", "--json")
    assert shown.returncode == 0, shown.stderr
    providers = json.loads(shown.stdout)
    assert providers["autotune"].startswith("measured ")
    assert providers["routes"]["sig.ed25519"]["chosen_by"] == "autotune"
    assert providers["routes"]["sig.ed25519"]["provider"] == data["routes"]["sig.ed25519"]["provider"]
    assert providers["jit"]["state"] in ("cold", "masked", "unavailable")
    text = xps(env, tmp_path, "tune", "--cached")
    assert text.returncode == 0 and "routed:" in text.stdout and "one eligible implementation" in text.stdout


def test_providers_sees_the_measurement_a_running_engine_uses_while_jit_is_masked(env: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    # Found by a review: `xps providers` imported the jit module before building its engine, so
    # with -jit masked it computed another fingerprint and reported "not measured yet".
    masked = {**env, "XPS_SIMD_ISA_MASK": "-jit"}
    assert xps(masked, tmp_path, "tune", "--json", "--budget", "0.002", "--rounds", "1").returncode == 0
    shown = xps(masked, tmp_path, "providers", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["autotune"].startswith("measured ") and data["jit"]["state"] == "masked"


def test_providers_reports_jit_masked_by_the_configuration(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "xps.yaml").write_text(CONFIG + "    isa_mask: [-jit]\n")
    shown = xps(env, tmp_path, "providers", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["jit"]["state"] == "masked"


def test_tune_refuses_bad_arguments_and_a_missing_cache_with_typed_errors(env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    for args in (("--rounds", "0"), ("--rounds", "x"), ("--budget", "-1"), ("--budget", "nan"), ("--budget", "99")):
        out = xps(env, tmp_path, "tune", *args)
        assert out.returncode == 2 and "XPS_ERR_POLICY" in out.stderr.strip().splitlines()[-1], args
    out = xps(env, tmp_path, "tune", "--cached")
    assert out.returncode != 0 and "XPS_ERR_POLICY" in out.stderr and "run xps tune" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_damaged_cache_is_measured_again(env: dict[str, str], tmp_path: Path) -> None:
    cache = Path(env["XPS_AUTOTUNE_CACHE"])
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"{ not json")
    shown = xps(env, tmp_path, "providers", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["autotune"].startswith("not measured")
    out = xps(env, tmp_path, "tune", "--json", "--budget", "0.002", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads(cache.read_text())["format"] == 1
