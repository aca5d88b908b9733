"""What a suite migration and a PQ rollout share: their careful-rollout fields and the canary pick."""

from __future__ import annotations

import hashlib
import math

from xpscerpto.errors import PolicyError

from .schedule import parse_seconds

__all__ = ["MIN_SAMPLES", "canary_subset", "check_fields"]

#: Events (decryptions, handshakes) a canary needs before its failure rate may abort a rollout.
MIN_SAMPLES = 20


def check_fields(name: object, canary: object, watch: object, max_failure_rate: object) -> None:
    """Refuse a malformed name, canary share, watch duration or failure rate (naming the field)."""
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
        raise PolicyError("name: expected a printable str of 1 to 200 characters")
    for field, value in (("canary", canary), ("max_failure_rate", max_failure_rate)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1 \
                or (field == "canary" and value == 0):
            raise PolicyError(f"{field}: expected a number in {'(0, 1]' if field == 'canary' else '[0, 1]'}")
    parse_seconds(watch, "watch")


def canary_subset(items: tuple[str, ...], share: float) -> tuple[str, ...]:
    """``ceil(share * n)`` of ``items`` (at least one), spread by a hash of their names."""
    n = max(1, math.ceil(share * len(items)))
    return tuple(sorted(items, key=lambda k: hashlib.sha256(k.encode()).digest())[:n])
