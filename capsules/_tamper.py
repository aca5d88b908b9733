"""Did capsule code change the engine? A snapshot of ``xpscerpto``'s modules and classes.

The validation child takes a snapshot before it imports a capsule and compares after the
capsule was imported and exercised: a payload that replaces the verifier, the trust store's
``verify``, the routing or the updater (or swaps a ``sys.modules`` entry of ``xpscerpto``)
would do the same in the engine process, so it is refused before it gets there.

What is compared: every ``xpscerpto`` module object in ``sys.modules`` (by identity), every
module attribute (by identity), and the ``__dict__`` entries of every class defined in those
modules (by identity). New modules or attributes are allowed (a capsule may import more of the
engine's API); changed or removed ones are not. The snapshot holds the objects themselves, so
an identity can never be reused by a new object while it is compared.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = ["Snapshot", "snapshot"]

_PACKAGE = "xpscerpto"
#: Attributes a module legitimately rebinds at runtime (import machinery, lazy caches).
_VOLATILE = frozenset({"__builtins__", "__loader__", "__spec__", "__cached__", "__warningregistry__"})


class Snapshot:
    """The engine's modules and classes at one moment."""

    def __init__(self, modules: dict[str, ModuleType], attrs: dict[tuple[str, str], Any],
                 class_attrs: dict[tuple[str, str, str], Any]) -> None:
        self._modules, self._attrs, self._class_attrs = modules, attrs, class_attrs

    def changes(self) -> list[str]:
        """Names of what was replaced or removed since the snapshot (sorted, at most 20)."""
        out = []
        for name, module in self._modules.items():
            if sys.modules.get(name) is not module:
                out.append(f"sys.modules[{name!r}]")
        for (mod, attr), value in self._attrs.items():
            current = self._modules[mod].__dict__.get(attr, _MISSING)
            if current is not value:
                out.append(f"{mod}.{attr}")
        for (mod, cls, attr), value in self._class_attrs.items():
            owner = self._attrs[(mod, cls)]
            if owner.__dict__.get(attr, _MISSING) is not value:
                out.append(f"{mod}.{cls}.{attr}")
        return sorted(out)[:20]


_MISSING = object()


def snapshot(*, strict: bool = True) -> Snapshot:
    """Take a snapshot of every loaded ``xpscerpto`` module and the classes they define.

    ``strict=False`` (the engine process, where background threads may fill lazy module
    globals) compares only module attributes that are functions, classes or modules, plus
    every class's own attributes; ``strict`` (the quiet validation child) compares them all.
    """
    modules = {n: m for n, m in list(sys.modules.items())
               if (n == _PACKAGE or n.startswith(_PACKAGE + ".")) and isinstance(m, ModuleType)}
    attrs: dict[tuple[str, str], Any] = {}
    class_attrs: dict[tuple[str, str, str], Any] = {}
    for name, module in modules.items():
        for attr, value in list(module.__dict__.items()):
            if attr in _VOLATILE or not (strict or callable(value) or isinstance(value, ModuleType)):
                continue
            attrs[(name, attr)] = value
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                for cattr, cvalue in list(value.__dict__.items()):
                    if cattr not in ("__dict__", "__weakref__", "__doc__", "_abc_impl"):
                        class_attrs[(name, attr, cattr)] = cvalue
    return Snapshot(modules, attrs, class_attrs)
