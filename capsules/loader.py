"""Load a verified capsule's provider from its verified bytes, never from disk.

The payload becomes a synthetic package ``_xps_capsule_<sha256[:16]>`` served by an in-memory
finder, so two versions of one capsule never share module names and nothing on ``sys.path``
can shadow (or be shadowed by) capsule code. Payload modules import each other relatively.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from xpscerpto.errors import InternalError
from xpscerpto.interfaces import Provider

from ._verifier import VerifiedCapsule, is_verified

__all__ = ["load_provider", "package_name"]

_lock = threading.Lock()


def package_name(sha256: str) -> str:
    """The synthetic package a capsule's modules live under."""
    return f"_xps_capsule_{sha256[:16]}"


class _PayloadFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one capsule's modules from a mapping of verified bytes."""

    def __init__(self, package: str, files: Mapping[str, bytes], label: str) -> None:
        self.package = package
        self.files = files
        self.label = label

    def _path_for(self, fullname: str) -> tuple[str | None, bool] | None:
        if fullname == self.package:
            return None, True
        if not fullname.startswith(self.package + "."):
            return None
        rel = fullname[len(self.package) + 1:].replace(".", "/")
        if f"{rel}.py" in self.files:
            return f"{rel}.py", False
        if f"{rel}/__init__.py" in self.files:
            return f"{rel}/__init__.py", True
        return None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        found = self._path_for(fullname)
        if found is None:
            return None
        _, is_pkg = found
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=is_pkg)
        if is_pkg:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        found = self._path_for(module.__name__)
        assert found is not None
        rel, _ = found
        if rel is None:  # the synthetic root package has no code
            return
        code = compile(self.files[rel], f"<capsule {self.label}>/{rel}", "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - verified capsule bytes, the whole point


def _install(package: str, files: Mapping[str, bytes], label: str) -> None:
    with _lock:
        if not any(isinstance(f, _PayloadFinder) and f.package == package for f in sys.meta_path):
            sys.meta_path.insert(0, _PayloadFinder(package, files, label))


def load_provider(capsule: VerifiedCapsule) -> Provider:
    """Import the entry objects from the verified payload and return the capsule's Provider.

    Only a :class:`VerifiedCapsule` is accepted, and only its verified ``files`` are executed.
    Each ``operations`` entry names ``module:attribute``; a class is instantiated with no
    arguments. The manifest's KAT files are kept as ``payload:`` references for reporting.

    Raises:
        InternalError: ``capsule`` is not a VerifiedCapsule that verify_capsule() returned.
        Exception: whatever the capsule's code raises at import (the caller refuses it).
    """
    if not is_verified(capsule):
        raise InternalError(f"capsule: expected a VerifiedCapsule from verify_capsule(), got "
                            f"{type(capsule).__name__}")
    m, sha256 = capsule.manifest, capsule.sha256
    name, version, kat = m.name, m.version, m.kat
    package = package_name(sha256)
    label = f"{name}-{version}"
    _install(package, capsule.files, label)
    impls: dict[str, object] = {}
    for op, entry in m.operations.items():
        mod_name, attr = entry.split(":")
        module = importlib.import_module(f"{package}.{mod_name}")
        obj = getattr(module, attr)
        impls[op] = obj() if isinstance(obj, type) else obj
    return Provider(name=name, backend=f"capsule {label} ({sha256[:12]})", version=version,
                    implementations=impls, constant_time=m.constant_time, priority=0,
                    kat={op: tuple(f"payload:{p}" for p in paths) for op, paths in kat.items()})
