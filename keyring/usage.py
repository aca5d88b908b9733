"""A key's usage policy: when it rotates by time and how many encryptions a version may make.

Written as ``"rotate=90d,max_encryptions=1000000"`` (either part optional; ``rotate=never``
turns time-based rotation off). The configuration checks the default policy with this same
parser when it is loaded, so a bad policy fails at ``xps config check``, not at ``key create``.

Example:
    >>> parse_policy("rotate=90d,max_encryptions=1000")
    (7776000.0, 1000)
"""

from __future__ import annotations

from xpscerpto._config_fields import parse_duration
from xpscerpto.errors import PolicyError

__all__ = ["parse_policy"]


def parse_policy(policy: str) -> tuple[float | None, int | None]:
    """``"rotate=365d,max_encryptions=1000000"`` -> (rotate_every seconds, max encryptions).

    ``rotate=never`` disables time-based rotation. An unknown field is an error naming its position.

    Raises:
        PolicyError: a malformed policy (the message names the field or its position, never the text).
    """
    if not isinstance(policy, str):
        raise PolicyError(f"policy: expected a string like 'rotate=90d', got {type(policy).__name__}")
    rotate: float | None = None
    max_enc: int | None = None
    # Messages name the field and the part's position, never the text: a policy string is the
    # caller's, and anything pasted into it (a key, a token) must not reach logs through an error.
    seen: set[str] = set()
    for i, part in enumerate(filter(None, (p.strip() for p in policy.split(","))), 1):
        field, _, value = part.partition("=")
        if field in seen:
            # A second value would quietly replace the first ("rotate=90d,rotate=never").
            raise PolicyError(f"policy: part {i} repeats {field}")
        if field in ("rotate", "max_encryptions"):
            seen.add(field)
        if field == "rotate":
            if value == "never":
                rotate = None
            else:
                try:
                    # isascii: the duration pattern's \d also matches other scripts' digits (Arabic-Indic, say).
                    rotate = parse_duration(value, "policy.rotate") if value.isascii() else 0.0
                except PolicyError:
                    rotate = 0.0
                if rotate <= 0:
                    raise PolicyError("policy.rotate: expected a positive duration like 90d or 'never', got "
                                      f"{_described(value)}")
        elif field == "max_encryptions":
            # isascii: str.isdigit() is also true of '²', which int() refuses.
            if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) < 1:
                raise PolicyError(f"policy.max_encryptions: expected a positive integer, got {_described(value)}")
            max_enc = int(value)
        else:
            raise PolicyError(f"policy: part {i} names an unknown field (known: rotate, max_encryptions)")
    return rotate, max_enc


def _described(value: str) -> str:
    # This module cannot use the keyring's _shown() (the keyring imports it, and the configuration
    # loader, which checks policies, must not import the keyring): so only the length.
    return f"a str of {len(value)} character(s)" if value else "nothing"
