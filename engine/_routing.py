"""Routing tables: the only place a table is made.

A :class:`RoutingTable` is an immutable snapshot with one typed map per kind of primitive
(``aead``, ``signature``, ``kex``, ``kem``, ``kdf``): operation name (and every public alias,
e.g. ``"AES-256-GCM"``) -> the routed adapter of that kind. An operation nothing may serve is
absent from its map; its reason is in ``unrouted``, which the API reads on the error path
only. A table is built whole and validated off the hot path; the engine installs it by
replacing one reference. A call reads the table once and uses only that local, so it sees one
complete table even while another is published.

Staged capsules (canary, dual-run) install a different provider implementation for an
operation; the call path stays the same dict lookup and call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._routes import AeadRoute, FaultSink, KdfRoute, KemRoute, KexRoute, SignatureRoute
from .errors import InternalError
from .interfaces import OPERATIONS, Aead, Kdf, Kem, KeyAgreement, Provider, Signature
from .settings import EngineConfig

__all__ = ["AnyRoute", "Candidate", "Route", "RoutingTable", "Unrouted", "build_table"]

AnyRoute = AeadRoute | SignatureRoute | KexRoute | KemRoute | KdfRoute


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider considered for an operation, and why it was not chosen (if it was not)."""

    provider: str
    priority: int
    excluded: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The chosen implementation of one operation."""

    operation: str
    provider: str
    backend: str
    provider_version: str
    constant_time: bool
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class Unrouted:
    """Stands in :attr:`RoutingTable.entries` for an operation nothing may serve."""

    operation: str
    reason: str
    provider: None = None


@dataclass(frozen=True)
class RoutingTable:
    """An immutable routing snapshot.

    The per-kind maps are what the API reads (one lookup per call). They are plain dicts for
    lookup speed, typed read-only, and never mutated after :func:`build_table` returns.

    Attributes:
        version: increases by one with every publish in an engine.
        routes: operation -> :class:`Route` for routed operations.
        unrouted: operation -> reason, for operations nothing may serve.
        aead: AEAD operation name or alias -> routed adapter (so ``aead.encrypt`` cannot reach
            a signer, and an unrouted AEAD is a miss whose reason ``unrouted`` gives).
        signature, kex, kem, kdf: the same for the other kinds.
        entries: every operation name and alias -> its adapter or :class:`Unrouted`
            (introspection: ``xps providers``, tests; never read by a call).
    """

    version: int
    routes: Mapping[str, Route]
    unrouted: Mapping[str, str]
    aead: Mapping[str, AeadRoute] = field(repr=False)
    signature: Mapping[str, SignatureRoute] = field(repr=False)
    kex: Mapping[str, KexRoute] = field(repr=False)
    kem: Mapping[str, KemRoute] = field(repr=False)
    kdf: Mapping[str, KdfRoute] = field(repr=False)
    entries: Mapping[str, AnyRoute | Unrouted] = field(repr=False)

    def provider_for(self, operation: str) -> str | None:
        """The provider serving ``operation``, or None."""
        route = self.routes.get(operation)
        return route.provider if route else None

    @classmethod
    def empty(cls, version: int = 0) -> RoutingTable:
        """A table that routes nothing (an engine's table before it starts)."""
        none: Mapping[str, str] = MappingProxyType({})
        return cls(version, MappingProxyType({}), none, {}, {}, {}, {}, {}, MappingProxyType({}))


def build_table(
    providers: Iterable[Provider],
    config: EngineConfig,
    *,
    version: int,
    kat_failures: Mapping[tuple[str, str], str] = MappingProxyType({}),
    on_fault: FaultSink | None = None,
) -> RoutingTable:
    """Choose one implementation per operation and build the adapters.

    Selection: drop providers excluded by ``config.providers``, then those whose KAT failed
    for the operation; refuse the operation if the policy forbids it; among the rest the
    ``config.prefer`` provider wins, then higher priority, then provider name (so the result
    never depends on plugin load order).

    Args:
        providers: the registered providers.
        config: policy, nonce mode and preferences.
        version: the version number this table will carry.
        kat_failures: (provider, operation) -> reason for each failed self-test.
        on_fault: called (error path only) when a routed provider raises unexpectedly.
    """
    by_op: dict[str, list[Provider]] = {op: [] for op in OPERATIONS}
    for p in providers:
        for op in p.implementations:
            by_op[op].append(p)

    routes: dict[str, Route] = {}
    unrouted: dict[str, str] = {}
    entries: dict[str, AnyRoute | Unrouted] = {}
    aead: dict[str, AeadRoute] = {}
    signature: dict[str, SignatureRoute] = {}
    kex: dict[str, KexRoute] = {}
    kem: dict[str, KemRoute] = {}
    kdf: dict[str, KdfRoute] = {}
    for op, spec in OPERATIONS.items():
        preferred = config.prefer.get(op)
        ordered = sorted(by_op[op], key=lambda p: (p.name != preferred, -p.priority, p.name))
        candidates: list[Candidate] = []
        chosen: Provider | None = None
        policy_reason = config.policy.reason(op, spec.tokens)
        for p in ordered:
            excluded = None
            if config.providers is not None and p.name not in config.providers:
                excluded = "not in config.providers"
            elif (p.name, op) in kat_failures:
                excluded = f"self-test failed: {kat_failures[(p.name, op)]}"
            elif policy_reason is not None:
                excluded = policy_reason
            elif chosen is not None:
                excluded = "lower preference"
            else:
                chosen = p
            candidates.append(Candidate(p.name, p.priority, excluded))

        if chosen is None:
            if policy_reason is not None:
                reason = policy_reason
            elif not candidates:
                reason = "no provider implements it"
            else:
                reason = "no eligible provider (" + "; ".join(
                    f"{c.provider}: {c.excluded}" for c in candidates) + ")"
            unrouted[op] = reason
            entries.update(dict.fromkeys((op, *spec.aliases), Unrouted(op, reason)))
            continue
        adapter = _adapter(op, chosen, config, on_fault)
        names = (op, *spec.aliases)
        if isinstance(adapter, AeadRoute):
            aead.update(dict.fromkeys(names, adapter))
        elif isinstance(adapter, SignatureRoute):
            signature.update(dict.fromkeys(names, adapter))
        elif isinstance(adapter, KexRoute):
            kex.update(dict.fromkeys(names, adapter))
        elif isinstance(adapter, KemRoute):
            kem.update(dict.fromkeys(names, adapter))
        else:
            kdf.update(dict.fromkeys(names, adapter))
        routes[op] = Route(op, chosen.name, chosen.backend, chosen.version,
                           chosen.constant_time, tuple(candidates))
        entries.update(dict.fromkeys(names, adapter))

    return RoutingTable(
        version=version,
        routes=MappingProxyType(routes),
        unrouted=MappingProxyType(unrouted),
        aead=aead, signature=signature, kex=kex, kem=kem, kdf=kdf,
        entries=MappingProxyType(entries),
    )


def _adapter(op: str, provider: Provider, config: EngineConfig, on_fault: FaultSink | None) -> AnyRoute:
    """The adapter of the kind ``op`` names over ``provider``'s implementation of it."""
    impl, kind = provider.implementations[op], OPERATIONS[op].kind
    # Registration already checked each implementation against its contract (the engine's
    # plugins in-process, capsules in the validation child); checked again here because
    # building a table is the last point before a call reaches the object.
    if kind == "aead" and isinstance(impl, Aead):
        return AeadRoute(op, provider.name, impl, auto_nonce=config.nonce == "auto", on_fault=on_fault)
    if kind == "sig" and isinstance(impl, Signature):
        return SignatureRoute(op, provider.name, impl, on_fault)
    if kind == "kex" and isinstance(impl, KeyAgreement):
        return KexRoute(op, provider.name, impl, on_fault)
    if kind == "kem" and isinstance(impl, Kem):
        return KemRoute(op, provider.name, impl, on_fault)
    if kind == "kdf" and isinstance(impl, Kdf):
        return KdfRoute(op, provider.name, impl, on_fault)
    raise InternalError(f"provider {provider.name!r}: its {op} does not implement "
                        f"{OPERATIONS[op].contract.__name__}")
