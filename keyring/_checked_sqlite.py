"""SQLite connections whose errors from a damaged database are the keyring's typed refusal.

A keyring.db damaged on disk (a flipped bit in a page, a text column that is no longer UTF-8)
makes SQLite raise ``DatabaseError`` or ``OperationalError`` from whatever statement or fetch
first touches the bad page — anywhere in the keyring, long after the database opened. Those
must reach the caller as one typed error that names the file and the fix, and never carry
SQLite's own message: it can quote the damaged column's content (a wrapped key, say).

Constraint violations (``IntegrityError``) stay as they are: the store uses them for its own
checks. A busy database (``SQLITE_BUSY``, after the connection's timeout) is an internal error,
not damage.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from xpscerpto.errors import InternalError, PolicyError, XpsError

__all__ = ["CheckedConnection"]

_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY"})


def _refusal(exc: sqlite3.DatabaseError, where: str) -> XpsError:
    # Only SQLite's error *name* (SQLITE_CORRUPT, ...) or the class: its message may quote data.
    code = getattr(exc, "sqlite_errorname", None)
    name = code or type(exc).__name__
    if code in _BUSY:
        return InternalError(f"keyring database {where!r}: busy ({name}); retry")
    # Damage: SQLite says so, or a value that no longer decodes (the module's own error, no code).
    if code is None or code.startswith("SQLITE_CORRUPT") or code == "SQLITE_NOTADB":
        return PolicyError(f"keyring database {where!r}: damaged ({name}); restore it from a backup")
    # A full disk, an I/O or permission error: the store is not necessarily damaged.
    return InternalError(f"keyring database {where!r}: cannot be read or written ({name})")


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of ``sqlite3.Cursor``, its damage errors turned into the typed refusal."""
    @functools.wraps(method)
    def call(self: sqlite3.Cursor, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:  # the store's own constraint checks
            raise
        except sqlite3.DatabaseError as exc:
            raise _refusal(exc, str(getattr(self.connection, "where", "?"))) from None
    return call


class _CheckedCursor(sqlite3.Cursor):
    execute = _translating(sqlite3.Cursor.execute)
    executemany = _translating(sqlite3.Cursor.executemany)
    executescript = _translating(sqlite3.Cursor.executescript)
    fetchone = _translating(sqlite3.Cursor.fetchone)
    fetchmany = _translating(sqlite3.Cursor.fetchmany)
    fetchall = _translating(sqlite3.Cursor.fetchall)
    __next__ = _translating(sqlite3.Cursor.__next__)


class CheckedConnection(sqlite3.Connection):
    """``sqlite3.connect(..., factory=CheckedConnection)``; set ``where`` to name the file."""

    where: str = "?"

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _CheckedCursor)

    # The C implementations of these make a plain cursor, not through cursor() above.
    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, seq)

    def executescript(self, script: str, /) -> Any:
        return self.cursor().executescript(script)
