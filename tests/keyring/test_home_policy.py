"""Issue 9: security policy belongs to the home; approvals cannot be bypassed; the journal
cannot claim what did not happen. Every scenario runs the real ``xps`` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400


def xps(home: Path, *args: str, stdin: bytes = b"", config: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    # latin-1 maps bytes 1:1 onto str, so binary blobs survive: .encode("latin-1") gives them back.
    return subprocess.run([*cmd, *args], input=stdin.decode("latin-1"), capture_output=True, encoding="latin-1",
                          timeout=120, check=False, env=env)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def refused(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1, out.stderr  # one line, no traceback
    for text in expected:
        assert text in out.stderr, (text, out.stderr)
    return out.stderr


def keygen(tmp: Path, name: str) -> Path:
    ok(subprocess.run([sys.executable, str(ROOT / "tools" / "make_capsule.py"), "keygen", "--out", str(tmp / name)],
                      capture_output=True, text=True, check=False))
    return tmp / f"{name}.pub"


def events(home: Path) -> list[dict]:
    return json.loads(ok(xps(home, "audit", "tail", "-n", "500", "--json")))


@pytest.fixture
def strict_home(tmp_path: Path) -> tuple[Path, Path]:
    """A home initialised with approvals revoke 2 / destroy 2 and two operators, holding key k."""
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n  keyring:\n    dual_window_days: 7\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    ok(xps(home, "key", "create", "k"))
    return home, cfg


# -- policy belongs to the home ------------------------------------------------------------------


def test_leaving_out_config_does_not_bypass_the_recorded_approvals(strict_home: tuple[Path, Path]) -> None:
    home, _ = strict_home
    refused(xps(home, "key", "revoke", "k", "--reason", "r"), "revoke requires 2 operator approval")
    refused(xps(home, "key", "destroy", "k"), "XPS_ERR_POLICY")
    assert json.loads(ok(xps(home, "key", "describe", "k", "--json")))["state"] == "active"


def test_a_file_that_lowers_the_thresholds_is_refused_not_applied(strict_home: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    home, _ = strict_home
    lax = tmp_path / "lax.yaml"
    lax.write_text("crypto:\n  approvals:\n    revoke: 0\n    destroy: 0\n  keyring:\n    dual_window_days: 7\n")
    refused(xps(home, "key", "revoke", "k", "--reason", "r", config=lax),
            "config key 'approvals.revoke': 0 differs from the security policy this home recorded (2)")
    # Applying it is the explicit, audited way, and loosening needs the current approvals.
    refused(xps(home, "policy", "apply", str(lax), "--reason", "r"), "policy requires 2 operator approval")
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.revoke"] == 2


def test_tightening_needs_only_the_operator_and_is_journaled(strict_home: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = strict_home
    tight = tmp_path / "tight.yaml"
    # Up to the 2 registered operators (above them is refused: test_review2_policy_live.py).
    tight.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                     "  keyring:\n    dual_window_days: 7\n")
    out = ok(xps(home, "policy", "apply", str(tight), "--reason", "audit finding"))
    assert out.strip() == "approvals.emergency_revoke: 0 -> 1 (stricter)"
    change = [e for e in events(home) if e["event"] == "POLICY_CHANGE"][-1]
    assert change["reason"] == "audit finding" and change["required_approvals"] == 0
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.emergency_revoke"] == 1


def test_loosening_with_the_current_approvals_is_applied_once(strict_home: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = strict_home
    lax = tmp_path / "lax.yaml"
    lax.write_text("crypto:\n  approvals:\n    revoke: 1\n    destroy: 1\n  keyring:\n    dual_window_days: 7\n")
    req = tmp_path / "req.json"
    ok(xps(home, "policy", "request", str(lax), "--reason", "team shrank", "--out", str(req)))
    for op in ("op1", "op2"):
        ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / f"{op}.key")))
    ok(xps(home, "policy", "apply", str(lax), "--reason", "team shrank", "--approvals", str(req)))
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.revoke"] == 1
    # The same approvals cannot be used again (nor for another change).
    laxer = tmp_path / "laxer.yaml"
    laxer.write_text("crypto:\n  keyring:\n    dual_window_days: 7\n")
    refused(xps(home, "policy", "apply", str(laxer), "--reason", "team shrank", "--approvals", str(req)),
            "approvals.request: approves policy of")


def test_the_dual_window_is_the_recorded_one_whatever_the_invocation(strict_home: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    from xpscerpto.errors import AuthError, KeyError_
    from xpscerpto.keyring import Keyring

    home, _ = strict_home
    blob = xps(home, "key", "encrypt", "k", stdin=b"old").stdout
    ok(xps(home, "key", "rotate", "k"))
    clock = [os.stat(home / "keyring.db").st_mtime + 8 * DAY]  # past the recorded 7-day window
    with Keyring(home, clock=lambda: clock[0]) as ring:  # no configuration: the recorded policy
        assert ring.config.dual_window_seconds == 7 * DAY
        with pytest.raises(AuthError):
            ring.decrypt(blob.encode("latin-1"))
        with pytest.raises(KeyError_, match="no usable version 1"):
            ring.get("k", version=1)  # no export of material past the window either
    default_window = tmp_path / "default.yaml"
    default_window.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n")  # 30 days
    refused(xps(home, "key", "decrypt", stdin=blob.encode("latin-1"), config=default_window),
            "config key 'keyring.dual_window'")


def test_a_pkcs11_home_never_gets_a_plaintext_kek(tmp_path: Path, softhsm_token: tuple[str, str, str]) -> None:
    module, token, pin = softhsm_token
    home, cfg = tmp_path / "home", tmp_path / "p11.yaml"
    cfg.write_text(f"crypto:\n  keyring:\n    kek:\n      provider: pkcs11\n      module: {module}\n"
                   f"      token_label: {token}\n")
    env = {**os.environ, "XPS_PKCS11_PIN": pin}
    ok(xps(home, "init", config=cfg, env=env))
    ok(xps(home, "key", "create", "orders", env=env))  # no --config: the recorded KEK, in the token
    assert not (home / "kek.key").exists()
    stores = json.loads((home / "home.json").read_text())["stores"]
    assert stores["kek"] == f"pkcs11:{token}/xps-kek"
    file_kek = tmp_path / "file.yaml"
    file_kek.write_text("crypto:\n  keyring:\n    kek:\n      provider: file\n")
    refused(xps(home, "key", "create", "more", config=file_kek, env=env), "config key 'keyring.kek'")
    assert not (home / "kek.key").exists()


# -- approvals ----------------------------------------------------------------------------------


def test_operator_add_needs_the_current_approvals_once_a_key_exists(strict_home: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    home, _ = strict_home
    mallory = [keygen(tmp_path, f"mallory{i}") for i in (1, 2)]
    refused(xps(home, "operator", "add", str(mallory[0])), "operator-add requires 2 operator approval")
    req = tmp_path / "add.json"
    ok(xps(home, "operator", "request", "add", str(mallory[0]), "--reason", "new on-call", "--out", str(req)))
    ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / "op1.key")))
    refused(xps(home, "operator", "add", str(mallory[0]), "--approvals", str(req)), "1 valid")
    ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / "op2.key")))
    ok(xps(home, "operator", "add", str(mallory[0]), "--approvals", str(req)))
    assert len(ok(xps(home, "operator", "list")).splitlines()) == 3
    refused(xps(home, "operator", "add", str(mallory[1]), "--approvals", str(req)), "approves operator-add of")


def test_operators_join_without_approvals_only_at_set_up_even_before_any_key(tmp_path: Path) -> None:
    # Review finding: the set-up window was "no key yet", so before the first key anyone who could
    # run xps registered two keys of their own and loosened the policy (or the capsule gates).
    home, cfg = tmp_path / "home", tmp_path / "strict.yaml"
    cfg.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n")
    pubs = [keygen(tmp_path, f"op{i}") for i in (1, 2)]
    mallory = keygen(tmp_path, "mallory")
    ok(xps(home, "init", "--operator", str(pubs[0]), "--operator", str(pubs[1]), config=cfg))
    refused(xps(home, "operator", "add", str(mallory)), "operator-add requires 2 operator approval")
    refused(xps(home, "init", "--operator", str(mallory)), "operator-add requires 2 operator approval")
    ok(xps(home, "init", "--operator", str(pubs[0])))  # a retried init with the same operators
    assert len(ok(xps(home, "operator", "list")).splitlines()) == 2
    added = [e for e in events(home) if e["event"] == "OPERATOR_ADD"]
    assert len(added) == 2 and all(e["required_approvals"] == 0 for e in added)


def test_ten_concurrent_operator_adds_journal_exactly_what_registered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "init"))
    pubs = [keygen(tmp_path, f"op{i}") for i in range(10)]
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda p=p: results.append(xps(home, "operator", "add", str(p))))
               for p in pubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    registered = ok(xps(home, "operator", "list")).splitlines()
    journaled = [e for e in events(home) if e["event"] == "OPERATOR_ADD"]
    assert len(registered) == len(journaled) == 10
    assert {e["keyid"] for e in journaled} == {line.split()[0] for line in registered}


# -- the journal tells the truth -----------------------------------------------------------------

CRASHER = textwrap.dedent("""
    import os, signal, sys
    from xpscerpto.audit.journal import AuditLog
    from xpscerpto.keyring import Keyring
    home, action, point = sys.argv[1], sys.argv[2], sys.argv[3]

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)

    original_append = AuditLog._append
    def append_then_die(self, *a, **k):
        out = original_append(self, *a, **k)
        if point == "after-append" and a[0] in ("KEY_REVOKE", "KEY_DESTROY", "KEY_ROTATE"):
            die()
        return out
    AuditLog._append = append_then_die
    ring = Keyring(home)
    if point == "after-commit":
        ring._deliver = die  # the change has committed; its record is still only queued
    if action == "revoke":
        ring.revoke("k", "compromised")
    elif action == "destroy":
        ring.destroy("k")
    else:
        ring.rotate("k")
    print("done")
