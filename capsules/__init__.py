"""Hot-patching: signed capsules verified, validated off the hot path, staged and cut over.

A capsule flows one way, one module per step::

    watch (inbox) -> format (container, manifest) -> _verifier (the whole gate)
      -> isolate (child process) -> loader (verified bytes only) -> updater (stage, commit,
      publish, drain, rollback) -> store (state.json, content-addressed capsules)

``service.WatchService`` runs inbox, updater and control socket together; ``cli`` holds the
publisher and operator commands; ``config.HotpatchConfig`` is the ``hotpatch:`` section.

Example:
    >>> from xpscerpto.capsules import watch_folder                     # doctest: +SKIP
    >>> svc = watch_folder(xps.default_engine(), "/srv/xps/inbox", home="/var/lib/xps")
    >>> svc.stop()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xpscerpto.engine import Engine
    from xpscerpto.home import Home

    from .service import WatchService

__all__ = ["watch_folder"]


def watch_folder(engine: Engine, directory: str | Path, home: str | Path | Home | None = None,
                 **options: Any) -> WatchService:
    """Start hot-patching ``engine`` from a watched folder (and the control socket).

    Options are those of :class:`xpscerpto.capsules.service.WatchService` (``polling``,
    ``plan``, ``gates``…). Call ``.stop()`` on the result to stop watching.
    """
    from .service import WatchService

    return WatchService(engine, directory, home, **options).start()
