"""Counters of what the engine, the updater, the keyring and the orchestrator do, for Prometheus.

Example:
    >>> from xpscerpto.metrics import Metrics
    >>> m = Metrics()
    >>> m.inc("xps_swaps_total"); m.count("xps_swaps_total")
    1
"""

from __future__ import annotations

from .counters import COUNTERS, Metrics

__all__ = ["COUNTERS", "Metrics"]
