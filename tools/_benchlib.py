"""Timing helpers shared by the benchmark scripts in tools/ (not installed, not an API)."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Loop", "Timing", "parse_sizes", "sample", "size_label"]

#: A compiled timing loop: ``loop(n)`` runs the statement n times and returns elapsed ns.
Loop = Callable[[int], int]


@dataclass(frozen=True)
class Timing:
    """How long a sample and a calibration run should take, and how many rounds to run."""

    sample_ns: float
    calib_ns: float
    rounds: int


def sample(loop: Loop, n: int) -> int:
    """One timed sample of ``n`` calls, after one untimed call (absorbs a switch-over transient)."""
    gc.disable()
    try:
        loop(1)
        return loop(n)
    finally:
        gc.enable()


def parse_sizes(text: str) -> list[int]:
    """``"64,1K,64KiB,1M"`` -> byte counts (argparse type)."""
    out = []
    for part in text.split(","):
        p = part.strip().upper().removesuffix("B").removesuffix("I")
        scale = 1
        if p.endswith("K"):
            p, scale = p[:-1], 1 << 10
        elif p.endswith("M"):
            p, scale = p[:-1], 1 << 20
        try:
            size = int(p) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {part!r}") from None
        if size <= 0:
            raise argparse.ArgumentTypeError(f"size must be positive, got {part!r}")
        out.append(size)
    return out


def size_label(size: int) -> str:
    """65536 -> ``"64KiB"``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
