"""Every pluggy hook of XPScerpto, in one place.

Hooks are for discovery and registration only: they run when an engine loads its providers,
never per crypto operation.

A third-party provider package exposes a module with a ``@hookimpl`` function and names it in
the ``xpscerpto.providers`` entry-point group::

    # mypkg/xps_plugin.py
    from xpscerpto.hookspecs import hookimpl
    from xpscerpto.interfaces import Provider

    @hookimpl
    def xps_register_providers(registry):
        registry.add(Provider(name="mine", backend="mylib 1.0", version="1.0",
                              implementations={"aead.aes256gcm": MyAesGcm()}))

    # pyproject.toml
    [project.entry-points."xpscerpto.providers"]
    mine = "mypkg.xps_plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._plugins import ProviderRegistry

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "xps_register_providers"]

PROJECT_NAME = "xpscerpto"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def xps_register_providers(registry: ProviderRegistry) -> None:
    """Add this plugin's providers with ``registry.add(Provider(...))``.

    Called once per engine start, built-in plugins first. Raising here marks the plugin as
    failed (reported by ``xps providers``) without stopping the engine.
    """
