"""Settings for the whole test suite."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.pg_server import PgServer, require_server_bin

# Engines made by tests route statically unless a test asks for autotune itself
# (EngineConfig(autotune=True)): measuring in the background of every Engine() would load the
# machine and make each test's routing depend on timing. tests/engine/test_tuning.py and the
# CLI tests of `xps tune` turn it on explicitly.
os.environ.setdefault("XPS_AUTOTUNE", "0")
# Measurements made by tests never land in (or come from) the user's cache.
os.environ.setdefault("XPS_AUTOTUNE_CACHE", os.path.join(tempfile.mkdtemp(prefix="xps-test-tune-"), "autotune.json"))


# -- PostgreSQL (issue 14): one throwaway server per session, one fresh database per test --------

_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server of this test session, with a migrated template database."""
    server = PgServer(require_server_bin())
    try:
        from xpscerpto.db import Database, migrate

        db = Database(server.create_database("xps_template"))
        migrate(db)
        db.close()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of a new database, migrated to the newest schema."""
    return pg_server.create_database(f"xps_t{os.getpid()}_{next(_databases)}", template="xps_template")
