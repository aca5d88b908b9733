"""Plugin discovery and provider registration: built-ins first, then entry points.

The result is a :class:`ProviderRegistry` snapshot (validated providers plus the failures,
each naming its plugin). Routing tables are built from it; nothing here runs per operation.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import pluggy

from . import hookspecs
from .interfaces import OPERATIONS, Aead, Kdf, Kem, KeyAgreement, Provider, Signature

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "Deferred",
    "PluginFailure",
    "ProviderRegistry",
    "load_providers",
]

ENTRY_POINT_GROUP = "xpscerpto.providers"
#: Set to any non-empty value to skip third-party entry points (built-ins still load).
DISABLE_AUTOLOAD_ENV = "XPS_DISABLE_PLUGIN_AUTOLOAD"

# The jit kernels register through a light hook module (their own is imported when needed).
_BUILTIN_PLUGINS = ("xpscerpto.plugins.openssl", "xpscerpto.plugins.sodium", "xpscerpto.plugins.jit_plugin")

# Sizes a contract must declare as class attributes, per contract.
_REQUIRED_ATTRS: dict[type, tuple[str, ...]] = {
    Aead: ("key_sizes", "nonce_size", "tag_size"),
    Signature: ("public_key_size", "secret_key_size", "signature_size"),
    KeyAgreement: ("public_key_size", "secret_key_size", "shared_size"),
    Kem: ("public_key_size", "secret_key_size", "ciphertext_size", "shared_size"),
    Kdf: ("hash_size", "max_output"),
}


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin or provider that could not be loaded, and why (no secrets in ``reason``)."""

    plugin: str
    reason: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """Providers a plugin prepares later (see :meth:`ProviderRegistry.add_later`)."""

    plugin: str
    provides: tuple[str, ...]
    version: str | Callable[[], str]
    source: Callable[[], Iterable[Provider]]
    #: The backends every provider it prepares runs code of: a mask naming one means the
    #: source is never called (its code must not even load during that incident).
    backends: tuple[str, ...] = ()


@dataclass
class ProviderRegistry:
    """Collects providers during registration; validates each as it is added.

    Only the engine's loader creates one. ``add`` is the single method plugins call.
    """

    providers: dict[str, Provider] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    _current_plugin: str = "?"

    def add_later(self, source: object, *, provides: tuple[str, ...], version: str | Callable[[], str] = "",
                  backends: tuple[str, ...] = ()) -> None:
        """Register providers that need slow preparation (compiling kernels) before they exist.

        An engine that tunes itself calls ``source()`` on its background thread after start,
        self-tests what it returns, and only then may route to it; an engine that does not
        tune, or whose configuration or incident mask excludes every name in ``provides``,
        never calls it. ``source`` returns no providers when preparation failed. ``version``
        (of what the source builds with, e.g. numba's) is part of the autotune cache key; a
        function returning it is called only when the key is computed (on the background
        thread), so reading package metadata costs an engine's first call nothing. ``backends``
        are those every provider it prepares runs code of (``("jit",)``): an incident mask
        naming one keeps the source from being called at all.
        """
        if (not callable(source) or not isinstance(provides, tuple) or not all(isinstance(n, str) for n in provides)
                or not isinstance(backends, tuple) or not all(isinstance(b, str) for b in backends)):
            self.failures.append(PluginFailure(self._current_plugin, "add_later: needs a callable and provider and "
                                                                     "backend names"))
            return
        self.deferred.append(Deferred(self._current_plugin, provides, version if callable(version) else str(version),
                                      cast("Callable[[], Iterable[Provider]]", source),
                                      tuple(b.lower() for b in backends)))

    def add(self, provider: Provider) -> None:
        """Register ``provider``; an invalid one is recorded as a failure, not raised."""
        problem = validate_provider(provider)
        if problem is None and provider.name in self.providers:
            problem = f"provider name {provider.name!r} is already registered"
        if problem is not None:
            name = getattr(provider, "name", "?")
            self.failures.append(PluginFailure(self._current_plugin, f"provider {name!r}: {problem}"))
            import logging  # a rejected provider only: the first call of every process need not import it

            logging.getLogger("xpscerpto.plugins").warning("plugin %s: provider %r rejected: %s",
                                                           self._current_plugin, name, problem)
            return
        self.providers[provider.name] = provider


