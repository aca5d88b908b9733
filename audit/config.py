"""The audit journal's configuration section (``audit:``).

Example:
    >>> AuditConfig.from_mapping({"checkpoint_every": 10}).checkpoint_every
    10
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpscerpto._config_fields import Field, build_section, count, dump_section

__all__ = ["AuditConfig"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit:`` -- journal checkpoints and the rate limit of authentication-failure records."""

    checkpoint_every: int = 100
    auth_fail_per_minute: int = 10

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "audit.") -> AuditConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        return build_section(cls, _FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _FIELDS)


_FIELDS = (
    Field("checkpoint_every", "checkpoint_every", count(1)),
    Field("auth_fail_per_minute", "auth_fail_per_minute", count(1)),
)
