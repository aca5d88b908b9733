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

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._namespaces import HkdfAPI, KemAPI, KexAPI, SignatureAPI
from ._routes import AeadRoute
from ._routing import RoutingTable, build_table
from .errors import AuthError, InternalError, KeyError_, NonceError, PolicyError, XpsError
from .interfaces import OPERATIONS, AeadCipher, Buffer, Provider
from .sealed import Sealed
from .secret import SecretBytes
from .settings import EngineConfig

if TYPE_CHECKING:
    from xpscerpto.kat import KatResult

    from ._plugins import PluginFailure

__all__ = ["AeadAPI", "Engine", "HkdfAPI", "KemAPI", "KexAPI", "KeyedAead", "SignatureAPI", "random_bytes"]

R = TypeVar("R")

_MAX_RANDOM = 1 << 20


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG.

    Example:
        >>> len(random_bytes(32))
        32
    """
    if type(n) is not int:
        raise KeyError_(f"n: expected an int, got {type(n).__name__}")
    if not 0 <= n <= _MAX_RANDOM:
        raise KeyError_(f"n: expected 0..{_MAX_RANDOM}, got {n}")
    return os.urandom(n)


@dataclass(frozen=True, slots=True)
class EngineState:
    """What an engine loaded at start: providers, plugin failures, self-test results."""

    providers: tuple[Provider, ...]
    failures: tuple[PluginFailure, ...]
    selftests: tuple[KatResult, ...]


class Engine:
    """A crypto-agility engine: providers, a routing table, and the API over it.

    Args:
        config: routing policy, nonce mode and preferences (default: permissive, auto nonce).
        plugins: extra plugin objects registered after the built-ins (embedders, tests).
        lazy: defer loading providers and self-tests until the first call.
    """

    def __init__(self, config: EngineConfig | None = None, *, plugins: Iterable[object] = (),
                 lazy: bool = False) -> None:
        self._config = config or EngineConfig()
        self._plugins = tuple(plugins)
        # Serialises start and publish; never taken on the call path.
        self._lock = threading.RLock()
        self._state: EngineState | None = None
        self._fault_listeners: tuple[Callable[[str, str, BaseException], None], ...] = ()
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
        """Load plugins, run the power-on self-tests, publish the first table (idempotent)."""
        with self._lock:
            if self._state is not None:
                return
            from xpscerpto.kat import run_selftest

            from ._plugins import load_providers

            registry = load_providers(self._plugins, autoload=self._config.autoload_plugins)
            providers = tuple(sorted(registry.providers.values(), key=lambda p: p.name))
            results = []
            for p in providers:
                for op, impl in sorted(p.implementations.items()):
                    results.append(run_selftest(p.name, op, OPERATIONS[op].kind, impl,
                                                p.kat.get(op, ())))
            self._state = EngineState(providers, tuple(registry.failures), tuple(results))
            self.publish(self.build_table())

    @property
    def config(self) -> EngineConfig:
        """The configuration the table in force was built under (changed only by :meth:`publish`)."""
        return self._config

    @property
    def state(self) -> EngineState:
        """Providers, plugin failures and self-test results (starts the engine if needed)."""
        self.start()
        assert self._state is not None
        return self._state

    @property
    def table(self) -> RoutingTable:
        """The routing table in force now (starts the engine if needed)."""
        self.start()
        return self._table

    def build_table(self, providers: Iterable[Provider] | None = None,
                    config: EngineConfig | None = None) -> RoutingTable:
        """Build (not publish) the next table from ``providers`` (default: those loaded).

        Providers not loaded at start (capsules) must have passed their self-tests already.
        """
        state = self.state
        provs = state.providers if providers is None else tuple(providers)
        failures = {(r.provider, r.operation): r.failure or "failed"
                    for r in state.selftests if not r.passed}
        return build_table(provs, config or self._config, version=self._table.version + 1,
                           kat_failures=failures, on_fault=self._report_fault)

    def add_fault_listener(self, listener: Callable[[str, str, BaseException], None]) -> None:
        """Call ``listener(provider, operation, exc)`` when a routed provider raises unexpectedly.

        Runs on the failing call's thread, on the error path only; keep it short.
        """
        with self._lock:
            self._fault_listeners = (*self._fault_listeners, listener)

    def remove_fault_listener(self, listener: Callable[[str, str, BaseException], None]) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            self._fault_listeners = tuple(f for f in self._fault_listeners if f != listener)

    def _report_fault(self, provider: str, operation: str, exc: BaseException) -> None:
        for listener in self._fault_listeners:
            listener(provider, operation, exc)

    def publish(self, table: RoutingTable, *, config: EngineConfig | None = None) -> RoutingTable:
        """Install ``table`` as the one every new call uses; returns the table it replaced.

        The swap is a single reference assignment: calls already running keep the table they
        loaded. Tables must be published in version order. ``config``, when given, is the
        configuration ``table`` was built under and becomes :attr:`config` in the same step
        (the hot-patch updater's audited emergency changes); only the updater publishes at
        runtime.
        """
        with self._lock:
            old = self._table
            if table.version != old.version + 1:
                raise InternalError(
                    f"table.version: expected {old.version + 1}, got {table.version}")
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
        if table.version == 0:
            self.start()
            try:
                return select(self._table)[operation]
            except KeyError:
                table = self._table
        reason = table.unrouted.get(operation, "not routed")
        raise PolicyError(f"{operation}: not available ({reason})")


# -- API namespaces --------------------------------------------------------------------------


class AeadAPI:
    """Raw AEAD primitives (the layer under the keyring): you manage keys and nonces.

    This is the hot path: one load of the routing table, one dict lookup, the checks the
    algorithm needs, and a direct call into the provider. Everything else (wrapping provider
    exceptions, naming the bad field) happens only on the error path.

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
                nonce: bytes | None = None) -> Sealed:
        """Encrypt; with ``nonce=None`` a fresh one is drawn from the CSPRNG (policy ``auto``).

        Raises:
            PolicyError: unknown or unavailable algorithm.
            KeyError_: wrong key size or type.
            NonceError: wrong nonce size, or none given under nonce policy ``app``.
        """
        table = self._engine._table
        try:
            r = table.aead[algo]
            if type(key) is SecretBytes:
                key = key._buf
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if nonce is None:
                if not r.auto_nonce:
                    raise NonceError("nonce: required (nonce policy is 'app')")
                nonce = _urandom(r.nonce_size)
            elif len(nonce) != r.nonce_size:
                raise NonceError(f"nonce: expected {r.nonce_size} bytes, got {len(nonce)}")
            return Sealed((nonce, r.cipher(key).encrypt(nonce, plaintext, aad), r.tag_size))
        except Exception as exc:
            if table.version == 0:  # first call on a lazy engine: the lookup missed before anything ran
                self._engine.start()
                return self.encrypt(algo, key, plaintext, aad, nonce)
            err = _aead_error(table, algo, exc, key, nonce, nonce_required=False,
                              inputs=(("plaintext", plaintext, PolicyError), ("aad", aad, PolicyError)))
            raise err from err.__cause__

    def decrypt(self, algo: str, key: Buffer | SecretBytes, nonce: bytes, ciphertext: Buffer,
                tag: Buffer, aad: Buffer = b"") -> bytes:
        """Decrypt and verify; on any mismatch raise AuthError and return no plaintext.

        ``ciphertext`` and ``tag`` are joined for the provider (one copy); :meth:`open`
        avoids that copy when you still hold the :class:`Sealed`.
        """
        table = self._engine._table
        try:
            r = table.aead[algo]
            if type(key) is SecretBytes:
                key = key._buf
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if len(nonce) != r.nonce_size:
                raise NonceError(f"nonce: expected {r.nonce_size} bytes, got {len(nonce)}")
            if len(tag) != r.tag_size:
                raise AuthError(f"tag: expected {r.tag_size} bytes, got {len(tag)}")
            return r.cipher(key).decrypt(nonce, b"".join((ciphertext, tag)), aad)
        except Exception as exc:
            if table.version == 0:  # first call on a lazy engine: the lookup missed before anything ran
                self._engine.start()
                return self.decrypt(algo, key, nonce, ciphertext, tag, aad)
            err = _aead_error(table, algo, exc, key, nonce, nonce_required=True,
                              inputs=(("ciphertext", ciphertext, PolicyError), ("tag", tag, AuthError),
                                      ("aad", aad, PolicyError)))
            raise err from err.__cause__

    def open(self, algo: str, key: Buffer | SecretBytes, sealed: Sealed, aad: Buffer = b"") -> bytes:
        """Decrypt a :class:`Sealed` without re-joining ciphertext and tag (zero copy)."""
        table = self._engine._table
        nonce = None
        try:
            r = table.aead[algo]
            if type(key) is SecretBytes:
                key = key._buf
            if type(sealed) is not Sealed:  # a plain tuple must not pass for a Sealed
                raise TypeError
            nonce, wire, tag_size = sealed.nonce, sealed.ciphertext_and_tag, sealed.tag_size
            if len(key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(key)}")
            if len(nonce) != r.nonce_size:
                raise NonceError(f"nonce: expected {r.nonce_size} bytes, got {len(nonce)}")
            if tag_size != r.tag_size:
                raise AuthError(f"sealed: tag size {tag_size} does not match {r.operation}")
            return r.cipher(key).decrypt(nonce, wire, aad)
        except Exception as exc:
            if table.version == 0:  # first call on a lazy engine: the lookup missed before anything ran
                self._engine.start()
                return self.open(algo, key, sealed, aad)
            if type(sealed) is not Sealed:
                raise PolicyError(f"sealed: expected a Sealed, got {type(sealed).__name__}") from None
            err = _aead_error(table, algo, exc, key, nonce, nonce_required=True,
                              inputs=(("sealed.ciphertext", sealed.ciphertext_and_tag, PolicyError),
                                      ("aad", aad, PolicyError)))
            raise err from err.__cause__

    def keyed(self, algo: str, key: Buffer | SecretBytes) -> KeyedAead:
        """An AEAD bound to one key, like Tink's primitive: no per-call key setup.

        The provider's keyed cipher is built once and rebuilt whenever a new routing table is
        published, so hot-patching applies to keyed AEADs too. The key is copied into a
        SecretBytes the object owns (``wipe()`` it when done); the provider's internal key
        schedule lives until the object is dropped.
        """
        return KeyedAead(self._engine, algo, key)

    def info(self, algo: str) -> dict[str, Any]:
        """Sizes and serving provider of ``algo``: key_size, nonce_size, tag_size, provider."""
        table = self._engine.table
        try:
            r = table.aead[algo]
        except Exception as exc:
            raise _aead_error(table, algo, exc, b"", None, nonce_required=False, inputs=()) from None
        return {"operation": r.operation, "provider": r.provider, "key_size": r.key_size,
                "nonce_size": r.nonce_size, "tag_size": r.tag_size}


