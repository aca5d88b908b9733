"""Connections to one PostgreSQL database: DSN checks, a pool, typed errors, LISTEN.

psycopg 3 and psycopg_pool are an optional extra (``pip install 'xpscerpto[postgresql]'``);
nothing here imports them until a database is opened. Every failure of the server or the
network surfaces as an :class:`~xpscerpto.errors.InternalError` naming the database (never the
password, which a DSN here may not hold at all: use ``PGPASSWORD`` or ``~/.pgpass``), and the
connection it happened on is discarded by the pool, so the next call reconnects.

SQL written for the keyring store uses SQLite's ``?`` markers; :class:`Session` rewrites them
to psycopg's ``%s`` (the statements hold no ``%`` or ``?`` of their own).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xpscerpto.errors import InternalError, PolicyError, XpsError

__all__ = ["SCHEME", "Database", "Result", "Session", "check_dsn", "is_dsn"]

SCHEME = "postgresql://"
#: Seconds a session may sit idle inside a transaction before the server ends it (and rolls it
#: back). A process paused or cut off mid-transaction otherwise holds its locks — the keyring's
#: advisory lock, the lease row a fenced write holds — and stalls every node's writes until it
#: comes back (found by a review: a SIGSTOPped leader stopped the fleet's writes for good).
IDLE_IN_TRANSACTION_SECONDS = 30.0
_FORBIDDEN = ("password", "passfile")


def is_dsn(value: object) -> bool:
    """True if ``value`` names a PostgreSQL database (``postgresql://…``)."""
    return isinstance(value, str) and value.startswith(SCHEME)


def check_dsn(value: object, field: str = "keyring.database") -> str:
    """Return ``value`` if it is a usable DSN without a secret in it.

    Raises:
        PolicyError: not a ``postgresql://`` URL, unparsable, or it carries a password
            (configuration and the home's record are not secret stores).

    Example:
        >>> check_dsn("postgresql://xps@db.internal:5432/keys")
        'postgresql://xps@db.internal:5432/keys'
    """
    if not is_dsn(value):
        raise PolicyError(f"{field!r}: expected a postgresql:// URL")
    assert isinstance(value, str)
    if "\x00" in value or len(value) > 1024:
        raise PolicyError(f"{field!r}: not a usable postgresql:// URL (NUL byte or over 1024 characters)")
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(value)
        query = parse_qs(parts.query, keep_blank_values=True)
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise PolicyError(f"{field!r}: not a parsable postgresql:// URL") from None
    if parts.password is not None or any(k in query for k in _FORBIDDEN):
        raise PolicyError(f"{field!r}: a password in the URL is refused; give it in PGPASSWORD or ~/.pgpass")
    if not parts.path.strip("/"):
        raise PolicyError(f"{field!r}: the URL names no database (postgresql://HOST/DATABASE)")
    return value


def _shown(dsn: str) -> str:
    """The DSN for messages: scheme, host and database (no user, no query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return f"{SCHEME}{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True, slots=True)
class Result:
    """The rows and row count of one statement (fetched at once: no cursor outlives its session)."""

    rows: Sequence[tuple[Any, ...]]
    rowcount: int

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row."""
        return list(self.rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Session:
    """One connection inside one transaction; ``execute`` as on a ``sqlite3.Connection``."""

    def __init__(self, conn: Any, database: Database) -> None:
        self._conn = conn
        self._database = database

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Result:
        """Run one statement (``?`` markers) and fetch its rows."""
        with self._database.errors():
            cur = self._conn.execute(sql.replace("?", "%s"), tuple(parameters))
            rows = cur.fetchall() if cur.description is not None else []
            return Result(rows, cur.rowcount)


class Database:
    """A pool of connections to one PostgreSQL database.

    Args:
        dsn: ``postgresql://[USER@]HOST[:PORT]/DATABASE[?host=/socket/dir]`` (no password).
        max_size: most connections this process holds.
        timeout: seconds to wait for a connection (the server down: an InternalError after it).
        idle_in_transaction: seconds a transaction may wait between statements before the
            server ends it, releasing its locks (see :data:`IDLE_IN_TRANSACTION_SECONDS`).

    Example:
        >>> db = Database("postgresql://localhost/xps")          # doctest: +SKIP
        >>> with db.transaction() as tx:                          # doctest: +SKIP
        ...     tx.execute("SELECT 1").fetchone()
        (1,)
    """

    def __init__(self, dsn: str, *, max_size: int = 8, timeout: float = 5.0,
                 idle_in_transaction: float = IDLE_IN_TRANSACTION_SECONDS) -> None:
        self.dsn = check_dsn(dsn)
        if isinstance(idle_in_transaction, bool) or not isinstance(idle_in_transaction, int | float) \
                or not 0.001 <= idle_in_transaction <= 86400:
            raise PolicyError("idle_in_transaction: expected seconds between 0.001 and 86400")
        self.name = _shown(dsn)
        self.timeout = timeout
        try:
            import psycopg
        except ImportError:
            raise PolicyError(f"database {self.name}: PostgreSQL support is not installed "
                              "(pip install 'xpscerpto[postgresql]')") from None
        self._psycopg = psycopg
        self._pool_errors: tuple[type[BaseException], ...] = (psycopg.Error, _PoolTimeout)
        self._pool = _Pool(self.dsn, max_size=max_size, timeout=timeout,
                           idle_in_transaction_ms=max(1, round(idle_in_transaction * 1000)))
        self._listeners: list[_Listener] = []

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn driver and pool failures into InternalError naming this database."""
        try:
            yield
        except self._pool_errors as exc:
            detail = type(exc).__name__
            sqlstate = getattr(exc, "sqlstate", None)
            raise InternalError(f"database {self.name}: {detail}{f' ({sqlstate})' if sqlstate else ''}; "
                                "the change did not happen — retry when the database is back",
                                reason="database") from None

    @contextlib.contextmanager
    def transaction(self, lock: int | None = None) -> Iterator[Session]:
        """One transaction; with ``lock``, holding that advisory lock until it ends.

        Raises:
            InternalError: the database is unreachable or failed (nothing was committed).
        """
        with self.errors(), self._pool.connection() as conn, conn.transaction():
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield Session(conn, self)

    @contextlib.contextmanager
    def session_lock(self, key: int) -> Iterator[None]:
        """Hold advisory lock ``key`` on a connection of its own until the block ends.

        For a read-modify-write that spans several statements and slow work in between (the
        updater validating a capsule). A process that dies loses its connection, and the
        server releases the lock with it.

        Raises:
            InternalError: the database is unreachable (the lock was not taken).
        """
        with self.errors(), self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except Exception:  # a broken connection: closing it releases the lock
                    conn.close()

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Result:
        """One statement in its own transaction (``?`` markers)."""
        with self.errors(), self._pool.connection() as conn:
            return Session(conn, self).execute(sql, parameters)

    def listen(self, channel: str, callback: Callable[[str], None], *, on_reconnect: Callable[[], None] | None = None,
               ) -> None:
        """Call ``callback(payload)`` for each NOTIFY on ``channel``, from a daemon thread.

        The listener reconnects after a failure and then calls ``on_reconnect`` (notifications
        sent meanwhile are lost: callers re-read what they cache).
        """
        listener = _Listener(self, channel, callback, on_reconnect)
        self._listeners.append(listener)
        listener.start()

    def close(self) -> None:
        """Stop listeners and close every pooled connection."""
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        with contextlib.suppress(Exception):
            self._pool.close()


class _PoolTimeout(Exception):
    """Every connection of the pool stayed busy for ``timeout`` seconds."""


class _Pool:
    """Idle connections kept for reuse, at most ``max_size`` in use; connects on demand.

    Not psycopg_pool: its background reconnection backs off exponentially during an outage,
    so service came back only minutes after the database did. Here a request connects itself
    (bounded by ``connect_timeout``): the first call after the database returns succeeds.
    """

    def __init__(self, dsn: str, *, max_size: int, timeout: float, idle_in_transaction_ms: int) -> None:
        self._dsn = dsn
        self._idle_ms = idle_in_transaction_ms
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._timeout = timeout
        self._closed = False

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=max(1, round(self._timeout)))
        try:
            conn.execute(f"SET idle_in_transaction_session_timeout = {int(self._idle_ms)}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._timeout):
            raise _PoolTimeout
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._connect()
            try:
                yield conn
            except XpsError:  # refused by our own code (the transaction rolled back): reusable
                self._release(conn)
                raise
            except BaseException:
                conn.close()  # a failed connection is not reused
                raise
            self._release(conn)
        finally:
            self._slots.release()

    def _release(self, conn: Any) -> None:
        if self._closed or conn.closed or conn.info.transaction_status != 0:  # 0: idle, not in a transaction
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Listener(threading.Thread):
    """A dedicated connection that LISTENs; not from the pool (it never goes back)."""

    def __init__(self, database: Database, channel: str, callback: Callable[[str], None],
                 on_reconnect: Callable[[], None] | None) -> None:
        super().__init__(name=f"xps-listen-{channel}", daemon=True)
        if not channel.isidentifier():
            raise PolicyError("channel: expected an identifier")
        self._database = database
        self._channel = channel
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._stopped = threading.Event()
        self.ready = threading.Event()
        self._conn: Any = None

    def run(self) -> None:
        psycopg = self._database._psycopg
        first = True
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._database.dsn, autocommit=True,
                                     connect_timeout=max(1, round(self._database.timeout))) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {self._channel}")
                    if not first and self._on_reconnect is not None:
                        self._on_reconnect()
                    first = False
                    self.ready.set()
                    while not self._stopped.is_set():
                        for note in conn.notifies(timeout=0.5):
                            with contextlib.suppress(Exception):
                                self._callback(note.payload)
            except Exception:
                self.ready.clear()
                self._stopped.wait(0.5)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=3)
