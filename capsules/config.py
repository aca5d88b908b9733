"""The hot-patch configuration section (``hotpatch:``): validation gates, staging, inbox.

Example:
    >>> HotpatchConfig.from_mapping({"canary_seconds": "30s"}).canary_seconds
    30.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpscerpto._config_fields import (
    Field,
    build_section,
    dump_section,
    number,
    parse_duration,
    parse_size,
    positive,
    seconds_out,
)

__all__ = ["HotpatchConfig"]


@dataclass(frozen=True, slots=True)
class HotpatchConfig:
    """``hotpatch:`` -- capsule validation gates and staging (``Gates``/``StagePlan``/inbox)."""

    canary_share: float = 0.1
    canary_seconds: float = 0.0
    dual_run_seconds: float = 0.0
    timeout_seconds: float = 60.0
    memory_bytes: int = 2 * 1024**3
    max_slowdown: float = 2.0
    bench_bytes: int = 64 * 1024
    settle_seconds: float = 0.5
    drain_timeout_seconds: float = 30.0

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "hotpatch.") -> HotpatchConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        return build_section(cls, _FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data (durations in seconds, sizes in bytes)."""
        return dump_section(self, _FIELDS)


_FIELDS = (
    Field("canary_share", "canary_share", number(0.0, 1.0)),
    Field("canary_seconds", "canary_seconds", parse_duration, seconds_out),
    Field("dual_run_seconds", "dual_run_seconds", parse_duration, seconds_out),
    Field("timeout", "timeout_seconds", positive(parse_duration), seconds_out),
    Field("memory", "memory_bytes", positive(parse_size)),
    Field("max_slowdown", "max_slowdown", number(1.0)),
    Field("bench_bytes", "bench_bytes", parse_size),
    Field("settle", "settle_seconds", parse_duration, seconds_out),
    Field("drain_timeout", "drain_timeout_seconds", parse_duration, seconds_out),
)
