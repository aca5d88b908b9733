"""Rolling hybrid post-quantum channels out over a fleet: canary nodes first, watch, then everyone.

The same canary-and-share mechanism as a suite migration (:mod:`.suite_migration`), for the
secure channel's hybrid ``XXhfs`` handshake (X25519 + ML-KEM-768) instead of a keyring suite.
The leader advances the phase; every node reads its *posture* from the shared table and
reconfigures its channel endpoints (:class:`PqPosture`):

``canary``    the canary nodes (a ``canary`` share, at least one, spread by a hash of their
              names) offer the hybrid protocol; every node of the rollout accepts it. For
              ``watch`` seconds the canary nodes' post-quantum handshakes are counted from the
              fleet counters (``xps_channel_handshakes_total{pq="true"}``, every node's, see
              :mod:`xpscerpto.db.counter_store`): a failure rate above ``max_failure_rate``
              (over at least 20 handshakes) aborts. A server's failures before its peer
              authenticated are not among them (``result="unauthenticated"``): anyone who
              reaches a port could name the hybrid protocol and hang up;
``committed`` every node offers the hybrid protocol (and still accepts classic peers) until no
              node of the rollout has established a classic channel for ``watch`` seconds;
``retired``   every node requires post-quantum: a classic offer is refused (``pq-required``);
``aborted``   every node is back to its own configuration, with an ``INCIDENT`` in the journal.

Postures: ``classic`` (the node's own configuration), ``accept``, ``offer``, ``require``.

Example:
    >>> orch.roll_out_pq(PqRollout("pq", nodes=("a", "b", "c"), canary=0.34, watch="1h"))  # doctest: +SKIP
    >>> posture = PqPosture(ring, node="a", base=ChannelConfig(), on_change=server.reconfigure)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xpscerpto._config_fields import show
from xpscerpto.channel._failures import UNAUTHENTICATED
from xpscerpto.channel.config import DEFAULT_PQ_PROTOCOL, ChannelConfig
from xpscerpto.db import sealed_tables as sealed
from xpscerpto.db.migrations import open_migrated
from xpscerpto.errors import InternalError, PolicyError, XpsError

from ._canary import MIN_SAMPLES, canary_subset, check_fields
from .schedule import parse_seconds

if TYPE_CHECKING:
    from xpscerpto.keyring import Keyring
    from xpscerpto.keyring.store import Connection

    from .lease import LeaseState
    from .orchestrator import Orchestrator

__all__ = ["CHANNEL", "MIN_SAMPLES", "POSTURES", "PqPosture", "PqRollout", "advance", "channel_config", "posture_of"]

#: The NOTIFY channel a phase change is announced on (followers also poll).
CHANNEL = "xps_pq"
POSTURES = ("classic", "accept", "offer", "require")
PHASES = ("canary", "committed", "retired", "aborted")
_COUNTER = "xps_channel_handshakes_total"


@dataclass(frozen=True, slots=True)
class PqRollout:
    """The nodes to move to hybrid post-quantum channels, the protocol, and how carefully.

    Raises:
        PolicyError: a field malformed (the message names it).
    """

    name: str
    nodes: tuple[str, ...]
    protocol: str = DEFAULT_PQ_PROTOCOL
    canary: float = 0.1
    watch: str | float = "1h"
    max_failure_rate: float = 0.001

    def __post_init__(self) -> None:
        check_fields(self.name, self.canary, self.watch, self.max_failure_rate)
        if (not isinstance(self.nodes, tuple) or not self.nodes
                or not all(isinstance(n, str) and n and len(n) <= 200 and n.isprintable() for n in self.nodes)
                or len(set(self.nodes)) != len(self.nodes)):
            raise PolicyError("nodes: expected a non-empty tuple of distinct node names")
        _check_hybrid(self.protocol)

    def canary_nodes(self) -> tuple[str, ...]:
        """The canary subset: ``ceil(canary * n)`` nodes, spread by a hash of their names."""
        return canary_subset(self.nodes, self.canary)

    def posture(self, phase: str, node: str) -> str:
        """What ``node`` does in ``phase`` (``classic`` if it is not part of this rollout)."""
        if phase not in PHASES:
            raise PolicyError(f"phase: expected one of {', '.join(PHASES)}")
        if node not in self.nodes or phase == "aborted":
            return "classic"
        if phase == "canary":
            return "offer" if node in self.canary_nodes() else "accept"
        return "offer" if phase == "committed" else "require"


def _check_hybrid(protocol: object) -> None:
    from xpscerpto.channel._patterns import parse_protocol

    try:
        hybrid = parse_protocol(protocol).hfs  # type: ignore[arg-type]  # it refuses a non-str, typed
    except XpsError:
        raise PolicyError("protocol: expected a Noise protocol name this engine builds") from None
    if not hybrid:
        raise PolicyError("protocol: expected a hybrid post-quantum (hfs) protocol")


def channel_config(posture: str, base: ChannelConfig, protocol: str = DEFAULT_PQ_PROTOCOL) -> ChannelConfig:
    """``base`` as a node in ``posture`` uses it (``protocol`` is the hybrid one rolled out)."""
    if posture not in POSTURES:
        raise PolicyError(f"posture: expected one of {', '.join(POSTURES)}")
    if not isinstance(base, ChannelConfig):
        raise PolicyError(f"base: expected a ChannelConfig, got {type(base).__name__}")
    if posture == "classic":
        return base
    _check_hybrid(protocol)
    accept = base.accept if any(fnmatch.fnmatchcase(protocol, a) for a in base.accept) else (*base.accept, protocol)
    if posture == "accept":
        return dataclasses.replace(base, accept=accept)
    return dataclasses.replace(base, accept=accept, protocol=protocol, require_pq=posture == "require")


def _load(row: dict[str, Any]) -> PqRollout:
    """A row as a rollout; a row that does not validate is a typed refusal naming it, not a crash."""
    name, nodes, protocol = row["name"], row["nodes"], row["protocol"]
    canary, watch, max_rate = row["canary"], row["watch_seconds"], row["max_failure_rate"]
    try:
        parsed = json.loads(nodes)
        if row["phase"] not in PHASES:
            raise PolicyError("phase: unknown")
        return PqRollout(name, tuple(parsed) if isinstance(parsed, list) else parsed, protocol, canary, watch,
                         max_rate)
    except (ValueError, TypeError, XpsError) as exc:
        field = exc.args[0].split(":")[0] if isinstance(exc, XpsError) and exc.args else "nodes"
        raise PolicyError(f"xps_pq_rollouts row {str(name)[:200]!r}: {field} is malformed (edited outside xps?)",
                          reason="malformed") from None


def _rows(keyring: Keyring, db: Connection) -> list[dict[str, Any]]:
    """Every rollout's row, each checked against its seal, by name.

    Raises:
        KeyringTampered: a row fails its seal (a phase edited to 'aborted' must not send
            every node back to classic channels).
    """
    return sorted(sealed.read(keyring.store, db, sealed.ROLLOUTS), key=lambda r: str(r["name"]))


def posture_of(keyring: Keyring, node: str) -> tuple[str, str]:
    """(posture, protocol) of ``node`` now: from the one rollout naming it that did not abort.

    Raises:
        KeyringTampered: a rollout's row fails its seal, or the rows do not add up to the
            keyring's roster (a rollout deleted, or an older copy put back).
        PolicyError: a rollout's row does not validate.
    """
    with keyring.store.snapshot() as db:
        sealed.Guard().check(keyring.store, db)
        rows = _rows(keyring, db)
    return _posture(rows, node)


def _posture(rows: list[dict[str, Any]], node: str) -> tuple[str, str]:
    for row in rows:
        rollout = _load(row)
        if row["phase"] != "aborted" and node in rollout.nodes:
            return rollout.posture(row["phase"], node), rollout.protocol
    return "classic", DEFAULT_PQ_PROTOCOL


# -- the leader's side --------------------------------------------------------------------------

def start(orch: Orchestrator, rollout: PqRollout) -> None:
    """Record ``rollout`` in phase ``canary`` (any node may; the leader's ticks advance it)."""
    if not isinstance(rollout, PqRollout):
        raise PolicyError(f"rollout: expected a PqRollout, got {type(rollout).__name__}")
    ring = orch.keyring
    with ring.store.write() as tx:  # the keyring's write lock: two starts at once are serialised
        for row in _rows(ring, tx):
            taken = set(_load(row).nodes) & set(rollout.nodes) if row["phase"] != "aborted" else set()
            if taken:
                raise PolicyError(f"nodes: {', '.join(sorted(taken))} already in PQ rollout {row['name']!r}")
        row = {"name": rollout.name, "nodes": json.dumps(list(rollout.nodes)), "protocol": rollout.protocol,
               "canary": rollout.canary, "watch_seconds": parse_seconds(rollout.watch, "watch"),
               "max_failure_rate": rollout.max_failure_rate, "phase": "canary", "detail": "",
               "since": sealed.now(tx)}
        if not sealed.put(ring.store, tx, sealed.ROLLOUTS, row, replace=False):
            raise PolicyError(f"rollout: {rollout.name!r} exists already")
        tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, rollout.name))


