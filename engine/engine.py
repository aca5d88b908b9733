"""The engine: holds the current routing table and offers the API namespaces.

A call reads ``engine._table`` once and calls the adapter it finds; publishing a new table is
one reference assignment, so readers never see a half-built table and never take a lock.

Example:
    >>> from xpscerpto import Engine, EngineConfig
    >>> eng = Engine(EngineConfig.from_mapping({"policy": {"forbid": ["aes128"]}}))
    >>> sealed = eng.aead.encrypt("AES-256-GCM", bytes(32), b"hi")
    >>> eng.aead.open("AES-256-GCM", bytes(32), sealed)
    b'hi'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast

from ._buffers import BYTE_FORMATS, byte_buffer, describe, describe_int, immutable, whole_wire
from ._namespaces import HkdfAPI, KemAPI, KexAPI, SignatureAPI
from ._nonce_source import GUARD as NONCE_GUARD
from ._nonce_source import NONCES
from ._nonce_source import refill as refill_nonces
from ._routes import AeadRoute, AuthFailure, OperationCounter, _BadBuffer
from ._routing import RoutingTable, build_table
from ._tuning_model import NO_LIMIT, TuneResult
from .errors import AuthError, InternalError, KeyError_, NonceError, PolicyError, XpsError
from .interfaces import OPERATIONS, AeadCipher, Buffer, Provider
from .sealed import Sealed
from .secret import SecretBytes
from .settings import EngineConfig, autotune_enabled

if TYPE_CHECKING:
    from xpscerpto.kat import KatResult

    from ._plugins import Deferred, PluginFailure

__all__ = [
    "KEYED_NONCE_LIMIT",
    "NONCE_CACHE_SIZE",
    "AeadAPI",
    "Engine",
    "HkdfAPI",
    "KemAPI",
    "KexAPI",
    "KeyedAead",
    "SignatureAPI",
    "random_bytes",
]

R = TypeVar("R")

_MAX_RANDOM = 1 << 20

#: Application-supplied nonces :class:`KeyedAead` objects seal under one key (the default
#: ``nonce_reuse="refuse"``), counted across every KeyedAead of the process over the same key
#: bytes and algorithm (the counts of the last :data:`NONCE_CACHE_SIZE` such keys are kept).
#: Each object also keeps its own nonces until it is dropped, about 100 bytes apiece (~6.5 MiB
#: at the limit). Past the limit, new explicit nonces under that key are refused (XPS_ERR_NONCE)
#: and the key must be rotated. Auto (random) nonces are not recorded and not limited here.
KEYED_NONCE_LIMIT = 1 << 16

#: (key, nonce) pairs the process remembers, from the stateless API and every KeyedAead, as
#: 64-bit keyed hashes (never the key): an explicit nonce repeated with the same key within the
#: last this-many explicit-nonce encryptions is refused. About 80 bytes apiece (~5 MiB when
#: full), and up to as many per-key counts of :data:`KEYED_NONCE_LIMIT`, about 100 bytes each.
NONCE_CACHE_SIZE = 1 << 16

#: Ciphertext size from which ``decrypt(nonce, ct, tag)`` checks whether ``ct`` is a view of a
#: sealed wire it can decrypt as it is (about 0.3 µs, a join of 32 KiB costs as much).
WHOLE_WIRE_FROM = 32 * 1024

#: Seconds the background warm-up and autotune wait after start (a lazy engine: after its
#: first operation is routed) before they begin, unless :meth:`Engine.wait_tuned` is called.
BACKGROUND_DELAY_SECONDS = 1.0

FaultListener = Callable[[str, str, BaseException], None]
TableFaultListener = Callable[[str, str, BaseException, int], None]
AuthListener = Callable[[str, str, str], None]
NonceReuse = Literal["refuse", "caller"]


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG.

    Raises:
        KeyError_: ``n`` is not an int in 0..1048576.

    Example:
        >>> len(random_bytes(32))
        32
    """
    if type(n) is not int:
        raise KeyError_(f"n: expected an int, got {describe(n)}")
    if not 0 <= n <= _MAX_RANDOM:
        raise KeyError_(f"n: expected 0..{_MAX_RANDOM}, got {describe_int(n)}")
    return os.urandom(n)


@dataclass(frozen=True, slots=True)
class EngineState:
    """What an engine loaded: providers, plugin failures, self-test results.

    Set at start; providers prepared later (warmed-up kernels) are added, self-tested, by
    the engine's background work (see :meth:`Engine.add_providers`).
    """

    providers: tuple[Provider, ...]
    failures: tuple[PluginFailure, ...]
    selftests: tuple[KatResult, ...]
    deferred: tuple[Deferred, ...] = ()


