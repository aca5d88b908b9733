"""The suite's thread guard (tests/conftest.py) refuses what a module leaves running, and only that."""

from __future__ import annotations

import threading

from tests.conftest import FOREIGN_THREADS_ALLOWED, leftover_threads, thread_problems


def _idle(stop: threading.Event) -> None:
    stop.wait(60)


def test_a_thread_of_ours_left_running_is_named_and_refused() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    leak = threading.Thread(target=_idle, args=(stop,), name="xps-test-leak-7", daemon=True)
    leak.start()
    try:
        left = leftover_threads(before, join_seconds=0.05)
        assert left == [leak]
        problems = thread_problems(left)
        assert len(problems) == 1
        assert "1 x xps-test-leak-* (tests.test_thread_guard._idle, daemon)" in problems[0], problems
    finally:
        stop.set()
        leak.join()
    assert leftover_threads(before, join_seconds=0.05) == []


def test_a_non_daemon_thread_is_refused_and_foreign_daemon_threads_only_past_the_allowance() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    foreign = [threading.Thread(target=stop.wait, args=(60,), name=f"lib-helper-{i}", daemon=True)
               for i in range(FOREIGN_THREADS_ALLOWED + 1)]
    plain = threading.Thread(target=stop.wait, args=(60,), name="worker")
    try:
        for t in foreign[:FOREIGN_THREADS_ALLOWED]:
            t.start()
        assert thread_problems(leftover_threads(before, join_seconds=0.05)) == []  # within the allowance
        foreign[-1].start()
        problems = thread_problems(leftover_threads(before, join_seconds=0.05))
        assert len(problems) == 1 and f"{FOREIGN_THREADS_ALLOWED + 1} x lib-helper-*" in problems[0], problems
        plain.start()
        problems = thread_problems(leftover_threads(before, join_seconds=0.05))
        assert len(problems) == 2 and "1 x worker (threading.Event.wait, non-daemon)" in problems[0], problems
    finally:
        stop.set()
        for t in (*foreign, plain):
            if t.ident is not None:
                t.join()


def test_a_thread_that_ends_within_the_join_window_is_not_a_leak() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    ending = threading.Thread(target=stop.wait, args=(60,), name="xps-ending", daemon=True)
    ending.start()
    threading.Timer(0.1, stop.set).start()
    assert leftover_threads(before, join_seconds=30) == []
