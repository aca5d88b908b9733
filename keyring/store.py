"""SQLite storage for keys and versions (WAL; every transition is one transaction).

Only *wrapped* key material is stored (AEAD under the KEK, bound to key id, version and
algorithm as associated data). ``secure_delete`` zeroes freed pages, and destroying material
checkpoints the WAL so the erased bytes leave the log too. Writers take ``BEGIN IMMEDIATE``,
so several processes on one file serialise their transitions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpscerpto.errors import InternalError

from .states import KeyState, VersionState

__all__ = ["KeyRow", "Store", "VersionRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    algorithm TEXT NOT NULL,
    policy TEXT NOT NULL,
    rotate_every REAL,              -- seconds; NULL = no time-based rotation
    max_encryptions INTEGER NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    kek_id TEXT,
    wrapped BLOB,                   -- NULL once destroyed
    created REAL NOT NULL,
    retired_at REAL,
    revoked_at REAL,
    destroyed_at REAL,
    encryptions INTEGER NOT NULL DEFAULT 0,  -- reserved in blocks: an upper bound of use
    decryptions INTEGER NOT NULL DEFAULT 0,
    last_used REAL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS approvals_used (nonce TEXT PRIMARY KEY, used REAL NOT NULL);
"""
_SCHEMA_VERSION = "1"


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key's metadata."""

    key_id: str
    name: str
    algorithm: str
    policy: str
    rotate_every: float | None
    max_encryptions: int
    state: KeyState
    created: float
    updated: float
    revoke_reason: str | None


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One key version's metadata and wrapped material."""

    key_id: str
    version: int
    state: VersionState
    kek_id: str | None
    wrapped: bytes | None
    created: float
    retired_at: float | None
    revoked_at: float | None
    destroyed_at: float | None
    encryptions: int
    decryptions: int
    last_used: float | None


class Store:
    """One SQLite database file; a connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        db = self._db()
        db.executescript(_SCHEMA)  # idempotent DDL; executescript manages its own transaction
        with self.write() as w:
            w.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        version = self._db().execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()[0]
        if version != _SCHEMA_VERSION:
            raise InternalError(f"keyring database {str(self.path)!r}: schema {version}, expected {_SCHEMA_VERSION}")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            created = not self.path.exists()
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            if created:
                self.path.chmod(0o600)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # a committed transition survives power loss
            db.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left behind
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, exclusive across processes from its first statement."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it (after erasing material)."""
        self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- reads (each a consistent snapshot of one statement) ---------------------------------

    def key(self, ref: str, db: sqlite3.Connection | None = None) -> KeyRow | None:
        """A key by id or by name."""
        row = (db or self._db()).execute(
            "SELECT * FROM keys WHERE key_id = ? OR name = ?", (ref, ref)).fetchone()
        return _key(row) if row else None

    def all_keys(self) -> list[KeyRow]:
        """Every key, by name."""
        return [_key(r) for r in self._db().execute("SELECT * FROM keys ORDER BY name")]

    def versions(self, key_id: str, db: sqlite3.Connection | None = None) -> list[VersionRow]:
        """A key's versions, oldest first."""
        rows = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? ORDER BY version", (key_id,))
        return [_version(r) for r in rows]

    def version(self, key_id: str, version: int, db: sqlite3.Connection | None = None) -> VersionRow | None:
        """One version."""
        row = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? AND version = ?", (key_id, version)).fetchone()
        return _version(row) if row else None

    def active_version(self, key_id: str, db: sqlite3.Connection | None = None) -> VersionRow | None:
        """The version that encrypts, if the key has one."""
        row = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? AND state = 'active'", (key_id,)).fetchone()
        return _version(row) if row else None


def _key(r: tuple[Any, ...]) -> KeyRow:
    return KeyRow(r[0], r[1], r[2], r[3], r[4], r[5], KeyState(r[6]), r[7], r[8], r[9])


def _version(r: tuple[Any, ...]) -> VersionRow:
    return VersionRow(r[0], r[1], VersionState(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])
