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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._routes import UnavailableRoute
from ._routing import RoutingTable, build_table
from .config import EngineConfig
from .errors import AuthError, InternalError, KeyError_, NonceError, PolicyError, XpsError
from .interfaces import OPERATIONS, Buffer, Provider
from .sealed import Sealed
from .secret import SecretBytes

if TYPE_CHECKING:
    from pathlib import Path

    from xpscerpto.capsules.service import WatchService
    from xpscerpto.kat import KatResult

    from ._plugins import PluginFailure
    from .home import Home

__all__ = ["AeadAPI", "Engine", "HkdfAPI", "KemAPI", "KexAPI", "KeyedAead", "SignatureAPI", "random_bytes"]

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
        self.config = config or EngineConfig()
        self._plugins = tuple(plugins)
        # Serialises start and publish; never taken on the call path.
        self._lock = threading.RLock()
        self._state: EngineState | None = None
        self._fault_listeners: tuple[Callable[[str, str, BaseException], None], ...] = ()
        self._table: RoutingTable = _bootstrap_table(self)
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

            registry = load_providers(self._plugins, autoload=self.config.autoload_plugins)
            providers = tuple(sorted(registry.providers.values(), key=lambda p: p.name))
            results = []
            for p in providers:
                for op, impl in sorted(p.implementations.items()):
                    results.append(run_selftest(p.name, op, OPERATIONS[op].kind, impl,
                                                p.kat.get(op, ())))
            self._state = EngineState(providers, tuple(registry.failures), tuple(results))
            self.publish(self.build_table())

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
        return build_table(provs, config or self.config, version=self._table.version + 1,
                           kat_failures=failures, on_fault=self._report_fault)

    def watch(self, directory: str | Path, home: str | Path | Home | None = None, **options: Any) -> WatchService:
        """Start hot-patching from a watched folder (and the control socket); returns the service.

        Options are those of :class:`xpscerpto.capsules.service.WatchService` (``polling``,
        ``plan``, ``gates``…). Call ``.stop()`` on the result to stop watching.
        """
        from xpscerpto.capsules.service import WatchService

        return WatchService(self, directory, home, **options).start()

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

    def publish(self, table: RoutingTable) -> RoutingTable:
        """Install ``table`` as the one every new call uses; returns the table it replaced.

        The swap is a single reference assignment: calls already running keep the table they
        loaded. Tables must be published in version order.
        """
        with self._lock:
            old = self._table
            if table.version != old.version + 1:
                raise InternalError(
                    f"table.version: expected {old.version + 1}, got {table.version}")
            self._table = table
            return old


def _bootstrap_table(engine: Engine) -> RoutingTable:
    """Version 0: every entry starts the engine on first use and forwards the call."""
    entries: dict[str, Any] = {}
    for op, spec in OPERATIONS.items():
        entries[op] = _StartOnFirstUse(engine, op)
        for alias in spec.aliases:
            entries[alias] = entries[op]
    aead = {k: v for k, v in entries.items() if OPERATIONS[v.operation].kind == "aead"}
    return RoutingTable(version=0, routes={}, unrouted={}, entries=entries, aead=aead)


class _StartOnFirstUse:
    __slots__ = ("_engine", "operation")

    def __init__(self, engine: Engine, operation: str) -> None:
        self._engine = engine
        self.operation = operation

    def __getattr__(self, name: str) -> Any:
        self._engine.start()
        real = self._engine._table.entries[self.operation]
        if isinstance(real, UnavailableRoute):
            raise PolicyError(f"{self.operation}: not available ({real.reason})")
        return getattr(real, name)


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
            return r.cipher(key).decrypt(nonce, b"".join((ciphertext, tag)), aad)  # type: ignore[no-any-return]
        except Exception as exc:
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
            return r.cipher(key).decrypt(nonce, wire, aad)  # type: ignore[no-any-return]
        except Exception as exc:
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

    def __init__(self, version: int, route: Any, cipher: Any) -> None:
        self.version, self.route, self.cipher = version, route, cipher
        self.nonce_size, self.tag_size, self.auto_nonce = route.nonce_size, route.tag_size, route.auto_nonce


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
            return b.cipher.decrypt(nonce, ciphertext_and_tag, aad)  # type: ignore[no-any-return]
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
        self._bound = _Bound(-1, self._bound.route, None)

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
    return r.diagnose(exc, key, nonce, nonce_required=nonce_required, inputs=inputs)  # type: ignore[no-any-return]


_AEAD_NAMES = {name: op for op, spec in OPERATIONS.items() if spec.kind == "aead"
               for name in (op, *spec.aliases)}
_urandom = os.urandom


class _OpAPI:
    """Base of the fixed-operation namespaces.

    Each method loads ``engine._table`` into a local that lives for the whole call: the old
    table is freed only when the last call that loaded it returns, which is how the updater
    learns that a replaced implementation has drained (at no cost to the call).
    """

    __slots__ = ("_engine", "_op")

    def __init__(self, engine: Engine, operation: str) -> None:
        self._engine = engine
        self._op = operation

    @property
    def provider(self) -> str | None:
        """The provider currently serving this operation."""
        return self._engine.table.provider_for(self._op)


