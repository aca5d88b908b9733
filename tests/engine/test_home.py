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
