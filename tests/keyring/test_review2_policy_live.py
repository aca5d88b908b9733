"""Review round 2, F1 and F2: the policy a keyring acts on is the one the home records now, and
no policy change (nor operator removal) may leave the operators unable to approve anything.

F1: a long-lived keyring (a service) is open while the operators change the policy with
``xps policy apply`` in another process; its next transition and retention sweep use the new one.
F2: tightening thresholds above the registered operators, or ``request_ttl`` below the floor,
is refused (it would lock the operators out for good: not even undoing it could be approved).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import Keyring
from xpscerpto.keyring import keyring as keyring_module

from .test_home_policy import DAY, events, keygen, ok, refused, xps


def _apply_with_approvals(home: Path, tmp_path: Path, yaml: str, reason: str) -> str:
    """``xps policy apply`` of ``yaml`` with both operators' approvals (in other processes)."""
    cfg, req = tmp_path / "new.yaml", tmp_path / "policy-req.json"
    cfg.write_text(yaml)
    ok(xps(home, "policy", "request", str(cfg), "--reason", reason, "--out", str(req)))
    for op in ("op1", "op2"):
        ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / f"{op}.key")))
    return ok(xps(home, "policy", "apply", str(cfg), "--reason", reason, "--approvals", str(req)))


@pytest.fixture
def lax_home(tmp_path: Path) -> Path:
    """No approvals, 1-day window and retention, two operators, keys a, b and c (c rotated once)."""
    home, cfg = tmp_path / "home", tmp_path / "lax.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 0\n    destroy: 0\n    emergency_revoke: 0\n"
                   "  keyring:\n    dual_window_days: 1\n    destroy_after_days: 1\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    for name in ("a", "b", "c"):
        ok(xps(home, "key", "create", name))
    ok(xps(home, "key", "rotate", "c"))
    return home


STRICT = ("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
          "  keyring:\n    dual_window_days: 1\n    destroy_after_days: 365\n")


def test_an_open_keyring_needs_the_approvals_a_policy_applied_elsewhere_requires(lax_home: Path,
                                                                                tmp_path: Path) -> None:
    home = lax_home
    clock = [time.time()]
    with Keyring(home, clock=lambda: clock[0]) as service:  # opened under the lax policy
        service.encrypt("a", b"warm")
        _apply_with_approvals(home, tmp_path, STRICT, "two approvals, keep a year")
        refused(xps(home, "key", "revoke", "b", "--reason", "r"), "revoke requires 2 operator approval")
        with pytest.raises(PolicyError, match="revoke requires 2 operator approval"):
            service.revoke("a", "no approvals")
        with pytest.raises(PolicyError, match="destroy requires 2 operator approval"):
            service.destroy("c", version=1, emergency=True)  # a retired version, before its retention
        assert service.describe("a").state.value == "active"
        assert service.encrypt("a", b"still encrypts")
        # Retention is the new one: 2.5 days on, c's retired v1 is kept (365 days), not destroyed.
        clock[0] += 2.5 * DAY
        assert service.enforce_retention() == []
        assert service.describe("c").versions[0].state.value == "retired"
        assert service.approvals_config.revoke == 2
        assert service.config.destroy_after_seconds == 365 * DAY
    assert not [e for e in events(home) if e["event"] in ("KEY_REVOKE", "KEY_DESTROY")]


def test_an_open_keyring_follows_a_loosening_applied_elsewhere(tmp_path: Path) -> None:
    """The other direction: thresholds lowered elsewhere (with approvals) apply to the open keyring too."""
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n  keyring:\n    dual_window_days: 7\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    ok(xps(home, "key", "create", "k"))
    with Keyring(home) as service:
        with pytest.raises(PolicyError, match="revoke requires 2"):
            service.revoke("k", "r")
        _apply_with_approvals(home, tmp_path, "crypto:\n  approvals:\n    revoke: 0\n    destroy: 0\n"
                              "  keyring:\n    dual_window_days: 7\n", "team of one for a week")
        service.revoke("k", "compromised")
    revoke = [e for e in events(home) if e["event"] == "KEY_REVOKE"][-1]
    assert revoke["required_approvals"] == 0


def test_a_policy_sealed_copy_edited_under_an_open_keyring_is_refused_not_used(lax_home: Path) -> None:
    """The re-read policy is checked against its seal: an edited copy is tampering, not a policy."""
    import sqlite3

    from xpscerpto.keyring.integrity import KeyringTampered

    home = lax_home
    with Keyring(home) as service:
        db = sqlite3.connect(home / "keyring.db")
        text = json.loads(db.execute("SELECT v FROM meta WHERE k = 'policy'").fetchone()[0])
        text["approvals.revoke"] = 0
        text["keyring.destroy_after"] = 1.0
        db.execute("UPDATE meta SET v = ? WHERE k = 'policy'", (json.dumps(text, sort_keys=True),))
        db.commit()
        db.close()
        with pytest.raises(KeyringTampered, match="policy"):
            service.revoke("a", "r")
    assert not [e for e in events(home) if e["event"] == "KEY_REVOKE"]


