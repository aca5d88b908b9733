"""FailureLog.failure() never raises: the handshake's own error stands whatever the journal does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xpscerpto.audit import AuditLog
from xpscerpto.channel._failures import FailureLog


class _Journal(AuditLog):
    """A real journal whose rate-limited record fails with ``error``: found by a review, a journal
    tail nested 60,000 deep raised RecursionError out of failure(), documented "Never raises";
    what a journal raises next is not this module's to choose."""

    def __init__(self, path: Path, error: BaseException) -> None:
        super().__init__(path)
        self.error = error

    def record_rate_limited(self, event: str, bucket: str, per_minute: int, **fields: Any) -> dict[str, Any] | None:
        raise self.error


@pytest.mark.parametrize("error", [RecursionError("deep"), RuntimeError("bug"), MemoryError(), KeyError("seq")])
def test_any_error_of_the_journal_is_swallowed_and_the_failure_still_counted(
        tmp_path: Path, error: Exception) -> None:
    failures = FailureLog(audit=_Journal(tmp_path / "audit.log", error))
    assert failures.failure("initiator", TimeoutError(), protocol=None, peer=None) == "timeout"
    assert failures.failures["timeout"] == 1
    # Exception only: an interrupt while recording still reaches the service.
    interrupted = FailureLog(audit=_Journal(tmp_path / "audit2.log", KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        interrupted.failure("initiator", TimeoutError(), protocol=None, peer=None)
