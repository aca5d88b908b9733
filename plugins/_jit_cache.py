"""Where the numba kernels' compiled code is cached on disk, and the checks on that directory.

numba's cache holds pickles and native code that are loaded and run, so the directory is as
trusted as the package itself: it must belong to the current user and be writable by nobody
else, nor may any directory above it be (unless sticky, like ``/tmp``), or someone else could
swap in their own code. A directory that fails these checks is refused, with the reason.

Resolution order (first that applies):

1. the ``cache_dir`` argument of :func:`xpscerpto.plugins.jit.warm_up`;
2. ``NUMBA_CACHE_DIR`` (numba's own setting, honoured as numba would);
3. ``$XDG_CACHE_HOME/xpscerpto/numba``, by default ``~/.cache/xpscerpto/numba``.

numba stores the files in a subdirectory named after the source folder; its index is keyed by
the source file's hash, the numba version, Python version and the CPU (name and features), so
an upgrade or another machine recompiles instead of loading stale code.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MAX_CACHE_ENTRIES", "MAX_CACHE_FILE_BYTES", "CacheDirError", "check_cache_dir", "check_cache_files",
           "directed", "resolve_cache_dir"]

_GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
#: A compiled kernel's file is some hundred KiB; anything far larger is not numba's.
MAX_CACHE_FILE_BYTES = 64 << 20
#: Entries walked below the cache directory before it is refused as not numba's own.
MAX_CACHE_ENTRIES = 10_000


class CacheDirError(Exception):
    """The cache directory cannot be used; the message says why (it names only the path)."""


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory the kernels are cached in (see the module docstring for the order).

    Example:
        >>> resolve_cache_dir("/tmp/xps-jit").as_posix()
        '/tmp/xps-jit'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    numba_dir = os.environ.get("NUMBA_CACHE_DIR")
    if numba_dir:
        return Path(numba_dir).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return (base / "xpscerpto" / "numba").absolute()


def _refuse_writable_by_others(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid not in (os.geteuid(), 0):
        raise CacheDirError(f"{what} {path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & _GROUP_OR_OTHER_WRITE and not st.st_mode & stat.S_ISVTX:
        raise CacheDirError(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def check_cache_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and check nobody else can write code into it.

    Raises:
        CacheDirError: the directory (or one above it) is someone else's or writable by others,
            is not a directory, or cannot be created.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise CacheDirError(f"cache directory {path} cannot be created ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheDirError(f"cache directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise CacheDirError(f"cache directory {path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & _GROUP_OR_OTHER_WRITE:
        raise CacheDirError(f"cache directory {path} is writable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):o})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(f"cache directory {path} is not writable")
    for parent in path.resolve().parents:
        _refuse_writable_by_others(parent, parent.stat(), "directory")
    return path


def check_cache_files(path: Path) -> None:
    """Refuse a cache tree holding anything numba would block on or read without limit.

    numba opens and reads its index and data files without looking at what they are: a FIFO
    in their place blocks the warm-up forever, a symlink to ``/dev/zero`` reads until memory
    runs out (found by a review). Every entry below ``path`` must be a directory of this
    user's, writable by nobody else, or a regular file of at most :data:`MAX_CACHE_FILE_BYTES`;
    symlinks are refused, whatever they point to.

    Raises:
        CacheDirError: names the first entry that fails (remove it, and numba recompiles).
    """
    seen = 0
    pending = [path]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise CacheDirError(f"cache directory {folder} cannot be listed ({exc.strerror})") from None
        for entry in entries:
            seen += 1
            if seen > MAX_CACHE_ENTRIES:
                raise CacheDirError(f"cache directory {path} holds more than {MAX_CACHE_ENTRIES} entries; "
                                    "point the cache at a directory of its own")
            where = Path(entry.path)
            try:
                st = os.lstat(where)
            except OSError as exc:
                raise CacheDirError(f"cache entry {where} cannot be read ({exc.strerror})") from None
            if stat.S_ISDIR(st.st_mode):
                if st.st_uid != os.geteuid() or st.st_mode & _GROUP_OR_OTHER_WRITE:
                    raise CacheDirError(f"cache directory {where} is another user's or writable by others")
                pending.append(where)
            elif not stat.S_ISREG(st.st_mode):
                raise CacheDirError(f"cache entry {where} is not a regular file (a symlink, FIFO or device); "
                                    "remove it to recompile")
            elif st.st_size > MAX_CACHE_FILE_BYTES:
                raise CacheDirError(f"cache file {where} is {st.st_size} bytes, more than a kernel's; remove it "
                                    "to recompile")


@contextlib.contextmanager
def directed(numba_config: Any, path: Path) -> Iterator[None]:
    """Point numba's cache at ``path`` while the kernels module is imported.

    numba picks a function's cache directory once, when the function is decorated, from
    ``numba.config.CACHE_DIR`` (``NUMBA_CACHE_DIR``). Setting it only around the import keeps
    the rest of the process (other numba users) on their own setting.
    """
    previous = numba_config.CACHE_DIR
    numba_config.CACHE_DIR = str(path)
    try:
        yield
    finally:
        numba_config.CACHE_DIR = previous
