"""``xps pki`` and ``xps channel`` as an operator runs them: real files, real processes, real sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto.cli.main import main


def _xps(*args: str, home: Path | None = None) -> int:
    return main([*(["--home", str(home)] if home else []), *args])


@pytest.fixture
def pkidir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CA_PW", "ca secret")
    assert _xps("pki", "init-ca", "root", "--name", "Root", "--passphrase-env", "CA_PW") == 0
    assert _xps("pki", "init-ca", "inter", "--name", "Inter", "--parent", "root", "--parent-passphrase-env",
                "CA_PW") == 0
    for name in ("srv", "cli"):
        assert _xps("pki", "issue", "--ca", "inter", "--name", name, "--dns", f"{name}.test", "--out", name) == 0
    for ca in ("root", "inter"):
        assert _xps("pki", "crl", "--ca", ca, "--out", f"{ca}.crl",
                    *(["--ca-passphrase-env", "CA_PW"] if ca == "root" else [])) == 0
    return tmp_path


def test_pki_files_and_modes(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in ("root/ca.key", "inter/ca.key", "srv.key", "srv.static", "cli.key"):
        assert (pkidir / f).stat().st_mode & 0o777 == 0o600, f
    assert b"ENCRYPTED" in (pkidir / "root/ca.key").read_bytes()
    assert _xps("pki", "issue", "--ca", "inter", "--name", "srv", "--dns", "x", "--out", "srv") == 2
    assert "already exists" in capsys.readouterr().err
    assert _xps("pki", "init-ca", "root", "--name", "Again") == 2
    assert _xps("pki", "issue", "--ca", "root", "--name", "x", "--out", "x") == 2  # no passphrase, no names
    assert _xps("pki", "crl", "--ca", "root", "--out", "r.crl", "--ca-passphrase-env", "UNSET_VAR") == 2
    err = capsys.readouterr().err
    assert "XPS_ERR_" in err and "ca secret" not in err


def _serve(pkidir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(pkidir / "home"), "channel", "serve",
           "--cert", "srv.crt", "--key", "srv.key", "--ca", "root/ca.crt", "--crl", "root.crl", "--crl", "inter.crl",
           "--once", *extra]
    proc = subprocess.Popen(cmd, cwd=pkidir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
    return proc, line.strip().rsplit(":", 1)[1]


def _connect(pkidir: Path, port: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "channel", "connect", "--cert", "cli.crt", "--key",
                           "cli.key", "--ca", "root/ca.crt", "--crl", "root.crl", "--crl", "inter.crl", "--port", port,
                           *extra], check=False, cwd=pkidir, capture_output=True, text=True, timeout=60)


def test_serve_connect_revoke(pkidir: Path) -> None:
    proc, port = _serve(pkidir, "--require-pq")
    try:
        bad = _connect(pkidir, port, "--expect-name", "srv.test")  # classic offer to a PQ-only server
        assert bad.returncode == 2 and "pq-required" in bad.stderr
        good = _connect(pkidir, port, "--expect-name", "srv.test", "--require-pq", "--message", "hi there")
        assert good.returncode == 0, good.stderr
        assert "echo: hi there" in good.stdout and "XXhfs" in good.stdout
        out, _ = proc.communicate(timeout=30)
        assert "served 1 channels, 1 failed handshakes" in out
    finally:
        proc.kill()
    # revoke the server's certificate and publish the CRL: the client refuses the server
    assert _xps("pki", "revoke", "--ca", "inter", "srv.crt") == 0
    assert _xps("pki", "crl", "--ca", "inter", "--out", "inter.crl") == 0
    proc, port = _serve(pkidir)
    try:
        res = _connect(pkidir, port, "--expect-name", "srv.test")
        assert res.returncode == 2 and "XPS_ERR_AUTH" in res.stderr and "revoked" in res.stderr
    finally:
        proc.kill()
        proc.communicate()
    log = (pkidir / "home" / "audit.log").read_text()
    assert "CHANNEL_HANDSHAKE_FAIL" in log and "pq-required" in log


def test_serve_and_connect_run_under_the_homes_recorded_routing_floor(pkidir: Path) -> None:
    # Review of this session's fixes: the channel commands used a default engine, so a home
    # recording forbid: [chacha20] (and a --config saying so) still ran ChaChaPoly.
    home = pkidir / "home"
    (pkidir / "forbid.yaml").write_text("crypto:\n  policy:\n    forbid: [chacha20]\n")
    assert _xps("--config", str(pkidir / "forbid.yaml"), "init", home=home) == 0
    proc, port = _serve(pkidir)
    try:
        res = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), "channel", "connect", "--cert",
                              "cli.crt", "--key", "cli.key", "--ca", "root/ca.crt", "--crl", "root.crl", "--crl",
                              "inter.crl", "--port", port, "--expect-name", "srv.test"],
                             check=False, cwd=pkidir, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and "connected to" not in res.stdout, (res.stdout, res.stderr)
    finally:
        proc.kill()
        out, _ = proc.communicate()
    assert "channel from" not in out
