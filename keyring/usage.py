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

    ``rotate=never`` disables time-based rotation. Unknown fields are an error naming them.

    Raises:
        PolicyError: a malformed policy (the message names the field, not the whole string).
    """
    if not isinstance(policy, str):
        raise PolicyError(f"policy: expected a string like 'rotate=90d', got {type(policy).__name__}")
    rotate: float | None = None
    max_enc: int | None = None
    for part in filter(None, (p.strip() for p in policy.split(","))):
        field, _, value = part.partition("=")
        if field == "rotate":
            if value == "never":
                rotate = None
            else:
                try:
                    rotate = parse_duration(value, "policy.rotate")
                except PolicyError:
                    rotate = 0.0
                if rotate <= 0:
                    raise PolicyError(f"policy.rotate: expected a positive duration like 90d or 'never', got "
                                      f"{value[:32]!r}")
        elif field == "max_encryptions":
            # isascii: str.isdigit() is also true of '²', which int() refuses.
            if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) < 1:
                raise PolicyError(f"policy.max_encryptions: expected a positive integer, got {value[:32]!r}")
            max_enc = int(value)
        else:
            raise PolicyError(f"policy: unknown field {field[:32]!r} (known: rotate, max_encryptions)")
    return rotate, max_enc
