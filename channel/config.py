"""The secure channel's configuration section (``channel:``): rekey limits.

Example:
    >>> ChannelConfig.from_mapping({"rekey_after": "10m"}).rekey_after_seconds
    600.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpscerpto._config_fields import (
    Field,
    build_section,
    count,
    dump_section,
    parse_duration,
    parse_size,
    positive,
    seconds_out,
)

__all__ = ["ChannelConfig"]


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """``channel:`` -- secure-channel rekey limits (whichever is reached first)."""

    rekey_after_messages: int = 1 << 20
    rekey_after_bytes: int = 1024**3
    rekey_after_seconds: float = 3600.0

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "channel.") -> ChannelConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        return build_section(cls, _FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _FIELDS)


_FIELDS = (
    Field("rekey_after_messages", "rekey_after_messages", count(1)),
    Field("rekey_after_bytes", "rekey_after_bytes", positive(parse_size)),
    Field("rekey_after", "rekey_after_seconds", positive(parse_duration), seconds_out),
)
