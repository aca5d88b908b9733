"""The committed routing state of one node in PostgreSQL (``hotpatch.state_database``).

The same document as ``state.json`` (:meth:`RoutingState.to_bytes`), one row per node in
``xps_capsule_state``, replaced by one statement (a crash leaves the previous or the next
state). A load-modify-save holds a session advisory lock derived from the node name, beside
the home's own lock file, so two processes of one node never interleave their changes; the
server releases it if the holder dies.

The home records the row as its ``routing`` store (``DATABASE#NODE``): once recorded, a
missing row is a refusal naming it, never a silent empty state, and a configuration that names
another database or node for this home is refused (a home keeps its stores where they were
created).

Example:
    >>> store = PgStateStore("postgresql://db/xps", node="node-a", home=home)   # doctest: +SKIP
    >>> Updater(engine, home, state_store=store).restore()                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from xpscerpto.capsules.refusal import Refusal, refuse
from xpscerpto.capsules.store import RoutingState, state_lock
from xpscerpto.errors import InternalError, PolicyError
from xpscerpto.home import STORES, Home

from .migrations import open_migrated

__all__ = ["PgStateStore"]


class PgStateStore:
    """``xps_capsule_state`` row ``node`` of ``database`` (migration 7).

    Raises:
        PolicyError: a malformed node name, the schema behind, or the home records its routing
            state elsewhere.
    """

    def __init__(self, database: str, *, node: str, home: Home) -> None:
        if not isinstance(node, str) or not node or len(node) > 200 or not node.isprintable():
            raise PolicyError("hotpatch.node: expected a printable node name of 1 to 200 characters")
        self.database = open_migrated(database, 7, "routing state database")
        self.node, self.home = node, home
        self.ref = f"{self.database.name}#{node}"
        try:
            self._create = home.check_store("routing", self.ref)
        except BaseException:
            self.database.close()
            raise
        digest = hashlib.sha256(b"xps-routing-state\0" + node.encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)

    @property
    def where(self) -> str:
        """The row, as refusals name it."""
        return f"{self.database.name} xps_capsule_state node {self.node!r}"

    def load(self) -> RoutingState:
        """The node's state; no row yet (and none recorded): the empty state.

        Raises:
            UpdateError: the home recorded the row and it is gone, or the document is malformed.
            InternalError: the database is unreachable.
        """
        row = self.database.execute("SELECT doc FROM xps_capsule_state WHERE node = ?", (self.node,)).fetchone()
        if row is None:
            if not self._create or self.home.store_exists("routing"):
                raise refuse(Refusal.STATE, f"state {self.where}: missing, though this home recorded it; "
                                            f"{STORES['routing'][1]}; xpscerpto never re-creates a recorded store")
            return RoutingState()
        return RoutingState.from_bytes(str(row[0]).encode(), self.where)

    def save(self, state: RoutingState) -> None:
        """Replace the row in one statement.

        Raises:
            UpdateError: ``io`` -- the database is unreachable; the previous state stays.
        """
        try:
            self.database.execute(
                "INSERT INTO xps_capsule_state (node, doc) VALUES (?, ?) ON CONFLICT (node) DO UPDATE "
                "SET doc = excluded.doc, updated = clock_timestamp()",
                (self.node, state.to_bytes().decode("ascii")))
        except InternalError:
            raise refuse(Refusal.IO, f"state {self.where}: cannot write (database unavailable); the previous "
                                     "state stays committed") from None
        if self._create and self.home.record_path.exists():
            self.home.register_store("routing", self.ref)
            self._create = False

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The home's lock file, then the node's advisory lock in the database."""
        with state_lock(self.home), self.database.session_lock(self._key):
            yield

    def close(self) -> None:
        """Close the database connections."""
        self.database.close()