""")


@pytest.mark.parametrize("point", ["after-commit", "after-append"])
@pytest.mark.parametrize("action", ["rotate", "revoke", "destroy"])
def test_a_kill_between_commit_and_journal_leaves_exactly_one_true_record(tmp_path: Path, action: str,
                                                                         point: str) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    if action == "destroy":
        ok(xps(home, "key", "revoke", "k", "--reason", "before destroy"))
    event = {"rotate": "KEY_ROTATE", "revoke": "KEY_REVOKE", "destroy": "KEY_DESTROY"}[action]
    before = [e["event"] for e in events(home)].count(event)
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(home), action, point], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr  # killed at the crash point
    # The change committed; the next open delivers its record, exactly once.
    state = json.loads(ok(xps(home, "key", "describe", "k", "--json")))
    assert state["state"] == {"rotate": "active", "revoke": "revoked", "destroy": "destroyed"}[action]
    assert [e["event"] for e in events(home)].count(event) == before + 1
    ok(xps(home, "key", "list"))  # a further open delivers nothing more
    assert [e["event"] for e in events(home)].count(event) == before + 1
    ok(xps(home, "audit", "verify"))


def test_a_change_that_did_not_commit_leaves_no_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    ok(xps(home, "key", "revoke", "k", "--reason", "r"))
    script = textwrap.dedent("""
        import sys
        from xpscerpto.keyring import Keyring
        from xpscerpto.keyring.store import Store
        ring = Keyring(sys.argv[1])
        real = Store.update_key
        def fail(self, db, key_id, **changes):
            raise RuntimeError("disk gone mid-transaction")
        Store.update_key = fail
        try:
            ring.destroy("k")
        except RuntimeError:
            print("rolled back")
    """)
    out = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rolled back"
    assert json.loads(ok(xps(home, "key", "describe", "k", "--json")))["state"] == "revoked"
    assert "KEY_DESTROY" not in [e["event"] for e in events(home)]


def _log(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]


def _write_log(home: Path, recs: list[dict]) -> None:
    (home / "audit.log").write_bytes(b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                                              for r in recs))


def _rechain(recs: list[dict], start: int) -> None:
    import hashlib

    for i in range(start, len(recs)):
        recs[i]["prev"] = recs[i - 1]["hash"]
        body = {k: v for k, v in recs[i].items() if k != "hash"}
        recs[i]["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A home whose journal has a checkpoint (every 3 records) and a tail after it."""
    home, cfg = tmp_path / "home", tmp_path / "c.yaml"
    cfg.write_text("crypto:\n  audit:\n    checkpoint_every: 3\n")
    for name in ("a", "b", "c", "d"):
        ok(xps(home, "key", "create", name, config=cfg))
    ok(xps(home, "key", "rotate", "a", config=cfg))
    ok(xps(home, "key", "rotate", "b", config=cfg))
    events = [r["event"] for r in _log(home)]
    assert "CHECKPOINT" in events and events[-1] != "CHECKPOINT"  # what the docstring promises
    return home


