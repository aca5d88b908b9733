"""A running hot-patch service: updater + control socket + watched inbox, started together."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xpscerpto._atomic import atomic_write
from xpscerpto._config_fields import show
from xpscerpto._stored_file import read_stored
from xpscerpto.config import XpsConfig, canonical_key, policy_changes
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home

from .control import ControlServer
from .format import Limits
from .isolate import Gates
from .refusal import Refusal
from .updater import StagePlan, Updater

__all__ = ["OVERRIDES_FILE", "WatchService", "check_sealed_policy", "read_overrides"]


def check_sealed_policy(home: Home, config: XpsConfig | None = None, *, engine: Engine | None = None,
                        operator: str = "watch") -> None:
    """Refuse a home whose ``home.json`` policy differs from the copy its keyring sealed.

    The routing floor (a ``forbid`` recorded after an incident …) is read from ``home.json``,
    which anyone who can write the home can edit; the keyring keeps a copy sealed under a key
    the KEK wraps. Opening the keyring once compares the two, as every keyring command does,
    and finishes an ``xps policy apply`` killed between its database commit and its
    ``home.json`` write: re-read ``home.record()`` after this call. The open has the keyring's
    usual effects (queued journal records delivered, retention enforced).

    A home with no keyring has no sealed copy, and nothing is checked. A keyring that cannot be
    opened (its KEK missing, a PKCS#11 PIN variable not set, its PostgreSQL database down) is a
    refusal too, not a warning: whoever made the open fail would otherwise choose the floor.

    Raises:
        KeyringTampered: the recorded policy differs from the sealed one (or the seal fails).
        XpsError: the keyring cannot be opened (its own message, naming the store or variable).
    """
    if not home.record_path.exists():
        return
    record = home.record()
    # Not only `sealed`: an editor who drops the marker from home.json must not skip the check
    # (the keyring itself opens a sealed database whether or not the record says so).
    # A recorded KEK (made only with a keyring) counts too: an editor who took the keyring out of
    # home.json must get the keyring's refusal, not a floor read from the file unchecked.
    if "keyring" not in record.stores and "keyring" not in record.sealed and "kek" not in record.stores \
            and not (home.root / "keyring.db").exists() and not (home.root / "kek.key").exists():
        return
    from xpscerpto.keyring import Keyring

    cfg = config or XpsConfig.defaults()
    # The file's keyring section says where the database is (a PostgreSQL keyring); its security
    # keys are the record's here, since this open checks the record, not the file.
    ring = cfg.with_security_policy(record.policy).keyring
    Keyring(home, engine=engine, config=ring, audit_config=cfg.audit, operator=operator).close()


def _check_recorded_gates(recorded: Mapping[str, Any], config: XpsConfig) -> None:
    """Refuse a configuration whose hot-patch gates differ from those the home recorded.

    The gates are part of the home's security policy: a later file must not switch one off
    (or development mode on) by being passed to ``xps watch``; ``xps policy apply`` changes
    them, audited, with approvals where the keyring requires them.
    """
    for change in policy_changes(recorded, config.security_policy()):
        if change.key.startswith("hotpatch."):
            raise PolicyError(f"config key 'crypto.{change.key}': {change.new!r} differs from the security policy "
                              f"this home recorded ({change.old!r}); the home's policy changes only with "
                              "`xps policy apply`, audited, with approvals when it loosens")


OVERRIDES_FILE = "overrides.json"


def read_overrides(home: Home) -> dict[str, Any]:
    """The emergency overrides a home holds, by per-section key (``engine.policy.forbid`` …).

    No file is no override only while the home has not recorded the store; once recorded, a
    missing or empty file is refused (a deleted file silently undid every emergency change).
    A file from before keys were stored in one spelling may hold two spellings of one key:
    equal values merge; different ones are refused, since the file does not say which came
    last (replaying them in sorted order let an older value win).

    Raises:
        PolicyError: naming the file, when it is unreadable, damaged, recorded but missing or
            empty, or holds two spellings of one key with different values.
    """
    path = home.root / OVERRIDES_FILE
    where = f"overrides {str(path)!r}"
    home.check_store("overrides")
    try:
        data = json.loads(read_stored(path))
    except FileNotFoundError:
        return {}
    except OSError as exc:  # a FIFO, /dev/zero, a directory: refused, never waited on or read without end
        raise PolicyError(f"{where}: unreadable ({exc.strerror})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise PolicyError(f"{where}: unreadable ({type(exc).__name__}); restore it from a backup") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a JSON object")
    merged: dict[str, tuple[str, Any]] = {}
    for key, value in data.items():
        canon = canonical_key(key)
        if canon in merged and merged[canon][1] != value:
            raise PolicyError(f"{where}: {show(merged[canon][0])} and {show(key)} are one key ({canon}) with "
                              "different values, and the file does not say which was written last; keep the one "
                              "in force (the journal's last CONFIG_EMERGENCY_CHANGE of it) and delete the other")
        merged[canon] = (key, value)
    return {key: value for key, (_, value) in merged.items()}


def _write_json(path: Path, overrides: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(overrides, indent=1, sort_keys=True).encode() + b"\n")


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


class WatchService:
    """Watch ``directory`` for capsules and serve the control socket for ``engine``.

    The hot-patch switches (``require_signature``, ``run_selftests``, ``rollback_on_error``,
    ``development``) are taken from the security policy the home recorded, replacing those of
    ``gates`` and ``plan``; a start with any of them off is journaled (PATCH_GATES).

    Example:
        >>> svc = WatchService(engine, "/srv/xps/inbox", "/var/lib/xps").start()   # doctest: +SKIP
        >>> svc.stop()                                                 # doctest: +SKIP
    """

    def __init__(self, engine: Engine, directory: str | Path, home: str | Path | Home | None = None, *,
                 polling: bool | None = None, plan: StagePlan = StagePlan(), gates: Gates = Gates(),
                 limits: Limits = Limits(), operator: str = "watch", settle_seconds: float = 0.5,
                 config: XpsConfig | None = None, cluster: str | None = None, node: str | None = None,
                 peers: Sequence[bytes] = ()) -> None:
        base = config or XpsConfig.defaults()
        h = home if isinstance(home, Home) else Home.resolve(home)
        # The home's record lists every store once created (state.json among them), so a store
        # deleted later is a refusal, never "nothing was enabled". A first run on an empty home
        # creates it; a home holding stores but no record is refused (`xps init --adopt`).
        h.initialise(policy=base.security_policy())
        # Before the floor is read: home.json alone is editable; the keyring's sealed copy is not.
        check_sealed_policy(h, base, engine=engine, operator=operator)
        record = h.record()
        if config is not None:
            _check_recorded_gates(record.policy, base)
        # The engine routes under a policy at least as strict as the home's record (a later
        # file, or an engine built in code, must not drop a recorded forbid silently).
        XpsConfig(engine=engine.config).under_recorded_routing(record.policy, given=True)
        # The hot-patch switches are the home's, whatever `gates` and `plan` say: the record
        # equals a configuration passed in (checked above) and stands in for a missing one.
        switches = base.with_security_policy(record.policy).hotpatch
        base = replace(base, hotpatch=switches)  # what PATCH_* records' config digest and `config show` name
        gates = replace(gates, require_signature=switches.require_signature, run_selftests=switches.run_selftests,
                        development=switches.development)
        plan = replace(plan, rollback_on_error=switches.rollback_on_error)
        audit = base.audit.journal(h.root, h.audit)
        # The home's own journal file is recorded once it has a record (a journal elsewhere,
        # PostgreSQL say, is not a file of the home).
        if Path(getattr(audit, "path", "")) == h.audit and not h.register_journal():
            recorded = threading.Event()

            def record_store(_event: str, _record: Mapping[str, Any]) -> None:
                if not recorded.is_set() and h.register_journal():
                    recorded.set()

            audit.add_listener(record_store)
        self.config = replace(base, engine=engine.config)
        self._states = base.hotpatch.state_store(h)
        self.updater = Updater(engine, h, gates=gates, plan=plan, limits=limits, operator=operator, audit=audit,
                               config_document=self.config.to_mapping(), state_store=self._states,
                               trust_path=base.hotpatch.trust_path(h))
        try:
            self._build(directory, operator, polling, settle_seconds, limits)
        except BaseException:
            # A refused argument (a negative settle time…) must not leave the updater's threads
            # running with no service object left to stop them.
            self.updater.close()
            self._states.close()
            raise
        self._cluster = cluster
        self._node = node or "local"
        self._peers = list(peers)
        self.announcer: Any = None

    def _build(self, directory: str | Path, operator: str, polling: bool | None, settle_seconds: float,
               limits: Limits) -> None:
        """The control socket and the watched inbox (whose arguments are checked here)."""
        from .watch import Inbox, InboxResult

        self._overrides_path = self.updater.home.root / OVERRIDES_FILE
        self.control = ControlServer(self.updater, self.updater.home.socket, service=self)

        def handle(raw: bytes, path: Path) -> InboxResult:
            try:
                cap = self.updater.apply(raw, source=str(path), operator=operator)
            except XpsError as exc:
                reason = exc.reason if isinstance(exc.reason, Refusal) else Refusal.INTERNAL
                return InboxResult(False, reason, str(exc))
            return InboxResult(True, "accepted", f"enabled {cap.name} {cap.version} for {', '.join(cap.operations)}")

        def refused(name: str, reason: str, detail: str) -> None:
            # Refusals the folder makes before any verification (too large, not a regular file,
            # unreadable, an outcome folder it will not write into) are audited like the rest.
            self.updater.audit.record("PATCH_REJECT", phase="inbox", source=name, operator=operator,
                                      reason=reason, detail=detail)

        self.inbox = Inbox(directory, handle, polling=polling, settle_seconds=settle_seconds,
                           max_bytes=limits.max_capsule_bytes, on_refused=refused, home=self.updater.home.root)

    def start(self) -> WatchService:
        """Re-apply emergency overrides, restore the committed state, then open socket and inbox.

        A failed start closes what it opened (the updater's threads too): make a new service
        to try again.
        """
        try:
            # Held from before the restore: an offline rollback between the restore and the
            # socket opening would be overwritten by the state this process serves and saves.
            self.control.claim()
            # Every change is journalled first; a journal we cannot continue must stop us here,
            # with one line, not on a background thread later.
            self.updater.audit.check_writable()
            replayed = []
            config = self.config
            for key, value in self._overrides().items():
                change = config.plan_emergency_change(key, value, operator="restart",
                                                      reason=f"re-applied from {self._overrides_path.name}")
                if change.new != change.old:
                    # The override wins over the file given now, even a stricter one shipped
                    # after the incident (found by a review): say so, every start.
                    self._notice(f"emergency override {change.key} = {_brief(change.new)} from "
                                 f"{self._overrides_path} replaces the configuration's {_brief(change.old)}; "
                                 "undo it with `xps config emergency` once the file covers the incident")
                config = change.config
                replayed.append(change)
            # An override stored before a stricter `xps policy apply` may lie below the floor the
            # home records now: the floor wins (refusing the start left no way to undo it).
            config, raised = config.raised_to_recorded_routing(self.updater.home.record().policy)
            if raised:
                self._notice(f"emergency override(s) in {self._overrides_path} below the routing policy this "
                             f"home records ({', '.join(raised)}): the recorded entries are kept; undo the "
                             "override with `xps config emergency` once the policy covers the incident")
            self._apply(config)
            # Journaled once in force, not before (the journal must not claim what a failed
            # step did not do).
            for change in replayed:
                change.record(self.updater.audit)
            self.config = config
            if replayed and self.updater.home.check_store("overrides"):
                # A file from before overrides.json was a recorded store: recorded now, so
                # that deleting it later is a refusal, not a silent reset.
                self.updater.home.register_store("overrides")
            self.updater.restore(sole_engine=True)  # the engine lock is ours (claimed above)
            if self._cluster is not None:  # other nodes' enables and rollbacks, and ours to them
                from xpscerpto.db.capsule_announce import Announcer

                self.announcer = Announcer(self._cluster, self.updater, node=self._node, peers=self._peers).start()
            self.control.start()
            self.inbox.start()
        except BaseException:
            if self.announcer is not None:
                self.announcer.stop()
            self.control.stop()
            self.updater.close()
            raise
        return self

    def cluster_status(self) -> dict[str, Any] | None:
        """The announcer's state for ``xps status``; None unless started with ``cluster``.

        ``last_error`` is the announcer's own message about its last failed round (None once a
        round succeeds); ``waiting`` counts this node's changes not yet announced, and
        ``not_announced`` those dropped unannounced since the start.
        """
        announcer = self.announcer
        if announcer is None:
            return None
        last_error = announcer.last_error
        return {"node": self._node, "last_error": None if last_error is None else str(last_error),
                "waiting": announcer.pending, "not_announced": announcer.not_announced}

    def emergency_change(self, key: str, value: Any, *, operator: str, reason: str) -> XpsConfig:
        """An audited runtime change (see ``XpsConfig.emergency_change``), applied to this engine.

        In this order: validate, read ``overrides.json`` (a damaged one refuses the change),
        write it, apply the change, then journal ``CONFIG_EMERGENCY_CHANGE``. If applying or
        journaling fails, the file and the engine are put back as they were, so the journal
        never claims a change that did not happen, nor the file hold one never journaled.
        The file is keyed by the per-section spelling, whichever spelling the caller used.
        """
        change = self.config.plan_emergency_change(key, value, operator=operator, reason=reason)
        # An incident may forbid more at once; going below the home's recorded routing policy
        # takes `xps policy apply` (approvals), not an emergency change.
        change.config.under_recorded_routing(self.updater.home.record().policy, given=True)
        overrides = self._overrides()
        self.updater.audit.check_writable()
        path, home = self._overrides_path, self.updater.home
        previous = read_stored(path) if path.exists() else None
        _write_json(path, {**overrides, change.key: change.new})
        try:
            home.register_store("overrides")
            self._apply(change.config)
            change.record(self.updater.audit)
        except BaseException:
            try:
                # Registered or not, "no override" is an empty object, never a missing file.
                atomic_write(path, previous if previous else b"{}\n")
                self._apply(self.config)
            except Exception:  # noqa: S110 -- the first failure is the one to report
                pass
            raise
        self.config = change.config
        return change.config

    def _apply(self, config: XpsConfig) -> None:
        h = config.hotpatch
        self.updater.reconfigure(config.engine, gates=replace(self.updater.gates, max_slowdown=h.max_slowdown),
                                 plan=replace(self.updater.plan, canary_share=h.canary_share),
                                 config_document=config.to_mapping())

    @staticmethod
    def _notice(message: str) -> None:
        print(f"xps watch: notice: {message}", file=sys.stderr, flush=True)

    def _overrides(self) -> dict[str, Any]:
        return read_overrides(self.updater.home)

    def stop(self) -> None:
        """Close the inbox and the socket (routing stays as it is)."""
        self.inbox.stop()
        if self.announcer is not None:
            self.announcer.stop()
        self.control.stop()
        self.updater.close()
        self._states.close()
