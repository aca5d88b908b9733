"""Review s9 F6: a key policy string refuses a repeated field and non-ASCII digits in durations."""

from __future__ import annotations

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import parse_policy


@pytest.mark.parametrize(("policy", "field"), [
    ("rotate=90d,rotate=never", "rotate"),
    ("rotate=never,rotate=90d", "rotate"),
    ("max_encryptions=10,max_encryptions=99", "max_encryptions"),
    ("rotate=1d,max_encryptions=5,rotate=2d", "rotate"),
])
def test_repeated_field_is_refused_naming_it(policy: str, field: str) -> None:
    with pytest.raises(PolicyError, match=rf"policy: part \d repeats {field}") as err:
        parse_policy(policy)
    assert "90d" not in str(err.value) and "never" not in str(err.value)


@pytest.mark.parametrize("value", ["\u0661\u0662d", "1\u0662d", "\uff11\uff12d", "\u09e7d"])
def test_non_ascii_digits_in_rotate_are_refused(value: str) -> None:
    with pytest.raises(PolicyError, match=r"policy\.rotate: expected a positive duration") as err:
        parse_policy(f"rotate={value}")
    assert value not in str(err.value)


def test_plain_policies_still_parse() -> None:
    assert parse_policy("rotate=90d,max_encryptions=1000") == (7776000.0, 1000)
    assert parse_policy("rotate=never") == (None, None)
    assert parse_policy("") == (None, None)
