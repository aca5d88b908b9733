"""The orchestration tables' rows, sealed and counted in the keyring's roster.

What the fleet does to its keys and channels is decided by rows in the shared database: plans
(which suite, how often, what grace), run records (a due time already rotated), emergency
graces, archive records, suite migrations and post-quantum rollouts (which phase, since when).
Someone who can write the database but holds no node's KEK must not steer those decisions —
downgrade a plan's suite, record a run that never happened so a rotation is skipped, move a
rollout back to ``canary`` or mark it ``aborted`` so the nodes fall back to classic channels.

So each row carries a seal (HMAC under the keyring's integrity key, over every column in a fixed
order: :meth:`~xpscerpto.keyring.store.Store.row_seal`) and enters the keyring's *roster* in the
transaction that writes it. A row edited is refused when read (naming the table and the row);
a row deleted, added, or put back from an older copy makes the roster fail to add up. Seals
alone cannot see that, so whoever acts on these rows reads them in a snapshot a :class:`Guard`
has checked (the whole roster, whenever the roster or these rows changed since its last check),
and every :func:`put` checks the roster and the tables' schema inside its own write. All writers
hold the keyring's write lock, so the roster's read-modify-write stays serialised.

The ``sealed_tables`` mark (itself a roster entry, so removing it is noticed, never taken for a
database that still needs adopting) says every row is sealed. A keyring database this release
creates gets it in its creating transaction (:func:`mark_new`), so no row unsealed ever passes
there. A database migrated to schema 8 holds the earlier release's rows unsealed: :func:`adopt`
seals them once, in one write with the mark, journaled by the caller — only when an operator
asks for it (``xps orch adopt``): rows a database writer inserted are indistinguishable from the
earlier release's, so a program starting up marks such a database only while it holds none.

Example:
    >>> with ring.store.write() as db:                                       # doctest: +SKIP
    ...     put(ring.store, db, ROLLOUTS, {**row, "phase": "committed", "since": now(db)})
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from xpscerpto._config_fields import show
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.keyring.integrity import KeyringTampered
from xpscerpto.keyring.store import Connection, Store

__all__ = ["ARCHIVED", "EMERGENCY", "MARK", "MIGRATIONS", "PLANS", "ROLLOUTS", "RUNS", "TABLES", "Guard",
           "RowTampered", "RowsChanged", "Table", "UnsealedRows", "adopt", "fingerprint", "mark_new", "now", "put",
           "read", "read_each", "review", "roster_entries"]

#: The meta key set once every orchestration row is sealed (see :func:`adopt`).
MARK = "sealed_tables"


class RowTampered(PolicyError):
    """An orchestration row fails its seal: edited, or written by someone without the key."""

    reason = "seal"


class UnsealedRows(PolicyError):
    """Orchestration rows no keyring sealed, where sealing them needs an operator's decision."""

    reason = "unsealed"


class RowsChanged(PolicyError):
    """The rows to adopt are not the ones the operator reviewed (``--expect`` does not match)."""

    reason = "changed"