def status(orch: Orchestrator) -> list[dict[str, Any]]:
    """Every PQ rollout: name, nodes, canary nodes, protocol, phase, since, detail.

    Raises:
        KeyringTampered: the rows do not add up to the keyring's roster.
    """
    out = []
    with orch.verified() as db:
        rows = sealed.read_each(orch.keyring.store, db, sealed.ROLLOUTS)
    for row, damaged in sorted(rows, key=lambda item: str(item[0]["name"])):
        if damaged is not None:  # status shows the damage instead of failing altogether
            out.append({"name": str(row["name"]), "phase": "tampered", "since": row["since"].isoformat()})
            continue
        try:
            r = _load(row)
            detail = json.loads(row["detail"] or "{}")
        except (PolicyError, ValueError):
            out.append({"name": str(row["name"]), "phase": "malformed", "since": row["since"].isoformat()})
            continue
        out.append({"name": r.name, "nodes": list(r.nodes), "canary_nodes": list(r.canary_nodes()),
                    "protocol": r.protocol, "phase": row["phase"], "since": row["since"].isoformat(),
                    "detail": detail})
    return out


def advance(orch: Orchestrator, state: LeaseState) -> list[tuple[str, str]]:
    """One leader tick over every rollout not finished; returns (name, new phase)s.

    Each rollout steps on its own: one whose row fails its seal or does not validate is named
    after the others advanced (``status`` shows it as ``tampered`` or ``malformed``), not a
    stop for every rollout.

    Raises:
        KeyringTampered: a rollout's row fails its seal, or the rows do not add up to the roster.
        PolicyError: a rollout could not go on (each named with the reason).
        Fenced: this leader's lease is no longer current (nothing more is tried this tick).
        InternalError: the database failed (the next tick retries).
    """
    from .orchestrator import Fenced

    changed = []
    with orch.verified() as db:
        # Finished rows are checked too: a phase forged to 'aborted' must not hide one.
        rows = sealed.read_each(orch.keyring.store, db, sealed.ROLLOUTS)
        clock = sealed.now(db)
    damaged: list[XpsError] = []
    refused: list[str] = []
    for row, error in sorted(rows, key=lambda item: str(item[0]["name"])):
        if error is not None:
            damaged.append(error)
            continue
        if row["phase"] in ("retired", "aborted"):
            continue
        try:
            try:
                detail = json.loads(row["detail"] or "{}")
            except ValueError:
                detail = None
            new = _step(orch, state, _load(row), row["phase"], detail, (clock - row["since"]).total_seconds())
        except (InternalError, Fenced):
            raise  # the database away or the lease lost: every other step would fail the same way
        except XpsError as exc:
            refused.append(f"PQ rollout {show(row['name'])}: {exc.args[0]}")
        else:
            if new is not None:
                changed.append((row["name"], new))
    if refused:
        raise PolicyError("; ".join([*(str(d.args[0]) for d in damaged), *refused]), reason="blocked")
    if damaged:
        raise damaged[0]
    return changed


