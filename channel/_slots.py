"""Pending handshakes per source address: the ``max_pending_per_source`` cap of both servers."""

from __future__ import annotations

import threading

__all__ = ["SourceSlots"]


class SourceSlots:
    """How many handshakes each source address has in progress; thread-safe.

    Only addresses with a handshake in progress are kept, so the table is bounded by the
    server's ``max_pending_handshakes``.

    Example:
        >>> slots = SourceSlots()
        >>> slots.take("10.0.0.1", 1), slots.take("10.0.0.1", 1), slots.take("10.0.0.2", 1)
        (True, False, True)
        >>> slots.release("10.0.0.1", 1); slots.take("10.0.0.1", 1)
        True
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, source: str | None, limit: int | None) -> bool:
        """One more handshake from ``source``; False (nothing taken) when it has ``limit`` already.

        No limit, or no address (not an IP connection), always admits and counts nothing.
        """
        if limit is None or source is None:
            return True
        with self._lock:
            n = self._counts.get(source, 0)
            if n >= limit:
                return False
            self._counts[source] = n + 1
            return True

    def release(self, source: str | None, limit: int | None) -> None:
        """The end of a handshake :meth:`take` admitted with the same arguments."""
        if limit is None or source is None:
            return
        with self._lock:
            n = self._counts.get(source, 0) - 1
            if n > 0:
                self._counts[source] = n
            else:
                self._counts.pop(source, None)

    def __len__(self) -> int:
        """Addresses with a handshake in progress."""
        with self._lock:
            return len(self._counts)