# -- F2: no lock-out by "tightening" ---------------------------------------------------------------


@pytest.fixture
def two_operators(tmp_path: Path) -> Path:
    """Approvals revoke 2 / destroy 2 / emergency 1, two operators, key k."""
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                   "  keyring:\n    dual_window_days: 7\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    ok(xps(home, "key", "create", "k"))
    return home


@pytest.mark.parametrize(("key", "yaml"), [
    ("approvals.revoke", "revoke: 9\n    destroy: 2\n    emergency_revoke: 1"),
    ("approvals.destroy", "revoke: 2\n    destroy: 3\n    emergency_revoke: 1"),
    ("approvals.emergency_revoke", "revoke: 9\n    destroy: 2\n    emergency_revoke: 9"),
])
def test_thresholds_above_the_registered_operators_are_refused(two_operators: Path, tmp_path: Path, key: str,
                                                               yaml: str) -> None:
    home = two_operators
    cfg = tmp_path / "lockout.yaml"
    cfg.write_text(f"crypto:\n  approvals:\n    {yaml}\n  keyring:\n    dual_window_days: 7\n")
    err = refused(xps(home, "policy", "apply", str(cfg), "--reason", "tighten"), "XPS_ERR_POLICY",
                  "the 2 operator(s) registered")
    assert "approvals." in err
    if key != "approvals.emergency_revoke":
        assert key in err
    policy = json.loads(ok(xps(home, "policy", "show", "--json")))
    assert (policy["approvals.revoke"], policy["approvals.destroy"], policy["approvals.emergency_revoke"]) == (2, 2, 1)
    assert not [e for e in events(home) if e["event"] == "POLICY_CHANGE"]


def test_a_threshold_up_to_the_registered_operators_is_still_a_tightening(two_operators: Path,
                                                                        tmp_path: Path) -> None:
    home = two_operators
    cfg = tmp_path / "tight.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 2\n"
                   "  keyring:\n    dual_window_days: 7\n")
    assert ok(xps(home, "policy", "apply", str(cfg), "--reason", "tighten")).strip() == \
        "approvals.emergency_revoke: 1 -> 2 (stricter)"


def test_a_default_home_with_no_operator_cannot_be_given_a_threshold(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "init"))
    ok(xps(home, "key", "create", "k"))
    cfg = tmp_path / "one.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 1\n    destroy: 1\n")
    refused(xps(home, "policy", "apply", str(cfg), "--reason", "tighten"), "approvals.", "the 0 operator(s)")
    ok(xps(home, "key", "revoke", "k", "--reason", "still possible"))


def test_a_request_ttl_below_the_floor_is_refused(two_operators: Path, tmp_path: Path) -> None:
    home = two_operators
    cfg = tmp_path / "ttl.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                   "    request_ttl: 0.001s\n  keyring:\n    dual_window_days: 7\n")
    err = refused(xps(home, "policy", "apply", str(cfg), "--reason", "tighten"), "approvals.request_ttl",
                  "300 seconds")
    assert "0.001" not in err
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.request_ttl"] == 86400
    # At the floor it is a tightening like any other.
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                   "    request_ttl: 5m\n  keyring:\n    dual_window_days: 7\n")
    ok(xps(home, "policy", "apply", str(cfg), "--reason", "tighten"))
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.request_ttl"] == 300
    assert keyring_module.MIN_REQUEST_TTL_SECONDS == 300


def test_init_still_takes_thresholds_before_its_operators_join(tmp_path: Path) -> None:
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n")
    ok(xps(home, "init", config=cfg))
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.revoke"] == 2


def test_removing_an_operator_below_the_highest_threshold_is_refused(two_operators: Path, tmp_path: Path) -> None:
    home = two_operators
    with Keyring(home) as ring:
        keyid = sorted(ring.operators().keys)[0]
    req = tmp_path / "remove.json"
    ok(xps(home, "operator", "request", "remove", keyid, "--reason", "left", "--out", str(req)))
    for op in ("op1", "op2"):
        ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / f"{op}.key")))
    refused(xps(home, "operator", "remove", keyid, "--approvals", str(req)), "XPS_ERR_POLICY",
            "1 registered operator(s)", "approvals.revoke")
    assert keyid in ok(xps(home, "operator", "list"))
    assert not [e for e in events(home) if e["event"] == "OPERATOR_REMOVE"]
