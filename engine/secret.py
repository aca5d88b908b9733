"""Secret material: a wipeable buffer, an explicit wipe, and constant-time comparison.

Python cannot promise that no copy of a secret ever exists (immutable ``bytes`` handed to a
C library, the allocator's freed pages), so the goal is narrower and checkable: secrets the
engine owns live in one mutable buffer that is zeroed on :meth:`SecretBytes.wipe` or at the
end of a ``with`` block, and never appear in ``repr``, ``str``, pickles, logs or exceptions.

A wipe can race a call on another thread that is reading the same secret. ``wipe()`` marks the
secret first and zeroes it after, and every API call that reads a SecretBytes checks the mark
once more after its provider returned: if the mark is set the result is discarded and the call
fails with XPS_ERR_KEY. A result is therefore only ever returned if the whole provider call
ran before the wipe began, so no result is ever computed from a zeroed or half-zeroed key, and
the call path takes no lock (one attribute test per call).
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
from types import TracebackType
from typing import NoReturn, Self, final

from ._buffers import byte_buffer, describe
from .errors import KeyError_, KeyTypeError

__all__ = ["SecretBytes", "constant_time_eq", "secure_wipe"]

BytesLike = bytes | bytearray | memoryview

_SMALL = 4096
_ZEROS = memoryview(bytes(_SMALL))


def secure_wipe(buf: bytearray | memoryview) -> None:
    """Overwrite a mutable buffer with zeros in place.

    ``ctypes.memset`` is used rather than a Python loop so the write cannot be optimised
    into a new object, and it is fast for large buffers.

    Raises:
        KeyTypeError: ``buf`` is read-only (``bytes``), released, not contiguous, or not a buffer.

    Example:
        >>> b = bytearray(b"secret")
        >>> secure_wipe(b)
        >>> bytes(b)
        b'\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    if type(buf) is bytearray and len(buf) <= _SMALL:
        # A same-length slice assignment copies into the existing storage (CPython never
        # reallocates it, even with views exported): the key-sized case, without the ctypes
        # round trip that costs about 1.5 us. Larger buffers use memset, which needs no zeros.
        buf[:] = _ZEROS[: len(buf)]
        return
    try:
        view = memoryview(buf)
    except (TypeError, ValueError):
        raise KeyTypeError(f"buf: expected a writable buffer, got {describe(buf)}") from None
    try:
        if view.readonly:
            raise KeyTypeError(f"buf: buffer is read-only ({type(buf).__name__} cannot be wiped)")
        if not view.c_contiguous:
            raise KeyTypeError("buf: expected a contiguous buffer, got a strided one")
        n = view.nbytes
        if n:
            # from_buffer needs a writable, C-contiguous buffer; cast keeps the same memory.
            c_buf = (ctypes.c_char * n).from_buffer(view.cast("B"))
            ctypes.memset(ctypes.addressof(c_buf), 0, n)
            del c_buf
    finally:
        view.release()


def constant_time_eq(a: BytesLike | SecretBytes, b: BytesLike | SecretBytes) -> bool:
    """Compare two byte strings in time independent of where they differ.

    Raises:
        KeyTypeError: an argument is not a byte buffer (see :mod:`xpscerpto` for what that is).
        KeyError_: an argument is a SecretBytes that was wiped (or was being wiped meanwhile).

    Example:
        >>> constant_time_eq(b"abc", b"abc")
        True
    """
    sa, sb = _compare_operand(a, "a"), _compare_operand(b, "b")
    equal = hmac.compare_digest(sa, sb)
    # A wipe that ran while comparing may have compared zeros: the answer is void.
    if (isinstance(a, SecretBytes) and a._wiped) or (isinstance(b, SecretBytes) and b._wiped):
        raise KeyError_("a, b: SecretBytes was wiped during the comparison")
    return equal


def _compare_operand(value: object, field: str) -> BytesLike:
    if isinstance(value, SecretBytes):
        if value._wiped:
            raise KeyError_(f"{field}: SecretBytes was wiped")
        return value._buf
    return byte_buffer(value, field, KeyTypeError)


def _secret_source(data: object) -> BytesLike:
    """``data`` if SecretBytes may copy it, else the KeyTypeError saying why not."""
    if isinstance(data, int):  # bytearray(32) would be 32 zero bytes: never a secret
        raise KeyTypeError("data: SecretBytes takes bytes; use xpscerpto.random_bytes(n) for fresh ones")
    if isinstance(data, SecretBytes):
        raise KeyTypeError("data: copy a SecretBytes explicitly with SecretBytes(s.view())")
    return byte_buffer(data, "data", KeyTypeError)


