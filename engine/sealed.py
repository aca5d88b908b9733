"""The result of AEAD encryption."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["Sealed"]

_tget = tuple.__getitem__


class Sealed(tuple):  # type: ignore[type-arg]  # a tuple so that building one runs no Python frame
    """Nonce, ciphertext and tag of one AEAD encryption.

    The provider's output (``ciphertext || tag``) is kept whole, so sealing and
    :meth:`xpscerpto.engine.AeadAPI.open` copy nothing; ``ciphertext`` is a read-only
    ``memoryview`` over it (``bytes(sealed.ciphertext)`` for a copy) and ``tag`` is ``bytes``.
    Unpacks as ``nonce, ciphertext, tag``.

    Example:
        >>> s = Sealed.of(b"n" * 12, b"ct" + b"t" * 16, 16)
        >>> bytes(s.ciphertext), s.tag
        (b'ct', b'tttttttttttttttt')
        >>> nonce, ct, tag = s
    """

    __slots__ = ()

    @classmethod
    def of(cls, nonce: bytes, ciphertext_and_tag: bytes, tag_size: int) -> Sealed:
        """Build from the nonce and the provider's ``ciphertext || tag``."""
        return tuple.__new__(cls, (nonce, ciphertext_and_tag, tag_size))

    @property
    def nonce(self) -> bytes:
        """The nonce used."""
        return _tget(self, 0)  # type: ignore[no-any-return]

    @property
    def ciphertext(self) -> memoryview:
        """The ciphertext without the tag (a zero-copy view)."""
        wire = _tget(self, 1)
        return memoryview(wire)[: len(wire) - _tget(self, 2)]

    @property
    def tag(self) -> bytes:
        """The authentication tag."""
        wire = _tget(self, 1)
        return wire[len(wire) - _tget(self, 2) :]  # type: ignore[no-any-return]

    @property
    def tag_size(self) -> int:
        """Length of the tag in bytes."""
        return _tget(self, 2)  # type: ignore[no-any-return]

    @property
    def ciphertext_and_tag(self) -> bytes:
        """``ciphertext || tag`` as the provider produced it (what most wire formats carry)."""
        return _tget(self, 1)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.nonce, self.ciphertext, self.tag))

    def __getitem__(self, index: Any) -> Any:
        return (self.nonce, self.ciphertext, self.tag)[index]

    def __repr__(self) -> str:
        n = len(_tget(self, 1)) - _tget(self, 2)
        return f"Sealed(nonce={self.nonce.hex()}, ciphertext=<{n} bytes>, tag={self.tag.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sealed.of, (_tget(self, 0), _tget(self, 1), _tget(self, 2)))