def _counts(orch: Orchestrator, nodes: tuple[str, ...], pq: bool) -> tuple[float, float]:
    """(established, failed) handshakes of kind ``pq`` on ``nodes``, over every instance.

    Failures before the peer authenticated are left out whatever their ``pq`` label (the
    channel counts them as classic already): a peer with no credentials must not sway the decision.
    """
    ok = failed = 0.0
    for _node, labels, value in orch.counters.rows(_COUNTER, nodes):
        if labels.get("pq") == ("true" if pq else "false"):
            result = labels.get("result")
            if result == "ok":
                ok += value
            elif result != UNAUTHENTICATED:
                failed += value
    return ok, failed


def _step(orch: Orchestrator, state: LeaseState, r: PqRollout, phase: str, detail: Any,
          elapsed: float) -> str | None:
    if not isinstance(detail, dict) or not _detail_ok(detail):
        raise PolicyError(f"xps_pq_rollouts row {r.name!r}: detail is malformed (edited outside xps?)",
                          reason="malformed")
    if phase == "canary":
        ok, failed = _counts(orch, r.canary_nodes(), pq=True)
        if "base" not in detail:  # the counts before the canary offered anything
            _set_phase(orch, state, r, "canary", "canary", {"base": [ok, failed]})
            return None
        d_ok, d_failed = ok - detail["base"][0], failed - detail["base"][1]
        total = d_ok + d_failed
        rate = d_failed / total if total > 0 else 0.0
        if total >= MIN_SAMPLES and rate > r.max_failure_rate:
            incident = {"rollout": r.name, "reason": "PQ canary handshake failure rate", "failures": int(d_failed),
                        "handshakes": int(total), "rate": round(rate, 6), "max_rate": r.max_failure_rate,
                        "node": orch.node}
            return _set_phase(orch, state, r, "canary", "aborted", {**detail, "failures": d_failed, "total": total},
                              incident=incident)
        if elapsed >= parse_seconds(r.watch, "watch"):
            classic, _ = _counts(orch, r.nodes, pq=False)
            return _set_phase(orch, state, r, "canary", "committed",
                              {**detail, "failures": d_failed, "total": total, "classic": classic})
        return None
    if phase == "committed":
        classic, _ = _counts(orch, r.nodes, pq=False)
        if classic != detail.get("classic"):  # a classic peer still connected: wait a full watch again
            _set_phase(orch, state, r, "committed", "committed", {**detail, "classic": classic})
            return None
        if elapsed >= parse_seconds(r.watch, "watch"):
            return _set_phase(orch, state, r, "committed", "retired", detail)
    return None