@final
class SecretBytes:
    """A bytearray-backed secret that can be wiped and is never printed or pickled.

    Pass it anywhere the API takes a key. Equality is constant-time; ``repr`` is redacted.

    Args:
        data: the secret's bytes (``bytes``, ``bytearray`` or a byte ``memoryview``); copied.

    Raises:
        KeyTypeError: ``data`` is not a byte buffer (an int, a list, None, another SecretBytes).

    Example:
        >>> with SecretBytes(b"\\x01" * 32) as k:
        ...     len(k)
        32
        >>> k.wiped
        True
    """

    __slots__ = ("_buf", "_wiped")

    def __init__(self, data: BytesLike) -> None:
        # Set first: __del__ and __repr__ must work on an object whose construction failed.
        self._buf = bytearray()
        self._wiped = False
        if type(data) is bytes or type(data) is bytearray:  # nothing to check: copy at once
            self._buf = bytearray(data)
        else:
            self._buf = bytearray(_secret_source(data))

    @classmethod
    def take(cls, buf: bytearray) -> SecretBytes:
        """Adopt ``buf`` without copying it (the caller must drop its own reference).

        Only a plain ``bytearray`` is adopted: every call path reads a secret's buffer with
        ``len()``, and a subclass's own ``__len__`` could make a 16-byte key pass as a 32-byte
        one. Copy a subclass with ``SecretBytes(buf)`` instead.

        Raises:
            KeyTypeError: ``buf`` is not a ``bytearray`` (a subclass of it included).
        """
        if type(buf) is not bytearray:
            raise KeyTypeError(f"buf: SecretBytes.take adopts a plain bytearray, got {describe(buf)}; "
                               "copy other buffers with SecretBytes(buf)")
        obj = cls.__new__(cls)
        obj._buf = buf
        obj._wiped = False
        return obj

    def wipe(self) -> None:
        """Zero the buffer; the object is unusable afterwards.

        The secret is marked wiped *before* it is zeroed: a call reading it on another thread
        checks the mark after its provider returns and then discards its result (see the module
        docstring), so nothing is ever computed from a half-zeroed key and returned.
        """
        self._wiped = True
        secure_wipe(self._buf)
        # Leave the secret empty too, so every later key-length check fails as well.
        # A live view forbids resizing; the zeroed buffer then stays with the view.
        try:
            del self._buf[:]
        except BufferError:
            self._buf = bytearray()

    @property
    def wiped(self) -> bool:
        """True once :meth:`wipe` began (a call racing it fails with XPS_ERR_KEY)."""
        return self._wiped

    def view(self) -> memoryview:
        """A read-only view of the secret (no copy). Do not keep it past :meth:`wipe`."""
        return memoryview(self._buf).toreadonly()

    def reveal(self) -> bytes:
        """An immutable copy, for APIs that only take ``bytes``; it cannot be wiped."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return bytearray.__len__(self._buf)  # the buffer's own length, whatever else changes

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
            if self._wiped or other._wiped:
                return False
            equal = hmac.compare_digest(self._buf, other._buf)
            return equal and not (self._wiped or other._wiped)
        if isinstance(other, bytes | bytearray):
            if self._wiped:
                return False
            # A wipe during the comparison voids it (it may have compared zeros).
            return hmac.compare_digest(self._buf, other) and not self._wiped
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable and secret: never a dict key

    def __repr__(self) -> str:
        state = "wiped" if self._wiped else f"{bytearray.__len__(self._buf)} bytes"
        return f"SecretBytes(<redacted, {state}>)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return not self._wiped and bytearray.__len__(self._buf) > 0

    def __del__(self) -> None:
        # A secret dropped without wipe() is still zeroed when collected: callers that share a
        # SecretBytes across threads can let the last holder's reference end its life.
        buf = getattr(self, "_buf", None)
        if isinstance(buf, bytearray) and bytearray.__len__(buf):  # not len(): a subclass's may lie or raise
            with contextlib.suppress(Exception):
                secure_wipe(buf)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise KeyTypeError("SecretBytes cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise KeyTypeError("SecretBytes cannot be copied implicitly; use SecretBytes(s.view())")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise KeyTypeError("SecretBytes cannot be copied implicitly; use SecretBytes(s.view())")
