"""Review s9 F1: an output option (``--out``, ``capsule sign FILE``) never replaces what is not the
caller's to replace: the engine home's own files (``kek.key``: every key lost for good), nor a
device node, FIFO, socket, directory or symbolic link. Real homes, files and nodes; ``xps``
in-process (``main``), as an operator's shell would run it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest
from xpscerpto.cli.main import main
from xpscerpto.signing import generate_keypair

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "capsules" / "demo-capsule"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A home with a key, a CA, a publisher key, an operator key, a capsule and a looser policy file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPS_HOME", raising=False)
    home = tmp_path / "home"
    assert main(["--home", str(home), "init"]) == 0
    assert main(["--home", str(home), "key", "create", "k"]) == 0
    assert main(["pki", "init-ca", "ca", "--name", "root"]) == 0
    generate_keypair(tmp_path / "pub")
    generate_keypair(tmp_path / "op")
    assert main(["capsule", "build", str(DEMO), "--key", "pub.key", "--cosigner", "op.pub", "--out",
                 "demo.capsule"]) == 0
    (tmp_path / "other.yaml").write_text("crypto:\n  keyring:\n    dual_window_days: 9\n")
    capsys.readouterr()
    return tmp_path


def _writers(env: Path, out: str) -> dict[str, list[str]]:
    home = str(env / "home")
    return {
        "key request": ["--home", home, "key", "request", "revoke", "k", "--reason", "r", "--out", out],
        "operator request": ["--home", home, "operator", "request", "add", "op.pub", "--reason", "r", "--out", out],
        "policy request": ["--home", home, "policy", "request", "other.yaml", "--reason", "r", "--out", out],
        "pki crl": ["--home", home, "pki", "crl", "--ca", "ca", "--out", out],
        "capsule build": ["--home", home, "capsule", "build", str(DEMO), "--key", "pub.key", "--out", out],
        "capsule sign --out": ["--home", home, "capsule", "sign", "demo.capsule", "--key", "op.key", "--out", out],
    }


def _snapshot(home: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.lstat().st_mode, hashlib.sha256(p.read_bytes()).digest())
            for p in sorted(home.iterdir()) if p.is_file() and not p.name.endswith(".lock")}


def _refused(rc: int, err: str, *expected: str) -> None:
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("xps: error: XPS_ERR_POLICY: --out: "), err
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.parametrize("writer", ["key request", "operator request", "policy request", "pki crl", "capsule build",
                                    "capsule sign --out"])
@pytest.mark.parametrize("victim", ["kek.key", "keyring.db", "audit.log", "home.json", "new-file.json"])
def test_out_into_the_home_is_refused_and_the_home_is_unchanged(env: Path, capsys: pytest.CaptureFixture[str],
                                                                writer: str, victim: str) -> None:
    home = env / "home"
    before = _snapshot(home)
    rc, out, err = _run(capsys, *_writers(env, str(home / victim))[writer])
    _refused(rc, err, "engine home")
    assert out == ""
    assert not (home / "new-file.json").exists()
    after = _snapshot(home)
    # The journal may only have grown by appending (an opened keyring journals nothing here).
    assert {k: v for k, v in after.items() if k != "audit.log"} == {k: v for k, v in before.items() if k != "audit.log"}
    assert main(["--home", str(home), "key", "list"]) == 0
    assert main(["--home", str(home), "audit", "verify"]) == 0


def test_capsule_sign_in_place_inside_the_home_is_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = env / "home"
    stored = home / "capsules" / "x.capsule"
    stored.write_bytes((env / "demo.capsule").read_bytes())
    before = stored.read_bytes()
    rc, _, err = _run(capsys, "--home", str(home), "capsule", "sign", str(stored), "--key", "op.key")
    assert rc == 2 and "XPS_ERR_POLICY: FILE: the path is inside the engine home" in err, err
    assert stored.read_bytes() == before


def test_the_home_is_found_through_xps_home_and_through_a_symlinked_folder(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    home = env / "home"
    kek = (home / "kek.key").read_bytes()
    monkeypatch.setenv("XPS_HOME", str(home))
    for ca, out in (("ca", str(home / "kek.key")), ("ca", "link/kek.key"), ("../ca", "kek.key")):
        if out.startswith("link/"):
            (env / "link").symlink_to(home)
        if ca.startswith(".."):
            monkeypatch.chdir(home)
        rc, _, err = _run(capsys, "pki", "crl", "--ca", ca, "--out", out)
        _refused(rc, err, "engine home")
    assert (home / "kek.key").read_bytes() == kek


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink(path: Path) -> None:
    target = path.with_name(path.name + ".target")
    target.write_bytes(b"the caller's file")
    path.symlink_to(target)


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _char_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))  # what /dev/null is


@pytest.mark.parametrize("writer", ["key request", "operator request", "policy request", "pki crl", "capsule build",
                                    "capsule sign --out"])
@pytest.mark.parametrize(("make", "kind"), [(_fifo, "a FIFO"), (_directory, "a directory"),
                                            (_symlink, "a symbolic link"), (_socket, "a socket"),
                                            (_char_device, "a device")])
def test_out_refuses_a_target_that_is_not_a_regular_file(env: Path, capsys: pytest.CaptureFixture[str], writer: str,
                                                          make: object, kind: str) -> None:
    target = env / "target"
    make(target)  # type: ignore[operator]
    before = target.lstat()
    rc, _, err = _run(capsys, *_writers(env, "target")[writer])
    _refused(rc, err, kind, "only a regular file is replaced")
    after = target.lstat()
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    if kind == "a symbolic link":
        assert (env / "target.target").read_bytes() == b"the caller's file"


@pytest.mark.parametrize("writer", ["key request", "pki crl", "capsule build", "capsule sign --out"])
def test_out_still_replaces_a_regular_file_of_the_callers(env: Path, capsys: pytest.CaptureFixture[str],
                                                          writer: str) -> None:
    # Refreshing a CRL, rebuilding a capsule, writing a request again: documented workflows.
    (env / "mine.out").write_bytes(b"old")
    rc, out, err = _run(capsys, *_writers(env, "mine.out")[writer])
    assert rc == 0, err
    assert (env / "mine.out").read_bytes() != b"old"
    assert "mine.out" in out


def test_keygen_does_not_create_keys_inside_the_home(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = env / "home"
    rc, _, err = _run(capsys, "--home", str(home), "capsule", "keygen", "--out", str(home / "publisher"))
    _refused(rc, err, "engine home")
    assert not list(home.glob("publisher*"))


@pytest.mark.parametrize("victim", ["keyring.db", "kek.key", "capsules/x.capsule"])
def test_a_home_other_than_the_one_named_is_refused_too(env: Path, capsys: pytest.CaptureFixture[str],
                                                        victim: str) -> None:
    # `pki crl` opens no home: the reviewer's `pki crl --out HOME3/keyring.db` named none.
    home = env / "home"
    before = _snapshot(home)
    rc, _, err = _run(capsys, "--home", str(env / "elsewhere"), "pki", "crl", "--ca", "ca", "--out",
                      str(home / victim))
    _refused(rc, err, "inside an engine home")
    assert _snapshot(home) == before and not (home / "capsules" / "x.capsule").exists()


def test_a_folder_with_only_a_home_json_of_its_own_is_not_taken_for_a_home(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (env / "site").mkdir()
    (env / "site" / "home.json").write_text("{}")  # some other tool's file
    rc, _, err = _run(capsys, "--home", str(env / "home"), "pki", "crl", "--ca", "ca", "--out", "site/ca.crl")
    assert rc == 0, err
