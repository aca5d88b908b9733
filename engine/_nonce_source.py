"""Random nonces from the OS CSPRNG, fetched a batch at a time.

``os.urandom`` is one system call per nonce: about 0.45 us on the VMs we measure on, a third
of a 64-byte AES-GCM encryption. Here one ``getrandom`` call fills about 4 KiB and is cut into
nonces (``struct`` does the cutting in C); a draw hands out the next one. The bytes are the
same CSPRNG output ``os.urandom`` returns, so a nonce is exactly as unpredictable and as
unlikely to repeat as before. What changes is where unused output waits: in this process.

Why that cannot repeat a nonce:

* **Threads.** A batch is a tuple read through one ``tuple_iterator``; with the GIL, handing
  out its next item is one C call, so two threads never get the same item. Two threads that
  find the batch used up both refill; the later store drops the other's unused rest (dropping
  nonces is harmless). A free-threaded build does not batch at all: each draw is
  ``os.urandom``.
* **fork, however it is made.** A child would inherit the parent's unused batch. Every draw
  first reads a byte on a page mapped with ``MADV_WIPEONFORK``: the kernel hands every child of
  ``fork()`` that page zeroed, whether Python made the fork (``os.fork``, ``multiprocessing``)
  or C did (uWSGI's prefork runs no Python at-fork hooks). A zero sends the draw to
  :func:`refill`, which drops every batch and re-arms the page. A fork while a batch is being
  drawn (from a signal handler or a GC callback) is caught by a second look at the page
  before the batch is kept and its first nonce returned: the child draws again. BoringSSL's
  random generator detects forks with the same kind of page.
  Without the page (not Linux, a kernel older than 4.14, or a refused ``madvise``) nothing is
  batched: each draw is ``os.urandom``.
* **VM snapshots** are out of reach of any user-space buffer, as for OpenSSL's and BoringSSL's
  random generators: at most one batch per nonce size could repeat in a clone.

What no source of nonces can prevent: a fork in the middle of one encryption (a signal handler
that forks after the nonce was drawn) leaves that one call's nonce in both processes, exactly
as with ``os.urandom``. Every later draw differs.

Draw on the hot path as ``(GUARD[0] and next(NONCES[size], None)) or refill(size)``: a byte
read, a dict look-up and one C call, about 0.12 us.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from collections.abc import Iterator

from .errors import InternalError

__all__ = ["BATCH_BYTES", "GUARD", "NONCES", "refill"]

#: Bytes of CSPRNG output fetched per refill (rounded down to whole nonces).
BATCH_BYTES = 4096

_urandom = os.urandom
_EMPTY: Iterator[bytes] = iter(())
# A free-threaded build ("t" in its ABI flags) never batches: its GIL can be off, even if it
# was on when this module was imported, and a tuple_iterator is not atomic without it.
_FREE_THREADED_BUILD = "t" in getattr(sys, "abiflags", "")
_gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)


def _fork_guard() -> mmap.mmap | None:
    """One private anonymous page the kernel zeroes in every fork child, or None."""
    advice = getattr(mmap, "MADV_WIPEONFORK", None)
    if advice is None and sys.platform == "linux" and not os.uname().machine.startswith("parisc"):
        # Python built against headers older than Linux 4.14 lacks the name; the value is
        # the generic one (asm-generic/mman-common.h; only parisc differs). A kernel that does
        # not know it refuses it (EINVAL) and nothing is batched.
        advice = 18
    if advice is None:
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
        page.madvise(advice)
    except (OSError, ValueError, AttributeError):
        return None
    return page


class _Batches(dict[int, Iterator[bytes]]):
    """nonce size -> the iterator over its current batch (an unknown size starts used up)."""

    def __missing__(self, size: int) -> Iterator[bytes]:
        return _EMPTY


NONCES: dict[int, Iterator[bytes]] = _Batches()
#: ``GUARD[0]`` is 1 while the batches in NONCES were drawn by this process; 0 in a fork's child
#: (the kernel zeroes the page) and before the first draw. Without a guard page it is a
#: ``bytes`` whose byte is always 0: every draw then goes to :func:`refill`, which does not batch.
GUARD: mmap.mmap | bytes = _fork_guard() or bytes(1)
_SPLITTERS: dict[int, struct.Struct] = {}


def refill(size: int) -> bytes:
    """A fresh nonce of ``size`` bytes, and a new batch for the next draws (the slow path).

    ``size`` is a provider's nonce size. Anything but a plain int in 1..BATCH_BYTES is served
    by ``os.urandom(size)`` unbatched, as before batching existed.

    Raises:
        InternalError: the OS random generator failed (the used-up batch stays in place, so
            the next draw tries again).
        ValueError, TypeError: ``size`` is negative or not an integer (as ``os.urandom``).
    """
    guard = GUARD
    if (isinstance(guard, bytes) or _FREE_THREADED_BUILD or type(size) is not int or not 0 < size <= BATCH_BYTES
            or not _gil_enabled()):
        return _draw(size)
    split = _SPLITTERS.get(size)
    if split is None:
        split = _SPLITTERS[size] = struct.Struct(f"{size}s" * (BATCH_BYTES // size))
    while True:
        if not guard[0]:
            # The first draw in this process, or the first since a fork: any batch here was
            # the parent's.
            NONCES.clear()
            guard[0] = 1
        batch: Iterator[bytes] = iter(split.unpack(_draw(split.size)))
        nonce = next(batch)
        if guard[0]:
            NONCES[size] = batch
            return nonce
        # A fork happened while drawing (a handler ran between two bytecodes): in the child
        # these bytes are the parent's too. Draw again.


def _draw(n: int) -> bytes:
    try:
        return _urandom(n)
    except OSError as exc:
        raise InternalError(f"nonce: the OS random generator failed ({type(exc).__name__})") from None
