"""Review s9 F9: ``Home.initialise(policy=...)`` validates the policy before recording it.

An unchecked record made every later open refuse ("edited outside xps?"), or a value JSON
cannot hold escaped as an untyped TypeError; nothing may be written for a refused policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError
from xpscerpto.home import Home
from xpscerpto.keyring import Keyring


@pytest.mark.parametrize(("policy", "named"), [
    ({"approvals.revoke": 1.0}, "approvals.revoke"),
    ({"x": 1}, "'x'"),
    ({"approvals.revoke": b"2"}, "approvals.revoke"),
    ({"keyring.max_encryptions": "lots"}, "keyring.max_encryptions"),
    ({"engine.policy.require_constant_time": "yes"}, "require_constant_time"),
])
def test_bad_policy_is_refused_typed_and_nothing_written(tmp_path: Path, policy: dict[str, Any],
                                                         named: str) -> None:
    home = Home.resolve(tmp_path / "h")
    with pytest.raises(PolicyError, match=named):
        home.initialise(policy=policy)
    assert not home.record_path.exists()


def test_not_a_mapping_is_refused(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h")
    with pytest.raises(PolicyError, match="policy"):
        home.initialise(policy=[("approvals.revoke", 1)])  # type: ignore[arg-type]
    assert not home.record_path.exists()


def test_real_policy_still_recorded_and_opens(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h")
    policy = XpsConfig().security_policy()
    record = home.initialise(policy=policy)
    assert dict(record.policy) == policy
    Keyring(home).close()


# Review s9 F5: a first command initialises only an empty (or missing) directory.

def test_keyring_refuses_non_empty_directory_that_is_no_home(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "app.py").write_text("print('hi')\n")
    with pytest.raises(PolicyError, match="not empty and not a home") as err:
        Keyring(Home.resolve(project))
    assert "app.py" not in str(err.value)
    left = sorted(p.name for p in project.iterdir())
    assert not {"kek.key", "keyring.db", "home.json", "audit.log"} & set(left)


def test_keyring_still_initialises_empty_or_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "missing"):
        home = Home.resolve(where)
        Keyring(home).close()
        assert home.record_path.exists() and (where / "kek.key").exists()


def test_explicit_initialise_of_non_empty_directory_still_opens(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    home = Home.resolve(tmp_path)
    home.initialise(policy=XpsConfig().security_policy())  # what `xps init` does first
    Keyring(home).close()
    assert (tmp_path / "kek.key").exists()
