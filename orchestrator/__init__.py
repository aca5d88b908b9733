"""Rotation orchestrator for several nodes on one PostgreSQL keyring (leader lease, fencing).

Example:
    >>> from xpscerpto.orchestrator import Orchestrator, Plan       # doctest: +SKIP
    >>> orch = Orchestrator(ring, node="node-a")
    >>> orch.track(Plan("orders", key="orders", policy="every=30d", grace="7d"))
    >>> orch.start()
"""

from __future__ import annotations

from .lease import FENCE, Lease, LeaseState
from .orchestrator import LEASE, Fenced, Orchestrator, Plan, adopt_orchestration, node_of, review_orchestration
from .pq_rollout import PqPosture, PqRollout, channel_config
from .schedule import Schedule
from .suite_migration import SuiteMigration

__all__ = ["FENCE", "LEASE", "Fenced", "Lease", "LeaseState", "Orchestrator", "Plan", "PqPosture", "PqRollout",
           "Schedule", "SuiteMigration", "adopt_orchestration", "channel_config", "node_of",
           "review_orchestration"]