class SignatureAPI(_OpAPI):
    """Ed25519 or ML-DSA-65 signatures; secret keys are seeds held in SecretBytes.

    Example:
        >>> import xpscerpto as xps
        >>> pk, sk = xps.ed25519.generate_keypair()
        >>> sig = xps.ed25519.sign(sk, b"msg")
        >>> xps.ed25519.verify(pk, b"msg", sig)   # raises AuthError if invalid
    """

    __slots__ = ()

    def generate_keypair(self) -> tuple[bytes, SecretBytes]:
        """Return ``(public_key, secret_key)``."""
        table = self._engine._table
        return table.entries[self._op].generate_keypair()  # type: ignore[no-any-return]

    def public_key(self, secret_key: Buffer | SecretBytes) -> bytes:
        """Derive the public key from a secret key."""
        table = self._engine._table
        return table.entries[self._op].public_key(secret_key)  # type: ignore[no-any-return]

    def sign(self, secret_key: Buffer | SecretBytes, message: Buffer, context: bytes = b"") -> bytes:
        """Sign ``message`` (Ed25519 is deterministic; ML-DSA is hedged)."""
        table = self._engine._table
        return table.entries[self._op].sign(secret_key, message, context)  # type: ignore[no-any-return]

    def verify(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes = b"") -> None:
        """Return if the signature is valid; raise AuthError otherwise."""
        table = self._engine._table
        table.entries[self._op].verify(public_key, message, signature, context)

    def is_valid(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes = b"") -> bool:
        """Boolean convenience over :meth:`verify` (bad key sizes still raise KeyError_)."""
        from .errors import AuthError

        try:
            self.verify(public_key, message, signature, context)
        except AuthError:
            return False
        return True


class KexAPI(_OpAPI):
    """X25519 key agreement.

    Example:
        >>> import xpscerpto as xps
        >>> a_pk, a_sk = xps.x25519.generate_keypair(); b_pk, b_sk = xps.x25519.generate_keypair()
        >>> xps.x25519.derive_shared(a_sk, b_pk) == xps.x25519.derive_shared(b_sk, a_pk)
        True
    """

    __slots__ = ()

    def generate_keypair(self) -> tuple[bytes, SecretBytes]:
        """Return ``(public_key, secret_key)``."""
        table = self._engine._table
        return table.entries[self._op].generate_keypair()  # type: ignore[no-any-return]

    def public_key(self, secret_key: Buffer | SecretBytes) -> bytes:
        """Derive the public key."""
        table = self._engine._table
        return table.entries[self._op].public_key(secret_key)  # type: ignore[no-any-return]

    def derive_shared(self, secret_key: Buffer | SecretBytes, peer_public_key: Buffer) -> SecretBytes:
        """The raw shared secret; an all-zero result (low-order peer key) raises KeyError_."""
        table = self._engine._table
        return table.entries[self._op].derive_shared(secret_key, peer_public_key)  # type: ignore[no-any-return]


class KemAPI(_OpAPI):
    """ML-KEM-768 key encapsulation; the decapsulation key is the 64-byte seed.

    Example:
        >>> import xpscerpto as xps
        >>> ek, dk = xps.mlkem768.generate_keypair()
        >>> ct, ss = xps.mlkem768.encapsulate(ek)
        >>> xps.mlkem768.decapsulate(dk, ct) == ss
        True
    """

    __slots__ = ()

    def generate_keypair(self) -> tuple[bytes, SecretBytes]:
        """Return ``(encapsulation_key, seed)``."""
        table = self._engine._table
        return table.entries[self._op].generate_keypair()  # type: ignore[no-any-return]

    def public_key(self, secret_key: Buffer | SecretBytes) -> bytes:
        """Derive the encapsulation key from the seed."""
        table = self._engine._table
        return table.entries[self._op].public_key(secret_key)  # type: ignore[no-any-return]

    def encapsulate(self, public_key: Buffer) -> tuple[bytes, SecretBytes]:
        """Return ``(ciphertext, shared_secret)``."""
        table = self._engine._table
        return table.entries[self._op].encapsulate(public_key)  # type: ignore[no-any-return]

    def decapsulate(self, secret_key: Buffer | SecretBytes, ciphertext: Buffer) -> SecretBytes:
        """Return the shared secret (a tampered ciphertext yields an unrelated one, per FIPS 203)."""
        table = self._engine._table
        return table.entries[self._op].decapsulate(secret_key, ciphertext)  # type: ignore[no-any-return]


class HkdfAPI(_OpAPI):
    """HKDF-SHA256 (RFC 5869).

    Example:
        >>> import xpscerpto as xps
        >>> okm = xps.hkdf.derive(b"ikm" * 11, 64, salt=b"salt", info=b"ctx")
        >>> len(okm)
        64
    """

    __slots__ = ()

    def derive(self, ikm: Buffer | SecretBytes, length: int, *, salt: Buffer = b"",
               info: Buffer = b"") -> SecretBytes:
        """Extract then expand in one call."""
        table = self._engine._table
        return table.entries[self._op].derive(ikm, length, salt=salt, info=info)  # type: ignore[no-any-return]

    def extract(self, salt: Buffer, ikm: Buffer | SecretBytes) -> SecretBytes:
        """The pseudo-random key ``PRK = HMAC(salt, ikm)``."""
        table = self._engine._table
        return table.entries[self._op].extract(salt, ikm)  # type: ignore[no-any-return]

    def expand(self, prk: Buffer | SecretBytes, info: Buffer, length: int) -> SecretBytes:
        """``length`` bytes of output keying material bound to ``info`` (e.g. a transcript hash)."""
        table = self._engine._table
        return table.entries[self._op].expand(prk, info, length)  # type: ignore[no-any-return]
