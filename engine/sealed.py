"""The result of AEAD encryption."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from typing import Any

from ._buffers import buffer_problem, describe, describe_int
from .errors import PolicyError

__all__ = ["Sealed"]

# namedtuple's field descriptors read a tuple slot in C; borrowing them keeps field access
# (used by AeadAPI.open on the hot path) free of Python frames.
_Fields = namedtuple("_Fields", "nonce ciphertext_and_tag tag_size")
_MAX_TAG = 255


class Sealed(tuple):  # type: ignore[type-arg]  # a tuple: AeadAPI builds one without a Python frame
    """Nonce, ciphertext and tag of one AEAD encryption.

    The provider's output (``ciphertext || tag``) is kept whole, so sealing and
    :meth:`xpscerpto.engine.AeadAPI.open` copy nothing; ``ciphertext`` is a read-only
    ``memoryview`` over it (``bytes(sealed.ciphertext)`` for a copy) and ``tag`` is ``bytes``.
    Unpacks as ``nonce, ciphertext, tag``.

    A Sealed is immutable: a nonce or wire given as a ``bytearray`` or ``memoryview`` is copied
    into ``bytes``, so reusing the caller's buffer cannot change it. A part that is no byte
    buffer at all is kept as given, and every use of it (``open``, the properties below)
    raises PolicyError.

    Attributes:
        nonce: the nonce used.
        ciphertext_and_tag: ``ciphertext || tag`` as the provider produced it (what most wire
            formats carry).
        tag_size: length of the tag in bytes.

    Raises:
        PolicyError: ``Sealed(parts)`` with anything but a (nonce, ciphertext_and_tag,
            tag_size) triple whose tag size is an int in 0..255, or with a buffer of the wrong
            shape (strided, released, wide items).

    Example:
        >>> s = Sealed.of(b"n" * 12, b"ct" + b"t" * 16, 16)
        >>> bytes(s.ciphertext), s.tag
        (b'ct', b'tttttttttttttttt')
        >>> nonce, ct, tag = s
    """

    __slots__ = ()

    nonce: bytes = _Fields.nonce
    ciphertext_and_tag: bytes = _Fields.ciphertext_and_tag
    tag_size: int = _Fields.tag_size

    def __new__(cls, parts: tuple[bytes, bytes, int]) -> Sealed:
        """Check and freeze ``(nonce, ciphertext_and_tag, tag_size)`` (the API builds its own unchecked)."""
        if isinstance(parts, Sealed):
            return parts
        # Exactly a tuple or a list (a subclass's own __len__ or __iter__ could say anything), read
        # through the built-in type's own methods.
        given: object = parts
        items: Iterator[Any] = iter(())
        count = -1
        if type(given) is tuple:
            items, count = tuple.__iter__(given), tuple.__len__(given)
        elif type(given) is list:
            items, count = list.__iter__(given), list.__len__(given)
        if count != 3:
            raise PolicyError(f"sealed: expected (nonce, ciphertext_and_tag, tag_size), got {describe(parts)}")
        nonce, wire, tag_size = (_frozen(v, f) for v, f in zip(items, ("nonce", "ciphertext_and_tag", "tag_size"),
                                                                strict=True))
        if type(tag_size) is not int:
            raise PolicyError(f"sealed.tag_size: expected an int, got {describe(tag_size)}")
        # A wire shorter than its tag is allowed here: it is a truncated ciphertext, and open()
        # answers that with XPS_ERR_AUTH like any other forgery.
        if not 0 <= tag_size <= _MAX_TAG:
            raise PolicyError(f"sealed.tag_size: expected 0..{_MAX_TAG}, got {describe_int(tag_size)}")
        return _new(cls, (nonce, wire, tag_size))

    @classmethod
    def of(cls, nonce: bytes, ciphertext_and_tag: bytes, tag_size: int) -> Sealed:
        """Build from the nonce and the provider's ``ciphertext || tag``.

        Raises:
            PolicyError: see the class.
        """
        return cls((nonce, ciphertext_and_tag, tag_size))

    @property
    def ciphertext(self) -> memoryview:
        """The ciphertext without the tag (a zero-copy view).

        Raises:
            PolicyError: the Sealed was built from something that is not a byte buffer.
        """
        wire = self._wire()
        return memoryview(wire)[: max(0, len(wire) - self.tag_size)]

    @property
    def tag(self) -> bytes:
        """The authentication tag.

        Raises:
            PolicyError: the Sealed was built from something that is not a byte buffer.
        """
        wire = self._wire()
        return wire[max(0, len(wire) - self.tag_size) :]

    def _wire(self) -> bytes:
        wire = self.ciphertext_and_tag
        if type(wire) is not bytes:  # only a non-buffer survives construction as non-bytes
            raise PolicyError(f"sealed.ciphertext_and_tag: expected bytes, got {describe(wire)}")
        return wire

    def __iter__(self) -> Iterator[Any]:
        return iter((self.nonce, self.ciphertext, self.tag))

    def __getitem__(self, index: Any) -> Any:
        return (self.nonce, self.ciphertext, self.tag)[index]

    def __repr__(self) -> str:
        nonce, wire = self.nonce, self.ciphertext_and_tag
        if type(nonce) is not bytes or type(wire) is not bytes:
            return f"Sealed(<malformed: nonce {describe(nonce)}, ciphertext_and_tag {describe(wire)}>)"
        n = max(0, len(wire) - self.tag_size)
        return f"Sealed(nonce={nonce.hex()}, ciphertext=<{n} bytes>, tag={self.tag.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sealed.of, (self.nonce, self.ciphertext_and_tag, self.tag_size))


def _frozen(value: Any, field: str) -> Any:
    """A byte buffer as immutable ``bytes``; a buffer of the wrong shape refused; anything else as is."""
    if type(value) is bytes or field == "tag_size":
        return value
    if buffer_problem(value) is None:
        with memoryview(value) as view:  # not bytes(value): a subclass's __bytes__ could say anything
            return view.tobytes()
    try:
        memoryview(value).release()
    except TypeError:
        return value  # not a buffer at all: kept, and refused where it is used
    except ValueError:
        pass  # a released view
    raise PolicyError(f"sealed.{field}: {buffer_problem(value)}")


# tuple's own constructor, which skips the checks of Sealed.__new__: the engine builds a Sealed
# with it from the provider's output and a checked nonce (no Python frame on the encrypt path).
_new = tuple.__new__
