"""Value parsers and the field schema every configuration section is built from.

Each subsystem owns its section (a frozen dataclass beside its code); this module gives them
one way to validate a key and name it when it is wrong, so every section reports errors the
same way: ``config key 'keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'``.
``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .algorithms import AEAD
from .errors import PolicyError

__all__ = [
    "MAX_DURATION",
    "Field",
    "build_section",
    "count",
    "days_as_seconds",
    "days_out",
    "dump_section",
    "env_name",
    "expect",
    "flag",
    "minutes_as_seconds",
    "minutes_out",
    "no_unknown",
    "number",
    "optional_text",
    "parse_aead_name",
    "parse_days",
    "parse_duration",
    "parse_size",
    "positive",
    "seconds_out",
    "show",
    "str_list",
    "text",
    "timer_duration",
    "to_str",
    "utf8_text",
]

T = TypeVar("T")

#: The longest duration a setting that becomes a wait takes (100 years): past about 292 years
#: a thread wait with that timeout raises OverflowError (found by a review: a canary of 1e300
#: seconds left a refused capsule's trial table serving). See :func:`timer_duration`.
MAX_DURATION = 36500 * 86400.0
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_RE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?")
_SIZE_DIGITS = 30  # 10**30 bytes is past any real size; the bound keeps int() of the digits cheap
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_SHOWN_MAX = 64  # a longer value is described, not repeated
_SURROGATE = re.compile("[\ud800-\udfff]")


def show(value: object) -> str:
    """A value for an error message: short scalars as written, anything else described."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**_SHOWN_MAX:
        # repr() of a huge int is long, and past 4300 digits a ValueError of its own.
        return f"an int of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, str) and len(value) > _SHOWN_MAX:
        return f"a string of {len(value)} characters"
    if isinstance(value, bool | int | float | str):
        return repr(value)
    return type(value).__name__


def _as_float(value: int | float, key: str, what: str) -> float:
    """``float(value)``, with an int too large for a float refused instead of OverflowError."""
    try:
        return float(value)
    except OverflowError:
        raise PolicyError(f"config key {key!r}: {what} out of range, got {show(value)}") from None


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_duration(value: object, key: str = "duration") -> float:
    """Seconds from an int/float or a string like ``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``.

    Raises:
        PolicyError: naming ``key`` if the value is not a duration or is negative.

    >>> parse_duration("90m"), parse_duration(2), parse_duration("250ms")
    (5400.0, 2.0, 0.25)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = _as_float(value, key, "a duration")
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise PolicyError(f"config key {key!r}: expected a duration (seconds, or a string like '45s', "
                          f"'90m', '12h', '30d'), got {show(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PolicyError(f"config key {key!r}: a duration must be finite and >= 0, got {show(value)}")
    return seconds


def timer_duration(value: object, key: str = "duration") -> float:
    """:func:`parse_duration` for a setting that becomes a wait or a timer: at most
    :data:`MAX_DURATION` (a rotation period may be longer; a thread cannot wait that long).

    Raises:
        PolicyError: naming ``key``, as parse_duration, or past 36500d.
    """
    seconds = parse_duration(value, key)
    if seconds > MAX_DURATION:
        raise PolicyError(f"config key {key!r}: a duration must be at most 36500d (100 years), got {show(value)}")
    return seconds


def parse_size(value: object, key: str = "size") -> int:
    """Bytes from an int or a string like ``"64KiB"``, ``"1MiB"``, ``"2GiB"``.

    Raises:
        PolicyError: naming ``key`` if the value is not a size or is negative.

    >>> parse_size("64KiB"), parse_size(512), parse_size("2GiB")
    (65536, 512, 2147483648)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        if len(m.group(1)) > _SIZE_DIGITS:  # int() refuses past 4,300 digits with a ValueError
            raise PolicyError(f"config key {key!r}: a size out of range, got {show(value)}")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise PolicyError(f"config key {key!r}: expected a size (bytes, or a string like '64KiB', "
                          f"'1MiB', '2GiB'), got {show(value)}")
    if size < 0:
        raise PolicyError(f"config key {key!r}: a size must be >= 0, got {show(value)}")
    return size