@dataclass(frozen=True, slots=True)
class Table:
    """One sealed table: its primary key, the other columns, and how values are normalised
    (a DOUBLE column reads back 5 written as 5.0; a timestamp's text depends on the session's
    time zone, so it is sealed as whole microseconds since the epoch)."""

    name: str
    key: tuple[str, ...]
    fields: tuple[str, ...]
    floats: frozenset[str] = field(default_factory=frozenset)
    times: frozenset[str] = field(default_factory=frozenset)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every sealed column: the primary key first."""
        return self.key + self.fields


PLANS = Table("xps_orch_plans", ("plan",), ("key_name", "policy", "grace_seconds", "suite", "kek", "anchor", "paused"),
              frozenset({"grace_seconds"}), frozenset({"anchor"}))
RUNS = Table("xps_orch_runs", ("plan", "due"), ("token", "holder", "at", "result"), times=frozenset({"due", "at"}))
EMERGENCY = Table("xps_orch_emergency", ("key_id", "version"), ("grace_seconds", "token", "holder", "at"),
                  frozenset({"grace_seconds"}), frozenset({"at"}))
ARCHIVED = Table("xps_orch_archived", ("key_id", "version"), ("token", "holder", "at"), times=frozenset({"at"}))
_PHASED = ("canary", "watch_seconds", "max_failure_rate", "phase", "detail", "since")
MIGRATIONS = Table("xps_suite_migrations", ("name",), ("keys", "target", *_PHASED),
                   frozenset({"canary", "watch_seconds", "max_failure_rate"}), frozenset({"since"}))
ROLLOUTS = Table("xps_pq_rollouts", ("name",), ("nodes", "protocol", *_PHASED),
                 frozenset({"canary", "watch_seconds", "max_failure_rate"}), frozenset({"since"}))
TABLES = (PLANS, RUNS, EMERGENCY, ARCHIVED, MIGRATIONS, ROLLOUTS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


class Guard:
    """Checks that the orchestration rows a reader is about to act on add up to the roster.

    Per-row seals refuse an edited row, not a deleted one or an older genuine copy put back (a
    plan's earlier suite, a migration's phase before its abort). :meth:`check` runs the
    keyring's full roster check, in the reader's snapshot, unless the roster text and every
    orchestration row's primary key and seal are exactly what the last check that passed saw:
    a legitimate write changes the roster, so rows that changed while it did not were put there
    by someone else — and that is the case the full check then refuses.

    Not thread-safe on its own: one per reader (an orchestrator, a posture follower).
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: tuple[Any, ...] | None = None

    def check(self, store: Store, db: Connection) -> None:
        """Refuse the rows of ``db`` (a snapshot) unless they add up to its roster.

        Raises:
            KeyringTampered: they do not, or an orchestration table's schema was edited.
        """
        # The rows are compared by a digest the database computes: per table, the count and a
        # sum of 60-bit hashes of the seals. A seal binds its row, so a row deleted, added or
        # put back from an older copy changes it; an edit that keeps the seal is refused by the
        # seal when the row is read. (Reading every run record into Python each time cost 54 ms
        # per 10,000 of them, several times per tick.)
        seen = (store.roster_text(db), store.meta(MARK, db), tuple(db.execute(_DIGEST).fetchall()))
        if seen != self._seen:
            _check_all(store, db)
            self._seen = seen


_DIGEST = " UNION ALL ".join(
    f"SELECT '{t.name}', count(*), coalesce(sum(('x' || substr(md5(coalesce(mac, '-')), 1, 15))::bit(60)::bigint), "  # noqa: S608
    f"0) FROM {t.name}" for t in TABLES)


def now(db: Connection) -> datetime:
    """The database's clock (what ``anchor``, ``at`` and ``since`` hold)."""
    value: datetime = db.execute("SELECT clock_timestamp()").fetchone()[0]
    return value