def test_cutting_the_log_back_to_a_checkpoint_is_caught_by_an_exported_anchor(journal: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    anchor = ok(xps(journal, "audit", "anchor", config=cfg)).strip()
    recs = _log(journal)
    cut = max(i for i, r in enumerate(recs) if r["event"] == "CHECKPOINT") + 1
    _write_log(journal, recs[:cut])
    ok(xps(journal, "audit", "verify", config=cfg))  # by design: nothing inside the file shows it
    refused(xps(journal, "audit", "verify", "--anchor", anchor, config=cfg), "deleted", "anchor")


def test_a_correctly_chained_forged_record_is_refused_without_the_key(journal: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    recs = _log(journal)
    forged = {"seq": recs[-1]["seq"] + 1, "time": recs[-1]["time"], "event": "KEY_DESTROY", "key_id": "x" * 16,
              "name": "a", "version": "all", "operator": "mallory"}
    recs.append(forged)
    _rechain(recs, len(recs) - 1)
    _write_log(journal, recs)
    refused(xps(journal, "audit", "verify", config=cfg), "unsigned record")
    forged["rsig"] = "00" * 64  # a made-up signature does not help
    _rechain(recs, len(recs) - 1)
    _write_log(journal, recs)
    refused(xps(journal, "audit", "verify", config=cfg), "modified", "signature does not verify")


def test_editing_and_rechaining_after_the_last_checkpoint_is_refused(journal: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    recs = _log(journal)
    last_cp = max(i for i, r in enumerate(recs) if r["event"] == "CHECKPOINT")
    assert last_cp < len(recs) - 1
    recs[-1]["operator"] = "mallory"
    _rechain(recs, len(recs) - 1)
    _write_log(journal, recs)
    refused(xps(journal, "audit", "verify", config=cfg), "modified")


def test_a_revoked_key_revived_by_editing_the_database_is_detected_at_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    blob = xps(home, "key", "encrypt", "k", stdin=b"secret").stdout
    ok(xps(home, "key", "revoke", "k", "--reason", "r"))
    with sqlite3.connect(home / "keyring.db") as db:
        db.execute("UPDATE keys SET state = 'active'")
        db.execute("UPDATE versions SET state = 'active'")
    refused(xps(home, "key", "decrypt", stdin=blob.encode("latin-1")), "XPS_ERR_AUTH")  # never decrypts
    refused(xps(home, "key", "describe", "k"), "fails its integrity seal")
    refused(xps(home, "key", "encrypt", "k", stdin=b"x"), "fails its integrity seal")


# -- smaller ------------------------------------------------------------------------------------


def test_a_destroyed_keys_name_is_not_reused_and_huge_versions_are_typed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kid = ok(xps(home, "key", "create", "k")).strip()
    ok(xps(home, "key", "revoke", "k", "--reason", "r"))
    ok(xps(home, "key", "destroy", "k"))
    err = refused(xps(home, "key", "create", "k"), "names are not reused")
    assert kid not in err
    refused(xps(home, "key", "destroy", "k", "--version", "99999999999999999999"), "XPS_ERR_POLICY", "version")


def test_a_bad_default_policy_fails_config_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("crypto:\n  keyring:\n    rotation_days: soon\n")
    refused(xps(tmp_path / "h", "config", "check", str(bad)), "rotation_days")


# -- stored state is never silently reset (issue 10, keyring side) -------------------------------


@pytest.mark.parametrize("damage", ["delete", "empty", "garbage"])
@pytest.mark.parametrize("store", ["keyring.db", "kek.key", "home.json"])
def test_a_recorded_store_that_is_damaged_is_refused_never_recreated(tmp_path: Path, store: str,
                                                                     damage: str) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    path = home / store
    if damage == "delete":
        path.unlink()
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(64))
    for args in (("key", "list"), ("key", "create", "other")):
        err = refused(xps(home, *args))
        assert store in err or "home.json" in err, err
    assert not path.exists() or path.read_bytes() in (b"",) or damage == "garbage"
    assert "other" not in (home / "keyring.db").read_bytes().decode("latin-1") if (home / "keyring.db").exists() \
        else True


def test_a_home_with_stores_but_no_record_is_refused_until_adopted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "k"))
    shutil.move(home / "home.json", tmp_path / "home.json.bak")
    refused(xps(home, "key", "list"), "no home.json", "xps init --adopt")
    ok(xps(home, "init", "--adopt"))
    # Adopted: the keyring's sealed policy copy must agree with the adopted record.
    ok(xps(home, "key", "list"))


