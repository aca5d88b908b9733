"""The ``jit`` plugin's registration hook, kept apart from the kernels' module.

Starting an engine imports every built-in plugin; the kernels' module (:mod:`.jit`) costs
about 10 ms to import, and while no kernel is ready (always, at a process's first start) all
its hook would register is a deferred source. This hook registers that source without the
import; the source imports the kernels' module on the engine's background thread. Once the
kernels' module is loaded (warmed up, or asked for its status), its own hook decides.
"""

from __future__ import annotations

import sys
from typing import Any

from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Provider

__all__ = ["numba_version", "xps_register_providers"]

_KERNELS = "xpscerpto.plugins.jit"
# The names the kernels' module provides (its PROVIDER_NAME, COMPOSITE_PROVIDER_NAME).
_PROVIDES = ("jit", "jit-openssl")


@hookimpl
def xps_register_providers(registry: Any) -> None:
    """Register the jit providers: the kernels' own hook if loaded, else a deferred source."""
    kernels = sys.modules.get(_KERNELS)
    if kernels is not None:
        kernels.xps_register_providers(registry)
    elif hasattr(registry, "add_later"):
        registry.add_later(_warmed_providers, provides=_PROVIDES, version=numba_version, backends=("jit",))


def _warmed_providers() -> tuple[Provider, ...]:
    from xpscerpto.plugins import jit

    return jit._warmed_providers()


def numba_version() -> str:
    """numba's installed version, read from its metadata (importing numba takes a second)."""
    # The same metadata module the engine's entry-point discovery already imported (the
    # standard library's copy would cost another ~25 ms on the first call).
    from importlib_metadata import PackageNotFoundError, version

    try:
        return f"numba {version('numba')}"
    except PackageNotFoundError:
        return "numba missing"
