"""SQLite storage for keys, versions, operators and the journal outbox (WAL; one transaction per change).

Only *wrapped* key material is stored (AEAD under the KEK, bound to key id, version and
algorithm as associated data). ``secure_delete`` zeroes freed pages, and destroying material
checkpoints the WAL so the erased bytes leave the log too. Writers take ``BEGIN IMMEDIATE``,
so several processes on one file serialise their transitions.

Every row that decides what a key may do is *sealed* (:mod:`xpscerpto.keyring.integrity`):
writes go through the methods here, which seal the row they write; reads check the seal once a
:class:`~xpscerpto.keyring.integrity.Sealer` is attached. Usage counters that only inform
(``decryptions``, ``last_used``) are not sealed; the encryption count, which bounds nonce
reuse, is.

Rows are sealed one by one, so a seal alone cannot tell a deleted row, or an older copy of a row
put back, from the real thing. The *roster* closes that: one meta value holding the sum (mod
2^256) of a keyed tag per row (its table, primary key and seal), itself sealed. A sum, not an
XOR: two copies of one row must not cancel out. Every write here updates it in the write's own
transaction (writers are serialised, so read-modify-write is safe), and the keyring checks it
against every row, in one read snapshot, at each open, and again in an open keyring when a
re-read finds a change (see ``Keyring._check_rows``): a deleted row, an added one, a second
copy of one or an older copy put back no longer adds up. The roster's own seal keeps an editor
from combining the values of several old copies into a new one. The open also refuses a schema
that lost a primary key or gained a trigger or view (what duplicate rows, or rows that quietly
come back, would need).

The database is never created implicitly: :class:`Store` opens an existing file unless told
to create it (the home records which stores exist), so a deleted database is a refusal, not an
empty keyring.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from xpscerpto.errors import InternalError, PolicyError

from ._checked_sqlite import CheckedConnection
from .integrity import KeyringTampered, Sealer
from .states import KeyState, VersionState

__all__ = ["Connection", "KeyRow", "OutboxRow", "RewrapGrant", "Store", "VersionRow"]


class Connection(Protocol):
    """What the store needs of a database connection: ``execute`` returning a cursor.

    ``sqlite3.Connection`` is one; the PostgreSQL backend (:mod:`xpscerpto.db`) hands out an
    adapter with the same shape. SQL here is the common dialect of both, with ``?`` markers.
    """

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    algorithm TEXT NOT NULL,        -- the algorithm of version 1 (each version records its own)
    policy TEXT NOT NULL,
    rotate_every REAL,              -- seconds; NULL = no time-based rotation
    max_encryptions INTEGER NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    revoke_reason TEXT,
    mac TEXT
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
    algorithm TEXT,                 -- this version's AEAD (a rotation may change the suite)
    mac TEXT,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS approvals_used (nonce TEXT PRIMARY KEY, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS operators (
    keyid TEXT PRIMARY KEY, public_key TEXT NOT NULL, label TEXT NOT NULL, added REAL NOT NULL, mac TEXT);
CREATE TABLE IF NOT EXISTS outbox (
    txid TEXT PRIMARY KEY, created REAL NOT NULL, event TEXT NOT NULL, fields TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rewrap_grants (
    revoked_key TEXT PRIMARY KEY, successor TEXT NOT NULL, expires REAL NOT NULL, approvers TEXT NOT NULL,
    mac TEXT);
"""
SCHEMA_VERSION = "2"
#: Columns schema 1 lacked, added in place by the upgrade (existing rows keep their values).
_V2_COLUMNS = (("keys", "mac", "TEXT"), ("versions", "algorithm", "TEXT"), ("versions", "mac", "TEXT"))


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
    mac: str | None = None

    def sealed_fields(self) -> tuple[Any, ...]:
        """What the seal covers (``updated`` is bookkeeping)."""
        return (self.key_id, self.name, self.algorithm, self.policy, self.rotate_every, self.max_encryptions,
                str(self.state), self.created, self.revoke_reason)


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
    algorithm: str | None = None
    mac: str | None = None

    def sealed_fields(self) -> tuple[Any, ...]:
        """What the seal covers (the informational counters are not)."""
        return (self.key_id, self.version, str(self.state), self.kek_id, self.wrapped, self.created,
                self.retired_at, self.revoked_at, self.destroyed_at, self.encryptions, self.algorithm)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A journal record committed with its change, not yet appended to the journal."""

    txid: str
    created: float
    event: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RewrapGrant:
    """An approved re-encryption of a revoked key's blobs under a successor key."""

    revoked_key: str
    successor: str
    expires: float
    approvers: tuple[str, ...]
    mac: str | None = None

    def sealed_fields(self) -> tuple[Any, ...]:
        """What the seal covers."""
        return (self.revoked_key, self.successor, self.expires, list(self.approvers))


