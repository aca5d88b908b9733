"""Per-source pending-handshake slots under racing threads: never over the limit, never leaked."""

from __future__ import annotations

import threading

from xpscerpto.channel._slots import SourceSlots


def test_racing_takes_and_releases_never_exceed_the_limit_and_leave_nothing_behind() -> None:
    slots, limit = SourceSlots(), 3
    held = {f"10.0.0.{i}": 0 for i in range(4)}
    lock, worst, start = threading.Lock(), [0], threading.Barrier(16)

    def worker(n: int) -> None:
        source = f"10.0.0.{n % 4}"
        start.wait()
        for _ in range(2000):
            if slots.take(source, limit):
                with lock:
                    held[source] += 1
                    worst[0] = max(worst[0], held[source])
                with lock:
                    held[source] -= 1
                slots.release(source, limit)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= worst[0] <= limit and len(slots) == 0


def test_no_limit_or_no_address_admits_and_counts_nothing() -> None:
    slots = SourceSlots()
    assert all(slots.take("10.0.0.1", None) for _ in range(100)) and len(slots) == 0
    assert all(slots.take(None, 1) for _ in range(100)) and len(slots) == 0
