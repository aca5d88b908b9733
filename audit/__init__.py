"""The audit journal every subsystem writes to: hash-chained records, signed checkpoints.

See :mod:`xpscerpto.audit.journal` for the format and what the chain can and cannot show;
its configuration section is :class:`xpscerpto.audit.config.AuditConfig`.

Example:
    >>> from xpscerpto.audit import AuditLog
    >>> log = AuditLog("/var/lib/xps/audit.log")                  # doctest: +SKIP
    >>> log.record("KEY_CREATE", key_id="ab12…")                   # doctest: +SKIP
"""

from .auth_failures import journal_auth_failures
from .journal import (
    GENESIS,
    AuditLog,
    AuditTampered,
    VerifyReport,
    checkpoint_message,
    read_public_key,
    record_hash,
    record_message,
)

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditTampered",
    "VerifyReport",
    "checkpoint_message",
    "journal_auth_failures",
    "read_public_key",
    "record_hash",
    "record_message",
]
