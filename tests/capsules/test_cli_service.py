"""Real processes: the publisher tool, ``xps watch`` / ``status`` / ``rollback``, kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "capsules" / "demo-capsule"
OP = "aead.xchacha20poly1305"
NAME = "xchacha20-openssl-1.0.0.capsule"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}: {out.stderr}")
    return out


def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, str(ROOT / "tools" / "make_capsule.py"), *args, check=check)


def xps(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "xpscerpto", "--home", str(home), *args, check=check)


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(capsule file, public key, home with the key trusted)."""
    tool("keygen", "--out", str(tmp_path / "alice"))
    capsule = tmp_path / NAME
    tool("build", str(DEMO), "--key", str(tmp_path / "alice.key"), "--out", str(capsule))
    home = tmp_path / "home"
    xps(home, "trust", "add", str(tmp_path / "alice.pub"), "--ops", "aead.*")
    return capsule, tmp_path / "alice.pub", home


def test_publisher_tool_keygen_build_inspect_verify(tmp_path: Path) -> None:
    out = tool("keygen", "--out", str(tmp_path / "alice"))
    assert "key id" in out.stdout
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    assert tool("keygen", "--out", str(tmp_path / "alice"), check=False).returncode == 2  # no overwrite
    capsule = tmp_path / NAME
    tool("build", str(DEMO), "--key", str(tmp_path / "alice.key"), "--out", str(capsule))
    info = json.loads(tool("inspect", str(capsule), "--json").stdout)
    assert info["name"] == "xchacha20-openssl" and info["operations"] == {OP: "xchacha:XChaCha20Poly1305"}
    assert "OK xchacha20-openssl-1.0.0" in tool("verify", str(capsule), "--trust", str(tmp_path / "alice.pub")).stdout
    tool("keygen", "--out", str(tmp_path / "mallory"))
    bad = tool("verify", str(capsule), "--trust", str(tmp_path / "mallory.pub"), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "XPS_ERR_UPDATE: signatures: signed by 0/1" in bad.stderr
    # k-of-n: a second publisher co-signs; the threshold of 2 is then met.
    tool("keygen", "--out", str(tmp_path / "bob"))
    two = tmp_path / "two.capsule"
    tool("build", str(DEMO), "--key", str(tmp_path / "alice.key"), "--key", str(tmp_path / "bob.key"),
         "--out", str(two))
    assert "signed by 2/2" in tool("verify", str(two), "--trust", str(tmp_path / "alice.pub"), "--trust",
                                   str(tmp_path / "bob.pub"), "--threshold", "2").stdout
    # The same commands are `xps capsule …`.
    same = run(sys.executable, "-m", "xpscerpto", "capsule", "inspect", str(capsule))
    assert "provides aead.xchacha20poly1305" in same.stdout


class Watcher:
    """``xps watch`` in a subprocess."""

    def __init__(self, home: Path, inbox: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xpscerpto", "--home", str(home), "watch", str(inbox), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the socket and the inbox are up
        assert line.startswith("watching"), line + (self.proc.stderr.read() if self.proc.stderr else "")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()


def status(home: Path) -> dict:
    return json.loads(xps(home, "status", "--json").stdout)


def wait_for(pred, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def audit_events(home: Path) -> list[dict]:
    path = home / "audit.log"
    if not path.exists():
        return []
    # Only newline-terminated lines are records: a writer may be mid-append (or was killed
    # mid-append) and the journal itself ignores a torn last line.
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def slow_copy(src: Path, dst: Path, chunks: int = 4, pause: float = 0.3) -> None:
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with dst.open("wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause)


def test_watch_drop_status_and_rollback_in_a_running_engine(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox))
    assert stat.S_IMODE((home / "control.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    before = status(home)
    assert before["running"] and before["routes"][OP] == "sodium"
    slow_copy(capsule, inbox / NAME)  # a slow copy, not an atomic rename
    wait_for(lambda: status(home)["routes"][OP] == "xchacha20-openssl", "the capsule to be enabled")
    assert (inbox / "accepted" / NAME).exists() and not (inbox / NAME).exists()
    live = status(home)
    assert [a["name"] for a in live["active"]] == ["xchacha20-openssl"]
    assert {"PATCH_VERIFY", "PATCH_KAT", "PATCH_ENABLE"} <= {e["event"] for e in live["events"]}
    # Rollback goes through the control socket: in force when the command returns.
    out = xps(home, "rollback", OP)
    assert "in the running engine" in out.stdout
    after = status(home)
    assert after["routes"][OP] == "sodium" and after["active"] == []
    assert [r["name"] for r in after["retired"]] == ["xchacha20-openssl"]
    # The same capsule dropped again is refused (not newer) and filed with its reason.
    (inbox / "again.capsule").write_bytes(capsule.read_bytes())
    wait_for((inbox / "rejected" / "again.capsule.reason").exists, "the rejection")
    assert (inbox / "rejected" / "again.capsule.reason").read_text().startswith("rollback:")


def _enable_then_stop_the_engine(home: Path, capsule: Path, inbox: Path, watchers: list[Watcher]) -> None:
    """An `xps watch` enables ``capsule`` from ``inbox``, then stops: the capsule stays committed."""
    w = Watcher(home, inbox)
    watchers.append(w)
    (inbox / NAME).write_bytes(capsule.read_bytes())
    wait_for(lambda: status(home)["active"] != [], "the capsule to be enabled")
    w.stop()


def test_status_and_rollback_without_a_running_engine(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    capsule, _, home = published
    _enable_then_stop_the_engine(home, capsule, tmp_path / "inbox", watchers)
    offline = status(home)
    assert offline["running"] is False and offline["active"][0]["name"] == "xchacha20-openssl"
    out = xps(home, "rollback", "xchacha20-openssl")
    assert "committed state (no engine running)" in out.stdout
    assert status(home)["active"] == []
    missing = xps(home, "rollback", "nothing-like-this", check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("xps: error: XPS_ERR_UPDATE: rollback: no active capsule matches "
                                      "'nothing-like-this'")


def test_rollback_waits_for_an_engine_that_holds_the_home_before_editing_the_state(  # type: ignore[no-untyped-def]
        published, tmp_path: Path, watchers) -> None:
    """An engine starting (lock held, socket not open yet): `xps rollback` waits rather than edit
    the state under it; here the holder goes away after a moment and the offline rollback runs."""
    capsule, _, home = published
    _enable_then_stop_the_engine(home, capsule, tmp_path / "inbox", watchers)
    hold = ("import pathlib, sys, time\nfrom xpscerpto.capsules.engine_lock import take_engine_lock\n"
            "take_engine_lock(sys.argv[1], 'test')\nprint('held', flush=True)\ntime.sleep(1.5)\n"
            "pathlib.Path(sys.argv[2]).touch()\n")  # then exits, which releases the lock
    released = tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(home / "control.sock"), str(released)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        out = xps(home, "rollback", "xchacha20-openssl")
        assert released.exists()  # the rollback waited for the holder; it did not edit the state under it
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert "committed state (no engine running)" in out.stdout
    assert status(home)["active"] == []


def _committed(home: Path) -> bool:
    try:
        return bool(json.loads((home / "state.json").read_text())["active"])
    except (OSError, ValueError, KeyError):
        return False


def test_kill_9_during_cutover_and_after_commit_restarts_consistent(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    # 1. Killed mid-staging (the canary window): nothing was committed.
    w = Watcher(home, inbox, "--canary-seconds", "30")
    watchers.append(w)
    (inbox / NAME).write_bytes(capsule.read_bytes())
    wait_for(lambda: any(e.get("phase") == "canary" for e in audit_events(home)), "the canary phase")
    w.kill9()
    state = json.loads((home / "state.json").read_text()) if (home / "state.json").exists() else {"active": []}
    assert state["active"] == []
    w2 = Watcher(home, tmp_path / "inbox2")
    watchers.append(w2)
    s = status(home)
    assert s["routes"][OP] == "sodium" and s["active"] == []
    w2.stop()
    # 2. Killed right after the commit: the restart routes the capsule (re-verified).
    inbox3 = tmp_path / "inbox3"
    w3 = Watcher(home, inbox3)
    watchers.append(w3)
    (inbox3 / NAME).write_bytes(capsule.read_bytes())  # same version: it was never accepted
    wait_for(lambda: any(e["event"] == "PATCH_ENABLE" for e in audit_events(home)), "PATCH_ENABLE")
    # The commit point is the state file, written just after PATCH_ENABLE is journaled (the
    # journal over-reports, never under-reports): kill once the commit is on disk. Killing
    # between the two is a different step (the restart then denies the ENABLE); waiting on the
    # journal alone made this step land there now and then under load.
    wait_for(lambda: _committed(home), "the committed state")
    w3.kill9()
    w4 = Watcher(home, tmp_path / "inbox4")
    watchers.append(w4)
    s = status(home)
    assert s["routes"][OP] == "xchacha20-openssl"
    assert [a["version"] for a in s["active"]] == ["1.0.0"]
    assert os.path.exists(home / "capsules" / f"{s['active'][0]['sha256']}.capsule")


def test_emergency_forbid_change_in_a_running_engine_is_audited(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    _, _, home = published
    watchers.append(Watcher(home, tmp_path / "inbox"))
    assert status(home)["routes"]["aead.aes128gcm"] == "openssl"
    out = xps(home, "config", "emergency", "engine.policy.forbid", '["aes128"]', "--reason", "CVE-2026-0001")
    assert "in the running engine (audited)" in out.stdout
    live = status(home)
    assert "aead.aes128gcm" not in live["routes"] and "forbidden by policy" in live["unrouted"]["aead.aes128gcm"]
    change = [e for e in live["events"] if e["event"] == "CONFIG_EMERGENCY_CHANGE"][-1]
    assert change["key"] == "engine.policy.forbid" and change["new"] == ["aes128"]
    assert change["reason"] == "CVE-2026-0001" and change["operator"] == "cli"
    refused = xps(home, "config", "emergency", "keyring.database", '"x.db"', "--reason", "r", check=False)
    assert refused.returncode == 2 and "not changeable at runtime" in refused.stderr


def test_emergency_change_survives_a_restart(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    """Review finding M7: an emergency forbid must not silently revert when the engine restarts."""
    _, _, home = published
    w = Watcher(home, tmp_path / "inbox")
    watchers.append(w)
    xps(home, "config", "emergency", "engine.policy.forbid", '["aes128"]', "--reason", "CVE-2026-0001")
    w.stop()
    watchers.append(Watcher(home, tmp_path / "inbox"))
    live = status(home)
    assert "forbidden by policy" in live["unrouted"]["aead.aes128gcm"]
    reapplied = [e for e in live["events"] if e["event"] == "CONFIG_EMERGENCY_CHANGE"][-1]
    assert reapplied["operator"] == "restart" and reapplied["new"] == ["aes128"]


def test_watch_canary_overrides_are_the_plan_in_force(published, tmp_path: Path, watchers) -> None:  # type: ignore[no-untyped-def]
    # Found by a review: --canary-share was replaced by the file's canary_share at start, silently.
    capsule, _, home = published
    inbox = tmp_path / "inbox"
    watchers.append(Watcher(home, inbox, "--canary-share", "0.77", "--canary-seconds", "0.5"))
    (inbox / NAME).write_bytes(capsule.read_bytes())
    wait_for(lambda: status(home)["routes"][OP] == "xchacha20-openssl", "the capsule to be enabled")
    stage = [e for e in audit_events(home) if e["event"] == "PATCH_STAGE" and e.get("phase") == "canary"]
    assert [(e["share"], e["seconds"]) for e in stage] == [(0.77, 0.5)]


@pytest.mark.parametrize(("option", "value"), [("--canary-share", "nan"), ("--canary-share", "-1"),
                                               ("--canary-share", "5"), ("--canary-seconds", "1e300"),
                                               ("--dual-run-seconds", "-3"), ("--canary-seconds", "inf")])
def test_watch_refuses_a_canary_override_it_cannot_apply(tmp_path: Path, option: str, value: str) -> None:
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path / "home"), "watch",
                          str(tmp_path / "inbox"), option, value], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert option in out.stderr and "XPS_ERR_POLICY" in out.stderr
