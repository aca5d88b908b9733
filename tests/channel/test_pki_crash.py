"""``xps pki init-ca`` and ``xps pki issue`` killed for real (kill -9) in the middle of writing (review F5).

strace injects SIGKILL into the command at its N-th ``link``/``fsync``/``unlink``/``write``, as
the reviewer's fault injection did. A killed ``init-ca`` must leave no CA or a whole one, and
running it again must work; a killed ``issue`` must never leave a partial file under a final
name, and its retry must say what is left and how to clear it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xpscerpto as xps
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from xpscerpto.channel.identity import load_certificates
from xpscerpto.channel.pki import CertificateAuthority

from tests.strace_kill import cannot_trace, strace

_MAX_POINTS = 40  # far above the syscalls of one init-ca or issue: the loops end at the clean run


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", "--home", "home", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def _killed_at(cwd: Path, syscall: str, n: int, *args: str, path: Path | None = None) -> bool:
    """Run ``xps ARGS`` killed at its ``n``-th ``syscall`` (on ``path`` only, if given); True if it was killed."""
    only = ["-P", str(path)] if path is not None else []
    proc = subprocess.run([strace(), "-f", "-qq", "-o", "/dev/null", *only, "-e", f"trace={syscall}",
                           "-e", f"inject={syscall}:signal=KILL:when={n}",
                           sys.executable, "-m", "xpscerpto", "--home", "home", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    cannot_trace(proc.stderr)
    if proc.returncode == 0:
        return False
    assert proc.returncode in (-9, 128 + 9), proc.stderr[-2000:]  # strace dies of the same signal
    return True


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# -- init-ca ------------------------------------------------------------------------------------


@pytest.mark.parametrize("syscall", ["link", "fsync", "unlink"])
def test_init_ca_killed_anywhere_leaves_no_ca_or_a_whole_one_and_runs_again(tmp_path: Path, syscall: str) -> None:
    kills = 0
    for n in range(1, _MAX_POINTS):
        work = tmp_path / f"{syscall}{n}"
        work.mkdir()
        if not _killed_at(work, syscall, n, "pki", "init-ca", "ca", "--name", "Root"):
            break
        kills += 1
        ca = work / "ca"
        try:
            CertificateAuthority.load(ca)
            whole = True
        except xps.PolicyError:
            whole = False
        if not whole:
            # Nothing that passes for a CA: every command that uses one refuses it, typed.
            refused = _run(work, "pki", "crl", "--ca", "ca", "--out", "ca.crl")
            assert refused.returncode == 2 and "XPS_ERR_POLICY" in refused.stderr, refused.stderr
            assert not (work / "ca.crl").exists()
            # ...and running init-ca again finishes the job (no "restore from a backup").
            again = _run(work, "pki", "init-ca", "ca", "--name", "Root")
            assert again.returncode == 0, (n, _names(ca), again.stderr)
            assert not any(name.startswith(".") and name.endswith(".tmp") for name in _names(ca)), _names(ca)
        loaded = CertificateAuthority.load(ca)
        assert loaded.certificate.subject.rfc4514_string() == "CN=Root"
        assert _names(ca) >= {"ca.crt", "ca.key", "revoked.json"}
        assert "init-ca.unfinished" not in _names(ca)
        issued = _run(work, "pki", "issue", "--ca", "ca", "--name", "svc", "--dns", "svc.test", "--out", "svc")
        assert issued.returncode == 0, issued.stderr
    assert kills >= 2, f"the {syscall} kills never hit init-ca"


def test_an_init_ca_killed_before_its_certificate_is_no_ca_and_is_replaced(tmp_path: Path) -> None:
    # The reviewer's point: ca.key linked, ca.crt not yet (killed at the link of ca.crt).
    ca = tmp_path / "ca"
    # Absolute: strace -P compares the path the syscall is given.
    assert _killed_at(tmp_path, "link", 1, "pki", "init-ca", str(ca), "--name", "Root", path=ca / "ca.crt")
    assert "ca.key" in _names(ca) and "ca.crt" not in _names(ca)
    with pytest.raises(xps.PolicyError, match="interrupted before it finished"):
        CertificateAuthority.load(ca)
    issue = _run(tmp_path, "pki", "issue", "--ca", "ca", "--name", "svc", "--dns", "svc.test", "--out", "svc")
    assert issue.returncode == 2 and "XPS_ERR_POLICY" in issue.stderr and "init-ca" in issue.stderr, issue.stderr
    old_key = (ca / "ca.key").read_bytes()
    again = _run(tmp_path, "pki", "init-ca", "ca", "--name", "Root")
    assert again.returncode == 0, again.stderr
    assert (ca / "ca.key").read_bytes() != old_key  # a new CA, whole: key and certificate belong together
    CertificateAuthority.load(ca)


def test_a_whole_ca_that_lost_its_key_is_still_refused(tmp_path: Path) -> None:
    # A crash-safe init-ca must not turn a damaged CA into one it silently replaces.
    assert _run(tmp_path, "pki", "init-ca", "ca", "--name", "Root").returncode == 0
    (tmp_path / "ca" / "ca.key").unlink()
    before = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()}
    again = _run(tmp_path, "pki", "init-ca", "ca", "--name", "Root")
    assert again.returncode == 2 and "XPS_ERR_POLICY" in again.stderr and "backup" in again.stderr, again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()} == before


# -- issue --------------------------------------------------------------------------------------


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir()
    assert _run(base, "pki", "init-ca", "ca", "--name", "Root").returncode == 0
    return base


def _check_no_partial_file(work: Path) -> None:
    """Each of svc.crt / svc.key under its final name is whole: a chain, a PEM key."""
    crt, key = work / "svc.crt", work / "svc.key"
    if crt.exists():
        chain = load_certificates(crt.read_bytes())
        assert chain and chain[0].subject.rfc4514_string() == "CN=svc"
        assert key.exists() and (work / "svc.static").exists()  # the certificate comes last
        assert load_pem_private_key(key.read_bytes(), None).public_key() == chain[0].public_key()
    if key.exists():
        load_pem_private_key(key.read_bytes(), None)
    if (work / "svc.static").exists():
        assert len((work / "svc.static").read_bytes()) == 32


@pytest.mark.parametrize("syscall", ["write", "link", "fsync"])
def test_issue_killed_anywhere_leaves_no_partial_file_and_the_retry_says_what_is_left(
        ca_dir: Path, tmp_path: Path, syscall: str) -> None:
    args = ("pki", "issue", "--ca", "ca", "--name", "svc", "--dns", "svc.test", "--out", "svc")
    kills = 0
    for n in range(1, _MAX_POINTS):
        work = tmp_path / f"{syscall}{n}"
        shutil.copytree(ca_dir, work)
        if not _killed_at(work, syscall, n, *args):
            break
        kills += 1
        _check_no_partial_file(work)
        left = [name for name in ("svc.key", "svc.static") if (work / name).exists()]
        if (work / "svc.crt").exists():
            continue  # finished before the kill (the kill hit the report)
        retry = _run(work, *args)
        if left:
            assert retry.returncode == 2 and "XPS_ERR_POLICY" in retry.stderr, retry.stderr
            assert "svc.crt: missing" in retry.stderr and all(name in retry.stderr for name in left), retry.stderr
            for name in left:
                (work / name).unlink()
            retry = _run(work, *args)
        assert retry.returncode == 0, (n, retry.stderr)
        _check_no_partial_file(work)
        assert (work / "svc.crt").exists()
    assert kills >= 2, f"the {syscall} kills never hit issue"
