"""``xps db migrate`` / ``xps db status`` against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

from xpscerpto.db import head

from tests.pg_server import PgServer


def _xps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_migrate_applies_every_step_once_and_status_reports_it(pg_server: PgServer) -> None:
    dsn = pg_server.create_database("xps_cli_migrate")
    first = _xps("db", "migrate", "--database", dsn, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"applied": list(range(1, head() + 1)), "schema": head()}
    again = _xps("db", "migrate", "--database", dsn, "--json")
    assert json.loads(again.stdout) == {"applied": [], "schema": head()}
    status = _xps("db", "status", "--database", dsn, "--json")
    assert json.loads(status.stdout) == {"schema": head(), "head": head()}


def test_bad_databases_are_one_line_refusals_without_the_password() -> None:
    for dsn, code in (("postgresql://xps:hunter2@127.0.0.1/db", "XPS_ERR_POLICY"), ("keyring.db", "XPS_ERR_POLICY"),
                      ("postgresql://xps@127.0.0.1:1/nowhere", "XPS_ERR_INTERNAL")):
        out = _xps("db", "migrate", "--database", dsn)
        assert out.returncode == 2 and code in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert "hunter2" not in out.stderr
