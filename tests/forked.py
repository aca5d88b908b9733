"""Run a function in a forked child and get back the bytes it returns (fork tests)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable


def c_fork() -> int:
    """``fork()`` called from C, as uWSGI's prefork does: no Python at-fork hooks run.

    Through ``PyDLL`` so the GIL stays held across the call (the child keeps it).
    """
    return int(ctypes.PyDLL(None).fork())


def in_forked_child(produce: Callable[[], bytes], fork: Callable[[], int] = os.fork) -> bytes:
    """``produce()`` run in a child made by ``fork()``; its bytes, read over a pipe.

    The child exits with ``os._exit`` (no atexit, no pytest teardown in the child); a child
    that fails exits 1 and the assertion here says so.
    """
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.write(w, produce())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0, "the forked child failed"
    return out
