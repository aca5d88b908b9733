"""Bad input at the command line: exit 2 and one line ``xps: error: …`` on stderr, never a traceback.

Each case runs the real ``xps`` (or ``tools/make_capsule.py``) in a subprocess.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.capsules.control import ControlServer, request
from xpscerpto.errors import XpsError
from xpscerpto.signing import generate_keypair

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "capsules" / "demo-capsule"
TOOL = ROOT / "tools" / "make_capsule.py"


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def xps(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "xpscerpto", "--home", home, *args)


def encrypt(home: Path, key: str) -> bytes:
    """A keyring blob (binary stdout) made by ``xps key encrypt``."""
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), "key", "encrypt", key],
                          input=b"secret", capture_output=True, check=True, timeout=120).stdout


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def fails(out: subprocess.CompletedProcess[str], *expected: str, prog: str = "xps") -> str:
    """Exit 2, exactly one stderr line ``PROG: error: …`` containing every ``expected``."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and out.stderr.endswith("\n"), out.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def short_home(short_root: Path) -> Path:
    """A home with a short path (an AF_UNIX socket path is limited to 107 bytes)."""
    return short_root / "home"


# -- keyring -------------------------------------------------------------------------------


def test_key_rewrap_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.blob"
    fails(xps(tmp_path / "home", "key", "rewrap", missing), "XPS_ERR_POLICY", f"rewrap: file '{missing}'",
          "No such file")


def test_key_rewrap_names_the_file_that_is_not_a_blob(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    good, bad = tmp_path / "good.blob", tmp_path / "bad.blob"
    blob = encrypt(home, "k")
    good.write_bytes(blob)
    bad.write_bytes(b"not a keyring blob")
    ok(xps(home, "key", "rotate", "k"))
    line = fails(xps(home, "key", "rewrap", good, bad), "XPS_ERR_AUTH", f"rewrap: file '{bad}'")
    assert str(good) not in line
    assert good.read_bytes() == blob  # nothing written when one file fails


def test_key_rewrap_draws_its_progress_bar_in_the_cli_for_many_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    blob = encrypt(home, "k")
    files = []
    for i in range(1001):
        f = tmp_path / f"{i}.blob"
        f.write_bytes(blob)
        files.append(f)
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), "key", "rewrap", *map(str, files)],
                         capture_output=True, timeout=120, check=False)  # bytes: keep the \r
    assert out.returncode == 0 and b"rewrapped 0 of 1001 file(s)" in out.stdout, out.stderr[-200:]
    assert out.stderr.startswith(b"\rrewrap [") and out.stderr.count(b"\n") == 1
    assert out.stderr.endswith(b"\rrewrap [" + b"#" * 30 + b"] 1001/1001\n"), out.stderr[-80:]
    few = xps(home, "key", "rewrap", *files[:3])  # stderr is a pipe and <= 1000 files: no bar
    assert "rewrapped 0 of 3" in ok(few) and few.stderr == ""


def test_audit_verify_rejects_a_bad_public_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fails(xps(home, "audit", "verify", "--public-key", "zz"), "XPS_ERR_POLICY", "--public-key")
    fails(xps(home, "audit", "verify", "--public-key", "ab" * 16), "XPS_ERR_POLICY", "--public-key")


def test_audit_tail_and_status_show_records_without_time_or_event(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A home with its record: one holding a journal but no home.json is refused (review F3).
    ok(xps(home, "init"))
    (home / "audit.log").write_text(json.dumps({"seq": 1, "event": "NO_TIME"}) + "\n"
                                    + json.dumps({"seq": {"odd": 1}}) + "\n" + json.dumps({"other": "x"}) + "\n")
    out = xps(home, "audit", "tail")
    assert "NO_TIME" in ok(out) and out.stderr == ""
    out = xps(home, "status")
    assert "NO_TIME" in ok(out) and out.stderr == ""


@pytest.mark.parametrize(("content", "expected"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"operators": []}', "format must be 1"),
    (b'{"format": 1, "operators": {"a": 1}}', "'operators' must be a list"),
    (b'{"format": 1, "operators": ["x"]}', "operators[0]: expected an object"),
    (b'{"format": 1, "operators": [{"public_key": "' + b"00" * 32 + b'"}]}', "'keyid'"),
    (b'{"format": 1, "operators": [{"keyid": "ab"}]}', "'public_key'"),
    (b'{"format": 1, "operators": [{"keyid": "ab", "public_key": "' + b"zz" * 32 + b'"}]}', "'public_key'"),
    (b'{"format": 1, "operators": [{"keyid": "ab", "public_key": "' + b"00" * 32 + b'"}]}',
     "does not match its public key"),
    (b'{"format": 1, "operators": [{"keyid": "ab", "public_key": "' + b"00" * 32 + b'", "label": 3}]}', "'label'"),
])
def test_malformed_operators_file_is_a_policy_error_naming_it(tmp_path: Path, content: bytes, expected: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "operators.json").write_bytes(content)
    fails(xps(home, "operator", "list"), "XPS_ERR_POLICY", f"operators '{home / 'operators.json'}'", expected)


