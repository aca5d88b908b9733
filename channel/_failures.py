"""Handshake failures: one closed set of reasons, counted, and journaled at a bounded rate.

A failed handshake is counted per reason in memory and recorded in the audit journal as
``CHANNEL_HANDSHAKE_FAIL`` through :meth:`AuditLog.record_rate_limited` (bucket ``channel``,
so varying peers cannot widen the window set), like the keyring's ``CRYPTO_FAIL_AUTH``. The
record holds only our own words: role, reason, error code, protocol and the peer's IP address
-- nothing the peer sent. Successful handshakes are counted, never journaled one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import TYPE_CHECKING

from xpscerpto.errors import ErrorCode, XpsError

if TYPE_CHECKING:
    from xpscerpto.audit import AuditLog

__all__ = ["EVENT", "REASONS", "UNAUTHENTICATED", "FailureLog", "classify", "is_pq"]

EVENT = "CHANNEL_HANDSHAKE_FAIL"
#: The outcome (with ``pq`` False) of a failure before the peer authenticated (see FailureLog.failure).
UNAUTHENTICATED = "unauthenticated"
#: Every reason a handshake failure is counted and journaled under (docs/CHANNEL.md).
REASONS = frozenset({
    "timeout", "eof", "truncated", "oversized", "malformed", "auth", "bad-signature",
    "protocol-refused", "pq-required", "busy", "policy", "key", "internal",
    "cert-missing", "cert-malformed", "cert-key-type", "cert-untrusted", "cert-expired", "cert-not-yet-valid",
    "cert-usage", "cert-extension", "cert-name", "cert-revoked", "chain-too-long",
    "crl-missing", "crl-expired", "crl-not-yet-valid",
})
_BY_CODE = {ErrorCode.AUTH: "auth", ErrorCode.KEY: "key", ErrorCode.POLICY: "policy", ErrorCode.NONCE: "internal",
            ErrorCode.UPDATE: "internal", ErrorCode.INTERNAL: "internal"}


def classify(exc: BaseException) -> str:
    """The reason a handshake failed with ``exc``, from :data:`REASONS`."""
    if isinstance(exc, XpsError):
        if exc.reason in REASONS:
            return exc.reason
        return _BY_CODE.get(exc.code, "internal")
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionError | EOFError):
        return "eof"
    return "internal"


def is_pq(protocol: str | None) -> bool:
    """Whether ``protocol`` names a hybrid post-quantum (``hfs``) handshake (False if unparsable)."""
    if protocol is None:
        return False
    from ._patterns import parse_protocol

    try:
        return bool(parse_protocol(protocol).hfs)
    except XpsError:
        return False


class FailureLog:
    """Counts handshake outcomes and journals failures (rate-limited) when given a journal.

    Args:
        audit: the journal, or None to count only.
        per_minute: journal records kept per rolling minute (``audit.auth_fail_per_minute``).
    """

    def __init__(self, audit: AuditLog | None = None, per_minute: int = 10) -> None:
        self.audit = audit
        self.per_minute = per_minute
        self.failures: Counter[str] = Counter()
        self.established = 0
        #: (post-quantum?, "ok", a failure reason or UNAUTHENTICATED) -> count: what a PQ
        #: rollout's canary reads.
        self.outcomes: Counter[tuple[bool, str]] = Counter()
        self._lock = threading.Lock()

    def success(self, protocol: str | None = None) -> None:
        """One more established channel (over ``protocol``)."""
        with self._lock:
            self.established += 1
            self.outcomes[(is_pq(protocol), "ok")] += 1

    def outcome_counts(self) -> dict[tuple[bool, str], int]:
        """A consistent copy of :attr:`outcomes`."""
        with self._lock:
            return dict(self.outcomes)

    def failure(self, role: str, exc: BaseException, *, protocol: str | None, peer: str | None,
                pre_auth: bool = False) -> str:
        """Count (and maybe journal) one failure; returns its reason. Never raises.

        ``pre_auth``: a responder failed before the initiator's certificate chain and signature
        verified. Then ``protocol`` is only what that peer named, and anyone who reaches the port
        can fail a handshake naming the hybrid protocol, for free: the outcome is counted as
        ``(False, UNAUTHENTICATED)``, never as a post-quantum failure a PQ canary reads. The
        reason is still counted in :attr:`failures` and journaled. An initiator's failures keep
        their kind: the protocol is its own offer, to a peer it chose.
        """
        reason = classify(exc)
        code = exc.code if isinstance(exc, XpsError) else ErrorCode.INTERNAL
        outcome = (False, UNAUTHENTICATED) if pre_auth else (is_pq(protocol), reason)
        with self._lock:
            self.failures[reason] += 1
            self.outcomes[outcome] += 1
        if self.audit is not None:
            # The caller's error stands whatever happens to the record (full disk, tampered log,
            # a journal tail nested so deep that reading it raised RecursionError): Exception, so
            # KeyboardInterrupt and SystemExit still reach the service.
            with contextlib.suppress(Exception):
                self.audit.record_rate_limited(EVENT, "channel", self.per_minute, role=role, reason=reason,
                                               code=str(code), protocol=protocol, peer=peer)
        return reason
