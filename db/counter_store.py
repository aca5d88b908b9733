"""Every process's counters in one table, so a decision taken on one node sees the whole fleet.

A suite migration's canary watches decryptions on every node, a post-quantum rollout watches
handshakes on its canary nodes; the leader alone sees only its own process. Each process writes
its cumulative counters (the series :class:`~xpscerpto.metrics.Metrics` exports) as rows keyed
by its instance (``node#random``): a restarted process writes new rows rather than lowering the
old ones, so a sum over instances never goes backwards. Writes happen every few seconds off the
call path; readers sum rows.

Example:
    >>> store = CounterStore(db, instance="n1#a1b2", node="n1")          # doctest: +SKIP
    >>> store.publish({"xps_channel_handshakes_total": {(("pq", "true"), ("result", "ok")): 3}})
    >>> store.total("xps_channel_handshakes_total", pq="true", result="ok")
    3.0
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping

from xpscerpto.errors import PolicyError, XpsError

from .migrations import require
from .postgres import Database

__all__ = ["CounterShare", "CounterStore", "Series", "series_rows"]

Labels = tuple[tuple[str, str], ...]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
#: The longest counter name, and the longest labels (as stored JSON) a row may have.
MAX_NAME = 200
MAX_LABELS_TEXT = 2000
#: The largest value a row may hold to count: past 2^53 a float no longer counts by ones, and no
#: process's counter gets there; a bound keeps sums over many rows finite (int() of them works).
MAX_VALUE = float(2**53)
#: name -> {labels: value}, the shape of ``Metrics.snapshot()``.
Series = Mapping[str, Mapping[Labels, float]]


class CounterStore:
    """This process's rows in ``xps_counters``, and sums over everyone's.

    Raises:
        PolicyError: the schema lacks migration 6 (names ``xps db migrate``), or ``instance`` or
            ``node`` is not text PostgreSQL stores (a NUL, a lone surrogate, over 255 characters).
    """

    def __init__(self, database: Database, *, instance: str, node: str) -> None:
        self.instance = _text("instance", instance, 300)  # node#random
        self.node = _text("node", node)
        require(database, 6, "counters database")
        self.database = database

    def publish(self, series: Series) -> int:
        """Write this process's current values (one transaction); returns the rows written.

        Raises:
            InternalError: the database failed (nothing written; the next publish retries).
        """
        rows = series_rows(series)
        if not rows:
            return 0
        with self.database.transaction() as tx:
            for name, labels, value in rows:
                tx.execute("INSERT INTO xps_counters (instance, node, name, labels, value) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (instance, name, labels) DO UPDATE SET value = excluded.value, "
                           "updated = clock_timestamp()", (self.instance, self.node, name, labels, value))
        return len(rows)

    def rows(self, name: str, nodes: Iterable[str] | None = None) -> list[tuple[str, dict[str, str], float]]:
        """(node, labels, value) of every instance's series ``name`` (of ``nodes`` only, if given).

        Only rows as :meth:`publish` writes them: a value that is not a count (NaN, infinite,
        negative, past :data:`MAX_VALUE`) or labels that are not its JSON count for nothing.
        """
        wanted = None if nodes is None else set(nodes)
        out = []
        for node, labels, value in self.database.execute(
                "SELECT node, labels, value FROM xps_counters WHERE name = ? ORDER BY instance, labels", (name,)):
            if wanted is not None and node not in wanted:
                continue
            pairs = _labels(labels)
            count = _count(value)
            if pairs is None or count is None:  # a row edited outside xps counts for nothing
                continue
            out.append((str(node), pairs, count))
        return out

    def total(self, name: str, *, nodes: Iterable[str] | None = None, **match: str) -> float:
        """The sum of series ``name`` over every instance whose labels include ``match``."""
        return sum(value for _, labels, value in self.rows(name, nodes)
                   if all(labels.get(k) == v for k, v in match.items()))


def series_rows(series: object) -> list[tuple[str, str, float]]:
    """(name, labels as JSON, value) of every finite number in ``series`` (the snapshot shape).

    Raises:
        PolicyError: ``series`` is not name -> {((label, value), ...): number} (names the part).
    """
    if not isinstance(series, Mapping):
        raise PolicyError(f"series: expected a mapping of counter names, got {type(series).__name__}")
    rows = []
    for name, by_labels in series.items():
        if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name) \
                or not isinstance(by_labels, Mapping):
            raise PolicyError(f"series: expected counter name (up to {MAX_NAME} letters, digits, '_', ':') -> "
                              "{labels: value}")
        for labels, value in by_labels.items():
            if not isinstance(labels, tuple) or not all(
                    isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in labels):
                raise PolicyError("series: labels must be a tuple of (name, value) string pairs")
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            try:  # an int past float's range: math.isfinite and float() raise OverflowError
                number = float(value)
            except OverflowError:
                raise PolicyError("series: a value is too large for a float") from None
            # json.dumps escapes lone surrogates and NULs: the JSON text is plain ASCII.
            text = json.dumps([list(p) for p in labels])
            # (name, labels) is the table's key, and an index entry holds about 2.7 KB: one longer
            # row failed every publish of the process, so it is left out (as unreadable rows are).
            if math.isfinite(number) and len(text) <= MAX_LABELS_TEXT:
                rows.append((name, text, number))
    return rows


def _text(field: str, value: object, limit: int = 255) -> str:
    # The driver's UTF-8 encoding refuses a lone surrogate and PostgreSQL's text a NUL: refused
    # here, typed, instead of failing every publish with a UnicodeEncodeError or a DataError.
    if isinstance(value, str) and 1 <= len(value) <= limit and "\x00" not in value:
        with contextlib.suppress(UnicodeEncodeError):
            value.encode("utf-8")
            return value
    raise PolicyError(f"{field}: expected 1 to {limit} characters of text (no NUL, no lone surrogate)")


def _count(value: object) -> float | None:
    """The row's value if it is a count a process could have published, else None.

    ``xps_counters`` is unsealed: a database writer can store 'NaN' or '-Infinity', which no xps
    process writes (:func:`series_rows` drops them); a reader that int()s it must not fail every
    canary tick with an untyped ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if 0.0 <= number <= MAX_VALUE else None  # NaN fails every comparison


