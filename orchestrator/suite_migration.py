"""Moving a set of keys from one AEAD suite to another: canary first, watch, then everyone.

Phases, advanced by the leader's ticks (each step idempotent, each phase change fenced):

``canary``    a deterministic subset (``canary`` share, at least one key) is rotated to the target
              suite; both suites stay allowed (old blobs open under their own version's suite).
              Each canary key's suite and active version are recorded first, in the row;
``watching``  for ``watch`` seconds the decrypt and authentication-failure counts of the canary
              keys' target-suite versions since the migration began (the ones the canary created,
              and any later rotation's: a rotation during the watch must not discard failures
              already counted) on every node (:meth:`Keyring.decrypt_counts`, the numbers the
              metrics export, shared through :mod:`xpscerpto.db.counter_store` at each node's
              ticks) are read; a failure rate above ``max_failure_rate`` (over at least 20
              decryptions) aborts;
``rollout``   every other key is rotated to the target;
``committed`` every key encrypts under the target (checked again at every tick);
``retired``   no version of the old suites decrypts any more (dual-key windows over): the old
              suite is no longer needed by these keys;
``aborting``  the canary failed: the decision and its ``INCIDENT`` are recorded (one fenced
              transaction) before any key moves back, so a leader killed mid-abort leaves an
              abort the next leader finishes, never a watch it could pass;
``aborted``   the canary keys were rotated back to the suite they had;
``failed``    a key of a committed migration left the target suite (another migration, a plan
              with a suite, an operator's rotation): an ``INCIDENT`` names it. The migration
              stops there rather than move the key again and fight whoever moved it (two
              migrations over one key would rotate it at every tick).

A step that cannot go on (a key that refuses to rotate, e.g. revoked) leaves the phase as it
was, records the refusal in the row's ``detail`` (``blocked``: the key and the reason), and is
raised after every other migration's step ran: one stuck migration stops no other.

A crash mid-phase leaves the phase as it was: the next leader's tick redoes what is missing
(keys already on the target are skipped).

Example:
    >>> orch.migrate(SuiteMigration("to-xchacha", keys=("orders", "users"),    # doctest: +SKIP
    ...                             target="XCHACHA20-POLY1305", canary=0.1, watch="1h"))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpscerpto._config_fields import show
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.errors import InternalError, PolicyError, XpsError
from xpscerpto.keyring import KeyState

from ._canary import MIN_SAMPLES, canary_subset, check_fields
from .schedule import parse_seconds

if TYPE_CHECKING:
    from .lease import LeaseState
    from .orchestrator import Orchestrator

__all__ = ["FINISHED", "MIN_SAMPLES", "SuiteMigration", "advance"]

#: Phases no tick advances any more.
FINISHED = ("retired", "aborted", "failed")
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

    Each migration steps on its own: one that cannot go on records why in its row (``blocked``)
    and the others still advance.

    Raises:
        KeyringTampered: a migration's row fails its seal (named, after the others advanced).
        PolicyError: a migration could not go on (each named, with its key and the reason,
            after the others advanced).
        Fenced: this leader's lease is no longer current (nothing more is tried this tick).
        InternalError: the database failed (the next tick retries).
    """
    changed = []
    with orch.verified() as db:
        # Every row, finished or not, is checked: a phase forged to 'aborted' must not hide one.
        rows = sealed.read_each(orch.keyring.store, db, sealed.MIGRATIONS)
        clock = sealed.now(db)
    damaged: list[XpsError] = []
    refused: list[str] = []
    for r, error in sorted(rows, key=lambda item: str(item[0]["name"])):
        if error is not None:
            damaged.append(error)
            continue
        if r["phase"] in FINISHED:
            continue
        try:
            new = _advance_one(orch, state, r, (clock - r["since"]).total_seconds())
        except (InternalError, _fenced()):
            raise  # the database away or the lease lost: every other step would fail the same way
        except XpsError as exc:
            refused.append(f"suite migration {show(r['name'])}: {exc.args[0]}")
        else:
            if new is not None:
                changed.append((r["name"], new))
    if refused:
        raise PolicyError("; ".join([*(str(d.args[0]) for d in damaged), *refused]), reason="blocked")
    if damaged:
        raise damaged[0]
    return changed


def _row(orch: Orchestrator, name: str) -> dict[str, Any]:
    with orch.verified() as db:
        return sealed.read(orch.keyring.store, db, sealed.MIGRATIONS, "name = ?", (name,))[0]


def _fenced() -> type[XpsError]:
    from .orchestrator import Fenced

    return Fenced