def parse_days(value: object, key: str) -> float:
    """A number of days (int or float, finite, >= 0), as the seed writes ``dual_window_days: 30``.

    Raises:
        PolicyError: naming ``key`` if the value is not a non-negative number.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise PolicyError(f"config key {key!r}: expected a number of days, got {show(value)}")
    days = _as_float(value, key, "a number of days")
    if not math.isfinite(days) or days < 0:
        raise PolicyError(f"config key {key!r}: a number of days must be finite and >= 0, got {show(value)}")
    return days


def days_as_seconds(value: object, key: str) -> float:
    """:func:`parse_days`, in seconds: at most :data:`MAX_DURATION` (36500 days).

    These become deadlines (``retired_at + window``) that the keyring turns into dates; 1e300
    days loaded, then ``xps key describe`` died of an OverflowError (found by a review).
    """
    seconds = parse_days(value, key) * 86400.0
    if not seconds <= MAX_DURATION:  # also catches 1e305 days, finite as days but not in seconds
        raise PolicyError(f"config key {key!r}: a number of days out of range (at most 36500, 100 years), "
                          f"got {show(value)}")
    return seconds


def days_out(seconds: float) -> int | float:
    """Seconds as whole (or fractional) days for a document."""
    days = seconds / 86400.0
    return int(days) if days.is_integer() else days


def minutes_as_seconds(value: object, key: str) -> float:
    """A number of minutes (as the seed writes ``rekey_minutes: 60``), in seconds."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise PolicyError(f"config key {key!r}: expected a number of minutes, got {show(value)}")
    minutes = _as_float(value, key, "a number of minutes")
    if not math.isfinite(minutes) or minutes <= 0:
        raise PolicyError(f"config key {key!r}: a number of minutes must be finite and > 0, got {show(value)}")
    if not math.isfinite(minutes * 60.0):
        raise PolicyError(f"config key {key!r}: a number of minutes out of range, got {show(value)}")
    return minutes * 60.0


def minutes_out(seconds: float) -> int | float:
    """Seconds as whole (or fractional) minutes for a document."""
    minutes = seconds / 60.0
    return int(minutes) if minutes.is_integer() else minutes


def flag(value: object, key: str) -> bool:
    """``true`` or ``false`` (never 0/1 or strings)."""
    if not isinstance(value, bool):
        raise PolicyError(f"config key {key!r}: expected true or false, got {show(value)}")
    return value


def positive(parse: Callable[[object, str], Any]) -> Callable[[object, str], Any]:
    """``parse``, then refuse values <= 0."""
    def check(value: object, key: str) -> Any:
        out = parse(value, key)
        if out <= 0:
            raise PolicyError(f"config key {key!r}: must be > 0, got {show(value)}")
        return out
    return check


