"""``xps pki`` and ``xps channel`` refusals found in review (C2, C4, C5, C6): real files,
real processes, real sockets."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.channel.identity import load_certificates, load_crls
from xpscerpto.channel.pki import CertificateAuthority, passphrase_from_env
from xpscerpto.cli.main import main


def _xps(*args: str) -> int:
    return main(list(args))


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False, env=env)


@pytest.fixture
def cadir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plain root CA in ./ca and two leaves (svc, cli) in the test's folder."""
    monkeypatch.chdir(tmp_path)
    assert _xps("pki", "init-ca", "ca", "--name", "Root") == 0
    for name in ("svc", "cli"):
        assert _xps("pki", "issue", "--ca", "ca", "--name", name, "--dns", f"{name}.test", "--out", name) == 0
    return tmp_path


def _serials(folder: Path) -> set[int]:
    return {int(r["serial"], 16) for r in json.loads((folder / "revoked.json").read_bytes())["revoked"]}


def _serial(cert: Path) -> int:
    return load_certificates(cert.read_bytes())[0].serial_number


# -- C2: concurrent revocations ------------------------------------------------------------


def test_parallel_revokes_are_all_recorded(cadir: Path) -> None:
    n = 8
    for i in range(n):
        assert _xps("pki", "issue", "--ca", "ca", "--name", f"c{i}", "--dns", f"c{i}.test", "--out", f"c{i}") == 0
    procs = [subprocess.Popen([sys.executable, "-m", "xpscerpto", "pki", "revoke", "--ca", "ca", f"c{i}.crt"],
                              cwd=cadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(out.startswith("revoked serial") for out, _ in outs)
    wanted = {_serial(cadir / f"c{i}.crt") for i in range(n)}
    assert _serials(cadir / "ca") == wanted
    assert _xps("pki", "crl", "--ca", "ca", "--out", "ca.crl") == 0
    crl = load_crls((cadir / "ca.crl").read_bytes())[0]
    assert {r.serial_number for r in crl} == wanted


def test_revoke_waits_for_the_ca_directory_lock(cadir: Path) -> None:
    lock = cadir / "ca" / "revoked.json.lock"
    assert lock.exists()  # made by init-ca, which holds it too
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "xpscerpto", "pki", "revoke", "--ca", "ca", "svc.crt"],
                                cwd=cadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # far longer than the command takes unblocked
        assert proc.poll() is None
        assert _serials(cadir / "ca") == set()
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _serials(cadir / "ca") == {_serial(cadir / "svc.crt")}


def test_save_revoked_keeps_what_another_writer_saved(cadir: Path) -> None:
    first = CertificateAuthority.load(cadir / "ca")
    second = CertificateAuthority.load(cadir / "ca")  # loaded before the first one saves
    first.revoke(1111, "one").save_revoked(cadir / "ca")
    second.revoke(2222, "two").save_revoked(cadir / "ca")
    assert _serials(cadir / "ca") == {1111, 2222}
    assert [r.reason for r in CertificateAuthority.load(cadir / "ca").revoked] == ["one", "two"]


# -- C4: a passphrase variable that is not UTF-8 ---------------------------------------------

_SECRET = "hunter2\udce9secret"  # what Python makes of the bytes b"hunter2\xe9secret" in a UTF-8 locale


def _leaks(text: str) -> bool:
    return any(s in text for s in ("hunter2", "secret", "\udce9", "udce9", "\\xe9", "xe9", "position"))


def test_passphrase_variable_not_utf8_is_a_typed_refusal_without_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_PASS", _SECRET)
    with pytest.raises(xps.PolicyError) as info:
        passphrase_from_env("CA_PASS")
    exc = info.value
    assert "CA_PASS" in str(exc)
    assert not _leaks(str(exc)) and not any(_leaks(repr(a)) for a in exc.args)
    assert exc.__cause__ is None and exc.__context__ is None


def test_cli_refuses_a_passphrase_variable_not_utf8(cadir: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CA_PASS", _SECRET)
    capsys.readouterr()
    for argv in (("pki", "init-ca", "new", "--name", "Root", "--passphrase-env", "CA_PASS"),
                 ("pki", "issue", "--ca", "ca", "--name", "s", "--dns", "s.test", "--out", "s",
                  "--passphrase-env", "CA_PASS"),
                 ("pki", "crl", "--ca", "ca", "--out", "x.crl", "--ca-passphrase-env", "CA_PASS")):
        assert _xps(*argv) == 2
        err = capsys.readouterr().err
        assert "XPS_ERR_POLICY" in err and "CA_PASS" in err and not _leaks(err), err
    assert not (cadir / "new").exists() and not (cadir / "s.key").exists() and not (cadir / "x.crl").exists()


# -- C5: ordinary input problems are typed ---------------------------------------------------


@pytest.mark.parametrize(("entry", "field"), [
    ({"serial": "-1", "time": "2026-01-01T00:00:00+00:00"}, "serial"),
    ({"serial": "0", "time": "2026-01-01T00:00:00+00:00"}, "serial"),
    ({"serial": "ff" * 23, "time": "2026-01-01T00:00:00+00:00"}, "serial"),
    ({"serial": "0x2a", "time": "2026-01-01T00:00:00+00:00"}, "serial"),
    ({"serial": 42, "time": "2026-01-01T00:00:00+00:00"}, "serial"),
    ({"serial": "2a", "time": "1900-01-01T00:00:00"}, "time"),
    ({"serial": "2a", "time": "9999-12-31T23:00:00-05:00"}, "time"),
    ({"serial": "2a", "time": 5}, "time"),
    ({"serial": "2a", "time": "2026-01-01T00:00:00+00:00", "reason": ["x"]}, "reason"),
])
def test_malformed_revoked_json_is_refused_at_load_naming_file_and_field(
        cadir: Path, capsys: pytest.CaptureFixture[str], entry: dict[str, object], field: str) -> None:
    (cadir / "ca" / "revoked.json").write_text(json.dumps({"revoked": [entry]}))
    with pytest.raises(xps.PolicyError, match=rf"revoked\.json is malformed \(entry 1: {field}\)"):
        CertificateAuthority.load(cadir / "ca")
    capsys.readouterr()
    assert _xps("pki", "crl", "--ca", "ca", "--out", "x.crl") == 2
    err = capsys.readouterr().err
    assert "XPS_ERR_POLICY" in err and "revoked.json" in err and field in err, err
    assert not (cadir / "x.crl").exists()


def test_a_revoked_json_nested_too_deep_is_refused_by_crl_and_revoke(cadir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Review of this session's fixes: json.loads raised RecursionError, a traceback from the CLI.
    (cadir / "ca" / "revoked.json").write_text('{"revoked": ' + "[" * 100_000 + "]" * 100_000 + "}")
    capsys.readouterr()
    assert _xps("pki", "crl", "--ca", "ca", "--out", "x.crl") == 2
    ca = CertificateAuthority.create("Other")
    with pytest.raises(xps.PolicyError, match=r"revoked\.json is not JSON"):
        ca.save_revoked(cadir / "ca")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "XPS_ERR_POLICY" in err and "revoked.json is not JSON" in err, err


def test_revoked_json_time_without_offset_is_utc(cadir: Path) -> None:
    entry = {"serial": "2a", "time": "2026-01-01T00:00:00"}
    (cadir / "ca" / "revoked.json").write_text(json.dumps({"revoked": [entry]}))
    ca = CertificateAuthority.load(cadir / "ca")
    assert ca.revoked[0].time.utcoffset() is not None and ca.revoked[0].time.isoformat().startswith("2026-01-01T00:00")
    assert [r.serial_number for r in ca.crl()] == [42]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("where", ["closed-port", "unknown-host"])
def test_connect_to_an_unreachable_address_is_typed_and_names_it(cadir: Path, capsys: pytest.CaptureFixture[str],
                                                                  where: str) -> None:
    host, port = ("127.0.0.1", _closed_port()) if where == "closed-port" else ("no-such-host.invalid", 7)
    capsys.readouterr()
    rc = _xps("--home", str(cadir / "home"), "channel", "connect", "--cert", "cli.crt", "--key", "cli.key",
              "--ca", "ca/ca.crt", "--host", host, "--port", str(port), "--expect-name", "svc.test")
    err = capsys.readouterr().err
    assert rc == 2
    assert "XPS_ERR_" in err and "XPS_ERR_INTERNAL" not in err, err
    assert f"{host}:{port}" in err, err


def test_connect_message_not_utf8_is_sent_as_given(cadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(cadir / "home"), "channel", "serve",
                               "--cert", "svc.crt", "--key", "svc.key", "--ca", "ca/ca.crt", "--once"],
                              cwd=cadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        capsys.readouterr()
        rc = _xps("--home", str(cadir / "home"), "channel", "connect", "--cert", "cli.crt", "--key", "cli.key",
                  "--ca", "ca/ca.crt", "--port", line.strip().rsplit(":", 1)[1], "--expect-name", "svc.test",
                  "--message", "secret\udcff")
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "echo: secret\ufffd" in out
        assert "udcff" not in out + err
    finally:
        server.communicate(timeout=30)


# -- C6: init-ca over part of a CA -----------------------------------------------------------


@pytest.mark.parametrize("lost", [("ca.key",), ("ca.key", "ca.crt"), ("ca.key", "revoked.json")])
def test_init_ca_refuses_a_directory_holding_part_of_a_ca(cadir: Path, capsys: pytest.CaptureFixture[str],
                                                          lost: tuple[str, ...]) -> None:
    assert _xps("pki", "revoke", "--ca", "ca", "svc.crt") == 0
    for name in lost:
        (cadir / "ca" / name).unlink()
    before = {p.name: p.read_bytes() for p in (cadir / "ca").iterdir()}
    capsys.readouterr()
    assert _xps("pki", "init-ca", "ca", "--name", "Root") == 2
    err = capsys.readouterr().err
    assert "XPS_ERR_POLICY" in err
    for name in {"ca.crt", "ca.key", "revoked.json"} - set(lost):
        assert name in err, err
    assert "backup" in err and "new directory" in err, err
    assert {p.name: p.read_bytes() for p in (cadir / "ca").iterdir()} == before


def test_save_refuses_a_directory_holding_part_of_a_ca(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    folder.mkdir()
    (folder / "revoked.json").write_text('{"revoked": []}')
    with pytest.raises(xps.PolicyError, match=r"revoked\.json"):
        CertificateAuthority.create("Root").save(folder)
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["revoked.json"]
    CertificateAuthority.create("Root").save(tmp_path / "fresh")  # an empty or new directory is fine
    assert CertificateAuthority.load(tmp_path / "fresh").revoked == ()


# -- a FIFO where a file is read: refused, never waited on ---------------------------------------


@pytest.mark.parametrize(("fifo", "argv"), [
    ("ca/revoked.json", ("pki", "crl", "--ca", "ca", "--out", "x.crl")),
    ("ca/ca.crt", ("pki", "crl", "--ca", "ca", "--out", "x.crl")),
    ("ca/ca.key", ("pki", "crl", "--ca", "ca", "--out", "x.crl")),
    ("ca/revoked.json", ("pki", "revoke", "--ca", "ca", "svc.crt")),
    ("svc.crt", ("pki", "revoke", "--ca", "ca", "svc.crt")),
    ("svc.crt", ("channel", "connect", "--cert", "svc.crt", "--key", "svc.key", "--ca", "ca/ca.crt",
                 "--port", "1", "--expect-name", "cli.test")),
    ("vectors.json", ("channel", "vectors", "vectors.json")),
])
def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(cadir: Path, fifo: str, argv: tuple[str, ...]) -> None:
    # Review of the whole change: these files were read with read_bytes(), and opening a FIFO
    # without a writer blocks for ever (`xps pki crl` hung). They go through read_stored now.
    path = cadir / fifo
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    out = subprocess.run([sys.executable, "-m", "xpscerpto", *argv], cwd=cadir, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "not a regular file" in out.stderr and out.stderr.count("\n") == 1, out.stderr
