"""Three orchestrator node processes on one PostgreSQL: exactly-once rotation through a kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from xpscerpto.db import Database
from xpscerpto.db.audit_store import PgAuditLog
from xpscerpto.orchestrator import LEASE, Lease, Orchestrator, Plan, node_of

from tests.db.test_postgres import _node
from tests.orchestrator.test_orchestrator import _due_now

TTL = 2.0


def _wait(what: str, predicate: object, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} (last: {value!r})")


@pytest.fixture
def fleet(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[dict[str, subprocess.Popen[bytes]], Database, Path]]:
    admin = _node(tmp_path, "n0", pg_dsn)
    admin.create("orders", "AES-256-GCM")
    for i in (1, 2):
        _node(tmp_path, f"n{i}", pg_dsn, like=tmp_path / "n0").close()
    Orchestrator(admin, node="admin").track(Plan("orders-hourly", key="orders", policy="every=1h"))
    admin.close()
    for i in (1, 2):  # one journal signing key for the fleet, as for the KEK
        for suffix in (".key", ".pub"):
            shutil.copy2(tmp_path / "n0" / f"audit{suffix}", tmp_path / f"n{i}" / f"audit{suffix}")
    config = tmp_path / "xps.json"  # the nodes' keyring and journal are in the shared database
    config.write_text(json.dumps({"keyring": {"database": pg_dsn}, "audit": {"database": pg_dsn}}))
    procs = {f"n{i}": _start_node(tmp_path, f"n{i}") for i in range(3)}
    db = Database(pg_dsn)
    try:
        yield procs, db, tmp_path
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        db.close()


def _start_node(root: Path, name: str) -> subprocess.Popen[bytes]:
    """``xps orch run`` for node ``name`` (its home under ``root``, the fleet's xps.json)."""
    return subprocess.Popen(
        [sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home", str(root / name), "orch",
         "run", "--node", name, "--lease-ttl", str(TTL), "--interval", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _versions(db: Database) -> list[int]:
    return [r[0] for r in db.execute("SELECT version FROM versions ORDER BY version").fetchall()]


def _rotations(root: Path, dsn: str) -> list[dict[str, object]]:
    """KEY_ROTATE records of the shared journal, its chain verified by every node's pinned key."""
    found: list[dict[str, object]] = []
    for home in ("n0", "n1", "n2"):
        log = PgAuditLog(dsn, root / home / "audit.log")
        try:
            log.verify()
            found = [e for e in log.tail(1000) if e["event"] == "KEY_ROTATE"]
        finally:
            log.close()
    return found


def test_killing_the_leader_mid_rotation_moves_the_lease_and_rotates_exactly_once(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path], pg_dsn: str) -> None:
    procs, db, root = fleet
    lease = Lease(db, LEASE, holder="observer", ttl=TTL)
    first = _wait("a leader", lambda: lease.state().holder)
    # Hold the run table: the leader's rotation writes its new version, then blocks on the
    # fenced run record, inside its transaction — the middle of a rotation.
    with psycopg.connect(pg_dsn, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE xps_orch_runs IN EXCLUSIVE MODE")
        admin = _node(root, "n0-admin", pg_dsn, like=root / "n0")
        try:
            _due_now(admin, "orders-hourly", 3600)
        finally:
            admin.close()
        _wait("the leader blocked inside its rotation", lambda: db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE ?",
            ("%FROM xps_orch_runs WHERE % FOR UPDATE",)).fetchone())
        leader = lease.state()
        assert leader.holder == first
        killed = time.monotonic()
        procs[str(node_of(leader.holder))].send_signal(signal.SIGKILL)
        procs[str(node_of(leader.holder))].wait()
        moved = _wait("the lease to move", lambda: (s := lease.state()).holder not in (None, leader.holder) and s)
        failover = time.monotonic() - killed
        blocker.execute("ROLLBACK")
    _wait("the new leader's run", lambda: db.execute("SELECT 1 FROM xps_orch_runs").fetchone())
    time.sleep(3 * 0.2)  # a few more ticks of every node: nothing more happens
    assert _versions(db) == [1, 2]  # exactly one new version
    run = db.execute("SELECT holder, token, result FROM xps_orch_runs").fetchall()
    assert run == [(node_of(moved.holder), moved.token, "rotated from 1")]
    assert moved.token > leader.token
    # No journal record lost (the survivor delivered its own), none for the rolled-back attempt.
    _wait("the rotation's journal record", lambda: _rotations(root, pg_dsn))
    assert [r["version"] for r in _rotations(root, pg_dsn)] == [2]
    print(f"\nlease failover after kill -9: {failover:.2f} s (ttl {TTL} s)")
    assert failover < TTL + 2.0


def test_orch_status_json_names_node_leader_token_expiry_and_next_run(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path]) -> None:
    _, db, root = fleet
    lease = Lease(db, LEASE, holder="observer", ttl=TTL)
    _wait("a leader", lambda: lease.state().holder)
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home",
                          str(root / "n1"), "orch", "status", "--json",
                          "--node", "n1"], capture_output=True, text=True, check=True,
                         env={**os.environ}).stdout
    status = json.loads(out)
    assert status["node"] == "n1" and status["leader"] in ("n0", "n1", "n2")
    assert status["migrations"] == []
    assert status["token"] >= 1 and status["lease_expires"]
    assert status["plans"][0]["plan"] == "orders-hourly" and status["plans"][0]["next_run"]


