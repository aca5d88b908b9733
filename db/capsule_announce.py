"""Capsule announcements between nodes: what one node enabled or rolled back, the others follow.

A node that enables a capsule publishes its bytes and an ``enable`` event; a real rollback (of
an enabled capsule: an operator's, the sampled check's, a fault's) publishes a ``rollback``.
Both go out in one transaction with ``pg_notify('xps_capsules', id)``. Every other node's
:class:`Announcer` wakes on the notification — or at its next poll, if the notification was
lost — reduces the new events to the last action per capsule, and:

- ``enable`` of a capsule not active here: hands the bytes to its own updater, which verifies
  signature, pins and policy and validates in its own child as for a dropped file — a node
  whose trust store or policy refuses the capsule stays as it is (and journals why);
- ``rollback`` of a capsule active here: rolls it back here — only if the event is signed by
  a node this one trusts: its own journal's key (a fleet sharing one journal key, as the
  PostgreSQL fleet does) or a key in ``peers``. An enable needs no such signature (each node
  verifies the capsule itself, and the bytes must hash to the event's sha256); a rollback
  carries nothing else to verify, so without one a database writer could take the fix out of
  every node. A refused rollback is journaled, and it still keeps a node that catches up from
  enabling that capsule by an earlier event; and an enable no trusted node signed never brings
  back a capsule a trusted node's rollback took out. A rollback made with ``to`` (a version the
  operator chose) names it, signed: followers restore that version, or, if they cannot, take
  the capsule out for the built-in provider and journal why. Such a signed rollback decides the
  capsule's name, not only the version it took out: a node that never had that version (it was
  away, or is new) still moves from whatever version of the name it serves to the chosen one,
  and enables of the name before the rollback are not followed. Only a signed event changes a
  signed decision: an unsigned rollback never cancels a signed one read with it, and an
  unsigned enable of a version such a rollback took out (any version of the name up to the one
  it rolled back) is journaled and not followed, in the same batch or a later one.

Event ids come from the table's sequence; a row above the highest id it handed out was given
its id by hand and is journaled and never followed (it would move every cursor past every later
event). An event's signature covers its id, and each node keeps the id it followed up to in its
home (:class:`~xpscerpto.db.announce_cursor.AnnounceCursor`): a signed event copied into a new
row does not verify (its id changed), and the original row is behind every cursor, so a
database writer cannot replay a rollback after an operator brought the capsule back. A
restarted node resumes after the events it followed. A node name belongs to one home: the
home's random id is recorded with the name (``xps_announce_nodes``), and another home started
under it is refused (both would skip each other's events as their own).

What a node does because of an announcement is not announced again (operator
``announce:NODE``), so the fleet converges without echo. Only committed changes are announced
(the updater's ``…_COMMITTED`` notification, after its state is saved). Announcing never blocks
an update on the database: the updater's listener writes the change to the home's outbox
(``announce.json``) and enqueues it; this object's thread talks to the database, in order, and
retries the first change until it is committed. A change dropped without being announced (too
many waiting, or its stored bytes unreadable) is journaled (``PATCH_REJECT``, reason
``not-announced``): the other nodes will not follow it. An announced enable this node refuses by
version memory while another capsule serves the same name or operation here is journaled as
``diverged``, naming both: the fleet then routes that operation to different capsules.

Example:
    >>> Announcer("postgresql://db/xps", updater, node="node-a").start()   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from xpscerpto.audit.journal import STATEMENT_PREFIX
from xpscerpto.capsules.format import _VERSION, parse_manifest, parse_version, read_container
from xpscerpto.capsules.updater import BUILT_IN, COMMITTED, Updater
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import STORES

from .announce_cursor import AnnounceCursor, Pending
from .migrations import open_migrated

__all__ = ["CHANNEL", "PREFIX", "Announcer"]

CHANNEL = "xps_capsules"
PREFIX = "announce:"
#: Events read per query: catching up after a long absence (or a flood) is done in slices.
BATCH = 500
#: Refusals journaled one by one per batch; the rest are counted in one record.
MAX_REFUSALS = 10
#: The longest node name an event may carry.
MAX_NODE = 200
#: The advisory lock a publisher holds from taking an event id to its commit: ids then become
#: visible in id order, so a follower past id N never misses an id below N still being written.
ANNOUNCE_LOCK = 0x7870_7300_0000_0004
_UNSIGNED_ENABLE = ("an announced enable of a capsule a trusted node rolled back (that capsule, or its version by a "
                    "rollback that chose another version of the name) is not signed by a node this one trusts; "
                    "not followed")
_UNSIGNED_ROLLBACK = ("an announced rollback is not signed by a node this one trusts (its own journal key or a "
                      "configured peer); not followed")
_UNSIGNED_OWN_ROLLBACK = ("an announced rollback names this node, but this node did not sign it (written outside "
                          "xps?); not followed")


class Announcer:
    """Publish this node's capsule changes; follow the other nodes' (see the module docstring).

    Args:
        database: ``postgresql://…`` (migration 11 applied).
        updater: this node's updater.
        node: this node's name (unique in the fleet).
        poll: seconds between polls when no notification comes.
        peers: Ed25519 public keys (32 raw bytes each: the other nodes' journal keys, their
            ``audit.pub``) whose rollbacks this node follows, besides its own journal's key.

    Raises:
        PolicyError: a bad node name or peer key; the database is not migrated; the home's
            announcement cursor is damaged, or another node's or database's.
    """

    def __init__(self, database: str, updater: Updater, *, node: str, poll: float = 2.0,
                 peers: Iterable[bytes] = ()) -> None:
        if not _is_node(node):
            raise PolicyError(f"node: expected a printable ASCII name of 1 to {MAX_NODE} characters")
        if isinstance(peers, (str, bytes, bytearray, memoryview)) or not isinstance(peers, Iterable):
            raise PolicyError("peers: expected a list of 32-byte Ed25519 public keys")
        self._peers = [_peer_key(k) for k in peers]
        self.database = open_migrated(database, 11, "announcement database")
        try:
            # The database by its name on the server, not by how this DSN spells the host: a
            # standby's address, or localhost for 127.0.0.1, is the same fleet's table.
            row = self.database.execute("SELECT current_database()").fetchone()
            self._cursor = AnnounceCursor(updater.home, node=node, database=str(row[0]) if row else "")
            self._seen = self._cursor.load()
        except BaseException:
            self.database.close()
            raise
        self.updater = updater
        self.node = node
        self.poll = poll
        # This node's changes to announce, oldest first; the cursor file keeps a copy (the outbox).
        self._outgoing: deque[Pending] = deque(self._cursor.pending)
        # Changes the outbox file dropped for room (the updater's thread adds them): this
        # object's thread takes them out of the queue too, and journals them.
        self._dropped: deque[Pending] = deque()
        self._not_announced = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xps-announce-{node}", daemon=True)
        self.last_error: str | None = None
        self._forged_told: tuple[int, ...] = ()  # the rows above the sequence last journaled
        updater.add_event_listener(self._on_event)

    @property
    def pending(self) -> int:
        """This node's changes waiting to be announced (the database away, or slow)."""
        return len(self._outgoing)

    @property
    def not_announced(self) -> int:
        """This node's changes dropped without being announced since this object was made
        (each journaled as ``PATCH_REJECT`` ``not-announced``): the other nodes diverge."""
        return self._not_announced

    def _on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        operator = str(fields.get("operator", ""))
        if operator.startswith(PREFIX):
            return  # we did this because another node announced it
        # Committed changes only: one announced before its save told the fleet of a change that
        # a failed save (or a kill -9 during it) then undid here.
        if event == "PATCH_ENABLE" + COMMITTED:
            action = "enable"
        elif event == "PATCH_ROLLBACK" + COMMITTED and "to" in fields and "phase" not in fields:
            action = "rollback"  # a real rollback, not a trial's refusal
        else:
            return
        to = fields.get("requested_to")
        item = (action, str(fields.get("sha256", "")), str(fields.get("name", "")), str(fields.get("version", "")),
                to if isinstance(to, str) else "")
        if not _is_sha256(item[1]) or not all(0 < len(f) <= 256 for f in item[2:4]) \
                or not (item[4] == "" or _is_target(item[4])):
            self.last_error = "XPS_ERR_INTERNAL: announcements: a change without a readable capsule; not announced"
            return
        # Into the outbox file first: a change made while the database is away, or just before a
        # kill -9, is announced after the restart instead of being lost with this process.
        try:
            dropped = self._cursor.add(item)
            if dropped is not None:
                self._dropped.append(dropped)
        except XpsError as exc:  # the updater's change stands: announced if this process lives on
            self.last_error = str(exc)
        self._outgoing.append(item)
        self._wake.set()

    def start(self) -> Announcer:
        """Catch up with what was announced while this node was away, then follow.

        Raises:
            PolicyError: the cursor is past the newest event (the table was reset, or restored
                from an older backup): following it would skip every new event unseen; this
                home has no cursor file under a node name that followed this database before;
                or another home claimed this node name.
            UpdateError: the first cursor file cannot be written.
        """
        try:
            # The newest id the sequence handed out: a cursor past it was moved there by a row
            # inserted with an id by hand (by an earlier release), and would skip every new event.
            row = self.database.execute("SELECT coalesce(max(id), 0) FROM xps_capsule_events WHERE id <= ?",
                                        (self._handed_out(),)).fetchone()
            newest = int(row[0]) if row else 0
            if self._seen > newest:
                raise PolicyError(f"announce cursor {str(self._cursor.path)!r}: this node followed events up to id "
                                  f"{self._seen}, the database's newest is {newest} (the table was reset or "
                                  "restored from an older backup, or a row was inserted with an id outside its "
                                  "sequence); restore the database, or the home from a backup taken with it")
            self._claim_name()
            self.database.listen(CHANNEL, lambda _payload: self._wake.set(), on_reconnect=self._wake.set)
        except BaseException:
            self.database.close()  # the caller never gets this object back to stop() it
            raise
        self._thread.start()
        return self

    def _claim_name(self) -> None:
        """Claim this node name for this home in the database; refuse a name another home claimed.

        Each node skips the events that name it (its own changes): a second home under the same
        name (the default ``local`` on two machines, a copied unit file) followed neither the
        other's changes nor was followed, silently. And a home that lost its cursor file looked
        like a new node: it followed every event again from the first (an old signed rollback
        then took out a capsule an operator had brought back since).
        """
        row = self.database.execute("SELECT home FROM xps_announce_nodes WHERE node = ?", (self.node,)).fetchone()
        if row is not None and not self._cursor.existed:
            raise PolicyError(f"announce cursor {str(self._cursor.path)!r}: missing, though node {self.node!r} "
                              "followed this database before (another home uses this name, or this home's file "
                              "was deleted); start this home under another node name (xps watch --node), or "
                              f"{STORES['announce_cursor'][1]}")
        if row is not None and row[0] is not None and row[0] != self._cursor.home_id:
            raise self._name_taken()
        if self._cursor.home_id is None:
            # The file first: killed before the row is written, the name is only not yet claimed
            # (a file written by an earlier release gets its id here, once).
            self._cursor.claim(secrets.token_hex(16), self._seen)
        mine = self._cursor.home_id
        self.database.execute("INSERT INTO xps_announce_nodes (node, home) VALUES (?, ?) ON CONFLICT DO NOTHING",
                              (self.node, mine))
        # A name an earlier release claimed recorded no home: the first home to start under it
        # since (one that followed under it: its cursor file exists) takes it.
        self.database.execute("UPDATE xps_announce_nodes SET home = ? WHERE node = ? AND home IS NULL",
                              (mine, self.node))
        row = self.database.execute("SELECT home FROM xps_announce_nodes WHERE node = ?", (self.node,)).fetchone()
        if row is None or row[0] != mine:  # another home claimed it in the meantime
            raise self._name_taken()

    def _name_taken(self) -> PolicyError:
        return PolicyError(f"node: {self.node!r} is the name of another home on announcement database "
                           f"{self.database.name} (each would skip the other's changes as its own); start this "
                           "home under another node name (xps watch --node)")

    def stop(self) -> None:
        """Stop following and close the connections."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.database.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._publish()
                self._follow()
                self.last_error = None
            except XpsError as exc:  # the database away: keep what is queued, retry later
                self.last_error = str(exc)
            except Exception as exc:  # a bug must not end announcements for good
                self.last_error = f"XPS_ERR_INTERNAL: {type(exc).__name__}"
            self._wake.wait(self.poll)
            self._wake.clear()

    def _publish(self) -> None:
        while self._dropped:
            dropped = self._dropped.popleft()
            if dropped in self._outgoing:  # else announced meanwhile, before the drop reached here
                self._journal_not_announced(dropped, "too many changes waited for the database; the oldest "
                                                     "was dropped")
                self._outgoing.remove(dropped)
                self._not_announced += 1  # after: a reader counting it no longer finds it waiting
        while self._outgoing:
            item = self._outgoing[0]
            # In order, the first one again at the next round if it fails: an enable and the
            # rollback after it must reach the table in that order (putting the failed one at the
            # back swapped them, and the fleet then followed the enable).
            raw = None
            if item[0] == "enable":
                try:
                    raw = self.updater.store.get(item[1])
                except XpsError as exc:
                    # Its bytes are gone from this home (a damaged store): there is nothing to
                    # announce, and the changes after it must not wait on it for ever.
                    self._journal_not_announced(item, f"its stored bytes are unreadable: {exc.code}")
                    self._outgoing.popleft()
                    self._not_announced += 1
                    with contextlib.suppress(XpsError):
                        self._cursor.done(item)
                    continue
            self._announce(*item, raw)
            self._outgoing.popleft()
            try:
                self._cursor.done(item)
            except XpsError as exc:  # announced again after a restart: followers treat it as once
                self.last_error = str(exc)

    def _journal_not_announced(self, item: Pending, why: str) -> None:
        """Journal that this node's change ``item`` will never reach the other nodes (before it
        leaves the queue: whoever no longer finds it waiting finds the record)."""
        action, sha, name, version, _ = item
        self.last_error = f"XPS_ERR_UPDATE: announcements: {action} of capsule {sha[:12]} not announced ({why})"
        try:
            # The change stands here; the fleet will not follow it: the operator must repeat it
            # on the other nodes (a last_error nobody reads was the only trace before).
            self.updater.audit.record("PATCH_REJECT", phase="announce", action=action, sha256=sha, name=name,
                                      version=version, operator=PREFIX + self.node, reason="not-announced",
                                      detail=f"this node's {action} of this capsule was not announced ({why}); "
                                             "the other nodes do not follow it: repeat it on them")
        except XpsError as exc:
            self.last_error = str(exc)

    def _announce(self, action: str, sha: str, name: str, version: str, to: str, raw: bytes | None) -> None:
        with self.database.transaction(lock=ANNOUNCE_LOCK) as tx:
            if raw is not None:
                tx.execute("INSERT INTO xps_capsules (sha256, raw, name, version, node) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT DO NOTHING", (sha, raw, name, version, self.node))
            # The id first, then the signature over it, in one transaction: no node ever reads
            # the row unsigned, and a copy of it in another row does not verify.
            row = tx.execute("INSERT INTO xps_capsule_events (action, sha256, name, version, node, restore_to) "
                             "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                             (action, sha, name, version, self.node, to or None)).fetchone()
            event_id = int(row[0]) if row else 0
            signer, sig = self.updater.audit.sign_statement(_statement(action, sha, name, version, self.node,
                                                                       event_id, to))
            tx.execute("UPDATE xps_capsule_events SET signer = ?, sig = ? WHERE id = ?",
                       (signer.hex(), sig.hex(), event_id))
            tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(event_id)))

    def _follow(self) -> None:
        while self._follow_batch():
            pass

    def _follow_batch(self) -> bool:
        """Follow the next ``BATCH`` events; True if there may be more."""
        rows = self.database.execute("SELECT id, action, sha256, name, version, node, signer, sig, restore_to "
                                     "FROM xps_capsule_events WHERE id > ? ORDER BY id LIMIT ?",
                                     (self._seen, BATCH)).fetchall()
        # Read after the rows, never before: an id those rows show was taken before the query
        # ran, so the sequence now stands at or above every id a publisher got from it.
        handed = self._handed_out()
        # A row above that was given its id by hand (a database writer): following it would move
        # the cursor past every id the sequence will ever hand out, and no node would follow a
        # later event again. Such ids sort after all the others, so the rest stay in order.
        self._refuse_forged([int(r[0]) for r in rows if int(r[0]) > handed])
        rows = [r for r in rows if int(r[0]) <= handed]
        if not rows:
            return False
        # sha256 -> its newest (action, node, event id, signed by a node this one trusts, to)
        last: dict[str, tuple[str, str, int, bool, str | None]] = {}
        names: dict[str, str] = {}  # sha256 -> its capsule name
        versions: dict[str, str] = {}  # sha256 -> its version
        # capsule name -> (sha256, node, event id, to, version rolled back) of the newest signed
        # rollback naming a `to`
        decided: dict[str, tuple[str, str, int, str, str]] = {}
        malformed = 0
        refusals: list[tuple[str, str, str, str]] = []  # (sha256, node, reason, detail)
        trusted = self._trusted()
        for event_id, action, sha, name, version, node, signer, sig, to in rows:
            # Anyone who can write the table can write anything into it: a row we cannot read is
            # counted, never echoed, and never stops the rows after it (one oversized sha256 used
            # to fail its own refusal record at every poll, so no node followed anything again).
            if action not in ("enable", "rollback") or not _is_sha256(sha) or not _is_node(node) \
                    or not isinstance(name, str) or not isinstance(version, str) \
                    or not (to is None or (action == "rollback" and _is_target(to))):
                malformed += 1
                continue
            signed = _event_signed(trusted, (action, sha, name, version, node, event_id, to), signer, sig)
            if action == "rollback" and not signed:
                # Journaled even when it names this node: this node signs its own rows, so an
                # unsigned one under its name was written outside xps (skipping it silently hid
                # that a rollback read with it had been cancelled).
                refusals.append((sha, node, "untrusted",
                                 _UNSIGNED_ROLLBACK if node != self.node else _UNSIGNED_OWN_ROLLBACK))
                # Not followed, but it still ends the enables before it: a node catching up must
                # not enable a capsule the fleet rolled back since (an unsigned rollback from an
                # earlier release, or one by a node this one does not trust). Blocking is the safe
                # side: whoever can insert the row could as well delete the enable. It only ever
                # weakens an enable: a signed rollback read before it stands (replaced by
                # "blocked", it was never followed, and the fleet's rollback was undone here).
                if last.get(sha, ("",))[0] != "rollback":
                    last[sha] = ("blocked", node, event_id, False, None)
                    names[sha] = name
                continue
            decision = decided.get(name)
            if action == "enable" and not signed and (
                    last.get(sha, ("",))[0] == "rollback"
                    or (decision is not None and not _newer(version, decision[4]))):
                # An enable slipped in after a signed rollback must not cancel it (on a node
                # still serving the capsule, the rollback would never be followed), nor bring
                # back a version a signed `rollback --to` took out of the name.
                refusals.append((sha, node, "untrusted", _UNSIGNED_ENABLE))
                continue
            if action == "rollback" and to is not None:
                # The operator chose the version of this name the fleet serves: an earlier enable
                # of the name (a version the rollback skipped, on a node catching up) is superseded.
                for earlier in [s for s, e in last.items() if e[0] == "enable" and names.get(s) == name]:
                    del last[earlier]
                decided[name] = (sha, node, event_id, to, version)
            else:
                # A later change of the name decides instead: a signed one, or (unsigned but
                # verified by each node) an enable newer than every version the decision took out.
                decided.pop(name, None)
            last[sha] = (action, node, event_id, signed, to)
            names[sha] = name
            versions[sha] = version
        active = {a.sha256 for a in self.updater.state.active}
        for sha, (action, node, event_id, signed, to) in last.items():
            if node == self.node:
                continue
            if action == "enable" and sha not in active:
                refusal = self._follow_enable(sha, names[sha], versions[sha], node, event_id, signed, rows[-1][0],
                                              trusted)
                if refusal is not None:
                    refusals.append((sha, node, *refusal))
            elif action == "rollback" and sha in active and decided.get(names[sha], ("",))[0] != sha:
                refusal = self._follow_rollback(sha, node, to)
                if refusal is not None:
                    refusals.append((sha, node, *refusal))
            elif action == "rollback" and sha not in active and signed:
                # Taken out of the fleet while this node had moved on from it: a later plain
                # rollback here must not bring it back as "the version it replaced".
                self.updater.withdraw(sha, operator=PREFIX + node, reason=f"rolled back on {node}")
        for name, (sha, node, _, to, _) in decided.items():
            if node != self.node:
                refusal = self._follow_restore(name, node, to)
                if refusal is not None:
                    refusals.append((sha, node, *refusal))
        # Refusals are journaled per batch, a bounded number of them: a flood of forged rows
        # must not become a flood of journal records.
        for sha, node, reason, detail in refusals[:MAX_REFUSALS]:
            self.updater.audit.record("PATCH_REJECT", phase="announce", sha256=sha, source=node,
                                      operator=PREFIX + node, reason=reason, detail=detail)
        skipped = malformed + max(0, len(refusals) - MAX_REFUSALS)
        if skipped:
            self.updater.audit.record("PATCH_REJECT", phase="announce", operator=PREFIX + "database",
                                      reason="malformed", first_id=rows[0][0], last_id=rows[-1][0],
                                      detail=f"{skipped} announcement row(s) ignored: unreadable or unsigned (edited "
                                             "outside xps?), or their capsule bytes are missing or altered")
        self._seen = rows[-1][0]
        self._cursor.save(self._seen)  # after acting: a crash before it repeats the batch, which is idempotent
        return len(rows) == BATCH

    def _follow_enable(self, sha: str, name: str, version: str, node: str, event_id: int, signed: bool,
                       newest: int, trusted: list[Ed25519PublicKey]) -> tuple[str, str] | None:
        """Enable the announced capsule here; (reason, detail) of a refusal to journal, or None."""
        # A database error here propagates: the events stay unseen and the next round
        # retries them (the capsules already enabled are skipped then).
        if self.database.execute("SELECT 1 FROM xps_capsule_events WHERE sha256 = ? AND id > ? LIMIT 1",
                                 (sha, newest)).fetchone() is not None:
            # A later event of this capsule decides (a node catching up must not enable
            # what a rollback in a later batch took out, verified or not).
            return None
        if not signed and self._rolled_back(sha, name, version, event_id, trusted):
            # Anyone who can write the table could otherwise bring back, on a node that was
            # away or is new, a capsule the fleet took out with a signed rollback.
            return "untrusted", _UNSIGNED_ENABLE
        raw = self.database.execute("SELECT raw FROM xps_capsules WHERE sha256 = ?", (sha,)).fetchone()
        if raw is None:  # an event without its bytes: the table was edited outside xps
            return "malformed", "announced capsule bytes are missing from the database"
        data = bytes(raw[0])
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha):
            # Other bytes under this event's name (publisher-signed, maybe, but not the capsule
            # the announcing node enabled).
            return "malformed", "announced capsule bytes do not match the event's sha256"
        try:
            self.updater.apply(data, source=f"announced by {node}", operator=PREFIX + node)
        except XpsError as exc:  # refused here: journaled by the updater
            if exc.reason == "rollback":
                return self._diverged(sha, data)
        return None

    def _diverged(self, sha: str, data: bytes) -> tuple[str, str] | None:
        """("diverged", detail) if another capsule serves the refused one's name or an operation
        of it here: the announcing node and this one now route it to different capsules."""
        with contextlib.suppress(XpsError):
            manifest = parse_manifest(read_container(data).manifest_bytes)
            for other in reversed(self.updater.state.active):
                shared = sorted(set(other.operations) & set(manifest.operations))
                if other.sha256 != sha and (other.name == manifest.name or shared):
                    what = ", ".join(shared) if shared else "the same capsule name"
                    return "diverged", (f"announced capsule {sha} is refused here by version memory while capsule "
                                        f"{other.sha256} serves {what}: the announcing node and this one route it "
                                        "to different capsules until a newer version reaches both")
        return None

    def _follow_rollback(self, sha: str, node: str, to: str | None) -> tuple[str, str] | None:
        """Roll the capsule back here as announced; (reason, detail) of a refusal to journal, or None."""
        operator, reason = PREFIX + node, f"rolled back on {node}"
        try:
            self.updater.rollback(sha, to=to, operator=operator, reason=reason)
        except XpsError as exc:
            if to is None or to == BUILT_IN:
                return None  # nothing matched here any more, or refused: the updater says why
            # The announcing operator chose that version; this node cannot serve it (never
            # enabled here, or refused now). Guessing another one could bring back the very
            # version the operator skipped: the capsule still goes, the built-in provider serves.
            with contextlib.suppress(XpsError):
                self.updater.rollback(sha, to=BUILT_IN, operator=operator,
                                      reason=f"{reason}; {to} cannot be restored here, built-in provider serves")
            return "restore", (f"the announced rollback restores version {to}, which this node cannot restore "
                               f"({exc.code}); the built-in provider serves instead")
        return None

    def _follow_restore(self, name: str, node: str, to: str) -> tuple[str, str] | None:
        """Serve version ``to`` of capsule ``name`` here, as a signed rollback chose; (reason, detail)
        of a refusal to journal, or None."""
        operator, reason = PREFIX + node, f"rolled back on {node}"
        cap = next((a for a in reversed(self.updater.state.active) if a.name == name), None)
        if (cap.version if cap is not None else BUILT_IN) == to:
            return None
        code = "XPS_ERR_UPDATE"
        if cap is not None:
            try:
                self.updater.rollback(cap.sha256, to=to, operator=operator, reason=reason)
                return None
            except XpsError as exc:
                if to == BUILT_IN:
                    return None  # refused: the updater says why
                code = exc.code
        if to != BUILT_IN:
            # Never enabled here (this node was away, or is new): the announced bytes of that
            # version, verified here as any announced enable.
            failed = self._apply_stored(name, to, node)
            if failed is None:
                return None
            code = failed if cap is None else code
        if cap is not None:
            # Guessing another version could bring back the very one the operator skipped.
            with contextlib.suppress(XpsError):
                self.updater.rollback(cap.sha256, to=BUILT_IN, operator=operator,
                                      reason=f"{reason}; {to} cannot be restored here, built-in provider serves")
        return "restore", (f"the announced rollback restores version {to}, which this node cannot restore "
                           f"({code}); the built-in provider serves instead")

    def _apply_stored(self, name: str, version: str, node: str) -> str | None:
        """Enable ``name`` ``version`` from the bytes announced to the database; None, or why not."""
        code = "XPS_ERR_UPDATE"
        for sha, raw in self.database.execute("SELECT sha256, raw FROM xps_capsules WHERE name = ? AND version = ? "
                                              "ORDER BY sha256 LIMIT 10", (name, version)).fetchall():
            data = bytes(raw)
            if not isinstance(sha, str) or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha):
                continue
            try:
                # The row's name and version are anyone's writing: the capsule's own manifest
                # must be the chosen version, or another one would be enabled in its place.
                manifest = parse_manifest(read_container(data).manifest_bytes)
                if (manifest.name, manifest.version) != (name, version):
                    continue
                self.updater.apply(data, source=f"announced by {node}", operator=PREFIX + node)
                return None
            except XpsError as exc:  # refused here: journaled by the updater
                code = exc.code
        return code

    def _rolled_back(self, sha: str, name: str, version: str, before: int,
                     trusted: list[Ed25519PublicKey]) -> bool:
        """Whether an event before id ``before``, signed by a trusted node, took out an enable of
        capsule ``sha`` (``name`` ``version``): a rollback of that capsule, or a ``rollback --to``
        of the name that no later signed event of the name superseded and that took out that
        version (one not newer than the version it rolled back)."""
        claimed = {k.public_bytes_raw().hex() for k in trusted}
        rows = self.database.execute(
            "SELECT id, action, sha256, name, version, node, signer, sig, restore_to FROM xps_capsule_events "
            "WHERE (sha256 = ? OR name = ?) AND id < ? AND signer IS NOT NULL ORDER BY id",
            (sha, name, before)).fetchall()
        decision: str | None = None  # the version a standing signed `rollback --to` of the name rolled back
        for r in rows:
            # Only rows naming a trusted signer are worth a verification.
            if not (r[6] in claimed and r[1] in ("enable", "rollback") and isinstance(r[2], str)
                    and isinstance(r[3], str) and isinstance(r[4], str) and _is_node(r[5])
                    and (r[8] is None or (r[1] == "rollback" and _is_target(r[8])))
                    and _event_signed(trusted, (r[1], r[2], r[3], r[4], r[5], r[0], r[8]), r[6], r[7])):
                continue
            if r[1] == "rollback" and r[2] == sha:
                return True
            if r[3] == name:  # as in a batch: the newest signed change of the name decides
                decision = r[4] if r[1] == "rollback" and r[8] is not None else None
        return decision is not None and not _newer(version, decision)

    def _handed_out(self) -> int:
        """The highest event id the table's sequence has handed out (0: none yet)."""
        row = self.database.execute("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence("
                                    "'xps_capsule_events', 'id')::regclass), 0)").fetchone()
        return int(row[0]) if row else 0

    def _refuse_forged(self, ids: list[int]) -> None:
        """Journal rows whose ids the sequence never handed out: once while they stay the same."""
        if not ids or tuple(ids) == self._forged_told:
            return
        self._forged_told = tuple(ids)
        self.updater.audit.record("PATCH_REJECT", phase="announce", operator=PREFIX + "database",
                                  reason="forged", first_id=ids[0], count=len(ids),
                                  detail=f"{len(ids)} announcement row(s) carry an id the event sequence never "
                                         "handed out (inserted outside xps); not followed, and this node's "
                                         "cursor does not move past them")

    def _trusted(self) -> list[Ed25519PublicKey]:
        keys = list(self._peers)
        with contextlib.suppress(XpsError):  # no journal key yet: only the configured peers
            keys.append(Ed25519PublicKey.from_public_bytes(self.updater.audit.public_key()))
        return keys


