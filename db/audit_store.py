"""The audit journal on PostgreSQL: one hash chain for every node, same records, same checks.

Each record is the same canonical JSON line as in the file journal, in table ``xps_audit``
(one row per ``seq``). An append reads the last line, builds the next records (chained,
signed, checkpointed exactly as :class:`~xpscerpto.audit.AuditLog` does) and inserts them in
one transaction under an advisory lock, so records from several nodes form one gapless chain
and a crash leaves no torn line to repair. :meth:`PgAuditLog.verify` runs the file journal's
verifier over the rows.

All nodes sign with **one** journal key: a node joins with a copy of ``audit.key`` (as with
the KEK). A node whose key is not the journal's is refused at its first append (the last
record's signature does not verify under it), and no node creates a key for a journal that
already has records. The ``.pub`` stays in each node's home: verification pins it locally,
never trusting a key stored in the database it checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from xpscerpto.audit.journal import (
    CHECKPOINT,
    GENESIS,
    AuditLog,
    AuditTampered,
    _canonical,
    _event_needle,
    _Head,
    _parse_record,
    record_message,
    records_of,
)
from xpscerpto.errors import KeyError_, PolicyError

from .migrations import open_migrated

__all__ = ["AUDIT_LOCK", "PgAuditLog"]

#: The advisory lock every append holds.
AUDIT_LOCK = 0x7870_7300_0000_0003


class PgAuditLog(AuditLog):
    """The journal in ``xps_audit`` of ``database`` (see the module docstring).

    Args:
        database: ``postgresql://…`` (migration 3 applied).
        local: the node's journal path; its ``.key``/``.pub`` siblings are the signing key
            and the pinned public key (the path itself holds no records).
        signing_key, checkpoint_every, clock: as for :class:`AuditLog`.
    """

    def __init__(self, database: str, local: str | Path, **kw: Any) -> None:
        super().__init__(local, **kw)
        self.database = open_migrated(database, 3, "audit database")
        self.name = self.database.name

    def _append(self, event: str, fields: dict[str, Any], once: tuple[bytes, str] | None = None) -> dict[str, Any]:
        with self._lock, self.database.transaction(lock=AUDIT_LOCK) as tx:
            if once is not None:
                found = tx.execute("SELECT line FROM xps_audit WHERE time >= ? AND position(? in line) > 0 "
                                   "ORDER BY seq DESC LIMIT 1", (once[1], once[0].decode())).fetchone()
                # Parsed as any row is: a database writer's line nested past the parser's limit
                # (or not JSON at all) is no earlier record, and the append below checks the chain.
                earlier = None if found is None else _parse_record(str(found[0]).encode())[0]
                if earlier is not None:
                    return earlier
            row = tx.execute("SELECT line FROM xps_audit ORDER BY seq DESC LIMIT 1").fetchone()
            head = _Head(0, GENESIS)
            if row is not None:
                rec, why = _parse_record(row[0].encode())
                if rec is None:
                    raise AuditTampered(self.path, None, "malformed line",
                                        f"the last row of {self.name} xps_audit is not an audit record ({why}); "
                                        "the chain cannot be continued — run verify")
                self._signing_key(create=False)
                self._check_same_key(rec)
                head = _Head(rec["seq"], rec["hash"])
            every = self.checkpoint_every
            if head.seq:
                # One journal, one interval (see audit.journal): the newest checkpoint's.
                known = self._known_interval(self.name, head.seq)
                if known is None:
                    newest = _newest_checkpoint_row(tx, head.seq)
                    known = self._remember_interval(self.name, newest, self._interval_after(newest, head.seq))
                every = known
            written, main = self._build(head, None, event, fields, every=every)
            for r in written:
                tx.execute("INSERT INTO xps_audit (seq, time, line) VALUES (?, ?, ?)",
                           (r["seq"], r["time"], _canonical(r).decode("ascii")))
        if not self._published:
            self._signing_key()
        self._written(main)
        return main

    def _check_same_key(self, last: dict[str, Any]) -> None:
        """Refuse to extend a chain that another key signed (this node has the wrong audit.key)."""
        sig = last.get("rsig")
        if not isinstance(sig, str) or self._pub_hex is None:
            return
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self._pub_hex)).verify(bytes.fromhex(sig),
                                                                                  record_message(last))
        except (InvalidSignature, ValueError):
            raise KeyError_(f"audit journal {self.name}: this node's signing key {self.key_path} is not the "
                            "journal's (copy audit.key from a node of the fleet)") from None

    def check_writable(self) -> None:
        """Raise now what the next record would raise about the journal (its last row, this node's key)."""
        row = self.database.execute("SELECT line FROM xps_audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return
        rec, why = _parse_record(row[0].encode())
        if rec is None:
            raise AuditTampered(self.path, None, "malformed line", f"the last row is not an audit record ({why})")
        self._signing_key(create=False)
        self._check_same_key(rec)

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The newest ``n`` records, oldest first."""
        if type(n) is not int:
            raise PolicyError(f"n: expected an int, got {type(n).__name__}")
        if n <= 0:
            return []
        limit = min(n, 2**62)  # a huge n means all of them (and must fit a bigint)
        rows = self.database.execute("SELECT line FROM xps_audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return records_of(line for (line,) in reversed(rows))

    def mentions(self, event: str) -> bool:
        """Whether any row of the journal is a record of ``event``."""
        row = self.database.execute("SELECT 1 FROM xps_audit WHERE position(? in line) > 0 LIMIT 1",
                                    (_event_needle(event).decode("ascii"),)).fetchone()
        return row is not None

    def _read_all(self) -> tuple[bytes, bool]:
        rows = self.database.execute("SELECT line FROM xps_audit ORDER BY seq").fetchall()
        return b"".join(line.encode() + b"\n" for (line,) in rows), bool(rows)

    def close(self) -> None:
        """Close the database connections."""
        self.database.close()


def _newest_checkpoint_row(tx: Any, head_seq: int) -> dict[str, Any] | None:
    """The newest CHECKPOINT record at or below ``head_seq``, walking back; None if there is none.

    A row mentioning the text is not enough: a record may carry ``{"event": "CHECKPOINT"}`` in a
    field of its own, and taking that for the newest checkpoint refused every later append.
    """
    before = head_seq + 1
    while True:
        rows = tx.execute("SELECT seq, line FROM xps_audit WHERE seq < ? AND position(? in line) > 0 "
                          "ORDER BY seq DESC LIMIT 64", (before, '"event":"CHECKPOINT"')).fetchall()
        if not rows:
            return None
        for _seq, line in rows:
            rec = _parse_record(str(line).encode())[0]
            if rec is not None and rec.get("event") == CHECKPOINT:
                return rec
        before = rows[-1][0]
