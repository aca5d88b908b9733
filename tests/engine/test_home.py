"""The home record's ``sealed`` list: written once, read strictly, never widened by a bad name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home.resolve(tmp_path / "home")
    h.initialise(policy={})
    return h


def test_a_store_is_marked_once_and_stays_marked(home: Home) -> None:
    assert not home.is_sealed("keyring")
    assert "sealed" not in json.loads(home.record_path.read_text())  # absent until a store seals
    home.mark_sealed("keyring")
    home.mark_sealed("keyring")
    assert home.is_sealed("keyring") and home.record().sealed == ("keyring",)


@pytest.mark.parametrize("name", ["nope", "", 3, None, b"keyring", "keyring\x00"])
def test_only_a_store_name_can_be_marked(home: Home, name: object) -> None:
    with pytest.raises(PolicyError):
        home.mark_sealed(name)  # type: ignore[arg-type]
    assert home.record().sealed == ()  # the record still reads: nothing was written


def test_marking_needs_a_record(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no home\.json"):
        Home.resolve(tmp_path / "bare").mark_sealed("keyring")


@pytest.mark.parametrize("how", ["symlink loop", "unknown user", "empty"])
def test_a_home_path_that_cannot_be_resolved_is_a_typed_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               how: str) -> None:
    # Found by a review: a symlink loop or ~nosuchuser raised RuntimeError (a traceback from
    # `xps --home`), and "" silently made the current directory a home.
    monkeypatch.chdir(tmp_path)
    if how == "symlink loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        given = str(tmp_path / "loop" / "home")
    elif how == "unknown user":
        given = "~xps-no-such-user-4711/home"
    else:
        given = ""
    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: home: "):
        Home.resolve(given)
    assert list(tmp_path.iterdir()) == ([tmp_path / "loop"] if how == "symlink loop" else [])


def test_xps_with_an_empty_home_option_refuses_and_writes_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", "", "key", "list"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "home: expected a path, got an empty one" in out.stderr
    assert out.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []
