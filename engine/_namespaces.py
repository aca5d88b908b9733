"""The fixed-operation API namespaces (``xps.ed25519``, ``x25519``, ``mlkem768``, ``hkdf`` …).

Each method of a namespace is made by :func:`_forward` from the routed adapter's method of the
same name: it loads the engine's table once, looks its operation up in the map of its kind,
and calls the adapter. So the signature and docstring a user sees are the adapter's, written
once in :mod:`xpscerpto._routes`, and strict mypy checks every call through.

The loaded table stays in a local for the whole call: the replaced table is freed only when
the last call that loaded it returns, which is how the updater learns that an implementation
has drained (at no cost to the call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Concatenate, Generic, ParamSpec, TypeVar

from ._routes import KdfRoute, KemRoute, KexRoute, SignatureRoute, _KeyPairRoute
from .errors import AuthError
from .interfaces import Buffer

if TYPE_CHECKING:
    from ._routing import RoutingTable
    from .engine import Engine
    from .keyed import KeyedExchange, KeyedSigner
    from .secret import SecretBytes

__all__ = ["HkdfAPI", "KemAPI", "KexAPI", "SignatureAPI"]

R_co = TypeVar("R_co", covariant=True)
P = ParamSpec("P")
T = TypeVar("T")

# attrgetter runs in C: selecting the kind's map costs the call no Python frame.
_SIGNATURE: Callable[[RoutingTable], Mapping[str, SignatureRoute]] = attrgetter("signature")
_KEX: Callable[[RoutingTable], Mapping[str, KexRoute]] = attrgetter("kex")
_KEM: Callable[[RoutingTable], Mapping[str, KemRoute]] = attrgetter("kem")
_KDF: Callable[[RoutingTable], Mapping[str, KdfRoute]] = attrgetter("kdf")


class _OpAPI(Generic[R_co]):
    """Base of the fixed-operation namespaces: an engine, an operation, and its kind's map."""

    __slots__ = ("_engine", "_op", "_select")

    def __init__(self, engine: Engine, operation: str,
                 select: Callable[[RoutingTable], Mapping[str, R_co]]) -> None:
        self._engine = engine
        self._op = operation
        self._select = select

    @property
    def provider(self) -> str | None:
        """The provider currently serving this operation."""
        self._engine.prepare(self._op)
        return self._engine._table.provider_for(self._op)


def _forward(method: Callable[Concatenate[R_co, P], T]) -> Callable[Concatenate[_OpAPI[R_co], P], T]:
    """The namespace method that calls ``method`` on the route the current table holds."""

    def call(self: _OpAPI[R_co], /, *args: P.args, **kwargs: P.kwargs) -> T:
        table = self._engine._table
        try:
            route = self._select(table)[self._op]
        except KeyError:
            route = self._engine.route_missing(table, self._op, self._select)
        return method(route, *args, **kwargs)

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class _KeyPairAPI(_OpAPI[R_co]):
    """Namespaces whose keys come in pairs (signatures, key agreement, KEM)."""

    __slots__ = ()

    generate_keypair = _forward(_KeyPairRoute.generate_keypair)
    public_key = _forward(_KeyPairRoute.public_key)


class SignatureAPI(_KeyPairAPI[SignatureRoute]):
    """Ed25519 or ML-DSA-65 signatures; secret keys are seeds held in SecretBytes.

    Example:
        >>> import xpscerpto as xps
        >>> pk, sk = xps.ed25519.generate_keypair()
        >>> sig = xps.ed25519.sign(sk, b"msg")
        >>> xps.ed25519.verify(pk, b"msg", sig)   # raises AuthError if invalid
    """

    __slots__ = ()

    def __init__(self, engine: Engine, operation: str) -> None:
        super().__init__(engine, operation, _SIGNATURE)

    sign = _forward(SignatureRoute.sign)
    verify = _forward(SignatureRoute.verify)

    def keyed(self, secret_key: Buffer | SecretBytes) -> KeyedSigner:
        """A signer holding the provider's key object: no key setup per signature.

        The seed is copied into a SecretBytes the signer owns (``wipe()`` it when done); the
        provider's key object is rebuilt when a new routing table is published.

        Raises:
            KeyError_: the secret key has the wrong size or type, or is a wiped SecretBytes.
            PolicyError: the operation is not available.

        Example:
            >>> import xpscerpto as xps
            >>> pk, sk = xps.ed25519.generate_keypair()
            >>> xps.ed25519.is_valid(pk, b"m", xps.ed25519.keyed(sk).sign(b"m"))
            True
        """
        from .keyed import KeyedSigner

        return KeyedSigner(self._engine, self._op, secret_key)

    def is_valid(self, public_key: Buffer, message: Buffer, signature: Buffer, context: bytes = b"") -> bool:
        """Boolean convenience over :meth:`verify` (bad key sizes still raise KeyError_)."""
        try:
            self.verify(public_key, message, signature, context)
        except AuthError:
            return False
        return True


