"""What the API accepts as a byte buffer, and what an error message may say about a caller's value.

A byte buffer is ``bytes``, ``bytearray``, or any other object with the buffer protocol (a
``memoryview``, an ``array('B')``, an ``mmap``) whose buffer is not released and is one
C-contiguous run of single bytes (format ``B`` or ``c``; its bytes are read in order whatever
its shape). Those are exactly the buffers every built-in provider reads the same way; a strided
or wide-format view would be read differently by different providers (or refused by one and not
another), so the API refuses it with a typed error naming the argument instead of letting a
provider decide. Keys and nonces must be flat buffers (their length is ``len()`` of one
dimension). A subclass of ``bytes`` or ``bytearray`` is read through a view of the bytes it holds,
so a ``__len__`` or ``__bytes__`` of its own cannot make a check see other bytes than a provider.

Messages never quote a caller's value: :func:`describe` gives its type and, for sized values,
its length (a key passed where an algorithm name belongs must not come back in an exception).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import XpsError

__all__ = ["BYTE_FORMATS", "buffer_problem", "byte_buffer", "describe", "describe_int", "immutable", "whole_wire"]

#: Formats whose items are single bytes and that every built-in provider accepts.
BYTE_FORMATS = ("B", "c")
#: Ints with a magnitude below this are sizes or counts and may be printed; larger ones are not.
_PRINTABLE_INT = 1 << 32


def describe(value: object) -> str:
    """The type of ``value`` and, for strings and buffers, its length; never its content.

    Example:
        >>> describe(b"\\x00secret")
        'bytes of 7 bytes'
    """
    # The built-in types' own lengths: a subclass's __len__ may lie or raise.
    if isinstance(value, bytes):
        return f"{type(value).__name__} of {bytes.__len__(value)} bytes"
    if isinstance(value, bytearray):
        return f"{type(value).__name__} of {bytearray.__len__(value)} bytes"
    if isinstance(value, memoryview):
        try:
            return f"memoryview of {value.nbytes} bytes"
        except ValueError:
            return "released memoryview"
    if isinstance(value, str):
        return f"{type(value).__name__} of {str.__len__(value)} characters"
    return type(value).__name__


def describe_int(value: int) -> str:
    """``value`` itself if it is a plausible size, else only how large it is."""
    if -_PRINTABLE_INT < value < _PRINTABLE_INT:
        return str(value)
    return f"an int of {value.bit_length()} bits"


def buffer_problem(value: object) -> str | None:
    """Why ``value`` is not a byte buffer the API accepts, or None if it is one."""
    if type(value) is bytes or type(value) is bytearray:
        return None
    try:
        view = value if isinstance(value, memoryview) else memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        return f"expected a bytes-like object, got {describe(value)}"
    except ValueError:
        return "expected a byte buffer, got a released memoryview"
    try:
        if view.itemsize != 1 or view.format not in BYTE_FORMATS:
            return f"expected a buffer of single bytes (format 'B'), got format {view.format!r}"
        if not view.c_contiguous:
            return "expected a contiguous buffer, got a strided one"
    except ValueError:
        return "expected a byte buffer, got a released memoryview"
    finally:
        if view is not value:
            view.release()
    return None


def byte_buffer(value: object, field: str, error: type[XpsError]) -> bytes | bytearray | memoryview:
    """``value`` as a buffer the providers read (itself, or a view of it), else ``error`` naming ``field``."""
    if type(value) is bytes or type(value) is bytearray:  # the common case, without the checks
        return value
    problem = buffer_problem(value)
    if problem is None:
        # A memoryview as it is; anything else (an array('B'), an mmap, a subclass of bytes whose
        # __len__ or __bytes__ could say otherwise) as a view of the bytes it holds: no copy.
        return value if type(value) is memoryview else memoryview(value)  # type: ignore[arg-type]
    raise error(f"{field}: {problem}")


try:  # cffi comes with PyNaCl; without it every ciphertext is joined with its tag (a copy)
    _from_buffer: Any = importlib.import_module("_cffi_backend").FFI().from_buffer
except ImportError:  # pragma: no cover - PyNaCl is a dependency
    _from_buffer = None


def whole_wire(ciphertext: memoryview, tag: Any) -> bytes | None:
    """The ``bytes`` that ``ciphertext`` views the start of, when they are ``ciphertext || tag``.

    That is what unpacking a :class:`~xpscerpto.engine.Sealed` gives (``nonce, ct, tag = sealed``):
    ``ct`` views the sealed wire without its tag. Handing the wire itself to the provider spares
    the copy a join makes, which at 64 KiB costs as much as the rest of the call's overhead. A
    memoryview does not say where in its object it starts, so the start is compared by address:
    a view of the wire from byte 16 on, with a tag equal to its last 16 bytes, is not mistaken
    for it. Anything else (another object, a copy, an offset, a different tag) gives None.
    """
    base = ciphertext.obj
    if (type(base) is not bytes or len(base) != ciphertext.nbytes + len(tag) or not ciphertext.c_contiguous
            or ciphertext.format not in BYTE_FORMATS or _from_buffer is None or not base.endswith(tag)):
        return None
    return base if _from_buffer(ciphertext) == _from_buffer(base) else None


def immutable(value: Any) -> Any:
    """``value`` if nothing can change its bytes any more, else a ``bytes`` copy of them.

    ``bytes`` and read-only views of ``bytes`` are kept; any other byte buffer (a bytearray, a
    writable view, an mmap, a subclass) is copied once. A decryption reads its ciphertext twice in
    some providers (tag, then plaintext): the copy makes both reads see the same bytes whatever
    another thread or process does to the caller's buffer meanwhile. A value that is not a
    contiguous byte buffer is returned unchanged, for the caller's usual checks to refuse.
    """
    if type(value) is bytes:
        return value
    try:
        view = memoryview(value)
    except (TypeError, ValueError):
        return value
    with view:
        if view.readonly and type(view.obj) is bytes:
            return value
        if view.itemsize != 1 or view.format not in BYTE_FORMATS or not view.c_contiguous:
            return value
        return view.tobytes()