def _statement(action: str, sha: str, name: str, version: str, node: str, event_id: object, to: str = "") -> bytes:
    """What an event's signature covers, its id and a rollback's ``to`` ("": none) included
    (each field length-prefixed)."""
    return _encode(b"capsule-event/3", action, sha, name, version, node, to, str(event_id))


def _statement_v2(action: str, sha: str, name: str, version: str, node: str, event_id: object) -> bytes:
    """What an event signed before rollbacks named a version covered (migration 9's rows)."""
    return _encode(b"capsule-event/2", action, sha, name, version, node, str(event_id))


def _encode(tag: bytes, *fields: str) -> bytes:
    # surrogatepass: whatever a row holds encodes (a UnicodeEncodeError would stop following).
    parts = [tag, *(f.encode("utf-8", "surrogatepass") for f in fields)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _event_signed(trusted: list[Ed25519PublicKey], event: tuple[str, str, str, str, str, int, str | None],
                  signer: object, sig: object) -> bool:
    """Whether a trusted node signed ``event`` (action, sha256, name, version, node, id, to)."""
    action, sha, name, version, node, event_id, to = event
    if _signed(trusted, _statement(action, sha, name, version, node, event_id, to or ""), signer, sig):
        return True
    # Signed by an earlier release: its statement names no version to restore, so it stands
    # only for a row that names none (a plain rollback); a `to` added to such a row fails.
    return to is None and _signed(trusted, _statement_v2(action, sha, name, version, node, event_id), signer, sig)


def _signed(trusted: list[Ed25519PublicKey], statement: bytes, signer: object, sig: object) -> bool:
    if not isinstance(signer, str) or not isinstance(sig, str) or len(signer) != 64 or len(sig) != 128:
        return False
    try:
        signer_raw, sig_raw = bytes.fromhex(signer), bytes.fromhex(sig)
    except ValueError:
        return False
    for key in trusted:
        if hmac.compare_digest(key.public_bytes_raw(), signer_raw):
            try:
                key.verify(sig_raw, STATEMENT_PREFIX + statement)
            except InvalidSignature:
                return False
            return True
    return False


def _peer_key(value: object) -> Ed25519PublicKey:
    if type(value) is not bytes or len(value) != 32:
        raise PolicyError("peers: expected 32-byte Ed25519 public keys (raw bytes)")
    try:
        return Ed25519PublicKey.from_public_bytes(value)
    except ValueError:
        raise PolicyError("peers: not an Ed25519 public key") from None


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_node(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NODE and value.isprintable() and value.isascii()


def _newer(version: str, than: str) -> bool:
    """Whether capsule version ``version`` is above ``than`` (False if either is unreadable)."""
    try:
        return parse_version(version) > parse_version(than)
    except XpsError:
        return False


def _is_target(value: object) -> bool:
    """A rollback's ``to``: a capsule version, or the built-in provider."""
    return isinstance(value, str) and (value == BUILT_IN or _VERSION.fullmatch(value) is not None)