# -- publisher commands ----------------------------------------------------------------------


@pytest.fixture
def capsule(tmp_path: Path) -> tuple[Path, Path]:
    """(built capsule, its publisher's private key)."""
    key = tmp_path / "alice"
    generate_keypair(key)
    out = tmp_path / "x.capsule"
    ok(run(sys.executable, TOOL, "build", DEMO, "--key", f"{key}.key", "--out", out))
    return out, Path(f"{key}.key")


def test_capsule_build_to_a_missing_folder_names_the_output(tmp_path: Path, capsule: tuple[Path, Path]) -> None:
    _, key = capsule
    out = tmp_path / "nonexistent" / "dir" / "x.capsule"
    for cmd in ([sys.executable, "-m", "xpscerpto", "capsule"], [sys.executable, TOOL]):
        prog = "xps" if "-m" in cmd else "make_capsule.py"
        fails(run(*cmd, "build", DEMO, "--key", key, "--out", out), "XPS_ERR_UPDATE", f"--out '{out}'",
              "cannot write", prog=prog)
    assert not out.parent.exists()


def test_capsule_sign_to_an_unwritable_output(tmp_path: Path, capsule: tuple[Path, Path]) -> None:
    cap, key = capsule
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "y.capsule"  # a path under a regular file: never writable, even for root
    fails(xps(tmp_path / "home", "capsule", "sign", cap, "--key", key, "--out", out), "XPS_ERR_UPDATE",
          f"--out '{out}'")


def test_capsule_inspect_and_verify_of_a_missing_file(tmp_path: Path, capsule: tuple[Path, Path]) -> None:
    missing = tmp_path / "missing.capsule"
    home = tmp_path / "home"
    fails(xps(home, "capsule", "inspect", missing), "XPS_ERR_UPDATE", f"capsule file '{missing}'")
    fails(xps(home, "capsule", "verify", missing, "--trust", tmp_path / "alice.pub"), "XPS_ERR_UPDATE",
          f"capsule file '{missing}'")


def test_last_resort_reports_unexpected_os_errors_in_one_line(tmp_path: Path) -> None:
    fails(xps(Path("/dev/null/home"), "status"), "XPS_ERR_INTERNAL: NotADirectoryError:", "/dev/null/home")
    # A key name too long for the filesystem is now a typed error naming --out.
    fails(run(sys.executable, TOOL, "keygen", "--out", tmp_path / ("k" * 300)),
          "XPS_ERR_KEY: out: cannot use", "File name too long", prog="make_capsule.py")


# -- control socket --------------------------------------------------------------------------


