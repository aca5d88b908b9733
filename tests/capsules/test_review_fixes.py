"""Review findings on the capsule engine, each reproduced with real files, processes and sockets.

M1 offline rollback and the configured journal; M2 control-socket handler threads; M4 the crash
guard under PID reuse; L1 a damaged state lock; L2 publisher commands on a FIFO or /dev/zero;
L3 control-socket request fields; L4 an inbox inside the engine home.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.audit.config import AuditConfig
from xpscerpto.capsules.control import ControlServer, request
from xpscerpto.capsules.crash_guard import CrashGuard
from xpscerpto.capsules.service import WatchService
from xpscerpto.capsules.state_store import FileStateStore
from xpscerpto.capsules.store import ActiveCapsule
from xpscerpto.capsules.updater import Updater, rollback_offline
from xpscerpto.capsules.watch import Inbox, InboxResult
from xpscerpto.home import Home

from .conftest import closed_at_teardown, restored
from .test_cli_service import published, tool
from .test_cli_service import xps as xps_cli
from .test_updater import FAST_GATES, NO_TRIAL, OP, Publisher

__all__ = ["published"]  # a fixture, re-exported for pytest

CAP = ActiveCapsule("x", "1.0.0", "ab" * 32, ("aead.aes256gcm",))
#: Connections a control socket handles at once (HANDLERS).
HANDLERS = 16


def _updater(home: Home, **kwargs: Any) -> Updater:
    return restored(closed_at_teardown(Updater(xps.Engine(), home, gates=FAST_GATES, plan=NO_TRIAL, **kwargs)))


def _records(home: Home) -> list[dict[str, Any]]:
    return [json.loads(line) for line in home.audit.read_text().splitlines() if line.strip()]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# -- M1 ----------------------------------------------------------------------------------------


def test_offline_rollback_journals_with_the_configured_signing_key_outside_the_home(tmp_path: Path) -> None:
    """SECURITY.md puts the journal's key outside the home: offline `xps rollback` looked for
    HOME/audit.key instead and refused (or, with no journal yet, would have forked the chain)."""
    pub = Publisher(tmp_path)
    pub.home.initialise(policy={})  # `xps` refuses a home with stores but no record (review F3)
    keydir = tmp_path / "etc"
    keydir.mkdir(mode=0o700)
    cfg = tmp_path / "xps.yaml"
    cfg.write_text(f"crypto:\n  audit:\n    signing_key: {keydir}/audit.key\n")
    journal = AuditConfig(signing_key=str(keydir / "audit.key")).journal(pub.home.root, pub.home.audit)
    up = _updater(pub.home, audit=journal, state_store=FileStateStore(pub.home))
    up.apply(pub.capsule("1.0.0"))
    up.close()
    assert (keydir / "audit.key").exists() and not (pub.home.root / "audit.key").exists()

    out = _cli("--config", str(cfg), "--home", str(pub.home.root), "rollback", OP)
    assert out.returncode == 0, out.stderr
    assert "committed state (no engine running)" in out.stdout
    assert not (pub.home.root / "audit.key").exists()
    last = _records(pub.home)[-1]
    assert last["event"] == "PATCH_ROLLBACK" and last["mode"] == "offline"
    verify = _cli("--config", str(cfg), "--home", str(pub.home.root), "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status = json.loads(_cli("--config", str(cfg), "--home", str(pub.home.root), "status", "--json").stdout)
    assert status["active"] == [] and status["events"][-1]["event"] == "PATCH_ROLLBACK"


# -- M2 ----------------------------------------------------------------------------------------


class _StatusOnly:
    """What ControlServer needs of an Updater to answer ``status``."""

    def status(self, events: int = 20) -> dict[str, Any]:
        return {"running": True, "table_version": 7, "routes": {}, "active": [], "staging": None,
                "retired": [], "highest": {}, "events": []}


def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:  # the backlog is full for a moment: the server is accepting
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _handlers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "xps-control-conn")


def test_silent_clients_beyond_the_handler_cap_are_answered_busy_and_the_server_recovers(
        short_root: Path) -> None:
    path = short_root / "control.sock"
    server = ControlServer(_StatusOnly(), path)  # type: ignore[arg-type]
    server.start()
    silent: list[socket.socket] = []
    try:
        silent = [_connect(path) for _ in range(3 * HANDLERS)]
        time.sleep(0.5)
        assert _handlers() <= HANDLERS
        answer = request(path, {"cmd": "status"}, timeout=3)
        assert answer["ok"] is False and answer["error"].startswith("busy")
        for s in silent:
            s.close()
        deadline = time.monotonic() + 5
        while _handlers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert request(path, {"cmd": "status"}, timeout=3)["result"]["table_version"] == 7
    finally:
        for s in silent:
            s.close()
        server.stop()


def test_a_client_trickling_its_request_is_cut_off_at_the_connection_deadline(short_root: Path) -> None:
    """A timeout per recv let a client sending a byte now and then hold its handler for good."""
    path = short_root / "control.sock"
    server = ControlServer(_StatusOnly(), path)  # type: ignore[arg-type]
    server.connection_timeout = 1.0
    server.start()
    s = _connect(path)
    try:
        s.sendall(b'{"cmd": "status"')
        s.setblocking(False)
        started = time.monotonic()
        cut_at = None
        while time.monotonic() - started < 4.0:
            try:
                s.send(b" ")  # JSON whitespace: the request stays valid and unfinished
                if s.recv(4096) is not None:
                    cut_at = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:  # reset or broken pipe: the server closed it
                cut_at = time.monotonic() - started
                break
            time.sleep(0.3)
        assert cut_at is not None and cut_at < 2.5, cut_at
    finally:
        s.close()
        server.stop()
    assert _handlers() == 0


_LIMITED_SERVER = textwrap.dedent("""
    import resource, sys
    from xpscerpto.capsules.control import ControlServer

    class StatusOnly:
        def status(self, events=20):
            return {"running": True, "table_version": 7}

    server = ControlServer(StatusOnly(), sys.argv[1])
    server.start()
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # Room for a thread stack or two, not for one per connection.
    resource.setrlimit(resource.RLIMIT_AS, (vm + 20 * 2**20, hard))
    print("limited", flush=True)
    sys.stdin.readline()
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print("unlimited", getattr(server, "start_failures", None), flush=True)
    sys.stdin.readline()
    server.stop()
