"""Smoke test for tools/bench_multinode.py: it runs against the test session's server and reports each figure.

No timing is asserted (tiny runs are not meaningful); the run must produce every line, with
numbers, and exit 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from xpscerpto.db import Database

from tests.pg_server import PgServer

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_multinode.py"


def test_the_multinode_benchmark_reports_every_figure(pg_server: PgServer) -> None:
    dsn = pg_server.create_database("xps_bench_smoke", template="xps_template")
    out = subprocess.run([sys.executable, str(BENCH), "--dsn", dsn, "--rounds", "1", "--calls", "200",
                          "--trials", "2", "--ttl", "0.5"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert re.search(r"encrypt: postgresql/sqlite = [0-9.]+x", out)
    assert re.search(r"decrypt: postgresql/sqlite = [0-9.]+x", out)
    assert re.search(r"refused on node B, 2 keys: median [0-9.]+ ms", out)
    assert re.search(r"lease failover \(ttl 0.5 s.*\): [0-9.]+ s", out)
    db = Database(dsn)
    try:  # it used the database it was given
        assert db.execute("SELECT count(*) FROM keys").fetchone() == (3,)
    finally:
        db.close()
