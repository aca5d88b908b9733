"""Keyed signers and key-agreement keys: the provider's key object, built once per routing table.

``engine.ed25519.sign(seed, msg)`` rebuilds the provider's key from the seed on every call
(for Ed25519 that is a scalar multiplication, about half the cost of signing). A
:class:`KeyedSigner` (``engine.ed25519.keyed(seed)``) builds it once and signs with it, like
:meth:`xpscerpto.engine.AeadAPI.keyed` for AEADs; :class:`KeyedExchange`
(``engine.x25519.keyed(secret)``) does the same for X25519. Both rebuild the provider's object
when a new routing table is published, so a hot-patch or an autotune switch applies to them
too, and both copy the secret into a SecretBytes they own (``wipe()`` them when done).

Example:
    >>> import xpscerpto as xps
    >>> pk, sk = xps.ed25519.generate_keypair()
    >>> signer = xps.ed25519.keyed(sk)
    >>> xps.ed25519.verify(signer.public_key, b"msg", signer.sign(b"msg"))
    >>> signer.wipe()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from ._buffers import describe
from ._namespaces import _KEX, _SIGNATURE
from ._routes import KexRoute, SignatureRoute
from .errors import KeyError_, PolicyError
from .interfaces import Buffer
from .secret import SecretBytes

if TYPE_CHECKING:
    from ._routing import RoutingTable
    from .engine import Engine

__all__ = ["KeyedExchange", "KeyedSigner"]


class _Bound:
    """The route and loaded key of one table version (replaced whole, never mutated)."""

    __slots__ = ("key", "public_key", "route", "version")

    def __init__(self, version: int, route: Any, key: Any, public_key: bytes) -> None:
        self.version, self.route, self.key, self.public_key = version, route, key, public_key


class _Keyed:
    __slots__ = ("_bound", "_engine", "_op", "_secret")

    def __init__(self, engine: Engine, operation: str, secret_key: Buffer | SecretBytes, *,
                 _public_key: bytes | None = None) -> None:
        self._engine, self._op = engine, operation
        if isinstance(secret_key, SecretBytes):
            if secret_key.wiped:
                raise KeyError_("secret_key: SecretBytes was wiped")
            view = secret_key.view()
            try:
                self._secret = SecretBytes(view)
            finally:
                view.release()
        elif isinstance(secret_key, bytes | bytearray | memoryview):
            try:
                self._secret = SecretBytes(secret_key)
            except (TypeError, ValueError, BufferError):
                raise KeyError_(f"secret_key: expected a byte buffer, got {describe(secret_key)}") from None
        else:
            raise KeyError_(f"secret_key: expected bytes-like or SecretBytes, got {describe(secret_key)}")
        try:
            self._bound: _Bound = self._bind(_public_key)
        except BaseException:
            self._secret.wipe()
            raise

    def _route(self, table: RoutingTable) -> SignatureRoute | KexRoute:
        raise NotImplementedError

    def _bind(self, public_key: bytes | None = None) -> _Bound:
        # ``public_key``: the key the provider derived when it generated this secret (the
        # engine's own call, never a caller's value), so it is not derived a second time.
        engine = self._engine
        engine.start()
        table = engine._table
        route = self._route(table)
        if self._secret.wiped:
            raise KeyError_("secret_key: this keyed object was wiped")
        key = route._load_key(self._secret._buf)
        bound = _Bound(table.version, route, key,
                       route.public_key(self._secret) if public_key is None else public_key)
        self._bound = bound
        if _still_wiped(self._secret):  # wipe() ran meanwhile: leave nothing live installed
            self._bound = _Bound(-1, route, None, b"")
            raise KeyError_("secret_key: this keyed object was wiped")
        return bound

    def _current(self) -> _Bound:
        b = self._bound
        if b.version != self._engine._table.version:
            b = self._bind()
        return b

    @property
    def public_key(self) -> bytes:
        """The public key of the held secret."""
        b = self._bound
        if b.key is None:
            raise KeyError_("secret_key: this keyed object was wiped")
        return b.public_key

    @property
    def provider(self) -> str:
        """The provider whose key object signs (or exchanges) now."""
        return str(self._current().route.provider)

    def wipe(self) -> None:
        """Wipe the secret copy and drop the provider's key object; unusable afterwards.

        A call running on another thread meanwhile fails with XPS_ERR_KEY.
        """
        self._secret.wipe()
        self._bound = _Bound(-1, self._bound.route, None, b"")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._op} via {self._bound.route.provider}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise PolicyError(f"{type(self).__name__} holds a secret and cannot be pickled")


def _still_wiped(secret: SecretBytes) -> bool:
    """Read the flag afresh (another thread may have set it since the last test)."""
    return secret.wiped


class KeyedSigner(_Keyed):
    """A signer bound to one secret key; see :meth:`xpscerpto.engine.SignatureAPI.keyed`.

    Example:
        >>> import xpscerpto as xps
        >>> pk, sk = xps.ed25519.generate_keypair()
        >>> s = xps.ed25519.keyed(sk)
        >>> s.public_key == pk and xps.ed25519.is_valid(pk, b"m", s.sign(b"m"))
        True
    """

    __slots__ = ()

    def _route(self, table: RoutingTable) -> SignatureRoute:
        try:
            return _SIGNATURE(table)[self._op]
        except KeyError:
            return self._engine.route_missing(table, self._op, _SIGNATURE)

    def sign(self, message: Buffer, context: bytes = b"") -> bytes:
        """Sign ``message`` with the held key (same checks and errors as ``sign``).

        Raises:
            KeyError_: the object was wiped (also when that happened during the call).
            PolicyError: message or context not a byte buffer; a context Ed25519 cannot take.
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        b = self._bound
        if b.version != self._engine._table.version:
            b = self._bind()
        key = b.key
        if key is None:
            raise KeyError_("secret_key: this keyed object was wiped")
        route: SignatureRoute = b.route
        sig = route._sign_loaded(key, message, context)
        if self._secret._wiped:
            raise KeyError_("secret_key: this keyed object was wiped during the call")
        return sig


class KeyedExchange(_Keyed):
    """A key-agreement private key bound once; see :meth:`xpscerpto.engine.KexAPI.keyed`.

    Example:
        >>> import xpscerpto as xps
        >>> a_pk, a_sk = xps.x25519.generate_keypair(); b_pk, b_sk = xps.x25519.generate_keypair()
        >>> xps.x25519.keyed(a_sk).exchange(b_pk) == xps.x25519.derive_shared(b_sk, a_pk)
        True
    """

    __slots__ = ()

    def _route(self, table: RoutingTable) -> KexRoute:
        try:
            return _KEX(table)[self._op]
        except KeyError:
            return self._engine.route_missing(table, self._op, _KEX)

    def exchange(self, peer_public_key: Buffer) -> SecretBytes:
        """The raw shared secret with ``peer_public_key`` (as ``derive_shared``).

        Raises:
            KeyError_: the peer key has the wrong size or type or is a low-order point; the
                object was wiped (also during the call: the result is wiped, not returned).
            ProviderError: the provider failed (XPS_ERR_INTERNAL).
        """
        b = self._bound
        if b.version != self._engine._table.version:
            b = self._bind()
        key = b.key
        if key is None:
            raise KeyError_("secret_key: this keyed object was wiped")
        route: KexRoute = b.route
        shared = route._exchange_loaded(key, peer_public_key)
        if self._secret._wiped:
            shared.wipe()
            raise KeyError_("secret_key: this keyed object was wiped during the call")
        return shared
