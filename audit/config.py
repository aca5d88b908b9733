"""The audit journal's configuration section (``audit:``).

Example:
    >>> AuditConfig.from_mapping({"checkpoint_every": 10}).checkpoint_every
    10
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._config_fields import Field, build_section, count, dump_section, optional_text

if TYPE_CHECKING:
    from .journal import AuditLog

__all__ = ["AuditConfig"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit:`` -- journal checkpoints and the rate limit of authentication-failure records."""

    checkpoint_every: int = 100
    auth_fail_per_minute: int = 10
    #: The journal's Ed25519 signing key file; ``None``: ``audit.key`` beside the log. Put it
    #: where the home's other writers cannot read it to make records unforgeable by them.
    signing_key: str | None = None
    #: ``postgresql://…``: the journal is the nodes' shared chain in that database (``xps db
    #: migrate`` first; every node holds the same signing key). ``None``: ``audit.log`` in the home.
    database: str | None = None

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "audit.") -> AuditConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        return build_section(cls, _FIELDS, data, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _FIELDS)

    def journal(self, home_root: Path, log: Path) -> AuditLog:
        """The journal at ``log`` with this section's settings (``signing_key`` relative to the home)."""
        from .journal import AuditLog

        key = None if self.signing_key is None else home_root / self.signing_key
        if self.database is not None:
            from xpscerpto.db.audit_store import PgAuditLog

            return PgAuditLog(self.database, log, signing_key=key, checkpoint_every=self.checkpoint_every)
        return AuditLog(log, signing_key=key, checkpoint_every=self.checkpoint_every)


def _database(value: object, key: str) -> str | None:
    if value is None:
        return None
    from xpscerpto.db.postgres import check_dsn

    return check_dsn(value, key)


_FIELDS = (
    Field("checkpoint_every", "checkpoint_every", count(1)),
    Field("auth_fail_per_minute", "auth_fail_per_minute", count(1)),
    Field("signing_key", "signing_key", optional_text),
    Field("database", "database", _database),
)
