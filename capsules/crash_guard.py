"""Crash-loop guard: a capsule active while the engine died abnormally is counted, then quarantined.

A capsule can pass every validation gate and still take the engine process down later (a
background thread that segfaults a few seconds after enable). Every restart would re-enable it
and die again. The guard notices an abnormal end — the previous run's marker is still there and
the process that wrote it is gone — and charges one crash to every capsule that was active then.
At ``limit`` crashes the updater quarantines the capsule at start (its predecessor, or the
built-in provider, serves; audited) instead of re-enabling it. A clean stop clears the marker
and the counts.

Files (in the home, written atomically): ``engine.run`` (the running engine's pid, shown to
people, and a random token of its run) and ``crashes.json`` (capsule sha256 -> abnormal ends
while it was active).

The token, not the pid, tells whose marker it is: an engine restarted in a container or a PID
namespace has the pid its dead predecessor had (PID 1, every time), and a pid comparison took
that crash for our own marker, so a crash-looping capsule was never quarantined.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.home import Home

from .refusal import Refusal, refuse
from .store import ActiveCapsule

__all__ = ["DEFAULT_CRASH_LIMIT", "CrashGuard"]

#: The marker and the counts are a few hundred bytes; anything larger is not ours.
_SMALL = 1 << 20

#: Abnormal ends with a capsule active before it is quarantined at the next start.
DEFAULT_CRASH_LIMIT = 3

#: This process's run. Every updater of one process shares it (two of them on one home are
#: not a crash); a forked child gets its own, since it is a run that can die on its own.
_run_token = secrets.token_hex(16)


def _new_run_token() -> None:
    global _run_token  # noqa: PLW0603 -- one value per process, renewed in a forked child
    _run_token = secrets.token_hex(16)


os.register_at_fork(after_in_child=_new_run_token)


class CrashGuard:
    """Counts abnormal engine ends per active capsule.

    Example:
        >>> guard = CrashGuard(Home.resolve("/var/lib/xps"))            # doctest: +SKIP
        >>> counts = guard.begin(state.active)  # at start                # doctest: +SKIP
        >>> guard.clean_exit()                  # at a clean stop         # doctest: +SKIP
    """

    def __init__(self, home: Home, limit: int = DEFAULT_CRASH_LIMIT) -> None:
        self.marker: Path = home.root / "engine.run"
        self.counts_path: Path = home.root / "crashes.json"
        self.limit = limit

    def begin(self, active: Iterable[ActiveCapsule], *, sole_engine: bool = False) -> dict[str, int]:
        """Account for an abnormal previous end, mark this run, return the crash counts.

        Args:
            sole_engine: this process holds the home's engine lock (a service does from
                before its restore), so no other engine runs here: a marker of another run is
                one that never reached :meth:`clean_exit`, even if a live process has its pid
                now (the pid of a dead engine is reused, and ``kill(pid, 0)`` then finds it
                "alive"). Without the lock, a live pid is taken for a running engine.

        Raises:
            UpdateError: ``crashes.json`` is unreadable (``state``; never silently reset).
        """
        counts = self._load()
        if self._previous_died(sole_engine):
            for cap in active:
                counts[cap.sha256] = counts.get(cap.sha256, 0) + 1
            self._save(counts)
        try:
            atomic_write(self.marker, json.dumps({"pid": os.getpid(), "run": _run_token}).encode() + b"\n")
        except OSError as exc:
            raise refuse(Refusal.IO, f"run marker {str(self.marker)!r}: cannot write ({exc.strerror})") from None
        return counts

    def forget(self, sha256: str) -> None:
        """Drop the count of a capsule that was quarantined (it is no longer active)."""
        counts = self._load()
        if counts.pop(sha256, None) is not None:
            self._save(counts)

    def clean_exit(self) -> None:
        """The engine stops normally: the counts start again from zero."""
        for path in (self.marker, self.counts_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _previous_died(self, sole_engine: bool = False) -> bool:
        try:
            doc = json.loads(read_stored(self.marker, _SMALL))
            pid = int(doc["pid"])
            run = doc.get("run")  # absent in a marker written before runs had tokens
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError):
            return True  # a marker we cannot read was left by a run that did not stop cleanly
        if not 0 < pid < 1 << 31:
            return True  # damaged: kill(0) or kill(-1) would find "a live process", a huge one overflow
        if run is not None:
            if run == _run_token:
                return False  # another updater of this same process (tests, a second engine)
            if pid == os.getpid():
                return True  # our pid, another run's token: that run died and we got its pid
        elif pid == os.getpid():
            return False  # an old-format marker: judged by pid, as before tokens
        if sole_engine:
            return True  # not this run's, and no other engine can be running: it died
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False  # alive: not an abnormal end (the home lock keeps two services apart)

    def _load(self) -> dict[str, int]:
        try:
            doc = json.loads(read_stored(self.counts_path, _SMALL))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            raise refuse(Refusal.STATE, f"crash counts {str(self.counts_path)!r}: unreadable "
                                        f"({type(exc).__name__}); delete it to reset the counts") from None
        if not isinstance(doc, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in doc.items()):
            raise refuse(Refusal.STATE, f"crash counts {str(self.counts_path)!r}: malformed; delete it to reset "
                                        f"the counts")
        return doc

    def _save(self, counts: dict[str, int]) -> None:
        try:
            atomic_write(self.counts_path, json.dumps(counts, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise refuse(Refusal.IO, f"crash counts {str(self.counts_path)!r}: cannot write ({exc.strerror})") from None
