"""Secret material: a wipeable buffer, an explicit wipe, and constant-time comparison.

Python cannot promise that no copy of a secret ever exists (immutable ``bytes`` handed to a
C library, the allocator's freed pages), so the goal is narrower and checkable: secrets the
engine owns live in one mutable buffer that is zeroed on :meth:`SecretBytes.wipe` or at the
end of a ``with`` block, and never appear in ``repr``, ``str``, pickles, logs or exceptions.
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
from types import TracebackType
from typing import NoReturn, Self, final

__all__ = ["SecretBytes", "constant_time_eq", "secure_wipe"]

BytesLike = bytes | bytearray | memoryview


def secure_wipe(buf: bytearray | memoryview) -> None:
    """Overwrite a mutable buffer with zeros in place.

    ``ctypes.memset`` is used rather than a Python loop so the write cannot be optimised
    into a new object, and it is fast for large buffers.

    Example:
        >>> b = bytearray(b"secret")
        >>> secure_wipe(b)
        >>> bytes(b)
        b'\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("secure_wipe: buffer is read-only (bytes cannot be wiped)")
    n = view.nbytes
    if n:
        # from_buffer needs a writable, C-contiguous buffer; cast keeps the same memory.
        c_buf = (ctypes.c_char * n).from_buffer(view.cast("B"))
        ctypes.memset(ctypes.addressof(c_buf), 0, n)
        del c_buf
    view.release()


def constant_time_eq(a: BytesLike | SecretBytes, b: BytesLike | SecretBytes) -> bool:
    """Compare two byte strings in time independent of where they differ.

    Example:
        >>> constant_time_eq(b"abc", b"abc")
        True
    """
    if isinstance(a, SecretBytes):
        a = a._buf
    if isinstance(b, SecretBytes):
        b = b._buf
    return hmac.compare_digest(a, b)


@final
class SecretBytes:
    """A bytearray-backed secret that can be wiped and is never printed or pickled.

    Pass it anywhere the API takes a key. Equality is constant-time; ``repr`` is redacted.

    Example:
        >>> with SecretBytes(b"\\x01" * 32) as k:
        ...     len(k)
        32
        >>> k.wiped
        True
    """

    __slots__ = ("_buf", "_wiped")

    def __init__(self, data: BytesLike | int) -> None:
        if isinstance(data, int):
            raise TypeError("SecretBytes: pass bytes; use xpscerpto.random_bytes(n) for fresh ones")
        self._buf = bytearray(data)
        self._wiped = False

    @classmethod
    def take(cls, buf: bytearray) -> SecretBytes:
        """Adopt ``buf`` without copying it (the caller must drop its own reference)."""
        obj = cls.__new__(cls)
        obj._buf = buf
        obj._wiped = False
        return obj

    def wipe(self) -> None:
        """Zero the buffer; the object is unusable afterwards."""
        secure_wipe(self._buf)
        # Leave the secret empty: an empty key fails every key-length check, so a wiped secret
        # can never be used as an all-zero key, and the call path pays for no flag test.
        # A live view forbids resizing; the zeroed buffer then stays with the view.
        try:
            del self._buf[:]
        except BufferError:
            self._buf = bytearray()
        self._wiped = True

    @property
    def wiped(self) -> bool:
        """True once :meth:`wipe` ran."""
        return self._wiped

    def view(self) -> memoryview:
        """A read-only view of the secret (no copy). Do not keep it past :meth:`wipe`."""
        return memoryview(self._buf).toreadonly()

    def reveal(self) -> bytes:
        """An immutable copy, for APIs that only take ``bytes``; it cannot be wiped."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wipe()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretBytes):
            return hmac.compare_digest(self._buf, other._buf)
        if isinstance(other, bytes | bytearray):
            return hmac.compare_digest(self._buf, other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable and secret: never a dict key

    def __repr__(self) -> str:
        state = "wiped" if self._wiped else f"{len(self._buf)} bytes"
        return f"SecretBytes(<redacted, {state}>)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return not self._wiped and len(self._buf) > 0

    def __del__(self) -> None:
        # A secret dropped without wipe() is still zeroed when collected: callers that share a
        # SecretBytes across threads can let the last holder's reference end its life.
        buf = getattr(self, "_buf", None)
        if buf:
            with contextlib.suppress(Exception):
                secure_wipe(buf)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("SecretBytes cannot be copied implicitly; use SecretBytes(s.view())")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("SecretBytes cannot be copied implicitly; use SecretBytes(s.view())")