class Engine:
    """A crypto-agility engine: providers, a routing table, and the API over it.

    Args:
        config: routing policy, nonce mode and preferences (default: permissive, auto nonce).
        plugins: extra plugin objects registered after the built-ins (embedders, tests).
        lazy: defer loading providers until the first call, and run each operation's
            self-tests before its first use (FIPS 140-3 allows that) instead of all at start.
            The module-level API's default engine is lazy: ``import xpscerpto`` and one
            AEAD call pay for that one algorithm's self-test only.
        count: metrics: ``count(operation, provider)`` returns the function each AEAD call
            into that provider calls once (:class:`xpscerpto.metrics.Metrics` gives one).
            Tables are built with the counting wrappers; ``None`` (default): no wrapper, no
            cost on the call path.

    Raises:
        PolicyError: ``config`` is not an EngineConfig, ``plugins`` not an iterable,
            ``lazy`` not a bool, or ``count`` not callable.
    """

    def __init__(self, config: EngineConfig | None = None, *, plugins: Iterable[object] = (),
                 lazy: bool = False, count: OperationCounter | None = None) -> None:
        if config is not None and not isinstance(config, EngineConfig):
            raise PolicyError(f"config: expected an EngineConfig, got {describe(config)}")
        try:
            if isinstance(plugins, str | bytes | bytearray | memoryview):
                raise TypeError
            self._plugins = tuple(plugins)
        except Exception:
            raise PolicyError(f"plugins: expected an iterable of plugin objects, got {describe(plugins)}") from None
        if type(lazy) is not bool:
            raise PolicyError(f"lazy: expected a bool, got {describe(lazy)}")
        if count is not None and not callable(count):
            raise PolicyError(f"count: expected a callable, got {describe(count)}")
        self._count = count
        self._config = config or EngineConfig()
        # Serialises start and publish; never taken on the call path.
        self._lock = threading.RLock()
        self._state: EngineState | None = None
        self._fault_listeners: tuple[FaultListener, ...] = ()
        self._table_fault_listeners: tuple[TableFaultListener, ...] = ()
        self._auth_listeners: tuple[AuthListener, ...] = ()
        self._tuned: TuneResult | None = None
        self._background: threading.Thread | None = None
        self._hurry = threading.Event()
        self._untested: frozenset[str] = frozenset()
        self._lazy = lazy
        self._base_providers: tuple[Provider, ...] = ()
        self._deferred_done = False
        # Version 0 routes nothing: a call misses, and its error path starts the engine
        # (see route_missing), so a lazy engine costs its callers nothing once started.
        self._table: RoutingTable = RoutingTable.empty()
        self.aead = AeadAPI(self)
        self.ed25519 = SignatureAPI(self, "sig.ed25519")
        self.mldsa65 = SignatureAPI(self, "sig.mldsa65")
        self.x25519 = KexAPI(self, "kex.x25519")
        self.mlkem768 = KemAPI(self, "kem.mlkem768")
        self.hkdf = HkdfAPI(self, "kdf.hkdf_sha256")
        if not lazy:
            self.start()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load plugins, run the power-on self-tests, publish the first table (idempotent).

        A lazy engine runs each operation's self-tests before its first use instead (see
        :meth:`selftest`): its first table routes nothing yet, and a call's miss runs the
        tests of its own operation and retries.
        """
        with self._lock:
            if self._state is not None:
                return
            from ._plugins import load_providers

            registry = load_providers(self._plugins, autoload=self._config.autoload_plugins)
            providers = tuple(sorted(registry.providers.values(), key=lambda p: p.name))
            every = frozenset(op for p in providers for op in p.implementations)
            self._untested = every if self._lazy else frozenset()
            results = () if self._lazy else _run_selftests(providers, every)
            self._state = EngineState(providers, tuple(registry.failures), results, tuple(registry.deferred))
            self._base_providers = providers
            self.publish(self.build_table())
            if autotune_enabled(self._config):
                self._background = threading.Thread(target=self._improve, name="xps-autotune", daemon=True)
                if not self._lazy:
                    self._background.start()
                # A lazy engine starts it once its first operation is self-tested and routed
                # (selftest()): warming numba up competes for the GIL, and the call that
                # started the engine should not wait for that.

    def _start_background(self) -> None:
        thread = self._background
        if thread is not None and thread.ident is None:
            with self._lock:
                if thread.ident is None:
                    try:
                        thread.start()
                    except RuntimeError:
                        # Python 3.12+ refuses new threads at interpreter shutdown (a first call
                        # from an atexit hook): the static table serves; the caller's call is not
                        # failed for an optimisation.
                        self._background = None

    # -- after start: warm-ups and autotune, off the hot path -------------------------------

    def _improve(self) -> None:
        """Background: prepare deferred providers, then autotune, publishing after each step."""
        # Wait a little first (unless wait_tuned() asks for it now): a short-lived process (a
        # CLI command, a script) exits before this starts, instead of waiting at exit for a
        # numba import in progress (it holds the GIL in long C calls: ~50 ms measured).
        self._hurry.wait(BACKGROUND_DELAY_SECONDS)
        try:
            self.add_deferred_providers()
            self.autotune()
        except Exception:  # never let background work take the process down; the static table stands
            _log().exception("background autotune failed; the static routing table stays in force")

    def wait_tuned(self, timeout: float | None = None) -> bool:
        """Block until the background warm-up and autotune finished (True) or ``timeout`` passed.

        Returns True at once when the engine does not tune itself.
        """
        self.start()
        thread = self._background
        if thread is None:
            return True
        self._start_background()
        self._hurry.set()
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def tuned(self) -> TuneResult | None:
        """The autotune result the table in force applies, if any."""
        return self._tuned

    def add_deferred_providers(self) -> tuple[Provider, ...]:
        """Run the plugins' deferred sources (kernel warm-ups) and add what they prepared.

        Blocks while kernels compile or load; the engine calls it on its background thread.
        A source that fails adds nothing (``xps providers`` shows why, e.g. the jit status).
        """
        from . import isa_mask

        state = self.state
        config = self._config
        mask = isa_mask.effective(config.isa_mask)
        added: list[Provider] = []
        with self._lock:  # claimed once: two callers must not both run the sources
            if self._deferred_done:
                return ()
            self._deferred_done = True
        for d in state.deferred:
            wanted = [n for n in d.provides if (config.providers is None or n in config.providers) and n not in mask]
            if not wanted or mask.intersection(d.backends):
                continue  # nothing it would prepare could be routed: do not pay for it (nor run it)
            try:
                added.extend(p for p in d.source() if isinstance(p, Provider))
            except Exception as exc:
                _log().warning("plugin %s: deferred providers failed: %s", d.plugin, type(exc).__name__)
        return self.add_providers(added) if added else ()

    def add_providers(self, providers: Iterable[Provider]) -> tuple[Provider, ...]:
        """Self-test ``providers``, add them to the engine and publish a table that may route to them.

        Providers whose names are taken are skipped. Returns those added.

        Raises:
            PolicyError: an element is not a Provider record.
        """
        new = _provider_records(providers)
        from xpscerpto.kat import run_selftest

        state = self.state
        taken = {p.name for p in state.providers}
        new = tuple(p for p in new if p.name not in taken)
        if not new:
            return ()
        results = [run_selftest(p.name, op, OPERATIONS[op].kind, impl, p.kat.get(op, ()))
                   for p in new for op, impl in sorted(p.implementations.items())]
        with self._lock:
            current = self.state
            # Checked again: the self-tests ran outside the lock, and another caller may have
            # added a provider of the same name meanwhile (found by a review: duplicates).
            taken = {p.name for p in current.providers}
            new = tuple(p for p in new if p.name not in taken)
            if not new:
                return ()
            kept = {p.name for p in new}
            self._state = replace(current, providers=tuple(sorted((*current.providers, *new), key=lambda p: p.name)),
                                  selftests=(*current.selftests, *(r for r in results if r.provider in kept)))
            self.rebuild(providers=(*self._table.providers, *new))
        return new

    def autotune(self, *, use_cache: bool = True, progress: Callable[[int, int], None] | None = None,
                 budget: float = 0.02, rounds: int = 5) -> TuneResult:
        """Measure the eligible implementations (or reuse the cached measurement) and publish the winners.

        Runs in the caller's thread (the engine calls it on its background thread after
        start; ``xps tune`` in the foreground). Calls in flight finish on the table they
        loaded; new calls use the winners.
        """
        from . import _tuner

        table = self.table
        result = _tuner.tune_table(table, self.tuning_fingerprint(), use_cache=use_cache, progress=progress,
                                   budget=budget, rounds=rounds)
        self._publish_tuning(result)
        return result

    def tuning_fingerprint(self) -> str:
        """What an autotune result for this engine depends on (the cache key): CPU, Python, the
        providers loaded at start and those plugins prepare later, and the incident mask."""
        from . import isa_mask
        from ._autotune import fingerprint

        table = self.table
        mask = isa_mask.effective(table.build_config.isa_mask if table.build_config else self._config.isa_mask)
        assert self._state is not None
        later = [f"{','.join(d.provides)}|{d.version() if callable(d.version) else d.version}"
                 for d in self._state.deferred]
        return fingerprint(self._base_providers, ",".join(sorted(mask)), later)

    def use_tuning(self, result: TuneResult | None) -> RoutingTable:
        """Publish a table that applies ``result`` (one measured elsewhere, or None for static).

        ``None`` rolls autotune back: the static choice (preference, then priority) again.

        Raises:
            PolicyError: ``result`` is not a TuneResult or None.
        """
        if result is not None and not isinstance(result, TuneResult):
            raise PolicyError(f"result: expected a TuneResult or None, got {describe(result)}")
        return self._publish_tuning(result)

    def _publish_tuning(self, result: TuneResult | None) -> RoutingTable:
        """Rebuild with ``result``; if that fails, the result in force stays (a result that
        breaks the build must not break every later build, an incident's mask change included)."""
        with self._lock:
            previous, self._tuned = self._tuned, result
            try:
                return self.rebuild()
            except BaseException:
                self._tuned = previous
                raise

    def rebuild(self, *, providers: Iterable[Provider] | None = None) -> RoutingTable:
        """Rebuild the table in force (its providers and configuration, preferences included)
        with the current autotune result, and publish it, in one step under the engine lock.

        Raises:
            PolicyError: ``providers`` holds something that is not a Provider record.
        """
        with self._lock:
            self.start()
            current = self._table
            provs = current.providers if providers is None else _provider_records(providers)
            config = current.build_config or self._config
            failures = {**current.kat_failures, **self._kat_failures()}
            table = build_table(provs, config, version=current.version + 1, kat_failures=failures,
                                on_fault=self._fault_sink(current.version + 1), tuned=self._tuned,
                                pending=self._untested, count=self._count)
            self.publish(table)
            return table

    def _kat_failures(self) -> dict[tuple[str, str], str]:
        state = self._state
        if state is None:
            return {}
        return {(r.provider, r.operation): r.failure or "failed" for r in state.selftests if not r.passed}

    @property
    def config(self) -> EngineConfig:
        """The configuration the table in force was built under (changed only by :meth:`publish`)."""
        return self._config

    @property
    def state(self) -> EngineState:
        """Providers, plugin failures and every self-test result (starts the engine and runs
        the self-tests not run yet)."""
        self.start()
        if self._untested:
            self.selftest()
        assert self._state is not None
        return self._state

    @property
    def table(self) -> RoutingTable:
        """The routing table in force now, every operation self-tested (introspection: a call
        reads the table directly and self-tests only its own operation, on first use)."""
        self.start()
        if self._untested:
            self.selftest()
        return self._table

    def selftest(self, operations: Iterable[str] | None = None) -> tuple[KatResult, ...]:
        """Run the self-tests not run yet (of ``operations``, default all) and publish a table
        that routes the tested operations; returns the results of this run.

        Each provider's implementation of an operation runs the engine's vectors for it and
        the provider's own; a failure keeps that implementation out of every table.
        """
        if operations is not None:
            try:
                operations = frozenset(operations)
            except Exception:
                raise PolicyError(f"operations: expected operation names, got {describe(operations)}") from None
        self.start()
        with self._lock:
            todo = self._untested if operations is None else self._untested & operations
            if not todo:
                return ()
            assert self._state is not None
            results = _run_selftests(self._state.providers, todo)
            self._state = replace(self._state, selftests=(*self._state.selftests, *results))
            self._untested = self._untested - todo
            self.rebuild()
        self._start_background()
        return results

    def prepare(self, algorithm: object) -> None:
        """Error path of a call that missed: start the engine, self-test the algorithm's operation."""
        if self._state is None:  # set once, under the lock, by start(): no lock to read it
            self.start()
        if self._untested:
            from ._routing import OPERATION_OF

            try:  # a str subclass's own __hash__ or __eq__ may raise: then it names nothing here
                op = OPERATION_OF.get(algorithm) if isinstance(algorithm, str) else None
            except Exception:
                op = None
            if op is not None and op in self._untested:
                self.selftest((op,))

    def build_table(self, providers: Iterable[Provider] | None = None,
                    config: EngineConfig | None = None) -> RoutingTable:
        """Build (not publish) the next table from ``providers`` (default: those loaded).

        Providers not loaded at start (capsules) must have passed their self-tests already.

        Raises:
            PolicyError: ``providers`` is not an iterable of Provider records, or ``config``
                not an EngineConfig.
        """
        if config is not None and not isinstance(config, EngineConfig):
            raise PolicyError(f"config: expected an EngineConfig, got {describe(config)}")
        if providers is not None:
            providers = _provider_records(providers)
        self.start()
        state = self._state
        assert state is not None
        provs = state.providers if providers is None else providers
        version = self._table.version + 1
        return build_table(provs, config or self._config, version=version,
                           kat_failures=self._kat_failures(), on_fault=self._fault_sink(version), tuned=self._tuned,
                           pending=self._untested, count=self._count)

    def add_fault_listener(self, listener: FaultListener) -> None:
        """Call ``listener(provider, operation, exc)`` when a routed provider raises unexpectedly.

        Runs on the failing call's thread, on the error path only; keep it short. A caller's
        bad input is diagnosed before this is considered, so it never reaches a listener.

        Raises:
            PolicyError: ``listener`` is not callable.
        """
        _callable(listener, "listener")
        with self._lock:
            self._fault_listeners = (*self._fault_listeners, listener)

    def remove_fault_listener(self, listener: FaultListener | TableFaultListener) -> None:
        """Stop calling ``listener`` (a no-op if it was never added)."""
        with self._lock:
            self._fault_listeners = tuple(f for f in self._fault_listeners if f != listener)
            self._table_fault_listeners = tuple(f for f in self._table_fault_listeners if f != listener)

    def add_table_fault_listener(self, listener: TableFaultListener) -> None:
        """Like :meth:`add_fault_listener`, plus the version of the table whose route faulted.

        A call keeps the table it loaded, so a fault can arrive after that table was replaced:
        the version says which routing (and so which provider instance) it belongs to, which
        is what lets an updater charge a fault to the capsule that raised it and not to the one
        serving now. Remove it with :meth:`remove_fault_listener`.

        Raises:
            PolicyError: ``listener`` is not callable.
        """
        _callable(listener, "listener")
        with self._lock:
            self._table_fault_listeners = (*self._table_fault_listeners, listener)

    def _fault_sink(self, version: int) -> Callable[[str, str, BaseException], None]:
        """The fault report of one table's routes: each report carries that table's version."""
        def sink(provider: str, operation: str, exc: BaseException) -> None:
            self._report_fault(provider, operation, exc, version)
        return sink

    def add_auth_failure_listener(self, listener: AuthListener) -> None:
        """Call ``listener(provider, operation, call)`` whenever a raw-API call fails authentication.

        ``call`` names the API call (``"decrypt"``, ``"open"``, ``"keyed.decrypt"``,
        ``"verify"``, ``"decapsulate"``); every XPS_ERR_AUTH the raw API raises is reported, and
        nothing else: no key, nonce, ciphertext or message, only those three strings. This is the
        hook for ``CRYPTO_FAIL_AUTH``: the owner of a journal attaches it (the engine has none)
        and rate-limits there (``AuditLog.record_rate_limited`` does), because a flood of
        forgeries calls it once per forgery. It runs on the failing call's thread, only on the
        error path, so a successful call pays nothing for it; an exception it raises is
        swallowed so that the caller still gets its AuthError.

        Raises:
            PolicyError: ``listener`` is not callable.

        Example:
            >>> import xpscerpto as xps
            >>> eng = xps.Engine()
            >>> seen = []
            >>> eng.add_auth_failure_listener(lambda *event: seen.append(event))
            >>> try:
            ...     eng.ed25519.verify(bytes(32), b"m", bytes(64))
            ... except xps.AuthError:
            ...     pass
            >>> seen
            [('openssl', 'sig.ed25519', 'verify')]
        """
        _callable(listener, "listener")
        with self._lock:
            self._auth_listeners = (*self._auth_listeners, listener)

    def remove_auth_failure_listener(self, listener: AuthListener) -> None:
        """Stop calling ``listener`` (a no-op if it was never added)."""
        with self._lock:
            self._auth_listeners = tuple(f for f in self._auth_listeners if f != listener)

    def _report_fault(self, provider: str, operation: str, exc: BaseException, table_version: int = 0) -> None:
        # The routes report on one channel: authentication failures arrive as AuthFailure.
        if isinstance(exc, AuthFailure):
            for auth_listener in self._auth_listeners:
                auth_listener(provider, operation, exc.call)
            return
        for listener in self._fault_listeners:
            listener(provider, operation, exc)
        for table_listener in self._table_fault_listeners:
            table_listener(provider, operation, exc, table_version)

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Hold the table lock from building a table to publishing it.

        The engine republishes on its own (an autotune result, kernels warmed up): a table
        built outside this lock can be overtaken by one of those and then refused by
        :meth:`publish` as not the next version. Calls take this lock only at an operation's
        first use (its self-test); hold it for building and publishing, not for slow work.

        Example:
            >>> with engine.publishing():                                    # doctest: +SKIP
            ...     engine.publish(engine.build_table(config=new_config), config=new_config)
        """
        with self._lock:
            yield

    def publish(self, table: RoutingTable, *, config: EngineConfig | None = None) -> RoutingTable:
        """Install ``table`` as the one every new call uses; returns the table it replaced.

        The swap is a single reference assignment: calls already running keep the table they
        loaded. Tables must be published in version order. ``config``, when given, is the
        configuration ``table`` was built under and becomes :attr:`config` in the same step
        (the hot-patch updater's audited emergency changes); only the updater publishes at
        runtime.

        Raises:
            PolicyError: ``table`` is not a RoutingTable or ``config`` not an EngineConfig.
            InternalError: ``table`` is not the next version.
        """
        if not isinstance(table, RoutingTable):
            raise PolicyError(f"table: expected a RoutingTable, got {describe(table)}")
        if config is not None and not isinstance(config, EngineConfig):
            raise PolicyError(f"config: expected an EngineConfig, got {describe(config)}")
        with self._lock:
            old = self._table
            if table.version != old.version + 1:
                raise InternalError(
                    f"table.version: expected {old.version + 1}, got {describe_int(table.version)}")
            if config is not None:
                self._config = config
            self._table = table
            return old

    def route_missing(self, table: RoutingTable, operation: str,
                      select: Callable[[RoutingTable], Mapping[str, R]]) -> R:
        """Error path of a call whose lookup in ``table`` missed ``operation``.

        Before the first start (table version 0) this starts the engine and returns the route
        from the first real table; otherwise it raises the PolicyError naming why nothing
        serves the operation.
        """
        if table.version == 0 or operation in table.pending:
            self.prepare(operation)
            try:
                return select(self._table)[operation]
            except KeyError:
                table = self._table
        reason = table.unrouted.get(operation, "not routed")
        raise PolicyError(f"{operation}: not available ({reason})")


def _run_selftests(providers: Iterable[Provider], operations: frozenset[str]) -> tuple[KatResult, ...]:
    """Each provider's implementation of each of ``operations``, against its vectors."""
    from xpscerpto.kat import run_selftest

    return tuple(run_selftest(p.name, op, OPERATIONS[op].kind, impl, p.kat.get(op, ()))
                 for p in providers for op, impl in sorted(p.implementations.items()) if op in operations)


def _pending(table: RoutingTable, algo: object) -> bool:
    """Whether ``algo`` missed only because its self-test has not run (error path)."""
    # Only a str (or the AEAD enum, a str) can be a name; hashing anything else may raise
    # (a released view: ValueError), and so may a str subclass's own __hash__.
    if not isinstance(algo, str):
        return False
    try:
        return algo in table.pending
    except Exception:
        return False


def _log() -> Any:
    import logging  # the error paths of background work only: not worth its import time

    return logging.getLogger("xpscerpto.engine")


def _callable(value: object, field: str) -> None:
    if not callable(value):
        raise PolicyError(f"{field}: expected a callable, got {describe(value)}")


# -- API namespaces --------------------------------------------------------------------------


class AeadAPI:
    """Raw AEAD primitives (the layer under the keyring): you manage keys and nonces.

    This is the hot path: one load of the routing table, one dict lookup, the checks the
    algorithm needs, and a direct call into the provider. Everything else (wrapping provider
    exceptions, naming the bad field) happens only on the error path.

    Keys given as :class:`SecretBytes` may be wiped by another thread at any time: a call whose
    key was wiped before it returned fails with XPS_ERR_KEY and returns nothing (see
    :mod:`xpscerpto.secret`). Every XPS_ERR_AUTH is reported to
    :meth:`Engine.add_auth_failure_listener` listeners.

    Nonces you pass yourself (``nonce=``, required under nonce policy ``app``) are checked for
    reuse, best-effort: sealing a *different* message (plaintext or aad) under an (algorithm,
    key, nonce) triple used within the last :data:`NONCE_CACHE_SIZE` explicit-nonce encryptions
    of this process raises XPS_ERR_NONCE, and the ciphertext made under the reused nonce is
    discarded, never returned. That record is one per process: these calls and every
    :class:`KeyedAead` (:meth:`keyed`) of every engine check and feed it, whatever object or
    buffer type holds the key. A KeyedAead also remembers every nonce it used itself, exactly.
    Sealing the same message again (a retry) yields the same bytes, reveals nothing new and is
    allowed. Not detected: older repeats (except of a KeyedAead's own nonces), repeats across
    processes, an explicit nonce equal to one the engine drew itself, calls and keyed AEADs with
    ``nonce_reuse="caller"`` (neither checked nor recorded), and (by design) AES-256-GCM-SIV,
    which is nonce-misuse resistant (RFC 8452). Auto nonces (``nonce=None``) are not recorded
    and cost nothing.

    Example:
        >>> import xpscerpto as xps
        >>> key = xps.random_bytes(32)
        >>> s = xps.aead.encrypt(xps.AEAD.AES_256_GCM, key, b"data", b"aad")
        >>> xps.aead.decrypt(xps.AEAD.AES_256_GCM, key, s.nonce, s.ciphertext, s.tag, b"aad")
        b'data'
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def encrypt(self, algo: str, key: Buffer | SecretBytes, plaintext: Buffer, aad: Buffer = b"",
                nonce: bytes | None = None, *, nonce_reuse: NonceReuse = "refuse") -> Sealed:
        """Encrypt; with ``nonce=None`` a fresh one is drawn from the CSPRNG (policy ``auto``).

        ``nonce_reuse="caller"`` says the caller guarantees the uniqueness of the nonce it
        passes (known-answer tests, a protocol's own nonce sequence): it is then not recorded
        or checked. It has no effect on auto nonces.

        Raises:
            PolicyError: unknown or unavailable algorithm; plaintext or aad not a byte buffer.
            KeyError_: wrong key size or type; a SecretBytes key wiped before the call returned.
            NonceError: wrong nonce size or type, none given under nonce policy ``app``, or a
                (key, nonce) pair this process already used (see the class docstring).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        table = self._engine._table
        secret: SecretBytes | None = None
        try:
            r = table.aead[algo]
            if type(key) is not bytes:
                if type(key) is SecretBytes:
                    secret, key = key, key._buf
                elif type(key) is not bytearray:  # its len() must be the bytes a provider reads
                    key = byte_buffer(key, "key", KeyError_)
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if nonce is not None:
                return _seal_explicit(r, key, secret, plaintext, aad, nonce, nonce_reuse)
            if not r.auto_nonce:
                raise NonceError("nonce: required (nonce policy is 'app')")
            nonce = (NONCE_GUARD[0] and _next_nonce(NONCES[r.nonce_size], None)) or refill_nonces(r.nonce_size)
            wire = (r.cipher if len(plaintext) <= r.limit else r.large)(key).encrypt(nonce, plaintext, aad)
            if secret is not None and secret._wiped:
                raise KeyError_("key: SecretBytes was wiped during the call")
            return _new_sealed(Sealed, (nonce, wire, r.tag_size))
        except Exception as exc:
            if secret is not None:
                key = secret
            if table.version == 0 or _pending(table, algo):  # first use: start, self-test, retry
                self._engine.prepare(algo)
                return self.encrypt(algo, key, plaintext, aad, nonce, nonce_reuse=nonce_reuse)
            err = _aead_error(table, algo, exc, key, nonce, "encrypt", nonce_required=False,
                              inputs=(("plaintext", plaintext, PolicyError), ("aad", aad, PolicyError)))
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def decrypt(self, algo: str, key: Buffer | SecretBytes, nonce: bytes, ciphertext: Buffer,
                tag: Buffer, aad: Buffer = b"") -> bytes:
        """Decrypt and verify; on any mismatch raise AuthError and return no plaintext.

        Small messages are joined with their tag for the provider (one copy); large ones
        (at least the provider's ``detached_from`` bytes) are opened without joining, by the
        provider's tag-separate decrypt where it has one, else through a buffer reused per
        thread. A ``ciphertext`` and ``tag`` unpacked from a :class:`Sealed` are not joined from
        ``WHOLE_WIRE_FROM`` bytes on: the sealed wire is decrypted as it is. :meth:`open` never
        copies when you still hold the :class:`Sealed`.

        Raises:
            PolicyError: unknown or unavailable algorithm; ciphertext or aad not a byte buffer.
            KeyError_: wrong key size or type; a SecretBytes key wiped before the call returned.
            NonceError: wrong nonce size or type.
            AuthError: the tag did not verify, or has the wrong size (no plaintext is returned).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        table = self._engine._table
        secret: SecretBytes | None = None
        try:
            r = table.aead[algo]
            if type(key) is not bytes:
                if type(key) is SecretBytes:
                    secret, key = key, key._buf
                elif type(key) is not bytearray:  # its len() must be the bytes a provider reads
                    key = byte_buffer(key, "key", KeyError_)
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if type(nonce) is not bytes or len(nonce) != r.nonce_size:
                nonce = _nonce_bytes(nonce, r.nonce_size)
            if type(tag) is not bytes:
                tag = byte_buffer(tag, "tag", AuthError)
            if len(tag) != r.tag_size:
                raise AuthError(f"tag: expected {r.tag_size} bytes, got {len(tag)}")
            n = len(ciphertext)
            if n >= WHOLE_WIRE_FROM and type(ciphertext) is memoryview and (
                    wire := whole_wire(ciphertext, tag)) is not None:  # an unpacked Sealed: no copy
                plaintext = (r.cipher if n <= r.limit else r.large)(key).decrypt(nonce, wire, aad)
            elif n < r.detached_from:
                # Joining reads any contiguous buffer as raw bytes (a view of 4-byte ints too):
                # let through only what the buffer rule accepts (attribute reads, no frame).
                if type(ciphertext) is bytes is type(tag):  # the common case: one check, one copy
                    wire = ciphertext + tag
                elif (type(ciphertext) is bytes or type(ciphertext) is bytearray or (
                        ciphertext if type(ciphertext) is memoryview else memoryview(ciphertext)
                ).format in BYTE_FORMATS) and (type(tag) is bytes or type(tag) is bytearray or (
                        tag if type(tag) is memoryview else memoryview(tag)).format in BYTE_FORMATS):
                    wire = b"".join((ciphertext, tag))
                else:
                    raise _BadBuffer("ciphertext or tag: not a byte buffer")
                plaintext = (r.cipher if n <= r.limit else r.large)(key).decrypt(nonce, wire, aad)
            else:
                # Read once: a provider that checks the tag and then decrypts must see one set of
                # bytes, whatever happens to a mutable buffer of the caller's meanwhile.
                plaintext = (r.decrypt_detached if n <= r.limit else r.large_detached)(
                    key, nonce, immutable(ciphertext), tag, aad)
            if secret is not None and secret._wiped:
                raise KeyError_("key: SecretBytes was wiped during the call")
            return plaintext
        except Exception as exc:
            if secret is not None:
                key = secret
            if table.version == 0 or _pending(table, algo):  # first use: start, self-test, retry
                self._engine.prepare(algo)
                return self.decrypt(algo, key, nonce, ciphertext, tag, aad)
            err = _aead_error(table, algo, exc, key, nonce, "decrypt", nonce_required=True,
                              inputs=(("ciphertext", ciphertext, PolicyError), ("tag", tag, AuthError),
                                      ("aad", aad, PolicyError)))
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def open(self, algo: str, key: Buffer | SecretBytes, sealed: Sealed, aad: Buffer = b"") -> bytes:
        """Decrypt a :class:`Sealed` without re-joining ciphertext and tag (zero copy).

        Raises:
            PolicyError: unknown or unavailable algorithm; ``sealed`` not a Sealed; aad not a
                byte buffer.
            KeyError_: wrong key size or type; a SecretBytes key wiped before the call returned.
            NonceError: the sealed nonce has the wrong size.
            AuthError: the tag did not verify, or the Sealed is of another tag size or too
                short (no plaintext is returned).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        table = self._engine._table
        secret: SecretBytes | None = None
        nonce = None
        try:
            r = table.aead[algo]
            if type(key) is not bytes:
                if type(key) is SecretBytes:
                    secret, key = key, key._buf
                elif type(key) is not bytearray:  # its len() must be the bytes a provider reads
                    key = byte_buffer(key, "key", KeyError_)
            if type(sealed) is not Sealed:  # a plain tuple must not pass for a Sealed
                raise TypeError
            nonce, wire, tag_size = sealed.nonce, sealed.ciphertext_and_tag, sealed.tag_size
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if len(nonce) != r.nonce_size:
                raise NonceError(f"nonce: expected {r.nonce_size} bytes, got {len(nonce)}")
            if tag_size != r.tag_size:
                raise AuthError(f"sealed: tag size {tag_size} does not match {r.operation}")
            plaintext = (r.cipher if len(wire) <= r.wire_limit else r.large)(key).decrypt(nonce, wire, aad)
            if secret is not None and secret._wiped:
                raise KeyError_("key: SecretBytes was wiped during the call")
            return plaintext
        except Exception as exc:
            if secret is not None:
                key = secret
            if table.version == 0 or _pending(table, algo):  # first use: start, self-test, retry
                self._engine.prepare(algo)
                return self.open(algo, key, sealed, aad)
            if type(sealed) is not Sealed:
                raise PolicyError(f"sealed: expected a Sealed, got {describe(sealed)}") from None
            err = _aead_error(table, algo, exc, key, nonce, "open", nonce_required=True,
                              inputs=(("sealed.ciphertext", sealed.ciphertext_and_tag, PolicyError),
                                      ("aad", aad, PolicyError)), wire=sealed.ciphertext_and_tag)
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def keyed(self, algo: str, key: Buffer | SecretBytes, *, nonce_reuse: NonceReuse = "refuse",
              report_auth_failures: bool = True) -> KeyedAead:
        """An AEAD bound to one key, like Tink's primitive: no per-call key setup.

        The provider's keyed cipher is built once and rebuilt whenever a new routing table is
        published, so hot-patching applies to keyed AEADs too. The key is copied into a
        SecretBytes the object owns (``wipe()`` it when done); the provider's internal key
        schedule lives until the object is dropped.

        Args:
            algo: the AEAD algorithm.
            key: the key; a SecretBytes is copied (wiping it later does not affect this object).
            nonce_reuse: ``"refuse"`` (default): every nonce you pass to :meth:`KeyedAead.encrypt`
                is recorded, exactly by the object and in the process's record that the
                stateless API and every other KeyedAead share (see :class:`AeadAPI`); sealing
                another message under a nonce already used with this key, by this object or
                any other of the process within that record, raises XPS_ERR_NONCE (the
                ciphertext is discarded, never returned; the same message again is allowed).
                At most :data:`KEYED_NONCE_LIMIT` explicit nonces are sealed per key, counted
                across every KeyedAead of the process over the same key bytes; past that, new
                explicit nonces are refused until the key is rotated. ``"caller"``: the caller
                guarantees uniqueness and nothing is recorded or checked, for protocols that own
                their nonce sequence (a channel's counter nonces, the keyring's random nonces).
                Auto nonces (``nonce=None``) are never recorded, and AES-256-GCM-SIV (nonce
                misuse resistant) is not checked.
            report_auth_failures: report each failed decrypt to the engine's auth-failure
                listeners (``CRYPTO_FAIL_AUTH``). ``False`` for an owner that journals its own
                failures with more context (the keyring), so one failure is one record.

        Raises:
            PolicyError: unknown or unavailable algorithm, an unknown ``nonce_reuse``, or
                ``report_auth_failures`` not a bool.
            KeyError_: wrong key size or type, or a wiped SecretBytes.
        """
        return KeyedAead(self._engine, algo, key, nonce_reuse=nonce_reuse, report_auth_failures=report_auth_failures)

    def info(self, algo: str) -> dict[str, Any]:
        """Sizes and serving provider of ``algo``: key_size, nonce_size, tag_size, provider.

        Raises:
            PolicyError: unknown or unavailable algorithm.
        """
        self._engine.prepare(algo)
        table = self._engine._table
        try:
            r = table.aead[algo]
        except Exception as exc:
            raise _aead_error(table, algo, exc, b"", None, "info", nonce_required=False, inputs=()) from None
        return {"operation": r.operation, "provider": r.provider, "key_size": r.key_size,
                "nonce_size": r.nonce_size, "tag_size": r.tag_size}


def _seal_explicit(r: AeadRoute, key: Buffer, secret: SecretBytes | None, plaintext: Buffer, aad: Buffer,
                   nonce: object, nonce_reuse: object) -> Sealed:
    """Encrypt under a caller's nonce: checked, copied to bytes, and recorded in the process cache."""
    nonce_reuse = _nonce_reuse(nonce_reuse)
    nonce_b = _nonce_bytes(nonce, r.nonce_size)
    wire = (r.cipher if len(plaintext) <= r.limit else r.large)(key).encrypt(nonce_b, plaintext, aad)
    if secret is not None and secret._wiped:
        raise KeyError_("key: SecretBytes was wiped during the call")
    if nonce_reuse == "refuse" and not r.misuse_resistant:
        _NONCES.record(r.operation, key, nonce_b, wire, r.tag_size)
    return _new_sealed(Sealed, (nonce_b, wire, r.tag_size))


def _nonce_reuse(value: object) -> NonceReuse:
    if value == "refuse" and type(value) is str:
        return "refuse"
    if value == "caller" and type(value) is str:
        return "caller"
    raise PolicyError(f"nonce_reuse: expected 'refuse' or 'caller', got {describe(value)}")


def _nonce_bytes(nonce: object, size: int) -> bytes:
    """A caller's nonce as immutable bytes of the right size (Sealed.nonce must not alias it)."""
    nonce = byte_buffer(nonce, "nonce", NonceError)
    if len(nonce) != size:
        raise NonceError(f"nonce: expected {size} bytes, got {len(nonce)}")
    return nonce if type(nonce) is bytes else bytes(nonce)


def _tag64(wire: bytes, tag_size: int) -> int:
    """64 bits of a ciphertext's tag: what tells two messages sealed under one (key, nonce) apart."""
    return int.from_bytes(wire[len(wire) - tag_size:len(wire) - tag_size + 8], "big")


_REUSED = ("nonce: already used with this key for another message (a nonce must never repeat "
           "under one key)")


class _NonceCache:
    """The process's best-effort record of explicit (key, nonce) pairs: the stateless API's and
    every KeyedAead's.

    A key is known by its *key id*, a 128-bit BLAKE2b of (algorithm, key) keyed with a
    per-process random key: nothing here holds the key, and one key has one id whatever object
    or buffer it came in. Maps a 64-bit keyed digest of (key id, nonce) to 64 bits of the tag
    that pair sealed, in insertion order; the oldest is forgotten past ``size``. Sealing the same
    message again under the same pair reproduces the same ciphertext and tag, reveals nothing
    new and is allowed (a retry); a different message is refused and its ciphertext discarded,
    never returned. KeyedAeads also count, per key id, the pairs new to the record they sealed
    (for :data:`KEYED_NONCE_LIMIT`); the counts of at most ``size`` keys are kept, the oldest key
    forgotten first. A lock makes check-and-record one step; only explicit-nonce calls come here.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        # OrderedDicts: dropping the oldest of a plain dict (del d[next(iter(d))]) rescans the
        # deleted slots at its front, tens of microseconds per call once the record is full.
        self._seen: OrderedDict[int, int] = OrderedDict()
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self._hash_key = os.urandom(32)
        # Keyed hash states copied per call: the key block is compressed once, not on every
        # explicit-nonce call (0.4 us of its cost). One per operation for the key ids.
        self._prefix: dict[str, Any] = {}
        self._pair = hashlib.blake2b(digest_size=8, key=self._hash_key, person=b"xps-nonce-v2")

    def key_id(self, operation: str, key: Buffer) -> bytes:
        """What stands for ``key`` under ``operation`` in this record (never the key)."""
        # The algorithm is part of it: one key under two algorithms is two keystreams.
        base = self._prefix.get(operation)
        if base is None:
            base = self._prefix.setdefault(operation, hashlib.blake2b(
                operation.encode(), digest_size=16, key=self._hash_key, person=b"xps-key-v1"))
        h = base.copy()
        h.update(bytes((len(key) & 0xFF,)))
        h.update(key)
        key_id: bytes = h.digest()
        return key_id

    def _pair_of(self, key_id: bytes, nonce: bytes) -> int:
        h = self._pair.copy()
        h.update(key_id)
        h.update(nonce)
        return int.from_bytes(h.digest(), "big")

    def record(self, operation: str, key: Buffer, nonce: bytes, wire: bytes, tag_size: int) -> None:
        """Record a stateless call's explicit nonce; refuse one that sealed another message."""
        pair, tag = self._pair_of(self.key_id(operation, key), nonce), _tag64(wire, tag_size)
        with self._lock:
            if self._seen.setdefault(pair, tag) != tag:
                raise NonceError(_REUSED)
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)

    def record_keyed(self, own: dict[bytes, int], key_id: bytes, nonce: bytes, wire: bytes, tag_size: int) -> None:
        """Record a KeyedAead's explicit nonce in its exact record ``own`` and in the process's.

        Refuses a nonce that sealed another message under this key (in ``own`` or in the
        process's record), and one new to both once this key (counted across KeyedAeads) or
        this object has sealed under :data:`KEYED_NONCE_LIMIT` of them. Runs after the provider
        call (the tag tells the messages apart) and before the result is returned, so a
        ciphertext under a reused nonce never leaves the KeyedAead.
        """
        pair, tag = self._pair_of(key_id, nonce), _tag64(wire, tag_size)
        with self._lock:
            mine, known = own.get(nonce), self._seen.get(pair)
            if (mine is not None and mine != tag) or (known is not None and known != tag):
                raise NonceError(_REUSED)
            if mine is None:
                count = self._counts.get(key_id, 0)
                if len(own) >= KEYED_NONCE_LIMIT or (known is None and count >= KEYED_NONCE_LIMIT):
                    raise NonceError(f"nonce: this key has sealed under {KEYED_NONCE_LIMIT} application-supplied "
                                     "nonces, the limit per key; rotate the key (or use auto nonces)")
                own[nonce] = tag
                if known is None:  # a retry of another object's message is not a new nonce for the key
                    self._counts[key_id] = count + 1
                    if len(self._counts) > self._size:
                        self._counts.popitem(last=False)
            if known is None:
                self._seen[pair] = tag
                if len(self._seen) > self._size:
                    self._seen.popitem(last=False)


_NONCES = _NonceCache(NONCE_CACHE_SIZE)


class _Bound:
    """A keyed cipher for one table version (replaced whole, never mutated).

    ``nonces`` is the KeyedAead's record of explicit nonces, or None when nothing is recorded
    (``nonce_reuse="caller"``, or a nonce-misuse-resistant algorithm).
    """

    __slots__ = ("auto_nonce", "cipher", "large", "limit", "nonce_size", "nonces", "route", "tag_size", "version",
                 "wire_limit")

    def __init__(self, version: int, route: AeadRoute, cipher: AeadCipher,
                 nonces: dict[bytes, int] | None = None, large: AeadCipher | None = None) -> None:
        self.version, self.route, self.cipher = version, route, cipher
        # The measured split for keyed calls: ``cipher`` up to ``limit`` bytes, ``large`` above.
        self.large = cipher if large is None else large
        self.limit = route.keyed_limit if large is not None else NO_LIMIT
        self.wire_limit = route.keyed_wire_limit if large is not None else NO_LIMIT
        self.nonce_size, self.tag_size, self.auto_nonce = route.nonce_size, route.tag_size, route.auto_nonce
        self.nonces = None if route.misuse_resistant else nonces


class _WipedCipher:
    """Stands in for a wiped KeyedAead's cipher: its version (-1) makes every call re-bind,
    which refuses the wiped key, so this is never reached; if it were, it refuses too."""

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        raise KeyError_("key: this KeyedAead was wiped")

    def decrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        raise KeyError_("key: this KeyedAead was wiped")


_WIPED = _WipedCipher()


class KeyedAead:
    """An AEAD bound to one key; see :meth:`AeadAPI.keyed`.

    Example:
        >>> import xpscerpto as xps
        >>> k = xps.aead.keyed("AES-256-GCM", xps.random_bytes(32))
        >>> s = k.encrypt(b"data", b"aad")
        >>> k.decrypt(s.nonce, s.ciphertext_and_tag, b"aad")
        b'data'
    """

    __slots__ = ("_algo", "_bound", "_decrypt_call", "_engine", "_key", "_key_id", "_nonces")

    def __init__(self, engine: Engine, algo: str, key: Buffer | SecretBytes, *,
                 nonce_reuse: NonceReuse = "refuse", report_auth_failures: bool = True) -> None:
        nonce_reuse = _nonce_reuse(nonce_reuse)
        if type(report_auth_failures) is not bool:
            raise PolicyError(f"report_auth_failures: expected a bool, got {describe(report_auth_failures)}")
        # The call name reported to auth-failure listeners; None reports nothing.
        self._decrypt_call = "keyed.decrypt" if report_auth_failures else None
        self._engine = engine
        self._algo = algo
        self._nonces: dict[bytes, int] | None = {} if nonce_reuse == "refuse" else None
        # The key's id in the process's record of nonces, made at the first explicit nonce: an
        # object used with auto nonces only never pays for it.
        self._key_id: bytes | None = None
        self._key = _own_copy(key)
        try:
            engine.prepare(algo)
            self._bound = self._bind(engine._table)
        except BaseException:
            self._key.wipe()
            raise

    def _bind(self, table: RoutingTable) -> _Bound:
        try:
            r = table.aead[self._algo]
            if len(self._key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(self._key)}")
            small = r.keyed_cipher(self._key._buf)
            large = None if r.keyed_large is r.keyed_cipher else r.keyed_large(self._key._buf)
            bound = _Bound(table.version, r, small, self._nonces, large)
        except Exception as exc:
            if _pending(table, self._algo):  # a table published since, for another operation's first use
                self._engine.prepare(self._algo)
                return self._bind(self._engine._table)
            raise _aead_error(table, self._algo, exc, self._key, None, "keyed", nonce_required=False,
                              inputs=(), keyed=True) from None
        # One attribute holds version and cipher together, so no call pairs a new table with an
        # old cipher; a call that loaded the old table keeps it (and so its drain) until it returns.
        self._bound = bound
        if self._key._wiped:  # wipe() ran meanwhile: do not leave a live cipher installed
            self._bound = _Bound(-1, r, _WIPED)
            raise KeyError_("key: this KeyedAead was wiped")
        return bound

    def encrypt(self, plaintext: Buffer, aad: Buffer = b"", nonce: bytes | None = None) -> Sealed:
        """Encrypt; with ``nonce=None`` a fresh one is drawn (nonce policy ``auto``).

        Raises:
            PolicyError: plaintext or aad not a byte buffer; the algorithm is no longer routed.
            KeyError_: the object was wiped (also when that happened during the call).
            NonceError: wrong nonce size or type; none given under nonce policy ``app``; with
                ``nonce_reuse="refuse"``, a nonce already used with this key for another message
                (by this object, another KeyedAead or the stateless API of this process, see
                :meth:`AeadAPI.keyed`) or past :data:`KEYED_NONCE_LIMIT` explicit nonces under
                this key.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        table = self._engine._table
        b = self._bound
        try:
            if b.version != table.version:
                b = self._bind(table)
            if nonce is None:
                if not b.auto_nonce:
                    raise NonceError("nonce: required (nonce policy is 'app')")
                nonce = (NONCE_GUARD[0] and _next_nonce(NONCES[b.nonce_size], None)) or refill_nonces(b.nonce_size)
                wire = (b.cipher if len(plaintext) <= b.limit else b.large).encrypt(nonce, plaintext, aad)
            else:
                # Converted here too: the Sealed keeps an immutable copy of the caller's nonce.
                if type(nonce) is not bytes or len(nonce) != b.nonce_size:
                    nonce = _nonce_bytes(nonce, b.nonce_size)
                # One implementation of an explicit nonce (its checks and the record of nonces);
                # its XpsError passes through the handler below unchanged.
                return _new_sealed(Sealed, (nonce, self.encrypt_wire(nonce, plaintext, aad), b.tag_size))
            if self._key._wiped:
                raise KeyError_("key: this KeyedAead was wiped during the call")
            return _new_sealed(Sealed, (nonce, wire, b.tag_size))
        except Exception as exc:
            err = _aead_error(table, self._algo, exc, self._key, nonce, "keyed.encrypt", nonce_required=False,
                              inputs=(("plaintext", plaintext, PolicyError), ("aad", aad, PolicyError)), keyed=True)
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def encrypt_wire(self, nonce: bytes, plaintext: Buffer, aad: Buffer = b"") -> bytes:
        """``ciphertext || tag`` under an explicit ``nonce``: :meth:`encrypt` without the
        :class:`Sealed` around it, for protocols that keep their own nonces (the secure
        channel's counters, the keyring's blobs: they send only ``ciphertext || tag``, so a
        Sealed per record was built only to be unpacked). Same checks, same errors, and with
        ``nonce_reuse="refuse"`` the same record of nonces.

        Example:
            >>> import xpscerpto as xps
            >>> k = xps.aead.keyed("AES-256-GCM", bytes(32))
            >>> wire = k.encrypt_wire(bytes(12), b"data")
            >>> k.decrypt(bytes(12), wire)
            b'data'
        """
        table = self._engine._table
        b = self._bound
        try:
            if b.version != table.version:
                b = self._bind(table)
            if type(nonce) is not bytes or len(nonce) != b.nonce_size:
                nonce = _nonce_bytes(nonce, b.nonce_size)
            wire = (b.cipher if len(plaintext) <= b.limit else b.large).encrypt(nonce, plaintext, aad)
            if b.nonces is not None:
                key_id = self._key_id
                if key_id is None:
                    key_id = self._key_id = _NONCES.key_id(b.route.operation, self._key._buf)
                _NONCES.record_keyed(b.nonces, key_id, nonce, wire, b.tag_size)
            if self._key._wiped:
                raise KeyError_("key: this KeyedAead was wiped during the call")
            return wire
        except Exception as exc:
            err = _aead_error(table, self._algo, exc, self._key, nonce, "keyed.encrypt", nonce_required=True,
                              inputs=(("plaintext", plaintext, PolicyError), ("aad", aad, PolicyError)), keyed=True)
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def decrypt(self, nonce: bytes, ciphertext_and_tag: Buffer, aad: Buffer = b"") -> bytes:
        """Open ``ciphertext || tag``; AuthError (and no plaintext) if it does not verify.

        Raises:
            PolicyError: ciphertext_and_tag or aad not a byte buffer.
            KeyError_: the object was wiped (also when that happened during the call).
            NonceError: wrong nonce size or type.
            AuthError: the tag did not verify, or the input is shorter than a tag.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        table = self._engine._table
        b = self._bound
        try:
            if b.version != table.version:
                b = self._bind(table)
            if type(nonce) is not bytes or len(nonce) != b.nonce_size:
                nonce = _nonce_bytes(nonce, b.nonce_size)
            if type(ciphertext_and_tag) is not bytes:
                # Read once: a provider that checks the tag and then decrypts must see one set of
                # bytes, whatever happens to a mutable buffer of the caller's meanwhile.
                ciphertext_and_tag = immutable(ciphertext_and_tag)
            plaintext = (b.cipher if len(ciphertext_and_tag) <= b.wire_limit else b.large).decrypt(
                nonce, ciphertext_and_tag, aad)
            if self._key._wiped:
                raise KeyError_("key: this KeyedAead was wiped during the call")
            return plaintext
        except Exception as exc:
            err = _aead_error(table, self._algo, exc, self._key, nonce, self._decrypt_call, nonce_required=True,
                              inputs=(("ciphertext_and_tag", ciphertext_and_tag, PolicyError),
                                      ("aad", aad, PolicyError)), wire=ciphertext_and_tag, keyed=True)
            try:
                raise err from err.__cause__
            finally:
                del err  # else the error and this frame hold each other (see _aead_error)

    def open(self, sealed: Sealed, aad: Buffer = b"") -> bytes:
        """Decrypt a :class:`Sealed` from :meth:`encrypt`.

        Raises:
            PolicyError: ``sealed`` is not a Sealed; see :meth:`decrypt` for the rest.
        """
        if type(sealed) is not Sealed:
            raise PolicyError(f"sealed: expected a Sealed, got {describe(sealed)}")
        return self.decrypt(sealed.nonce, sealed.ciphertext_and_tag, aad)

    def wipe(self) -> None:
        """Wipe the key copy and drop the provider's keyed cipher; the object is unusable after.

        A call running on another thread meanwhile fails with XPS_ERR_KEY (its result is
        discarded), as with any wiped SecretBytes.
        """
        self._key.wipe()  # marks the key wiped first: racing calls then discard their results
        self._bound = _Bound(-1, self._bound.route, _WIPED)
        if self._nonces is not None:
            self._nonces.clear()

    def __repr__(self) -> str:
        return f"<KeyedAead {self._algo} via {self._bound.route.keyed_provider}>"

    # Like the other key objects: a pickle would carry the key (a provider's keyed cipher may
    # pickle its raw key), and a copy would alias this one's key and nonce record, so that
    # wiping the copy wipes the original.
    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise PolicyError("KeyedAead holds a secret and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise PolicyError("KeyedAead holds a secret and cannot be copied; call aead.keyed() again")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise PolicyError("KeyedAead holds a secret and cannot be copied; call aead.keyed() again")


def _still_wiped(secret: SecretBytes) -> bool:
    """Read the flag afresh (another thread may have set it since the last test)."""
    return secret._wiped


def _own_copy(key: object) -> SecretBytes:
    """A SecretBytes copy of ``key`` that a wipe of the original during the copy cannot poison."""
    if isinstance(key, SecretBytes):
        if key._wiped:
            raise KeyError_("key: SecretBytes was wiped")
        view = key.view()
        try:
            copy = SecretBytes(view)
        finally:
            view.release()
        if _still_wiped(key):  # wiped while copying: the copy may hold zeros
            copy.wipe()
            raise KeyError_("key: SecretBytes was wiped during the call")
        return copy
    return SecretBytes(byte_buffer(key, "key", KeyError_))


def _provider_records(value: object) -> tuple[Provider, ...]:
    """``value`` as a tuple of Provider records, else PolicyError (never the iterable's own error)."""
    try:
        items = tuple(cast("Iterable[object]", value))
    except Exception:
        raise PolicyError(f"providers: expected an iterable of Provider, got {describe(value)}") from None
    records: list[Provider] = []
    for p in items:
        if not isinstance(p, Provider):
            raise PolicyError(f"providers: expected Provider records, got {describe(p)}")
        records.append(p)
    return tuple(records)


def _aead_error(table: RoutingTable, algo: Any, exc: Exception, key: Any, nonce: Any, call: str | None, *,
                nonce_required: bool, inputs: tuple[tuple[str, Any, type[XpsError]], ...],
                wire: Any = None, keyed: bool = False) -> XpsError:
    """The typed error for a failed AEAD call (error path only).

    A frame that raises it must not keep it in a local (``del`` it in a ``finally``): its
    traceback leads back to that frame, and the cycle would keep the caller's buffers (and a
    provider's pointer on one) alive until a garbage collection, which may clear an exported
    memoryview before its export and crash the interpreter.
    """
    try:
        r = table.aead[algo]
    except Exception:  # KeyError; TypeError (unhashable); ValueError (a released view's hash)
        try:  # a str subclass's own __hash__ or __eq__ may raise too
            op = _AEAD_NAMES.get(algo) if isinstance(algo, str) else None
        except Exception:
            op = None
        if op is not None and op in table.unrouted:  # printed by its own public name, not the caller's value
            return PolicyError(f"algo: {OPERATIONS[op].aliases[0]} is not available ({table.unrouted[op]})")
        # Never the value itself: a key passed in the algorithm's place must not come back.
        return PolicyError(f"algo: unknown AEAD algorithm ({describe(algo)}); known: {_KNOWN}")
    err = r.diagnose(exc, key, nonce, call, nonce_required=nonce_required, inputs=inputs, wire=wire, keyed=keyed)
    if not isinstance(err, InternalError):
        # A caller's input (or a failed tag) explains it, so the provider's frames are no help:
        # they are not reachable from the error the caller gets, through its context or its own
        # traceback. They may hold a plaintext decrypted before its tag was checked, the key, or
        # a pointer on the caller's buffer that would keep it exported while the error is held.
        _drop_frames(exc)
        _drop_frames(err)
    return err


def _drop_frames(exc: BaseException | None) -> None:
    """Clear the tracebacks of ``exc`` and of the exceptions chained to it (error path only)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        exc.__traceback__ = None
        if exc.__cause__ is not None:
            _drop_frames(exc.__cause__)
        exc = exc.__context__


_AEAD_NAMES = {name: op for op, spec in OPERATIONS.items() if spec.kind == "aead"
               for name in (op, *spec.aliases)}
_KNOWN = ", ".join(spec.aliases[0] for spec in OPERATIONS.values() if spec.kind == "aead")
# Auto nonces: the next of a batch of os.urandom output, unless the fork guard says the batch
# may be a parent's (see _nonce_source); about 0.3 us less per call than a system call each.
_next_nonce = next
# tuple's constructor: builds a Sealed from checked parts without running Sealed.__new__.
_new_sealed = tuple.__new__