def test_a_suite_migration_started_from_the_cli_is_carried_out_by_the_leader(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path]) -> None:
    _, db, root = fleet
    base = [sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home", str(root / "n2"),
            "orch"]
    subprocess.run([*base, "migrate", "to-xchacha", "--keys", "orders", "--target", "XCHACHA20-POLY1305",
                    "--canary", "1", "--watch", "1s", "--node", "n2"], check=True, capture_output=True, timeout=60)

    def phase() -> str:
        out = subprocess.run([*base, "status", "--json", "--node", "n2"], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        return str(json.loads(out)["migrations"][0]["phase"])

    _wait("the leader to commit the migration", lambda: phase() == "committed")
    row = db.execute("SELECT algorithm FROM versions WHERE state = 'active'").fetchone()
    assert row == ("XCHACHA20-POLY1305",)
    bad = subprocess.run([*base, "migrate", "m2", "--keys", "orders", "--target", "ROT13", "--node", "n2"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "XPS_ERR_POLICY: target" in bad.stderr


def test_a_pq_rollout_started_from_the_cli_is_carried_through_to_required_by_the_leader(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path]) -> None:
    _, _db, root = fleet
    base = [sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home", str(root / "n1"),
            "orch"]
    bad = subprocess.run([*base, "pq", "pq1", "--nodes", "n0,n1", "--protocol", "Noise_XX_25519_ChaChaPoly_SHA256",
                          "--node", "n1"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "XPS_ERR_POLICY: protocol" in bad.stderr
    subprocess.run([*base, "pq", "pq1", "--nodes", "n0,n1,n2", "--canary", "0.3", "--watch", "1s", "--node", "n1"],
                   check=True, capture_output=True, timeout=60)

    def rollout() -> dict[str, object]:
        out = subprocess.run([*base, "status", "--json", "--node", "n1"], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        return dict(json.loads(out)["pq_rollouts"][0])

    first = rollout()
    assert first["nodes"] == ["n0", "n1", "n2"] and len(first["canary_nodes"]) == 1  # type: ignore[arg-type]
    # No channel traffic: no failures, and no classic channel either, so each watch passes.
    _wait("the leader to require PQ on every node", lambda: rollout()["phase"] == "retired")
    text = subprocess.run([*base, "status", "--node", "n1"], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    assert "PQ rollout pq1" in text and "retired" in text


def test_killing_leaders_again_and_again_during_a_suite_migration_moves_every_key_exactly_once(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path], pg_dsn: str) -> None:
    from xpscerpto.orchestrator import SuiteMigration

    procs, db, root = fleet
    keys = ("orders", "k1", "k2", "k3")
    admin = _node(root, "n0-admin", pg_dsn, like=root / "n0")
    try:
        for k in keys[1:]:
            admin.create(k, "AES-256-GCM")
        Orchestrator(admin, node="admin").migrate(SuiteMigration("mig", keys=keys, target="XCHACHA20-POLY1305",
                                                                 canary=0.5, watch="3s"))
    finally:
        admin.close()
    lease = Lease(db, LEASE, holder="observer", ttl=TTL)

    def phase() -> str:
        row = db.execute("SELECT phase FROM xps_suite_migrations WHERE name = 'mig'").fetchone()
        return str(row[0]) if row else ""

    seen = _kill_leaders(procs, root, lease, phase, until="committed", delays=(0.05, 0.15, 0.3, 0.5, 0.8))
    _wait("the migration to commit", lambda: phase() == "committed", timeout=60)
    # Leaders died (at least twice) while it was under way, not only after it finished.
    assert len(seen) >= 2 and {"canary", "watching", "rollout"} & set(seen)
    rows = db.execute("SELECT k.name, v.version, v.algorithm FROM versions v JOIN keys k ON k.key_id = v.key_id "
                      "ORDER BY k.name, v.version").fetchall()
    assert rows == [(k, v, alg) for k in sorted(keys)
                    for v, alg in ((1, "AES-256-GCM"), (2, "XCHACHA20-POLY1305"))]  # each key moved once
    phases = [e["phase"] for e in _journal(root, pg_dsn) if e["event"] == "SUITE_MIGRATION"]
    assert phases == ["watching", "rollout", "committed"]


def _kill_leaders(procs: dict[str, subprocess.Popen[bytes]], root: Path, lease: Lease,
                  phase: Callable[[], str], *, until: str, delays: tuple[float, ...]) -> list[str]:
    """kill -9 whichever node leads, at different moments of its work, and bring it back, until
    ``phase()`` reads ``until``; returns the phase seen at each kill."""
    seen = []
    for delay in delays:
        current = _wait("a leader", lambda: (s := lease.state()).holder and s)
        time.sleep(delay)
        victim = str(node_of(current.holder))  # type: ignore[union-attr]
        seen.append(phase())
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        procs[victim] = _start_node(root, victim)
        # The next round kills the *next* leader: wait for the takeover (a new token).
        _wait("the lease to be taken over", lambda c=current: (s := lease.state()).holder is not None
              and s.token > c.token)  # type: ignore[union-attr]
        if phase() == until:
            break
    return seen


def _journal(root: Path, dsn: str) -> list[dict[str, object]]:
    log = PgAuditLog(dsn, root / "n1" / "audit.log")
    try:
        log.verify()
        return log.tail(10000)
    finally:
        log.close()


def test_killing_leaders_during_a_pq_rollout_journals_each_phase_exactly_once(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path], pg_dsn: str) -> None:
    from xpscerpto.orchestrator import PqRollout

    procs, db, root = fleet
    admin = _node(root, "n0-admin", pg_dsn, like=root / "n0")
    try:
        Orchestrator(admin, node="admin").roll_out_pq(PqRollout("pq", nodes=("n0", "n1", "n2"), canary=0.3,
                                                                watch="2s"))
    finally:
        admin.close()
    lease = Lease(db, LEASE, holder="observer", ttl=TTL)

    def phase() -> str:
        row = db.execute("SELECT phase FROM xps_pq_rollouts WHERE name = 'pq'").fetchone()
        return str(row[0]) if row else ""

    seen = _kill_leaders(procs, root, lease, phase, until="retired", delays=(0.1, 0.4, 0.9, 1.5))
    _wait("the rollout to retire classic", lambda: phase() == "retired", timeout=60)
    assert len(seen) >= 2 and {"canary", "committed"} & set(seen)
    _wait("every phase record delivered", lambda: [e["phase"] for e in _journal(root, pg_dsn)
                                                   if e["event"] == "PQ_ROLLOUT"] == ["committed", "retired"])
    time.sleep(1.0)  # more ticks: nothing more is journaled
    assert [e["phase"] for e in _journal(root, pg_dsn) if e["event"] == "PQ_ROLLOUT"] == ["committed", "retired"]


def test_orch_emergency_on_the_leading_node_runs_under_its_daemons_lease(
        fleet: tuple[dict[str, subprocess.Popen[bytes]], Database, Path]) -> None:
    # Review finding: the command was a new lease holder (node#random), so with `orch run` leading
    # on the node it was always "not the leader" and the documented emergency never ran.
    _, db, root = fleet
    lease = Lease(db, LEASE, holder="observer", ttl=TTL)
    leader = _wait("a leader", lambda: (s := lease.state()).holder and s)
    node = str(node_of(leader.holder))
    other = next(n for n in ("n0", "n1", "n2") if n != node)

    def emergency(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xpscerpto", "--config", str(root / "xps.json"), "--home",
                               str(root / name), "orch", "emergency", "orders-hourly", "--reason", "leaked",
                               "--node", name], capture_output=True, text=True, check=False, timeout=120)

    refused = emergency(other)
    assert refused.returncode == 2 and "not the leader" in refused.stderr and "Traceback" not in refused.stderr
    done = emergency(node)
    assert done.returncode == 0, done.stderr
    assert "rotated to version 2" in done.stdout
    run = db.execute("SELECT holder, token, result FROM xps_orch_runs").fetchall()
    now = lease.state()
    assert run == [(node, now.token, "rotated from 1")] and now.holder == leader.holder  # the daemon still leads
    assert _versions(db) == [1, 2]
