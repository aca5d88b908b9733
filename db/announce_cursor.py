"""Where a node's announcements stand: the last capsule event it followed, and what it has yet to
announce.

Kept in the home (``announce.json``, the ``announce_cursor`` store):

- ``seen``: the newest event id this node acted on. A restarted node resumes after it instead of
  reading the whole table again. Together with event signatures that name the event's id, this
  makes a copied event worthless: a re-inserted row gets a new id, which its signature does not
  name, and an old id is behind every follower's cursor.
- ``home``: a random id of this home, also recorded with the node name in the database
  (``xps_announce_nodes``): a second home started under a name another home claimed is refused
  (each would take the other's events for its own and skip them). A file written by an
  earlier release has none; the announcer claims the name for the home once.
- ``pending``: this node's own changes not yet in the table (the outbox). A change is written
  here when the updater reports it, and taken out once its event is committed, so one made
  while the database was away, or just before a kill -9, is announced after the restart. A
  crash between the commit and taking it out announces it twice, which followers treat as once
  (an enable of an active capsule, or a rollback of an inactive one, does nothing).

A missing file in a home that never recorded one is "from the start, nothing pending"; once
recorded, a missing, empty or malformed file -- or one written for another node or database --
is a refusal, never a silent restart from zero. A home without ``home.json`` (made through the
API) cannot record it: the database remembers the node names that followed it, and the
announcer refuses a missing file under a name it knows, in any home
(:class:`~xpscerpto.db.capsule_announce.Announcer`).

Example:
    >>> cursor = AnnounceCursor(home, node="node-a", database="postgresql://db/xps")  # doctest: +SKIP
    >>> cursor.load()                                                                   # doctest: +SKIP
    0
"""

from __future__ import annotations

import json
import re
import threading

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.capsules.format import _NAME, _VERSION
from xpscerpto.capsules.updater import BUILT_IN
from xpscerpto.errors import PolicyError, UpdateError
from xpscerpto.home import STORES, Home

__all__ = ["FORMAT", "HOME_ID", "MAX_PENDING", "AnnounceCursor", "Pending"]

FORMAT = "xps-announce-cursor/1"
#: Changes kept for announcing at most; beyond, the oldest is dropped (and the drop reported).
MAX_PENDING = 1000
_MAX_ID = (1 << 63) - 1  # a bigserial
_MAX_TEXT = 256
#: A home's id (:attr:`AnnounceCursor.home_id`): 128 random bits, hex.
HOME_ID = re.compile(r"[0-9a-f]{32}")
#: (action, sha256, name, version, to) of one change to announce; ``to`` is the version a
#: ``rollback --to`` restored (or ``built-in``), else "". The file omits an empty ``to`` (entries written before it
#: existed have four fields).
Pending = tuple[str, str, str, str, str]