class Listener:
    """A real AF_UNIX listener at ``path`` that accepts and then ``behave(conn)``s."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.behave = behave
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.behave(conn)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        for s in (self.sock, *self.conns):
            s.close()
        self.thread.join(5)


def silent(conn: socket.socket) -> None:
    """Accept, never answer."""


def hang_up(conn: socket.socket) -> None:
    """Wait for the request, then close without reading or answering."""
    conn.settimeout(5)
    conn.recv(1, socket.MSG_PEEK)
    conn.close()


def test_status_and_rollback_when_the_engine_does_not_answer(short_home: Path) -> None:
    mute = Listener(short_home / "control.sock", silent)
    try:
        start = time.monotonic()
        status = subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(short_home), "status"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = status.communicate(timeout=60)
        assert time.monotonic() - start < 30
    finally:
        mute.close()
    fails(subprocess.CompletedProcess(status.args, status.returncode, out, err), "control socket",
          "the engine did not answer within 10 s")
    (short_home / "control.sock").unlink()
    rude = Listener(short_home / "control.sock", hang_up)
    try:
        fails(xps(short_home, "rollback", "aead.xchacha20poly1305"), "control socket",
              "closed the connection without answering")
        fails(xps(short_home, "status"), "closed the connection without answering")
    finally:
        rude.close()


class FakeUpdater:
    """What ControlServer needs of an Updater to answer ``status``."""

    def status(self, events: int = 20) -> dict[str, Any]:
        return {"running": True, "table_version": 7, "routes": {}, "active": [], "staging": None,
                "retired": [], "highest": {}, "events": []}


def test_a_silent_client_does_not_block_the_control_socket(short_home: Path) -> None:
    short_home.mkdir(mode=0o700)
    server = ControlServer(FakeUpdater(), short_home / "control.sock")  # type: ignore[arg-type]
    server.start()
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        idle.connect(str(short_home / "control.sock"))  # connects, sends nothing
        assert request(short_home / "control.sock", {"cmd": "ping"}, timeout=3)["result"] == "pong"
        data = json.loads(ok(xps(short_home, "status", "--json")))
        assert data["table_version"] == 7
        # Served while the idle connection is still open: had the server waited for the idle
        # client (until its 5 s timeout), that connection would be closed (EOF) by now.
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):
            idle.recv(1)
    finally:
        idle.close()
        server.stop()


def test_a_second_engine_on_the_same_home_gets_a_clear_error(short_home: Path, tmp_path: Path) -> None:
    short_home.mkdir(mode=0o700)
    path = short_home / "control.sock"
    # Started at the same time: exactly one wins, the others get an XpsError.
    servers = [ControlServer(FakeUpdater(), path) for _ in range(6)]  # type: ignore[arg-type]
    barrier = threading.Barrier(len(servers))
    errors: list[BaseException] = []
    started: list[ControlServer] = []

    def start(s: ControlServer) -> None:
        barrier.wait()
        try:
            s.start()
            started.append(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert len(started) == 1 and len(errors) == len(servers) - 1
        assert all(isinstance(e, XpsError) and "another engine is already running" in str(e) for e in errors)
        assert request(path, {"cmd": "ping"}, timeout=3)["result"] == "pong"
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        fails(xps(short_home, "watch", inbox, "--polling"), "another engine is already running here")
        assert request(path, {"cmd": "ping"}, timeout=3)["result"] == "pong"  # the first one still serves
    finally:
        for s in started:
            s.stop()
    assert not path.exists()
    # A socket file left by a dead engine is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    again = ControlServer(FakeUpdater(), path)  # type: ignore[arg-type]
    again.start()
    try:
        assert request(path, {"cmd": "ping"}, timeout=3)["result"] == "pong"
    finally:
        again.stop()


def test_a_silent_process_on_the_socket_path_is_not_taken_over(short_home: Path) -> None:
    mute = Listener(short_home / "control.sock", silent)
    try:
        server = ControlServer(FakeUpdater(), short_home / "control.sock")  # type: ignore[arg-type]
        with pytest.raises(XpsError, match="in use by a process that does not answer"):
            server.start()
        assert (short_home / "control.sock").exists()
    finally:
        mute.close()


def test_run_command_keeps_keyboard_interrupt_and_reports_internal_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from xpscerpto.cli import run_command

    def interrupted() -> int:
        raise KeyboardInterrupt

    def broken() -> int:
        raise KeyError("time")

    assert run_command("xps", interrupted) == 130
    assert run_command("xps", broken) == 2
    assert capsys.readouterr().err == "xps: error: XPS_ERR_INTERNAL: KeyError: 'time'\n"


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    """argparse prints usage then the error; operators' scripts get one line instead."""
    for args in (("key", "create"), ("nosuch",), ("rollback",)):
        out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path), *args],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("xps: error: XPS_ERR_POLICY: ")
    out = subprocess.run([sys.executable, str(TOOL), "build"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("make_capsule.py: error: XPS_ERR_POLICY: ")
