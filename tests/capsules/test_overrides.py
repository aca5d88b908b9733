"""``overrides.json``, the emergency changes a restart re-applies (review findings H2, M1, M2):
one key per setting whatever spelling was typed, a deleted file is a refusal, and the journal
never claims a change that was not made. Real ``xps watch`` / ``config emergency`` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps_api
from xpscerpto.capsules.service import WatchService
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError


def xps(home: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)


class Watcher:
    """``xps watch`` in a subprocess, started or refused."""

    def __init__(self, home: Path, inbox: Path, config: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen([*cmd, "watch", str(inbox)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=None)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()  # "watching …" once up; "" if it exited
        self.stderr = ""
        if not self.line:
            self.proc.wait(30)
            assert self.proc.stderr is not None
            self.stderr = self.proc.stderr.read()

    @property
    def running(self) -> bool:
        return self.line.startswith("watching")

    def stop(self) -> str:
        """Stop it; what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
            assert self.proc.stderr is not None
            self.stderr = self.proc.stderr.read()
        return self.stderr


@pytest.fixture
def root(short_root: Path) -> Path:
    return short_root


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()


def start(watchers: list[Watcher], home: Path, root: Path, config: Path | None = None) -> Watcher:
    w = Watcher(home, root / "inbox", config)
    watchers.append(w)
    return w


def emergency(home: Path, key: str, value: str) -> subprocess.CompletedProcess[str]:
    return xps(home, "config", "emergency", key, value, "--reason", "CVE-2031-0001")


def routes(home: Path) -> set[str]:
    out = xps(home, "status", "--json")
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout)["routes"])


def journal(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]


def changes(home: Path) -> list[dict[str, Any]]:
    return [r for r in journal(home) if r["event"] == "CONFIG_EMERGENCY_CHANGE"]


def refused_start(w: Watcher, *expected: str) -> None:
    assert not w.running, "the engine started"
    assert w.proc.returncode == 2 and w.stderr.count("\n") == 1, w.stderr  # one line, no traceback
    for text in expected:
        assert text in w.stderr, (text, w.stderr)


# -- H2: one key, whatever spelling was typed ---------------------------------------------------


def test_a_newer_change_in_the_other_spelling_wins_after_a_restart(root: Path, watchers: list[Watcher]) -> None:
    home = root / "home"
    w = start(watchers, home, root)
    assert emergency(home, "engine.policy.forbid", "[]").returncode == 0
    assert emergency(home, "crypto.policy.forbid", '["aes128"]').returncode == 0
    assert "aead.aes128gcm" not in routes(home)
    w.stop()
    assert json.loads((home / "overrides.json").read_text()) == {"engine.policy.forbid": ["aes128"]}
    assert start(watchers, home, root).running
    assert "aead.aes128gcm" not in routes(home)


def test_an_old_file_with_two_spellings_of_one_key_is_refused_naming_both(root: Path,
                                                                          watchers: list[Watcher]) -> None:
    home = root / "home"
    start(watchers, home, root).stop()
    (home / "overrides.json").write_text(json.dumps({"crypto.policy.forbid": ["aes128"], "engine.policy.forbid": []}))
    refused_start(start(watchers, home, root), "overrides.json", "'crypto.policy.forbid' and "
                  "'engine.policy.forbid' are one key", "does not say which was written last")
    # Two spellings with one value say the same thing: they merge.
    (home / "overrides.json").write_text(json.dumps({"crypto.policy.forbid": ["aes128"],
                                                     "engine.policy.forbid": ["aes128"]}))
    assert start(watchers, home, root).running
    assert "aead.aes128gcm" not in routes(home)


# -- M1: a deleted or emptied file is a refusal, never a silent reset ---------------------------


@pytest.mark.parametrize(("damage", "says"), [("delete", "missing, though this home recorded it"),
                                              ("empty", "empty, though this home recorded it")])
def test_a_lost_overrides_file_is_refused_not_reset(root: Path, watchers: list[Watcher], damage: str,
                                                    says: str) -> None:
    home = root / "home"
    w = start(watchers, home, root)
    assert emergency(home, "crypto.policy.forbid", '["aes128", "aes256"]').returncode == 0
    w.stop()
    if damage == "delete":
        (home / "overrides.json").unlink()
    else:
        (home / "overrides.json").write_bytes(b"")
    refused_start(start(watchers, home, root), "overrides store", says)
    shown = xps(home, "config", "show")
    assert shown.returncode == 2 and "overrides store" in shown.stderr