class _Stuck(PolicyError):
    """Keys of one migration that refused to move: the step went as far as it could."""

    reason = "blocked"

    def __init__(self, phase: str, failures: dict[str, XpsError]) -> None:
        self.phase = phase
        self.failures = {key: str(exc.args[0]) for key, exc in failures.items()}
        super().__init__("; ".join(f"key {show(key)}: {why}" for key, why in self.failures.items()))


def _advance_one(orch: Orchestrator, state: LeaseState, r: dict[str, Any], elapsed: float) -> str | None:
    """One migration's step; a key that refuses to move is recorded in the row (fenced) and raised."""
    try:
        keys, detail = json.loads(r["keys"]), json.loads(r["detail"] or "{}")
    except ValueError:
        keys = detail = None
    if not isinstance(keys, list) or not isinstance(detail, dict):
        raise PolicyError(f"xps_suite_migrations row {show(r['name'])}: keys or detail is malformed (edited outside "
                          "xps?)", reason="malformed")
    m = SuiteMigration(r["name"], tuple(keys), r["target"], r["canary"], r["watch_seconds"], r["max_failure_rate"])
    try:
        return _step(orch, state, m, r["phase"], detail, elapsed)
    except _Stuck as exc:
        blocked = [{"key": key, "reason": why} for key, why in exc.failures.items()]
        if exc.phase != r["phase"]:  # it got stuck in the phase this step moved it to
            detail = json.loads(_row(orch, m.name)["detail"] or "{}")
        if detail.get("blocked") != blocked:  # journaled once, not at every tick it stays stuck
            _set_phase(orch, state, m, exc.phase, exc.phase, {**detail, "blocked": blocked}, journal=True)
        raise


def _each(phase: str, keys: Iterable[str], act: Callable[[str], None]) -> None:
    """``act(key)`` for every key, the others still moved when one refuses; then the refusals.

    Raises:
        _Stuck: keys that refused (each with its refusal).
        Fenced, InternalError: at once (the lease lost, the database away).
    """
    failures: dict[str, XpsError] = {}
    for key in keys:
        try:
            act(key)
        except (InternalError, _fenced()):
            raise
        except XpsError as exc:
            failures[key] = exc
    if failures:
        raise _Stuck(phase, failures)


def _step(orch: Orchestrator, state: LeaseState, m: SuiteMigration, phase: str, detail: dict[str, Any],
          elapsed: float) -> str | None:
    ring = orch.keyring
    if phase == "canary":
        if "from" not in detail:  # remembered before any key moves: an abort moves them back
            infos = {k: ring.describe(k) for k in m.canary_keys()}
            detail = {"from": {k: _suite(orch, k) for k in infos},
                      "from_version": {k: info.active_version for k, info in infos.items()}}
            if _set_phase(orch, state, m, "canary", "canary", detail) is None:
                return None
        _each("canary", m.canary_keys(), lambda key: _move(orch, state, m, "canary", key, m.target,
                                                 f"suite migration {m.name}: canary"))
        watched = _watched(orch, m, detail)
        return _set_phase(orch, state, m, "canary", "watching",
                          {**detail, "canary_versions": sorted([k, int(v)] for k, v in watched)})
    if phase == "watching":
        # Every node's counts (the fleet counters each orchestrator publishes at its ticks; this
        # leader's own were published at the start of this tick), not only this process's.
        watched = _watched(orch, m, detail)
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
            # The decision and its INCIDENT are committed before any key moves back: a leader
            # killed between the moves and the last phase change leaves 'aborting', which the
            # next leader finishes (it must not find 'watching' and measure the moved-back keys).
            incident = {"migration": m.name, "reason": "canary failure rate", "failures": failed,
                        "decryptions": total, "rate": round(rate, 6), "max_rate": m.max_failure_rate, "node": orch.node}
            detail = {**detail, "failures": failed, "total": total}
            if _set_phase(orch, state, m, "watching", "aborting", detail, incident=incident) is None:
                return None
            return _abort(orch, state, m, detail)
        if elapsed >= parse_seconds(m.watch, "watch"):
            return _set_phase(orch, state, m, "watching", "rollout", {**detail, "failures": failed, "total": total})
        return None
    if phase == "aborting":
        return _abort(orch, state, m, detail)
    if phase == "rollout":
        _each("rollout", m.keys, lambda key: _move(orch, state, m, "rollout", key, m.target,
                                        f"suite migration {m.name}: rollout"))
        if _off_target(orch, m):  # moved away again meanwhile: the next tick moves it back
            return None
        return _set_phase(orch, state, m, "rollout", "committed", detail)
    if phase == "committed":
        off = _off_target(orch, m)
        if off:
            incident = {"migration": m.name, "reason": "keys left the target suite after the migration committed",
                        "keys": off, "target": m.target, "node": orch.node}
            return _set_phase(orch, state, m, "committed", "failed", {**detail, "off_target": off},
                              incident=incident)
        now = ring.clock()
        for key in m.keys:
            for v in ring.describe(key).versions:
                if v.algorithm != m.target and v.decrypts_until is not None and v.decrypts_until > now:
                    return None  # an old-suite version still opens blobs
        return _set_phase(orch, state, m, "committed", "retired", detail)
    return None


