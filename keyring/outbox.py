"""Journal records that exist if and only if their change committed (a transactional outbox).

A keyring transition and the audit journal are two files; no single write covers both. So a
transition queues its journal record in the database, in the transition's own transaction:
if the transaction commits, so does the record's place in the queue, and if it rolls back (or
the process dies first) there is nothing to deliver. After the commit the record is delivered
to the journal with :meth:`AuditLog.record_once`, keyed by a transaction id, and dropped from
the queue in one database transaction. A crash between the journal append and the drop leaves
the record queued *and* written; the next delivery finds its transaction id in the journal
and only drops it. Every keyring that opens the database delivers what is queued, so a record
lost to a kill -9 shows up at the next open — never twice, never for a change that did not
happen.

Example:
    >>> import tempfile, pathlib, time
    >>> from xpscerpto.audit import AuditLog
    >>> from xpscerpto.keyring.integrity import Sealer
    >>> from xpscerpto.keyring.store import Store
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> store = Store(d / "k.db", create=True); store.sealer = Sealer(bytes(32))
    >>> box = Outbox(store, AuditLog(d / "audit.log"), time.time)
    >>> with store.write() as db:
    ...     _ = box.add(db, "KEY_CREATE", name="orders")
    >>> box.deliver(), [e["event"] for e in AuditLog(d / "audit.log").tail(5)]
    (1, ['KEY_CREATE'])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from xpscerpto.audit import AuditLog

from .store import Connection, Store

__all__ = ["Outbox"]


class Outbox:
    """Queue journal records inside database transactions; deliver them exactly once."""

    def __init__(self, store: Store, audit: AuditLog, clock: Callable[[], float]) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock

    def add(self, db: Connection, event: str, **fields: Any) -> str:
        """Queue ``event`` in the open write transaction ``db``; returns its transaction id."""
        txid = os.urandom(8).hex()
        self.store.add_outbox(db, txid, self.clock(), event, fields)
        return txid

    def deliver(self) -> int:
        """Append every queued record to the journal (once) and drop it; returns how many.

        Raises:
            XpsError: the journal cannot be written (the records stay queued).
        """
        if not self.store.outbox():
            return 0  # the common case: one read, no write lock
        n = 0
        with self.store.write() as db:  # other processes' deliveries wait: each record goes once
            for row in self.store.outbox(db):
                self.audit.record_once(row.event, row.txid, since=row.created, **row.fields)
                self.store.remove_outbox(db, row.txid)
                n += 1
        return n
