"""The entry points of one group, read from the ``*.dist-info`` folders on ``sys.path``.

Discovering third-party providers is part of every process's first engine call. Through
``importlib_metadata`` it cost about 25 ms of that call, 18 ms of it importing the library
itself (email parsing, zipp, importlib.resources), for what is, in the usual layout, a
directory listing and a small ini file per installed distribution. This module reads those
files itself for that layout:

* every ``sys.path`` entry is a ``str`` naming a directory (or nothing), and
* no finder on ``sys.meta_path`` offers distributions of its own (``find_distributions``,
  other than the standard path finder's and importlib_metadata's own path finder).

Anything else (a zip file or an egg on ``sys.path``, a custom finder) goes to
``importlib_metadata`` as before, so the answer is the same whichever path found it:
distributions in ``sys.path`` order, the first of each normalised name wins, and the entry
points of each in file order. ``tests/engine/test_entry_points.py`` compares the two on the
real environment.

Example:
    >>> [ep.name for ep in entry_points("xpscerpto.no-such-group")]
    []
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["EntryPoint", "entry_points"]

# importlib_metadata's own grammar for a value: ``module[:attr.attr] [extras]``.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = value`` line of a distribution's ``entry_points.txt``."""

    name: str
    value: str
    group: str

    def load(self) -> object:
        """Import the module and return the attribute the value names (as importlib_metadata does).

        Raises:
            ValueError: the value is not ``module[:attr]``.
            ImportError, AttributeError: as the import or lookup raises them.
        """
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name!r}: not a 'module:attr' value")
        obj: object = importlib.import_module(match.group("module"))
        for attr in (match.group("attr") or "").split("."):
            if attr:
                obj = getattr(obj, attr)
        return obj


def entry_points(group: str) -> list[EntryPoint]:
    """Every entry point of ``group`` in the installed distributions.

    Raises:
        OSError, UnicodeDecodeError, ValueError: an unreadable or malformed ``entry_points.txt``
            (the caller records the scan as failed).
    """
    if not _plain_layout():
        import importlib_metadata

        return [EntryPoint(ep.name, ep.value, ep.group) for ep in importlib_metadata.entry_points(group=group)]
    out: list[EntryPoint] = []
    for folder in _distributions():
        path = os.path.join(folder, "entry_points.txt")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # an old single-file .egg-info: no entry points
            continue
        out.extend(_parse(text, group, path))
    return out


def _plain_layout() -> bool:
    """Whether every distribution lives in a directory on sys.path (this module's fast case)."""
    from importlib.machinery import PathFinder

    # importlib_metadata, once imported (by anyone), adds its own path-based finder: the same
    # directories, so not a reason to defer.
    backport = sys.modules.get("importlib_metadata")
    own = getattr(backport, "MetadataPathFinder", None)
    for finder in sys.meta_path:
        if finder is PathFinder or (own is not None and isinstance(finder, own)):
            continue
        if getattr(finder, "find_distributions", None) is not None:
            return False
    for entry in sys.path:
        if type(entry) is not str:  # a Path or bytes someone put there: the library's own handling
            return False
        path = entry or "."
        if path.endswith(".egg") or (os.path.exists(path) and not os.path.isdir(path)):
            return False
    return True


def _distributions() -> Iterator[str]:
    """The metadata folder of each distribution, the first of each normalised name only."""
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")  # importlib_metadata's order too
        except OSError:  # missing or unreadable: importlib_metadata skips it too
            continue
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in _SUFFIXES:
                continue
            key = re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower()
            if key in seen:
                continue
            seen.add(key)
            yield os.path.join(entry or ".", name)


def _parse(text: str, group: str, path: str) -> Iterator[EntryPoint]:
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != group:
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: a line in [{group}] without '='")
        yield EntryPoint(name.strip(), value.strip(), group)
