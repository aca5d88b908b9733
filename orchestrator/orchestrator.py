"""Scheduled and emergency key rotation across nodes sharing one PostgreSQL keyring.

Every node runs an :class:`Orchestrator`; the one holding the ``orchestrator`` lease rotates.
A tick, for each plan that is not paused, asks the schedule for the latest due time (database
clock) and, if no run is recorded for it, rotates the key *and* records the run in one
transaction. The record is inserted by a fenced statement (:data:`~.lease.FENCE`): a leader
whose lease lapsed inserts nothing, raises, and its whole rotation rolls back. A run recorded
for (plan, due time) makes every later tick — a retry after a crash, another node, a skewed
clock — skip it: exactly one new key version per due time.

Example:
    >>> orch = Orchestrator(ring, node="node-a")                         # doctest: +SKIP
    >>> orch.track(Plan("orders-monthly", key="orders", policy="monthly", grace="7d"))
    >>> orch.start()                                                     # ticks every second
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._atomic import atomic_write
from xpscerpto._config_fields import show
from xpscerpto._stored_file import read_stored
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.db.counter_store import CounterStore
from xpscerpto.db.migrations import require
from xpscerpto.db.postgres import Database
from xpscerpto.errors import InternalError, PolicyError, XpsError
from xpscerpto.keyring import Keyring, VersionState
from xpscerpto.keyring.envelope import HEADER
from xpscerpto.keyring.store import Connection

from .lease import FENCE, Lease, LeaseState
from .schedule import Schedule, parse_seconds

if TYPE_CHECKING:
    from xpscerpto.metrics import Metrics

    from .pq_rollout import PqRollout
    from .suite_migration import SuiteMigration

__all__ = ["LEASE", "SCHEMA", "Fenced", "Orchestrator", "Plan", "adopt_orchestration", "adopt_rows", "node_of",
           "review_orchestration"]

LEASE = "orchestrator"
#: The schema migration the orchestration needs (8: its rows are sealed).
SCHEMA = 8
_SUITES = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305")


def adopt_rows(keyring: Keyring) -> None:
    """Mark a database an earlier release migrated as sealed, if it holds no orchestration row
    (journaled as ``KEYRING_SEALED`` with ``scope: orchestration``); nothing if it is marked.

    Raises:
        UnsealedRows: it holds rows: only :func:`adopt_orchestration` (``xps orch adopt``), once
            an operator reviewed them, seals them (a database writer's rows look the same).
        KeyringTampered: sealed rows in a database not marked as sealed (see
            :func:`~xpscerpto.db.sealed_tables.adopt`).
    """
    _adopt(keyring, rows=False)


def review_orchestration(keyring: Keyring) -> tuple[list[tuple[str, dict[str, Any]]], str] | None:
    """The orchestration rows :func:`adopt_orchestration` would seal, each as (table, every
    column), and their fingerprint (``sha256:…``) to pass as its ``expect``; None if the rows
    are sealed already. Seals nothing (``xps orch adopt --review``).

    Example:
        >>> rows, fp = review_orchestration(ring)                      # doctest: +SKIP
        >>> adopt_orchestration(ring, expect=fp)                       # doctest: +SKIP

    Raises:
        PolicyError: not a keyring on PostgreSQL, or the schema lacks migration 8.
        KeyringTampered: as :func:`adopt_orchestration`.
    """
    require(_database(keyring), SCHEMA, "orchestrator database")
    with keyring.store.snapshot() as db:
        return sealed.review(keyring.store, db)


def adopt_orchestration(keyring: Keyring, *, expect: str | None = None) -> list[tuple[str, tuple[Any, ...]]] | None:
    """Seal the orchestration rows of a database an earlier release wrote, once: the operator's
    step after reviewing them (journaled as ``KEYRING_SEALED`` with ``scope: orchestration``).

    Args:
        expect: the fingerprint :func:`review_orchestration` showed the operator; the rows are
            sealed only if they are still exactly those (a row a database writer inserted after
            the review is refused, not sealed with them). None seals whatever rows are there.

    Returns (table, primary key) of each row sealed, or None if the rows are sealed already.

    Raises:
        PolicyError: not a keyring on PostgreSQL, the schema lacks migration 8, or ``expect``
            is not a fingerprint (``sha256:`` and 64 hex digits).
        RowsChanged: ``expect`` is not the rows' fingerprint; nothing is sealed.
        KeyringTampered: the roster does not add up, or sealed rows in a database not marked
            as sealed.
    """
    if expect is not None and not (isinstance(expect, str) and _FINGERPRINT.fullmatch(expect)):
        raise PolicyError("expect: expected a fingerprint, 'sha256:' and 64 lowercase hex digits "
                          "(from `xps orch adopt --review`)")
    require(_database(keyring), SCHEMA, "orchestrator database")
    return _adopt(keyring, rows=True, expect=expect)


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


def _adopt(keyring: Keyring, *, rows: bool, expect: str | None = None) -> list[tuple[str, tuple[Any, ...]]] | None:
    with keyring.store.snapshot() as db:
        if keyring.store.meta(sealed.MARK, db) is not None:
            return None
    with keyring.store.write() as db:
        done = sealed.adopt(keyring.store, db, rows=rows, expect=expect)
        if done is not None:
            counts: dict[str, int] = {}
            for table, _ in done:
                counts[table] = counts.get(table, 0) + 1
            keyring.outbox.add(db, "KEYRING_SEALED", scope="orchestration", rows=len(done), tables=counts,
                               operator=keyring.operator)
    if done is not None:
        keyring.outbox.deliver()
    return done


def _database(keyring: Keyring) -> Database:
    """The keyring's PostgreSQL database (orchestration needs the nodes to share one)."""
    database = getattr(keyring.store, "database", None) if isinstance(keyring, Keyring) else None
    if not isinstance(database, Database):
        raise PolicyError("keyring.database: the orchestrator needs a postgresql:// keyring (nodes share it)")
    return database


def _plan_name(value: object, field: str) -> str:
    """A plan's or key's name as stored: printable (so no lone surrogate the database cannot
    encode), 1 to 200 characters."""
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise PolicyError(f"{field}: expected a printable str of 1 to 200 characters")
    return value


def node_of(holder: str | None) -> str | None:
    """The node name of a lease holder ``node#instance``."""
    return None if holder is None else holder.split("#", 1)[0]


_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MAX_TTL = 86400.0
#: Where ``start()`` records the running instance in the home (for ``xps orch emergency``).
INSTANCE_FILE = "orchestrator.instance"


class Fenced(PolicyError):
    """A write by a node that no longer holds the lease (its token is stale): refused."""

    reason = "fenced"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to rotate, when, and into which suite.

    Args:
        name: the plan's name (unique across the fleet).
        key: the keyring key it rotates.
        policy: ``monthly`` (UTC 00:00 on the 1st) or ``every=N`` (``30d``, ``12h``, ``90s``).
        grace: how long a retired version keeps decrypting before hygiene may archive it.
        suite: the AEAD of the versions it creates (None: the key's current one).
        kek: the KEK provider the keyring wraps them under (``file`` or ``pkcs11``).

    Raises:
        PolicyError: any field malformed (the message names it).
    """

    name: str
    key: str
    policy: str
    grace: str | float = "7d"
    suite: str | None = None
    kek: str = "file"

    def __post_init__(self) -> None:
        _plan_name(self.name, "name")
        _plan_name(self.key, "key")
        Schedule.parse(self.policy)
        parse_seconds(self.grace, "grace")
        if self.suite is not None and self.suite not in _SUITES:
            raise PolicyError(f"suite: expected one of {', '.join(_SUITES)}")
        if self.kek not in ("file", "pkcs11"):
            raise PolicyError("kek: expected 'file' or 'pkcs11'")

    @property
    def schedule(self) -> Schedule:
        """The parsed policy."""
        return Schedule.parse(self.policy)


class Orchestrator:
    """Track plans and rotate on schedule while this node holds the lease.

    Args:
        keyring: a keyring on a PostgreSQL store (``keyring.database: postgresql://…``).
        node: this node's name (unique in the fleet).
        lease_ttl: seconds; the leader renews every tick, a dead leader's lease moves after it.
        interval: seconds between ticks.
        metrics: this process's :class:`~xpscerpto.metrics.Metrics` (channel handshakes and the
            rest), shared with the fleet at every tick beside the keyring's decrypt counts, so a
            canary decision on the leader reads every node's numbers.

    Raises:
        PolicyError: the keyring is not on PostgreSQL, or the schema lacks migration 8.
        UnsealedRows: orchestration rows no keyring sealed, in a database an earlier release
            wrote: an operator reviews them and runs ``xps orch adopt`` (see :func:`adopt_rows`).
        KeyringTampered: the orchestration rows' seals are damaged.
    """

    def __init__(self, keyring: Keyring, *, node: str, lease_ttl: float = 10.0, interval: float = 1.0,
                 metrics: Metrics | None = None) -> None:
        database = _database(keyring)
        if not isinstance(node, str) or not _NODE.fullmatch(node):
            # '#' separates node and instance in the lease holder: "a#b" would lead as "a".
            raise PolicyError("node: expected 1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter "
                              "or digit")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float) or not 0 < lease_ttl <= _MAX_TTL:
            raise PolicyError(f"lease_ttl: expected seconds above 0 and at most {_MAX_TTL:g}")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.01 <= interval <= lease_ttl:
            raise PolicyError("interval: expected seconds between 0.01 and lease_ttl")
        require(database, SCHEMA, "orchestrator database")
        adopt_rows(keyring)
        self.keyring = keyring
        self.database = database
        self.node = node
        # The lease is held by this *process* (node#instance): a node restarted before its old
        # lease expired must not resume that lease and its fencing token — it takes over after
        # the expiry with a new token, like any other node (found by the repeated kill -9 test).
        self.instance = f"{node}#{secrets.token_hex(4)}"
        self.lease = Lease(database, LEASE, holder=self.instance, ttl=lease_ttl)
        self.counters = CounterStore(database, instance=self.instance, node=node)
        self.metrics = metrics
        self._published: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._guard = sealed.Guard()
        self._guard_lock = threading.Lock()
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: LeaseState | None = None
        self.last_error: str | None = None

    @contextlib.contextmanager
    def verified(self) -> Iterator[Connection]:
        """A read snapshot whose orchestration rows add up to the keyring's roster.

        Every decision reads its rows in one (a seal alone does not refuse a deleted row or an
        older genuine copy put back; see :class:`~xpscerpto.db.sealed_tables.Guard`).

        Raises:
            KeyringTampered: they do not.
        """
        with self.keyring.store.snapshot() as db:
            with self._guard_lock:
                self._guard.check(self.keyring.store, db)
            yield db

    # -- plans (any node may change them; they are configuration, not leader writes) ---------

    def track(self, plan: Plan, *, anchor: datetime | None = None) -> None:
        """Add or replace ``plan``.

        Args:
            anchor: where its schedule starts (timezone-aware; default: now, database time). A
                plan replaced keeps its anchor and pause unless ``anchor`` is given.

        Raises:
            PolicyError: not a Plan, a naive or non-datetime anchor, or a KEK other than the
                keyring's.
            KeyError_: no such key.
        """
        if not isinstance(plan, Plan):
            raise PolicyError(f"plan: expected a Plan, got {type(plan).__name__}")
        if anchor is not None and (not isinstance(anchor, datetime) or anchor.utcoffset() is None):
            raise PolicyError("anchor: expected a timezone-aware datetime")
        self.keyring.describe(plan.key)  # KeyError_ now, not at the first tick
        if plan.kek != self.keyring.config.kek.provider:
            raise PolicyError(f"kek: the plan names {plan.kek!r}, this keyring's KEK is "
                              f"{self.keyring.config.kek.provider!r}")
        with self.keyring.store.write() as db:
            old = sealed.read(self.keyring.store, db, sealed.PLANS, "plan = ?", (plan.name,))
            sealed.put(self.keyring.store, db, sealed.PLANS, {
                "plan": plan.name, "key_name": plan.key, "policy": plan.policy,
                "grace_seconds": parse_seconds(plan.grace, "grace"), "suite": plan.suite, "kek": plan.kek,
                "anchor": anchor or (old[0]["anchor"] if old else sealed.now(db)),
                "paused": bool(old[0]["paused"]) if old else False})

    def plans(self) -> list[tuple[Plan, datetime, bool]]:
        """Every tracked plan with its anchor and whether it is paused.

        Raises:
            PolicyError: a stored plan no longer validates (edited in the database); names it.
        """
        plans, refused = self._stored_plans()
        if refused:
            raise PolicyError("; ".join(refused))
        return plans

    def _stored_plans(self) -> tuple[list[tuple[Plan, datetime, bool]], list[str]]:
        """The plans that validate, and one message per stored plan that does not."""
        with self.verified() as db:
            rows = sealed.read_each(self.keyring.store, db, sealed.PLANS)
        plans, refused = [], []
        for r, damaged in sorted(rows, key=lambda item: str(item[0]["plan"])):
            try:
                if damaged is not None:
                    raise damaged
                plans.append((Plan(r["plan"], r["key_name"], r["policy"], r["grace_seconds"], r["suite"], r["kek"]),
                              r["anchor"], bool(r["paused"])))
            except XpsError as exc:
                refused.append(f"plan {show(r['plan'])}: its stored row no longer validates ({exc.args[0]})")
        return plans, refused

    def pause(self, plan: str) -> None:
        """Stop scheduled runs of ``plan`` (emergency runs still happen).

        Raises:
            PolicyError: not a plan's name, or no such plan.
        """
        self._set_paused(plan, True)

    def resume(self, plan: str) -> None:
        """Resume scheduled runs of ``plan``; a due time missed meanwhile runs at the next tick.

        Raises:
            PolicyError: not a plan's name, or no such plan.
        """
        self._set_paused(plan, False)

    def _set_paused(self, plan: str, paused: bool) -> None:
        _plan_name(plan, "plan")
        with self.keyring.store.write() as db:
            rows = sealed.read(self.keyring.store, db, sealed.PLANS, "plan = ?", (plan,))
            if not rows:
                raise PolicyError("plan: no such plan")
            sealed.put(self.keyring.store, db, sealed.PLANS, {**rows[0], "paused": paused})

    # -- ticking ---------------------------------------------------------------------------

    def tick(self) -> list[tuple[str, int]]:
        """Renew or take the lease; as leader, run every due plan. Returns (plan, new version)s.

        Raises:
            InternalError: the database is unreachable (nothing was half done).
            Fenced: the lease was lost between taking it and writing (the rotation rolled back).
            PolicyError: a stored plan no longer validates; it is named, after every other
                plan, hygiene and migration step of this tick ran.
        """
        self.publish_counters()
        state = self.lease.acquire()
        self._last = state
        if not state.mine:
            return []
        now = self._now()
        done = []
        plans, refused = self._stored_plans()  # one bad row must not stop every other plan
        for plan, anchor, paused in plans:
            if paused:
                continue
            schedule = plan.schedule
            due = schedule.due(anchor, now)
            if schedule.usage is not None:
                info = self.keyring.describe(plan.key)
                active = next((v for v in info.versions if v.version == info.active_version), None)
                if active is not None and active.encryptions >= schedule.usage:
                    due = schedule.usage_marker(active.version)
            try:
                if due is None or self._ran(plan.name, due):
                    continue
            except XpsError as exc:  # a forged or damaged run record: named, the other plans go on
                refused.append(f"plan {show(plan.name)}: {exc.args[0]}")
                continue
            done.append((plan.name, self._rotate(plan, due, state, reason=f"scheduled ({plan.policy})")))
        for plan, _, _ in plans:
            self.hygiene(plan, state)
        from . import pq_rollout, suite_migration

        # Each runs whatever the other raised: a migration that cannot go on must not stall
        # every PQ rollout (found by a review). A lost lease or database stops the tick at once.
        damaged: list[XpsError] = []
        for advance in (suite_migration.advance, pq_rollout.advance):
            try:
                advance(self, state)
            except (Fenced, InternalError):
                raise
            except PolicyError as exc:
                refused.append(str(exc.args[0]))
            except XpsError as exc:  # a tampered row (KeyringTampered): raised as itself, after the rest
                damaged.append(exc)
        if damaged:
            raise damaged[0]
        if refused:
            raise PolicyError("; ".join(refused))
        return done

    def publish_counters(self) -> int:
        """Share this process's counters with the fleet (the ones changed since last time).

        The keyring's per-version decrypt counts, and everything ``metrics`` counts. Returns
        the rows written.

        Raises:
            InternalError: the database failed (the next tick writes them again).
        """
        series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        if self.metrics is not None:
            from xpscerpto.metrics import COUNTERS

            series = {k: dict(v) for k, v in self.metrics.snapshot().items() if k in COUNTERS}
        decryptions = series.setdefault("xps_keyring_decryptions_total", {})
        for (name, version), (ok, failed) in self.keyring.loaded_decrypt_counts().items():
            base = (("key", name), ("version", str(version)))
            decryptions[(*base, ("result", "ok"))] = ok
            decryptions[(*base, ("result", "auth_failure"))] = failed
        changed = {name: {labels: value for labels, value in by.items()
                          if self._published.get((name, labels)) != value} for name, by in series.items()}
        written = self.counters.publish(changed)
        self._published.update({(name, labels): value for name, by in changed.items() for labels, value in by.items()})
        return written

    def roll_out_pq(self, rollout: PqRollout) -> None:
        """Start moving ``rollout.nodes`` to hybrid post-quantum channels (canary first).

        Raises:
            PolicyError: not a PqRollout, a rollout of that name exists, or a node is in
                another rollout that did not abort.
        """
        from .pq_rollout import start

        start(self, rollout)

    def pq_status(self) -> list[dict[str, Any]]:
        """Every PQ rollout: name, nodes, canary nodes, protocol, phase, since, detail."""
        from .pq_rollout import status

        return status(self)

    def migrate(self, migration: SuiteMigration) -> None:
        """Start moving ``migration.keys`` to its target suite (the leader's ticks advance it).

        Raises:
            PolicyError: not a SuiteMigration, a migration of that name exists, or a key is
                in another migration not yet retired or aborted.
            KeyError_: a key is unknown.
        """
        from .suite_migration import FINISHED, SuiteMigration

        if not isinstance(migration, SuiteMigration):
            raise PolicyError(f"migration: expected a SuiteMigration, got {type(migration).__name__}")
        for key in migration.keys:
            self.keyring.describe(key)
        with self.keyring.store.write() as db:  # the keyring's write lock: two starts are serialised
            # Two unfinished migrations of one key would move it back and forth each tick, each
            # canary watching the other's version, and both end 'committed' (found by a review).
            for other in sorted(sealed.read(self.keyring.store, db, sealed.MIGRATIONS), key=lambda r: str(r["name"])):
                if other["name"] == migration.name:
                    raise PolicyError(f"migration: {migration.name!r} exists already")
                if other["phase"] in FINISHED:
                    continue
                try:
                    held = json.loads(other["keys"])
                except ValueError:
                    held = None
                if not isinstance(held, list):
                    raise PolicyError(f"migration {show(other['name'])}: its stored keys are malformed",
                                      reason="malformed")
                taken = [k for k in migration.keys if k in held]
                if taken:
                    raise PolicyError(f"keys: {show(taken[0])} is already in suite migration {show(other['name'])} "
                                      f"(phase {show(other['phase'])}); a key moves in one migration at a time")
            row = {"name": migration.name, "keys": json.dumps(list(migration.keys)), "target": migration.target,
                   "canary": migration.canary, "watch_seconds": parse_seconds(migration.watch, "watch"),
                   "max_failure_rate": migration.max_failure_rate, "phase": "canary", "detail": "",
                   "since": sealed.now(db)}
            if not sealed.put(self.keyring.store, db, sealed.MIGRATIONS, row, replace=False):
                raise PolicyError(f"migration: {migration.name!r} exists already")

    def migration_status(self) -> list[dict[str, Any]]:
        """Every suite migration: name, target, phase, since, detail."""
        with self.verified() as db:
            rows = sealed.read_each(self.keyring.store, db, sealed.MIGRATIONS)
        out = []
        for r, damaged in sorted(rows, key=lambda item: str(item[0]["name"])):
            if damaged is not None:  # status shows the damage instead of failing altogether
                out.append({"name": str(r["name"]), "phase": "tampered", "since": r["since"].isoformat()})
                continue
            try:
                detail = json.loads(r["detail"] or "{}")
            except ValueError:
                detail = {"malformed": True}
            out.append({"name": r["name"], "target": r["target"], "phase": r["phase"],
                        "since": r["since"].isoformat(), "detail": detail})
        return out

    def hygiene(self, plan: Plan, state: LeaseState) -> list[int]:
        """Archive the retired versions of ``plan``'s key proven unused for at least its grace.

        Proof: retired for ``grace`` and no use recorded for ``grace`` by any node (each
        keyring writes its usage counters at least every ``USAGE_FLUSH_EVERY`` seconds, so
        the grace should be well above that). Archiving records ``KEY_ARCHIVE`` once per
        version (a fenced row, in the same transaction as the journal's outbox entry); the
        material itself is destroyed by the keyring's retention, not earlier (an earlier
        destroy needs operators' approvals). Returns the versions archived now.

        Raises:
            PolicyError: not a Plan and a LeaseState, or an emergency grace is malformed.
            KeyError_: the plan's key is unknown.
        """
        if not isinstance(plan, Plan):
            raise PolicyError(f"plan: expected a Plan, got {type(plan).__name__}")
        if not isinstance(state, LeaseState):
            raise PolicyError(f"state: expected a LeaseState, got {type(state).__name__}")
        plan_grace = parse_seconds(plan.grace, "grace")
        info = self.keyring.describe(plan.key)
        now = self.keyring.clock()
        with self.verified() as db:
            short = {int(r["version"]): float(r["grace_seconds"]) for r in sealed.read(
                self.keyring.store, db, sealed.EMERGENCY, "key_id = ?", (info.key_id,))}
        if not all(math.isfinite(g) and g >= 0 for g in short.values()):
            raise PolicyError(f"xps_orch_emergency: a grace for key {plan.key!r} is malformed (edited outside xps?)",
                              reason="malformed")
        done = []
        for v in info.versions:
            grace = min(plan_grace, short.get(v.version, plan_grace))  # an emergency's short grace
            if v.state is not VersionState.RETIRED or v.retired_at is None or now - v.retired_at < grace:
                continue
            unused = self.keyring.unused_for(plan.key, v.version)
            if unused is not None and unused < grace:
                continue
            with self.verified() as db:
                if sealed.read(self.keyring.store, db, sealed.ARCHIVED, "key_id = ? AND version = ?",
                               (info.key_id, v.version)):
                    continue
            with self.keyring.store.write() as db:
                row = {"key_id": info.key_id, "version": v.version, "token": state.token, "holder": self.node,
                       "at": sealed.now(db)}
                if not sealed.put(self.keyring.store, db, sealed.ARCHIVED, row, only_if=(FENCE, state.fence()),
                                  replace=False):
                    continue  # archived meanwhile, or our lease lapsed: nothing written
                self.keyring.outbox.add(db, "KEY_ARCHIVE", key_id=info.key_id, name=info.name, version=v.version,
                                        unused_seconds=None if unused is None else round(unused, 3),
                                        grace_seconds=grace, plan=plan.name, node=self.node, token=state.token)
            done.append(v.version)
        if done:
            self.keyring.outbox.deliver()
        return done

    def emergency(self, plan: str, reason: str, *, grace: str | float | None = None) -> int:
        """Rotate ``plan``'s key now (leader only), and record an incident in the journal.

        On the leading node: this object holds the lease, or the orchestrator this home runs
        (``xps orch run``, started from the same home) does; the emergency then writes under
        that lease.

        Args:
            grace: a short grace for the version this retires: hygiene archives it once it has
                been unused for the shorter of this and the plan's grace (recorded with the
                rotation, in its transaction).

        Raises:
            PolicyError: no such plan, no reason, a malformed grace, or this node does not
                hold the lease.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError("reason: an emergency rotation needs a reason")
        short = None if grace is None else parse_seconds(grace, "grace")
        found = next((p for p, _, _ in self.plans() if p.name == plan), None)
        if found is None:
            raise PolicyError("plan: no such plan")
        state = self.lease.acquire()
        if state.mine:
            self._last = state  # ours to release at stop()
        elif node_of(state.holder) == self.node and state.holder == self._running_here():
            # This home's `xps orch run` leads: `xps orch emergency` acts for the node under that
            # lease (its writes pass the fence only while it is current). The holder must be the
            # instance this home runs, not just carry the node's name: a cloned configuration or
            # a mistyped --node elsewhere must not write under the leader's token.
            state = replace(state, mine=True)
        else:
            raise PolicyError(f"orchestrator: {self.node} is not the leader ({node_of(state.holder) or 'none'} is); "
                              "run the emergency on the leader", reason="not-leader")
        # The incident is queued in the rotation's own transaction (outbox), so a kill -9 before
        # the health check still leaves it in the journal; the health result follows it.
        version = self._rotate(found, self._now(), state, reason=f"emergency: {reason}", grace=short,
                               incident={"plan": plan, "key": found.key, "reason": reason, "node": self.node,
                                         "token": state.token, "grace_seconds": short, "phase": "rotating"})
        health = self._health(found.key, version)
        self.keyring.audit.record("INCIDENT", plan=plan, key=found.key, version=version, reason=reason,
                                  node=self.node, token=state.token, health=health, grace_seconds=short)
        if health != "ok":
            raise InternalError(f"emergency rotation of {found.key!r}: version {version} failed its health check "
                                f"({health}); incident recorded")
        return version

    def _health(self, key: str, version: int) -> str:
        """Encrypt and decrypt a probe under the key; it must be sealed by ``version`` and open again.

        The keyring activates N+1 and retires N in one transition (Appendix A has no pending
        state), so this check follows the switch; a failure is an incident and an error.
        """
        probe = os.urandom(16)
        try:
            blob = self.keyring.encrypt(key, probe, aad=b"xps-orchestrator-health")
            if self.keyring.describe(key).active_version != version or HEADER.unpack_from(blob)[2] != version:
                return "the probe was not sealed by the new version"
            if self.keyring.decrypt(blob, aad=b"xps-orchestrator-health") != probe:
                return "the probe did not open to itself"
        except XpsError as exc:
            return f"{type(exc).__name__}: {exc.code}"
        return "ok"

    def _rotate(self, plan: Plan, due: datetime, state: LeaseState, *, reason: str,
                grace: float | None = None, incident: dict[str, Any] | None = None) -> int:
        info = self.keyring.describe(plan.key)
        active = info.active_version

        def claim(db: Connection) -> None:
            store = self.keyring.store
            run = {"plan": plan.name, "due": due, "token": state.token, "holder": self.node, "at": sealed.now(db),
                   "result": f"rotated from {active}"}
            if not sealed.put(store, db, sealed.RUNS, run, only_if=(FENCE, state.fence()), replace=False):
                raise self._refusal(plan.name, due, state)
            if grace is not None and active is not None:
                old = sealed.read(store, db, sealed.EMERGENCY, "key_id = ? AND version = ?", (info.key_id, active))
                shortest = min(grace, float(old[0]["grace_seconds"])) if old else grace
                if not sealed.put(store, db, sealed.EMERGENCY,
                                  {"key_id": info.key_id, "version": active, "grace_seconds": shortest,
                                   "token": state.token, "holder": self.node, "at": sealed.now(db)},
                                  only_if=(FENCE, state.fence())):
                    # The lease lapsed after the run record's statement: the whole rotation
                    # rolls back rather than commit without the grace its incident announces.
                    raise self._refusal(plan.name, due, state)
            if incident is not None:
                self.keyring.outbox.add(db, "INCIDENT", **incident, from_version=active)

        return self.keyring.rotate(plan.key, expected_version=active, reason=reason, algorithm=plan.suite,
                                   claim=claim)

    def _refusal(self, plan: str, due: datetime, state: LeaseState) -> XpsError:
        if self._ran(plan, due):
            return PolicyError(f"plan {plan}: this due time already ran", reason="already-ran")
        return Fenced(f"orchestrator: {self.node}'s lease token {state.token} is no longer current; "
                      "its write was refused")

    def _ran(self, plan: str, due: datetime) -> bool:
        """Whether a run is recorded for (plan, due); a forged one is refused, not obeyed."""
        with self.verified() as db:
            return bool(sealed.read(self.keyring.store, db, sealed.RUNS, "plan = ? AND due = ?", (plan, due)))

    def _now(self) -> datetime:
        row = self.database.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Tick every ``interval`` seconds in a daemon thread until :meth:`stop`.

        Writes this instance's name to ``HOME/orchestrator.instance``, so that an
        :meth:`emergency` run from the same home can act under its lease.
        """
        if self._thread is not None:
            return
        with contextlib.suppress(OSError):  # unwritable: an emergency must then run on this object
            atomic_write(self._instance_file, self.instance.encode())
        self._thread = threading.Thread(target=self._loop, name=f"xps-orch-{self.node}", daemon=True)
        self._thread.start()

    @property
    def _instance_file(self) -> Path:
        return self.keyring.home.root / INSTANCE_FILE

    def _running_here(self) -> str | None:
        """The instance this home's running orchestrator wrote (None: none, or unreadable)."""
        try:
            return read_stored(self._instance_file, 256).decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except XpsError as exc:  # the database away, a lost lease: the next tick retries
                self.last_error = str(exc)
            except Exception as exc:  # a bug must not stop the node's orchestrator
                self.last_error = f"XPS_ERR_INTERNAL: {type(exc).__name__}"
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop ticking and hand the lease over at once (not after its expiry)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
            if self._running_here() == self.instance:
                with contextlib.suppress(OSError):
                    self._instance_file.unlink()
        if self._last is not None and self._last.mine:
            with contextlib.suppress(XpsError):
                self.lease.release(self._last.token)

    def status(self) -> dict[str, Any]:
        """This node, the leader, its fencing token and lease expiry, each plan's next run."""
        lease = self.lease.state()
        now = self._now()
        plans = []
        store = self.keyring.store
        for plan, anchor, paused in self.plans():
            with self.verified() as db:
                runs = sealed.read(store, db, sealed.RUNS, "plan = ? ORDER BY due DESC LIMIT 1", (plan.name,))
                archived = sorted(int(r["version"]) for r in sealed.read(
                    store, db, sealed.ARCHIVED, "key_id = (SELECT key_id FROM keys WHERE name = ?)", (plan.key,)))
            last = (runs[0]["due"], runs[0]["at"], runs[0]["holder"], runs[0]["token"], runs[0]["result"]) if runs \
                else None
            plans.append({"plan": plan.name, "key": plan.key, "policy": plan.policy, "paused": paused,
                          "archived": archived,
                          "suite": plan.suite, "kek": plan.kek,
                          "next_run": None if (n := plan.schedule.next_after(anchor, now)) is None else n.isoformat(),
                          "last_run": None if last is None else {"due": last[0].isoformat(), "at": last[1].isoformat(),
                                                                 "node": last[2], "token": last[3],
                                                                 "result": last[4]}})
        return {"node": self.node, "instance": self.instance, "leader": node_of(lease.holder),
                "leader_instance": lease.holder, "token": lease.token,
                "lease_expires": lease.expires.isoformat() if lease.expires and lease.holder else None,
                "is_leader": lease.mine, "plans": plans, "migrations": self.migration_status(),
                "pq_rollouts": self.pq_status()}
