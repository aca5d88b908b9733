"""`xps init` killed (SIGKILL, a real process) at each of its file steps, then run again.

Found by this session's kill sweep: killed while the journal was being created (its file
there, still empty), the retried `xps init` recorded the empty journal as a store, and every
later command refused the home as damaged — with no backup of a home that was never used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Runs `xps init` and kills itself with SIGKILL at the Nth file-system step (link or replace):
# the durable steps of creating a home (KEK, audit key and public key, home.json, state.json).
KILLER = """
import os, signal, sys
at, n = int(sys.argv[1]), [0]
def step(orig):
    def call(*a, **k):
        n[0] += 1
        if n[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)
    return call
os.link, os.replace = step(os.link), step(os.replace)
from xpscerpto.cli import main
sys.exit(main(["--home", sys.argv[2], "init", *sys.argv[3:]]))
"""


def _xps(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)


STEPS = 10  # link/replace calls of a complete `xps init` (test_the_steps_are_all_covered)


def test_the_steps_are_all_covered(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLER, str(STEPS + 1), str(tmp_path / "home")],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_init_killed_at_any_step_then_retried_gives_a_working_home(tmp_path: Path, step: int) -> None:
    home = tmp_path / "home"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(step), str(home)], capture_output=True,
                            timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    retry = _xps(home, "init")
    assert retry.returncode == 0, retry.stderr
    for args in (("key", "create", "k"), ("key", "list"), ("status",), ("audit", "verify")):
        out = _xps(home, *args)
        assert out.returncode == 0, (args, out.stderr)
    assert os.path.getsize(home / "audit.log") > 0
    events = [json.loads(line)["event"] for line in (home / "audit.log").read_text().splitlines()]
    assert events.count("HOME_INIT") == 1  # the home's creation is journaled once, whichever init finished it


def test_init_with_an_operator_killed_at_each_step_journals_the_home_once(tmp_path: Path) -> None:
    """Registering an operator journals before HOME_INIT: a retry must still add HOME_INIT."""
    tool = Path(__file__).resolve().parents[2] / "tools" / "make_capsule.py"
    subprocess.run([sys.executable, str(tool), "keygen", "--out", str(tmp_path / "op")], check=True,
                   capture_output=True, timeout=120)
    pub = tmp_path / "op.pub"
    step = 1
    while True:
        home = tmp_path / f"home-{step}"
        run = subprocess.run([sys.executable, "-c", KILLER, str(step), str(home), "--operator", str(pub)],
                             capture_output=True, timeout=120, check=False)
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        retry = _xps(home, "init", "--operator", str(pub))
        assert retry.returncode == 0, (step, retry.stderr)
        events = [json.loads(line)["event"] for line in (home / "audit.log").read_text().splitlines()]
        assert events.count("HOME_INIT") == 1, (step, events)
        step += 1
    assert step > STEPS  # the operator's registration added steps; every one was tried


def test_init_run_again_with_the_journal_on_postgresql_journals_the_home_once(pg_dsn: str, tmp_path: Path) -> None:
    """The journal asked is the configured one: with it in PostgreSQL, HOME/audit.log never exists."""
    from xpscerpto.db.audit_store import PgAuditLog

    config = tmp_path / "xps.json"
    config.write_text(json.dumps({"audit": {"database": pg_dsn}}))
    home = tmp_path / "home"
    for _ in range(3):
        out = _xps(home, "--config", str(config), "init")
        assert out.returncode == 0, out.stderr
    assert not (home / "audit.log").exists()
    log = PgAuditLog(pg_dsn, home / "audit.log")
    try:
        assert [e["event"] for e in log.tail(1000)].count("HOME_INIT") == 1
        assert log.verify().records >= 2
    finally:
        log.close()
