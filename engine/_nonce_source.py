"""Random nonces from the OS CSPRNG, fetched a batch at a time.

``os.urandom`` is one system call per nonce: about 0.45 us on the VMs we measure on, a third
of a 64-byte AES-GCM encryption. Here one ``getrandom`` call fills about 4 KiB and is cut into
nonces (``struct`` does the cutting in C); a draw hands out the next one. The bytes are the
same CSPRNG output ``os.urandom`` returns, so a nonce is exactly as unpredictable and as
unlikely to repeat as before. What changes is where unused output waits: in this process.

Why that cannot repeat a nonce:

* **Threads.** A batch is a tuple read through one ``tuple_iterator``; with the GIL, handing
  out its next item is one C call, so two threads never get the same item. Two threads that
  find the batch used up both refill; the later swap drops the other's unused rest (dropping
  nonces is harmless). A free-threaded build (no GIL) does not batch at all: each draw is
  ``os.urandom``.
* **fork.** A child would inherit the parent's unused batch and hand out the same nonces as the
  parent. ``os.register_at_fork`` drops every batch in the child before ``os.fork()`` returns
  there: the mechanism the ``random`` module relies on, and what every fork from Python goes
  through (``os.fork``, ``os.forkpty``, ``multiprocessing``'s fork and forkserver). A C
  extension that calls ``fork()`` itself and then runs Python in the child bypasses it; CPython
  does not support that.
* **VM snapshots** are out of reach of any user-space buffer, as for OpenSSL's and BoringSSL's
  random generators: at most one batch (about 4 KiB) could repeat in a clone.

Draw on the hot path as ``next(NONCES[size], None) or refill(size)``: a dict look-up and one C
call, about 0.1 us.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator

__all__ = ["BATCH_BYTES", "NONCES", "refill"]

#: Bytes of CSPRNG output fetched per refill (rounded down to whole nonces).
BATCH_BYTES = 4096

_urandom = os.urandom
_EMPTY: Iterator[bytes] = iter(())
# Free-threaded builds (3.13t) do not make a tuple_iterator's next() atomic: no batching there.
_BATCHING = getattr(sys, "_is_gil_enabled", lambda: True)()


class _Batches(dict[int, Iterator[bytes]]):
    """nonce size -> the iterator over its current batch (an unknown size starts used up)."""

    def __missing__(self, size: int) -> Iterator[bytes]:
        return _EMPTY


NONCES: dict[int, Iterator[bytes]] = _Batches()
_SPLITTERS: dict[int, struct.Struct] = {}


def refill(size: int) -> bytes:
    """A fresh nonce of ``size`` bytes, and a new batch for the next draws (the slow path).

    ``size`` is a provider's nonce size (a positive int); ``os.urandom``'s errors pass through
    and leave the used-up batch in place, so the next draw tries again.
    """
    if not _BATCHING or not 0 < size <= BATCH_BYTES:
        return _urandom(size)
    split = _SPLITTERS.get(size)
    if split is None:
        split = _SPLITTERS[size] = struct.Struct(f"{size}s" * (BATCH_BYTES // size))
    batch: Iterator[bytes] = iter(split.unpack(_urandom(split.size)))
    nonce = next(batch)
    NONCES[size] = batch
    return nonce


def _forget() -> None:
    # In a fork's child: the parent keeps handing out its batches, so the child must not.
    for size in list(NONCES):
        NONCES[size] = _EMPTY


os.register_at_fork(after_in_child=_forget)