def _detail_ok(detail: dict[str, Any]) -> bool:
    base = detail.get("base", [0, 0])
    numbers = [*base, detail.get("classic", 0)] if isinstance(base, list) and len(base) == 2 else None
    return numbers is not None and all(type(n) in (int, float) and math.isfinite(n) for n in numbers)


def _set_phase(orch: Orchestrator, state: LeaseState, r: PqRollout, old: str, new: str,
               detail: dict[str, Any], *, incident: dict[str, Any] | None = None) -> str | None:
    """Fenced phase change; ``new == old`` restarts the phase's clock with a new ``detail``.

    The journal records go through the keyring's outbox in the same transaction, so a kill -9
    right after the commit loses none (the next delivery, on any node, writes them once).
    """
    from .lease import FENCE

    ring = orch.keyring
    with ring.store.write() as db:
        rows = sealed.read(ring.store, db, sealed.ROLLOUTS, "name = ?", (r.name,))
        done = bool(rows) and rows[0]["phase"] == old and sealed.put(
            ring.store, db, sealed.ROLLOUTS,
            {**rows[0], "phase": new, "detail": json.dumps(detail, sort_keys=True), "since": sealed.now(db)},
            only_if=(FENCE, state.fence()))
        if done and new != old:
            db.execute("SELECT pg_notify(?, ?)", (CHANNEL, r.name))
            if incident is not None:
                ring.outbox.add(db, "INCIDENT", **incident)
            ring.outbox.add(db, "PQ_ROLLOUT", rollout=r.name, phase=new, protocol=r.protocol, node=orch.node,
                            token=state.token)
    if done and new != old:
        ring.outbox.deliver()
    return new if done else None


# -- every node's side --------------------------------------------------------------------------