def read(store: Store, db: Connection, table: Table, where: str = "",
         params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of ``table`` (``WHERE where``), each checked against its seal.

    Raises:
        RowTampered: a row fails its seal (names the table and the row).
    """
    out = []
    for row, error in read_each(store, db, table, where, params):
        if error is not None:
            raise error
        out.append(row)
    return out


def read_each(store: Store, db: Connection, table: Table, where: str = "",
              params: Sequence[Any] = ()) -> list[tuple[dict[str, Any], XpsError | None]]:
    """Every row of ``table`` (``WHERE where``) with the refusal of its seal, or None: for
    callers that go on past one damaged row (and name it afterwards)."""
    sql = f"SELECT {', '.join(table.columns)}, mac FROM {table.name}"  # noqa: S608 - names are constants
    rows = db.execute(f"{sql} WHERE {where}" if where else sql, tuple(params)).fetchall()
    out: list[tuple[dict[str, Any], XpsError | None]] = []
    for r in rows:
        row = dict(zip(table.columns, r[:-1], strict=True))
        out.append((row, _refusal(store, table, row, r[-1])))
    return out


def put(store: Store, db: Connection, table: Table, row: Mapping[str, Any], *,
        only_if: tuple[str, Sequence[Any]] | None = None, replace: bool = True) -> bool:
    """Write ``row`` (every column of ``table``) sealed, inside the keyring write ``db``.

    Args:
        only_if: a condition and its parameters, checked in the writing statement (the
            orchestrator's lease fence: a leader whose lease lapsed writes nothing).
        replace: overwrite a row with the same primary key (its seal is checked first: a
            tampered row is never laundered by an overwrite), or leave it and return False.

    Returns whether the row was written; the roster changes only if it was.

    Raises:
        RowTampered: the row it would replace fails its seal.
        KeyringTampered: the rows no longer add up to the roster, an orchestration table's
            schema was edited (a trigger, a rule), or the write silently did not happen.
    """
    # Checked inside the write (the keyring's lock is held): what this write builds on —
    # the row it replaces, the phase a caller just read — is what the roster vouches for.
    _check_all(store, db)
    key = tuple(row[c] for c in table.key)
    where = " AND ".join(f"{c} = ?" for c in table.key)
    cols = ", ".join(table.columns)
    old = db.execute(f"SELECT {cols}, mac FROM {table.name} WHERE {where} FOR UPDATE",  # noqa: S608 - constants
                     key).fetchone()
    if old is not None:
        if not replace:
            return False
        previous = dict(zip(table.columns, old[:-1], strict=True))
        error = _refusal(store, table, previous, old[-1])
        if error is not None:
            raise error
    values = [row[c] for c in table.columns]
    mac = store.row_seal(table.name, _normal(table, row))
    conflict = (f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in (*table.fields, 'mac'))}" if replace
                else "DO NOTHING")
    written = bool(db.execute(
        f"INSERT INTO {table.name} ({cols}, mac) SELECT {', '.join('?' * (len(values) + 1))} "
        f"WHERE {only_if[0] if only_if else 'true'} ON CONFLICT ({', '.join(table.key)}) {conflict}",
        (*values, mac, *(only_if[1] if only_if else ()))).rowcount == 1)
    if written:
        store.roster_rows(db, add=[_entry(table, row, mac)],
                          remove=[_entry(table, previous, old[-1])] if old is not None else [])
    elif only_if is None or db.execute(f"SELECT 1 WHERE {only_if[0]}", tuple(only_if[1])).fetchone() is not None:
        # Nothing conflicted (the row was read under the lock) and no condition failed: the
        # statement was swallowed — a trigger or rule added outside xps (found by a review).
        raise KeyringTampered(f"keyring database {store.name!r}: a write to {table.name} did not take effect "
                              "(a trigger or rule added?); restore it from a backup")
    return written


def roster_entries(store: Store, db: Connection) -> Iterator[list[Any]]:
    """The roster entries of every sealed row (none before :func:`adopt`)."""
    if store.meta(MARK, db) is None:
        return
    yield [MARK]
    for table in TABLES:
        for r in db.execute(f"SELECT {', '.join(table.columns)}, mac FROM {table.name}"):  # noqa: S608 - constants
            yield _entry(table, dict(zip(table.columns, r[:-1], strict=True)), r[-1])


def review(store: Store, db: Connection) -> tuple[list[tuple[str, dict[str, Any]]], str] | None:
    """The rows :func:`adopt` would seal, each as (table, every column), and their
    :func:`fingerprint`; None if the mark is set (nothing to adopt). Reads only.

    Raises:
        KeyringTampered: as :func:`adopt`.
    """
    if store.meta(MARK, db) is not None:
        return None
    _check_all(store, db)
    found = _unsealed(store, db, lock=False)
    return [(table.name, row) for table, row in found], fingerprint(found)


def fingerprint(found: Sequence[tuple[Table, Mapping[str, Any]]]) -> str:
    """``sha256:…`` over every column of every row, in a fixed order: what an operator compares
    between the review of the rows and their adoption (``xps orch adopt --expect``)."""
    canonical = sorted(json.dumps([table.name, _normal(table, row)], default=repr, separators=(",", ":"))
                       for table, row in found)
    return "sha256:" + hashlib.sha256("\n".join(canonical).encode()).hexdigest()


def adopt(store: Store, db: Connection, *, rows: bool,
          expect: str | None = None) -> list[tuple[str, tuple[Any, ...]]] | None:
    """Seal the rows an earlier release wrote, once, and set the mark (inside a keyring write).

    Args:
        rows: whether rows may be sealed (an operator's explicit adoption, who reviewed them);
            False marks the database only if it holds no orchestration row.
        expect: the :func:`fingerprint` of the rows the operator reviewed; anything else —
            a row inserted, edited or deleted since — is refused and nothing is sealed.

    Returns (table, primary key) of each row it sealed, or None if the mark was set already.

    Raises:
        UnsealedRows: ``rows`` is False and there are rows (names the tables and counts).
        RowsChanged: ``expect`` is not the rows' fingerprint.
        KeyringTampered: a row carries a seal though the database is not marked as sealed
            (the mark was removed: the roster says so too).
    """
    if store.meta(MARK, db) is not None:
        return None
    # The roster first: a mark removed by someone (to have forged rows sealed here) leaves
    # roster entries without their rows, and this refuses it (found by a review).
    _check_all(store, db)
    found = _unsealed(store, db)
    if found and not rows:
        raise UnsealedRows(f"keyring database {store.name!r}: {_counted(found)} that no keyring sealed, and the "
                           "database is not yet marked as sealed (written by an earlier release, or by someone who "
                           "can write the database); review them, then seal them with `xps orch adopt`")
    # Compared under the rows' locks (FOR UPDATE above), so what is sealed is what was reviewed.
    if expect is not None and not hmac.compare_digest(fingerprint(found).encode(), expect.encode()):
        raise RowsChanged(f"keyring database {store.name!r}: the orchestration rows ({_counted(found)}) are not "
                          "the ones reviewed (their fingerprint differs from --expect); nothing sealed: review "
                          "them again with `xps orch adopt --review`")
    entries: list[list[Any]] = [[MARK]]
    for table, row in found:
        where = " AND ".join(f"{c} = ?" for c in table.key)
        mac = store.row_seal(table.name, _normal(table, row))
        db.execute(f"UPDATE {table.name} SET mac = ? WHERE {where}",  # noqa: S608 - constants
                   (mac, *(row[c] for c in table.key)))
        entries.append(_entry(table, row, mac))
    store.set_meta(db, MARK, "1")
    store.roster_rows(db, add=entries)
    return [(table.name, tuple(row[c] for c in table.key)) for table, row in found]


def mark_new(store: Store, db: Connection) -> None:
    """Set the mark in the transaction that creates a keyring database, before its roster is
    built (which then counts it); nothing below schema 8, where the tables are not sealed yet.

    Raises:
        UnsealedRows: the database holds orchestration rows already (no keyring wrote them).
    """
    if db.execute("SELECT 1 FROM xps_migrations WHERE version = 8").fetchone() is None:
        return
    found = _unsealed(store, db, new=True)
    if found:
        raise UnsealedRows(f"keyring database {store.name!r}: a new keyring, yet it holds {_counted(found)} (no "
                           "keyring wrote them: inserted by someone who can write the database?); delete them, or "
                           "use a fresh database")
    store.set_meta(db, MARK, "1")


def _unsealed(store: Store, db: Connection, *, new: bool = False,
              lock: bool = True) -> list[tuple[Table, dict[str, Any]]]:
    """Every orchestration row, locked unless ``lock`` is False (inside a write, the mark not
    set); in a database not ``new``, a row with a seal is refused."""
    found = []
    for table in TABLES:
        sql = f"SELECT {', '.join(table.columns)}, mac FROM {table.name}" + (" FOR UPDATE" if lock else "")  # noqa: S608
        for r in db.execute(sql).fetchall():
            if r[-1] is not None and not new:
                raise KeyringTampered(f"keyring database {store.name!r}: {table.name} has sealed rows but the "
                                      "database is not marked as sealed (the mark removed?); restore it from a backup")
            found.append((table, dict(zip(table.columns, r[:-1], strict=True))))
    return found


def _counted(found: Sequence[tuple[Table, Mapping[str, Any]]]) -> str:
    """``xps_orch_plans: 1 row, …``: table names and counts only (the rows' text is anyone's)."""
    counts: dict[str, int] = {}
    for table, _ in found:
        counts[table.name] = counts.get(table.name, 0) + 1
    return "orchestration rows (" + ", ".join(f"{name}: {n} row{'s' * (n != 1)}" for name, n in counts.items()) + ")"


def _check_all(store: Store, db: Connection) -> None:
    """The schema (no trigger or rule, primary keys intact) and the whole roster, in ``db``."""
    store.check_schema(db)
    store.checked_rows(db)


def _refusal(store: Store, table: Table, row: Mapping[str, Any], mac: object) -> XpsError | None:
    what = f"{table.name} row {', '.join(show(row[c]) for c in table.key if c not in table.times)}"
    try:
        store.check_row(table.name, _normal(table, row), mac, what=what)
    except KeyringTampered:
        return RowTampered(f"{what} fails its integrity seal (edited outside xps, or written by a node without "
                           "this keyring's integrity key); restore it from a backup")
    return None


def _normal(table: Table, row: Mapping[str, Any]) -> list[Any]:
    return [_value(table, c, row[c]) for c in table.columns]


def _value(table: Table, column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in table.times:
        return (value - _EPOCH) // _MICRO
    if column in table.floats:
        return float(value)
    return value


def _entry(table: Table, row: Mapping[str, Any], mac: object) -> list[Any]:
    return [table.name, *(_value(table, c, row[c]) for c in table.key), mac]
