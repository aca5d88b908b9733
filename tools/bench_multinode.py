#!/usr/bin/env python3
"""Multi-node benchmark: keyring per call on PostgreSQL vs SQLite; revocation reach; lease failover.

Starts its own throwaway PostgreSQL (as the tests do; ``--dsn`` uses an existing, migrated
database instead) and reports, in one run:

* ``Keyring.encrypt``/``decrypt`` (64 B) per call with the store on PostgreSQL, as a ratio to
  the same calls with the store on SQLite: the hot path must not touch the database per call,
  so the ratio should be ~1 (interleaved rounds, medians; usage-block reservations included);
* time from ``revoke`` on node A to the first refused ``encrypt`` on node B (a second keyring
  with its own home and connections), over ``--trials`` keys: NOTIFY delivery; the bound
  without it is RECHECK_SECONDS;
* lease failover: the time from the last renewal of a leader that stops (as if killed) to
  another node holding the lease, polling every 50 ms, for a ``--ttl`` lease.

A report, not a test: always exits 0. Usage: ``python tools/bench_multinode.py [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg_server / tests.db helpers
# Both stores share one engine: its background autotune measurements would land in whichever
# store's samples happen to run then (they doubled one side's times in a trial run).
os.environ.setdefault("XPS_AUTOTUNE", "0")

from xpscerpto.db import Database, migrate
from xpscerpto.errors import KeyError_
from xpscerpto.keyring import Keyring
from xpscerpto.orchestrator import Lease

from tests.db.test_postgres import _config, _node
from tests.pg_server import PgServer, server_bin


def _per_call(fn: object, n: int) -> float:
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - start) / n
    finally:
        gc.enable()


def bench_calls(dsn: str, root: Path, rounds: int, n: int) -> None:
    sqlite = Keyring(root / "sqlite-home")
    pg = Keyring(root / "pg-home", config=_config(dsn))
    ratios: dict[str, list[float]] = {"encrypt": [], "decrypt": []}
    per: dict[str, list[float]] = {"sqlite encrypt": [], "pg encrypt": [], "sqlite decrypt": [], "pg decrypt": []}
    try:
        for ring in (sqlite, pg):
            ring.create("bench", "AES-256-GCM")
        blobs = {id(r): r.encrypt("bench", b"m" * 64) for r in (sqlite, pg)}
        for i in range(rounds):
            order = (sqlite, pg) if i % 2 == 0 else (pg, sqlite)
            got: dict[tuple[str, str], float] = {}
            for ring in order:
                name = "sqlite" if ring is sqlite else "pg"
                blob = blobs[id(ring)]
                got[(name, "encrypt")] = _per_call(lambda r=ring: r.encrypt("bench", b"m" * 64), n)
                got[(name, "decrypt")] = _per_call(lambda r=ring, b=blob: r.decrypt(b), n)
            for op in ("encrypt", "decrypt"):
                ratios[op].append(got[("pg", op)] / got[("sqlite", op)])
                per[f"sqlite {op}"].append(got[("sqlite", op)])
                per[f"pg {op}"].append(got[("pg", op)])
    finally:
        sqlite.close()
        pg.close()
    print(f"keyring per call, 64 B, {rounds} interleaved rounds x {n} calls (medians):")
    for op in ("encrypt", "decrypt"):
        print(f"  {op}: postgresql/sqlite = {statistics.median(ratios[op]):.2f}x "
              f"(sqlite {statistics.median(per[f'sqlite {op}']) * 1e6:.2f} us, "
              f"postgresql {statistics.median(per[f'pg {op}']) * 1e6:.2f} us)")


def bench_revocation(dsn: str, root: Path, trials: int) -> None:
    a = _node(root, "rev-a", dsn, like=root / "pg-home")  # the database is sealed under pg-home's KEK
    b = _node(root, "rev-b", dsn, like=root / "rev-a")
    took = []
    try:
        time.sleep(0.3)  # b's listener connects
        for i in range(trials):
            name = f"rev{i}"
            a.create(name)
            b.encrypt(name, b"warm")
            time.sleep(0.05)
            start = time.perf_counter()
            a.revoke(name, "bench")
            while True:
                try:
                    b.encrypt(name, b"x")
                except KeyError_:
                    break
            took.append(time.perf_counter() - start)
    finally:
        a.close()
        b.close()
    took_ms = sorted(t * 1e3 for t in took)
    print(f"revoke on node A -> refused on node B, {trials} keys: median {statistics.median(took_ms):.1f} ms, "
          f"max {took_ms[-1]:.1f} ms (bound without NOTIFY: 1000 ms)")


def bench_failover(db: Database, ttl: float) -> None:
    a, b = Lease(db, "bench", holder="a", ttl=ttl), Lease(db, "bench", holder="b", ttl=ttl)
    a.acquire()
    last_renewal = time.perf_counter()  # then a "dies": it never renews again
    while not b.acquire().mine:
        time.sleep(0.05)
    print(f"lease failover (ttl {ttl:g} s, followers poll every 50 ms): {time.perf_counter() - last_renewal:.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsn", help="a migrated database to use instead of a throwaway server")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--ttl", type=float, default=2.0)
    args = p.parse_args()
    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        found = server_bin()
        if found is None:
            print("no PostgreSQL server binaries (install the postgresql package) and no --dsn")
            return 0
        server = PgServer(found)
        dsn = server.create_database("xps_bench")
    db = Database(dsn)
    try:
        migrate(db)
        with tempfile.TemporaryDirectory() as tmp:
            bench_calls(dsn, Path(tmp), args.rounds, args.calls)
            bench_revocation(dsn, Path(tmp), args.trials)
        bench_failover(db, args.ttl)
    finally:
        db.close()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