def validate_provider(provider: object) -> str | None:
    """Return why ``provider`` does not satisfy the contract, or None if it does."""
    if not isinstance(provider, Provider):
        return f"expected a Provider record, got {type(provider).__name__}"
    if not provider.name or not provider.name.replace("-", "_").isidentifier():
        return f"name {provider.name!r} must be an identifier"
    if not provider.implementations:
        return "implements no operation"
    for op, impl in provider.implementations.items():
        spec = OPERATIONS.get(op)
        if spec is None:
            return f"operation {op!r} is unknown"
        if not isinstance(impl, spec.contract):
            return f"operation {op!r}: implementation does not subclass {spec.contract.__name__}"
        for attr in _REQUIRED_ATTRS[spec.contract]:
            if not hasattr(impl, attr):
                return f"operation {op!r}: missing attribute {attr!r}"
        for meth_name, meth in inspect.getmembers(spec.contract, inspect.isfunction):
            if getattr(meth, "__isabstractmethod__", False):
                attr = getattr(type(impl), meth_name)
                if not callable(attr):
                    return f"operation {op!r}: {meth_name} is not callable"
                if inspect.isfunction(attr):  # a class such as AESGCM is its own factory
                    want = len(inspect.signature(meth).parameters)
                    got = len(inspect.signature(attr).parameters)
                    if got != want:
                        return (f"operation {op!r}: {meth_name}() takes {got} parameters, "
                                f"contract has {want}")
    for op in provider.kat:
        if op not in provider.implementations:
            return f"kat: names operation {op!r} that the provider does not implement"
    return None


def _entry_point_plugins() -> Iterable[tuple[str, object]]:
    from ._entry_points import entry_points

    for ep in entry_points(ENTRY_POINT_GROUP):
        yield ep.name, ep


def load_providers(
    extra_plugins: Iterable[object] = (),
    *,
    autoload: bool | None = None,
) -> ProviderRegistry:
    """Discover plugins and collect their providers.

    Args:
        extra_plugins: plugin objects/modules registered after the built-ins (tests, embedders).
        autoload: load third-party entry points; default is on unless
            ``XPS_DISABLE_PLUGIN_AUTOLOAD`` is set.

    Returns:
        The registry with valid providers and every failure, each naming its plugin.
    """
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registry = ProviderRegistry()

    plugins: list[tuple[str, object]] = []
    for modname in _BUILTIN_PLUGINS:
        try:
            plugins.append((modname, __import__(modname, fromlist=["_"])))
        except Exception as exc:  # a broken built-in must not stop the others
            registry.failures.append(PluginFailure(modname, f"import failed: {type(exc).__name__}: {exc}"))
    for i, obj in enumerate(extra_plugins):
        plugins.append((getattr(obj, "__name__", f"extra[{i}]"), obj))
    if autoload:
        try:
            eps = list(_entry_point_plugins())
        except Exception as exc:
            registry.failures.append(PluginFailure(ENTRY_POINT_GROUP, f"entry point scan failed: {exc}"))
            eps = []
        for name, ep in eps:
            try:
                plugins.append((f"entry point {name!r}", ep.load()))  # type: ignore[attr-defined]
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(f"entry point {name!r}", f"import failed: {type(exc).__name__}: {exc}"))

    # Each plugin's hook is called on its own so one failure is attributed and contained.
    for name, plugin in plugins:
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            registry.failures.append(PluginFailure(name, f"registration failed: {exc}"))
            continue
        registry._current_plugin = name
        impls = [i for i in pm.hook.xps_register_providers.get_hookimpls() if i.plugin is plugin]
        for impl in impls:
            try:
                impl.function(registry=registry)
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(name, f"xps_register_providers raised {type(exc).__name__}: {exc}"))
    registry._current_plugin = "?"
    return registry

