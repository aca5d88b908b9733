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

An implementation is eligible when the configuration admits its provider, its self-test
passed, the policy permits the operation and (by default) requires nothing it lacks
(constant time), the incident mask does not name it, and this CPU has the features it needs.
Among the eligible, a preference (``config.prefer``) wins; otherwise an autotune result
(:mod:`._autotune`) chooses, per call shape, one provider for messages up to a size and
another above it; otherwise priority (the static weight), then the name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import isa_mask
from ._routes import AeadRoute, FaultSink, KdfRoute, KemRoute, KexRoute, OperationCounter, SignatureRoute
from ._tuning_model import NO_LIMIT, SHAPES, Split, TuneResult, split
from .errors import InternalError
from .interfaces import OPERATIONS, Aead, ImplementationInfo, Kdf, Kem, KeyAgreement, Provider, Signature
from .settings import EngineConfig

__all__ = ["AnyRoute", "Candidate", "Route", "RoutingTable", "Unrouted", "build_table", "info_of", "weight"]

AnyRoute = AeadRoute | SignatureRoute | KexRoute | KemRoute | KdfRoute


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider considered for an operation, and why it was not chosen (if it was not)."""

    provider: str
    priority: int
    excluded: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The chosen implementation of one operation.

    ``provider`` serves every call, unless autotune split the operation: then it serves
    messages up to ``limit`` bytes and ``large_provider`` the larger ones (``keyed_*`` the
    same for keyed AEADs, measured separately).
    """

    operation: str
    provider: str
    backend: str
    provider_version: str
    constant_time: bool
    candidates: tuple[Candidate, ...]
    limit: int = NO_LIMIT
    large_provider: str | None = None
    keyed_provider: str | None = None
    keyed_limit: int = NO_LIMIT
    keyed_large_provider: str | None = None
    chosen_by: str = "priority"

    @property
    def providers(self) -> tuple[str, ...]:
        """Every provider serving some calls of this operation, without repeats."""
        names = (self.provider, self.large_provider, self.keyed_provider, self.keyed_large_provider)
        return tuple(dict.fromkeys(n for n in names if n is not None))


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
        providers: the providers the table was built from, and ``build_config`` the
            configuration (preferences included), so that it can be rebuilt the same way
            with a new autotune result (:meth:`xpscerpto.engine.Engine.rebuild`).
        tuned: the autotune result applied, if any.
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
    providers: tuple[Provider, ...] = field(default=(), repr=False)
    build_config: EngineConfig | None = field(default=None, repr=False)
    kat_failures: Mapping[tuple[str, str], str] = field(default_factory=dict, repr=False)
    tuned: TuneResult | None = field(default=None, repr=False)
    #: Operation names and aliases whose self-tests have not run yet: absent from the kind
    #: maps, so a call misses, and its error path runs them (FIPS 140-3 allows a self-test of
    #: each algorithm before its first use) and retries on the next table.
    pending: frozenset[str] = field(default=frozenset(), repr=False)

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
    tuned: TuneResult | None = None,
    pending: frozenset[str] = frozenset(),
    count: OperationCounter | None = None,
) -> RoutingTable:
    """Choose the implementations of each operation and build the adapters.

    Selection: drop what is not eligible (see the module docstring); among the rest the
    ``config.prefer`` provider wins, then the ``tuned`` choice, then higher weight
    (priority), then provider name (so the result never depends on plugin load order).

    Args:
        providers: the registered providers.
        config: policy, nonce mode, preferences and the incident mask.
        version: the version number this table will carry.
        kat_failures: (provider, operation) -> reason for each failed self-test.
        on_fault: called (error path only) when a routed provider raises unexpectedly.
        tuned: measured winners (:func:`xpscerpto._autotune.tune`); ignored for an operation
            whose measured providers are not all eligible now.
        pending: operations whose self-tests have not run yet (left unrouted, see
            :attr:`RoutingTable.pending`).
        count: with metrics on, ``count(operation, provider)`` gives the tick each AEAD call
            into that provider makes (:meth:`AeadRoute.count_calls`); None: no wrapper.

    Raises:
        PolicyError: the incident mask in the environment is malformed.
    """
    providers = tuple(providers)
    by_op: dict[str, list[Provider]] = {op: [] for op in OPERATIONS}
    for p in providers:
        for op in p.implementations:
            by_op[op].append(p)
    mask = isa_mask.effective(config.isa_mask)
    cpu = isa_mask.cpu_flags()
    if mask:
        # A token that matches nothing is kept (it may name a capsule still to come) but said once.
        isa_mask.report_unmatched(mask, ((p.name, {b for op in p.implementations for b in info_of(p, op).backends})
                                         for p in providers))

    routes: dict[str, Route] = {}
    unrouted: dict[str, str] = {}
    entries: dict[str, AnyRoute | Unrouted] = {}
    aead: dict[str, AeadRoute] = {}
    signature: dict[str, SignatureRoute] = {}
    kex: dict[str, KexRoute] = {}
    kem: dict[str, KemRoute] = {}
    kdf: dict[str, KdfRoute] = {}
    waiting: set[str] = set()
    for op, spec in OPERATIONS.items():
        if op in pending and by_op[op]:
            unrouted[op] = PENDING
            entries.update(dict.fromkeys((op, *spec.aliases), Unrouted(op, PENDING)))
            waiting.update((op, *spec.aliases))
            continue
        preferred = config.prefer.get(op)
        ordered = sorted(by_op[op], key=lambda p: (p.name != preferred, -weight(p, op), p.name))
        candidates: list[Candidate] = []
        eligible: list[Provider] = []
        policy_reason = config.policy.reason(op, spec.tokens)
        for p in ordered:
            excluded = policy_reason or _ineligible(p, op, config, kat_failures, mask, cpu)
            if excluded is None and eligible:
                excluded = "lower preference"
            if excluded is None or excluded == "lower preference":
                eligible.append(p)
            candidates.append(Candidate(p.name, weight(p, op), excluded))

        if not eligible:
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
        names = {p.name: p for p in eligible}
        stateless = keyed = None
        if tuned is not None and preferred not in names:
            stateless, keyed = _tuned_split(tuned, op, names)
        chosen = names[stateless.small] if stateless is not None else eligible[0]
        measured = stateless is not None or keyed is not None
        served = {chosen.name} | {n for sp in (stateless, keyed) if sp is not None for n in (sp.small, sp.large)}
        # Eligible but not serving: "lower preference" statically, "measured slower" when tuned.
        candidates = [c if c.excluded not in (None, "lower preference") else
                      Candidate(c.provider, c.priority, None if c.provider in served else
                                "measured slower" if measured else "lower preference")
                      for c in candidates]
        adapter = _adapter(op, chosen, config, on_fault)
        route_names = (op, *spec.aliases)
        if isinstance(adapter, AeadRoute):
            if stateless is not None:
                large = names[stateless.large]
                adapter.serve_large(stateless.limit, _aead_impl(large, op), large.name)
            if keyed is not None:
                adapter.serve_keyed(_aead_impl(names[keyed.small], op), names[keyed.small].name,
                                    keyed.limit, _aead_impl(names[keyed.large], op), names[keyed.large].name)
            aead.update(dict.fromkeys(route_names, adapter))
        elif isinstance(adapter, SignatureRoute):
            signature.update(dict.fromkeys(route_names, adapter))
        elif isinstance(adapter, KexRoute):
            kex.update(dict.fromkeys(route_names, adapter))
        elif isinstance(adapter, KemRoute):
            kem.update(dict.fromkeys(route_names, adapter))
        else:
            kdf.update(dict.fromkeys(route_names, adapter))
        routes[op] = Route(
            op, chosen.name, chosen.backend, chosen.version, _constant_time(chosen, op), tuple(candidates),
            limit=stateless.limit if stateless is not None else NO_LIMIT,
            large_provider=stateless.large if stateless is not None and stateless.limit != NO_LIMIT else None,
            keyed_provider=keyed.small if keyed is not None else None,
            keyed_limit=keyed.limit if keyed is not None else NO_LIMIT,
            keyed_large_provider=keyed.large if keyed is not None and keyed.limit != NO_LIMIT else None,
            chosen_by="preference" if preferred == chosen.name else "autotune" if stateless is not None
            else "priority")
        entries.update(dict.fromkeys(route_names, adapter))

    if count is not None:
        for adapter in {id(r): r for r in aead.values()}.values():
            adapter.count_calls(count)
    return RoutingTable(
        version=version,
        routes=MappingProxyType(routes),
        unrouted=MappingProxyType(unrouted),
        aead=aead, signature=signature, kex=kex, kem=kem, kdf=kdf,
        entries=MappingProxyType(entries),
        providers=providers,
        build_config=config,
        kat_failures=MappingProxyType(dict(kat_failures)),
        tuned=tuned,
        pending=frozenset(waiting),
    )