class PqPosture:
    """Follow this node's posture in the PQ rollouts and hand each change to ``on_change``.

    The rollouts' rows are sealed under the keyring's integrity key (see
    :mod:`xpscerpto.db.sealed_tables`), so a follower needs the node's keyring (on the shared
    PostgreSQL database) to tell a phase the leader wrote from one someone edited. A row that
    fails its seal, or rows that changed without the keyring's roster changing (one deleted, or
    put back from an older copy), leave the posture as it was and set :attr:`last_error`.

    Args:
        keyring: this node's keyring on the shared database (migration 8 applied).
        node: this node's name, as the rollout lists it.
        base: the node's own channel configuration (the ``classic`` posture).
        on_change: called with the new :class:`ChannelConfig` (e.g. ``server.reconfigure``).
        poll: seconds between polls when no notification comes.

    :attr:`config` is the configuration to use now (pass it to ``connect``).
    """

    def __init__(self, keyring: Keyring, *, node: str, base: ChannelConfig,
                 on_change: Callable[[ChannelConfig], None] | None = None, poll: float = 2.0) -> None:
        from xpscerpto.db.postgres import Database
        from xpscerpto.keyring import Keyring

        from .orchestrator import SCHEMA, adopt_rows

        database = getattr(keyring.store, "database", None) if isinstance(keyring, Keyring) else None
        if not isinstance(database, Database):
            raise PolicyError("keyring: expected this node's Keyring on the shared postgresql:// database (the "
                              "rollouts' rows are checked against its integrity key)")
        if not isinstance(base, ChannelConfig):
            raise PolicyError(f"base: expected a ChannelConfig, got {type(base).__name__}")
        if not isinstance(node, str) or not node or len(node) > 200 or not node.isprintable():
            raise PolicyError("node: expected a printable node name of 1 to 200 characters")
        # Its own connections: LISTEN holds one, and stop() closes them, not the keyring's.
        self.database = open_migrated(database.dsn, SCHEMA, "PQ rollout database")
        try:
            adopt_rows(keyring)
        except BaseException:
            self.database.close()
            raise
        self.keyring = keyring
        self._guard = sealed.Guard()
        self.node, self.base, self.poll = node, base, poll
        self._on_change = on_change
        self.posture = "classic"
        self.config = base
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xps-pq-{node}", daemon=True)

    def refresh(self) -> str:
        """Read the posture now and apply it if it changed; returns it.

        Raises:
            InternalError: the database is unreachable (the posture stays as it was).
            KeyringTampered: a row fails its seal, or the rows no longer add up to the
                keyring's roster (the posture stays as it was).
            PolicyError: a rollout's row does not validate (the posture stays as it was).
        """
        store = self.keyring.store
        with store.snapshot() as db:
            # A deleted rollout reads as classic: the rows must add up to the roster now, not
            # at the keyring's next full check.
            self._guard.check(store, db)
            rows = _rows(self.keyring, db)
        posture, protocol = _posture(rows, self.node)
        config = channel_config(posture, self.base, protocol)
        if config != self.config:
            if self._on_change is not None:
                self._on_change(config)  # first: if it fails, the next refresh tries again
            self.config = config
        self.posture = posture
        return posture

    def start(self) -> PqPosture:
        """Read the posture, then follow notifications (and poll) in a daemon thread.

        Raises:
            KeyringTampered: the rollout rows fail their seals or the roster (nothing started:
                a node must not begin on its classic default over rows someone edited). The
                database being away is not raised: the follower starts and retries.
        """
        # The database away: follow anyway, the poll retries. Rows that fail their seal or the
        # roster are raised to the caller instead of starting on the classic default.
        with contextlib.suppress(InternalError):
            self.refresh()
        self.database.listen(CHANNEL, lambda _payload: self._wake.set(), on_reconnect=self._wake.set)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and close the connections."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.database.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.last_error = None
            except XpsError as exc:  # the database away: keep the last posture, retry
                self.last_error = str(exc)
            except Exception as exc:  # a bug (or a failing on_change) must not end following for good
                self.last_error = f"XPS_ERR_INTERNAL: {type(exc).__name__}"
            self._wake.wait(self.poll)
            self._wake.clear()
