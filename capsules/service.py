"""A running hot-patch service: updater + control socket + watched inbox, started together."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from xpscerpto.config import XpsConfig
from xpscerpto.engine import Engine
from xpscerpto.errors import XpsError
from xpscerpto.home import Home

from .control import ControlServer
from .format import Limits
from .isolate import Gates
from .updater import StagePlan, Updater

__all__ = ["WatchService"]


class WatchService:
    """Watch ``directory`` for capsules and serve the control socket for ``engine``.

    Example:
        >>> svc = engine.watch("/srv/xps/inbox", home="/var/lib/xps")   # doctest: +SKIP
        >>> svc.stop()                                                 # doctest: +SKIP
    """

    def __init__(self, engine: Engine, directory: str | Path, home: str | Path | Home | None = None, *,
                 polling: bool | None = None, plan: StagePlan = StagePlan(), gates: Gates = Gates(),
                 limits: Limits = Limits(), operator: str = "watch", settle_seconds: float = 0.5,
                 config: XpsConfig | None = None) -> None:
        from .watch import Inbox, InboxResult

        self.updater = Updater(engine, home, gates=gates, plan=plan, limits=limits, operator=operator)
        base = config or XpsConfig.defaults()
        self.config = replace(base, engine=engine.config)
        self.control = ControlServer(self.updater, self.updater.home.socket, service=self)

        def handle(raw: bytes, path: Path) -> InboxResult:
            try:
                cap = self.updater.apply(raw, source=str(path), operator=operator)
            except XpsError as exc:
                return InboxResult(False, exc.reason or str(exc.code), str(exc))
            return InboxResult(True, "accepted", f"enabled {cap.name} {cap.version} for {', '.join(cap.operations)}")

        self.inbox = Inbox(directory, handle, polling=polling, settle_seconds=settle_seconds,
                           max_bytes=limits.max_capsule_bytes)

    def start(self) -> WatchService:
        """Restore the committed state, then open the socket and the inbox."""
        self.updater.restore()
        self.control.start()
        self.inbox.start()
        return self

    def emergency_change(self, key: str, value: Any, *, operator: str, reason: str) -> XpsConfig:
        """An audited runtime change (see ``XpsConfig.emergency_change``), applied to this engine."""
        new = self.config.emergency_change(key, value, operator=operator, reason=reason, audit=self.updater.audit)
        h = new.hotpatch
        gates = replace(self.updater.gates, max_slowdown=h.max_slowdown)
        plan = replace(self.updater.plan, canary_share=h.canary_share)
        self.updater.reconfigure(new.engine, gates=gates, plan=plan)
        self.config = new
        return new

    def stop(self) -> None:
        """Close the inbox and the socket (routing stays as it is)."""
        self.inbox.stop()
        self.control.stop()
