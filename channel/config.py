"""The secure channel's configuration section: rekey limits.

In an Appendix C document it is the seed's ``tls:`` section (``rekey_messages``,
``rekey_minutes``, and ``rekey_bytes`` beside them); the pre-Appendix C layout calls it
``channel:`` (``rekey_after_messages``, ``rekey_after``, ``rekey_after_bytes``).

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
    minutes_as_seconds,
    minutes_out,
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

    @classmethod
    def from_document(cls, data: object, prefix: str = "crypto.tls.") -> ChannelConfig:
        """From an Appendix C ``tls:`` section."""
        return build_section(cls, _DOC_FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _FIELDS)

    def to_document(self) -> dict[str, Any]:
        """The Appendix C spelling (``tls:``)."""
        return dump_section(self, _DOC_FIELDS)


_FIELDS = (
    Field("rekey_after_messages", "rekey_after_messages", count(1)),
    Field("rekey_after_bytes", "rekey_after_bytes", positive(parse_size)),
    Field("rekey_after", "rekey_after_seconds", positive(parse_duration), seconds_out),
)
_DOC_FIELDS = (
    Field("rekey_messages", "rekey_after_messages", count(1)),
    Field("rekey_minutes", "rekey_after_seconds", minutes_as_seconds, minutes_out),
    Field("rekey_bytes", "rekey_after_bytes", positive(parse_size)),
)