# `xps policy apply`, killed with SIGKILL (a real process) as it replaces home.json: after the
# database committed the sealed policy and queued the journal record, before home.json changed.
_KILL_AT_HOME_JSON = """
import os, signal, sys
replace = os.replace
def killing(src, dst, *a, **k):
    if str(dst).endswith("home.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *a, **k)
os.replace = killing
from xpscerpto.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_policy_apply_killed_before_home_json_is_finished_at_the_next_open(
        strict_home: tuple[Path, Path], tmp_path: Path) -> None:
    """Found by this session's kill sweep: the keyring then refused every command as tampered,
    and `xps policy apply` itself could not run to repair it."""
    home, _ = strict_home
    tight = tmp_path / "tight.yaml"
    # Within the 2 registered operators (a threshold above them is refused: test_review2_policy_live.py).
    tight.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                     "  keyring:\n    dual_window_days: 7\n")
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_HOME_JSON, "--home", str(home), "policy", "apply",
                             str(tight), "--reason", "audit finding"], capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((home / "home.json").read_text())["policy"]["approvals.emergency_revoke"] == 0  # not yet
    ok(xps(home, "key", "list"))  # the open finishes the committed change
    assert json.loads(ok(xps(home, "policy", "show", "--json")))["approvals.emergency_revoke"] == 1
    assert [e["reason"] for e in events(home) if e["event"] == "POLICY_CHANGE"] == ["audit finding"]


def test_home_json_edited_while_a_policy_change_is_queued_is_still_refused(
        strict_home: tuple[Path, Path], tmp_path: Path) -> None:
    """The roll-forward takes home.json only to the policy the database sealed, from the exact
    old values the queued change names; any other home.json stays a tampering refusal."""
    home, _ = strict_home
    tight = tmp_path / "tight.yaml"
    tight.write_text("crypto:\n  approvals:\n    revoke: 2\n    destroy: 2\n    emergency_revoke: 1\n"
                     "  keyring:\n    dual_window_days: 7\n")
    subprocess.run([sys.executable, "-c", _KILL_AT_HOME_JSON, "--home", str(home), "policy", "apply", str(tight),
                    "--reason", "r"], capture_output=True, timeout=120, check=False)
    record = json.loads((home / "home.json").read_text())
    record["policy"]["approvals.destroy"] = 0
    (home / "home.json").write_text(json.dumps(record))
    refused(xps(home, "key", "list"), "its policy differs from the one this keyring sealed")