""")


def test_the_control_socket_keeps_accepting_when_no_handler_thread_can_start(short_root: Path) -> None:
    """Thread.start raising RuntimeError (no memory for a stack) killed the accepting thread."""
    path = short_root / "control.sock"
    proc = subprocess.Popen([sys.executable, "-c", _LIMITED_SERVER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    conns: list[socket.socket] = []
    try:
        assert proc.stdout.readline() == "limited\n", proc.stderr.read()
        for _ in range(HANDLERS):
            conns.append(_connect(path))
            time.sleep(0.02)
        time.sleep(0.5)
        proc.stdin.write("\n")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        assert line[0] == "unlimited"
        for s in conns:
            s.close()
        answer = request(path, {"cmd": "status"}, timeout=10)
        assert answer["ok"] is True and answer["result"]["table_version"] == 7
        assert int(line[1]) > 0  # the failure path was taken, not avoided
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(20) == 0
        assert "Exception in thread" not in proc.stderr.read()
    finally:
        for s in conns:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- M4 ----------------------------------------------------------------------------------------


def test_a_marker_of_another_run_with_our_pid_counts_a_crash(tmp_path: Path) -> None:
    guard = CrashGuard(Home.resolve(tmp_path / "home"), limit=3)
    # Written by a run that had this pid before us (a container's PID 1, restarted).
    guard.marker.write_text(json.dumps({"pid": os.getpid(), "run": "0" * 32}))
    assert guard.begin([CAP]) == {CAP.sha256: 1}
    assert guard.begin([CAP]) == {CAP.sha256: 1}  # our own marker now
    assert json.loads(guard.marker.read_text())["pid"] == os.getpid()
    # A marker from before run tokens is judged by its pid, as then.
    guard.marker.write_text(json.dumps({"pid": os.getpid()}))
    assert guard.begin([CAP]) == {CAP.sha256: 1}


_BEGIN_AS_PID_1 = textwrap.dedent("""
    import json, os, sys
    from xpscerpto.capsules.crash_guard import CrashGuard
    from xpscerpto.capsules.store import ActiveCapsule
    from xpscerpto.home import Home

    cap = ActiveCapsule("x", "1.0.0", "ab" * 32, ("aead.aes256gcm",))
    counts = CrashGuard(Home.resolve(sys.argv[1]), limit=3).begin([cap])
    print(json.dumps({"pid": os.getpid(), "counts": counts}), flush=True)
    os._exit(0)  # no clean_exit(): this run ends abnormally, as a crash does
