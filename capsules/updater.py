"""The updater: the only thing that changes routing at runtime.

A capsule flows one way: bytes -> :func:`verify_capsule` -> :func:`validate_isolated`
(child process) -> load from the verified bytes -> in-process KAT -> stage (optional canary
and dual-run) -> commit ``state.json`` -> publish the new table -> drain the old one. Any
refusal is audited as PATCH_REJECT and leaves routing untouched; a bad signal after staging
republishes the previous table (PATCH_ROLLBACK).

Drain detection costs the call path nothing: every API call holds the table it loaded in a
local variable, so the replaced table is freed exactly when the last call that loaded it
returns. A ``weakref.finalize`` on it marks the drain complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from xpscerpto._config_fields import MAX_DURATION
from xpscerpto._routing import RoutingTable
from xpscerpto.audit import AuditLog
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.interfaces import OPERATIONS, Provider
from xpscerpto.kat.selftest import parse_vectors, run_selftest
from xpscerpto.settings import EngineConfig
from xpscerpto.signing import TrustStore

from . import _tamper
from ._canary import transitional
from ._verifier import VerifiedCapsule, verify_capsule
from .config import HotpatchConfig
from .crash_guard import DEFAULT_CRASH_LIMIT, CrashGuard
from .engine_lock import EngineLockHeld, take_engine_lock
from .format import Limits, Manifest
from .isolate import Gates, validate_isolated
from .loader import load_provider
from .policy_record import config_digest, policy_fields
from .refusal import Refusal, refuse
from .state_store import FileStateStore, StateStore
from .store import ActiveCapsule, CapsuleStore, RoutingState, merged, refused_entry

__all__ = ["BUILT_IN", "COMMITTED", "Drain", "StagePlan", "Updater"]

_log = logging.getLogger(__name__)

#: How many recent tables' capsule attributions are kept (a call older than that many swaps
#: that faults is not charged to anyone).
_SERVING_TABLES = 256

#: Seconds between a drain report's looks at whether the updater was closed meanwhile.
_DRAIN_POLL = 0.1

#: Seconds :meth:`Updater.close` waits in all for the updater's threads to end.
CLOSE_TIMEOUT = 10.0

#: ``rollback(..., to=BUILT_IN)``: take the capsule out with no stored version restored (the
#: built-in provider serves); what a PATCH_ROLLBACK record's ``to`` says then. Never a version.
BUILT_IN = "built-in"

#: Suffix of the event listeners hear once a journaled change is committed to the state store
#: (``PATCH_ENABLE`` + COMMITTED): what may be announced to other nodes.
COMMITTED = "_COMMITTED"


@dataclass(frozen=True, slots=True)
class StagePlan:
    """How a verified capsule goes live.

    A canary share routes that fraction of calls to the new implementation (compared with,
    and falling back to, the current one on any fault or difference); dual-run answers every
    call with the current one and shadow-compares the new one. After cutover, for
    ``sample_seconds``, one call in ``sample_every`` is also computed by the implementation that
    was replaced; a difference rolls the capsule back (``rollback_on_error`` or not: a wrong
    answer is not an error the caller sees). Zero seconds skips a phase.
    """

    canary_share: float = 0.1
    canary_seconds: float = 0.0
    dual_run_seconds: float = 0.0
    drain_timeout: float = 30.0  # seconds to wait for calls on the old table before reporting
    sample_every: int = 64  # after cutover, 1 call in this many is also computed by the replaced one
    sample_seconds: float = 0.0  # ...for this long (0: no sampled check; `xps watch` runs 30 s by default)
    #: ``hotpatch.rollback_on_error``: False keeps a capsule whose calls fault after cutover
    #: (the first fault of each capsule is journaled as PATCH_FAULT) instead of rolling it back.
    rollback_on_error: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rollback_on_error, bool):  # 0 or None must not switch rollback off
            raise PolicyError(f"plan: rollback_on_error must be a bool, got {type(self.rollback_on_error).__name__}")
        # Checked here, not only in the configuration: `xps watch --canary-share nan` once went
        # straight into a plan, and a canary of 1e300 s overflowed the trial's wait.
        if not _number_in(self.canary_share, 0.0, 1.0):
            raise PolicyError("plan: canary_share must be a number from 0 to 1")
        for name in ("canary_seconds", "dual_run_seconds", "drain_timeout", "sample_seconds"):
            if not _number_in(getattr(self, name), 0.0, MAX_DURATION):
                raise PolicyError(f"plan: {name} must be seconds from 0 to {MAX_DURATION:.0f} (100 years)")
        if type(self.sample_every) is not int or self.sample_every < 1:
            raise PolicyError("plan: sample_every must be an int of at least 1")


def _number_in(value: object, low: float, high: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


@dataclass
class Drain:
    """Tracks the calls still running on a replaced table."""

    table_version: int
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    seconds: float | None = None

    def _finished(self) -> None:  # runs in whichever thread drops the last reference
        self.seconds = time.monotonic() - self.started
        self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every call that loaded the old table has returned."""
        return self.done.wait(timeout)


@dataclass(frozen=True)
class _Loaded:
    capsule: VerifiedCapsule
    provider: Provider


