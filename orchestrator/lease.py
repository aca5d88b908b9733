"""A leader lease in PostgreSQL: one holder at a time, an expiry, and a fencing token.

Taking the lease over (it expired, or was never held) increments the token; renewing keeps it.
Every write a leader makes checks, *in the same statement*, that the lease is still its own
with that token and unexpired (:data:`FENCE`), so a leader that paused past its expiry (GC,
SIGSTOP, a partition) and wakes up cannot write: its statement matches no row. The check also
holds the lease row (``FOR SHARE``) until the transaction ends, so no other node takes the
lease over while a write it passed is still uncommitted: a leader paused between its fenced
statement and its commit delays the takeover until the server ends its idle transaction
(:data:`~xpscerpto.db.postgres.IDLE_IN_TRANSACTION_SECONDS`), and that rolls it back. Times are the
database's ``clock_timestamp()``; the nodes' clocks never decide who leads.

Example:
    >>> lease = Lease(db, "orchestrator", holder="node-a", ttl=10)   # doctest: +SKIP
    >>> state = lease.acquire()                                      # doctest: +SKIP
    >>> state.mine, state.token                                      # doctest: +SKIP
    (True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from xpscerpto.db.postgres import Database
from xpscerpto.errors import PolicyError

__all__ = ["FENCE", "Lease", "LeaseState"]

#: The condition every fenced statement carries: parameters (lease name, holder, token).
FENCE = ("EXISTS (SELECT 1 FROM xps_lease WHERE name = ? AND holder = ? AND token = ? "
         "AND expires > clock_timestamp() FOR SHARE)")


@dataclass(frozen=True, slots=True)
class LeaseState:
    """Who holds the lease, with which token, until when (database time)."""

    name: str
    holder: str | None
    token: int
    expires: datetime | None
    mine: bool

    def fence(self) -> tuple[str, str, int]:
        """The parameters of :data:`FENCE` for this holder and token."""
        return (self.name, self.holder or "", self.token)


class Lease:
    """Acquire, renew and release one named lease.

    Args:
        database: the shared database (migration 2 applied).
        name: which lease (one per role).
        holder: who holds it — one process (the orchestrator passes ``node#instance``).
        ttl: seconds a lease lasts without renewal (the failover bound is about ``ttl``).

    Raises:
        PolicyError: a bad name, holder or ttl.
    """

    def __init__(self, database: Database, name: str, *, holder: str, ttl: float) -> None:
        for field, value in (("name", name), ("holder", holder)):
            if not isinstance(value, str) or not value or len(value) > 200 or "\x00" in value:
                raise PolicyError(f"{field}: expected a non-empty str of at most 200 characters")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.1 <= ttl <= 3600:
            raise PolicyError("ttl: expected seconds between 0.1 and 3600")
        self.database = database
        self.name = name
        self.holder = holder
        self.ttl = float(ttl)

    def acquire(self) -> LeaseState:
        """Take the lease if it is free or expired, renew it if it is ours; returns who holds it.

        Raises:
            InternalError: the database is unreachable (then assume you are *not* the leader).
        """
        with self.database.transaction() as tx:
            tx.execute("INSERT INTO xps_lease (name) VALUES (?) ON CONFLICT DO NOTHING", (self.name,))
            # One statement decides: renew (same holder, unexpired: token kept) or take over
            # (expired: token + 1). Row locking serialises two nodes racing for it.
            tx.execute(
                "UPDATE xps_lease SET token = CASE WHEN holder = ? AND expires > clock_timestamp() THEN token "
                "ELSE token + 1 END, holder = ?, expires = clock_timestamp() + make_interval(secs => ?) "
                "WHERE name = ? AND (holder = ? OR expires <= clock_timestamp())",
                (self.holder, self.holder, self.ttl, self.name, self.holder))
            row = tx.execute("SELECT holder, token, expires FROM xps_lease WHERE name = ?", (self.name,)).fetchone()
        assert row is not None
        return LeaseState(self.name, row[0], int(row[1]), row[2], row[0] == self.holder)

    def state(self) -> LeaseState:
        """Who holds the lease now (``holder`` None: never taken); expired leases say so by time."""
        row = self.database.execute(
            "SELECT holder, token, expires, expires > clock_timestamp() FROM xps_lease WHERE name = ?",
            (self.name,)).fetchone()
        if row is None:
            return LeaseState(self.name, None, 0, None, False)
        return LeaseState(self.name, row[0] if row[3] else None, int(row[1]), row[2],
                          bool(row[3]) and row[0] == self.holder)

    def release(self, token: int) -> None:
        """Give the lease up now (a clean stop), if it is still ours with ``token``."""
        self.database.execute("UPDATE xps_lease SET expires = clock_timestamp() WHERE name = ? AND holder = ? "
                              "AND token = ?", (self.name, self.holder, token))
