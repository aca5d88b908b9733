"""What makes an engine faster after it starts, off the hot path: warm-ups, then autotune.

:func:`candidates` reads, from a routing table, the eligible implementations of each
operation that autotune may choose among (not those a preference pins); :func:`tune_table`
measures them, or reuses a cached result whose fingerprint (CPU, Python, every provider's
name, version and backend, the incident mask) still matches and which measured every
candidate. :class:`xpscerpto.engine.Engine` runs both on a background thread after start
(``crypto.engine.autotune``; ``XPS_AUTOTUNE=0`` turns the default off) and publishes the
result through :meth:`~xpscerpto.engine.Engine.rebuild`; ``xps tune`` runs them in the
foreground and prints what was measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ._autotune import TuneResult, load_cache, save_cache, tune
from .interfaces import OPERATIONS
from .settings import AUTOTUNE_ENV
from .settings import autotune_enabled as enabled

if TYPE_CHECKING:
    from ._routing import RoutingTable

__all__ = ["AUTOTUNE_ENV", "CACHE_ENV", "cache_path", "candidates", "enabled", "tune_table"]

CACHE_ENV = "XPS_AUTOTUNE_CACHE"
_TUNED_KINDS = ("aead", "sig", "kex")
_ELIGIBLE = (None, "lower preference", "measured slower")


def cache_path() -> Path:
    """``$XPS_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/xpscerpto/autotune.json`` (``~/.cache``)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xpscerpto" / "autotune.json"


def candidates(table: RoutingTable) -> dict[str, dict[str, object]]:
    """Operation -> provider name -> implementation, for every operation autotune may decide."""
    providers = {p.name: p for p in table.providers}
    out: dict[str, dict[str, object]] = {}
    for op, route in table.routes.items():
        if route.chosen_by == "preference" or OPERATIONS[op].kind not in _TUNED_KINDS:
            continue
        names = [c.provider for c in route.candidates if c.excluded in _ELIGIBLE and c.provider in providers]
        out[op] = {n: providers[n].implementations[op] for n in names}
    return out


def tune_table(table: RoutingTable, fp: str, *, use_cache: bool = True, path: Path | None = None,
               budget: float = 0.02, rounds: int = 5,
               progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Measure (or load from the cache) the winners for ``table``'s eligible implementations.

    ``fp`` is the engine's :meth:`~xpscerpto.engine.Engine.tuning_fingerprint`.
    """
    cands = candidates(table)
    where = path or cache_path()
    if use_cache:
        cached = load_cache(where, fp)
        if cached is not None and _covers(cached, cands):
            return cached
    result = tune(cands, fp=fp, budget=budget, rounds=rounds, progress=progress)
    save_cache(where, result)
    return result


def _covers(result: TuneResult, cands: Mapping[str, Mapping[str, object]]) -> bool:
    """Whether ``result`` decided every operation among exactly today's candidates."""
    measured: dict[str, set[str]] = {}
    for m in result.measurements:
        measured.setdefault(m.operation, set()).add(m.provider)
    for op, impls in cands.items():
        if len(impls) < 2:
            continue
        if op not in result.winners or measured.get(op) != set(impls):
            return False
    return True
