"""``xps policy request|apply`` open the keyring where the home's configuration puts it
(review s9-hsm F2, F3): with the defaults, a keyring on PostgreSQL was refused ("the
configuration names 'keyring.db'"), and in a home whose journal is configured elsewhere (a
signing key outside the home) the committed POLICY_CHANGE was never journaled by the apply:
exit 0, no warning. Real homes, real ``xps`` processes, a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .test_home_policy import events, ok, xps


def test_policy_apply_journals_through_the_configured_journal(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    audit = f"  audit:\n    signing_key: {tmp_path / 'keys' / 'audit.key'}\n"
    node, tight = tmp_path / "node.yaml", tmp_path / "tight.yaml"
    node.write_text("crypto:\n" + audit)
    tight.write_text("crypto:\n" + audit + "  policy:\n    forbid: [aes128]\n")
    home = tmp_path / "home"
    ok(xps(home, "init", config=node))
    ok(xps(home, "key", "create", "k", config=node))
    out = xps(home, "policy", "apply", str(tight), "--reason", "incident", config=node)
    assert ok(out).startswith("engine.policy.forbid: [] -> [\"aes128\"]") and "warning" not in out.stderr
    # Read without opening the keyring (which would deliver a queued record itself).
    tail = ok(xps(home, "audit", "tail", "-n", "3", config=tight))
    assert "POLICY_CHANGE" in tail, tail


def test_policy_request_and_apply_work_on_a_postgresql_keyring(tmp_path: Path, pg_dsn: str) -> None:
    node, tight = tmp_path / "node.yaml", tmp_path / "tight.yaml"
    node.write_text(f"crypto:\n  keyring:\n    database: {pg_dsn}\n")
    tight.write_text(f"crypto:\n  keyring:\n    database: {pg_dsn}\n  policy:\n    forbid: [aes128]\n")
    home = tmp_path / "home"
    ok(xps(home, "init", config=node))
    ok(xps(home, "policy", "request", str(tight), "--reason", "incident", "--out", str(tmp_path / "r.json"),
           config=node))
    ok(xps(home, "policy", "apply", str(tight), "--reason", "incident", config=node))
    # Without --config, the file's own keyring section locates the database.
    assert "no change" in ok(xps(home, "policy", "apply", str(tight), "--reason", "again"))
    assert [e["event"] for e in events(home) if e["event"] == "POLICY_CHANGE"] == ["POLICY_CHANGE"]