class _Bound:
    """A keyed cipher for one table version (replaced whole, never mutated)."""

    __slots__ = ("auto_nonce", "cipher", "nonce_size", "route", "tag_size", "version")

    def __init__(self, version: int, route: AeadRoute, cipher: AeadCipher) -> None:
        self.version, self.route, self.cipher = version, route, cipher
        self.nonce_size, self.tag_size, self.auto_nonce = route.nonce_size, route.tag_size, route.auto_nonce


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

    __slots__ = ("_algo", "_bound", "_engine", "_key")

    def __init__(self, engine: Engine, algo: str, key: Buffer | SecretBytes) -> None:
        self._engine = engine
        self._algo = algo
        if isinstance(key, SecretBytes):
            key = key.view()
        try:
            self._key = SecretBytes(key)
        except TypeError:
            raise KeyError_(f"key: expected bytes-like, got {type(key).__name__}") from None
        self._bound = self._bind(engine.table)

    def _bind(self, table: RoutingTable) -> _Bound:
        try:
            r = table.aead[self._algo]
            if len(self._key) not in r.key_sizes:
                raise KeyError_(f"key: expected {r.key_size} bytes, got {len(self._key)}")
            bound = _Bound(table.version, r, r.cipher(self._key._buf))
        except Exception as exc:
            raise _aead_error(table, self._algo, exc, self._key, None, nonce_required=False, inputs=()) from None
        # One attribute holds version and cipher together, so no call pairs a new table with an
        # old cipher; a call that loaded the old table keeps it (and so its drain) until it returns.
        self._bound = bound
        return bound

    def encrypt(self, plaintext: Buffer, aad: Buffer = b"", nonce: bytes | None = None) -> Sealed:
        """Encrypt; with ``nonce=None`` a fresh one is drawn (nonce policy ``auto``)."""
        table = self._engine._table
        b = self._bound
        try:
            if b.version != table.version:
                b = self._bind(table)
            if nonce is None:
                if not b.auto_nonce:
                    raise NonceError("nonce: required (nonce policy is 'app')")
                nonce = _urandom(b.nonce_size)
            elif len(nonce) != b.nonce_size:
                raise NonceError(f"nonce: expected {b.nonce_size} bytes, got {len(nonce)}")
            return Sealed((nonce, b.cipher.encrypt(nonce, plaintext, aad), b.tag_size))
        except Exception as exc:
            err = _aead_error(table, self._algo, exc, self._key, nonce, nonce_required=False,
                              inputs=(("plaintext", plaintext, PolicyError), ("aad", aad, PolicyError)))
            raise err from err.__cause__

    def decrypt(self, nonce: bytes, ciphertext_and_tag: Buffer, aad: Buffer = b"") -> bytes:
        """Open ``ciphertext || tag``; AuthError (and no plaintext) if it does not verify."""
        table = self._engine._table
        b = self._bound
        try:
            if b.version != table.version:
                b = self._bind(table)
            if len(nonce) != b.nonce_size:
                raise NonceError(f"nonce: expected {b.nonce_size} bytes, got {len(nonce)}")
            return b.cipher.decrypt(nonce, ciphertext_and_tag, aad)
        except Exception as exc:
            err = _aead_error(table, self._algo, exc, self._key, nonce, nonce_required=True,
                              inputs=(("ciphertext_and_tag", ciphertext_and_tag, PolicyError),
                                      ("aad", aad, PolicyError)))
            raise err from err.__cause__

    def open(self, sealed: Sealed, aad: Buffer = b"") -> bytes:
        """Decrypt a :class:`Sealed` from :meth:`encrypt`."""
        if type(sealed) is not Sealed:
            raise PolicyError(f"sealed: expected a Sealed, got {type(sealed).__name__}")
        return self.decrypt(sealed.nonce, sealed.ciphertext_and_tag, aad)

    def wipe(self) -> None:
        """Wipe the key copy and drop the provider's keyed cipher; the object is unusable after."""
        self._key.wipe()
        self._bound = _Bound(-1, self._bound.route, _WIPED)

    def __repr__(self) -> str:
        return f"<KeyedAead {self._algo} via {self._bound.route.provider}>"


def _aead_error(table: RoutingTable, algo: Any, exc: Exception, key: Any, nonce: Any, *,
                nonce_required: bool, inputs: tuple[tuple[str, Any, type[XpsError]], ...]) -> XpsError:
    """The typed error for a failed AEAD call (error path only)."""
    try:
        r = table.aead[algo]
    except (KeyError, TypeError):
        op = _AEAD_NAMES.get(algo) if isinstance(algo, str) else None
        if op is not None and op in table.unrouted:
            return PolicyError(f"algo: {algo} is not available ({table.unrouted[op]})")
        return PolicyError(f"algo: unknown AEAD algorithm {algo!r}")
    return r.diagnose(exc, key, nonce, nonce_required=nonce_required, inputs=inputs)


_AEAD_NAMES = {name: op for op, spec in OPERATIONS.items() if spec.kind == "aead"
               for name in (op, *spec.aliases)}
_urandom = os.urandom


