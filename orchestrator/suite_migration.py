"""Moving a set of keys from one AEAD suite to another: canary first, watch, then everyone.

Phases, advanced by the leader's ticks (each step idempotent, each phase change fenced):

``canary``    a deterministic subset (``canary`` share, at least one key) is rotated to the target
              suite; both suites stay allowed (old blobs open under their own version's suite);
``watching``  for ``watch`` seconds the canary versions' decrypt and authentication-failure counts
              on every node (:meth:`Keyring.decrypt_counts`, the numbers the metrics export,
              shared through :mod:`xpscerpto.db.counter_store` at each node's ticks) are read; a
              failure rate above ``max_failure_rate`` (over at least 20 decryptions) aborts;
``rollout``   every other key is rotated to the target;
``committed`` every key encrypts under the target;
``retired``   no version of the old suites decrypts any more (dual-key windows over): the old
              suite is no longer needed by these keys;
``aborted``   the canary keys were rotated back to the suite they had, with an ``INCIDENT``.

A crash mid-phase leaves the phase as it was: the next leader's tick redoes what is missing
(keys already on the target are skipped).

Example:
    >>> orch.migrate(SuiteMigration("to-xchacha", keys=("orders", "users"),    # doctest: +SKIP
    ...                             target="XCHACHA20-POLY1305", canary=0.1, watch="1h"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpscerpto.db import sealed_tables as sealed
from xpscerpto.errors import PolicyError, XpsError

from ._canary import MIN_SAMPLES, canary_subset, check_fields
from .schedule import parse_seconds

if TYPE_CHECKING:
    from .lease import LeaseState
    from .orchestrator import Orchestrator

__all__ = ["MIN_SAMPLES", "SuiteMigration", "advance"]

_SUITES = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305", "XCHACHA20-POLY1305", "AES-256-GCM-SIV")


@dataclass(frozen=True, slots=True)
class SuiteMigration:
    """Keys to move, the suite to move them to, and how carefully.

    Raises:
        PolicyError: a field malformed (the message names it).
    """

    name: str
    keys: tuple[str, ...]
    target: str
    canary: float = 0.1
    watch: str | float = "1h"
    max_failure_rate: float = 0.001

    def __post_init__(self) -> None:
        check_fields(self.name, self.canary, self.watch, self.max_failure_rate)
        if (not isinstance(self.keys, tuple) or not self.keys or not all(isinstance(k, str) and k for k in self.keys)
                or len(set(self.keys)) != len(self.keys)):  # types first: set() of a dict would raise
            raise PolicyError("keys: expected a non-empty tuple of distinct key names")
        if self.target not in _SUITES:
            raise PolicyError(f"target: expected one of {', '.join(_SUITES)}")

    def canary_keys(self) -> tuple[str, ...]:
        """The canary subset: ``ceil(canary * n)`` keys, spread by a hash of their names."""
        return canary_subset(self.keys, self.canary)


def advance(orch: Orchestrator, state: LeaseState) -> list[tuple[str, str]]:
    """One leader tick over every migration that is not finished; returns (name, new phase)s.

    Raises:
        KeyringTampered: a migration's row fails its seal (named, after the others advanced).
    """
    changed = []
    with orch.verified() as db:
        # Every row, finished or not, is checked: a phase forged to 'aborted' must not hide one.
        rows = sealed.read_each(orch.keyring.store, db, sealed.MIGRATIONS)
        clock = sealed.now(db)
    damaged: list[XpsError] = []
    for r, error in sorted(rows, key=lambda item: str(item[0]["name"])):
        if error is not None:
            damaged.append(error)
            continue
        if r["phase"] in ("retired", "aborted"):
            continue
        m = SuiteMigration(r["name"], tuple(json.loads(r["keys"])), r["target"], r["canary"], r["watch_seconds"],
                           r["max_failure_rate"])
        new = _step(orch, state, m, r["phase"], json.loads(r["detail"] or "{}"), (clock - r["since"]).total_seconds())
        if new is not None:
            changed.append((r["name"], new))
    if damaged:
        raise damaged[0]
    return changed


def _step(orch: Orchestrator, state: LeaseState, m: SuiteMigration, phase: str, detail: dict[str, Any],
          elapsed: float) -> str | None:
    ring = orch.keyring
    if phase == "canary":
        if "from" not in detail:  # remembered before any key moves: an abort moves them back
            detail = {"from": {k: _suite(orch, k) for k in m.canary_keys()}}
            if _set_phase(orch, state, m, "canary", "canary", detail) is None:
                return None
        for key in m.canary_keys():
            _move(orch, state, m, "canary", key, m.target, f"suite migration {m.name}: canary")
        return _set_phase(orch, state, m, "canary", "watching", detail)
    if phase == "watching":
        # Every node's counts (the fleet counters each orchestrator publishes at its ticks; this
        # leader's own were published at the start of this tick), not only this process's.
        watched = {(key, str(active)) for key in m.canary_keys()
                   if (active := ring.describe(key).active_version) is not None}
        ok = failed = 0
        for _node, labels, value in orch.counters.rows("xps_keyring_decryptions_total"):
            if (labels.get("key"), labels.get("version")) in watched:
                if labels.get("result") == "ok":
                    ok += int(value)
                else:
                    failed += int(value)
        total = ok + failed
        rate = failed / total if total else 0.0
        if total >= MIN_SAMPLES and rate > m.max_failure_rate:
            for key, suite in detail.get("from", {}).items():
                _move(orch, state, m, "watching", key, suite, f"suite migration {m.name}: aborted")
            incident = {"migration": m.name, "reason": "canary failure rate", "failures": failed,
                        "decryptions": total, "rate": round(rate, 6), "max_rate": m.max_failure_rate, "node": orch.node}
            return _set_phase(orch, state, m, "watching", "aborted", {**detail, "failures": failed, "total": total},
                              incident=incident)
        if elapsed >= parse_seconds(m.watch, "watch"):
            return _set_phase(orch, state, m, "watching", "rollout", {**detail, "failures": failed, "total": total})
        return None
    if phase == "rollout":
        for key in m.keys:
            _move(orch, state, m, "rollout", key, m.target, f"suite migration {m.name}: rollout")
        return _set_phase(orch, state, m, "rollout", "committed", detail)
    if phase == "committed":
        now = ring.clock()
        for key in m.keys:
            for v in ring.describe(key).versions:
                if v.algorithm != m.target and v.decrypts_until is not None and v.decrypts_until > now:
                    return None  # an old-suite version still opens blobs
        return _set_phase(orch, state, m, "committed", "retired", detail)
    return None


def _suite(orch: Orchestrator, key: str) -> str:
    info = orch.keyring.describe(key)
    active = next((v for v in info.versions if v.version == info.active_version), None)
    return (active.algorithm if active is not None else None) or info.algorithm


def _move(orch: Orchestrator, state: LeaseState, m: SuiteMigration, phase: str, key: str, suite: str,
          reason: str) -> None:
    """Rotate ``key`` to ``suite`` unless it already encrypts under it (idempotent).

    Fenced like a phase change, in the rotation's own transaction: a leader that paused past
    its lease (or past a newer leader's abort, which changed the phase) must not move a key.

    Raises:
        Fenced: the lease is no longer this leader's, or the migration left ``phase``.
    """
    from .lease import FENCE
    from .orchestrator import Fenced

    if _suite(orch, key) == suite:
        return

    def claim(db: Any) -> None:
        rows = sealed.read(orch.keyring.store, db, sealed.MIGRATIONS, "name = ?", (m.name,))
        if not rows or rows[0]["phase"] != phase or db.execute(
                f"SELECT 1 WHERE {FENCE}", state.fence()).fetchone() is None:
            raise Fenced(f"suite migration {m.name}: {orch.node}'s lease token {state.token} is no longer current, "
                         f"or the migration left phase {phase!r}; {key!r} was not moved")

    orch.keyring.rotate(key, expected_version=orch.keyring.describe(key).active_version, reason=reason,
                        algorithm=suite, claim=claim)


def _set_phase(orch: Orchestrator, state: LeaseState, m: SuiteMigration, old: str, new: str,
               detail: dict[str, Any], *, incident: dict[str, Any] | None = None) -> str | None:
    """Fenced phase change, journaled through the keyring's outbox in the same transaction (a
    kill -9 after the commit loses no record: the next delivery, on any node, writes it)."""
    from .lease import FENCE

    ring = orch.keyring
    with ring.store.write() as db:
        rows = sealed.read(ring.store, db, sealed.MIGRATIONS, "name = ?", (m.name,))
        done = bool(rows) and rows[0]["phase"] == old and sealed.put(
            ring.store, db, sealed.MIGRATIONS,
            {**rows[0], "phase": new, "detail": json.dumps(detail, sort_keys=True), "since": sealed.now(db)},
            only_if=(FENCE, state.fence()))
        if done and new != old:
            if incident is not None:
                ring.outbox.add(db, "INCIDENT", **incident)
            ring.outbox.add(db, "SUITE_MIGRATION", migration=m.name, phase=new, target=m.target, node=orch.node,
                            token=state.token)
    if done and new != old:
        ring.outbox.deliver()
    return new if done else None