def test_an_override_that_replaces_the_files_value_is_noticed_at_start(root: Path,
                                                                       watchers: list[Watcher]) -> None:
    home = root / "home"
    first, later = root / "a.yaml", root / "b.yaml"
    first.write_text("crypto:\n  policy:\n    forbid: [aes128]\n")
    later.write_text("crypto:\n  policy:\n    forbid: [aes128, chacha20]\n")
    w = start(watchers, home, root, first)
    assert emergency(home, "crypto.policy.forbid", '["aes128", "aes256"]').returncode == 0
    assert "notice" not in w.stop()
    err = start(watchers, home, root, later).stop()
    assert "notice: emergency override engine.policy.forbid" in err, err
    assert '["aes128", "chacha20"]' in err


# -- M2: the journal follows the change, never precedes it --------------------------------------


def test_a_damaged_overrides_file_refuses_the_change_and_journals_nothing(root: Path,
                                                                          watchers: list[Watcher]) -> None:
    home = root / "home"
    start(watchers, home, root)
    (home / "overrides.json").write_text('{"crypto.policy.forbid": [')
    out = emergency(home, "crypto.policy.forbid", '["aes128"]')
    assert out.returncode == 2 and "overrides" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "aead.aes128gcm" in routes(home)
    assert changes(home) == []
    assert (home / "overrides.json").read_text() == '{"crypto.policy.forbid": ['


def test_a_change_that_fails_to_apply_or_to_be_journaled_is_undone(root: Path) -> None:
    home = root / "home"
    svc = WatchService(xps_api.Engine(), root / "inbox", home, polling=True, config=XpsConfig.defaults()).start()
    try:
        svc.emergency_change("crypto.policy.forbid", ["aes128"], operator="o", reason="first")
        before = (home / "overrides.json").read_bytes()
        journaled = changes(home)

        def unchanged() -> None:
            assert (home / "overrides.json").read_bytes() == before
            assert svc.config.engine.policy.forbid == ("aes128",)
            routed = set(svc.updater.engine.table.routes)
            assert "aead.chacha20poly1305" in routed and "aead.aes128gcm" not in routed
            assert changes(home) == journaled

        real_reconfigure = svc.updater.reconfigure

        def failing_reconfigure(config: Any, **kw: Any) -> Any:
            if "chacha20" in config.policy.forbid:
                raise PolicyError("reconfigure: failed (test)")
            return real_reconfigure(config, **kw)

        svc.updater.reconfigure = failing_reconfigure  # type: ignore[method-assign]
        with pytest.raises(PolicyError, match="failed"):
            svc.emergency_change("crypto.policy.forbid", ["aes128", "chacha20"], operator="o", reason="second")
        unchanged()
        svc.updater.reconfigure = real_reconfigure  # type: ignore[method-assign]

        real_record = svc.updater.audit.record

        def refusing(event: str, **fields: Any) -> object:
            if event == "CONFIG_EMERGENCY_CHANGE":
                raise PolicyError("journal: refused (test)")
            return real_record(event, **fields)

        svc.updater.audit.record = refusing  # type: ignore[method-assign]
        with pytest.raises(PolicyError, match="refused"):
            svc.emergency_change("crypto.policy.forbid", ["aes128", "chacha20"], operator="o", reason="third")
        unchanged()
    finally:
        svc.stop()


def test_an_emergency_change_is_journaled_with_the_per_section_key(root: Path,
                                                                   watchers: list[Watcher]) -> None:
    home = root / "home"
    start(watchers, home, root)
    assert emergency(home, "crypto.policy.forbid", '["AES-128-GCM"]').returncode == 0
    assert "aead.aes128gcm" not in routes(home)
    (change,) = changes(home)
    assert (change["key"], change["new"]) == ("engine.policy.forbid", ["aead.aes128gcm"])
    assert json.loads((home / "home.json").read_text())["stores"]["overrides"] == "overrides.json"


# -- M5: offline `config show` is what an engine here runs --------------------------------------


def test_config_show_applies_the_homes_policy_and_overrides(root: Path, watchers: list[Watcher]) -> None:
    home, prod = root / "home", root / "prod.yaml"
    prod.write_text("crypto:\n  approvals: {revoke: 2, destroy: 2}\n")
    assert xps(home, "init", config=prod).returncode == 0
    w = start(watchers, home, root, prod)
    assert emergency(home, "crypto.policy.forbid", '["aes128"]').returncode == 0
    w.stop()
    out = xps(home, "config", "show")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["crypto"]
    assert shown["policy"]["forbid"] == ["aes128"] and shown["approvals"]["revoke"] == 2
