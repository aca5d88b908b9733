"""``xps key`` / ``operator`` / ``audit`` / ``config`` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def xps(home: Path, *args: str, stdin: bytes = b"", config: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=120, check=False)


def ok(out: subprocess.CompletedProcess[bytes]) -> str:
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def keygen(tmp: Path, name: str) -> None:
    ok(subprocess.run([sys.executable, str(ROOT / "tools" / "make_capsule.py"), "keygen", "--out",
                       str(tmp / name)], capture_output=True, check=False))


def test_key_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kid = ok(xps(home, "key", "create", "orders", "--algo", "XCHACHA20-POLY1305")).strip()
    assert len(kid) == 16
    blob = xps(home, "key", "encrypt", "orders", "--aad", "o42", stdin=b"card 4111").stdout
    assert blob[0] == 1 and blob[1:9].hex() == kid
    assert "active version 2" in ok(xps(home, "key", "rotate", "orders"))
    assert xps(home, "key", "decrypt", "--aad", "o42", stdin=blob).stdout == b"card 4111"
    info = json.loads(ok(xps(home, "key", "describe", "orders", "--json")))
    assert [(v["version"], v["state"]) for v in info["versions"]] == [(1, "retired"), (2, "active")]
    (tmp_path / "b1").write_bytes(blob)
    assert "rewrapped 1 of 1" in ok(xps(home, "key", "rewrap", str(tmp_path / "b1"), "--aad", "o42"))
    assert (tmp_path / "b1").read_bytes()[9:13] == (2).to_bytes(4, "big")
    bad = xps(home, "key", "decrypt", "--aad", "other", stdin=blob)
    assert bad.returncode == 2 and bad.stderr.decode().strip() == "xps: error: XPS_ERR_AUTH: keyring: decryption failed"
    missing = xps(home, "key", "rotate", "nope")
    assert missing.returncode == 2 and "XPS_ERR_KEY: key: no key" in missing.stderr.decode()


def test_approved_revoke_and_destroy_with_two_operators(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "xps.yaml"
    config.write_text("approvals:\n  revoke: 2\n  destroy: 2\n  emergency_revoke: 1\n")
    for name in ("op1", "op2"):
        keygen(tmp_path, name)
    # The first operators join together at init (one by one, the second needs the first's approval).
    ok(xps(home, "init", "--operator", str(tmp_path / "op1.pub"), "--operator", str(tmp_path / "op2.pub"),
           config=config))
    ok(xps(home, "key", "create", "k", config=config))
    refused = xps(home, "key", "revoke", "k", "--reason", "r", config=config)
    assert refused.returncode == 2 and "requires 2 operator approval" in refused.stderr.decode()
    req = tmp_path / "req.json"
    ok(xps(home, "key", "request", "revoke", "k", "--reason", "r", "--out", str(req), config=config))
    ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / "op1.key")))
    one = xps(home, "key", "revoke", "k", "--reason", "r", "--approvals", str(req), config=config)
    assert one.returncode == 2 and "1 valid" in one.stderr.decode()
    ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / "op2.key")))
    ok(xps(home, "key", "revoke", "k", "--reason", "r", "--approvals", str(req), config=config))
    dreq = tmp_path / "destroy.json"
    ok(xps(home, "key", "request", "destroy", "k", "--reason", "retire", "--out", str(dreq), config=config))
    for op in ("op1", "op2"):
        ok(xps(home, "key", "approve", str(dreq), "--key", str(tmp_path / f"{op}.key")))
    ok(xps(home, "key", "destroy", "k", "--approvals", str(dreq), config=config))
    assert json.loads(ok(xps(home, "key", "describe", "k", "--json")))["state"] == "destroyed"
    events = [e["event"] for e in json.loads(ok(xps(home, "audit", "tail", "-n", "50", "--json")))]
    assert events.count("KEY_REVOKE") == 1 and events.count("KEY_DESTROY") == 1


def test_audit_verify_detects_a_modified_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(xps(home, "key", "create", "a"))
    ok(xps(home, "key", "create", "b"))
    assert "audit journal OK: 3 records" in ok(xps(home, "audit", "verify"))  # KEYRING_CREATE, 2 KEY_CREATE
    log = home / "audit.log"
    log.write_text(log.read_text().replace('"name":"a"', '"name":"z"'))
    out = xps(home, "audit", "verify")
    assert out.returncode == 2
    assert "modified" in out.stderr.decode() and "record seq 2 " in out.stderr.decode()  # a's KEY_CREATE


def test_config_check_and_show(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("engine:\n  policy:\n    forbid: [aes128]\nkeyring:\n  dual_window: 7d\n")
    assert "OK" in ok(xps(tmp_path / "h", "config", "check", str(good)))
    shown = json.loads(ok(xps(tmp_path / "h", "config", "show", config=good)))["crypto"]  # Appendix C's shape
    assert shown["policy"]["forbid"] == ["aes128"] and shown["keyring"]["dual_window_days"] == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("keyring:\n  kek:\n    provider: hsm\n")
    out = xps(tmp_path / "h", "config", "check", str(bad))
    assert out.returncode == 2 and "keyring.kek.provider" in out.stderr.decode()
    assert out.stderr.decode().count("\n") == 1
