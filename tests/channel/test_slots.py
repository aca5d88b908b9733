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


def test_an_ipv6_source_counts_by_its_64_and_a_mapped_ipv4_as_itself() -> None:
    # One IPv6 host usually holds a whole /64: counted per address, it could take every slot.
    slots = SourceSlots()
    assert slots.take("2001:db8:1:2::1", 2) and slots.take("2001:db8:1:2:ffff::9", 2)
    assert not slots.take("2001:db8:1:2:abcd::1", 2)  # a third address of the same /64
    assert slots.take("2001:db8:1:3::1", 2)  # another /64
    assert slots.take("::ffff:10.0.0.1", 1) and not slots.take("10.0.0.1", 1)  # the same IPv4 host
    assert not slots.take("fe80::1%eth0", 0) and slots.take("fe80::1%eth0", 1)
    for source in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1", "::ffff:10.0.0.1",
                   "fe80::1%eth0"):
        slots.release(source, 1)
    assert len(slots) == 0
