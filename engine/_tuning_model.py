"""The tuning data model: size buckets, measurements, results and the one-comparison split.

Kept apart from the measuring code (:mod:`._autotune`) so that building a routing table, and
``import xpscerpto``, load nothing heavier than dataclasses.

Example:
    >>> [BUCKET_OF[(n - 1).bit_length()] for n in (0, 1, 256, 257, 4096, 4097, 65536, 65537, 2**40)]
    [0, 0, 0, 1, 1, 2, 2, 3, 3]
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import PolicyError

__all__ = [
    "BUCKET_BOUNDS",
    "BUCKET_NAMES",
    "BUCKET_OF",
    "CACHE_FORMAT",
    "NO_LIMIT",
    "SAMPLE_SIZES",
    "SHAPES",
    "Measurement",
    "Shape",
    "Split",
    "TuneResult",
    "split",
]

CACHE_FORMAT = 1
Shape = Literal["stateless", "keyed"]
SHAPES: tuple[Shape, ...] = ("stateless", "keyed")
#: Inclusive upper bounds of the first buckets; the last bucket is everything larger.
BUCKET_BOUNDS = (256, 4096, 65536)
BUCKET_NAMES = ("<=256B", "<=4KiB", "<=64KiB", ">64KiB")
#: The message size measured for each bucket.
SAMPLE_SIZES = (64, 1024, 16384, 262144)
#: ``(n - 1).bit_length()`` -> bucket; n = 0 gives ``(-1).bit_length() == 1``, the first bucket.
BUCKET_OF: tuple[int, ...] = tuple(0 if b <= 8 else 1 if b <= 12 else 2 if b <= 16 else 3 for b in range(65))


@dataclass(frozen=True, slots=True)
class Measurement:
    """Median seconds for one encrypt plus one decrypt, of one implementation, shape and bucket."""

    operation: str
    provider: str
    shape: Shape
    bucket: int
    seconds: float


@dataclass(frozen=True)
class TuneResult:
    """Winners per operation and shape (a provider name per bucket), and what was measured."""

    fingerprint: str
    winners: Mapping[str, Mapping[str, tuple[str, ...]]]
    measurements: tuple[Measurement, ...] = ()
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        # A result decides routes: one read from a damaged cache, or handed to use_tuning, must
        # fail here (a re-measure, a typed refusal), not later in every table build.
        if not isinstance(self.fingerprint, str) or not isinstance(self.created, str):
            raise PolicyError("fingerprint and created: expected str")
        if not isinstance(self.winners, Mapping) or not all(
                isinstance(op, str) and isinstance(shapes, Mapping) and set(shapes) == set(SHAPES)
                and all(isinstance(w, tuple) and len(w) == len(SAMPLE_SIZES) and all(isinstance(p, str) for p in w)
                        for w in shapes.values())
                for op, shapes in self.winners.items()):
            raise PolicyError("winners: expected operation -> {shape: one provider name per bucket}")
        if not isinstance(self.measurements, tuple) or not all(
                isinstance(m, Measurement) and isinstance(m.operation, str) and isinstance(m.provider, str)
                and m.shape in SHAPES and type(m.bucket) is int and 0 <= m.bucket < len(SAMPLE_SIZES)
                and type(m.seconds) in (int, float) and math.isfinite(m.seconds) and m.seconds > 0
                for m in self.measurements):
            raise PolicyError("measurements: expected Measurements of a known shape and bucket, seconds finite "
                              "and above 0")

    def winner(self, operation: str, shape: Shape, bucket: int) -> str | None:
        """The provider measured fastest, or None if the operation was not tuned."""
        per_shape = self.winners.get(operation)
        return None if per_shape is None else per_shape[shape][bucket]

    def runner_up(self, operation: str, shape: Shape, bucket: int) -> Measurement | None:
        """The second fastest measurement, if there was one."""
        wanted = (operation, shape, bucket)
        ranked = sorted((m for m in self.measurements if (m.operation, m.shape, m.bucket) == wanted),
                        key=lambda m: m.seconds)
        return ranked[1] if len(ranked) > 1 else None

    def to_json(self) -> dict[str, Any]:
        """The cache document."""
        return {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "created": self.created,
                "winners": {op: {s: list(w) for s, w in shapes.items()} for op, shapes in self.winners.items()},
                "measurements": [asdict(m) for m in self.measurements]}


@dataclass(frozen=True, slots=True)
class Split:
    """How a route serves one operation and shape: ``small`` up to ``limit`` bytes, else ``large``.

    A route picks with one comparison, ``len(data) <= limit``. ``limit`` is one of
    :data:`BUCKET_BOUNDS`, or :data:`NO_LIMIT` when one provider serves every size.
    """

    small: str
    limit: int
    large: str


#: ``limit`` of a :class:`Split` with one provider for every size (larger than any buffer).
NO_LIMIT = (1 << 63) - 1


def split(result: TuneResult, operation: str, shape: Shape) -> Split | None:
    """The two-provider split that serves ``operation`` best, or None if it was not tuned.

    Winners per bucket are usually one provider for small messages and another for large
    ones. When they are not (noise, or three providers each winning somewhere), the split that
    loses least is chosen: the sum over buckets of measured time relative to each bucket's
    best. Ties prefer one provider for everything, then the smaller provider names.

    Example:
        >>> r = TuneResult("fp", {"aead.x": {"stateless": ("a", "a", "b", "b"), "keyed": ("a",) * 4}})
        >>> split(r, "aead.x", "stateless"), split(r, "aead.x", "keyed").limit == NO_LIMIT
        (Split(small='a', limit=4096, large='b'), True)
    """
    per_shape = result.winners.get(operation)
    if per_shape is None:
        return None
    winners = per_shape[shape]
    seconds = {(m.provider, m.bucket): m.seconds for m in result.measurements
               if m.operation == operation and m.shape == shape}
    names = sorted({p for p, _ in seconds} | set(winners))
    if not seconds or any((w, b) not in seconds for b, w in enumerate(winners)):
        # Nothing measured (one candidate), or a cache without figures: trust the winners if
        # they already form one split, else serve everything with the largest bucket's winner.
        runs = [w for i, w in enumerate(winners) if i == 0 or w != winners[i - 1]]
        if len(runs) == 1:
            return Split(runs[0], NO_LIMIT, runs[0])
        if len(runs) == 2:
            k = winners.index(runs[1])
            return Split(runs[0], BUCKET_BOUNDS[k - 1], runs[1])
        return Split(winners[-1], NO_LIMIT, winners[-1])
    best = [min(s for (p, b), s in seconds.items() if b == bucket) for bucket in range(len(SAMPLE_SIZES))]

    def loss(small: str, k: int, large: str) -> float:
        total = 0.0
        for bucket in range(len(SAMPLE_SIZES)):
            s = seconds.get((small if bucket < k else large, bucket))
            if s is None:
                return float("inf")
            total += s / best[bucket]
        return total

    options = [(loss(a, len(SAMPLE_SIZES), a), 0, a, len(SAMPLE_SIZES), a) for a in names]
    options += [(loss(a, k, b), 1, a, k, b) for a in names for b in names if a != b
                for k in range(1, len(SAMPLE_SIZES))]
    _, _, small, k, large = min(options)
    return Split(small, NO_LIMIT if small == large else BUCKET_BOUNDS[k - 1], large)
