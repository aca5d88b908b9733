"""``xps providers`` lists the routes an engine started here would have: under the home's recorded
routing floor and its emergency overrides (``overrides.json``), like ``xps config show`` and
``xps watch`` (review F4). Real homes, real ``xps`` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.keyring.test_watch_sealed_floor import serving_watch


def xps(home: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def providers(home: Path, config: Path | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(xps(home, "providers", "--json", config=config)))
    return doc


@pytest.fixture
def root(short_root: Path) -> Path:
    (short_root / "inbox").mkdir()
    return short_root


def test_providers_follows_the_recorded_floor(root: Path) -> None:
    cfg = root / "forbid.yaml"
    cfg.write_text("crypto:\n  policy:\n    forbid: [aes128]\n")
    home = root / "home"
    ok(xps(home, "init", config=cfg))
    for doc in (providers(home), providers(home, root / "forbid.yaml")):
        assert "aead.aes128gcm" not in doc["routes"], doc["routes"].get("aead.aes128gcm")
        assert "forbid" in doc["unrouted"]["aead.aes128gcm"]
    lines = [line for line in ok(xps(home, "providers")).splitlines() if line.split()[:1] == ["aead.aes128gcm"]]
    assert len(lines) == 1 and "NOT ROUTED" in lines[0], lines


def test_providers_follows_the_homes_emergency_overrides(root: Path) -> None:
    home = root / "home"
    ok(xps(home, "init"))
    assert "aead.aes128gcm" in providers(home)["routes"]  # the defaults route it
    with serving_watch(home, root / "inbox"):
        ok(xps(home, "config", "emergency", "engine.policy.forbid", '["aes128"]', "--reason", "incident"))
    assert json.loads((home / "overrides.json").read_text()) == {"engine.policy.forbid": ["aes128"]}
    doc = providers(home)  # no engine running: what the next start would route
    assert "aead.aes128gcm" not in doc["routes"], doc["routes"].get("aead.aes128gcm")
    assert "forbid" in doc["unrouted"]["aead.aes128gcm"]
    assert json.loads(ok(xps(home, "config", "show")))["crypto"]["policy"]["forbid"] == ["aes128"]
