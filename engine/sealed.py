"""The result of AEAD encryption."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["Sealed"]


class Sealed:
    """Nonce, ciphertext and tag of one AEAD encryption.

    The provider's output (``ciphertext || tag``) is kept whole, so sealing and
    :func:`xpscerpto.aead.open` copy nothing; ``ciphertext`` is a read-only ``memoryview``
    over it (``bytes(sealed.ciphertext)`` for a copy) and ``tag`` is ``bytes``.

    Example:
        >>> s = Sealed(b"n" * 12, b"ct" + b"t" * 16, 16)
        >>> bytes(s.ciphertext), s.tag
        (b'ct', b'tttttttttttttttt')
        >>> nonce, ct, tag = s
    """

    __slots__ = ("_tag_size", "_wire", "nonce")

    nonce: bytes

    def __init__(self, nonce: bytes, ciphertext_and_tag: bytes, tag_size: int) -> None:
        self.nonce = nonce
        self._wire = ciphertext_and_tag
        self._tag_size = tag_size

    @property
    def ciphertext(self) -> memoryview:
        """The ciphertext without the tag (a zero-copy view)."""
        return memoryview(self._wire)[: len(self._wire) - self._tag_size]

    @property
    def tag(self) -> bytes:
        """The authentication tag."""
        return self._wire[len(self._wire) - self._tag_size :]

    @property
    def ciphertext_and_tag(self) -> bytes:
        """``ciphertext || tag`` as the provider produced it (what most wire formats carry)."""
        return self._wire

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter((self.nonce, self.ciphertext, self.tag))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sealed):
            return NotImplemented
        return self.nonce == other.nonce and self._wire == other._wire

    def __hash__(self) -> int:
        return hash((self.nonce, self._wire))

    def __repr__(self) -> str:
        n = len(self._wire) - self._tag_size
        return f"Sealed(nonce={self.nonce.hex()}, ciphertext=<{n} bytes>, tag={self.tag.hex()})"