class AnnounceCursor:
    """The last capsule event id one node followed, and its changes not yet announced.

    Thread-safe: the updater's thread adds changes while the announcer's thread follows.

    Args:
        home: the node's home.
        node: the node's name (the file names it: another node's file is refused).
        database: the database's name on its server (the file names it too).

    Raises:
        PolicyError: the home recorded the file and it is missing or empty.
    """

    def __init__(self, home: Home, *, node: str, database: str) -> None:
        self.home, self.node, self.database = home, node, database
        self._any_owner = False
        self.path = home.root / STORES["announce_cursor"][0]
        self._new = home.check_store("announce_cursor")
        self._lock = threading.Lock()
        self._seen = 0
        self.pending: list[Pending] = []
        #: This home's id in the fleet's database (None: not claimed yet, or by an earlier release).
        self.home_id: str | None = None
        #: Whether :meth:`load` found the file (False: this home starts following now).
        self.existed = False

    @classmethod
    def of_home(cls, home: Home) -> AnnounceCursor | None:
        """The recorded cursor of a home that follows a fleet, read as its file names it.

        For a change made without the announcer (``xps rollback`` with no engine running):
        the node and database are the file's, since the command is not told them. None when
        the home has none and never recorded one (it follows no fleet).

        Raises:
            PolicyError: as :meth:`load`, but for another node or database.
        """
        if not home.store_exists("announce_cursor") and not (home.root / STORES["announce_cursor"][0]).exists():
            return None
        cursor = cls(home, node="", database="")
        cursor._any_owner = True
        cursor.load()
        return cursor

    def load(self) -> int:
        """Read the file: the last event id followed (0: none yet); :attr:`pending` is filled.

        Raises:
            PolicyError: the file is unreadable, malformed, or another node's or database's.
        """
        restore = STORES["announce_cursor"][1]
        try:
            raw = read_stored(self.path, 1 << 20)
        except FileNotFoundError:
            if self._new and not self.home.store_exists("announce_cursor"):
                return 0
            raise PolicyError(f"announce cursor {str(self.path)!r}: missing, though this home recorded it; "
                              f"{restore}") from None
        except OSError as exc:
            raise PolicyError(f"announce cursor {str(self.path)!r}: unreadable ({exc.strerror}); {restore}") from None
        try:
            doc = json.loads(raw)
            seen, pending, home_id = doc["seen"], doc["pending"], doc.get("home")
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or type(seen) is not int \
                    or not 0 <= seen <= _MAX_ID or not isinstance(pending, list) or len(pending) > MAX_PENDING \
                    or not all(_is_pending(p) for p in pending) \
                    or not (home_id is None or (isinstance(home_id, str) and HOME_ID.fullmatch(home_id))):
                raise ValueError
        except (ValueError, TypeError, KeyError, RecursionError):
            raise PolicyError(f"announce cursor {str(self.path)!r}: malformed (damaged?); {restore}") from None
        if self._any_owner and isinstance(doc.get("node"), str) and isinstance(doc.get("database"), str):
            self.node, self.database = doc["node"], doc["database"]
        if doc.get("node") != self.node or doc.get("database") != self.database:
            raise PolicyError(f"announce cursor {str(self.path)!r}: written for another node or database than "
                              f"node {self.node!r} on {self.database}; a home follows one fleet under one name")
        with self._lock:
            self.existed = True
            self._seen = seen
            self.home_id = home_id
            self.pending = [(p[0], p[1], p[2], p[3], p[4] if len(p) == 5 else "") for p in pending]
        return seen

    def save(self, seen: int) -> None:
        """Record ``seen`` as followed (atomically: the old value or the new one survives a crash).

        Raises:
            UpdateError: the file cannot be written (``io``); the events are followed again later.
        """
        with self._lock:
            self._seen = seen
            self._write()

    def claim(self, home_id: str, seen: int) -> None:
        """Record this home's id (written before the database records it) and ``seen``.

        Raises:
            UpdateError: the file cannot be written (``io``).
        """
        with self._lock:
            self.home_id = home_id
            self._seen = seen
            self._write()

    def add(self, item: Pending) -> Pending | None:
        """Keep ``item`` for announcing; the oldest pending change if it had to be dropped for
        room (it will not be announced after a restart), else None.

        Raises:
            UpdateError: the file cannot be written (the change is then announced only if this
                process lives until the database answers).
        """
        with self._lock:
            self.pending.append(item)
            dropped = self.pending.pop(0) if len(self.pending) > MAX_PENDING else None
            self._write()
            return dropped

    def done(self, item: Pending) -> None:
        """``item`` is in the table: take it out (the first one equal to it).

        Raises:
            UpdateError: the file cannot be written (then it is announced again after a restart).
        """
        with self._lock:
            if item in self.pending:
                self.pending.remove(item)
                self._write()

    def _write(self) -> None:
        doc: dict[str, object] = {"format": FORMAT, "node": self.node, "database": self.database, "seen": self._seen,
                                  "pending": [list(p if p[4] else p[:4]) for p in self.pending]}
        if self.home_id is not None:
            doc["home"] = self.home_id
        try:
            atomic_write(self.path, json.dumps(doc, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise UpdateError(f"announce cursor {str(self.path)!r}: cannot write ({exc.strerror})",
                              reason="io") from None
        if self._new and self.home.record_path.exists():
            self.home.register_store("announce_cursor")
            self._new = False


def _is_pending(value: object) -> bool:
    # Name and version as a manifest allows them: an entry the database cannot take (a NUL, a
    # lone surrogate) would be retried first for ever, holding every later change back.
    return isinstance(value, list) and len(value) in (4, 5) and value[0] in ("enable", "rollback") \
        and all(isinstance(v, str) and 0 < len(v) <= _MAX_TEXT for v in value) \
        and len(value[1]) == 64 and all(c in "0123456789abcdef" for c in value[1]) \
        and _NAME.fullmatch(value[2]) is not None and _VERSION.fullmatch(value[3]) is not None \
        and (len(value) == 4 or (value[0] == "rollback"
                                 and (value[4] == BUILT_IN or _VERSION.fullmatch(value[4]) is not None)))
