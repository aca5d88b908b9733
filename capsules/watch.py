"""The watched-folder inbox: drop a capsule into a folder and the pipeline runs on it.

:class:`Inbox` watches ``DIR`` with a watchdog observer (inotify on Linux, or a polling
observer where native events are unavailable) and hands every completed capsule file to a
handler exactly once. The outcome moves the file to ``DIR/accepted/`` or ``DIR/rejected/``
next to a one-line ``NAME.result`` / ``NAME.reason`` file.

How a file counts as *complete*: producers may rename a finished file into ``DIR`` (best) or
copy it in slowly. A file is read only after its size, mtime and inode have stayed unchanged
for ``settle_seconds`` (sampled repeatedly by the worker, and reset by every change event)
and it can be opened; if it changes while being read it goes back to settling. A copy that
stalls for longer than ``settle_seconds`` cannot be told apart from a finished file, so
writers that may stall should write ``NAME.capsule.part`` (ignored) and rename it when done.

watchdog is imported only when an inbox starts, so ``import xpscerpto`` stays free of it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from xpscerpto.errors import PolicyError

from .refusal import Refusal

__all__ = ["Handler", "Inbox", "InboxResult"]

log = logging.getLogger(__name__)


class _SpuriousStopError(logging.Filter):
    """Drop watchdog's "queue_events() called when the thread is inactive" error.

    watchdog 7 shares one inotify reader thread per process; an emitter being stopped while
    that reader still hands it an event logs this at ERROR level, though nothing is lost
    (the inbox has already stopped taking events). It would otherwise print on every stop.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_SpuriousStopError())

_IGNORED_SUFFIXES = (".part", ".tmp")
_RESCAN_SECONDS = 30.0  # safety net for lost events (inotify queue overflow, remote file systems)
_UNREADABLE_GIVE_UP_SECONDS = 60.0  # a file that cannot be opened this long is rejected "unreadable"
_MEMO_SIZE = 4096  # processed-file keys remembered (files whose move failed stay in DIR)
_NUDGE_EVENTS = frozenset({"created", "modified", "moved", "closed", "attrib"})

_Key = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True)
class InboxResult:
    """What the handler decided about one capsule file.

    ``reason`` is ``"accepted"`` or a :class:`~xpscerpto.capsules.refusal.Refusal` code
    (``"rollback"``, ``"bad-signature"``…); ``detail`` a one-line human message. Both end up in
    ``NAME.result`` / ``NAME.reason``.

    Example:
        >>> InboxResult(False, "bad-signature", "signature does not verify")
        InboxResult(accepted=False, reason='bad-signature', detail='signature does not verify')
    """

    accepted: bool
    reason: str
    detail: str


Handler = Callable[[bytes, Path], InboxResult]
"""Called once per completed capsule with its bytes (read once) and its path in the inbox."""


@dataclass
class _Pending:
    sig: _Key | None = None  # last sampled identity; None = changed, sample again
    since: float = 0.0  # monotonic time ``sig`` was first seen
    unreadable_since: float | None = None


