"""kill -9 at a chosen syscall, for the crash tests: strace injects SIGKILL at the N-th call.

``tools/test.sh`` installs strace. As with PostgreSQL (``tests/pg_server.py``), a machine
without it, or where ptrace is not permitted, skips these tests outside CI and fails them under
``CI=true``: a crash test must not pass in CI by not running.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["STRACE", "cannot_trace", "strace"]

STRACE = shutil.which("strace")


def strace() -> str:
    """The strace binary; skips (outside CI) or fails (CI) without one."""
    if STRACE is None:
        _missing("strace is not installed (tools/test.sh installs it)")
    assert STRACE is not None
    return STRACE


def cannot_trace(stderr: str) -> None:
    """Skip (outside CI) or fail (CI) if strace's ``stderr`` says ptrace is not permitted here."""
    if "ptrace" in stderr and "Operation not permitted" in stderr:
        _missing(f"strace cannot trace here: {stderr.strip()[:200]}")


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)
