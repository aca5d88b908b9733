"""The tests' PostgreSQL: :class:`xpscerpto.db.throwaway.ThrowawayServer`, skipped or failed when absent.

``tools/test.sh`` installs the Debian package when no server binary is found; outside CI a
missing binary skips the PostgreSQL tests with a reason saying how to run them, under
``CI=true`` it fails them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xpscerpto.db.throwaway import ThrowawayServer as PgServer
from xpscerpto.db.throwaway import server_bin

__all__ = ["HOW", "PgServer", "require_server_bin", "server_bin"]

HOW = ("PostgreSQL server binaries not found: install the Debian package `postgresql` "
       "(bash tools/test.sh does) to run the PostgreSQL tests")


def require_server_bin() -> Path:
    """The binaries' folder; skips (outside CI) or fails (CI) when there is none."""
    found = server_bin()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(HOW)
        pytest.skip(HOW)
    return found