class KexAPI(_KeyPairAPI[KexRoute]):
    """X25519 key agreement.

    Example:
        >>> import xpscerpto as xps
        >>> a_pk, a_sk = xps.x25519.generate_keypair(); b_pk, b_sk = xps.x25519.generate_keypair()
        >>> xps.x25519.derive_shared(a_sk, b_pk) == xps.x25519.derive_shared(b_sk, a_pk)
        True
    """

    __slots__ = ()

    def __init__(self, engine: Engine, operation: str) -> None:
        super().__init__(engine, operation, _KEX)

    derive_shared = _forward(KexRoute.derive_shared)

    def keyed(self, secret_key: Buffer | SecretBytes) -> KeyedExchange:
        """A private key held as the provider's key object: no key setup per exchange.

        Raises:
            KeyError_: the secret key has the wrong size or type, or is a wiped SecretBytes.
            PolicyError: the operation is not available.

        Example:
            >>> import xpscerpto as xps
            >>> a_pk, a_sk = xps.x25519.generate_keypair(); b_pk, b_sk = xps.x25519.generate_keypair()
            >>> k = xps.x25519.keyed(a_sk)
            >>> k.exchange(b_pk) == xps.x25519.derive_shared(b_sk, k.public_key)
            True
        """
        from .keyed import KeyedExchange

        return KeyedExchange(self._engine, self._op, secret_key)

    def generate_keyed(self) -> KeyedExchange:
        """A fresh private key, held as a keyed exchange (an ephemeral key, as in a handshake).

        Same as ``keyed(generate_keypair()[1])`` without deriving the public key a second time
        or leaving a copy of the secret with the caller: the secret exists only inside the
        returned object (``wipe()`` it when done).

        Raises:
            PolicyError: the operation is not available.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).

        Example:
            >>> import xpscerpto as xps
            >>> a, b = xps.x25519.generate_keyed(), xps.x25519.generate_keyed()
            >>> a.exchange(b.public_key) == b.exchange(a.public_key)
            True
        """
        from .keyed import KeyedExchange

        public_key, secret = self.generate_keypair()
        with secret:
            return KeyedExchange(self._engine, self._op, secret, _public_key=public_key)


class KemAPI(_KeyPairAPI[KemRoute]):
    """ML-KEM-768 key encapsulation; the decapsulation key is the 64-byte seed.

    Example:
        >>> import xpscerpto as xps
        >>> ek, dk = xps.mlkem768.generate_keypair()
        >>> ct, ss = xps.mlkem768.encapsulate(ek)
        >>> xps.mlkem768.decapsulate(dk, ct) == ss
        True
    """

    __slots__ = ()

    def __init__(self, engine: Engine, operation: str) -> None:
        super().__init__(engine, operation, _KEM)

    encapsulate = _forward(KemRoute.encapsulate)
    decapsulate = _forward(KemRoute.decapsulate)


class HkdfAPI(_OpAPI[KdfRoute]):
    """HKDF-SHA256 (RFC 5869).

    Example:
        >>> import xpscerpto as xps
        >>> okm = xps.hkdf.derive(b"ikm" * 11, 64, salt=b"salt", info=b"ctx")
        >>> len(okm)
        64
    """

    __slots__ = ()

    def __init__(self, engine: Engine, operation: str) -> None:
        super().__init__(engine, operation, _KDF)

    derive = _forward(KdfRoute.derive)
    extract = _forward(KdfRoute.extract)
    expand = _forward(KdfRoute.expand)
