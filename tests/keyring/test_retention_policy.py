"""Review finding H1: shortening the dual-key window or the retention was a "tightening" that
one operator could apply alone, after which the next rotation destroyed retired versions that a
destroy needs approvals for. The real ``xps`` CLI in subprocesses, as the reviewer ran it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROD = "crypto:\n  approvals: {revoke: 2, destroy: 2, emergency_revoke: 1}\n"


def xps(home: Path, *args: str, stdin: bytes = b"", config: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=120, check=False)


def ok(out: subprocess.CompletedProcess[bytes]) -> bytes:
    assert out.returncode == 0, out.stderr
    return out.stdout


def versions(home: Path) -> dict[int, str]:
    doc = json.loads(ok(xps(home, "key", "describe", "orders", "--json")))
    return {v["version"]: v["state"] for v in doc["versions"]}


@pytest.fixture
def prod_home(tmp_path: Path) -> tuple[Path, bytes]:
    """A home with destroy approvals 2 and two operators, key orders at v2 and a blob under v1."""
    home = tmp_path / "home"
    (tmp_path / "prod.yaml").write_text(PROD)
    ops = []
    for name in ("op1", "op2"):
        ok(subprocess.run([sys.executable, str(ROOT / "tools" / "make_capsule.py"), "keygen", "--out",
                           str(tmp_path / name)], capture_output=True, check=False))
        ops += ["--operator", str(tmp_path / f"{name}.pub")]
    ok(xps(home, "init", *ops, config=tmp_path / "prod.yaml"))
    ok(xps(home, "key", "create", "orders"))
    blob = ok(xps(home, "key", "encrypt", "orders", stdin=b"customer record"))
    ok(xps(home, "key", "rotate", "orders"))
    return home, blob


@pytest.mark.parametrize("retention", ["dual_window_days: 0, destroy_after_days: 0", "destroy_after_days: 0",
                                       "dual_window_days: 0"])
def test_shortening_retention_needs_the_destroy_approvals(prod_home: tuple[Path, bytes], tmp_path: Path,
                                                          retention: str) -> None:
    home, blob = prod_home
    tight = tmp_path / "tight.yaml"
    tight.write_text(PROD + f"  keyring: {{{retention}}}\n")
    out = xps(home, "policy", "apply", str(tight), "--reason", "tighten")
    assert out.returncode == 2 and out.stderr.count(b"\n") == 1, out.stderr
    assert b"policy requires 2 operator approval(s)" in out.stderr
    policy = json.loads(ok(xps(home, "policy", "show", "--json")))
    assert (policy["keyring.dual_window"], policy["keyring.destroy_after"]) == (30 * 86400, 180 * 86400)
    ok(xps(home, "key", "rotate", "orders"))
    assert versions(home) == {1: "retired", 2: "retired", 3: "active"}
    assert ok(xps(home, "key", "decrypt", stdin=blob)) == b"customer record"


def test_shortening_retention_with_the_approvals_is_applied(prod_home: tuple[Path, bytes], tmp_path: Path) -> None:
    home, _ = prod_home
    tight = tmp_path / "tight.yaml"
    tight.write_text(PROD + "  keyring: {dual_window_days: 1, destroy_after_days: 2}\n")
    req = tmp_path / "req.json"
    ok(xps(home, "policy", "request", str(tight), "--reason", "shorter retention", "--out", str(req)))
    for op in ("op1", "op2"):
        ok(xps(home, "key", "approve", str(req), "--key", str(tmp_path / f"{op}.key")))
    out = ok(xps(home, "policy", "apply", str(tight), "--reason", "shorter retention", "--approvals", str(req)))
    assert b"keyring.dual_window: 2592000 -> 86400 (looser)" in out
    policy = json.loads(ok(xps(home, "policy", "show", "--json")))
    assert (policy["keyring.dual_window"], policy["keyring.destroy_after"]) == (86400, 2 * 86400)
    events = json.loads(ok(xps(home, "audit", "tail", "-n", "50", "--json")))
    change = [e for e in events if e["event"] == "POLICY_CHANGE"][-1]
    assert change["required_approvals"] == 2 and len(change["approvers"]) == 2
