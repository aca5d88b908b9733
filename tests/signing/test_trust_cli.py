"""`xps trust add/remove/threshold` journal every change of who may ship code into the engine.

Found by this session's kill sweep: trust.json changed with no journal record at all, so a
lowered threshold or a widened pin left no trace but the digest in later PATCH_ENABLE records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_capsule.py"


def _xps(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def _events(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]


def test_every_trust_change_is_journaled_before_it_is_saved(tmp_path: Path) -> None:
    home = tmp_path / "home"
    subprocess.run([sys.executable, str(TOOL), "keygen", "--out", str(tmp_path / "alice")], check=True,
                   capture_output=True, timeout=120)
    assert _xps(home, "trust", "add", str(tmp_path / "alice.pub"), "--ops", "aead.*").returncode == 0
    keyid = json.loads((home / "trust.json").read_text())["keys"][0]["keyid"]
    assert _xps(home, "trust", "threshold", "1").returncode == 0
    assert _xps(home, "trust", "remove", keyid).returncode == 0
    changes = [e for e in _events(home) if e["event"] == "TRUST_CHANGE"]
    assert [(c["action"], c.get("keyid"), c["pins"]) for c in changes] == [
        ("add", keyid, [keyid]), ("threshold", None, [keyid]), ("remove", keyid, [])]
    assert changes[0]["ops"] == ["aead.*"]
    # The first command initialised the home, and the journal is a recorded store from then on.
    assert json.loads((home / "home.json").read_text())["stores"]["audit"] == "audit.log"
    assert _xps(home, "audit", "verify").returncode == 0
