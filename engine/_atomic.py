"""Crash-safe file replacement, and the removal of what a process killed in the middle of one leaves."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import PolicyError

__all__ = ["STALE_TEMP_SECONDS", "atomic_write", "create_exclusive", "fsync_dir", "locked_beside", "locked_file",
           "sweep_stale_temps", "temp_target"]

_log = logging.getLogger(__name__)

#: Age (seconds since the last byte was written to it) from which a temp file of ours is taken
#: for one whose writer died (kill -9, power loss) between creating it and renaming or linking it.
#: A live writer holds its temp from creation to ``os.replace``/``os.link``: its last write, one
#: fsync, the rename — milliseconds, seconds on a congested disk or network file system. Removing
#: a live temp would make that writer's ``os.replace``/``os.link`` fail (the old file stays; a
#: failed write, never a torn one), so the margin is generous: ten minutes is far above any fsync
#: we expect, and short enough that a secret left in a temp (an audit seed, a KEK, a rewrapped
#: blob) is gone at the first home open or write of that file after it.
STALE_TEMP_SECONDS = 600.0

# The two spellings of a temp file for a target named NAME (see atomic_write and create_exclusive):
#   atomic_write:     tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") -> ".NAME.<8 of [a-z0-9_]>.tmp"
#   create_exclusive: f".{NAME}.{os.urandom(8).hex()}.tmp"             -> ".NAME.<16 of [0-9a-f]>.tmp"
_TAGS = ((8, re.compile(r"[a-z0-9_]{8}")), (16, re.compile(r"[0-9a-f]{16}")))


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half.

    Temp file in the same folder, fsync, ``os.replace``, then fsync of the folder so the
    rename itself is durable. Stale temps of ``path``'s name that a killed writer left in that
    folder are removed first (:func:`sweep_stale_temps`, limited to this name).
    """
    _sweep_before_write(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def locked_beside(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``PATH.lock`` (created 0600, never through a symlink).

    For a read-modify-write of ``path`` by several processes (``xps trust``, ``xps pki revoke``):
    each would otherwise save its change over a copy loaded before the other's, and one change,
    reported done, would be lost. ``what`` names the file in the error.

    Raises:
        PolicyError: the lock file cannot be opened (a directory, a symlink, no permission).
    """
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PolicyError(f"{what} lock {str(lock)!r}: cannot open ({exc.strerror or type(exc).__name__})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def locked_file(lock: Path, where: str, fail: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an exclusive lock on the regular file ``lock`` (created 0600), for a home's own locks.

    Never through a symlink (a planted one must not make us create, open or lock a file
    elsewhere: /etc/passwd, another home's lock), never waiting on a FIFO. ``fail(message)``
    makes the caller's typed error; the message names ``where`` and the fix.
    """
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise fail(f"{where}: cannot open ({_lock_problem(exc)}); remove it so it is created again") from None
    try:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise fail(f"{where}: cannot lock ({_lock_problem(exc)}); remove it so it is created again") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _lock_problem(exc: OSError) -> str:
    # errno's "Too many levels of symbolic links" does not say that a symlink was planted there.
    if exc.errno == errno.ELOOP:
        return "a symlink"
    if exc.errno == errno.EISDIR:
        return "a directory"
    return exc.strerror or type(exc).__name__


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (create, rename, unlink) in ``path`` durable.

    A folder its user may write but not read (mode ``-wx``) cannot be opened to be synced: the
    change is made and stays; only its durability across a power loss is not ensured, which is
    logged — raising would report a write that took place as failed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        _log.warning("cannot open folder %r to sync its entries (no read permission): the change is made "
                     "but may not survive a power loss", os.fspath(path))
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(path: Path, data: bytes | bytearray | memoryview, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data``, never replacing a file; False if ``path`` exists.

    The content goes to an ``O_EXCL`` temporary file in the same folder (mode set at creation
    and again with fchmod, so it is never wider whatever the umask), is fsynced, then ``link``-ed
    into place, which fails if ``path`` exists. Readers see the whole file or none, and two
    processes creating it at once agree on one content. ``data`` is written from the caller's
    buffer (no copy), so a secret in a bytearray stays wipeable by the caller. Stale temps of
    ``path``'s name are removed first, as by :func:`atomic_write`.
    """
    _sweep_before_write(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            view.release()
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


# -- stale temps -------------------------------------------------------------------------------


def temp_target(name: str) -> str | None:
    """The name of the file that ``name`` is a temp of, under either spelling; None if none of ours.

    The two spellings never both parse: the tag is the last 8 or 16 characters before ``.tmp``,
    the character before it a dot, and a 16-digit tag has no dot where an 8-character one needs it.
    """
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    core = name[1:-4]  # "NAME.TAG"
    for n, tag in _TAGS:
        if len(core) > n + 1 and core[-n - 1] == "." and tag.fullmatch(core, len(core) - n):
            return core[:-n - 1]
    return None


def sweep_stale_temps(directory: str | os.PathLike[str], *, target: str | None = None,
                      older_than: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove the temp files a killed :func:`atomic_write` / :func:`create_exclusive` left in ``directory``.

    Removed: entries of ``directory`` itself (not below it) named exactly as this module names
    its temps (``.NAME.<8 of [a-z0-9_]>.tmp`` or ``.NAME.<16 hex>.tmp``; with ``target``, only
    temps of that NAME), that are regular files owned by this process's user and were last
    written ``older_than`` seconds ago or more (or carry an mtime that far in the future). Each
    is checked with ``lstat`` and unlinked relative to the open folder: a symbolic link is never
    followed, and one named like a temp is left in place, as is a folder, FIFO or socket (this
    module never creates one under such a name, so it is reported). Nothing is opened or read.

    The files are unlinked, not overwritten first: a temp of :func:`create_exclusive` killed
    after its ``link`` is the *same inode* as the file it created (an audit key, a KEK), which
    overwriting would destroy; and overwriting in place does not reliably erase data on
    journaling or copy-on-write file systems and SSDs anyway. A stale temp stays in the same
    folder, with the same mode (0600 for secrets), as the file it was written for.

    Best effort, never raises on the file system: a temp that vanished meanwhile (another sweep,
    its writer) is skipped silently; any other failure (permission, a non-regular file or one of
    another user named like our temps) is logged as a warning naming the file and the OS error —
    never file contents — and the sweep goes on. Returns the names removed.
    """
    names = _list_temps(directory)
    if target is not None:
        names = [n for n in names if temp_target(n) == target]
    return _remove_stale(directory, names, older_than) if names else []


def _list_temps(directory: str | os.PathLike[str]) -> list[str]:
    """Names in ``directory`` that are spelled like our temps (one listing, no stat); [] on error."""
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if temp_target(e.name) is not None]
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing can be written there either: the write itself reports it
    except (OSError, ValueError) as exc:
        _log.warning("stale temp files: cannot list %r (%s)", os.fspath(directory), _why(exc))
        return []


def _remove_stale(directory: str | os.PathLike[str], names: list[str], older_than: float) -> list[str]:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        _log.warning("stale temp files: cannot open %r (%s)", os.fspath(directory), _why(exc))
        return []
    removed = []
    try:
        now, uid = time.time(), os.geteuid()
        for name in names:
            where = os.path.join(os.fspath(directory), name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    _log.warning("stale temp files: %r is named like an xpscerpto temp file but is not a regular "
                                 "file; left in place (xpscerpto never creates one)", where)
                    continue
                if st.st_uid != uid:
                    _log.warning("stale temp files: %r is named like an xpscerpto temp file but belongs to uid %d; "
                                 "left in place", where, st.st_uid)
                    continue
                if abs(now - st.st_mtime) < older_than:
                    # Maybe a live writer's. An mtime further ahead than that is no live write of
                    # this clock (set by another host's clock, or before the clock was set back):
                    # taken as stale, or it would never be removed.
                    continue
                # Between the lstat and here the name may have been replaced: unlink never follows a
                # symbolic link (it would remove the link itself) and refuses a folder (reported below).
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # vanished meanwhile: its writer renamed it, or another sweep removed it
            except OSError as exc:
                _log.warning("stale temp files: cannot remove %r (%s)", where, _why(exc))
                continue
            _log.info("stale temp files: removed %r (last written %.0f s ago)", where, now - st.st_mtime)
            removed.append(name)
    finally:
        os.close(dir_fd)
    return removed


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, OSError) else type(exc).__name__


# Before each write, the target's folder is swept for stale temps of that one name. One listing of
# a folder is reused for STALE_TEMP_SECONDS (per process), so rewrapping N files of one folder lists
# it once, not N times (N listings of N entries each). A temp left after a listing is seen by the
# next one: it goes at a write of its name at most 2 * STALE_TEMP_SECONDS after it was last written.
# No lock: single dict operations are atomic, a race only costs a re-listing or a re-check, and a
# lock held by another thread at a fork() (uWSGI's prefork from C runs no at-fork hook) would
# deadlock the child's first write.
_listed: dict[str, tuple[float, list[str]]] = {}  # folder -> (time.monotonic() of the listing, temp names)
_LISTED_MAX = 256  # folders remembered; beyond, the memory is dropped (only a re-listing is lost)


def _sweep_before_write(path: Path) -> None:
    try:
        folder, name = os.fspath(path.parent), path.name
        now = time.monotonic()
        seen = _listed.get(folder)
        if seen is None or now - seen[0] >= STALE_TEMP_SECONDS:
            seen = (now, _list_temps(folder))
        mine = [n for n in seen[1] if temp_target(n) == name]
        if mine:
            gone = set(_remove_stale(folder, mine, STALE_TEMP_SECONDS))
            seen = (seen[0], [n for n in seen[1] if n not in gone])
        if len(_listed) >= _LISTED_MAX and folder not in _listed:
            _listed.clear()
        _listed[folder] = seen
    except (OSError, ValueError) as exc:  # never let the sweep fail or change the write itself
        _log.warning("stale temp files: sweep before writing %r failed (%s)", os.fspath(path), _why(exc))
