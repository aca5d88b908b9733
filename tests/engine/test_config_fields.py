"""The shared configuration field parsers (engine/_config_fields.py)."""

from __future__ import annotations

import pytest
from xpscerpto.errors import PolicyError


@pytest.mark.parametrize("value", [1e300, "200000d", 36500 * 86400.0 + 1, "5300w"])
def test_a_wait_past_a_hundred_years_is_refused_naming_the_key(value: object) -> None:
    # Found by a review: hotpatch.canary_seconds 1e300 passed `config check` and overflowed the
    # trial's wait at the first capsule.
    from xpscerpto._config_fields import MAX_DURATION, parse_duration, timer_duration

    with pytest.raises(PolicyError, match=r"config key 'hotpatch.canary_seconds': a duration must be at most"):
        timer_duration(value, "hotpatch.canary_seconds")
    assert timer_duration(MAX_DURATION, "k") == MAX_DURATION and timer_duration("36500d", "k") == MAX_DURATION
    assert parse_duration(value, "k") > MAX_DURATION  # a period that is no wait (rotation) may be longer


@pytest.mark.parametrize("key", ["canary_seconds", "dual_run_seconds", "timeout", "settle", "drain_timeout",
                                 "sample"])
def test_every_hotpatch_wait_is_bounded(key: str) -> None:
    from xpscerpto.config import XpsConfig

    with pytest.raises(PolicyError, match=f"config key 'crypto.hotpatch.{key}': a duration must be at most"):
        XpsConfig.from_mapping({"crypto": {"hotpatch": {key: "40000d"}}})