""")


def test_engines_restarted_as_pid_1_count_each_others_crashes(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-pf", "true"], capture_output=True,
                                                         check=False).returncode != 0:
        pytest.skip("cannot make PID namespaces here")
    home = tmp_path / "home"
    runs = []
    for _ in range(3):
        out = subprocess.run(["unshare", "-pf", "--kill-child", sys.executable, "-c", _BEGIN_AS_PID_1, str(home)],
                             capture_output=True, text=True, timeout=60, check=True)
        runs.append(json.loads(out.stdout))
    assert [r["pid"] for r in runs] == [1, 1, 1]
    assert [r["counts"] for r in runs] == [{}, {CAP.sha256: 1}, {CAP.sha256: 2}]


# -- L1 ----------------------------------------------------------------------------------------


def _damage_lock(lock: Path, kind: str, elsewhere: Path) -> None:
    lock.unlink(missing_ok=True)
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(elsewhere)


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_state_lock_that_is_no_file_refuses_the_capsule_typed_and_journaled(tmp_path: Path, kind: str) -> None:
    pub = Publisher(tmp_path)
    pub.home.initialise(policy={})  # `xps` refuses a home with stores but no record (review F3)
    up = _updater(pub.home, state_store=FileStateStore(pub.home))
    up.apply(pub.capsule("1.0.0"))
    elsewhere = tmp_path / "elsewhere.lock"
    _damage_lock(pub.home.lock, kind, elsewhere)
    raw = pub.capsule("1.0.1")
    with pytest.raises(xps.UpdateError) as ei:
        up.apply(raw)
    assert ei.value.reason == "state" and "state lock" in str(ei.value)
    reject = _records(pub.home)[-1]
    assert reject["event"] == "PATCH_REJECT" and reject["reason"] == "state" and "state lock" in reject["detail"]
    assert [a.version for a in up.state.active] == ["1.0.0"]
    up.close()
    with pytest.raises(xps.UpdateError) as ei:
        rollback_offline(pub.home, OP, state_store=FileStateStore(pub.home))
    assert ei.value.reason == "state"
    assert not elsewhere.exists()  # a planted symlink does not make us create a file elsewhere
    out = _cli("--home", str(pub.home.root), "rollback", OP)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "XPS_ERR_UPDATE: state lock" in out.stderr


def test_a_restore_failing_for_this_machine_holds_the_capsule_and_journals_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = Publisher(tmp_path)
    cap = _updater(pub.home, state_store=FileStateStore(pub.home)).apply(pub.capsule("1.0.0"))

    def no_process(*_args: object, **_kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # fork() failing: EAGAIN

    monkeypatch.setattr("xpscerpto.capsules.updater.validate_isolated", no_process)
    eng = xps.Engine()
    up = restored(closed_at_teardown(Updater(eng, pub.home, gates=FAST_GATES, plan=NO_TRIAL,
                                             state_store=FileStateStore(pub.home))))
    assert eng.table.provider_for(OP) == "sodium"  # not routed...
    assert [a.sha256 for a in up.state.active] == [cap.sha256]  # ...but still committed
    refused = up.status()["refused"]
    assert [(r["sha256"], r["reason"]) for r in refused] == [(cap.sha256, "internal")]
    reject = [r for r in _records(pub.home) if r["event"] == "PATCH_REJECT"][-1]
    assert reject["held"] is True and reject["reason"] == "internal" and "BlockingIOError" in reject["detail"]


# -- L2 ----------------------------------------------------------------------------------------


def test_publisher_commands_refuse_a_fifo_dev_zero_and_a_huge_file_without_hanging(tmp_path: Path) -> None:
    tool("keygen", "--out", str(tmp_path / "alice"))
    fifo = tmp_path / "fifo.capsule"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.capsule"
    with huge.open("wb") as f:
        f.truncate(64 << 20)  # sparse: larger than any capsule the engine takes
    for target in (str(fifo), "/dev/zero", str(huge)):
        for cmd in (["inspect", target], ["verify", target, "--trust", str(tmp_path / "alice.pub")],
                    ["sign", target, "--key", str(tmp_path / "alice.key"), "--out", str(tmp_path / "o.capsule")]):
            out = _cli("capsule", *cmd, timeout=30)
            assert out.returncode == 2 and out.stderr.count("\n") == 1, (cmd, out.stderr[-300:])
            assert "Traceback" not in out.stderr
            expected = "larger than" if target == str(huge) else "not a regular file"
            assert out.stderr.startswith("xps: error: XPS_ERR_UPDATE: capsule file ") and expected in out.stderr
    assert not (tmp_path / "o.capsule").exists()


# -- L3 ----------------------------------------------------------------------------------------


def test_control_requests_with_bad_fields_are_policy_refusals_that_echo_nothing(short_root: Path) -> None:
    svc = WatchService(xps.Engine(), short_root / "inbox", short_root / "home", polling=True).start()
    sock = svc.updater.home.socket
    try:
        key = "CALLER-BYTES-" + "A" * 40000
        for req in ({"cmd": "emergency", "key": key, "value": 1, "operator": "x", "reason": "y"},
                    {"cmd": "emergency", "key": {"k": "CALLER-BYTES"}, "value": 1, "operator": "x", "reason": "y"}):
            answer = request(sock, req)
            assert answer["code"] == "XPS_ERR_POLICY" and "key must be text" in answer["error"]
            assert "CALLER-BYTES" not in json.dumps(answer)
        for cmd in ("NOPE-" + "B" * 100, ["status"]):
            answer = request(sock, {"cmd": cmd})
            assert answer["code"] == "XPS_ERR_POLICY" and answer["error"].endswith("cmd: unknown command")
        bad_fields: list[dict[str, Any]] = [
            {"operator": {"o": 1}, "reason": "incident"},
            {"operator": "ops", "reason": "\x1b[31m" * 3},
            {"operator": "ops", "reason": "r" * 5000},
        ]
        for fields in bad_fields:
            answer = request(sock, {"cmd": "emergency", "key": "hotpatch.canary_share", "value": 0.5, **fields})
            assert answer["code"] == "XPS_ERR_POLICY" and "emergency: " in answer["error"], answer
        answer = request(sock, {"cmd": "rollback", "target": "x", "operator": ["CALLER-BYTES"]})
        assert answer["code"] == "XPS_ERR_POLICY" and "CALLER-BYTES" not in json.dumps(answer)
        assert not [r for r in svc.updater.audit.tail(100) if r["event"] == "CONFIG_EMERGENCY_CHANGE"]
        good = request(sock, {"cmd": "emergency", "key": "hotpatch.canary_share", "value": 0.5,
                              "operator": "ops", "reason": "incident 42"})
        assert good["ok"] is True and good["result"]["value"] == 0.5
    finally:
        svc.stop()


# -- L4 ----------------------------------------------------------------------------------------


def test_an_inbox_inside_the_engine_home_is_refused_before_anything_moves(
        published: tuple[Path, Path, Path], tmp_path: Path) -> None:
    capsule, _, home = published
    store = home / "capsules"
    stored = store / "x.capsule"
    stored.write_bytes(capsule.read_bytes())
    before = sorted(p.name for p in store.iterdir())
    for inbox in (store, home, home / "inbox"):
        with pytest.raises(xps.PolicyError, match=r"^XPS_ERR_POLICY: inbox .*inside the engine home"):
            WatchService(xps.Engine(), inbox, home, polling=True)
    out = xps_cli(home, "watch", str(store), "--polling", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "inside the engine home" in out.stderr
    assert sorted(p.name for p in store.iterdir()) == before  # no accepted/ or rejected/ made, nothing moved
    assert not (home / "inbox").exists()

    def handle(raw: bytes, path: Path) -> InboxResult:
        return InboxResult(True, "accepted", path.name)

    # Told the home, the inbox refuses anywhere in it (home.json or not).
    bare = tmp_path / "bare-home"
    bare.mkdir()
    with pytest.raises(xps.PolicyError, match="inside the engine home"):
        Inbox(bare / "drop", handle, home=bare)
    # A symlink into the home is the home.
    link = tmp_path / "link"
    link.symlink_to(store)
    with pytest.raises(xps.PolicyError, match="inside the engine home"):
        Inbox(link, handle)