#: The meta key of the roster (see the module docstring).
_ROSTER = "roster"
_MOD = 1 << 256
#: Each table's primary key, as the schema declares it (checked at open).
PRIMARY_KEYS = {"meta": ("k",), "keys": ("key_id",), "versions": ("key_id", "version"),
                "approvals_used": ("nonce",), "operators": ("keyid",), "outbox": ("txid",),
                "rewrap_grants": ("revoked_key",)}

#: Where a queued journal record's seal is kept, inside its fields (never a field of a record).
_OUTBOX_SEAL = "_seal"


class Store:
    """One SQLite database file; a connection per thread.

    Args:
        path: the database file.
        create: create it (and its schema) if missing; otherwise it must exist.

    Raises:
        PolicyError: the file is missing (and ``create`` is false), or is not a keyring
            database of a known schema (the message names the file).
    """

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        self.name = str(self.path)  # how messages name the store
        self._create = create
        self._local = threading.local()
        self.sealer: Sealer | None = None
        self.upgraded_from: str | None = None  # "1" if this open upgraded the schema
        self.is_new = False  # True if this open created the (empty) schema
        self.roster_on = False  # writes keep the roster (set by the keyring once it is built)
        #: Told of each roster update this process writes: (roster before, after, rows added,
        #: rows removed), inside the write (it may still roll back).
        self.roster_listener: Callable[[str | None, str, Sequence[Sequence[Any]], Sequence[Sequence[Any]]],
                                       None] | None = None
        where = f"keyring database {str(self.path)!r}"
        try:
            db = self._sqlite()
            version_row = db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone() if self._has_meta(db) \
                else None
            if version_row is None:
                if not create:
                    raise PolicyError(f"{where}: not a keyring database (no schema); restore it from a backup")
                db.executescript(_SCHEMA)
                self.is_new = True
                with self.write() as w:
                    w.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif version_row[0] == "1":
                self._upgrade_from_1(db)
            elif version_row[0] != SCHEMA_VERSION:
                shown = repr(version_row[0]) if str(version_row[0]).isdigit() and len(str(version_row[0])) < 8 \
                    else "unknown"
                raise PolicyError(f"{where}: schema {shown}, this xpscerpto reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise PolicyError(f"{where}: unreadable ({type(exc).__name__}: not a keyring database or corrupted); "
                              "restore it from a backup") from None

    @staticmethod
    def _has_meta(db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is not None

    def _upgrade_from_1(self, db: Connection) -> None:
        with self.write() as w:
            have = {(t, c[1]) for t in ("keys", "versions") for c in w.execute(f"PRAGMA table_info({t})")}
            for table, column, kind in _V2_COLUMNS:
                if (table, column) not in have:
                    w.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            w.execute("UPDATE versions SET algorithm = (SELECT algorithm FROM keys WHERE keys.key_id = versions.key_id)"
                      " WHERE algorithm IS NULL")
            for statement in _SCHEMA.split(";"):
                if "operators" in statement or "outbox" in statement or "rewrap_grants" in statement:
                    w.execute(statement)
            w.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (SCHEMA_VERSION,))
        self.upgraded_from = "1"

    def _db(self) -> Connection:
        return self._sqlite()

    def _sqlite(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            mode = "rwc" if self._create else "rw"
            created = not self.path.exists()
            try:
                checked = sqlite3.connect(
                    f"file:{quote(str(self.path))}?mode={mode}", uri=True, timeout=30, isolation_level=None,
                    check_same_thread=True, factory=CheckedConnection)
                checked.where = str(self.path)
                db = checked
            except sqlite3.OperationalError as exc:
                raise PolicyError(f"keyring database {str(self.path)!r}: cannot open ({exc}); restore it from a "
                                  "backup") from None
            if created:
                self.path.chmod(0o600)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # a committed transition survives power loss
            db.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left behind
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    @contextmanager
    def write(self) -> Iterator[Connection]:
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

    def changed(self, db: Connection, key_id: str) -> None:
        """Tell other processes that key ``key_id`` changed (inside the change's transaction).

        SQLite has no channel for it: other processes see a change at their next re-read
        (``RECHECK_SECONDS``). The PostgreSQL store notifies its listeners at commit.
        """

    def on_change(self, callback: Any) -> None:
        """Call ``callback(key_id)`` when another process changes a key (where the store can tell)."""

    def empty(self) -> bool:
        """True if the store holds no key and no integrity key (nothing to protect yet)."""
        db = self._db()
        return db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is None and self.meta("integrity_key") is None

    def close(self) -> None:
        """Close this thread's connection (the sealer stays: other threads may still read)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- meta -------------------------------------------------------------------------------

    def meta(self, k: str, db: Connection | None = None) -> str | None:
        """A value of the meta table."""
        row = (db or self._db()).execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, db: Connection, k: str, v: str) -> None:
        """Set a meta value (inside a write transaction)."""
        db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, v))

    # -- reads (each a consistent snapshot of one statement; seals checked) -----------------

    def key(self, ref: str, db: Connection | None = None) -> KeyRow | None:
        """A key by id or by name."""
        row = (db or self._db()).execute(
            "SELECT * FROM keys WHERE key_id = ? OR name = ?", (ref, ref)).fetchone()
        return self._key(row) if row else None

    def all_keys(self) -> list[KeyRow]:
        """Every key, by name."""
        return [self._key(r) for r in self._db().execute("SELECT * FROM keys ORDER BY name")]

    def versions(self, key_id: str, db: Connection | None = None) -> list[VersionRow]:
        """A key's versions, oldest first."""
        rows = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? ORDER BY version", (key_id,))
        return [self._version(r) for r in rows]

    def version(self, key_id: str, version: int, db: Connection | None = None) -> VersionRow | None:
        """One version."""
        row = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? AND version = ?", (key_id, version)).fetchone()
        return self._version(row) if row else None

    def active_version(self, key_id: str, db: Connection | None = None) -> VersionRow | None:
        """The version that encrypts, if the key has one."""
        row = (db or self._db()).execute(
            "SELECT * FROM versions WHERE key_id = ? AND state = 'active'", (key_id,)).fetchone()
        return self._version(row) if row else None

    def retired_versions(self, db: Connection | None = None) -> list[VersionRow]:
        """Every retired version (retention looks at these)."""
        rows = (db or self._db()).execute("SELECT * FROM versions WHERE state = 'retired' ORDER BY key_id, version")
        return [self._version(r) for r in rows]

    def operators(self, db: Connection | None = None) -> dict[str, tuple[bytes, str]]:
        """Registered operator keys: key id -> (public key, label)."""
        out: dict[str, tuple[bytes, str]] = {}
        for keyid, pk, label, added, mac in (db or self._db()).execute(
                "SELECT keyid, public_key, label, added, mac FROM operators ORDER BY keyid"):
            self._check("operator", (keyid, pk, label, added), mac, f"operator {_id(keyid)[:12]}")
            out[keyid] = (bytes.fromhex(pk), label)
        return out

    def grant(self, revoked_key: str, db: Connection | None = None) -> RewrapGrant | None:
        """The rewrap grant for a revoked key, if any."""
        row = (db or self._db()).execute("SELECT * FROM rewrap_grants WHERE revoked_key = ?", (revoked_key,)).fetchone()
        if row is None:
            return None
        try:
            approvers = json.loads(row[3])
            if not isinstance(approvers, list):
                raise TypeError
        except (TypeError, ValueError, RecursionError):
            raise KeyringTampered(f"keyring database {self.name!r}: the rewrap grant of a key is damaged (edited "
                                  "outside xps?); restore it from a backup") from None
        grant = RewrapGrant(row[0], row[1], row[2], tuple(approvers), row[4])
        self._check("grant", grant.sealed_fields(), grant.mac, f"rewrap grant of {_id(grant.revoked_key)}")
        return grant

    def outbox(self, db: Connection | None = None) -> list[OutboxRow]:
        """Journal records waiting to be appended, oldest first."""
        rows = []
        for t, c, e, f in (db or self._db()).execute(
                "SELECT txid, created, event, fields FROM outbox ORDER BY created, txid"):
            try:
                fields = json.loads(f)
                if not (isinstance(t, str) and type(c) in (int, float) and isinstance(e, str)
                        and isinstance(fields, dict)):
                    raise TypeError
            except (TypeError, ValueError, RecursionError):
                raise PolicyError(f"keyring database {self.name!r}: a queued journal record is damaged; "
                                  "restore it from a backup") from None
            # Delivered records become genuine, chained journal records: one queued by someone
            # who can write only the database must be refused here, like any unsealed row.
            seal = fields.pop(_OUTBOX_SEAL, None)
            if self.sealer is None:
                raise InternalError("keyring store: queued journal records read before the integrity key was attached")
            if seal is None:
                # Queued by a release before records were sealed (a crash left it, or an older node
                # of a shared database still queues so): delivered, marked, never passed as sealed.
                fields["unsealed"] = True
            else:
                self.sealer.check("outbox", [t, float(c), e, json.dumps(fields, sort_keys=True)], seal,
                                  what="a queued journal record")
            rows.append(OutboxRow(t, float(c), e, fields))
        return rows

    def unsealed(self) -> int:
        """Rows with no seal yet (only right after an upgrade from schema 1)."""
        db = self._db()
        return sum(db.execute(f"SELECT count(*) FROM {t} WHERE mac IS NULL").fetchone()[0]  # noqa: S608
                   for t in ("keys", "versions", "operators"))

    # -- writes (inside a write transaction; every sealed row is sealed here) ---------------

    def insert_key(self, db: Connection, row: KeyRow) -> None:
        """Add a key row."""
        row = replace(row, mac=self._seal("key", row.sealed_fields()))
        # Column names and placeholders come from the dataclass; every value is bound.
        db.execute(f"INSERT INTO keys VALUES ({','.join('?' * len(fields(KeyRow)))})", _columns(row))  # noqa: S608
        self._roster(db, add=[_key_entry(row)])
        self.changed(db, row.key_id)

    def update_key(self, db: Connection, key_id: str, **changes: Any) -> KeyRow:
        """Change a key row's fields (re-read inside the transaction, checked, re-sealed)."""
        current = self.key(key_id, db)
        if current is None:
            raise InternalError(f"keyring: no key {key_id} to update")
        row = replace(current, **changes)
        row = replace(row, mac=self._seal("key", row.sealed_fields()))
        names = [f.name for f in fields(KeyRow) if f.name != "key_id"]
        cur = db.execute(f"UPDATE keys SET {', '.join(f'{n} = ?' for n in names)} WHERE key_id = ?",  # noqa: S608
                         (*_columns(row)[1:], key_id))
        _one_row(cur, self.name)
        self._roster(db, add=[_key_entry(row)], remove=[_key_entry(current)])
        self.changed(db, key_id)
        return row

    def insert_version(self, db: Connection, row: VersionRow) -> None:
        """Add a version row."""
        row = replace(row, mac=self._seal("version", row.sealed_fields()))
        db.execute(f"INSERT INTO versions VALUES ({','.join('?' * len(fields(VersionRow)))})",  # noqa: S608
                   _columns(row))
        self._roster(db, add=[_version_entry(row)])
        self.changed(db, row.key_id)

    def update_version(self, db: Connection, key_id: str, version: int, **changes: Any) -> VersionRow:
        """Change a version row's fields (re-read inside the transaction, checked, re-sealed)."""
        current = self.version(key_id, version, db)
        if current is None:
            raise InternalError(f"keyring: no version {version} of {key_id} to update")
        row = replace(current, **changes)
        row = replace(row, mac=self._seal("version", row.sealed_fields()))
        names = [f.name for f in fields(VersionRow) if f.name not in ("key_id", "version")]
        values = [getattr(row, n) for n in names]
        cur = db.execute(f"UPDATE versions SET {', '.join(f'{n} = ?' for n in names)} "  # noqa: S608
                         "WHERE key_id = ? AND version = ?",
                         (*(str(v) if isinstance(v, VersionState) else v for v in values), key_id, version))
        _one_row(cur, self.name)
        self._roster(db, add=[_version_entry(row)], remove=[_version_entry(current)])
        if changes.keys() - {"encryptions"}:  # a block reservation changes nothing others cache
            self.changed(db, key_id)
        return row

    def add_usage(self, db: Connection, key_id: str, version: int, decryptions: int, last_used: float) -> None:
        """Add informational usage counters (not sealed)."""
        # CASE, not max()/GREATEST(): the one spelling both SQLite and PostgreSQL accept.
        db.execute("UPDATE versions SET decryptions = decryptions + ?, last_used = CASE WHEN "
                   "coalesce(last_used, 0) > ? THEN last_used ELSE ? END WHERE key_id = ? AND version = ?",
                   (decryptions, last_used, last_used, key_id, version))

    def use_approval(self, db: Connection, nonce: str, now: float) -> bool:
        """Consume an approval request's nonce; False if it was used before (a replay)."""
        # ON CONFLICT, not a caught IntegrityError: an error aborts a PostgreSQL transaction.
        cur = db.execute("INSERT INTO approvals_used VALUES (?, ?) ON CONFLICT DO NOTHING", (nonce, now))
        if cur.rowcount != 1:
            return False
        self._roster(db, add=[["approvals_used", nonce, _number(now)]])
        return True

    def add_operator(self, db: Connection, keyid: str, public_key: bytes, label: str, now: float) -> bool:
        """Register an operator key; False if it was registered already."""
        values = (keyid, public_key.hex(), label, now)
        mac = self._seal("operator", values)
        cur = db.execute("INSERT INTO operators VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (*values, mac))
        if cur.rowcount != 1:
            return False
        self._roster(db, add=[["operators", keyid, mac]])
        return True

    def remove_operator(self, db: Connection, keyid: str) -> bool:
        """Unregister an operator key; False if it was not registered."""
        old = db.execute("SELECT mac FROM operators WHERE keyid = ?", (keyid,)).fetchone()
        if old is None:
            return False
        db.execute("DELETE FROM operators WHERE keyid = ?", (keyid,))
        self._roster(db, remove=[["operators", keyid, old[0]]])
        return True

    def put_grant(self, db: Connection, grant: RewrapGrant) -> None:
        """Record (or replace) a rewrap grant."""
        mac = self._seal("grant", grant.sealed_fields())
        old = db.execute("SELECT mac FROM rewrap_grants WHERE revoked_key = ?", (grant.revoked_key,)).fetchone()
        db.execute("INSERT INTO rewrap_grants VALUES (?, ?, ?, ?, ?) ON CONFLICT (revoked_key) DO UPDATE SET "
                   "successor = excluded.successor, expires = excluded.expires, approvers = excluded.approvers, "
                   "mac = excluded.mac",
                   (grant.revoked_key, grant.successor, grant.expires, json.dumps(list(grant.approvers)), mac))
        self._roster(db, add=[["rewrap_grants", grant.revoked_key, mac]],
                     remove=[["rewrap_grants", grant.revoked_key, old[0]]] if old is not None else [])

    def add_outbox(self, db: Connection, txid: str, created: float, event: str,
                   record: Mapping[str, Any]) -> None:
        """Queue a journal record in the change's own transaction, sealed like every row.

        The seal travels inside the fields column (``_seal``), so the table keeps its columns.
        """
        if self.sealer is None:
            raise InternalError("keyring store: a journal record queued before the integrity key was attached")
        if _OUTBOX_SEAL in record or "unsealed" in record:
            raise InternalError(f"keyring store: {_OUTBOX_SEAL!r} and 'unsealed' are not record fields")
        fields = json.dumps(dict(record), sort_keys=True)
        seal = self.sealer.seal("outbox", [txid, float(created), event, fields])
        stored = json.dumps({**dict(record), _OUTBOX_SEAL: seal}, sort_keys=True)
        db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (txid, created, event, stored))
        self._roster(db, add=[_outbox_entry(txid, created, event, stored)])

    def remove_outbox(self, db: Connection, txid: str) -> None:
        """Drop a journal record once it is in the journal."""
        old = db.execute("SELECT txid, created, event, fields FROM outbox WHERE txid = ?", (txid,)).fetchone()
        if old is None:
            return
        db.execute("DELETE FROM outbox WHERE txid = ?", (txid,))
        self._roster(db, remove=[_outbox_entry(*old)])

    def seal_policy(self, db: Connection, text: str) -> None:
        """Store the sealed copy of the home's policy (``text``: canonical JSON)."""
        old = self.meta("policy_seal", db)
        seal = self._seal("policy", (text,))
        self.set_meta(db, "policy", text)
        self.set_meta(db, "policy_seal", seal)
        self._roster(db, add=[["policy", seal]], remove=[["policy", old]] if old is not None else [])

    # -- rows of other subsystems' tables (see xpscerpto.db.sealed_tables) ---------------------

    def row_seal(self, table: str, values: Sequence[Any]) -> str:
        """The seal of a row of ``table`` (another subsystem's, in this database) over ``values``,
        its columns in a fixed order (primary key first)."""
        return self._seal(f"row:{table}", tuple(values))

    def check_row(self, table: str, values: Sequence[Any], mac: object, *, what: str) -> None:
        """Raise :class:`KeyringTampered` naming ``what`` unless ``mac`` seals ``values``."""
        if self.sealer is None:
            raise InternalError("keyring: no integrity key attached; rows cannot be checked")
        self.sealer.check(f"row:{table}", tuple(values), mac, what=what)

    def roster_rows(self, db: Connection, *, add: Sequence[Sequence[Any]] = (),
                    remove: Sequence[Sequence[Any]] = ()) -> None:
        """Enter rows another subsystem wrote in ``db`` (a write) into the roster, and take out
        the ones it replaced; each entry is ``[table, *primary key, seal]``."""
        if not self.roster_on:
            raise InternalError("keyring: the roster is not kept yet; rows cannot enter it")
        self._roster(db, add=add, remove=remove)

    # -- the roster (see the module docstring) ------------------------------------------------

    def build_roster(self, db: Connection) -> None:
        """Compute the roster from every row and keep it from now on (inside a write)."""
        self._store_roster(db, self._roster_of_rows(db))
        self.roster_on = True

    def checked_rows(self, db: Connection) -> RosterCheck:
        """Refuse the database unless its rows add up to its sealed roster (inside a snapshot or
        a write, so no other writer's change is half-seen); returns what was checked: the stored
        roster and each key and version row's seal, by primary key (what later reads compare)."""
        stored = self._stored_roster(db)
        total, macs = 0, {}
        for entry in self._entries(db):
            total += self._tag(entry)
            if entry[0] in ("keys", "versions"):
                macs[tuple(entry[:-1])] = entry[-1]
        if not hmac.compare_digest(stored.to_bytes(32, "big"), (total % _MOD).to_bytes(32, "big")):
            raise KeyringTampered(f"keyring database {self.name!r}: its rows do not match its sealed roster (a row "
                                  "deleted or added, or an older copy of one put back); restore it from a backup")
        return RosterCheck(self.meta(_ROSTER, db), macs, time.monotonic())

    def roster_text(self, db: Connection) -> str | None:
        """The stored roster as written (compared, not checked: :meth:`checked_rows` checks it)."""
        return self.meta(_ROSTER, db)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction: every statement in it sees the database at one moment, and no
        writer waits for it (WAL)."""
        db = self._db()
        db.execute("BEGIN")  # deferred: the snapshot is taken at its first read
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def check_schema(self, db: Connection) -> None:
        """Refuse a database whose tables lost a primary key or uniqueness, or gained a trigger or
        a view: duplicate rows, or rows a trigger quietly puts back, would get past the seals."""
        if db.execute("SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchone()[0]:
            raise self._schema_edited("a trigger or view was added")
        for table, key in PRIMARY_KEYS.items():
            declared = sorted((int(pk), str(name)) for _, name, _, _, _, pk in db.execute(
                f"PRAGMA table_info({table})") if pk)
            if tuple(name for _, name in declared) != key:
                raise self._schema_edited(f"table {table} lost its primary key")
        unique = [row for row in db.execute("PRAGMA index_list(keys)") if row[2]]
        if not any([c[2] for c in db.execute(f"PRAGMA index_info({row[1]!r})")] == ["name"] for row in unique):
            raise self._schema_edited("key names are no longer unique")

    def _schema_edited(self, what: str) -> KeyringTampered:
        return KeyringTampered(f"keyring database {self.name!r}: its schema was edited ({what}); restore it from "
                               "a backup")

    def _roster(self, db: Connection, *, add: Sequence[Sequence[Any]] = (),
                remove: Sequence[Sequence[Any]] = ()) -> None:
        if not self.roster_on:
            return
        before = self.meta(_ROSTER, db)
        value = self._stored_roster(db)
        for entry in add:
            value += self._tag(entry)
        for entry in remove:
            value -= self._tag(entry)
        after = self._store_roster(db, value % _MOD)
        listener = self.roster_listener
        if listener is not None:
            listener(before, after, add, remove)

    def _tag(self, entry: Sequence[Any]) -> int:
        return int(self._seal("roster-entry", tuple(entry)), 16)

    def _roster_of_rows(self, db: Connection) -> int:
        return sum(self._tag(entry) for entry in self._entries(db)) % _MOD

    def _entries(self, db: Connection) -> Iterator[list[Any]]:
        for key_id, mac in db.execute("SELECT key_id, mac FROM keys"):
            yield ["keys", key_id, mac]
        for key_id, version, mac in db.execute("SELECT key_id, version, mac FROM versions"):
            yield ["versions", key_id, version, mac]
        for keyid, mac in db.execute("SELECT keyid, mac FROM operators"):
            yield ["operators", keyid, mac]
        for revoked, mac in db.execute("SELECT revoked_key, mac FROM rewrap_grants"):
            yield ["rewrap_grants", revoked, mac]
        for nonce, used in db.execute("SELECT nonce, used FROM approvals_used"):
            yield ["approvals_used", nonce, _number(used)]
        for row in db.execute("SELECT txid, created, event, fields FROM outbox"):
            yield _outbox_entry(*row)
        policy_seal = self.meta("policy_seal", db)
        if policy_seal is not None:
            yield ["policy", policy_seal]
        yield from self._other_entries(db)

    def _other_entries(self, db: Connection) -> Iterator[list[Any]]:
        """Roster entries of other subsystems' tables (the PostgreSQL store has some)."""
        return iter(())

    def _stored_roster(self, db: Connection) -> int:
        raw = self.meta(_ROSTER, db)
        value, _, seal = (raw or "").partition(":")
        if raw is None or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise KeyringTampered(f"keyring database {self.name!r}: its roster is missing or damaged (removed or "
                                  "edited?); restore it from a backup")
        assert self.sealer is not None  # the roster is on only with a sealer
        self.sealer.check("roster", [value], seal, what="the roster of its rows")
        return int(value, 16)

    def _store_roster(self, db: Connection, value: int) -> str:
        text = f"{value:064x}"
        stored = f"{text}:{self._seal('roster', (text,))}"
        self.set_meta(db, _ROSTER, stored)
        return stored

    def reseal(self, db: Connection, new: Sealer) -> None:
        """Check every sealed row under the attached sealer, seal it again under ``new`` and
        attach ``new`` (inside a write). A row that fails its current seal stops it: rows are
        never sealed afresh unchecked."""
        old = self.sealer
        if old is None:
            raise InternalError("keyring store: nothing to reseal without the current integrity key")
        keys = [self._key(r) for r in db.execute("SELECT * FROM keys")]
        versions = [self._version(r) for r in db.execute("SELECT * FROM versions")]
        operators = db.execute("SELECT keyid, public_key, label, added, mac FROM operators").fetchall()
        for keyid, pk, label, added, mac in operators:
            self._check("operator", (keyid, pk, label, added), mac, f"operator {_id(keyid)[:12]}")
        grants = [self.grant(r[0], db) for r in db.execute("SELECT revoked_key FROM rewrap_grants").fetchall()]
        queued = db.execute("SELECT txid, created, event, fields FROM outbox").fetchall()
        sealed_outbox = []
        for row in self.outbox(db):  # checks each sealed record (unsealed ones stay unsealed)
            if not row.fields.get("unsealed"):
                sealed_outbox.append(row)
        policy, policy_seal = self.meta("policy", db), self.meta("policy_seal", db)
        if policy is not None:
            old.check("policy", [policy], policy_seal, what="the sealed copy of the home's policy")
        for k in keys:
            db.execute("UPDATE keys SET mac = ? WHERE key_id = ?", (new.seal("key", k.sealed_fields()), k.key_id))
        for v in versions:
            db.execute("UPDATE versions SET mac = ? WHERE key_id = ? AND version = ?",
                       (new.seal("version", v.sealed_fields()), v.key_id, v.version))
        for keyid, pk, label, added, _ in operators:
            db.execute("UPDATE operators SET mac = ? WHERE keyid = ?",
                       (new.seal("operator", (keyid, pk, label, added)), keyid))
        for g in grants:
            if g is not None:
                db.execute("UPDATE rewrap_grants SET mac = ? WHERE revoked_key = ?",
                           (new.seal("grant", g.sealed_fields()), g.revoked_key))
        created = {t: c for t, c, _, _ in queued}
        for row in sealed_outbox:
            text = json.dumps(row.fields, sort_keys=True)
            seal = new.seal("outbox", [row.txid, float(created[row.txid]), row.event, text])
            db.execute("UPDATE outbox SET fields = ? WHERE txid = ?",
                       (json.dumps({**row.fields, _OUTBOX_SEAL: seal}, sort_keys=True), row.txid))
        if policy is not None:
            self.set_meta(db, "policy_seal", new.seal("policy", (policy,)))
        self.sealer = new

    def seal_all(self, db: Connection) -> int:
        """Seal every unsealed row (once, after an upgrade from schema 1); returns how many."""
        n = 0
        for row in [self._key(r, check=False) for r in db.execute("SELECT * FROM keys WHERE mac IS NULL")]:
            db.execute("UPDATE keys SET mac = ? WHERE key_id = ?", (self._seal("key", row.sealed_fields()),
                                                                    row.key_id))
            n += 1
        for ver in [self._version(r, check=False) for r in db.execute("SELECT * FROM versions WHERE mac IS NULL")]:
            db.execute("UPDATE versions SET mac = ? WHERE key_id = ? AND version = ?",
                       (self._seal("version", ver.sealed_fields()), ver.key_id, ver.version))
            n += 1
        return n

    # -- internals --------------------------------------------------------------------------

    def _seal(self, kind: str, values: tuple[Any, ...]) -> str:
        if self.sealer is None:
            raise InternalError("keyring: no integrity key attached; rows cannot be sealed")
        return self.sealer.seal(kind, values)

    def _check(self, kind: str, values: tuple[Any, ...], mac: str | None, what: str) -> None:
        if self.sealer is not None:
            self.sealer.check(kind, values, mac, what=what)

    def _key(self, r: tuple[Any, ...], check: bool = True) -> KeyRow:
        row = KeyRow(r[0], r[1], r[2], r[3], r[4], r[5], _state(KeyState, r[6]), r[7], r[8], r[9], r[10])
        if check:
            self._check("key", row.sealed_fields(), row.mac, f"key {_id(row.key_id)}")
        return row

    def _version(self, r: tuple[Any, ...], check: bool = True) -> VersionRow:
        row = VersionRow(r[0], r[1], _state(VersionState, r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                         r[11], r[12], r[13])
        if check:
            self._check("version", row.sealed_fields(), row.mac, f"key {_id(row.key_id)} version {_id(row.version)}")
        # The usage counters are not sealed (they only inform): damage to them is refused here,
        # typed, rather than failing later in arithmetic.
        if type(row.decryptions) is not int or row.decryptions < 0 or not (
                row.last_used is None or type(row.last_used) in (int, float)):
            raise PolicyError(f"keyring database {self.name!r}: the usage counters of key {_id(row.key_id)} are "
                              "damaged; restore it from a backup")
        return row


def _state(kind: Any, value: object) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise PolicyError("keyring: a row has an unknown state (edited outside xps?); restore the database from a "
                          "backup", reason="seal") from None


def _id(value: object) -> str:
    """An id read from the database, for a message: shown only if it looks like one."""
    text = str(value)
    return text if len(text) <= 32 and text.isascii() and text.isalnum() else "(damaged id)"


def _one_row(cursor: Any, where: str) -> None:
    # A second row under one primary key would take the update too: the schema was edited.
    if cursor.rowcount != 1:
        raise KeyringTampered(f"keyring database {where!r}: an update changed {cursor.rowcount} rows, not one "
                              "(edited outside xps?); restore it from a backup")


@dataclass(frozen=True)
class RosterCheck:
    """A roster check that passed: the roster text then, and the seal of each key and version
    row by primary key (``("keys", key_id)``, ``("versions", key_id, version)``)."""

    roster: str | None
    macs: Mapping[tuple[Any, ...], str | None]
    #: ``time.monotonic()`` when it passed (a full check is redone after a while regardless).
    at: float = 0.0

    def carried(self, before: str | None, after: str, add: Sequence[Sequence[Any]],
                remove: Sequence[Sequence[Any]]) -> RosterCheck | None:
        """This check moved past one of this process's own roster updates, or None if the
        roster had changed since the check (``before`` differs): then only a full check will do.

        The rows it adds and removes are the writer's own, so they need no re-reading. If the
        write rolls back, the roster read next differs from ``after`` and a full check follows.
        """
        if before != self.roster:
            return None
        macs = dict(self.macs)
        for entry in remove:
            if entry[0] in ("keys", "versions"):
                macs.pop(tuple(entry[:-1]), None)
        for entry in add:
            if entry[0] in ("keys", "versions"):
                macs[tuple(entry[:-1])] = entry[-1]
        return RosterCheck(after, macs, self.at)  # its age stands: the periodic full check still runs

    def unchanged(self, roster: str | None, rows: Sequence[KeyRow | VersionRow | None]) -> bool:
        """Whether ``roster`` and every row read are exactly as this check saw them."""
        if roster != self.roster:
            return False
        for row in rows:
            if row is not None:
                entry = _key_entry(row) if isinstance(row, KeyRow) else _version_entry(row)
                key = tuple(entry[:-1])
                if key not in self.macs or self.macs[key] != entry[-1]:
                    return False
        return True


def _key_entry(row: KeyRow) -> list[Any]:
    return ["keys", row.key_id, row.mac]


def _version_entry(row: VersionRow) -> list[Any]:
    return ["versions", row.key_id, row.version, row.mac]


def _outbox_entry(txid: object, created: object, event: object, stored: object) -> list[Any]:
    # The stored text by digest: a queued record's content is covered without repeating it.
    text = stored if isinstance(stored, str) else repr(stored)
    return ["outbox", txid, _number(created), event, hashlib.sha256(text.encode()).hexdigest()]


def _number(value: object) -> object:
    # A REAL column reads back 5 written as 5.0: the tag must not depend on which was written.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _columns(row: Any) -> tuple[Any, ...]:
    return tuple(str(v) if isinstance(v, KeyState | VersionState) else v for v in astuple(row))
