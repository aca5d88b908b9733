"""Where a node's announcement follower got to: the newest capsule event it has acted on.

Kept in the home (``announce.json``, the ``announce_cursor`` store) so that a restarted node
resumes after the events it followed instead of reading the whole table again. Together with
event signatures that name the event's id, this is what makes a copied event worthless: a
re-inserted row gets a new id, which its signature does not name, and an old id is behind
every follower's cursor.

A missing file in a home that never recorded one is "from the start"; once recorded, a
missing, empty or malformed file -- or one written for another node or database -- is a
refusal, never a silent restart from zero.

Example:
    >>> cursor = AnnounceCursor(home, node="node-a", database="postgresql://db/xps")  # doctest: +SKIP
    >>> cursor.load()                                                                   # doctest: +SKIP
    0
"""

from __future__ import annotations

import json

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import PolicyError, UpdateError
from xpscerpto.home import STORES, Home

__all__ = ["FORMAT", "AnnounceCursor"]

FORMAT = "xps-announce-cursor/1"
_MAX_ID = (1 << 63) - 1  # a bigserial


class AnnounceCursor:
    """The last capsule event id one node followed, in its home.

    Args:
        home: the node's home.
        node: the node's name (the file names it: another node's file is refused).
        database: the database as shown in messages (no password; the file names it too).

    Raises:
        PolicyError: the home recorded the file and it is missing or empty.
    """

    def __init__(self, home: Home, *, node: str, database: str) -> None:
        self.home, self.node, self.database = home, node, database
        self.path = home.root / STORES["announce_cursor"][0]
        self._new = home.check_store("announce_cursor")

    def load(self) -> int:
        """The last event id followed (0: none yet).

        Raises:
            PolicyError: the file is unreadable, malformed, or another node's or database's.
        """
        restore = STORES["announce_cursor"][1]
        try:
            raw = read_stored(self.path, 4096)
        except FileNotFoundError:
            if self._new and not self.home.store_exists("announce_cursor"):
                return 0
            raise PolicyError(f"announce cursor {str(self.path)!r}: missing, though this home recorded it; "
                              f"{restore}") from None
        except OSError as exc:
            raise PolicyError(f"announce cursor {str(self.path)!r}: unreadable ({exc.strerror}); {restore}") from None
        try:
            doc = json.loads(raw)
            seen = doc["seen"]
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or type(seen) is not int \
                    or not 0 <= seen <= _MAX_ID:
                raise ValueError
        except (ValueError, TypeError, KeyError, RecursionError):
            raise PolicyError(f"announce cursor {str(self.path)!r}: malformed (damaged?); {restore}") from None
        if doc.get("node") != self.node or doc.get("database") != self.database:
            raise PolicyError(f"announce cursor {str(self.path)!r}: written for another node or database than "
                              f"node {self.node!r} on {self.database}; a home follows one fleet under one name")
        return seen

    def save(self, seen: int) -> None:
        """Record ``seen`` as followed (atomically: the old value or the new one survives a crash).

        Raises:
            UpdateError: the file cannot be written (``io``); the events are followed again later.
        """
        doc = {"format": FORMAT, "node": self.node, "database": self.database, "seen": seen}
        try:
            atomic_write(self.path, json.dumps(doc, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise UpdateError(f"announce cursor {str(self.path)!r}: cannot write ({exc.strerror})",
                              reason="io") from None
        if self._new and self.home.record_path.exists():
            self.home.register_store("announce_cursor")
            self._new = False
