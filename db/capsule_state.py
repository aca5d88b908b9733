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

The row is anchored in the home: ``state.anchor`` (the ``routing_anchor`` store) holds the
SHA-256 of the document this node last committed, so a row edited in the database, or an older
copy of it put back (which would take a fix out and lower the version memory), is refused when
read. A save writes the anchor with both the committed and the next digest first, then the row,
then the anchor with the next digest alone: a crash anywhere leaves a row the anchor accepts.

A home that has not committed to the row yet never adopts one it finds under its node name (a
database writer's, or another home's with the same ``hotpatch.node``): that is refused. Only a
home whose record names the row but which has no anchor yet (an earlier release's) adopts it,
once.

Example:
    >>> store = PgStateStore("postgresql://db/xps", node="node-a", home=home)   # doctest: +SKIP
    >>> Updater(engine, home, state_store=store).restore()                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.capsules.refusal import Refusal, refuse
from xpscerpto.capsules.store import RoutingState, state_lock
from xpscerpto.errors import InternalError, PolicyError, UpdateError
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
            self._anchor_new = home.check_store("routing_anchor")
        except BaseException:
            self.database.close()
            raise
        self._anchor = home.root / STORES["routing_anchor"][0]
        # lock() depth of each thread in this object: a reader outside it re-checks under it.
        self._local = threading.local()
        digest = hashlib.sha256(b"xps-routing-state\0" + node.encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)

    @property
    def where(self) -> str:
        """The row, as refusals name it."""
        return f"{self.database.name} xps_capsule_state node {self.node!r}"

    def load(self) -> RoutingState:
        """The node's state; no row yet (and none recorded): the empty state.

        Raises:
            UpdateError: the home recorded the row and it is gone, the document is malformed, or
                a row this home never committed to is there (``state``).
            InternalError: the database is unreachable.
        """
        row = self.database.execute("SELECT doc FROM xps_capsule_state WHERE node = ?", (self.node,)).fetchone()
        if row is None:
            if not self._create or self.home.store_exists("routing"):
                raise refuse(Refusal.STATE, f"state {self.where}: missing, though this home recorded it; "
                                            f"{STORES['routing'][1]}; xpscerpto never re-creates a recorded store")
            return RoutingState()
        raw = str(row[0]).encode()
        state = RoutingState.from_bytes(raw, self.where)
        try:
            self._check_anchor(raw)
        except UpdateError:
            if self._held:
                raise
            with self.lock():  # a save may have run between our two reads: read both again under it
                return self.load()
        return state

    def _check_anchor(self, raw: bytes) -> None:
        """Refuse a row other than the one this node last committed (or is committing)."""
        if self._unanchored():
            # A home that never committed here adopting the row would take a database writer's
            # version memory, or another home's state under the same node name, as its own.
            self._refuse_foreign()
            # Written before anchors existed (the first read after an upgrade): adopted as it
            # is, once; from then on the anchor is checked, and once the home records it, a
            # missing one is refused.
            self._write_anchor(_digest(raw))
            return
        accepted = self._read_anchor()
        digest = _digest(raw)
        if not any(hmac.compare_digest(digest, d) for d in accepted):
            raise refuse(Refusal.STATE, f"state {self.where}: not the state this node last committed (edited in "
                                        "the database, or an older copy put back); restore the row from a backup "
                                        f"taken with the home's {self._anchor.name}")
        if len(accepted) > 1 and self._held:
            # A save ended between its writes (a crash): the row says which one committed, and
            # from now on only that one is accepted (else the other could be put back later).
            self._write_anchor(digest)

    @property
    def _held(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def _unanchored(self) -> bool:
        """No anchor yet: neither recorded by the home nor on disk (a home without home.json
        cannot tell a deleted anchor from none; an anchor on disk is always checked)."""
        return self._anchor_new and not self.home.store_exists("routing_anchor") and not os.path.lexists(self._anchor)

    def _refuse_foreign(self) -> None:
        """Refuse a row this home never committed: only a home that records it (an earlier
        release's, from before anchors) may adopt one without an anchor."""
        if self._create:
            raise refuse(Refusal.STATE, f"state {self.where}: already exists, though this home never committed "
                                        "to it (another home's under the same hotpatch.node, or written outside "
                                        "xpscerpto); choose another hotpatch.node for this home, or remove the row "
                                        "if no node uses it")

    def _row_exists(self) -> bool:
        try:
            return self.database.execute("SELECT 1 FROM xps_capsule_state WHERE node = ?",
                                         (self.node,)).fetchone() is not None
        except InternalError:
            raise refuse(Refusal.IO, f"state {self.where}: cannot write (database unavailable); the previous "
                                     "state stays committed") from None

    def _read_anchor(self) -> list[str]:
        try:
            raw = read_stored(self._anchor, 4096)
        except FileNotFoundError:
            raise refuse(Refusal.STATE, f"state anchor {str(self._anchor)!r}: missing, though this home recorded it; "
                                        f"{STORES['routing_anchor'][1]}") from None
        except OSError as exc:
            raise refuse(Refusal.STATE, f"state anchor {str(self._anchor)!r}: unreadable ({exc.strerror})") from None
        try:
            doc = json.loads(raw)
            digests = doc["digests"]
            if doc.get("node") != self.node or doc.get("format") != 1 or not isinstance(digests, list) \
                    or not 1 <= len(digests) <= 3 or not all(_is_digest(d) for d in digests):
                raise ValueError
        except (ValueError, TypeError, KeyError, RecursionError):
            raise refuse(Refusal.STATE, f"state anchor {str(self._anchor)!r}: malformed (damaged, or another "
                                        "node's); " + STORES["routing_anchor"][1]) from None
        return list(digests)

    def _write_anchor(self, *digests: str) -> None:
        doc = {"format": 1, "node": self.node, "digests": list(digests)}
        try:
            atomic_write(self._anchor, json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:
            raise refuse(Refusal.IO, f"state anchor {str(self._anchor)!r}: cannot write ({exc.strerror}); the "
                                     "previous state stays committed") from None
        if self._anchor_new and self.home.record_path.exists():
            self.home.register_store("routing_anchor")
            self._anchor_new = False

    def save(self, state: RoutingState) -> None:
        """Replace the row in one statement.

        Raises:
            UpdateError: ``io`` -- the database is unreachable; the previous state stays.
                ``state`` -- a first save finds a row this home never committed to.
        """
        doc = state.to_bytes()
        # Both digests while the row may be either (a crash, or a commit whose reply was lost):
        # what the anchor accepts now (one digest, two after a save that crashed and no locked
        # load since) and the new one.
        if self._unanchored():
            committed = []
            # A first save, even one without a load before it, must not overwrite another
            # home's row.
            if self._create and self._row_exists():
                self._refuse_foreign()
        else:
            committed = self._read_anchor()
        self._write_anchor(*committed[-2:], _digest(doc))
        try:
            self.database.execute(
                "INSERT INTO xps_capsule_state (node, doc) VALUES (?, ?) ON CONFLICT (node) DO UPDATE "
                "SET doc = excluded.doc, updated = clock_timestamp()",
                (self.node, doc.decode("ascii")))
        except InternalError:
            raise refuse(Refusal.IO, f"state {self.where}: cannot write (database unavailable); the previous "
                                     "state stays committed") from None
        self._write_anchor(_digest(doc))
        if self._create and self.home.record_path.exists():
            self.home.register_store("routing", self.ref)
            self._create = False

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The home's lock file, then the node's advisory lock in the database."""
        with state_lock(self.home), self.database.session_lock(self._key):
            self._local.depth = self._held + 1
            try:
                yield
            finally:
                self._local.depth -= 1

    def close(self) -> None:
        """Close the database connections."""
        self.database.close()


def _digest(doc: bytes) -> str:
    return "sha256:" + hashlib.sha256(doc).hexdigest()


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 71 and value.startswith("sha256:") \
        and all(c in "0123456789abcdef" for c in value[7:])
