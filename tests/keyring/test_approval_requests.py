"""Review findings on approval requests and the keyring's typed refusals.

* F2: a request's expiry is the requester's to write; the keyring holds it to the home's
  ``approvals.request_ttl`` from a signed creation time, and ``xps key approve`` shows every
  field before signing.
* F3: a bundle's fields are checked (a known action, a subject of that action's format) before
  anything shows them.
* F4, F5: odd arguments and a non-finite clock give typed errors that repeat no caller text.
* F6: a committed change whose journal record could not be written says so on stderr.

The CLI scenarios run the real ``xps`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.errors import KeyError_, PolicyError
from xpscerpto.keyring import ApprovalRequest, Approvals, Keyring, VersionState, parse_policy
from xpscerpto.keyring.approvals import SUBJECTS
from xpscerpto.signing import generate_keypair, load_private_key

from .test_home_policy import keygen, ok, refused, xps
from .test_keyring import Clock

KEYRING = "0" * 32  # a keyring id for requests never applied to a keyring
POLICY_CHANGE = ({"approvals.revoke": 2}, {"approvals.revoke": 1})

DAY = 86400.0
SECRET = "SECRETKEYMATERIAL" + "a1" * 32


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def operators(tmp_path: Path) -> list:
    out = []
    for name in ("op1", "op2"):
        generate_keypair(tmp_path / name)
        out.append(load_private_key(tmp_path / f"{name}.key"))
    return out


@pytest.fixture
def gated(tmp_path: Path, clock: Clock, operators: list) -> Keyring:
    """Approvals revoke 2 / destroy 2 / emergency revoke 1, request_ttl one day, two operators."""
    approvals = XpsConfig.from_mapping({"approvals": {"revoke": 2, "destroy": 2, "emergency_revoke": 1,
                                                      "request_ttl": "1d"}}).approvals
    ring = Keyring(tmp_path / "gated", clock=clock, approvals=approvals)
    ring.register_operators([tmp_path / "op1.pub", tmp_path / "op2.pub"], labels=["op1", "op2"])
    yield ring
    ring.close()


def _signed(request: ApprovalRequest, operators: list) -> Approvals:
    bundle = Approvals(request)
    for op in operators:
        bundle = bundle.signed_by(*op)
    return bundle


def _revoke_request(ring: Keyring, *, created: float, expires: float, emergency: bool = False) -> ApprovalRequest:
    return ApprovalRequest("revoke", ring.describe("k").key_id, "ticket-7", expires, os.urandom(16).hex(),
                           None, emergency, created, ring.keyring_id)


# -- F2: the expiry is bounded by the home's request_ttl ------------------------------------------


def test_a_request_open_longer_than_request_ttl_is_refused_then_and_later(gated: Keyring, operators: list,
                                                                            clock: Clock) -> None:
    gated.create("k")
    now = clock()
    # Correctly signed by both operators, but its writer made it open for 30 days.
    long = _signed(_revoke_request(gated, created=now, expires=now + 30 * DAY), operators)
    with pytest.raises(PolicyError, match=r"approvals\.request\.expires: 720\.0 h after the request's creation, "
                                          r"longer than approvals\.request_ttl \(24\.0 h\)"):
        gated.revoke("k", "ticket-7", approvals=long)
    clock.advance(3 * DAY)  # the reviewer's case: days later it is refused all the same
    with pytest.raises(PolicyError, match=r"approvals\.request\.expires"):
        gated.revoke("k", "ticket-7", approvals=long)
    assert gated.describe("k").state.value == "active"
    # Exactly request_ttl is what `xps key request` writes; it is accepted.
    exact = _signed(_revoke_request(gated, created=clock(), expires=clock() + DAY), operators)
    gated.revoke("k", "ticket-7", approvals=exact)
    assert gated.describe("k").state.value == "revoked"


def test_a_request_created_ahead_of_the_keyring_clock_is_refused(gated: Keyring, operators: list,
                                                                 clock: Clock) -> None:
    gated.create("k")
    now = clock()
    # Written "an hour from now" it would stay usable an hour past request_ttl.
    ahead = _signed(_revoke_request(gated, created=now + 3600, expires=now + 3600 + DAY), operators)
    with pytest.raises(PolicyError, match=r"approvals\.request\.created: 3600 s ahead of this keyring's clock"):
        gated.revoke("k", "ticket-7", approvals=ahead)
    # A few minutes of difference between hosts' clocks is normal.
    skewed = _signed(_revoke_request(gated, created=now + 200, expires=now + 200 + DAY), operators)
    gated.revoke("k", "ticket-7", approvals=skewed)
    assert gated.describe("k").state.value == "revoked"


def test_the_creation_time_is_signed(gated: Keyring, operators: list, clock: Clock) -> None:
    gated.create("k")
    signed = _signed(ApprovalRequest.new("revoke", gated.describe("k").key_id, reason="ticket-7", ttl=DAY,
                                         now=clock(), keyring=gated.keyring_id), operators)
    moved = ApprovalRequest(**{**signed.request.__dict__, "created": signed.request.created + 60})
    with pytest.raises(PolicyError, match="0 valid"):
        gated.revoke("k", "ticket-7", approvals=Approvals(moved, signed.signatures))


def test_a_request_without_a_creation_time_is_refused_naming_it(tmp_path: Path, operators: list) -> None:
    with pytest.raises(PolicyError, match=r"approvals\.request\.created: malformed approval request \(missing"):
        ApprovalRequest("revoke", "0123456789abcdef", "r", 2e9, os.urandom(16).hex())
    # A request file of the earlier format (no creation time), signed: refused, saying why.
    old = {"format": "xps-approval/1", "action": "revoke", "key_id": "0123456789abcdef", "version": None,
           "reason": "r", "emergency": False, "nonce": os.urandom(16).hex(), "expires": 2e9}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"request": old, "signatures": []}))
    with pytest.raises(PolicyError, match=r"approvals\.request\.format: a request written by an earlier release"):
        Approvals.load(path)


def test_approve_shows_every_field_and_the_keyring_refuses_a_stretched_expiry(tmp_path: Path) -> None:
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    ok(xps(home, "key", "create", "k"))
    req = tmp_path / "req.json"
    ok(xps(home, "key", "request", "revoke", "k", "--reason", "cleanup", "--out", str(req)))
    doc = json.loads(req.read_text())
    # The requester quietly stretches the expiry to 30 days and turns it into an emergency.
    doc["request"]["expires"] = doc["request"]["created"] + 30 * DAY
    doc["request"]["emergency"] = True
    req.write_text(json.dumps(doc))
    shown = ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / "op1.key")))
    r = doc["request"]
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["expires"]))
    assert f"request: revoke of {r['key_id']}" in shown
    assert "emergency: yes" in shown and "version:   all" in shown and '"cleanup"' in shown
    assert f"created:   {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(r['created']))}" in shown
    assert f"expires:   {utc} (720.0 h after creation)" in shown and r["nonce"] in shown
    assert shown.index("nonce:") < shown.index("approved revoke of")  # shown before it was signed
    refused(xps(home, "key", "revoke", "k", "--reason", "cleanup", "--emergency", "--approvals", str(req)),
            "approvals.request.expires: 720.0 h after the request's creation, longer than approvals.request_ttl")
    assert json.loads(ok(xps(home, "key", "describe", "k", "--json")))["state"] == "active"


# -- F3: bundle fields are checked before anything shows them -------------------------------------


def _bundle_file(tmp_path: Path, **fields: object) -> Path:
    request = {**ApprovalRequest.new("revoke", "0123456789abcdef", reason="r", ttl=60, now=time.time(),
                                    keyring=KEYRING).to_json(),
               **fields}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"request": request, "signatures": []}))
    return path


def test_a_bundle_with_a_forged_action_or_subject_is_refused_on_the_cli_repeating_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    key = keygen(tmp_path, "op1").with_suffix(".key")
    for fields in ({"action": "revoke\n\x1b[2Jfake: all good"}, {"key_id": SECRET * 100},
                   {"reason": "ok\x1b[2J"}):
        path = _bundle_file(tmp_path, **fields)
        for args in (("key", "revoke", "k", "--reason", "r", "--approvals", str(path)),
                     ("key", "approve", str(path), "--key", str(key))):
            out = xps(home, *args)
            err = refused(out, "XPS_ERR_POLICY: approvals.request.", "malformed approval request")
            assert "\x1b" not in err and "SECRETKEY" not in err and "fake" not in err and len(err) < 300
            assert out.stdout == ""  # approve printed nothing of it, signed nothing
    assert json.loads(path.read_text())["signatures"] == []


@pytest.mark.parametrize(("action", "subject"), [
    ("revoke", "0123456789abcdef"), ("destroy", "0123456789abcdef"),
    ("rewrap", "0123456789abcdef:fedcba9876543210"), ("policy", Keyring.policy_digest(*POLICY_CHANGE)),
    ("operator-add", "0123456789abcdef" * 2), ("operator-remove", "0123456789abcdef" * 2)])
def test_each_action_takes_its_own_subject_format_only(action: str, subject: str) -> None:
    # A policy request carries the policies its subject hashes (review s9-ops F3).
    kw: dict[str, Any] = {"policy": POLICY_CHANGE} if action == "policy" else {}
    assert ApprovalRequest.new(action, subject, reason="r", ttl=60, now=1e9, keyring=KEYRING, **kw).key_id == subject
    for other in ("0123456789abcdef", "0123456789abcdef:fedcba9876543210", "policy:" + "ab" * 32,
                  "0123456789abcdef" * 2, "policy:" + "ab" * 8, "0123456789ABCDEF"):
        if other != subject and not SUBJECTS[action].fullmatch(other):
            with pytest.raises(PolicyError, match=rf"approvals\.request\.key_id: .*format of a {action} request"):
                ApprovalRequest.new(action, other, reason="r", ttl=60, now=1e9, keyring=KEYRING)


def test_the_policy_subject_is_the_full_sha256_of_the_change() -> None:
    old, new = {"approvals.revoke": 2}, {"approvals.revoke": 1}
    digest = Keyring.policy_digest(old, new)
    doc = json.dumps([old, new], sort_keys=True, separators=(",", ":")).encode()
    assert digest == "policy:" + hashlib.sha256(doc).hexdigest() and len(digest) == 7 + 64
    assert ApprovalRequest.new("policy", digest, reason="r", ttl=60, now=1e9, keyring=KEYRING,
                               policy=(old, new)).key_id == digest


# -- F4: typed errors, no caller text ----------------------------------------------------------------


def test_odd_arguments_give_typed_errors_that_repeat_nothing(gated: Keyring, clock: Clock) -> None:
    gated.create("k")
    released = memoryview(bytearray(b"x" * 64))
    released.release()
    for name in (memoryview(bytearray(SECRET.encode())), released):  # unhashable: ValueError before
        with pytest.raises(KeyError_, match="name: expected str, got memoryview"):
            gated.encrypt(name, b"x")
    for request in (object(), memoryview(b"x"), "revoke"):
        with pytest.raises(PolicyError, match=r"approvals\.request: expected an ApprovalRequest"):
            gated.revoke("k", "r", approvals=Approvals(request))  # type: ignore[arg-type]
    for ttl in ("60", None, math.nan, -1, b"", True):
        with pytest.raises(PolicyError, match="ttl: expected a positive number of seconds"):
            ApprovalRequest.new("revoke", "0123456789abcdef", reason="r", ttl=ttl, now=clock(), keyring=KEYRING)  # type: ignore[arg-type]
    with pytest.raises(PolicyError) as ei:
        ApprovalRequest.new(SECRET, "0123456789abcdef", reason="r", ttl=60, now=clock(), keyring=KEYRING)
    assert "SECRET" not in str(ei.value) and "approvals.request.action" in str(ei.value)
    with pytest.raises(KeyError_) as ei:
        gated.remove_operator(SECRET)
    assert "SECRET" not in str(ei.value) and "not a registered operator" in str(ei.value)
    unknown = "0123456789abcdef" * 2  # an operator key id is public: named as it is
    with pytest.raises(KeyError_, match=f"keyid: '{unknown}' is not a registered operator"):
        gated.remove_operator(unknown)
    for policy, field in ((f"rotate={SECRET}", "policy.rotate"), (f"max_encryptions={SECRET}", "policy.max_enc"),
                          (f"rotate=90d,{SECRET}=1", "policy: part 2 names an unknown field")):
        with pytest.raises(PolicyError, match=field) as ei:
            parse_policy(policy)
        assert "SECRET" not in str(ei.value) and "a1a1" not in str(ei.value)


# -- F5: a non-finite clock ------------------------------------------------------------------------


def test_a_non_finite_clock_is_refused_by_every_transition(tmp_path: Path, clock: Clock) -> None:
    ring = Keyring(tmp_path / "home", clock=clock)
    ring.create("k")
    ring.rotate("k")  # version 1 retired, kept by retention
    clock.now = math.nan  # the clock goes bad while the keyring is open
    for transition in (lambda: ring.destroy("k", version=1), lambda: ring.revoke("k", "r"),
                       lambda: ring.rotate("k"), lambda: ring.create("other"), ring.enforce_retention):
        with pytest.raises(PolicyError, match="clock: expected finite seconds since the epoch, got a non-finite"):
            transition()
    clock.now = 1_800_000_000.0
    assert [v.state for v in ring.describe("k").versions] == [VersionState.RETIRED, VersionState.ACTIVE]
    assert [k.name for k in ring.list()] == ["k"]
    ring.close()
    for bad in (math.nan, math.inf, "now", 10**400):
        with pytest.raises(PolicyError, match="clock: expected finite seconds"):
            Keyring(tmp_path / "home", clock=lambda bad=bad: bad)  # opening runs retention


# -- F6: a journal that cannot be written after a committed change ---------------------------------


def test_a_committed_change_that_could_not_be_journaled_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    (home / "audit.key").unlink()  # the journal's signing key: records cannot be appended
    out = xps(home, "key", "create", "k2")
    assert out.returncode == 0 and out.stdout.strip()  # the key was created (committed)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("warning: journal not written: XPS_ERR_"), out.stderr
    assert "audit signing key" in out.stderr and "the record stays queued" in out.stderr
    with sqlite3.connect(home / "keyring.db") as db:
        assert [e for (e,) in db.execute("SELECT event FROM outbox")] == ["KEY_CREATE"]
    # Nothing to warn about when the journal is fine.
    fine = tmp_path / "fine"
    ok(xps(fine, "key", "create", "k"))
    assert xps(fine, "key", "rotate", "k").stderr == ""
