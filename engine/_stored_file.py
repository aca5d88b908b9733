"""Reading a small stored file (a record, a state document, a cache) without trusting what it is.

Every JSON file the engine keeps can be replaced by a symlink to ``/dev/zero``, a FIFO, a
directory or a file of gigabytes. Reading one must end quickly with an ``OSError`` the caller
turns into its typed refusal: never a hang (opening a FIFO without a writer blocks), never
memory exhaustion, never a raw exception.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["MAX_STORED_BYTES", "read_stored"]

#: The largest stored document read (state histories stay far below it).
MAX_STORED_BYTES = 64 << 20


def read_stored(path: Path, limit: int = MAX_STORED_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Raises:
        FileNotFoundError: there is no such file (callers tell "missing" from "damaged").
        OSError: unreadable, not a regular file (``strerror`` says which), or larger than ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew while being read
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return data
    finally:
        os.close(fd)
