"""The lock a running engine holds on its home: one engine per home, no offline change under one.

A service takes it before it restores the committed state and holds it until it stops; an
offline change (``xps rollback`` with no engine answering) takes it for its load-modify-save.
So an offline rollback can no longer run while a just-started service restores the home
before its control socket opens — the service would go on serving, and later saving, the
state it loaded, and the rollback would be lost.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from xpscerpto.errors import UpdateError

from .refusal import Refusal, refuse

__all__ = ["EngineLockHeld", "engine_lock_path", "take_engine_lock"]


class EngineLockHeld(UpdateError):
    """Another process (an engine, or an offline change) holds the home's engine lock."""


def engine_lock_path(socket_path: str | os.PathLike[str]) -> Path:
    """The lock file beside the control socket (``control.sock.lock``)."""
    p = Path(socket_path)
    return p.with_name(p.name + ".lock")


def take_engine_lock(socket_path: str | os.PathLike[str], where: str) -> int:
    """Hold the lock without waiting; the open descriptor (closing it releases the lock).

    Raises:
        EngineLockHeld: another process holds it.
        UpdateError: reason ``io``, the lock file cannot be opened (the OS error named).
    """
    path = engine_lock_path(socket_path)
    try:
        # Never through a symbolic link: a lock file elsewhere would lock nothing here.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise refuse(Refusal.IO, f"{where}: cannot open lock file {str(path)!r} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EngineLockHeld(f"{where}: another engine is already running here (or an offline "
                             f"change holds {path.name})") from None
    return fd
