"""``xps init`` killed for real (kill -9) before it published ``audit.pub`` (review F3).

strace injects SIGKILL into ``xps init`` at the ``link`` that puts ``audit.pub`` in place: the
journal holds a signed first record and no public key file. ``xps audit verify`` must then say
exactly that (a missing key file, typed ``XPS_ERR_KEY``, and how to restore it), not report a
"bad record signature" (``XPS_ERR_INTERNAL``, which reads as tampering); re-running ``xps init``
restores it, and a record altered meanwhile is still refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto.audit.journal import AuditLog
from xpscerpto.errors import KeyError_

from tests.strace_kill import cannot_trace, strace


def _xps(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def killed_home(tmp_path: Path) -> Path:
    """A home whose ``xps init`` was killed at the link of ``audit.pub``."""
    home = (tmp_path / "home").resolve()
    pub = home / "audit.pub"
    proc = subprocess.run([strace(), "-f", "-qq", "-o", "/dev/null", "-P", str(pub), "-e", "trace=link",
                           "-e", "inject=link:signal=KILL:when=1",
                           sys.executable, "-m", "xpscerpto", "--home", str(home), "init"],
                          capture_output=True, text=True, timeout=120, check=False)
    cannot_trace(proc.stderr)
    assert proc.returncode in (-9, 128 + 9), proc.stderr[-2000:]  # killed (strace dies of the same signal)
    assert not pub.exists()
    assert (home / "audit.key").exists()
    assert (home / "audit.log").read_bytes().count(b"\n") >= 1  # a signed first record, then the kill
    return home


def test_verify_names_the_missing_public_key_file_typed_and_how_to_restore_it(killed_home: Path) -> None:
    out = _xps(killed_home, "audit", "verify")
    assert out.returncode == 2
    err = out.stderr
    assert err.startswith("xps: error: XPS_ERR_KEY: "), err
    assert "XPS_ERR_INTERNAL" not in err and "bad record signature" not in err, err
    assert f"{killed_home / 'audit.pub'} is missing" in err and "no signature was checked" in err, err
    assert "re-run `xps init`" in err, err
    assert err.count("\n") == 1, err  # one line, no traceback

    with pytest.raises(KeyError_) as ei:  # AuditPublicKeyMissing
        AuditLog(killed_home / "audit.log").verify()
    assert (ei.value.code, ei.value.reason) == ("XPS_ERR_KEY", "public key missing")
    assert type(ei.value).__name__ == "AuditPublicKeyMissing" and getattr(ei.value, "seq", None) == 1


def test_rerunning_init_restores_the_key_file_and_verify_passes(killed_home: Path) -> None:
    assert _xps(killed_home, "init").returncode == 0
    assert (killed_home / "audit.pub").exists()
    out = _xps(killed_home, "audit", "verify")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("audit journal OK")


def test_a_record_altered_while_the_key_file_is_missing_is_still_refused(killed_home: Path) -> None:
    log = killed_home / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["event"] = "KEY_DESTROY"  # the hash no longer matches: tampering, named as such
    lines[0] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    log.write_bytes(b"".join(lines))
    out = _xps(killed_home, "audit", "verify")
    assert out.returncode == 2
    assert "XPS_ERR_INTERNAL" in out.stderr and "modified" in out.stderr, out.stderr
    # Restoring the key file does not make the altered record pass either.
    assert _xps(killed_home, "init").returncode == 0
    assert (killed_home / "audit.pub").exists()
    again = _xps(killed_home, "audit", "verify")
    assert again.returncode == 2 and "XPS_ERR_INTERNAL" in again.stderr and "modified" in again.stderr, again.stderr
