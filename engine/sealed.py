"""The result of AEAD encryption."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from typing import Any

__all__ = ["Sealed"]

# namedtuple's field descriptors read a tuple slot in C; borrowing them keeps field access
# (used by AeadAPI.open on the hot path) free of Python frames.
_Fields = namedtuple("_Fields", "nonce ciphertext_and_tag tag_size")


class Sealed(tuple):  # type: ignore[type-arg]  # a tuple: Sealed((n, w, t)) runs no Python frame
    """Nonce, ciphertext and tag of one AEAD encryption.

    The provider's output (``ciphertext || tag``) is kept whole, so sealing and
    :meth:`xpscerpto.engine.AeadAPI.open` copy nothing; ``ciphertext`` is a read-only
    ``memoryview`` over it (``bytes(sealed.ciphertext)`` for a copy) and ``tag`` is ``bytes``.
    Unpacks as ``nonce, ciphertext, tag``.

    Attributes:
        nonce: the nonce used.
        ciphertext_and_tag: ``ciphertext || tag`` as the provider produced it (what most wire
            formats carry).
        tag_size: length of the tag in bytes.

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

    @classmethod
    def of(cls, nonce: bytes, ciphertext_and_tag: bytes, tag_size: int) -> Sealed:
        """Build from the nonce and the provider's ``ciphertext || tag``."""
        return cls((nonce, ciphertext_and_tag, tag_size))

    @property
    def ciphertext(self) -> memoryview:
        """The ciphertext without the tag (a zero-copy view)."""
        wire = self.ciphertext_and_tag
        return memoryview(wire)[: len(wire) - self.tag_size]

    @property
    def tag(self) -> bytes:
        """The authentication tag."""
        wire = self.ciphertext_and_tag
        return wire[len(wire) - self.tag_size :]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.nonce, self.ciphertext, self.tag))

    def __getitem__(self, index: Any) -> Any:
        return (self.nonce, self.ciphertext, self.tag)[index]

    def __repr__(self) -> str:
        n = len(self.ciphertext_and_tag) - self.tag_size
        return f"Sealed(nonce={self.nonce.hex()}, ciphertext=<{n} bytes>, tag={self.tag.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sealed.of, (self.nonce, self.ciphertext_and_tag, self.tag_size))
