"""Versioned schema migrations for the PostgreSQL store (run by ``xps db migrate``).

Each migration is applied once, in order, with its row in ``xps_migrations``; a run applies
every pending step in one transaction (PostgreSQL's DDL is transactional: a failure leaves the
schema as it was) under an advisory lock, so two nodes migrating at once apply each step once.
Nothing else creates tables: a store that finds its schema behind refuses to open and names
the command.

Example:
    >>> from xpscerpto.db import Database, migrate           # doctest: +SKIP
    >>> migrate(Database("postgresql://localhost/xps"))        # doctest: +SKIP
    [1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass

from xpscerpto.errors import PolicyError

from .postgres import Database

__all__ = ["MIGRATIONS", "Migration", "applied", "head", "migrate", "open_migrated", "require"]

#: The advisory lock ``migrate`` holds (any 64-bit number no other lock here uses).
MIGRATE_LOCK = 0x7870_7300_0000_0001


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keyring tables (as SQLite schema 2)", (
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
        """CREATE TABLE keys (
            key_id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, algorithm TEXT NOT NULL, policy TEXT NOT NULL,
            rotate_every DOUBLE PRECISION, max_encryptions BIGINT NOT NULL, state TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, revoke_reason TEXT, mac TEXT)""",
        """CREATE TABLE versions (
            key_id TEXT NOT NULL REFERENCES keys(key_id), version BIGINT NOT NULL, state TEXT NOT NULL,
            kek_id TEXT, wrapped BYTEA, created DOUBLE PRECISION NOT NULL, retired_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION, destroyed_at DOUBLE PRECISION, encryptions BIGINT NOT NULL DEFAULT 0,
            decryptions BIGINT NOT NULL DEFAULT 0, last_used DOUBLE PRECISION, algorithm TEXT, mac TEXT,
            PRIMARY KEY (key_id, version))""",
        "CREATE TABLE approvals_used (nonce TEXT PRIMARY KEY, used DOUBLE PRECISION NOT NULL)",
        """CREATE TABLE operators (keyid TEXT PRIMARY KEY, public_key TEXT NOT NULL, label TEXT NOT NULL,
            added DOUBLE PRECISION NOT NULL, mac TEXT)""",
        """CREATE TABLE outbox (txid TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, event TEXT NOT NULL,
            fields TEXT NOT NULL)""",
        """CREATE TABLE rewrap_grants (revoked_key TEXT PRIMARY KEY, successor TEXT NOT NULL,
            expires DOUBLE PRECISION NOT NULL, approvers TEXT NOT NULL, mac TEXT)""",
        "INSERT INTO meta VALUES ('schema', '2')",
    )),
    Migration(2, "orchestrator: leader lease, plans, runs", (
        # Lease times are the database's clock (clock_timestamp()): nodes' clocks never decide.
        """CREATE TABLE xps_lease (name TEXT PRIMARY KEY, holder TEXT, token BIGINT NOT NULL DEFAULT 0,
            expires TIMESTAMPTZ NOT NULL DEFAULT '-infinity')""",
        """CREATE TABLE xps_orch_plans (plan TEXT PRIMARY KEY, key_name TEXT NOT NULL, policy TEXT NOT NULL,
            grace_seconds DOUBLE PRECISION NOT NULL, suite TEXT, kek TEXT NOT NULL,
            anchor TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), paused BOOLEAN NOT NULL DEFAULT false)""",
        # One row per (plan, due time): the claim that makes a tick idempotent across nodes.
        """CREATE TABLE xps_orch_runs (plan TEXT NOT NULL REFERENCES xps_orch_plans(plan), due TIMESTAMPTZ NOT NULL,
            token BIGINT NOT NULL, holder TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            result TEXT NOT NULL, PRIMARY KEY (plan, due))""",
    )),
    Migration(3, "audit journal shared by the nodes", (
        # The file journal's canonical lines, one per seq; time copied out for record_once's window.
        "CREATE TABLE xps_audit (seq BIGINT PRIMARY KEY, time TEXT NOT NULL, line TEXT NOT NULL)",
    )),
    Migration(4, "capsule announcements between nodes", (
        # The capsule bytes as published (each node verifies them itself before enabling).
        """CREATE TABLE xps_capsules (sha256 TEXT PRIMARY KEY, raw BYTEA NOT NULL, name TEXT NOT NULL,
            version TEXT NOT NULL, node TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
        """CREATE TABLE xps_capsule_events (id BIGSERIAL PRIMARY KEY,
            action TEXT NOT NULL CHECK (action IN ('enable', 'rollback')), sha256 TEXT NOT NULL,
            name TEXT NOT NULL, version TEXT NOT NULL, node TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    )),
    Migration(5, "orchestrator: post-rotation hygiene and suite migrations", (
        """CREATE TABLE xps_orch_archived (key_id TEXT NOT NULL, version BIGINT NOT NULL, token BIGINT NOT NULL,
            holder TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (key_id, version))""",
        """CREATE TABLE xps_suite_migrations (name TEXT PRIMARY KEY, keys TEXT NOT NULL, target TEXT NOT NULL,
            canary DOUBLE PRECISION NOT NULL, watch_seconds DOUBLE PRECISION NOT NULL,
            max_failure_rate DOUBLE PRECISION NOT NULL, phase TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    )),
    Migration(6, "fleet counters, post-quantum channel rollouts, emergency grace", (
        # Each process's cumulative counters (one row per series), so a canary decision sees every
        # node's numbers; a process keeps its own rows (instance = node#random), so a restart
        # starts new rows instead of lowering old ones.
        """CREATE TABLE xps_counters (instance TEXT NOT NULL, node TEXT NOT NULL, name TEXT NOT NULL,
            labels TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
            updated TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (instance, name, labels))""",
        """CREATE TABLE xps_pq_rollouts (name TEXT PRIMARY KEY, nodes TEXT NOT NULL, protocol TEXT NOT NULL,
            canary DOUBLE PRECISION NOT NULL, watch_seconds DOUBLE PRECISION NOT NULL,
            max_failure_rate DOUBLE PRECISION NOT NULL, phase TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
        # The short grace an emergency rotation gave the version it retired (hygiene reads it).
        """CREATE TABLE xps_orch_emergency (key_id TEXT NOT NULL, version BIGINT NOT NULL,
            grace_seconds DOUBLE PRECISION NOT NULL, token BIGINT NOT NULL, holder TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (key_id, version))""",
    )),
    Migration(7, "routing state per node", (
        # The state.json document of each node (each node verifies and enables capsules itself).
        """CREATE TABLE xps_capsule_state (node TEXT PRIMARY KEY, doc TEXT NOT NULL,
            updated TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    )),
    Migration(8, "seals on the orchestration tables", tuple(
        # Each row's HMAC under the keyring's integrity key (db/sealed_tables.py); NULL until the
        # first orchestrator or PQ posture with the keyring seals the rows written before.
        f"ALTER TABLE {table} ADD COLUMN mac TEXT" for table in (
            "xps_orch_plans", "xps_orch_runs", "xps_orch_emergency", "xps_orch_archived", "xps_suite_migrations",
            "xps_pq_rollouts"))),
    Migration(9, "signed capsule rollback announcements", (
        # The announcing node's journal key and its Ed25519 signature over the event
        # (db/capsule_announce.py): a database writer could roll every node back otherwise.
        "ALTER TABLE xps_capsule_events ADD COLUMN signer TEXT, ADD COLUMN sig TEXT",
    )),
    Migration(10, "capsule rollbacks name the version restored; announcing nodes", (
        # `xps rollback --to VERSION`: the version the operator chose, signed with the rest;
        # NULL for a plain rollback (each node restores what the capsule replaced there).
        "ALTER TABLE xps_capsule_events ADD COLUMN restore_to TEXT",
        # Each node name that follows the events: a home without home.json cannot record its
        # cursor file, so a deleted one would restart from the first event (db/capsule_announce.py).
        """CREATE TABLE xps_announce_nodes (node TEXT PRIMARY KEY,
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    )),
    Migration(11, "the home that claimed each announcing node name", (
        # A random id of the home (its announce.json keeps it too): two homes started under one
        # node name each skipped the other's events as their own, silently. NULL: claimed by an
        # earlier release; the first home to start under the name since claims it.
        "ALTER TABLE xps_announce_nodes ADD COLUMN home TEXT",
    )),
)


def head() -> int:
    """The newest migration this xpscerpto knows."""
    return MIGRATIONS[-1].version


def applied(db: Database) -> int:
    """The newest migration applied to ``db`` (0: none)."""
    exists = db.execute("SELECT to_regclass('xps_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = db.execute("SELECT coalesce(max(version), 0) FROM xps_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(db: Database) -> list[int]:
    """Apply every pending migration; returns the versions applied now (empty: up to date).

    Raises:
        PolicyError: the database is at a newer schema than this xpscerpto knows.
        InternalError: the database failed (the step in progress rolled back).
    """
    done: list[int] = []
    with db.transaction(lock=MIGRATE_LOCK) as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS xps_migrations (version INTEGER PRIMARY KEY, "
                   "description TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
        row = tx.execute("SELECT coalesce(max(version), 0) FROM xps_migrations").fetchone()
        current = int(row[0]) if row else 0
        if current > head():
            raise PolicyError(f"database {db.name}: schema migration {current}, this xpscerpto knows up to "
                              f"{head()}; upgrade xpscerpto")
        for m in MIGRATIONS:
            if m.version > current:
                for statement in m.statements:
                    tx.execute(statement)
                tx.execute("INSERT INTO xps_migrations (version, description) VALUES (?, ?)",
                           (m.version, m.description))
                done.append(m.version)
    return done


def require(db: Database, version: int, what: str) -> None:
    """Refuse to use ``db`` for ``what`` unless migration ``version`` is applied.

    Raises:
        PolicyError: behind (names ``xps db migrate``) or ahead of this xpscerpto.
    """
    current = applied(db)
    if current < version:
        raise PolicyError(f"{what} {db.name}: schema migration {current}, needs {version}; run "
                          f"`xps db migrate --database {db.name}`")
    if current > head():
        raise PolicyError(f"{what} {db.name}: schema migration {current}, this xpscerpto knows up to {head()}")


def open_migrated(dsn: str, version: int, what: str) -> Database:
    """Connect to ``dsn`` and :func:`require` migration ``version`` (closing again if refused)."""
    db = Database(dsn)
    try:
        require(db, version, what)
    except BaseException:
        db.close()
        raise
    return db
