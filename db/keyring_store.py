"""The keyring's storage on PostgreSQL: the SQLite store's interface over a shared database.

Same rows, same seals, same SQL (the common dialect, ``?`` markers rewritten by
:class:`~xpscerpto.db.postgres.Session`). What differs:

- writers serialise on one advisory lock per database (``BEGIN IMMEDIATE`` does it for SQLite),
  so every node's transitions are ordered exactly as one machine's processes are;
- a change to a key notifies channel ``xps_keyring`` at commit (``pg_notify`` runs inside the
  transaction: a rolled-back change announces nothing); :meth:`PgStore.on_change` listens, so
  another node drops its cached handles at once instead of at its next re-read;
- the schema comes from ``xps db migrate``; the store never creates tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xpscerpto.keyring.store import PRIMARY_KEYS, Connection, Store

from .migrations import open_migrated

__all__ = ["KEYRING_CHANNEL", "KEYRING_LOCK", "PgStore"]

KEYRING_CHANNEL = "xps_keyring"
#: The advisory lock every keyring write transaction holds.
KEYRING_LOCK = 0x7870_7300_0000_0002


class PgStore(Store):
    """A keyring store in a PostgreSQL database (see the module docstring).

    Args:
        dsn: ``postgresql://…`` without a password.

    Raises:
        PolicyError: the DSN is unusable, psycopg is missing, or the schema is not migrated.
        InternalError: the database cannot be reached.
    """

    def __init__(self, dsn: str, *, create: bool = False) -> None:
        self.database = open_migrated(dsn, 1, "keyring database")
        self.path = Path(".")  # not a file; messages use .name
        self.name = self.database.name
        self.sealer = None
        self.upgraded_from = None
        self.is_new = False
        self.roster_on = False

    def _db(self) -> Connection:
        return self.database

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, serialised across every node by an advisory lock."""
        with self.database.transaction(lock=KEYRING_LOCK) as tx:
            yield tx

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one snapshot of the database (REPEATABLE READ)."""
        with self.database.transaction() as tx:
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield tx

    def check_schema(self, db: Connection) -> None:
        """Refuse tables that lost their primary key or key-name uniqueness, or gained a trigger
        or rule (see the SQLite store's check) — the orchestration tables' too, once sealed (a
        trigger there could swallow an operator's write without the roster noticing)."""
        from .sealed_tables import MARK, TABLES

        keys = dict(PRIMARY_KEYS)
        if self.meta(MARK, db) is not None:
            keys.update({t.name: t.key for t in TABLES})
        tables = list(keys)
        marks = ", ".join("?" * len(tables))
        if db.execute(f"SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "  # noqa: S608
                      f"WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace "
                      f"AND c.relname IN ({marks})", tables).fetchone()[0]:
            raise self._schema_edited("a trigger was added")
        if db.execute(f"SELECT count(*) FROM pg_rules WHERE schemaname = current_schema() "  # noqa: S608
                      f"AND tablename IN ({marks})", tables).fetchone()[0]:
            raise self._schema_edited("a rule was added")
        declared: dict[str, list[tuple[int, str]]] = {}
        unique_name = False
        for table, kind, column, position in db.execute(
                "SELECT tc.table_name, tc.constraint_type, k.column_name, k.ordinal_position "
                "FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage k "
                "ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema "
                "WHERE tc.table_schema = current_schema() AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')"):
            if kind == "PRIMARY KEY":
                declared.setdefault(table, []).append((position, column))
            elif table == "keys" and column == "name":
                unique_name = True
        for table, key in keys.items():
            if tuple(c for _, c in sorted(declared.get(table, []))) != key:
                raise self._schema_edited(f"table {table} lost its primary key")
        if not unique_name:
            raise self._schema_edited("key names are no longer unique")

    def _other_entries(self, db: Connection) -> Iterator[list[Any]]:
        """The orchestration tables' sealed rows (:mod:`.sealed_tables`), once adopted."""
        from .sealed_tables import roster_entries

        return roster_entries(self, db)

    def checkpoint(self) -> None:
        """Nothing to fold: PostgreSQL reclaims erased tuples at VACUUM (see SECURITY.md)."""

    def changed(self, db: Connection, key_id: str) -> None:
        """Notify ``xps_keyring`` at commit that ``key_id`` changed."""
        db.execute("SELECT pg_notify(?, ?)", (KEYRING_CHANNEL, key_id))

    def on_change(self, callback: Callable[[str], Any]) -> None:
        """Call ``callback(key_id)`` on every node's change; ``callback("*")`` after a reconnect."""
        self.database.listen(KEYRING_CHANNEL, callback, on_reconnect=lambda: callback("*"))

    def close(self) -> None:
        """Close the pool and the listener."""
        self.database.close()