def _watched(orch: Orchestrator, m: SuiteMigration, detail: dict[str, Any]) -> set[tuple[str, str]]:
    """(key, version) of every canary key's version on the target since the migration began.

    Not the key's active version: the canary's failures stay counted after a rotation during
    the watch (onto the target: counted as well), and after a move back.
    """
    start = detail.get("from_version")
    if start is not None and not isinstance(start, dict):
        raise PolicyError(f"xps_suite_migrations row {show(m.name)}: detail is malformed (edited outside xps?)",
                          reason="malformed")
    watched = set()
    for key in m.canary_keys():
        info = orch.keyring.describe(key)
        # A row an earlier release wrote has no start version: its active one, as it counted.
        first = start.get(key) if start is not None else info.active_version
        if first is None:
            continue
        if isinstance(first, bool) or not isinstance(first, int):
            raise PolicyError(f"xps_suite_migrations row {show(m.name)}: detail is malformed (edited outside xps?)",
                              reason="malformed")
        watched |= {(key, str(v.version)) for v in info.versions
                    if v.version >= first and (v.algorithm or info.algorithm) == m.target}
    return watched


def _abort(orch: Orchestrator, state: LeaseState, m: SuiteMigration, detail: dict[str, Any]) -> str | None:
    """Move the canary keys back to the suites recorded before they moved, then ``aborted``.

    A revoked or destroyed key is left: it encrypts under no suite, and cannot rotate.
    """
    back = detail.get("from", {})
    if not isinstance(back, dict):
        raise PolicyError(f"xps_suite_migrations row {show(m.name)}: detail is malformed (edited outside xps?)",
                          reason="malformed")

    def move_back(key: str) -> None:
        if orch.keyring.describe(key).state in (KeyState.REVOKED, KeyState.DESTROYED):
            return
        _move(orch, state, m, "aborting", key, back[key], f"suite migration {m.name}: aborted")

    _each("aborting", sorted(back), move_back)
    return _set_phase(orch, state, m, "aborting", "aborted", detail)


def _off_target(orch: Orchestrator, m: SuiteMigration) -> dict[str, str]:
    """Keys whose active version is not on the target: key -> its suite (a key with no active
    version, revoked or destroyed, encrypts under no suite and is not one)."""
    off = {}
    for key in m.keys:
        info = orch.keyring.describe(key)
        if info.active_version is not None and (suite := _suite(orch, key)) != m.target:
            off[key] = suite
    return off


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
               detail: dict[str, Any], *, incident: dict[str, Any] | None = None,
               journal: bool | None = None) -> str | None:
    """Fenced phase change, journaled through the keyring's outbox in the same transaction (a
    kill -9 after the commit loses no record: the next delivery, on any node, writes it).

    ``new == old`` rewrites the detail only (journaled if ``journal``); a phase change drops
    a ``blocked`` note, which belonged to the phase left.
    """
    from .lease import FENCE

    if journal is None:
        journal = new != old
    if new != old:
        detail = {k: v for k, v in detail.items() if k != "blocked"}
    ring = orch.keyring
    with ring.store.write() as db:
        rows = sealed.read(ring.store, db, sealed.MIGRATIONS, "name = ?", (m.name,))
        done = bool(rows) and rows[0]["phase"] == old and sealed.put(
            ring.store, db, sealed.MIGRATIONS,
            {**rows[0], "phase": new, "detail": json.dumps(detail, sort_keys=True), "since": sealed.now(db)},
            only_if=(FENCE, state.fence()))
        if done and journal:
            if incident is not None:
                ring.outbox.add(db, "INCIDENT", **incident)
            blocked = {"blocked": detail["blocked"]} if "blocked" in detail else {}
            ring.outbox.add(db, "SUITE_MIGRATION", migration=m.name, phase=new, target=m.target, node=orch.node,
                            token=state.token, **blocked)
    if done and journal:
        ring.outbox.deliver()
    return new if done else None
