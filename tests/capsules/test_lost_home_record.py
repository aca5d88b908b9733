"""A home that holds stores but lost its ``home.json``: ``xps status`` and an offline ``xps rollback``
refuse it as ``xps key`` does, and change nothing.

Review F3: README says such a home "is refused until restored", yet ``xps status`` showed what
was left of it (with state.json gone too: an empty committed state, exit 0) and the offline
``xps rollback`` rewrote state.json and appended to the journal. Real homes built with the CLI
(``trust add``, ``watch`` enabling a capsule), real ``xps`` processes.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_cli_service import DEMO, NAME, Watcher, status, tool, wait_for, xps

CAPSULE = "xchacha20-openssl"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stopped home with the demo capsule committed as active (built once, copied per test)."""
    base = tmp_path_factory.mktemp("lost-record")
    tool("keygen", "--out", str(base / "alice"))
    capsule = base / NAME
    tool("build", str(DEMO), "--key", str(base / "alice.key"), "--out", str(capsule))
    home = base / "home"
    xps(home, "trust", "add", str(base / "alice.pub"), "--ops", "aead.*")
    xps(home, "key", "list")  # a keyring and a KEK too, as a home in use has
    w = Watcher(home, base / "inbox")
    try:
        (base / "inbox" / NAME).write_bytes(capsule.read_bytes())
        wait_for(lambda: status(home)["active"] != [], "the capsule to be enabled")
    finally:
        w.stop()
    assert [a["name"] for a in status(home)["active"]] == [CAPSULE]
    yield home


@pytest.fixture
def home(built: Path, tmp_path: Path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(built, h, symlinks=True, ignore=shutil.ignore_patterns("control.sock"))
    return h


def _digests(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.iterdir())
            if p.is_file() and not p.is_symlink()}


def _refusal(home: Path) -> str:
    """What `xps key list` (which binds to the home's record) says about this home."""
    out = xps(home, "key", "list", check=False)
    assert out.returncode == 2 and "but no home.json" in out.stderr, out.stderr
    return out.stderr


@pytest.mark.parametrize("lost", [("home.json",), ("home.json", "state.json")])
@pytest.mark.parametrize("as_json", [False, True])
def test_status_refuses_a_home_that_lost_its_record(home: Path, lost: tuple[str, ...], as_json: bool) -> None:
    for name in lost:
        (home / name).unlink()
    before = _digests(home)
    out = xps(home, "status", *(["--json"] if as_json else []), check=False)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr.startswith("xps: error: XPS_ERR_POLICY: home ")
    assert out.stderr == _refusal(home)  # the same check, the same words
    assert "keyring.db" in out.stderr and ("state.json" in out.stderr) == ("state.json" not in lost)
    assert _digests(home) == before and not (home / "home.json").exists()


@pytest.mark.parametrize("lost", [("home.json",), ("home.json", "state.json")])
def test_offline_rollback_refuses_a_home_that_lost_its_record_and_changes_nothing(
        home: Path, lost: tuple[str, ...]) -> None:
    for name in lost:
        (home / name).unlink()
    before = _digests(home)
    out = xps(home, "rollback", CAPSULE, check=False)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr == _refusal(home)
    # state.json and the journal as they were; nothing re-created, no record guessed.
    assert _digests(home) == before
    assert not (home / "home.json").exists() and (home / "state.json").exists() == ("state.json" not in lost)


def test_once_home_json_is_restored_status_and_rollback_run(home: Path, tmp_path: Path) -> None:
    backup = tmp_path / "home.json.backup"
    shutil.copy2(home / "home.json", backup)
    (home / "home.json").unlink()
    assert xps(home, "status", check=False).returncode == 2
    shutil.copy2(backup, home / "home.json")
    assert [a["name"] for a in status(home)["active"]] == [CAPSULE]
    assert "committed state (no engine running)" in xps(home, "rollback", CAPSULE).stdout
    assert status(home)["active"] == []


def test_an_empty_home_still_shows_an_empty_state_and_gets_no_record(tmp_path: Path) -> None:
    """Nothing to protect yet: status reads nothing and writes nothing (no record, no lock file)."""
    h = tmp_path / "fresh"
    out = xps(h, "status", "--json")
    assert '"active": []' in out.stdout
    assert sorted(p.name for p in h.iterdir()) == ["capsules"]


@pytest.mark.parametrize("command", [("trust", "list"), ("trust", "list", "--json")])
def test_trust_list_refuses_a_home_that_lost_its_record(home: Path, command: tuple[str, ...]) -> None:
    (home / "home.json").unlink()
    before = _digests(home)
    out = xps(home, *command, check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == _refusal(home)
    assert _digests(home) == before
