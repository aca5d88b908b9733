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


def test_concurrent_trust_changes_are_serialised_none_is_lost(tmp_path: Path) -> None:
    # Review finding: `trust remove A` racing `trust add B` both printed success and were both
    # journaled, yet A stayed pinned: each loaded the store, changed it, and saved over the other.
    import fcntl
    import os
    import time

    home = tmp_path / "home"
    names = [f"k{i}" for i in range(6)]
    for n in names:
        subprocess.run([sys.executable, str(TOOL), "keygen", "--out", str(tmp_path / n)], check=True,
                       capture_output=True, timeout=120)
    assert _xps(home, "trust", "threshold", "1").returncode == 0  # creates the home and the store
    lock = os.open(home / "trust.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # an operator's command in the middle of its change
    procs = [subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(home), "trust", "add",
                               str(tmp_path / f"{n}.pub"), "--ops", "aead.*"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in names]
    try:
        time.sleep(2.0)
        assert all(p.poll() is None for p in procs), "a change went ahead while another held the lock"
    finally:
        os.close(lock)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(names), outs
    pins = {k["keyid"] for k in json.loads((home / "trust.json").read_text())["keys"]}
    keyids = {json.loads((tmp_path / f"{n}.pub").read_text())["keyid"] for n in names}
    assert pins == keyids  # every add kept
    changes = [e for e in _events(home) if e["event"] == "TRUST_CHANGE" and e["action"] == "add"]
    assert sorted(len(c["pins"]) for c in changes) == list(range(1, len(names) + 1))  # each saw the one before
