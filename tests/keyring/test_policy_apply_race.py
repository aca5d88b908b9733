"""Two ``xps policy apply`` committed one after the other must reach ``home.json`` in that order.

Review finding (session 7, F3): the database commit is serialised, the ``home.json`` write came
after it, outside any lock; P1 committed, P2 committed and wrote, then P1 wrote its older policy.
Every later keyring command was then refused as tampering, and ``xps watch`` (which reads the
routing floor from ``home.json``) started under the older, looser one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps_api
from xpscerpto.config import XpsConfig
from xpscerpto.home import Home
from xpscerpto.keyring import Keyring
from xpscerpto.settings import EngineConfig, Policy

from .test_home_policy import ok, xps


def test_the_policy_committed_last_is_the_one_home_json_keeps(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    ok(xps(home, "init"))
    p1_committed, p2_written = threading.Event(), threading.Event()
    original = Home.replace_policy

    def late_for_p1(self: Home, policy: Any, *more: Any, **kw: Any) -> Any:
        if threading.current_thread().name == "p1":
            p1_committed.set()  # P1's database commit is done; its home.json write comes last
            assert p2_written.wait(60)
        return original(self, policy, *more, **kw)

    monkeypatch.setattr(Home, "replace_policy", late_for_p1)
    first = XpsConfig(engine=EngineConfig(policy=Policy(forbid=("aes128",))))
    both = XpsConfig(engine=EngineConfig(policy=Policy(forbid=("aes128", "chacha20"))))
    errors: list[BaseException] = []

    def p1() -> None:
        try:
            with Keyring(Home.resolve(home), engine=xps_api.Engine()) as ring:
                ring.apply_policy(first, reason="forbid aes128")
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    t = threading.Thread(target=p1, name="p1")
    t.start()
    try:
        assert p1_committed.wait(60)
        with Keyring(Home.resolve(home), engine=xps_api.Engine()) as ring:
            ring.apply_policy(both, reason="forbid both")
    finally:
        p2_written.set()
        t.join(60)
    assert not errors, errors
    recorded = json.loads((home / "home.json").read_text())["policy"]
    assert recorded["engine.policy.forbid"] == ["aes128", "chacha20"]
    assert "k" not in ok(xps(home, "key", "list"))  # opens: home.json matches the sealed policy
    assert json.loads(ok(xps(home, "config", "show")))["crypto"]["policy"]["forbid"] == ["aes128", "chacha20"]
