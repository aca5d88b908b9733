"""Public algorithm names."""

from __future__ import annotations

import enum

__all__ = ["AEAD"]


class AEAD(enum.StrEnum):
    """AEAD algorithms; a member equals its string name, so ``"AES-256-GCM"`` works too."""

    AES_128_GCM = "AES-128-GCM"
    AES_256_GCM = "AES-256-GCM"
    CHACHA20_POLY1305 = "CHACHA20-POLY1305"
    XCHACHA20_POLY1305 = "XCHACHA20-POLY1305"
    AES_256_GCM_SIV = "AES-256-GCM-SIV"
    AEGIS_256 = "AEGIS-256"
