"""Pending handshakes per source address: the ``max_pending_per_source`` cap of both servers."""

from __future__ import annotations

import ipaddress
import threading

__all__ = ["SourceSlots"]


class SourceSlots:
    """How many handshakes each source address has in progress; thread-safe.

    Only addresses with a handshake in progress are kept, so the table is bounded by the
    server's ``max_pending_handshakes``. An IPv6 source counts by its /64 (one host usually
    holds a whole /64, so counting per address let it take every slot), an IPv4-mapped one as
    its IPv4 address.

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
        source = _group(source)
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
        source = _group(source)
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


def _group(source: str) -> str:
    """What one source counts as: an IPv4 address, an IPv6 /64, or the text as given."""
    try:
        address = ipaddress.ip_address(source.split("%", 1)[0])  # without an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
