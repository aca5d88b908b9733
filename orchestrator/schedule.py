"""When a plan's rotation is due: ``monthly`` (UTC 00:00 on the 1st), ``every=N{d,h,m,s}``, ``usage=N``.

A time schedule maps "now" to the latest due time at or before it (None: nothing due yet). The
orchestrator records one run per (plan, due time), so a due time is served once however many
nodes tick, however often, and whatever their clocks say (now is the database's). A usage
schedule is due when the active version has reserved ``N`` encryptions; its run is recorded
per version (:meth:`Schedule.usage_marker`).

Example:
    >>> from datetime import datetime, timezone
    >>> s = Schedule.parse("monthly")
    >>> s.due(datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 3, 17, 9, tzinfo=timezone.utc))
    datetime.datetime(2026, 3, 1, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from xpscerpto.errors import PolicyError

__all__ = ["Schedule", "parse_seconds"]

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_AMOUNT = re.compile(r"([0-9]+(?:\.[0-9]+)?)([dhms])")
#: N of ``usage=N``: 2^64 has 20 digits.
_USAGE = re.compile(r"[0-9]{1,20}")


def parse_seconds(text: object, field: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` (or a number of seconds) -> seconds.

    Raises:
        PolicyError: anything else, or not between 1 second and 10 years.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and (m := _AMOUNT.fullmatch(text.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise PolicyError(f"{field}: expected a duration like 7d, 12h, 30m or 90s")
    if not math.isfinite(seconds) or not 1.0 <= seconds <= 3650 * 86400.0:
        raise PolicyError(f"{field}: expected between 1 second and 10 years")
    return seconds


@dataclass(frozen=True, slots=True)
class Schedule:
    """A rotation schedule (see the module docstring)."""

    policy: str
    period: float | None  # seconds; None for monthly and usage
    usage: int | None = None  # encryptions of the active version that make a rotation due

    @classmethod
    def parse(cls, policy: object) -> Schedule:
        """``monthly``, ``every=DURATION`` or ``usage=N`` (N in ASCII digits, 1 to 2^64).

        Raises:
            PolicyError: any other text (the message names ``policy``).
        """
        if policy == "monthly":
            return cls("monthly", None)
        if isinstance(policy, str) and policy.startswith("every="):
            period = parse_seconds(policy[len("every="):], "policy")
            return cls(policy, period)
        if isinstance(policy, str) and policy.startswith("usage="):
            count = policy[len("usage="):]
            # ASCII digits only: isdigit() passes '²' (int() then raises a ValueError quoting it)
            # and other scripts' digits; at most 20 of them keeps int() far below its 4300-digit limit.
            if not _USAGE.fullmatch(count) or not 1 <= int(count) <= 2**64:
                raise PolicyError("policy: usage=N needs N encryptions between 1 and 2^64")
            return cls(policy, None, int(count))
        raise PolicyError("policy: expected 'monthly', 'every=N' with N like 30d, 12h, 90s, or 'usage=N'")

    @staticmethod
    def usage_marker(version: int) -> datetime:
        """The run record's "due time" for a usage rotation away from ``version`` (one per version)."""
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=version)

    def due(self, anchor: datetime, now: datetime) -> datetime | None:
        """The latest due time at or before ``now`` (after ``anchor``, when the plan started)."""
        if self.usage is not None:
            return None  # by use, not by time (see usage_marker)
        if self.period is None:
            first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            return first if first > anchor else None
        steps = math.floor((now - anchor).total_seconds() / self.period)
        return anchor + timedelta(seconds=steps * self.period) if steps >= 1 else None

    def next_after(self, anchor: datetime, now: datetime) -> datetime | None:
        """The first due time after ``now`` (None for a usage schedule)."""
        if self.usage is not None:
            return None
        if self.period is None:
            n = now.astimezone(UTC)
            year, month = (n.year + 1, 1) if n.month == 12 else (n.year, n.month + 1)
            return datetime(year, month, 1, tzinfo=UTC)
        steps = max(0, math.floor((now - anchor).total_seconds() / self.period)) + 1
        return anchor + timedelta(seconds=steps * self.period)
