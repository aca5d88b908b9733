"""Settings for the whole test suite."""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

import pytest

from tests.pg_server import PgServer, require_server_bin

# Engines made by tests route statically unless a test asks for autotune itself
# (EngineConfig(autotune=True)): measuring in the background of every Engine() would load the
# machine and make each test's routing depend on timing. tests/engine/test_tuning.py and the
# CLI tests of `xps tune` turn it on explicitly.
os.environ.setdefault("XPS_AUTOTUNE", "0")
# Measurements made by tests never land in (or come from) the user's cache.
os.environ.setdefault("XPS_AUTOTUNE_CACHE", os.path.join(tempfile.mkdtemp(prefix="xps-test-tune-"), "autotune.json"))


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A folder with a short path: an AF_UNIX socket path (a home's ``control.sock``) is limited
    to 107 bytes, which pytest's ``tmp_path`` can exceed."""
    root = Path(tempfile.mkdtemp(prefix="xps-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


# -- PostgreSQL (issue 14): one throwaway server per session, one fresh database per test --------

_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server of this test session, with a migrated template database."""
    server = PgServer(require_server_bin())
    try:
        from xpscerpto.db import Database, migrate

        db = Database(server.create_database("xps_template"))
        migrate(db)
        db.close()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of a new database, migrated to the newest schema."""
    return pg_server.create_database(f"xps_t{os.getpid()}_{next(_databases)}", template="xps_template")


# -- threads: no test module may leave its threads running ----------------------------------------
#
# One long pytest process runs every test: each Updater, service, watcher or server a test does
# not close keeps its threads, and CI once ran out of them ("can't start new thread"). After the
# last teardown of each module (its module fixtures included), the threads started while it ran
# get THREAD_JOIN_SECONDS in all to end; then the module errors (at its last test's teardown) if
# any thread of ours (named "xps-*", or running xpscerpto code) or any non-daemon thread is left,
# if more than FOREIGN_THREADS_ALLOWED other daemon threads are, or if the process holds more
# than MAX_THREADS threads in all. The message names them.

THREAD_JOIN_SECONDS = 5.0
FOREIGN_THREADS_ALLOWED = 2  # a library's lazily started helper thread is not a leak
MAX_THREADS = 64

_module_threads: dict[str, set[threading.Thread]] = {}


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def thread_target(thread: threading.Thread) -> str:
    """``module.qualname`` of what ``thread`` runs (its class for a Thread subclass)."""
    target = getattr(thread, "_target", None) or getattr(thread, "function", None)  # Thread / Timer
    if target is None:
        return f"{type(thread).__module__}.{type(thread).__qualname__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def is_ours(thread: threading.Thread) -> bool:
    """A thread the project started: named ``xps-*`` or running code of ``xpscerpto``."""
    return thread.name.startswith("xps-") or thread_target(thread).startswith("xpscerpto.")


def leftover_threads(before: Iterable[threading.Thread],
                     join_seconds: float = THREAD_JOIN_SECONDS) -> list[threading.Thread]:
    """Threads alive now that were not in ``before``, after up to ``join_seconds`` (in all) to end."""
    old = set(before)
    new = [t for t in threading.enumerate() if t not in old and t is not threading.current_thread()]
    deadline = time.monotonic() + join_seconds
    for thread in new:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in new if t.is_alive()]


def thread_problems(left: list[threading.Thread]) -> list[str]:
    """What the guard refuses in ``left`` (see the comment above); empty when nothing."""
    judged = [t for t in left if is_ours(t) or not t.daemon]
    foreign = [t for t in left if t not in judged]
    problems = []
    if judged:
        problems.append(f"{len(judged)} thread(s) of ours or non-daemon still running: {describe_threads(judged)}")
    if len(foreign) > FOREIGN_THREADS_ALLOWED:
        problems.append(f"{len(foreign)} other daemon threads still running (at most {FOREIGN_THREADS_ALLOWED} "
                        f"allowed): {describe_threads(foreign)}")
    if threading.active_count() > MAX_THREADS:
        problems.append(f"{threading.active_count()} threads in this process (at most {MAX_THREADS}): "
                        f"{describe_threads(threading.enumerate())}")
    return problems


def describe_threads(threads: Iterable[threading.Thread]) -> str:
    """``3 x xps-drain-* (xpscerpto.capsules.updater...., daemon); ...``, most frequent first."""
    kinds = collections.Counter(
        (t.name.rstrip("0123456789") + ("*" if t.name[-1:].isdigit() else ""), thread_target(t),
         "daemon" if t.daemon else "non-daemon") for t in threads)
    return "; ".join(f"{n} x {name} ({target}, {kind})" for (name, target, kind), n in kinds.most_common())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _module_threads.setdefault(_module_of(item), set(threading.enumerate()))
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    result = yield  # the module's fixtures are torn down by now if nextitem is in another module
    module = _module_of(item)
    if nextitem is not None and _module_of(nextitem) == module:
        return result
    problems = thread_problems(leftover_threads(_module_threads.pop(module, set())))
    if problems:
        pytest.fail(f"{module} left threads behind (started by its tests or the fixtures they used; "
                    f"close what they start): " + " | ".join(problems), pytrace=False)
    return result
