"""Routing tables: the only place a table is made.

A :class:`RoutingTable` is an immutable snapshot mapping every operation name (and every
public alias, e.g. ``"AES-256-GCM"``) to a routed adapter. It is built whole and validated off
the hot path; the engine installs it by replacing one reference. A call reads the table once
and uses only that local, so it sees one complete table even while another is published.

Later features (routing by message-size bucket, canary shares, drain tracking) install a
different adapter object for an operation; the call path stays the same dict lookup and call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._routes import AeadRoute, FaultSink, KdfRoute, KemRoute, KexRoute, SignatureRoute, UnavailableRoute
from .config import EngineConfig
from .interfaces import OPERATIONS, Provider

__all__ = ["Candidate", "Route", "RoutingTable", "build_table"]


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


@dataclass(frozen=True)
class RoutingTable:
    """An immutable routing snapshot.

    Attributes:
        version: increases by one with every publish in an engine.
        routes: operation -> :class:`Route` for routed operations.
        unrouted: operation -> reason, for operations nothing may serve.
        entries: operation name or alias -> adapter (routed or :class:`UnavailableRoute`);
            this is what the API reads. A plain dict for lookup speed; never mutated after
            :func:`build_table` returns.
        aead: the routed AEADs of ``entries`` (so ``aead.encrypt`` cannot reach a signer, and
            an unrouted AEAD is a miss whose reason ``unrouted`` gives).
    """

    version: int
    routes: Mapping[str, Route]
    unrouted: Mapping[str, str]
    entries: dict[str, Any] = field(repr=False)
    aead: dict[str, Any] = field(repr=False)

    def provider_for(self, operation: str) -> str | None:
        """The provider serving ``operation``, or None."""
        route = self.routes.get(operation)
        return route.provider if route else None


_ADAPTERS = {"sig": SignatureRoute, "kex": KexRoute, "kem": KemRoute, "kdf": KdfRoute}


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
    entries: dict[str, Any] = {}
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
            adapter: Any = UnavailableRoute(op, reason)
        else:
            impl: Any = chosen.implementations[op]
            if spec.kind == "aead":
                adapter = AeadRoute(op, chosen.name, impl, auto_nonce=config.nonce == "auto",
                                    on_fault=on_fault)
            else:
                adapter = _ADAPTERS[spec.kind](op, chosen.name, impl, on_fault)
            routes[op] = Route(op, chosen.name, chosen.backend, chosen.version,
                               chosen.constant_time, tuple(candidates))
        entries[op] = adapter
        for alias in spec.aliases:
            entries[alias] = adapter

    return RoutingTable(
        version=version,
        routes=MappingProxyType(routes),
        unrouted=MappingProxyType(unrouted),
        entries=entries,
        aead={k: v for k, v in entries.items() if isinstance(v, AeadRoute)},
    )