def _labels(text: str) -> dict[str, str] | None:
    """The labels as :meth:`CounterStore.publish` wrote them (a list of [name, value]), or None."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError, MemoryError):
        # RecursionError: a database writer's '[[[[…' 100,000 deep must count for nothing, like
        # other rows edited outside xps, not fail every canary tick that reads the totals.
        return None
    if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in data):
        return None
    return dict(data)


class CounterShare:
    """Publish a process's counters every ``every`` seconds from a daemon thread.

    For processes that serve traffic without an orchestrator (an application with channel
    servers or a keyring): their numbers reach the fleet table, and so the leader's canary
    decisions, at most ``every`` seconds late.

    Args:
        database: ``postgresql://…`` (migration 6 applied).
        node: this node's name (the instance is ``node#random``).
        read: what to publish, e.g. ``metrics.snapshot``.
        every: seconds between publications.

    Example:
        >>> share = CounterShare(dsn, node="web-1", read=metrics.snapshot).start()   # doctest: +SKIP
    """

    def __init__(self, database: str, *, node: str, read: Callable[[], Series], every: float = 5.0) -> None:
        if isinstance(every, bool) or not isinstance(every, int | float) or not 0.05 <= every <= 3600:
            raise PolicyError("every: expected seconds between 0.05 and 3600")
        _text("node", node)  # before a connection is opened, so a refusal leaves none open
        from .migrations import open_migrated

        self.store = CounterStore(open_migrated(database, 6, "counters database"),
                                  instance=f"{node}#{secrets.token_hex(4)}", node=node)
        self._read, self.every = read, float(every)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xps-counters-{node}", daemon=True)

    def start(self) -> CounterShare:
        """Publish now and then every ``every`` seconds."""
        self._thread.start()
        return self

    def publish(self) -> int:
        """Publish once now (what the thread does); returns the rows written."""
        return self.store.publish(self._read())

    def stop(self) -> None:
        """Publish a last time (best effort), stop, and close the connections."""
        self._stop.set()
        try:
            if self._thread.is_alive():
                self._thread.join(timeout=10)
            try:
                self.publish()
            except XpsError as exc:
                self.last_error = str(exc)
            except Exception as exc:  # a failing read at shutdown must not keep the connection open
                self.last_error = f"XPS_ERR_INTERNAL: {type(exc).__name__}"
        finally:
            self.store.database.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
                self.last_error = None
            except XpsError as exc:  # the database away: the next round writes the totals again
                self.last_error = str(exc)
            except Exception as exc:  # a failing read must not end sharing for good
                self.last_error = f"XPS_ERR_INTERNAL: {type(exc).__name__}"
            self._stop.wait(self.every)