class _EventSink:
    """Duck-typed watchdog event handler (the observer only calls ``dispatch``)."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    def dispatch(self, event: Any) -> None:
        if getattr(event, "is_directory", False) or event.event_type not in _NUDGE_EVENTS:
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        if raw:
            self._inbox._nudge(Path(os.fsdecode(raw)))


class Inbox:
    """Watch ``directory`` and pass each completed capsule to ``handler`` exactly once.

    Candidates are regular files directly in ``directory`` whose name matches ``pattern``
    (``fnmatch``, case-sensitive), except dotfiles and ``*.part`` / ``*.tmp``. The handler
    runs on one worker thread, never on the observer thread; if it raises, the file is
    rejected with reason ``internal`` and the inbox keeps running. After the handler returns
    the file is moved (``os.replace``) to ``accepted/NAME`` or ``rejected/NAME`` (``NAME`` gets
    a numeric suffix, ``x.1.capsule``, if taken), with ``NAME.result`` (the detail) or
    ``NAME.reason`` (``reason: detail``) written first. Files already present at
    :meth:`start` are processed too.

    ``DIR`` must not be inside an engine home (``home``, and any folder holding ``home.json``
    and ``capsules/``): the inbox files away what it finds, and in the capsule store that
    is the engine's own stored capsules (PolicyError naming the inbox).

    ``polling``: ``False`` uses the native observer, ``True`` forces
    ``watchdog.observers.polling.PollingObserver`` (every ``poll_interval`` seconds), ``None``
    tries the native one and falls back to polling if it cannot start. Files larger than
    ``max_bytes`` are rejected (``too-large``) without being read.

    Example:
        >>> def handle(raw: bytes, path: Path) -> InboxResult:
        ...     ok = raw.startswith(b"GOOD")
        ...     return InboxResult(ok, "accepted" if ok else "bad-signature", path.name)
        >>> with Inbox("/srv/xps/inbox", handle) as inbox:   # doctest: +SKIP
        ...     inbox.wait_idle(10.0)
        True
    """

    def __init__(self, directory: str | Path, handler: Handler, *, polling: bool | None = None,
                 settle_seconds: float = 0.5, poll_interval: float = 0.5, pattern: str = "*.capsule",
                 max_bytes: int = 64 * 1024 * 1024,
                 on_refused: Callable[[str, str, str], None] | None = None,
                 home: str | Path | None = None) -> None:
        if settle_seconds < 0:
            raise PolicyError("settle_seconds: must be >= 0")
        if poll_interval <= 0:
            raise PolicyError("poll_interval: must be > 0")
        if max_bytes <= 0:
            raise PolicyError("max_bytes: must be > 0")
        self.directory = Path(os.path.abspath(directory))
        self._home = None if home is None else Path(os.path.realpath(home))
        _check_outside_home(self.directory, self._home)
        self.accepted_dir = self.directory / "accepted"
        self.rejected_dir = self.directory / "rejected"
        self._handler = handler
        self._polling = polling
        self._settle = float(settle_seconds)
        self._poll_interval = float(poll_interval)
        self._check = max(0.01, min(self._poll_interval, self._settle / 5))
        self._pattern = pattern
        self._max_bytes = max_bytes
        self._on_refused = on_refused

        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._busy: str | None = None
        self._stopping = False
        self._memo: OrderedDict[tuple[str, _Key], None] = OrderedDict()
        self._unlisted = False  # the last listing of the inbox failed (logged once until one works)
        self._life = threading.Lock()
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self._kind = "none"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the folders, start the observer and the worker, queue files already there.

        ``DIR``, ``DIR/accepted`` and ``DIR/rejected`` are created with mode 0700 if missing.
        Raises ``RuntimeError`` if already started, ``OSError`` if no observer can start.
        """
        with self._life:
            if self._worker is not None:
                raise PolicyError("inbox: already started")
            _check_outside_home(self.directory, self._home)  # again: a symlink may point elsewhere now
            for d in (self.directory, self.accepted_dir, self.rejected_dir):
                _ensure_private_dir(d)
            dev = self.directory.stat().st_dev
            for d in (self.accepted_dir, self.rejected_dir):
                if d.stat().st_dev != dev:
                    raise OSError(f"{d} is on another file system than {self.directory}; "
                                  "outcomes are moved with os.replace")
            with self._cond:
                self._stopping = False
            observer = self._start_observer()
            try:
                self._kind = _kind_of(observer)
                log.info("inbox: watching %s with the %s observer", self.directory, self._kind)
                self._scan()
                worker = threading.Thread(target=self._run, name="xps-inbox", daemon=True)
                worker.start()
            except BaseException:
                observer.stop()
                observer.join()
                raise
            self._observer, self._worker = observer, worker

    def stop(self) -> None:
        """Stop watching; waits for the capsule in processing (if any) to be filed.

        Files not yet processed stay in ``DIR`` and are picked up by the next :meth:`start`.
        """
        with self._life:
            observer, worker = self._observer, self._worker
            self._observer = self._worker = None
            if observer is not None:
                observer.stop()
                observer.join()
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            if worker is not None and worker is not threading.current_thread():
                worker.join()
            with self._cond:
                self._pending.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def observer_kind(self) -> str:
        """``"inotify"``, ``"polling"``… (watchdog class in use, last started); ``"none"`` before."""
        return self._kind

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is pending, settling or in processing.

        A matching file in ``DIR`` that has not been processed yet (even if its event has not
        arrived) counts as pending. Returns whether the inbox became idle in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._idle_now():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(min(remaining, self._check))

    # -- observer ----------------------------------------------------------------------------

    def _start_observer(self) -> Any:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        if self._polling is True:
            return self._schedule(PollingObserver(timeout=self._poll_interval))
        try:
            return self._schedule(Observer())
        except Exception as exc:
            if self._polling is False:
                raise
            log.warning("inbox: native file events unavailable for %s (%s: %s); falling back to "
                        "polling every %ss", self.directory, type(exc).__name__, exc, self._poll_interval)
            return self._schedule(PollingObserver(timeout=self._poll_interval))

    def _schedule(self, observer: Any) -> Any:
        try:
            observer.schedule(_EventSink(self), str(self.directory), recursive=False)
            observer.name = f"xps-inbox-{_kind_of(observer)}"
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.unschedule_all()
            raise
        return observer

    def _nudge(self, path: Path) -> None:
        """A change event for ``path`` (observer thread): (re)start settling if a candidate."""
        if path.parent != self.directory or not self._is_candidate(path.name):
            return
        with self._cond:
            entry = self._pending.get(path.name)
            if entry is None:
                self._pending[path.name] = _Pending()
            else:
                entry.sig = None
            self._cond.notify_all()

    def _is_candidate(self, name: str) -> bool:
        return (not name.startswith(".") and not name.endswith(_IGNORED_SUFFIXES)
                and fnmatch.fnmatchcase(name, self._pattern))

    def _candidates(self) -> list[tuple[str, os.stat_result]]:
        found = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if not self._is_candidate(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:  # gone meanwhile, or no descriptor to spare: the next scan sees it
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        found.append((entry.name, st))
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Out of file descriptors, say: this scan is lost, the watcher is not (a review ran
            # a process out of them and the inbox thread died, so no capsule applied again).
            if not self._unlisted:
                log.warning("inbox %s: cannot be listed (%s); retrying at each scan", self.directory,
                            exc.strerror or type(exc).__name__)
            self._unlisted = True
            return found
        self._unlisted = False
        return found

    def _scan(self) -> None:
        new = False
        for name, _st in self._candidates():
            with self._cond:
                if name not in self._pending and name != self._busy:
                    self._pending[name] = _Pending()
                    new = True
        if new:
            with self._cond:
                self._cond.notify_all()

    def _idle_now(self) -> bool:
        with self._cond:
            if self._pending or self._busy is not None:
                return False
        for name, st in self._candidates():
            with self._cond:
                if (name, _key(st)) not in self._memo:
                    return False
        return True

    # -- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = time.monotonic() + _RESCAN_SECONDS
        while True:
            with self._cond:
                if self._stopped():
                    return
                if self._pending:
                    self._cond.wait(self._check)
                else:
                    self._cond.wait(max(0.0, next_rescan - time.monotonic()))
                if self._stopped():  # set by stop() while we waited
                    return
                names = list(self._pending)
            if time.monotonic() >= next_rescan:
                self._scan()
                next_rescan = time.monotonic() + _RESCAN_SECONDS
            for name in names:
                with self._cond:
                    if self._stopped():
                        return
                try:
                    self._step(name)
                except Exception:
                    log.exception("inbox: unexpected error handling %s", name)

    def _stopped(self) -> bool:
        return self._stopping

    def _step(self, name: str) -> None:
        """Sample one pending file; process it once it has settled."""
        path = self.directory / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._drop(name)
            return
        if stat.S_ISDIR(st.st_mode):
            self._drop(name)
            return
        key = _key(st)
        now = time.monotonic()
        with self._cond:
            entry = self._pending.get(name)
            if entry is None:
                return
            if (name, key) in self._memo:  # already filed (its move failed): never again
                del self._pending[name]
                return
            if entry.sig != key:
                entry.sig, entry.since = key, now
                return
            if now - entry.since < self._settle:
                return
            del self._pending[name]
            self._busy = name
        try:
            self._process(name, path, st, key, entry)
        except Exception:
            self._remember(name, key)  # do not loop on it; it stays in DIR
            raise
        finally:
            with self._cond:
                self._busy = None
                self._cond.notify_all()

    def _process(self, name: str, path: Path, st: os.stat_result, key: _Key, entry: _Pending) -> None:
        if not stat.S_ISREG(st.st_mode):
            self._refuse(name, path, key, InboxResult(False, Refusal.NOT_REGULAR_FILE,
                                                      "not a regular file (symlink, fifo…)"))
            return
        if st.st_size > self._max_bytes:
            self._refuse(name, path, key, InboxResult(
                False, Refusal.TOO_LARGE, f"{st.st_size} bytes exceeds the {self._max_bytes}-byte limit"))
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:  # e.g. still locked by its writer (Windows) or no permission
            now = time.monotonic()
            first = entry.unreadable_since if entry.unreadable_since is not None else now
            if now - first >= _UNREADABLE_GIVE_UP_SECONDS:
                self._refuse(name, path, key, InboxResult(False, Refusal.UNREADABLE,
                                                          f"{type(exc).__name__}: {exc.strerror}"))
            else:
                self._requeue(name, unreadable_since=first)
            return
        with os.fdopen(fd, "rb") as f:
            if _key(os.fstat(f.fileno())) != key:
                self._requeue(name)
                return
            data = f.read(self._max_bytes + 1)
            after = os.fstat(f.fileno())
        if _key(after) != key or len(data) != after.st_size:
            self._requeue(name)  # changed while being read: settle again
            return
        self._file(name, path, key, self._call(data, path))

    def _call(self, data: bytes, path: Path) -> InboxResult:
        try:
            result: object = self._handler(data, path)
        except Exception as exc:
            log.exception("inbox: handler failed on %s", path.name)
            return InboxResult(False, Refusal.INTERNAL, f"{type(exc).__name__}: {exc}")
        if not isinstance(result, InboxResult):
            return InboxResult(False, Refusal.INTERNAL, f"handler returned {type(result).__name__}, not InboxResult")
        return result

    def _refuse(self, name: str, path: Path, key: _Key, result: InboxResult) -> None:
        """A refusal the folder makes itself (the handler never saw the file): report, then file."""
        self._report(name, result)
        self._file(name, path, key, result)

    def _report(self, name: str, result: InboxResult) -> None:
        if self._on_refused is not None:
            try:
                self._on_refused(name, str(result.reason), result.detail)
            except Exception as exc:  # the report is best effort; filing must still happen
                log.error("inbox: could not report the refusal of %r: %s", name, exc)

    def _file(self, name: str, path: Path, key: _Key, result: InboxResult) -> None:
        """Write the outcome file, then move the capsule next to it.

        The outcome folders are opened without following links and re-checked (a directory of
        ours, mode 0700) on every filing, and every name is resolved relative to those open
        folders: replacing ``rejected/`` by a link while we run cannot make us write elsewhere.
        """
        self._remember(name, key)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            log.warning("inbox: %r vanished before its outcome (%s) was filed", name, result.reason)
            return
        if _key(now) != key:
            log.warning("inbox: %r changed while being processed; outcome %s not filed "
                        "(the new content is processed on its own)", name, result.reason)
            return
        reason, detail = _one_line(result.reason), _one_line(result.detail)
        if result.accepted:
            folder, suffix, text = self.accepted_dir, ".result", detail
        else:
            folder, suffix, text = self.rejected_dir, ".reason", f"{reason}: {detail}"
        try:
            src_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.error("inbox: %s: %s; %r not filed (outcome %s)", self.directory, exc, name, reason)
            return
        try:
            try:
                dst_fd = _open_private_dir(folder)
            except OSError as exc:
                log.error("inbox: %s: %s; %r left in place (outcome %s)", folder, exc, name, reason)
                self._report(name, InboxResult(False, Refusal.IO, f"outcome folder {folder.name}/ refused: {exc}"))
                return
            try:
                dest = _free_name_at(dst_fd, _short_name(name, suffix), suffix)
                _write_at(dst_fd, dest + suffix, (text + "\n").encode())
                os.replace(name, dest, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                os.fsync(dst_fd)
                with contextlib.suppress(OSError):
                    os.fsync(src_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        if result.accepted:
            log.info("inbox: accepted %r -> %r: %s", name, dest, detail)
        else:
            log.warning("inbox: rejected %r -> %r: %s: %s", name, dest, reason, detail)

    def _requeue(self, name: str, *, unreadable_since: float | None = None) -> None:
        with self._cond:
            entry = self._pending.setdefault(name, _Pending())
            entry.sig = None
            entry.unreadable_since = unreadable_since

    def _drop(self, name: str) -> None:
        with self._cond:
            self._pending.pop(name, None)

    def _remember(self, name: str, key: _Key) -> None:
        with self._cond:
            self._memo[(name, key)] = None
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind_of(observer: object) -> str:
    return type(observer).__name__.removesuffix("Observer").lower() or "unknown"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: Longest file name most file systems take (bytes); an outcome's companion must fit too.
_NAME_MAX = 255


def _short_name(name: str, companion: str) -> str:
    """``name``, or a shortened unique form of it when ``name`` + a counter + ``companion`` would not fit."""
    if len(os.fsencode(name + companion)) + 8 <= _NAME_MAX:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    keep = os.fsencode(name)[: _NAME_MAX - len(companion) - 8 - 18].decode("utf-8", "ignore")
    return f"{keep}.{digest}.capsule"


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _free_name_at(dir_fd: int, name: str, companion: str) -> str:
    """``name``, or ``stem.N.ext`` for the first N where it and its companion are free in ``dir_fd``."""
    base = Path(name)
    candidate, n = name, 0
    while _exists_at(dir_fd, candidate) or _exists_at(dir_fd, candidate + companion):
        n += 1
        candidate = f"{base.stem}.{n}{base.suffix}"
    return candidate


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    """Atomically create ``name`` in the open folder ``dir_fd`` (never through a link)."""
    tmp = f".{name[:64]}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _open_private_dir(path: Path) -> int:
    """Open ``path`` as a directory without following a link; ours, and writable by us alone."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
        os.close(fd)
        raise PermissionError(f"not a directory of this user writable by it alone "
                              f"(mode {stat.S_IMODE(st.st_mode):04o})")
    return fd


def _check_outside_home(directory: Path, home: Path | None) -> None:
    """Refuse an inbox inside an engine home.

    Filing a drop moves it out of the inbox: pointed at ``HOME/capsules`` the engine moved its
    own stored capsule away and refused it at the next start. Without ``home`` (the caller did
    not say), any folder up the path holding a home record and a capsule store is one.
    """
    try:
        real = Path(os.path.realpath(directory))
    except ValueError:  # a NUL byte
        raise PolicyError("inbox: not a usable path") from None
    for folder in (real, *real.parents):
        if folder == home or (os.path.lexists(folder / "home.json") and os.path.isdir(folder / "capsules")):
            raise PolicyError(f"inbox {_shown(directory)}: inside the engine home {_shown(folder)}; watch a "
                              "folder outside it (drops are moved away once handled)")


def _shown(path: Path) -> str:
    text = str(path)
    return repr(text) if len(text) <= 256 else f"(a path of {len(text)} characters)"


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
    else:
        os.chmod(path, 0o700)

