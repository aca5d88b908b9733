"""Supervisor of one validation child: nothing the capsule starts outlives validation.

Run as ``python -I -m xpscerpto.capsules._reaper FD -- CMD...`` (``FD``: the child's result
file descriptor, passed on to it). It runs no capsule code. It makes
itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``), so every process the validation
child leaves behind — double-forked, in a new session, in a new process group — is re-parented
to it instead of to init. When the child ends (or on SIGTERM from the engine, after a
timeout) it SIGKILLs every remaining descendant, reaps them, and exits with the child's status
(a child killed by a signal makes it die of the same signal, so the engine sees the same
outcome it would without the supervisor).

Where the subreaper call is unavailable (not Linux), descendants that left the child's process
group can escape; the engine still kills the group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_KILL_ROUNDS_SECONDS = 5.0  # a fork bomb gets this long before we give up (and say so)


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children(pid: int) -> list[int]:
    """Live children of ``pid`` (from /proc/*/stat, which every Linux has)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants() -> int:
    """SIGKILL every descendant until none is left; return how many were killed."""
    me, killed = os.getpid(), 0
    deadline = time.monotonic() + _KILL_ROUNDS_SECONDS
    while time.monotonic() < deadline:
        kids = _children(me)
        if not kids:
            return killed
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.005)  # let the kernel re-parent their own children to us
        _reap()
    print(f"xps validation supervisor: descendants still alive after {_KILL_ROUNDS_SECONDS:g} s",
          file=sys.stderr)
    return killed


def main() -> None:
    result_fd, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        sys.exit("usage: python -m xpscerpto.capsules._reaper FD -- CMD...")
    _become_subreaper()
    child = subprocess.Popen(argv, pass_fds=(int(result_fd),))  # noqa: S603 - the engine's own child module

    def on_term(signum: int, frame: object) -> None:
        child.kill()

    signal.signal(signal.SIGTERM, on_term)
    status = child.wait()
    kill_descendants()
    _reap()
    if status < 0:
        if -status != signal.SIGKILL:  # SIGKILL's disposition cannot be changed (nor needs to be)
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main()
