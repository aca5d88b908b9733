"""The audit trail: append-only JSON lines, one per event, fsynced.

Every hot-patch step is recorded (PATCH_LOAD, PATCH_VERIFY, PATCH_KAT, PATCH_STAGE,
PATCH_ENABLE, PATCH_DRAINED, PATCH_ROLLBACK, PATCH_REJECT) with the time, capsule hash,
publisher key ids, operator and reason. Fields are whitelisted by the callers; nothing secret
is ever passed here. (The keyring issue turns this into a hash-chained, signed journal.)
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]


class AuditLog:
    """Append-only event log at ``path`` (safe across threads; each line written with O_APPEND)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the record written."""
        rec = {"time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "event": event, **fields}
        line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return rec

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` events (a torn last line from a crash is skipped)."""
        try:
            with self.path.open("rb") as f:
                lines = deque(f, maxlen=n)
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
