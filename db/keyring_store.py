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

from xpscerpto.keyring.store import Connection, Store

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
