"""Test helpers that change orchestration rows the way only a holder of the integrity key can.

Moving a plan's anchor back stands in for time passing. Editing a row and sealing it again
stands in for a node with the key that wrote a malformed row (a bug, an older release): what
the validation after the seal must still refuse. An edit *without* resealing is what
tests/orchestrator/test_sealed_rows.py checks.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from xpscerpto.db import Database
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.db.migrations import MIGRATIONS
from xpscerpto.keyring import Keyring

from tests.pg_server import PgServer

_databases = itertools.count()


def schema7_database(pg_server: PgServer) -> str:
    """A fresh database at the schema of the release before sealed orchestration rows (7): what
    an earlier release left, before ``migrate`` brings it to schema 8."""
    dsn = pg_server.create_database(f"xps_schema7_{next(_databases)}")
    db = Database(dsn)
    try:
        with db.transaction() as tx:
            tx.execute("CREATE TABLE xps_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                       "applied TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
            for m in MIGRATIONS:
                if m.version <= 7:
                    for statement in m.statements:
                        tx.execute(statement)
                    tx.execute("INSERT INTO xps_migrations (version, description) VALUES (?, ?)",
                               (m.version, m.description))
    finally:
        db.close()
    return dsn


def due_now(ring: Keyring, plan: str, period: float) -> None:
    """Move the plan's anchor back so exactly one due time has passed."""
    with ring.store.write() as db:
        row = sealed.read(ring.store, db, sealed.PLANS, "plan = ?", (plan,))[0]
        sealed.put(ring.store, db, sealed.PLANS, {**row, "anchor": sealed.now(db) - timedelta(seconds=period + 1.0)})


def edit_sealed(ring: Keyring, table: sealed.Table, column: str, value: Any) -> None:
    """Set ``column`` of every row of ``table`` to ``value`` and seal the rows again."""
    store = ring.store
    with store.write() as db:
        db.execute(f"UPDATE {table.name} SET {column} = ?", (value,))
        cols = ", ".join(table.columns)
        for r in db.execute(f"SELECT {cols}, mac FROM {table.name}").fetchall():
            row = dict(zip(table.columns, r[:-1], strict=True))
            mac = store.row_seal(table.name, sealed._normal(table, row))
            db.execute(f"UPDATE {table.name} SET mac = ? WHERE {' AND '.join(f'{c} = ?' for c in table.key)}",
                       (mac, *(row[c] for c in table.key)))
            store.roster_rows(db, add=[sealed._entry(table, row, mac)], remove=[sealed._entry(table, row, r[-1])])
