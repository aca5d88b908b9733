"""Run a function in a forked child and get back the bytes it returns (fork tests)."""

from __future__ import annotations

import os
from collections.abc import Callable


def in_forked_child(produce: Callable[[], bytes]) -> bytes:
    """``produce()`` run in a child made by ``os.fork()``; its bytes, read over a pipe.

    The child exits with ``os._exit`` (no atexit, no pytest teardown in the child); a child
    that fails exits 1 and the assertion here says so.
    """
    r, w = os.pipe()
    pid = os.fork()
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