def count(minimum: int = 0) -> Callable[[object, str], int]:
    """An integer parser with a lower bound."""
    def parse(value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise PolicyError(f"config key {key!r}: expected an integer, got {show(value)}")
        if value < minimum:
            raise PolicyError(f"config key {key!r}: must be >= {minimum}, got {show(value)}")
        return value
    return parse


def number(low: float, high: float = math.inf) -> Callable[[object, str], float]:
    """A finite number parser within ``[low, high]``."""
    def parse(value: object, key: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise PolicyError(f"config key {key!r}: expected a number, got {show(value)}")
        out = _as_float(value, key, "a number")
        if not (math.isfinite(out) and low <= out <= high):
            bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            raise PolicyError(f"config key {key!r}: must be {bound}, got {show(value)}")
        return out
    return parse


def text(value: object, key: str) -> str:
    """A non-empty string without NUL (these are paths, labels and DSNs, all C strings below)."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"config key {key!r}: expected a non-empty string, got {show(value)}")
    if "\x00" in value:  # refused here, or much later as a ValueError from open()/resolve()
        raise PolicyError(f"config key {key!r}: a NUL character is not allowed")
    return value


def utf8_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: only a lone surrogate, which is what Python makes of
    non-UTF-8 bytes in argv, the environment or a file name, does not.

    Found without raising: a UnicodeEncodeError carries the whole text (maybe a PIN) in
    ``.object``, and one caught would ride on the refusal as its ``__context__``.
    """
    return _SURROGATE.search(value) is None


def optional_text(value: object, key: str) -> str | None:
    """``null`` or a non-empty string."""
    return None if value is None else text(value, key)


def parse_aead_name(value: object, key: str) -> AEAD:
    """An :class:`~xpscerpto.AEAD` member from its name."""
    try:
        return AEAD.parse(value)
    except ValueError:
        names = ", ".join(a.value for a in AEAD)
        raise PolicyError(f"config key {key!r}: expected an AEAD algorithm ({names}), got {show(value)}") from None


def env_name(value: object, key: str) -> str:
    """The *name* of an environment variable (never a secret itself)."""
    if not isinstance(value, str) or not _ENV_NAME_RE.fullmatch(value):
        raise PolicyError(f"config key {key!r}: expected the name of an environment variable "
                          f"(never the PIN itself), got {'a string' if isinstance(value, str) else show(value)}")
    return value


def seconds_out(value: float) -> int | float:
    """A duration as :meth:`to_mapping` shows it (whole seconds as int)."""
    return int(value) if value.is_integer() else value


def _same(value: Any) -> Any:
    return value


def to_str(value: Any) -> Any:
    """Dump an enum member (or None) as plain text."""
    return None if value is None else str(value)


def expect(value: object, typ: type | tuple[type, ...], key: str) -> None:
    """Refuse ``value`` unless it is an instance of ``typ``."""
    if not isinstance(value, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise PolicyError(f"config key {key!r}: expected {name}, got {_type_name(value)}")


def no_unknown(data: Mapping[Any, Any], known: set[str] | frozenset[str], prefix: str) -> None:
    """Refuse keys not in ``known``, naming the first with its dotted path."""
    for key in data:
        if key not in known:
            # The key is the caller's: a long or unprintable one is described, not repeated.
            shown = show(key)
            printable = isinstance(key, str) and key.isprintable() and shown == repr(key)
            at = f" at '{prefix}{key}'" if prefix and printable else ""
            raise PolicyError(f"config: unknown key {shown}{at} (known: {', '.join(sorted(known))})")


def str_list(value: object, key: str) -> list[str]:
    """A list of strings."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"config key {key!r}: expected a list of strings")
    return list(value)


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a section: its name in the file, its attribute, and how to read/write it."""

    key: str  # name in the file
    attr: str  # dataclass attribute
    parse: Callable[[object, str], Any]
    dump: Callable[[Any], Any] = _same


def build_section(cls: type[T], schema: tuple[Field, ...], data: object, prefix: str,
                  extra: frozenset[str] = frozenset(), **nested: Any) -> T:
    """Validate ``data`` against ``schema`` and build ``cls``; ``extra`` keys are the caller's."""
    expect(data, Mapping, prefix.rstrip("."))
    data = cast("Mapping[Any, Any]", data)
    no_unknown(data, {f.key for f in schema} | extra, prefix)
    values = {f.attr: f.parse(data[f.key], prefix + f.key) for f in schema if f.key in data}
    return cls(**values, **nested)


def dump_section(obj: object, schema: tuple[Field, ...]) -> dict[str, Any]:
    """Every field of ``obj`` as plain data."""
    return {f.key: f.dump(getattr(obj, f.attr)) for f in schema}