class Updater:
    """Applies, stages, enables and rolls back capsules for one engine and one home.

    Example:
        >>> eng = Engine()                                        # doctest: +SKIP
        >>> up = Updater(eng, "/var/lib/xps"); up.restore()      # doctest: +SKIP
        >>> up.apply(Path("x-1.0.0.capsule").read_bytes())       # doctest: +SKIP
    """

    def __init__(self, engine: Engine, home: str | Path | Home | None = None, *, gates: Gates = Gates(),
                 plan: StagePlan = StagePlan(), limits: Limits = Limits(), operator: str = "local",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), audit: AuditLog | None = None,
                 config_document: Mapping[str, Any] | None = None, crash_limit: int = DEFAULT_CRASH_LIMIT,
                 state_store: StateStore | None = None, trust_path: str | Path | None = None) -> None:
        self.engine = engine
        # The whole effective configuration when a service runs us (its digest goes into
        # PATCH_ENABLE / PATCH_ROLLBACK); engine config, gates, plan and limits are always counted.
        self._config_document = config_document
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        # The pinned publisher keys: the home's trust.json unless the configuration puts them
        # elsewhere (``hotpatch.trust_store``), out of reach of whoever can write the home.
        # A home that recorded a trust store elsewhere refuses an updater not told where it is.
        self.trust_path = HotpatchConfig().trust_path(self.home) if trust_path is None else Path(trust_path)
        self.gates, self.plan, self.limits, self.operator, self._clock = gates, plan, limits, operator, clock
        self.store = CapsuleStore(self.home)
        #: Where the committed routing state lives (``state.json``, or a database row per node).
        self.state_store: StateStore = state_store if state_store is not None else FileStateStore(self.home)
        self._crash_guard = CrashGuard(self.home, crash_limit)
        self.audit = audit or AuditLog(self.home.audit)
        self._lock = threading.RLock()  # one update at a time; never taken by API calls
        self._event_listeners: tuple[Callable[[str, Mapping[str, Any]], None], ...] = ()
        self._loaded: dict[str, _Loaded] = {}
        self._selftested: set[str] = set()  # sha256 of each loaded capsule whose KATs passed here
        self._state = RoutingState()
        self._restored = False
        self._held: dict[str, dict[str, str]] = {}  # sha256 -> why its stored file was refused at start
        self._tainted: str | None = None  # set once refused capsule code has run in this process
        self._staging: str | None = None  # capsule name under canary/dual-run
        self._stage_fault: queue.Queue[str] = queue.Queue()
        # (provider, detail, table version, wrong answer): a sampled call whose answer differs
        # from the replaced implementation's is rolled back whatever rollback_on_error says.
        self._faults: queue.Queue[tuple[str, str, int, bool] | None] = queue.Queue()
        # table version -> capsule name -> sha256 of the capsule that served under that name in
        # that table: a fault is charged to the capsule of the table the faulting call used.
        self._serving: dict[int, dict[str, str]] = {}
        self.last_drain: Drain | None = None
        # Every thread this updater starts (drain reports, rollbacks, sampling timers) is listed
        # here until it ends, so that close() can end or wait for each: an updater that outlived
        # its close() kept them, and a long-lived process making updaters ran out of threads.
        self._threads_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._rolling_back: set[str] = set()  # sha256 of each capsule a rollback thread is taking out
        self._faults_kept: set[str] = set()  # sha256 of each capsule whose kept fault was journaled
        self._closed = threading.Event()
        self._abandoned = threading.Event()  # close() stopped waiting for an update under way
        engine.add_table_fault_listener(self._on_provider_fault)
        self._watcher = threading.Thread(target=self._watch_faults, name="xps-fault-watch", daemon=True)
        self._watcher.start()

    # -- start-up ---------------------------------------------------------------------------

    def restore(self, *, sole_engine: bool = False) -> RoutingTable:
        """Re-verify and load the committed active capsules, then publish their table.

        ``sole_engine``: the caller holds the home's engine lock (a :class:`WatchService` does),
        so the crash guard counts any earlier run's marker as an abnormal end, whatever
        process has its pid now (see :meth:`CrashGuard.begin`).

        A capsule that no longer verifies (key unpinned, expired, refused by policy) is dropped
        from the committed state with a PATCH_REJECT event; the rest stay routed. A capsule whose
        *stored file* is missing or damaged is a storage fault, not a decision: it is refused
        (not routed, PATCH_REJECT with ``held``), stays in the committed state and is listed
        under ``refused`` by :meth:`status` until its file is restored (re-drop the capsule) or
        an operator rolls it back. So is every committed capsule while the trust store is
        unreadable, damaged or missing (not an unpinning: a storage fault), and one whose
        validation child crashes or times out at restore (this machine, not the capsule, may be
        the cause): held, never silently dropped.
        """
        with self._lock, self.state_store.lock():
            self._check_open("restore")
            # Journaled before anything is verified under the relaxed gates: a journal that
            # refuses stops the start here.
            self._journal_gates_off("restore")
            state = self.state_store.load()
            counts = self._crash_guard.begin(state.active, sole_engine=sole_engine)
            for cap in state.active:
                if counts.get(cap.sha256, 0) >= self._crash_guard.limit:
                    state = self._quarantine(state, cap, counts[cap.sha256])
            keep: list[ActiveCapsule] = []
            held: dict[str, dict[str, str]] = {}
            trust_fault = self._trust_fault(state)
            for cap in state.active:
                try:
                    if trust_fault is not None:
                        raise trust_fault
                    raw = self.store.get(cap.sha256)
                except XpsError as exc:
                    self._hold(cap, exc, keep, held)
                    continue
                try:
                    # The child validates again before this process runs the code: a capsule that
                    # crashes must not crash-loop the engine at every start.
                    if self.gates.run_selftests:
                        validate_isolated(self._verify(raw, state, cap.version), {},
                                          replace(self.gates, bench_bytes=0))
                    loaded = self._load(raw, state, allow_version=cap.version)
                    keep.append(replace(cap, operations=tuple(sorted(loaded.capsule.manifest.operations))))
                except Exception as exc:
                    if not isinstance(exc, XpsError):
                        # Not the capsule's verdict but a failure of ours or of this machine (no
                        # process or thread to spare): held and journaled like a crashed child,
                        # never escaping unjournaled and stopping the start.
                        _log.error("xps: restoring capsule %s failed: %s", cap.sha256[:12], type(exc).__name__)
                        self._hold(cap, refuse(Refusal.INTERNAL, f"restore: validating {cap.name} {cap.version} "
                                                                 f"failed ({type(exc).__name__}); see the "
                                                                 "engine's log"), keep, held)
                        continue
                    if exc.reason in (Refusal.CRASHED, Refusal.TIMEOUT):
                        # The validation child died or ran out of time: this machine's state now
                        # (limits, memory, load) may be the cause, not the capsule, which passed
                        # that check when it was enabled. Held, never silently dropped.
                        self._hold(cap, exc, keep, held)
                        continue
                    self._audit("PATCH_REJECT", sha256=cap.sha256, name=cap.name, version=cap.version,
                                phase="restore", reason=exc.reason, detail=str(exc))
            if tuple(keep) != state.active:
                state = RoutingState(tuple(keep), state.highest, state.history, state.enabled, state.op_highest)
                self.state_store.save(state)
            self._state = state
            self._held = held
            self._restored = True
            with self.engine.publishing():
                self._publish(self._table_for(state.active))
            return self.engine.table

    def _hold(self, cap: ActiveCapsule, exc: XpsError, keep: list[ActiveCapsule],
              held: dict[str, dict[str, str]]) -> None:
        """Keep ``cap`` committed but unrouted, listed as refused until the fault is repaired."""
        held[cap.sha256] = refused_entry(cap, exc)
        self._audit("PATCH_REJECT", sha256=cap.sha256, name=cap.name, version=cap.version,
                    phase="restore", reason=exc.reason, detail=str(exc), held=True)
        keep.append(cap)

    def _trust_fault(self, state: RoutingState) -> XpsError | None:
        """Why the trust store cannot judge the committed capsules (a storage fault), or None.

        An unreadable, damaged or missing trust file is not an unpinning: deciding against every
        committed capsule on it would silently retire them all. They are held instead.
        """
        if not state.active:
            return None
        where = str(self.trust_path)
        if not os.path.lexists(self.trust_path):
            return refuse(Refusal.IO, f"trust store {where!r}: missing while {len(state.active)} capsule(s) are "
                                      "committed; restore it from a backup, or roll them back")
        try:
            TrustStore.load(self.trust_path)
        except XpsError as exc:
            return refuse(Refusal.IO, f"{str(exc).removeprefix(exc.code.value + ': ')}; restore it from a backup")
        return None

    def _quarantine(self, state: RoutingState, cap: ActiveCapsule, crashes: int) -> RoutingState:
        """Take ``cap`` out before it runs again: it was active through ``crashes`` abnormal ends."""
        restore = None
        if cap.replaced is not None and cap.replaced_version is not None:
            restore = ActiveCapsule(cap.name, cap.replaced_version, cap.replaced, cap.operations)
        new = state.disable(cap, operator="auto", restore=restore)
        fields = {"sha256": cap.sha256, "name": cap.name, "version": cap.version,
                  "to": restore.version if restore else BUILT_IN, "operator": "auto", "phase": "restore",
                  "reason": f"quarantined: active during {crashes} abnormal engine ends",
                  "policy": self._policy((), cap.operations)}
        self._audit("PATCH_ROLLBACK", **fields)
        self.state_store.save(new)
        self._committed("PATCH_ROLLBACK", fields)
        self._crash_guard.forget(cap.sha256)
        return new

    def _check_open(self, action: str) -> None:
        if self._closed.is_set():
            raise refuse(Refusal.CLOSED, f"{action}: this updater was closed; use a new one (or `xps rollback` "
                                         "offline)")

    def _ensure_restored(self) -> None:
        # Applying before restoring would check versions against an empty memory and could
        # overwrite the committed downgrade protection; restore first, always.
        if not self._restored:
            self.restore()

    # -- the pipeline -----------------------------------------------------------------------

    def apply(self, raw: bytes, *, source: str = "api", operator: str | None = None) -> ActiveCapsule:
        """Verify, validate, stage and enable a capsule; raise UpdateError/PolicyError if refused.

        Every step is audited; a refusal leaves routing and committed state untouched. The exact
        bytes of a capsule already active and routed are verified again and returned as that
        capsule, changing nothing (journaled as ``PATCH_VERIFY`` with ``already_active: true``).
        """
        operator = operator or self.operator
        sha = hashlib.sha256(raw).hexdigest()
        self._check_open("apply")  # a closed updater journals nothing more
        try:
            self._ensure_restored()
        except XpsError as exc:
            # The capsule is refused because the start failed (the state lock or file damaged):
            # still a refusal, so still journaled.
            self._reject(exc, sha256=sha, source=source, operator=operator)
            raise
        except Exception as exc:
            raise self._reject(exc, sha256=sha, source=source, operator=operator) from exc
        with self._lock:
            # Checked under the lock, before anything is journaled: close() waits for an update
            # already holding it, and one that starts later must not enable a capsule (or start
            # threads) with nobody left to roll it back on a fault.
            self._check_open("apply")
            self._audit("PATCH_LOAD", sha256=sha, source=source, operator=operator, bytes=len(raw))
        with self._lock:
            try:
                # Taking the state lock is inside: a damaged lock file refuses this capsule like
                # any other step does (it once escaped as an unjournaled IsADirectoryError).
                with self.state_store.lock():
                    self._check_open("apply")  # closed while this call waited for the lock
                    self._merge_committed_highest()
                    return self._apply(raw, sha, operator)
            except XpsError as exc:
                self._reject(exc, sha256=sha, source=source, operator=operator)
                raise
            except Exception as exc:
                raise self._reject(exc, sha256=sha, source=source, operator=operator) from exc

    def _reject(self, exc: Exception, **fields: Any) -> XpsError:
        """Journal PATCH_REJECT for ``exc`` and return the typed error to raise.

        Anything not an XpsError (a bug, or the machine failing under us) becomes an ``internal``
        refusal named by its type only: its text may carry paths or caller bytes.
        """
        if isinstance(exc, XpsError):
            err = exc
        else:
            _log.error("xps: capsule %s refused: %s", str(fields.get("sha256", "?"))[:12], type(exc).__name__)
            err = refuse(Refusal.INTERNAL, f"internal error ({type(exc).__name__}); see the engine's log")
        reason = err.reason if isinstance(err.reason, Refusal) else Refusal.INTERNAL
        self._audit("PATCH_REJECT", **fields, reason=reason, detail=str(err))
        return err

    def _taint(self, why: str) -> None:
        """Refused capsule code ran here: what it did cannot be undone, so no more capsules."""
        if self._tainted is None:
            self._tainted = why
            with contextlib.suppress(XpsError):
                self._audit("PATCH_REJECT", phase="engine", reason=Refusal.TAINTED, detail=why, engine_tainted=True)

    def _apply(self, raw: bytes, sha: str, operator: str) -> ActiveCapsule:
        if self._tainted is not None:
            raise refuse(Refusal.TAINTED, f"engine: refused capsule code ran in this process ({self._tainted}); "
                                          f"restart the engine before applying another capsule")
        serving = next((a for a in self._state.active if a.sha256 == sha), None)
        if serving is not None and sha not in self._held:
            return self._already_active(raw, serving, operator)
        # The same capsule dropped again repairs a stored file refused at start: its version is
        # the committed one, so the downgrade check must let exactly that version through.
        repair = self._held.get(sha)
        capsule = self._verify(raw, self._state, repair["version"] if repair else None)
        m = capsule.manifest
        self._audit("PATCH_VERIFY", sha256=sha, name=m.name, version=m.version,
                    publisher=sorted(capsule.signed_by), operator=operator, **self._gates_off_field())
        if self.gates.run_selftests:
            report = validate_isolated(capsule, self._current_impls(m.operations), self.gates)
            self._audit("PATCH_KAT", sha256=sha, name=m.name, version=m.version, kat=report.kat,
                        differential=list(report.diff_checked), slowdown=report.slowdown,
                        child_seconds=round(report.seconds, 3))
        else:
            self._audit("PATCH_KAT", sha256=sha, name=m.name, version=m.version, skipped="run_selftests",
                        **self._gates_off_field())
        loaded = self._load(raw, self._state, verified=capsule)
        self.store.put(raw)
        cap = ActiveCapsule(m.name, m.version, sha, tuple(sorted(m.operations)))
        self._audit("PATCH_STAGE", sha256=sha, name=m.name, version=m.version, operations=list(cap.operations))

        reference = self._current_impls(m.operations)  # what serves now: the sampled check's yardstick
        previous, previous_held = self._state, self._held
        trialled: str | None = None  # the last trial's mode
        # The engine's table lock, held from building the enabled table to publishing it.
        hold = contextlib.ExitStack()
        try:
            for mode, seconds in (("canary", self.plan.canary_seconds), ("dual-run", self.plan.dual_run_seconds)):
                if seconds > 0:
                    trialled = mode
                    self._trial(loaded, mode, seconds, operator)
            # close() may have stopped waiting for this update (its timeout shorter than the
            # trials): then no fault watcher is left to roll back what this would enable.
            if self._abandoned.is_set():
                raise refuse(Refusal.CLOSED, "apply: the updater was closed during the trials and stopped "
                                             "watching for faults; nothing enabled")
            # The trial's table serves until the enable is published: a fault it reported after
            # the window closed counts as the trial's.
            if trialled is not None and (late := self._late_trial_fault()) is not None:
                self._fail_trial(loaded, trialled, late)
            state = self._state.enable(cap, operator=operator)
            held = {k: h for k, h in self._held.items() if h["name"] != m.name}  # replaced (or repaired) now
            hold.enter_context(self.engine.publishing())  # from building the table to publishing it
            table = self._table_for(state.active, held=held)
            # Journal first: if the journal refuses, nothing is enabled. The commit point is the
            # state file; a crash between the two leaves an ENABLE that the restart's state denies
            # (the journal over-reports, never under-reports).
            enabled = {"sha256": sha, "name": m.name, "version": m.version, "operations": list(cap.operations),
                       "publisher": sorted(capsule.signed_by), "operator": operator, "table_version": table.version,
                       "policy": self._policy(capsule.signed_by, cap.operations, capsule.trust),
                       **self._gates_off_field()}
            self._audit("PATCH_ENABLE", **enabled)
            self.state_store.save(state)
            self._committed("PATCH_ENABLE", enabled)
        except XpsError:
            # A trial that passed left its table published; the journal or the state store then
            # refusing (full disk, database away) must not leave the candidate serving traffic
            # that nothing committed (found by stopping PostgreSQL during a canary).
            hold.close()
            if trialled:
                with self.engine.publishing():
                    self._publish(self._table_for(previous.active))
            raise
        except BaseException:
            # Not a refusal but a bug or an interrupt: still, a trial table must not keep serving
            # a capsule that nothing enabled.
            hold.close()
            if trialled:
                with self.engine.publishing():
                    self._publish(self._table_for(previous.active))
            raise
        self._state = state
        self._held = held
        with hold:
            self._publish(table)
        # Faults the trial's table reported while the enable was being journalled and saved.
        if trialled is not None and (late := self._late_trial_fault()) is not None:
            self._undo_enable(previous, previous_held, cap, signed_by=capsule.signed_by,
                              reason=f"{trialled} fault reported at cutover: {late}")
            self._refuse_trial(m, trialled, f"{late} (reported at cutover); rolled back")
        # A KAT re-check in the live process, now that the provider serves traffic.
        failure = self._kat_failure(loaded) if self.gates.run_selftests else None
        if failure is not None:
            self._undo_enable(previous, previous_held, cap, signed_by=capsule.signed_by,
                              reason=f"KAT re-check failed: {failure}")
            self._taint(f"{m.name} {m.version} failed its KAT re-check after cutover")
            raise refuse(Refusal.KAT_RECHECK, f"enable: KAT re-check failed after cutover ({failure}); rolled back")
        if self.plan.sample_seconds > 0 and reference:
            self._start_sampling(loaded, reference)
        return cap

    def _already_active(self, raw: bytes, cap: ActiveCapsule, operator: str) -> ActiveCapsule:
        """``raw`` is exactly ``cap``, committed and routed: nothing to change; journal that.

        A watch killed after committing an enable but before filing the dropped file finds the
        file again at its next start. Its version is the highest accepted, so the rollback check
        refused the very capsule that serves, and the inbox and journal said the fix was refused.
        Verified again (exactly this version allowed), so that a capsule today's trust store or
        policy refuses is refused; nothing is staged, committed or republished.
        """
        capsule = self._verify(raw, self._state, cap.version)
        m = capsule.manifest
        self._audit("PATCH_VERIFY", sha256=cap.sha256, name=m.name, version=m.version,
                    publisher=sorted(capsule.signed_by), operator=operator, already_active=True,
                    **self._gates_off_field())
        return cap

    def _start_sampling(self, loaded: _Loaded, reference: Mapping[str, object]) -> None:
        """For ``plan.sample_seconds`` after cutover, compare 1 call in ``plan.sample_every``
        with the implementation it replaced; a difference is a fault of this capsule."""
        name = loaded.provider.name
        version: list[int] = []

        def fault(detail: str) -> None:  # a sampled call's error path: enqueue only
            self._faults.put((name, detail, version[0] if version else -1, True))

        with self.engine.publishing():
            table = self._table_for(self._state.active, trial=(loaded, "sampled"), reference=reference, fault=fault)
            version.append(table.version)
            self._publish(table)
        self._audit("PATCH_STAGE", sha256=loaded.capsule.sha256, name=name, version=loaded.capsule.manifest.version,
                    phase="sampled", every=self.plan.sample_every, seconds=self.plan.sample_seconds,
                    table_version=table.version)
        timer = threading.Timer(self.plan.sample_seconds, self._run_tracked, args=(self._end_sampling, table.version))
        timer.daemon = True
        timer.name = f"xps-sampling-{table.version}"
        self._start_tracked(timer)

    def _end_sampling(self, version: int) -> None:
        with contextlib.suppress(Exception), self._lock:
            # Nothing replaced the sampling table since, except the engine's own rebuilds of it.
            if self._built_for(self.engine.table.version) == version:
                with self.engine.publishing():
                    self._publish(self._table_for(self._state.active))

    def _undo_enable(self, previous: RoutingState, previous_held: dict[str, dict[str, str]], cap: ActiveCapsule,
                     *, signed_by: Any, reason: str) -> None:
        """Put back exactly the state before ``cap`` was enabled: routing, active set, version memory.

        A refused capsule must not count as seen (its version would block fixed releases below
        it) nor take its predecessor down with it; only the history says it was tried.
        """
        before = next((a for a in previous.active if a.name == cap.name), None)
        restored = previous.disable(cap, operator="auto")  # same active set and highest; a history entry
        self._held = previous_held
        with self.engine.publishing():  # from building the table to publishing it
            table = self._table_for(restored.active)
            fields = {"sha256": cap.sha256, "name": cap.name, "version": cap.version,
                      "to": before.version if before else BUILT_IN, "operator": "auto", "reason": reason,
                      "table_version": table.version, "policy": self._policy(signed_by, cap.operations)}
            self._audit("PATCH_ROLLBACK", **fields)
            self.state_store.save(restored)
            self._committed("PATCH_ROLLBACK", fields)
            self._state = restored
            self._publish(table)

    def _trial(self, loaded: _Loaded, mode: str, seconds: float, operator: str) -> None:
        """Route through a canary or dual-run implementation; roll back on the first fault."""
        m = loaded.capsule.manifest
        while not self._stage_fault.empty():
            self._stage_fault.get_nowait()
        self._staging = m.name
        try:
            with self.engine.publishing():
                self._publish(self._table_for(self._state.active, trial=(loaded, mode)))
            self._audit("PATCH_STAGE", sha256=loaded.capsule.sha256, name=m.name, version=m.version,
                        phase=mode, share=self.plan.canary_share if mode == "canary" else 1.0, seconds=seconds)
            try:
                problem = self._stage_fault.get(timeout=seconds)
            except queue.Empty:
                return
            self._fail_trial(loaded, mode, problem)
        finally:
            self._staging = None

    def _late_trial_fault(self) -> str | None:
        try:
            return self._stage_fault.get_nowait()
        except queue.Empty:
            return None

    def _fail_trial(self, loaded: _Loaded, mode: str, problem: str) -> NoReturn:
        """Put the routing from before the trial back, journal it and refuse the capsule."""
        m = loaded.capsule.manifest
        with self.engine.publishing():
            self._publish(self._table_for(self._state.active))
        self._audit("PATCH_ROLLBACK", sha256=loaded.capsule.sha256, name=m.name, version=m.version,
                    phase=mode, operator="auto", reason=problem,
                    policy=self._policy(loaded.capsule.signed_by, m.operations))
        self._refuse_trial(m, mode, f"{problem}; previous routing restored")

    def _refuse_trial(self, m: Manifest, mode: str, detail: str) -> NoReturn:
        """A candidate faulted in its trial: its code ran here (taint), and it is refused."""
        self._taint(f"{m.name} {m.version} faulted in {mode}")
        raise refuse(Refusal.CANARY_FAULT if mode == "canary" else Refusal.DUAL_RUN_FAULT, f"{mode}: {detail}")

    # -- rollback ---------------------------------------------------------------------------

    def rollback(self, target: str, *, to: str | None = None, operator: str | None = None,
                 reason: str = "operator request") -> ActiveCapsule:
        """Deactivate the capsule named ``target`` (or serving operation ``target``).

        Without ``to``, the version it replaced (if any) comes back; with ``to``, that stored
        version of the same capsule is re-verified and enabled instead (``to=BUILT_IN``: none,
        the built-in provider serves).
        """
        _check_rollback_request(target, to)
        self._ensure_restored()
        with self._lock, self.state_store.lock():
            self._check_open("rollback")
            cap = self._state.find(target)
            if cap is None:
                raise refuse(Refusal.NOT_FOUND, f"rollback: no active capsule matches {target!r}")
            return self._rollback(cap, to, operator=operator or self.operator, reason=reason)

    def _merge_committed_highest(self) -> None:
        """Never let the in-memory version memory fall below what is committed on disk."""
        on_disk = self.state_store.load()
        self._state = replace(self._state, highest=merged(self._state.highest, on_disk.highest),
                              op_highest=merged(self._state.op_highest, on_disk.op_highest))

    def _rollback(self, cap: ActiveCapsule, to: str | None, *, operator: str, reason: str) -> ActiveCapsule:
        restore_sha, version = _restore_target(self._state, cap, to)
        restore = None
        if restore_sha is not None and version is not None:
            try:
                raw = self.store.get(restore_sha)
                loaded = self._load(raw, self._state, allow_version=version)
            except XpsError as exc:
                if to is not None:  # the operator named that version: say why it cannot come back
                    raise
                # The version it replaced no longer passes today's policy (a raised signature
                # threshold, an unpinned key, its store file damaged): taking the faulty capsule
                # out still has to work, so the built-in provider serves instead, and we say so.
                reason = f"{reason}; {cap.name} {version} not restored ({exc.reason}), built-in provider serves"
            else:
                m = loaded.capsule.manifest
                restore = ActiveCapsule(m.name, m.version, restore_sha, tuple(sorted(m.operations)))
        state = self._state.disable(cap, operator=operator, restore=restore)
        with self.engine.publishing():  # from building the table to publishing it
            table = self._table_for(state.active)
            gone = self._loaded.get(cap.sha256)
            fields = {"sha256": cap.sha256, "name": cap.name, "version": cap.version,
                      "to": restore.version if restore else BUILT_IN, "operator": operator, "reason": reason,
                      "table_version": table.version,
                      "policy": self._policy(gone.capsule.signed_by if gone else (), cap.operations)}
            self._audit("PATCH_ROLLBACK", **fields)
            self.state_store.save(state)
            # The version the caller chose (None: what the capsule replaced), for other nodes
            # to restore the same one instead of their own predecessor.
            self._committed("PATCH_ROLLBACK", {**fields, "requested_to": to})
            self._state = state
            self._held.pop(cap.sha256, None)
            self._publish(table)
        return cap

    def withdraw(self, sha256: str, *, operator: str, reason: str) -> bool:
        """Forget ``sha256`` as the predecessor of the active capsules of its name; True if any did.

        Routing does not change. Another node's signed rollback took that capsule out of the
        fleet while it was no longer active here: a later plain rollback must then not bring it
        back (the built-in provider serves instead, as for a capsule that replaced nothing).
        Journaled as ``PATCH_ROLLBACK`` with ``active: false``; never told to other nodes.
        """
        self._ensure_restored()
        with self._lock, self.state_store.lock():
            self._check_open("withdraw")
            affected = [a for a in self._state.active if a.replaced == sha256 and a.sha256 != sha256]
            if not affected:
                return False  # followed again, or never this node's predecessor: nothing to forget
            active = tuple(replace(a, replaced=None, replaced_version=None) if a in affected else a
                           for a in self._state.active)
            state = replace(self._state, active=active)
            for cap in affected:
                self._audit("PATCH_ROLLBACK", sha256=sha256, name=cap.name, version=cap.replaced_version,
                            to=cap.version, active=False, operator=operator,
                            reason=f"{reason}; not active here: a later rollback will not restore it")
            self.state_store.save(state)
            self._state = state
            return True

    def reconfigure(self, engine_config: EngineConfig, *, gates: Gates | None = None,
                    plan: StagePlan | None = None, config_document: Mapping[str, Any] | None = None) -> RoutingTable:
        """Apply an (audited, emergency) configuration change: republish routing under it.

        Before :meth:`restore` it routes the built-in providers only; restore then verifies
        and routes the committed capsules under the new configuration.
        """
        with self._lock:
            self._check_open("reconfigure")
            old_gates, old_plan = self.gates, self.plan
            before = self._switches_off()
            if gates is not None:
                self.gates = gates
            if plan is not None:
                self.plan = plan
            if self._restored and self._switches_off() != before:
                try:
                    self._journal_gates_off("reconfigure")
                except XpsError:
                    self.gates, self.plan = old_gates, old_plan
                    raise
            if config_document is not None:
                self._config_document = config_document
            active = self._state.active if self._restored else ()
            with self.engine.publishing():
                return self._publish(self._table_for(active, config=engine_config), config=engine_config)

    # -- status -----------------------------------------------------------------------------

    def status(self, events: int = 20) -> dict[str, Any]:
        """Routing table, active and retired capsules, highest versions, recent events."""
        self._ensure_restored()
        table = self.engine.table
        active_shas = {a.sha256 for a in self._state.active}
        retired = []
        seen = set()
        for e in reversed(self._state.history):
            if e.get("sha256") not in active_shas and e.get("sha256") not in seen:
                seen.add(e.get("sha256"))
                retired.append({k: e.get(k) for k in ("name", "version", "sha256")})
        return {
            "running": True,
            "table_version": table.version,
            "routes": {op: r.provider for op, r in table.routes.items()},
            "unrouted": dict(table.unrouted),
            "active": [{"name": a.name, "version": a.version, "sha256": a.sha256,
                        "operations": list(a.operations)} for a in self._state.active],
            "staging": self._staging,
            "refused": list(self._held.values()),
            "tainted": self._tainted,
            "gates_off": list(self._switches_off()),
            "retired": retired,
            "highest": dict(self._state.highest),
            "events": self.audit.tail(events),
        }

    # -- internals --------------------------------------------------------------------------

    def _verify(self, raw: bytes, state: RoutingState, allow_version: str | None = None) -> VerifiedCapsule:
        return verify_capsule(raw, trust=TrustStore.load(self.trust_path), highest=state.highest,
                              op_highest=state.op_highest,
                              now=self._clock(), policy=self.engine.config.policy, limits=self.limits,
                              allow_version=allow_version, require_signature=self.gates.require_signature,
                              reserved_names=frozenset(p.name for p in self.engine.state.providers))

    def _load(self, raw: bytes, state: RoutingState, *, verified: VerifiedCapsule | None = None,
              allow_version: str | None = None) -> _Loaded:
        """Verify (unless given), import from the verified bytes, and run the KATs in-process."""
        capsule = verified or self._verify(raw, state, allow_version)
        m = capsule.manifest
        cached = self._loaded.get(capsule.sha256)
        if cached is not None:
            # Loaded while run_selftests was off: with it back on, its KATs run before it serves again.
            if self.gates.run_selftests and capsule.sha256 not in self._selftested:
                failure = self._kat_failure(cached)
                if failure is not None:
                    self._taint(f"{m.name} {m.version} failed its KAT after import")
                    raise refuse(Refusal.KAT_FAILED, f"KAT in the engine process: {failure}")
                self._selftested.add(capsule.sha256)
            return cached
        before = _tamper.snapshot(strict=False)
        try:
            provider = load_provider(capsule)
        except Exception as exc:
            # Only the type: a capsule's exception message could carry anything.
            self._taint(f"{m.name} {m.version} failed to import")
            raise refuse(Refusal.LOAD_FAILED, f"load: {type(exc).__name__}") from None
        changed = before.changes()
        if changed:
            self._taint(f"{m.name} {m.version} changed {', '.join(changed)} at import")
            raise refuse(Refusal.ENGINE_STATE, f"load: import changed {', '.join(changed)}")
        loaded = _Loaded(capsule, provider)
        failure = self._kat_failure(loaded) if self.gates.run_selftests else None
        if failure is not None:
            self._taint(f"{m.name} {m.version} failed its KAT after import")
            raise refuse(Refusal.KAT_FAILED, f"KAT in the engine process: {failure}")
        if self.gates.run_selftests:
            self._selftested.add(capsule.sha256)
        self._loaded[capsule.sha256] = loaded
        return loaded

    def _kat_failure(self, loaded: _Loaded) -> str | None:
        m, provider = loaded.capsule.manifest, loaded.provider
        for op, impl in provider.implementations.items():
            vectors = [v for p in m.kat.get(op, ()) for v in parse_vectors(loaded.capsule.files[p])]
            result = run_selftest(provider.name, op, OPERATIONS[op].kind, impl, extra_vectors=vectors)
            if not result.passed:
                return f"{op}: {result.failure}"
        return None

    def _current_impls(self, operations: Mapping[str, str] | tuple[str, ...]) -> dict[str, object]:
        """Operation -> the raw implementation routed now (for differential checks)."""
        table = self.engine.table
        providers = {p.name: p for p in self._all_providers(self._state.active)}
        out: dict[str, object] = {}
        for op in operations:
            route = table.routes.get(op)
            if route is not None and route.provider in providers:
                out[op] = providers[route.provider].implementations[op]
        return out

    def _all_providers(self, active: tuple[ActiveCapsule, ...]) -> list[Provider]:
        return [*self.engine.state.providers,
                *(self._loaded[a.sha256].provider for a in active if a.sha256 not in self._held)]

    def _table_for(self, active: tuple[ActiveCapsule, ...], trial: tuple[_Loaded, str] | None = None,
                   config: EngineConfig | None = None, held: Mapping[str, Any] | None = None, *,
                   reference: Mapping[str, object] | None = None,
                   fault: Callable[[str], None] | None = None) -> RoutingTable:
        config = config or self.engine.config
        held = self._held if held is None else held
        active = tuple(a for a in active if a.sha256 not in held)  # committed, but refused at start
        providers = [*self.engine.state.providers, *(self._loaded[a.sha256].provider for a in active)]
        prefer = dict(config.prefer)
        for a in active:  # later capsules win for the operations they share
            for op in a.operations:
                prefer[op] = a.name
        if trial is not None:
            loaded, mode = trial
            current = reference if reference is not None else self._current_impls(
                tuple(loaded.provider.implementations))
            share = 1 / self.plan.sample_every if mode == "sampled" else self.plan.canary_share
            impls = {op: transitional(op, current[op], new, mode=mode, share=share,
                                      fault=fault or self._stage_fault.put)
                     if op in current else new for op, new in loaded.provider.implementations.items()}
            # Sampling wraps a capsule that is already active: it replaces that provider.
            providers = [p for p in providers if p.name != loaded.provider.name]
            providers.append(replace(loaded.provider, implementations=impls))
            for op in impls:
                prefer[op] = loaded.provider.name
        table = self.engine.build_table(providers, replace(config, prefer=prefer))
        serving = {a.name: a.sha256 for a in active}
        if trial is not None and trial[1] == "sampled":
            serving[trial[0].provider.name] = trial[0].capsule.sha256
        elif trial is not None:
            # Canary and dual-run catch every exception of the candidate and report it to the
            # trial; what escapes their table is the replaced implementation's, which the trial
            # is about to replace: charged to no capsule (not the candidate, and not an active
            # version of the same name, which may not be what served the operation).
            serving.pop(trial[0].provider.name, None)
        self._serving[table.version] = serving
        for old in sorted(self._serving)[:-_SERVING_TABLES]:
            del self._serving[old]
        return table

    def _publish(self, table: RoutingTable, config: EngineConfig | None = None) -> RoutingTable:
        old = self.engine.publish(table, config=config)
        drain = Drain(old.version)
        weakref.finalize(old, drain._finished)
        del old  # from here only in-flight calls keep the old table alive
        self.last_drain = drain
        try:
            self._spawn(self._report_drain, drain, table.version, name=f"xps-drain-{drain.table_version}")
        except RuntimeError:  # no thread to spare: the cutover is done, only its drain report is lost
            _log.error("xps: no thread left for the drain report of table %d; the new table serves",
                       drain.table_version)
        return table

    def _spawn(self, target: Callable[..., object], *args: object, name: str) -> threading.Thread:
        """Start a daemon thread running ``target(*args)``, listed until it ends (see close())."""
        thread = threading.Thread(target=self._run_tracked, args=(target, *args), name=name, daemon=True)
        self._start_tracked(thread)
        return thread

    def _start_tracked(self, thread: threading.Thread) -> None:
        with self._threads_lock:
            self._threads.add(thread)
        try:
            thread.start()
        except BaseException:  # RuntimeError: no thread to spare; the caller decides what then
            with self._threads_lock:
                self._threads.discard(thread)
            raise

    def _run_tracked(self, target: Callable[..., object], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def _report_drain(self, drain: Drain, new_version: int) -> None:
        # Waits in short steps so that close() need not wait out the drain timeout: once closed,
        # a drain still running is not reported (its timeout would say "closed", not "stuck").
        deadline = time.monotonic() + self.plan.drain_timeout
        done = drain.done.is_set()
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                break
            done = drain.wait(min(remaining, _DRAIN_POLL))
        if not done and self._closed.is_set():
            return
        try:
            if done:
                self._audit("PATCH_DRAINED", table_version=drain.table_version, replaced_by=new_version,
                            seconds=round(drain.seconds or 0.0, 6))
            else:
                self._audit("PATCH_DRAIN_TIMEOUT", table_version=drain.table_version, replaced_by=new_version,
                            seconds=self.plan.drain_timeout)
        except XpsError as exc:
            # A report about a finished cutover; the change itself was journalled before it was
            # made. Say so on one line and keep serving rather than die with a traceback.
            _log.error("xps: audit: %s not recorded: %s", "PATCH_DRAINED" if done else "PATCH_DRAIN_TIMEOUT",
                       exc)

    def _on_provider_fault(self, provider: str, operation: str, exc: BaseException, table_version: int) -> None:
        # Error path of a call: only enqueue; the watcher thread does the rollback. Only the
        # exception's type is kept: a provider's message could carry anything, secrets included.
        self._faults.put((provider, f"{operation}: {type(exc).__name__}", table_version, False))

    def _watch_faults(self) -> None:
        while True:
            item = self._faults.get()
            if item is None:  # close()
                return
            provider, detail, table_version, wrong = item
            # Charged by the table the faulting call used, never by name alone: a fault of the
            # version serving while its replacement is in canary is not the canary's.
            built = self._built_for(table_version)
            sha = None if built is None else self._serving[built].get(provider)
            if sha is None:  # a built-in provider, or a table this updater did not build
                continue
            if not self.plan.rollback_on_error and not wrong:
                self._journal_kept_fault(provider, sha, detail)
                continue
            # One rollback per capsule at a time: a faulty capsule under traffic faults on every
            # call, and a thread per fault (each waiting for the update lock, then finding the
            # capsule gone) piled up by the thousand until no thread could start. No look at the
            # state here: a capsule faulting in its canary is not active yet, and the rollback
            # waiting for apply() to finish is what takes it out then.
            with self._threads_lock:
                if sha in self._rolling_back:
                    continue
                self._rolling_back.add(sha)
            # Rolling back takes the update lock, which apply() may hold through a canary; do
            # it on its own thread so faults of a staged capsule are never queued behind it.
            try:
                self._spawn(self._auto_rollback, provider, sha, detail, name="xps-auto-rollback")
            except RuntimeError:  # no thread to spare (a thread or memory limit): here, late rather than never
                self._auto_rollback(provider, sha, detail)

    def _built_for(self, table_version: int) -> int | None:
        """The version of the table this updater built that ``table_version`` serves with.

        The table itself, or for a table the engine rebuilt (autotune, a first-use self-test,
        added providers: each copies the providers of the table in force), the newest one this
        updater built before it. None: no table of ours, so no capsule of ours, serves there.
        """
        if table_version in self._serving:
            return table_version
        earlier = [v for v in list(self._serving) if v < table_version]
        return max(earlier) if earlier else None

    def _journal_kept_fault(self, provider: str, sha: str, detail: str) -> None:
        """``rollback_on_error: false``: the capsule stays; its first fault is journaled.

        Only the first per capsule: under traffic a faulty capsule faults on every call.
        """
        if sha in self._faults_kept:
            return
        self._faults_kept.add(sha)
        try:
            self._audit("PATCH_FAULT", sha256=sha, name=provider, detail=detail, action="kept",
                        why="hotpatch.rollback_on_error is false")
        except XpsError as exc:
            _log.error("xps: audit: PATCH_FAULT not recorded: %s", exc)

    def _switches_off(self) -> tuple[str, ...]:
        """The hot-patch switches that are off, as ``hotpatch.*`` names them."""
        return (*self.gates.off, *(() if self.plan.rollback_on_error else ("rollback_on_error",)))

    def _gates_off_field(self) -> dict[str, Any]:
        off = self._switches_off()
        return {"gates_off": list(off)} if off else {}

    def _journal_gates_off(self, phase: str) -> None:
        """Journal which hot-patch switches are off (at start, and when a reconfigure changes them)."""
        off = self._switches_off()
        if off or phase != "restore":
            self._audit("PATCH_GATES", phase=phase, gates_off=list(off), development=self.gates.development,
                        operator=self.operator)

    def _auto_rollback(self, provider: str, sha: str, detail: str) -> None:
        try:
            with self._lock, self.state_store.lock():
                # Only the capsule that raised, and only while it is still active: faults of
                # calls that were in flight on its table must not roll back what replaced it.
                cap = next((a for a in self._state.active if a.sha256 == sha), None)
                if cap is not None:
                    self._rollback(cap, None, operator="auto", reason=f"provider fault after enable: {detail}")
        except Exception as exc:  # never let a failed rollback pass silently, nor kill anything
            with contextlib.suppress(Exception):
                self._audit("PATCH_ROLLBACK_FAILED", name=provider, reason=f"{type(exc).__name__}: {exc}")
        finally:
            with self._threads_lock:
                self._rolling_back.discard(sha)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop reacting to provider faults and end this updater's threads (routing stays as it is).

        An update already under way (an apply in its canary) finishes first, with faults still
        acted on; from then on :meth:`apply`, :meth:`rollback`, :meth:`restore` and
        :meth:`reconfigure` are refused (XPS_ERR_UPDATE, reason ``closed``). Faults reported
        before the call are still acted on: a rollback they started finishes first. Sampled
        checks not yet due are cancelled; drain reports still waiting are dropped.
        Waits up to ``timeout`` seconds in all (a thread still running then is logged). Calling
        it again does nothing.

        Example:
            >>> up = Updater(Engine(), "/var/lib/xps"); up.restore()    # doctest: +SKIP
            >>> up.close()                                              # doctest: +SKIP
        """
        with self._threads_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        deadline = time.monotonic() + timeout
        # An update already under way finishes with the fault watcher still listening (what it
        # enables can still be rolled back); later ones are refused (_check_open).
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
        else:
            self._abandoned.set()  # the update under way must not enable anything now
        self.engine.remove_fault_listener(self._on_provider_fault)
        self._faults.put(None)
        me = threading.current_thread()
        if self._watcher is not me:  # first the watcher: it may still start a rollback
            self._watcher.join(max(0.0, deadline - time.monotonic()))
        while True:
            with self._threads_lock:
                threads = [t for t in self._threads if t is not me and t.is_alive()]
            remaining = deadline - time.monotonic()
            if not threads or remaining <= 0:
                break
            for thread in threads:
                if isinstance(thread, threading.Timer):
                    thread.cancel()
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        late = sorted(t.name for t in (self._watcher, *threads) if t is not me and t.is_alive())
        if late:
            _log.warning("xps: updater closed with threads still running after %ss: %s", timeout, ", ".join(late))
        if self._restored:
            self._crash_guard.clean_exit()

    def __enter__(self) -> Updater:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _audit(self, event: str, **fields: Any) -> None:
        self.audit.record(event, **fields)
        self._tell(event, fields)

    def _committed(self, event: str, fields: Mapping[str, Any]) -> None:
        # Only now may the change leave this node: told before the save, the other nodes acted
        # on a change that a failed save, or a kill -9 during it, then undid here.
        self._tell(event + COMMITTED, fields)

    def _tell(self, event: str, fields: Mapping[str, Any]) -> None:
        for listener in self._event_listeners:
            with contextlib.suppress(Exception):  # a listener never breaks an update
                listener(event, fields)

    @property
    def state(self) -> RoutingState:
        """The committed routing state this updater serves (active capsules, version memory)."""
        return self._state

    def add_event_listener(self, listener: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Call ``listener(event, fields)`` after each journaled update event (on the updater's thread).

        A change to the committed state (``PATCH_ENABLE``, ``PATCH_ROLLBACK``) is journaled
        before it is saved; once the save succeeded the listener hears it again as
        ``event + COMMITTED`` (a rollback's fields then add ``requested_to``: the version the
        caller asked for, or None). Only the committed event says the change happened.
        Keep it short (enqueue): it runs inside the update, under the updater's lock.
        """
        self._event_listeners = (*self._event_listeners, listener)

    def _policy(self, publishers: Any, operations: Any, trust: TrustStore | None = None) -> dict[str, Any]:
        """Trust-store digest, the signers' pins with their allow-lists, the configuration digest.

        ``trust`` is the store a capsule was verified against (an enable names what let it in,
        not a later reading). Without it the store is read now; a rollback must work even when
        that read fails, so the record then says the store was unreadable instead of refusing.
        """
        digest = config_digest(self._config_document, self.engine.config.to_mapping(), self.gates, self.plan,
                               self.limits)
        return _policy_now(self.trust_path, publishers, operations, digest, trust)


def _policy_now(path: Path | Home, publishers: Any, operations: Any, digest: str,
                trust: TrustStore | None = None) -> dict[str, Any]:
    """The record's policy fields; ``path`` a home: its own trust store, unless it records another."""
    if trust is None:
        try:
            trust = TrustStore.load(HotpatchConfig().trust_path(path) if isinstance(path, Home) else path)
        except XpsError as exc:
            return {"trust_digest": None, "trust_error": exc.code, "threshold": None, "pins": [],
                    "config_digest": digest}
    return policy_fields(trust, publishers, operations, digest)


def rollback_offline(home: Home, target: str, *, to: str | None = None, operator: str = "local",
                     config_document: Mapping[str, Any] | None = None,
                     state_store: StateStore | None = None, trust_path: str | Path | None = None,
                     audit: AuditLog | None = None, notice: Callable[[str], None] | None = None) -> ActiveCapsule:
    """Roll back in the committed state when no engine runs (verified again at next start).

    ``audit`` is the journal the engine writes (``config.audit.journal(...)``: its signing key
    may be outside the home, or the journal in a database); ``None``: ``HOME/audit.log`` with
    its default key.

    A home that follows a fleet (it has an ``announce.json``) gets the rollback in its outbox,
    so the engine announces it to the other nodes when it next starts with ``--cluster``.
    Queued after the state is saved, so only a committed rollback is announced (a kill between
    the two loses the announcement: roll it back on the other nodes too); a damaged outbox does
    not block the rollback: ``notice`` is told it was not queued.

    Raises:
        UpdateError: reason ``engine-running`` when an engine holds the home (it may be
            starting, its control socket not open yet): roll back through it instead.
    """
    _check_rollback_request(target, to)
    states = state_store if state_store is not None else FileStateStore(home)
    try:
        running = take_engine_lock(home.socket, "rollback")
    except EngineLockHeld:
        raise refuse(Refusal.ENGINE_RUNNING, "rollback: an engine holds this home (starting, or its control "
                                             "socket not answering); roll back through it") from None
    try:
        return _rollback_committed(home, states, target, to=to, operator=operator,
                                   config_document=config_document, trust_path=trust_path,
                                   audit=audit if audit is not None else AuditLog(home.audit), notice=notice)
    finally:
        os.close(running)  # releases the lock


def _rollback_committed(home: Home, states: StateStore, target: str, *, to: str | None, operator: str,
                        config_document: Mapping[str, Any] | None, trust_path: str | Path | None,
                        audit: AuditLog, notice: Callable[[str], None] | None = None) -> ActiveCapsule:
    with states.lock():
        state = states.load()
        cap = state.find(target)
        if cap is None:
            raise refuse(Refusal.NOT_FOUND, f"rollback: no active capsule matches {target!r}")
        restore_sha, version = _restore_target(state, cap, to)
        restore = None
        if restore_sha is not None and version is not None:
            restore = ActiveCapsule(cap.name, version, restore_sha, cap.operations)
        new = state.disable(cap, operator=operator, restore=restore)
        # Journal first, as every change: killed between the two, the journal over-reports (a
        # retry rolls back and journals again); the other order lost the record for good.
        audit.record("PATCH_ROLLBACK", sha256=cap.sha256, name=cap.name, version=cap.version,
                     to=restore.version if restore else BUILT_IN, operator=operator,
                     mode="offline", reason="operator request",
                     policy=_policy_now(Path(trust_path) if trust_path else home, (), cap.operations,
                                        config_digest(config_document)))
        states.save(new)
        _queue_announcement(home, cap, to, notice)
    return cap


def _queue_announcement(home: Home, cap: ActiveCapsule, to: str | None,
                        notice: Callable[[str], None] | None) -> None:
    """Put a committed offline rollback in the home's announcement outbox, if it follows a fleet.

    The announcer only hears changes an engine makes; without this, the other nodes kept
    serving a capsule this node's operator had taken out while no engine ran here. Called
    after the state is saved: a rollback whose save failed must not reach the other nodes.
    """
    from xpscerpto.db.announce_cursor import AnnounceCursor  # only homes in a fleet need it

    try:
        cursor = AnnounceCursor.of_home(home)
        if cursor is not None:
            cursor.add(("rollback", cap.sha256, cap.name, cap.version, to or ""))
    except XpsError as exc:
        if notice is not None:
            notice(f"the rollback was not queued for the fleet ({exc}); roll it back on the other nodes too")


_MAX_TARGET = 200  # longer than any capsule name, operation or sha256


def _check_rollback_request(target: object, to: object) -> None:
    """A rollback names what to take out (and maybe a version) as short printable text.

    Checked before anything is looked up, so a wrong type is a typed refusal, and a refusal
    never repeats a huge or unprintable value back to the caller (or into the journal).
    """
    for name, value, optional in (("target", target, False), ("to", to, True)):
        if value is None and optional:
            continue
        if type(value) is not str or not 0 < len(value) <= _MAX_TARGET or not value.isprintable():
            raise refuse(Refusal.NOT_FOUND, f"rollback: {name} must be text of 1 to {_MAX_TARGET} printable "
                                            f"characters (a capsule name, operation, sha256 or version)")


def _restore_target(state: RoutingState, cap: ActiveCapsule, to: str | None) -> tuple[str | None, str | None]:
    """(sha256, version) of what rolling back ``cap`` re-enables: ``to``, else what it replaced."""
    if to == BUILT_IN:
        return None, None
    if to is not None:
        sha = state.sha_of(cap.name, to)
        if sha is None:
            raise refuse(Refusal.NOT_FOUND, f"rollback --to: {cap.name} {to} was never enabled here")
        return sha, to
    if cap.replaced is None:
        return None, None
    version = cap.replaced_version or state.version_of(cap.name, cap.replaced)
    if version is None:
        raise refuse(Refusal.STATE, f"rollback: {cap.name} replaced capsule {cap.replaced[:12]}, whose version "
                                    "is not recorded in state.json")
    return cap.replaced, version
