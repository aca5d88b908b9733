"""``xps watch``, ``policy show``, ``config show`` and ``providers`` read the home's routing floor
from ``home.json`` only once the keyring's sealed copy vouched for it, as every keyring command
does: an edit of ``home.json`` by someone who can write the home must not loosen what an
incident forbade (review F1). Real homes, real ``xps`` processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xpscerpto as xps_api
from xpscerpto.capsules.service import WatchService
from xpscerpto.keyring import KeyringTampered

from .test_home_policy import _KILL_AT_HOME_JSON, events, ok, refused, xps

FORBID_AES128 = "crypto:\n  policy:\n    forbid: [aes128]\n"
SEALED = "its policy differs from the one this keyring sealed"


@pytest.fixture
def root(short_root: Path) -> Path:
    (short_root / "inbox").mkdir()
    return short_root


def init(root: Path, text: str) -> Path:
    cfg = root / "init.yaml"
    cfg.write_text(text)
    ok(xps(root / "home", "init", config=cfg))
    return root / "home"


def edit_record(home: Path, *, drop_sealed_marker: bool = False) -> None:
    """What someone who can write the home does: drop the incident's forbid from home.json."""
    record = json.loads((home / "home.json").read_text())
    record["policy"]["engine.policy.forbid"] = []
    if drop_sealed_marker:
        record.pop("sealed", None)
    (home / "home.json").write_text(json.dumps(record))


def watch_refused(home: Path, root: Path, *expected: str) -> None:
    """``xps watch`` must exit with a one-line refusal; before the fix it started and served."""
    try:
        out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), "watch", str(root / "inbox"),
                              "--polling"], capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("xps watch started (and served) instead of refusing")
    refused(out, *expected)


@contextlib.contextmanager
def serving_watch(home: Path, inbox: Path) -> Iterator[None]:
    """``xps watch INBOX --polling`` (no --config) in a process, serving its control socket
    inside the block; interrupted (SIGINT) after it."""
    proc = subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(home), "watch", str(inbox),
                             "--polling"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (home / "control.sock").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "xps watch did not open its socket"
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def routed_by_running_watch(home: Path, root: Path) -> str:
    """Start ``xps watch`` (no --config), return ``xps status`` while it serves, stop it."""
    with serving_watch(home, root / "inbox"):
        status = ok(xps(home, "status"))
    assert status.startswith("engine: running"), status
    return status


@pytest.mark.parametrize("drop_sealed_marker", [False, True])
def test_watch_refuses_a_home_json_whose_floor_was_edited(root: Path, drop_sealed_marker: bool) -> None:
    home = init(root, FORBID_AES128)
    edit_record(home, drop_sealed_marker=drop_sealed_marker)
    refused(xps(home, "key", "list"), SEALED)  # what the keyring already did
    watch_refused(home, root, "XPS_ERR_POLICY", SEALED)


def test_policy_show_config_show_and_providers_refuse_an_edited_floor(root: Path) -> None:
    home = init(root, FORBID_AES128)
    edit_record(home)
    for args in (("policy", "show"), ("policy", "show", "--json"), ("config", "show"), ("providers",)):
        stderr = refused(xps(home, *args), "XPS_ERR_POLICY", SEALED)
        assert "Traceback" not in stderr


def test_the_watch_service_in_code_refuses_an_edited_floor(root: Path) -> None:
    home = init(root, FORBID_AES128)
    edit_record(home)
    with pytest.raises(KeyringTampered, match=SEALED):
        WatchService(xps_api.Engine(), root / "inbox", home, polling=True)


def test_watch_starts_on_the_floor_a_killed_policy_apply_sealed(root: Path) -> None:
    """``policy apply`` killed between its database commit and its home.json write: the keyring
    holds the new, stricter floor; watch finishes the change and serves under it."""
    home = init(root, "{}\n")
    incident = root / "incident.yaml"
    incident.write_text(FORBID_AES128)
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_HOME_JSON, "--home", str(home), "policy", "apply",
                             str(incident), "--reason", "incident"], capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((home / "home.json").read_text())["policy"]["engine.policy.forbid"] == []  # not yet
    assert json.loads(ok(xps(home, "config", "show")))["crypto"]["policy"]["forbid"] == ["aes128"]
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["engine.policy.forbid"] == ["aes128"]
    status = routed_by_running_watch(home, root)
    assert "aes128" not in status, status
    assert [e["reason"] for e in events(home) if e["event"] == "POLICY_CHANGE"] == ["incident"]


def test_a_keyring_that_cannot_be_opened_refuses_the_watch(root: Path) -> None:
    """The floor cannot be vouched for without the keyring (here its KEK file is gone; a PKCS#11
    PIN variable not set is the same): refused, never run on home.json's word."""
    home = init(root, FORBID_AES128)
    os.unlink(home / "kek.key")
    watch_refused(home, root, "kek store", "missing")
    refused(xps(home, "policy", "show"), "kek store", "missing")


def test_a_home_without_a_keyring_is_unchanged(root: Path) -> None:
    """A home only the watch service used has no sealed copy: its record is its floor."""
    home = root / "home"
    WatchService(xps_api.Engine(), root / "inbox", home, polling=True).updater.close()
    assert not (home / "keyring.db").exists()
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["engine.policy.forbid"] == []
    assert not (home / "keyring.db").exists() and not (home / "kek.key").exists()


def test_a_key_command_after_a_killed_policy_apply_routes_under_the_floor_it_sealed(root: Path) -> None:
    """The key command's own open finishes the change; its engine must then route under the new
    floor, not the one home.json said before the open (a key of a just-forbidden suite)."""
    home = init(root, "{}\n")
    incident = root / "incident.yaml"
    incident.write_text("crypto:\n  policy:\n    forbid: [aes128]\n")
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_HOME_JSON, "--home", str(home), "policy", "apply",
                             str(incident), "--reason", "incident"], capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((home / "home.json").read_text())["policy"]["engine.policy.forbid"] == []  # not yet
    refused(xps(home, "key", "create", "k", "--algo", "AES-128-GCM"), "AES-128-GCM is forbidden")
    assert json.loads((home / "home.json").read_text())["policy"]["engine.policy.forbid"] == ["aes128"]
    assert "k" not in ok(xps(home, "key", "list")).split()