PENDING = "self-test pending (it runs before the first use)"
#: Every public name (operation names and aliases) -> its operation.
OPERATION_OF: Mapping[str, str] = MappingProxyType(
    {name: op for op, spec in OPERATIONS.items() for name in (op, *spec.aliases)})


def info_of(provider: Provider, op: str) -> ImplementationInfo:
    """The routing metadata of ``provider``'s implementation of ``op`` (defaults if none declared)."""
    return provider.info.get(op) or _NO_INFO


_NO_INFO = ImplementationInfo()


def weight(provider: Provider, op: str) -> int:
    """The static preference of an implementation: its own weight, else the provider's priority."""
    w = info_of(provider, op).weight
    return provider.priority if w is None else w


def _constant_time(provider: Provider, op: str) -> bool:
    ct = info_of(provider, op).constant_time
    return provider.constant_time if ct is None else ct


def _ineligible(p: Provider, op: str, config: EngineConfig, kat_failures: Mapping[tuple[str, str], str],
                mask: frozenset[str], cpu: frozenset[str]) -> str | None:
    """Why ``p``'s implementation of ``op`` may not be routed, or None."""
    info = info_of(p, op)
    if config.providers is not None and p.name not in config.providers:
        return "not in config.providers"
    if (p.name, op) in kat_failures:
        return f"self-test failed: {kat_failures[(p.name, op)]}"
    if config.policy.require_constant_time and not _constant_time(p, op):
        return "not constant-time (policy require_constant_time)"
    token = isa_mask.masked_by((p.name, *info.backends), info.cpu_features, mask)
    if token is not None:
        return f"masked ({token}, {isa_mask.MASK_ENV} or crypto.engine.isa_mask)"
    if cpu:
        missing = sorted(f for f in info.cpu_features if f.lower() not in cpu)
        if missing:
            return "needs CPU features this machine lacks: " + ", ".join(missing)
    return None


def _tuned_split(tuned: TuneResult, op: str, names: Mapping[str, Provider]) -> tuple[Split | None, Split | None]:
    """The measured splits for both call shapes, if every provider they name is eligible."""
    out: list[Split | None] = []
    for shape in SHAPES:
        s = split(tuned, op, shape)
        ok = s is not None and s.small in names and s.large in names and _same_sizes(
            names[s.small].implementations[op], names[s.large].implementations[op])
        out.append(s if ok else None)
    return out[0], out[1]


def _same_sizes(a: object, b: object) -> bool:
    """Two AEADs one call may be routed between must take the same keys and nonces."""
    if not (isinstance(a, Aead) and isinstance(b, Aead)):
        return True  # other kinds are never split per call: only the small-size winner serves
    return (tuple(a.key_sizes), a.nonce_size, a.tag_size) == (tuple(b.key_sizes), b.nonce_size, b.tag_size)


def _aead_impl(provider: Provider, op: str) -> Aead:
    impl = provider.implementations[op]
    if not isinstance(impl, Aead):
        raise InternalError(f"provider {provider.name!r}: its {op} does not implement Aead")
    return impl


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
