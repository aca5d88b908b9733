"""Public algorithm names.

Every AEAD has one canonical name (``"AES-256-GCM"``, the :class:`AEAD` value) and is also
accepted under the spellings the specification and Python code use: the enum member name
(``"AES_256_GCM"``) and the seed's short ``"AES_GCM"`` (which means AES-256-GCM). Names are
upper case; ``_`` and ``-`` are interchangeable.

Example:
    >>> AEAD.parse("AES_GCM"), AEAD.parse("XCHACHA20_POLY1305")
    (<AEAD.AES_256_GCM: 'AES-256-GCM'>, <AEAD.XCHACHA20_POLY1305: 'XCHACHA20-POLY1305'>)
"""

from __future__ import annotations

import enum

__all__ = ["AEAD", "AEAD_ALIASES"]


class AEAD(enum.StrEnum):
    """AEAD algorithms; a member equals its string name, so ``"AES-256-GCM"`` works too."""

    AES_128_GCM = "AES-128-GCM"
    AES_256_GCM = "AES-256-GCM"
    CHACHA20_POLY1305 = "CHACHA20-POLY1305"
    XCHACHA20_POLY1305 = "XCHACHA20-POLY1305"
    AES_256_GCM_SIV = "AES-256-GCM-SIV"
    AEGIS_256 = "AEGIS-256"

    @classmethod
    def parse(cls, name: object) -> AEAD:
        """The member a name means, in any accepted spelling.

        Raises:
            ValueError: ``name`` is not an AEAD name (the message does not repeat it).
        """
        if isinstance(name, str):
            member = _BY_NAME.get(name.replace("_", "-"))
            if member is not None:
                return member
        raise ValueError("not an AEAD algorithm name")


#: Extra spellings (beyond the canonical names) -> canonical name; the seed's "AES_GCM" is
#: AES-256-GCM. "_" and "-" are interchangeable in every name.
AEAD_ALIASES: dict[str, str] = {"AES-GCM": AEAD.AES_256_GCM.value}

_BY_NAME: dict[str, AEAD] = {**{a.value: a for a in AEAD}, **{k: AEAD(v) for k, v in AEAD_ALIASES.items()}}
