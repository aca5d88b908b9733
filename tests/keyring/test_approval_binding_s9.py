"""An approval is for one keyring (review s9-ops F1).

Homes of one fleet share their policy file and their operators, so a policy change's subject
(the hash of old and new policy) and an operator change's subject (the operator's key id) are
the same in each; the nonce that makes a request single-use is spent only where it is used.
A bundle approved for home A loosened home B's policy and added an operator there. Requests
now name the keyring they are for (an HMAC under its integrity key), approvers see it, and a
keyring refuses a request for another. Real homes, real ``xps`` processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import ApprovalRequest, Approvals, Keyring

from .test_home_policy import events, keygen, ok, refused, xps

STRICT = "crypto:\n  approvals: {revoke: 2, destroy: 2, emergency_revoke: 1}\n"
LAX = STRICT + "  keyring: {destroy_after_days: 0, dual_window_days: 0}\n"


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, Path]:
    """Two homes with the same policy and the same two operators (alice, bob)."""
    for name in ("alice", "bob", "carol"):
        keygen(tmp_path, name)
    (tmp_path / "strict.yaml").write_text(STRICT)
    (tmp_path / "lax.yaml").write_text(LAX)
    homes = {}
    for name in ("a", "b"):
        homes[name] = tmp_path / name
        ok(xps(homes[name], "init", "--operator", str(tmp_path / "alice.pub"), "--operator",
               str(tmp_path / "bob.pub"), config=tmp_path / "strict.yaml"))
    return homes


def _approve(tmp_path: Path, request: Path) -> str:
    shown = ""
    for name in ("alice", "bob"):
        shown = ok(xps(tmp_path / "a", "key", "approve", str(request), "--key", str(tmp_path / f"{name}.key")))
    return shown


def test_a_policy_change_approved_for_one_home_is_refused_in_another(tmp_path: Path, fleet: dict[str, Path]) -> None:
    a, b = fleet["a"], fleet["b"]
    req = tmp_path / "req.json"
    ok(xps(a, "policy", "request", str(tmp_path / "lax.yaml"), "--reason", "lab A", "--out", str(req)))
    keyring = json.loads(req.read_text())["request"]["keyring"]
    assert f"keyring:   {keyring}" in _approve(tmp_path, req)  # approvers see which keyring
    before = ok(xps(b, "policy", "show", "--json"))
    refused(xps(b, "policy", "apply", str(tmp_path / "lax.yaml"), "--reason", "lab A", "--approvals", str(req)),
            "XPS_ERR_POLICY: approvals.request.keyring: approves a change in keyring")
    assert ok(xps(b, "policy", "show", "--json")) == before
    assert not [e for e in events(b) if e["event"] == "POLICY_CHANGE"]
    ok(xps(a, "policy", "apply", str(tmp_path / "lax.yaml"), "--reason", "lab A", "--approvals", str(req)))
    assert json.loads(ok(xps(a, "policy", "show", "--json")))["keyring.destroy_after"] == 0


def test_an_operator_added_with_one_homes_approval_is_refused_in_another(tmp_path: Path,
                                                                          fleet: dict[str, Path]) -> None:
    a, b = fleet["a"], fleet["b"]
    req = tmp_path / "op.json"
    ok(xps(a, "operator", "request", "add", str(tmp_path / "carol.pub"), "--reason", "carol joins A",
           "--out", str(req)))
    _approve(tmp_path, req)
    refused(xps(b, "operator", "add", str(tmp_path / "carol.pub"), "--approvals", str(req)),
            "approvals.request.keyring")
    assert len(ok(xps(b, "operator", "list")).splitlines()) == 2
    ok(xps(a, "operator", "add", str(tmp_path / "carol.pub"), "--approvals", str(req)))
    assert len(ok(xps(a, "operator", "list")).splitlines()) == 3


def test_the_keyring_id_is_stable_distinct_and_required(tmp_path: Path) -> None:
    one, two = Keyring(tmp_path / "one"), Keyring(tmp_path / "two")
    try:
        first = one.keyring_id
        assert len(first) == 32 and int(first, 16) >= 0 and first != two.keyring_id
    finally:
        one.close()
        two.close()
    again = Keyring(tmp_path / "one")
    try:
        assert again.keyring_id == first  # the same keyring after a reopen
    finally:
        again.close()
    with pytest.raises(PolicyError, match=r"approvals\.request\.keyring: malformed"):
        ApprovalRequest("revoke", "0123456789abcdef", "r", 2e9, "ab" * 16, None, False, 1e9)
    for bad in ("", "A" * 32, "0" * 31, 7, b"0" * 32, "0" * 32 + "\n"):
        with pytest.raises(PolicyError, match=r"approvals\.request\.keyring: malformed"):
            ApprovalRequest.new("revoke", "0123456789abcdef", reason="r", ttl=60, now=1e9, keyring=bad)  # type: ignore[arg-type]


def test_a_request_file_of_the_previous_format_is_refused_saying_why(tmp_path: Path) -> None:
    doc = ApprovalRequest.new("revoke", "0123456789abcdef", reason="r", ttl=60, now=1e9, keyring="0" * 32).to_json()
    del doc["keyring"]
    doc["format"] = "xps-approval/2"
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"request": doc, "signatures": []}))
    with pytest.raises(PolicyError, match="written by an earlier release"):
        Approvals.load(path)


# -- s9-ops F3: approvers of a policy change see what changes, not only its hash -------------------


def test_approvers_see_each_setting_a_policy_request_changes(tmp_path: Path, fleet: dict[str, Path]) -> None:
    req = tmp_path / "req.json"
    ok(xps(fleet["a"], "policy", "request", str(tmp_path / "lax.yaml"), "--reason", "retention", "--out", str(req)))
    shown = _approve(tmp_path, req)
    changes = [line for line in shown.splitlines() if line.startswith("  change:")]
    assert changes == ['  change:    "keyring.destroy_after": 15552000 -> 0',
                       '  change:    "keyring.dual_window": 2592000 -> 0'], shown


def test_a_policy_request_whose_policies_do_not_hash_to_its_subject_is_refused(tmp_path: Path,
                                                                               fleet: dict[str, Path]) -> None:
    req = tmp_path / "req.json"
    ok(xps(fleet["a"], "policy", "request", str(tmp_path / "lax.yaml"), "--reason", "retention", "--out", str(req)))
    doc = json.loads(req.read_text())
    doc["request"]["policy"]["new"]["keyring.destroy_after"] = 15552000  # shown harmless
    req.write_text(json.dumps(doc))
    out = refused(xps(fleet["a"], "key", "approve", str(req), "--key", str(tmp_path / "alice.key")),
                  "approvals.request.policy: malformed approval request (the old and new policy do not hash")
    assert "15552000" not in out
    assert json.loads(req.read_text())["signatures"] == []
    kid = "0123456789abcdef"
    with pytest.raises(PolicyError, match=r"approvals\.request\.policy: malformed .*expected null"):
        ApprovalRequest("revoke", kid, "r", 2e9, "ab" * 16, None, False, 1e9, "0" * 32, {"old": {}, "new": {}})
    for bad in (None, {"old": {}}, {"old": {}, "new": []}, {"old": {}, "new": {}, "x": 1}, "policy"):
        with pytest.raises(PolicyError, match=r"approvals\.request\.policy: malformed"):
            ApprovalRequest("policy", "policy:" + "ab" * 32, "r", 2e9, "ab" * 16, None, False, 1e9, "0" * 32, bad)  # type: ignore[arg-type]


def test_a_policy_request_rebuilt_from_another_keeps_its_policies() -> None:
    old, new = {"approvals.revoke": 2}, {"approvals.revoke": 1}
    request = ApprovalRequest.new("policy", Keyring.policy_digest(old, new), reason="r", ttl=60, now=1e9,
                                  keyring="0" * 32, policy=(old, new))
    again = ApprovalRequest(**{**request.__dict__, "reason": "other"})  # its policy: a read-only mapping
    assert again.changes() == [("approvals.revoke", 2, 1)]
    assert ApprovalRequest.from_json(json.loads(json.dumps(again.to_json()))).changes() == again.changes()
