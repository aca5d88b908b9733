"""The shared configuration field parsers (engine/_config_fields.py)."""

from __future__ import annotations

import pytest
from xpscerpto.errors import PolicyError


@pytest.mark.parametrize("value", [1e300, "200000d", 36500 * 86400.0 + 1, "5300w"])
def test_a_duration_past_a_hundred_years_is_refused_naming_the_key(value: object) -> None:
    # Found by a review: hotpatch.canary_seconds 1e300 passed `config check` and overflowed the
    # trial's wait at the first capsule.
    from xpscerpto._config_fields import MAX_DURATION, parse_duration

    with pytest.raises(PolicyError, match=r"config key 'hotpatch.canary_seconds': a duration must be at most"):
        parse_duration(value, "hotpatch.canary_seconds")
    assert parse_duration(MAX_DURATION, "k") == MAX_DURATION and parse_duration("36500d", "k") == MAX_DURATION
