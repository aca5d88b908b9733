"""Key-encryption keys (KEKs): wrap the keyring's data keys before they reach SQLite.

Two providers share one interface, :class:`KekProvider`:

* :class:`FileKek` — AES-256-GCM under a 32-byte key kept in a local file (mode 0600, created
  on first use);
* :class:`Pkcs11Kek` — AES-256-GCM computed *inside* a PKCS#11 token (``CKM_AES_GCM``) with a
  sensitive, non-extractable AES-256 token key, so the KEK never exists in this process at all.

:func:`open_kek` builds either one from the keyring configuration.

Wrapped format (the same layout for both providers)::

    version (1 byte, = 1) | kind (1 byte: 1 = file, 2 = pkcs11) | nonce (12) | ciphertext | tag (16)

The two header bytes are authenticated too: GCM's associated data is ``header || aad``. A blob
made by the other provider kind, by a future format, or cut short is refused with
:class:`~xpscerpto.errors.AuthError` before any decryption is attempted, and a tag that does not
verify yields no plaintext at all.

Nonces are random (96 bits) per wrap. That is safe for far more wraps than a keyring ever makes
under one KEK (NIST SP 800-38D caps random-nonce GCM at 2**32 messages per key).

Example:
    >>> import tempfile, pathlib
    >>> home = pathlib.Path(tempfile.mkdtemp())
    >>> with open_kek("file", home) as kek:
    ...     blob = kek.wrap(b"\\x07" * 32, aad=b"key-id-1")
    ...     kek.unwrap(blob, aad=b"key-id-1") == b"\\x07" * 32
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, runtime_checkable
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto._atomic import create_exclusive
from xpscerpto._config_fields import utf8_text
from xpscerpto.errors import AuthError, KeyError_, PolicyError, ProviderError
from xpscerpto.secret import SecretBytes, secure_wipe

if TYPE_CHECKING:
    from pkcs11 import Session

# python-pkcs11 builds key classes from mixins at run time (its stubs' SecretKey has no
# encrypt/decrypt), so token key objects are typed loosely.
_TokenKey = Any

__all__ = [
    "FORMAT_VERSION",
    "KEK_SIZE",
    "KIND_FILE",
    "KIND_PKCS11",
    "MAX_MATERIAL",
    "FileKek",
    "KekProvider",
    "Pkcs11Kek",
    "open_kek",
]

#: First byte of every wrapped blob.
FORMAT_VERSION: Final = 1
#: Second byte: which provider kind made the blob.
KIND_FILE: Final = 1
KIND_PKCS11: Final = 2
#: Size of the file KEK and of the token's AES key, in bytes.
KEK_SIZE: Final = 32
#: Largest material :meth:`KekProvider.wrap` accepts. Data keys are tiny; even a PKCS#8 RSA-8192
#: or ML-DSA-87 private key fits many times over. The cap bounds what ``unwrap`` will allocate.
MAX_MATERIAL: Final = 64 * 1024

_HEADER_SIZE: Final = 2
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_MIN_WRAPPED: Final = _HEADER_SIZE + _NONCE_SIZE + 1 + _TAG_SIZE
_MAX_WRAPPED: Final = _HEADER_SIZE + _NONCE_SIZE + MAX_MATERIAL + _TAG_SIZE
# Domain separation: the published kek_id must not be a plain hash of the key that some other
# system might also publish for the same bytes.
_KEK_ID_DOMAIN: Final = b"xpscerpto/keyring/kek-id/v1\x00"
_AUTH_FAILED: Final = "wrapped: authentication failed (wrong KEK, wrong aad, or the blob was altered)"


@runtime_checkable
class KekProvider(Protocol):
    """What the keyring needs from a key-encryption key.

    ``kek_id`` is a stable, non-secret identifier stored next to each wrapped key, so the
    keyring can tell which KEK a blob needs before trying it. It is read-only.

    Example:
        >>> import tempfile, pathlib
        >>> kek: KekProvider = FileKek(pathlib.Path(tempfile.mkdtemp()) / "kek.key")
        >>> kek.kek_id.startswith("file:")
        True
        >>> kek.close()
    """

    @property
    def kek_id(self) -> str:
        """Stable, non-secret identifier of this KEK."""
        ...

    def wrap(self, material: SecretBytes | bytes, aad: bytes) -> bytes:
        """AEAD-wrap ``material`` bound to ``aad``: header + nonce + ciphertext + tag."""
        ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> SecretBytes:
        """Verify and unwrap; :class:`AuthError` on a wrong KEK, wrong ``aad`` or any alteration."""
        ...

    def close(self) -> None:
        """Release the KEK (wipe it, or close the token session). Idempotent."""
        ...


# -- shared input handling -----------------------------------------------------------------------


def _material_view(material: object) -> memoryview:
    """A read-only view of the material to wrap, without copying a SecretBytes."""
    if isinstance(material, SecretBytes):
        if material.wiped:
            raise KeyError_("material: the SecretBytes was wiped")
        view = material.view()
    elif isinstance(material, bytes | bytearray | memoryview):
        try:
            view = memoryview(material).cast("B").toreadonly()
        except TypeError:
            raise KeyError_("material: expected a contiguous byte buffer") from None
    else:
        raise KeyError_(f"material: expected bytes or SecretBytes, got {type(material).__name__}")
    if not 1 <= view.nbytes <= MAX_MATERIAL:
        raise KeyError_(f"material: expected 1..{MAX_MATERIAL} bytes, got {view.nbytes}")
    return view


def _aad_bytes(aad: object) -> bytes:
    # aad is public context (a key id, a purpose), so an immutable copy is fine.
    if not isinstance(aad, bytes | bytearray | memoryview):
        raise PolicyError(f"aad: expected bytes, got {type(aad).__name__}")
    return bytes(aad)


def _header(kind: int) -> bytes:
    return bytes((FORMAT_VERSION, kind))


def _split(wrapped: object, kind: int) -> tuple[bytes, memoryview, memoryview]:
    """Check the header and cut ``wrapped`` into (header, nonce, ciphertext+tag) views."""
    if not isinstance(wrapped, bytes | bytearray | memoryview):
        raise PolicyError(f"wrapped: expected bytes, got {type(wrapped).__name__}")
    try:
        view = memoryview(wrapped).cast("B").toreadonly()
    except TypeError:
        raise PolicyError("wrapped: expected a contiguous byte buffer") from None
    n = view.nbytes
    if n < _MIN_WRAPPED:
        raise AuthError(f"wrapped: truncated ({n} bytes, at least {_MIN_WRAPPED} needed)")
    if n > _MAX_WRAPPED:
        raise AuthError(f"wrapped: {n} bytes is longer than any wrapped key ({_MAX_WRAPPED})")
    if view[0] != FORMAT_VERSION:
        raise AuthError(f"wrapped: unknown format version {view[0]} (expected {FORMAT_VERSION})")
    if view[1] != kind:
        raise AuthError(f"wrapped: made by another KEK provider kind ({view[1]}, this one is {kind})")
    return bytes(view[:_HEADER_SIZE]), view[_HEADER_SIZE:_HEADER_SIZE + _NONCE_SIZE], view[_HEADER_SIZE + _NONCE_SIZE:]


# -- FileKek -------------------------------------------------------------------------------------


def _random_secret(n: int) -> bytearray:
    """``n`` CSPRNG bytes straight into a mutable buffer (``os.urandom`` would leave an unwipeable copy)."""
    buf = bytearray(n)
    try:
        with open("/dev/urandom", "rb", buffering=0) as f:
            got = 0
            while got < n:
                r = f.readinto(memoryview(buf)[got:])
                if not r:
                    raise OSError("short read from /dev/urandom")
                got += r
    except OSError:
        # No /dev/urandom (a bare chroot): fall back to getrandom(2) via os.urandom.
        buf[:] = os.urandom(n)
    return buf



def _read_kek_file(path: Path) -> SecretBytes | None:
    """Load and vet a KEK file; None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyError_(f"path: cannot open KEK file {path}: {exc.strerror}") from None
    try:
        # Vet the opened file (fstat), not the name, so nothing can be swapped in between.
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"path: KEK file {path} is not a regular file")
        if mode & 0o077:
            raise KeyError_(f"path: KEK file {path} has mode {mode:04o}; it must not be readable or "
                            f"writable by group or others (chmod 600 it)")
        # Whoever owns the file can replace the KEK with one they know; refuse a foreign owner
        # (this matters when the engine runs as root and reads a user's file).
        if st.st_uid != os.geteuid():
            raise KeyError_(f"path: KEK file {path} is owned by uid {st.st_uid}, not by this user "
                            f"(uid {os.geteuid()})")
        if st.st_size != KEK_SIZE:
            raise KeyError_(f"path: KEK file {path} holds {st.st_size} bytes, expected {KEK_SIZE}")
        buf = bytearray(KEK_SIZE)
        got = 0
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while got < KEK_SIZE:
                r = f.readinto(memoryview(buf)[got:])
                if not r:
                    break
                got += r
            extra = f.read(1)  # a file that grew after fstat is not a KEK either
    except OSError as exc:
        raise KeyError_(f"path: cannot read KEK file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if got != KEK_SIZE or extra:
        secure_wipe(buf)
        raise KeyError_(f"path: KEK file {path} changed size while being read")
    # Zeroed or erased blocks are what a damaged file looks like; a CSPRNG never yields them.
    # compare_digest keeps even this check independent of the key's bytes.
    if hmac.compare_digest(buf, bytes(KEK_SIZE)) or hmac.compare_digest(buf, b"\xff" * KEK_SIZE):
        secure_wipe(buf)
        raise KeyError_(f"path: KEK file {path} is corrupt (all bytes equal)")
    return SecretBytes.take(buf)


def _create_kek_file(path: Path) -> SecretBytes | None:
    """Create ``path`` holding a fresh KEK; None if another process created it first.

    The key goes to a temporary file opened with ``O_CREAT | O_EXCL`` and mode 0600 (so it is
    never wider, whatever the umask), is fsynced, then published with ``link(2)``, which fails if
    ``path`` exists. Nobody can ever read a half-written KEK under ``path``, and two engines
    starting at once agree on one key.
    """
    folder = path.parent
    if not folder.is_dir():
        raise KeyError_(f"path: cannot create KEK file {path}: folder {folder} does not exist")
    buf = _random_secret(KEK_SIZE)
    try:
        created = create_exclusive(path, buf, 0o600)
    except OSError as exc:
        secure_wipe(buf)
        raise KeyError_(f"path: cannot create KEK file {path}: {exc.strerror}") from None
    if not created:
        secure_wipe(buf)
        return None
    return SecretBytes.take(buf)


def _file_kek_id(key: SecretBytes) -> str:
    h = hashlib.sha256(_KEK_ID_DOMAIN)
    h.update(key.view())
    return "file:" + h.hexdigest()[:16]


class _ProviderBase:
    """What both KEK providers share: context manager, no pickling, str is the redacted repr."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __str__(self) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class FileKek(_ProviderBase):
    """AES-256-GCM key wrapping under a 32-byte KEK held in a local file.

    On first use (``create=True``) the file is created with mode 0600; afterwards it is refused
    if group or others may read or write it, if another user owns it, or if it does not hold
    exactly 32 bytes. The key lives in a :class:`~xpscerpto.secret.SecretBytes` that
    :meth:`close` (or leaving a ``with`` block, or garbage collection) wipes.

    ``kek_id`` is ``"file:"`` + the first 16 hex digits of
    ``SHA-256(b"xpscerpto/keyring/kek-id/v1\\0" || key)``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "kek.key"
        >>> with FileKek(path) as kek:
        ...     blob = kek.wrap(b"data key bytes", b"id-1")
        >>> oct(path.stat().st_mode & 0o777)
        '0o600'
        >>> with FileKek(path, create=False) as kek:
        ...     kek.unwrap(blob, b"id-1").reveal()
        b'data key bytes'
    """

    __slots__ = ("__weakref__", "_finalizer", "_kek_id", "_key", "_lock", "_path")

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise PolicyError(f"path: expected a file path, got {type(path).__name__}")
        p = Path(path)
        key = _read_kek_file(p)
        if key is None:
            if not create:
                raise KeyError_(f"path: no KEK file at {p} (and create=False)")
            # None again means another process won the creation race: use its key.
            key = _create_kek_file(p) or _read_kek_file(p)
            if key is None:
                raise KeyError_(f"path: KEK file {p} vanished while being created")
        self._path = p
        self._key = key
        self._kek_id = _file_kek_id(key)
        self._lock = threading.Lock()
        # Wipe even if the owner forgets close(); the callback holds the secret, not self.
        self._finalizer = weakref.finalize(self, key.wipe)

    @property
    def kek_id(self) -> str:
        """``file:<16 hex digits>``, derived from the key (see the class docstring)."""
        return self._kek_id

    @property
    def path(self) -> Path:
        """The KEK file."""
        return self._path

    def _live_key(self) -> SecretBytes:
        if self._key.wiped:
            raise KeyError_(f"kek: FileKek for {self._path} is closed (key wiped)")
        return self._key

    def wrap(self, material: SecretBytes | bytes, aad: bytes) -> bytes:
        """Encrypt ``material`` under the KEK, bound to ``aad``.

        Raises:
            KeyError_: material empty, too large or wiped; provider closed.
            PolicyError: ``aad`` is not bytes.
        """
        view = _material_view(material)
        header = _header(KIND_FILE)
        ad = header + _aad_bytes(aad)
        nonce = os.urandom(_NONCE_SIZE)
        with self._lock:
            key = self._live_key()
            ct = AESGCM(key.view()).encrypt(nonce, view, ad)
        return header + nonce + ct

    def unwrap(self, wrapped: bytes, aad: bytes) -> SecretBytes:
        """Verify and decrypt a blob from :meth:`wrap`; nothing is returned unless the tag verifies.

        Raises:
            AuthError: wrong KEK, wrong ``aad``, truncated, altered, or another provider's blob.
            PolicyError: ``wrapped`` or ``aad`` is not bytes.
            KeyError_: provider closed.
        """
        header, nonce, body = _split(wrapped, KIND_FILE)
        ad = header + _aad_bytes(aad)
        ct, tag = body[:-_TAG_SIZE], bytes(body[-_TAG_SIZE:])
        # Decrypt into our own mutable buffer (update_into) so the plaintext never exists as an
        # unwipeable bytes object; it is released only after finalize() has checked the tag.
        out = bytearray(ct.nbytes)
        try:
            with self._lock:
                key = self._live_key()
                dec = Cipher(algorithms.AES(key.view()), modes.GCM(bytes(nonce), tag)).decryptor()
                dec.authenticate_additional_data(ad)
                dec.update_into(ct, out)
                dec.finalize()
        except InvalidTag:
            secure_wipe(out)
            raise AuthError(_AUTH_FAILED) from None
        except BaseException:
            secure_wipe(out)
            raise
        return SecretBytes.take(out)

    def close(self) -> None:
        """Wipe the in-memory KEK. The file stays. Idempotent."""
        with self._lock:
            self._finalizer()

    def __repr__(self) -> str:
        state = "closed" if self._key.wiped else "open"
        return f"FileKek(path={str(self._path)!r}, kek_id={self._kek_id!r}, {state})"


# -- Pkcs11Kek -----------------------------------------------------------------------------------
#
# PKCS#11 state is per process, not per object: C_Initialize/C_Finalize act on the whole module
# and the login state is shared by every session on a token. So the module and one logged-in
# session per token are shared by all Pkcs11Kek objects of this process, reference-counted, and
# the module is finalised when the last one closes (which also makes SoftHSM re-read
# SOFTHSM2_CONF and its token folder on the next open).

_REGISTRY_LOCK = threading.Lock()
_MODULES: dict[str, _ModuleRef] = {}  # module realpath -> the loaded library and its users
_TOKENS: dict[tuple[str, int], _TokenSession] = {}  # (module, slot id) -> shared session
# The PIN is never kept. A second provider on an already logged-in token must still prove it
# knows the PIN (the token would not ask again), so the first login leaves this keyed MAC of it.
_PIN_MAC_KEY: Final = os.urandom(32)


def _pin_mac(pin: str) -> bytes:
    return hmac.new(_PIN_MAC_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


class _ModuleRef:
    """A loaded PKCS#11 library and how many providers use it."""

    __slots__ = ("lib", "path", "refs")

    def __init__(self, path: str, lib: Any) -> None:
        self.path = path
        self.lib = lib
        self.refs = 0


class _TokenSession:
    """One logged-in R/W session on one token, shared by the providers that use that token."""

    __slots__ = ("lock", "modref", "pin_mac", "refs", "session", "slot_id", "token_label")

    def __init__(self, modref: _ModuleRef, slot_id: int, token_label: str, session: Session,
                 pin_mac: bytes) -> None:
        self.modref = modref
        self.slot_id = slot_id
        self.token_label = token_label
        self.session = session
        self.pin_mac = pin_mac
        self.refs = 1
        # A PKCS#11 session runs one operation at a time; this serialises the sharers.
        self.lock = threading.Lock()


def _module_error(exc: Exception, what: str) -> ProviderError:
    err = ProviderError(f"pkcs11: {what} failed ({type(exc).__name__})")
    err.__cause__ = exc
    return err


def _release_module(ref: _ModuleRef) -> None:
    """Drop one reference to a module; C_Finalize it when none is left. Caller holds the lock."""
    import pkcs11

    ref.refs -= 1
    # Identity checks: a registration that was already dropped must never finalise (or
    # unregister) the library for its current users.
    if ref.refs > 0 or _MODULES.get(ref.path) is not ref:
        return
    del _MODULES[ref.path]
    # A no-op if it was already finalised; if finalising fails there is nothing more to release.
    with contextlib.suppress(pkcs11.PKCS11Error):
        ref.lib.finalize()


def _acquire_token(module: str, token_label: str, pin: str) -> _TokenSession:
    """Join (or open and log in to) the shared session on ``token_label``; holds one module reference."""
    import pkcs11

    with _REGISTRY_LOCK:
        ref = _MODULES.get(module)
        if ref is None:
            try:
                lib = pkcs11.lib(module)  # cached per path by python-pkcs11; re-initialises if finalised
            except pkcs11.PKCS11Error:
                raise PolicyError(f"module: {module} is not a loadable PKCS#11 library") from None
            ref = _MODULES[module] = _ModuleRef(module, lib)
        ref.refs += 1
        try:
            try:
                token = ref.lib.get_token(token_label=token_label)
            except pkcs11.NoSuchToken:
                raise PolicyError(f"token_label: no token labelled {token_label!r} in {module}") from None
            except pkcs11.MultipleTokensReturned:
                raise PolicyError(f"token_label: several tokens are labelled {token_label!r} in {module}") from None
            slot_id = int(token.slot.slot_id)
            mac = _pin_mac(pin)
            shared = _TOKENS.get((module, slot_id))
            if shared is not None:
                if not hmac.compare_digest(mac, shared.pin_mac):
                    raise PolicyError(f"pin: incorrect for token {token_label!r}")
                shared.refs += 1
                return shared
            if pkcs11.Mechanism.AES_GCM not in token.slot.get_mechanisms():
                raise PolicyError(f"token_label: token {token_label!r} does not offer CKM_AES_GCM")
            try:
                session = token.open(rw=True, user_pin=pin)
            except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
                raise PolicyError(f"pin: rejected by token {token_label!r}") from None
            except pkcs11.PinLocked:
                raise PolicyError(f"pin: token {token_label!r} is locked (too many wrong PINs)") from None
            except pkcs11.PinExpired:
                raise PolicyError(f"pin: the user PIN of token {token_label!r} has expired") from None
            except pkcs11.UserPinNotInitialized:
                raise PolicyError(f"token_label: token {token_label!r} has no user PIN set") from None
            except pkcs11.UserAlreadyLoggedIn:
                raise PolicyError(f"token_label: token {token_label!r} is already logged in by other "
                                  f"code in this process") from None
            shared = _TOKENS[(module, slot_id)] = _TokenSession(ref, slot_id, token_label, session, mac)
            return shared
        except pkcs11.PKCS11Error as exc:
            _release_module(ref)
            raise _module_error(exc, f"opening token {token_label!r}") from exc
        except BaseException:
            # python-pkcs11 leaks the session of a failed login; finalising the module (when we
            # were its only user) is what closes it.
            _release_module(ref)
            raise


def _release_token(shared: _TokenSession) -> None:
    """Give back one provider's share of ``shared`` and of its module."""
    import pkcs11

    with _REGISTRY_LOCK:
        shared.refs -= 1
        if shared.refs == 0:
            key = (shared.modref.path, shared.slot_id)
            if _TOKENS.get(key) is shared:
                del _TOKENS[key]
            # Closing the last session also logs out. If the device or module is already gone
            # there is nothing left to release. A session of a module registration that was
            # dropped died with it; its handle number may now belong to someone else's session.
            if _MODULES.get(shared.modref.path) is shared.modref:
                with shared.lock, contextlib.suppress(pkcs11.PKCS11Error):
                    shared.session.close()
        _release_module(shared.modref)


def _check_token_key(key: _TokenKey, key_label: str, token_label: str) -> None:
    """Refuse a token key that is not a sensitive, never-extractable AES-256 encrypt/decrypt key."""
    from pkcs11 import Attribute, KeyType

    where = f"key_label: token key {key_label!r} on {token_label!r}"
    if key[Attribute.KEY_TYPE] != KeyType.AES or key[Attribute.VALUE_LEN] != KEK_SIZE:
        raise KeyError_(f"{where} is not an AES-256 key")
    for attr, want in ((Attribute.SENSITIVE, True), (Attribute.ALWAYS_SENSITIVE, True),
                       (Attribute.EXTRACTABLE, False), (Attribute.NEVER_EXTRACTABLE, True)):
        if bool(key[attr]) is not want:
            raise KeyError_(f"{where} has {attr.name}={not want}; a KEK must be sensitive and "
                            f"never extractable")
    if not (key[Attribute.ENCRYPT] and key[Attribute.DECRYPT]):
        raise KeyError_(f"{where} is not allowed to encrypt and decrypt")


class Pkcs11Kek(_ProviderBase):
    """AES-256-GCM key wrapping done by a PKCS#11 token (an HSM, or SoftHSM2 in tests).

    The KEK is an AES-256 token object (``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE``, not
    ``CKA_EXTRACTABLE``) found by ``key_label``, or generated inside the token on first use when
    ``create=True``. Wrapping is ``C_Encrypt`` with ``CKM_AES_GCM`` (12-byte random nonce, the
    header and ``aad`` as GCM associated data, 128-bit tag), so the key never leaves the token.
    ``CKM_AES_GCM`` was chosen over ``CKM_AES_KEY_WRAP_PAD`` because key-wrap has no associated
    data, and binding each wrapped key to its identity (``aad``) is the point; SoftHSM2 (2.6)
    implements GCM with tag verification.

    ``kek_id`` is ``pkcs11:<token label>/<key label>/<CKA_ID hex>`` (labels percent-encoded;
    the ``/<CKA_ID>`` part is omitted for a key that has no ``CKA_ID``). Generated keys get a
    random 16-byte ``CKA_ID``, so a key regenerated under the same label has a new ``kek_id``.

    Sharing: PKCS#11 initialisation and login are per process, so all providers on one token
    share one logged-in session (a later provider must still present the right PIN), and the
    module is finalised when the last provider on it closes. A token initialised after the
    module was loaded becomes visible once every provider on that module has been closed.
    First use is not coordinated across processes: two engines generating the KEK at the same
    moment would leave two keys under one label, which is then refused (``KeyError_``) rather
    than guessed at, so provision the KEK once before starting several engines.

    Limits: python-pkcs11 only passes immutable ``bytes``, so each wrap and unwrap leaves one
    transient, unwipeable copy of the material in process memory (never on disk). Some
    FIPS-mode HSMs refuse caller-chosen GCM nonces; this provider needs one that accepts them.
    SoftHSM2 reports a failed GCM tag as ``CKR_GENERAL_ERROR``, so that code, like
    ``CKR_ENCRYPTED_DATA_INVALID``, becomes :class:`AuthError` on unwrap.

    Example (``module``, ``token``, ``pin`` name an initialised token)::

        with Pkcs11Kek("/usr/lib/softhsm/libsofthsm2.so", "xps", pin) as kek:
            blob = kek.wrap(data_key, aad=b"key-id-1")
            data_key = kek.unwrap(blob, aad=b"key-id-1")
    """

    __slots__ = ("__weakref__", "_finalizer", "_kek_id", "_key", "_key_label", "_shared", "_token_label")

    def __init__(self, module: str, token_label: str, pin: str, key_label: str = "xps-kek", *,
                 create: bool = True) -> None:
        for field, value in (("module", module), ("token_label", token_label), ("key_label", key_label)):
            if not isinstance(value, str) or not value:
                raise PolicyError(f"{field}: expected a non-empty str, got {type(value).__name__}")
        if not isinstance(pin, str) or not pin:
            raise PolicyError(f"pin: expected a non-empty str, got {type(pin).__name__}")
        if not utf8_text(pin):
            raise PolicyError("pin: not valid UTF-8 (PKCS#11 PINs are UTF-8 text)")
        if not os.path.isabs(module):
            raise PolicyError(f"module: expected an absolute path to a PKCS#11 library, got {module!r}")
        if not os.path.isfile(module):
            raise PolicyError(f"module: no PKCS#11 library at {module}")
        # One spelling per library: python-pkcs11 caches by path, and a second C_Initialize of the
        # same library under another name would fail.
        module = os.path.realpath(module)

        import pkcs11

        shared = _acquire_token(module, token_label, pin)
        try:
            with shared.lock:
                key = self._find_or_generate(shared.session, token_label, key_label, create)
                key_id = bytes(key[pkcs11.Attribute.ID] or b"")
        except pkcs11.PKCS11Error as exc:
            _release_token(shared)
            raise _module_error(exc, f"finding KEK {key_label!r} on token {token_label!r}") from exc
        except BaseException:
            _release_token(shared)
            raise
        self._shared = shared
        self._key = key
        self._token_label = token_label
        self._key_label = key_label
        self._kek_id = f"pkcs11:{quote(token_label, safe='')}/{quote(key_label, safe='')}"
        if key_id:
            self._kek_id += "/" + key_id.hex()
        # Give the shared session back even if the owner forgets close(). Not at interpreter
        # exit: python-pkcs11 finalises the module itself then.
        self._finalizer = weakref.finalize(self, _release_token, shared)
        self._finalizer.atexit = False

    @staticmethod
    def _find_or_generate(session: Session, token_label: str, key_label: str, create: bool) -> _TokenKey:
        import pkcs11
        from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

        try:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_label)
        except pkcs11.MultipleObjectsReturned:
            raise KeyError_(f"key_label: several secret keys are labelled {key_label!r} on "
                            f"token {token_label!r}") from None
        except pkcs11.NoSuchKey:
            if not create:
                raise KeyError_(f"key_label: no key {key_label!r} on token {token_label!r} "
                                f"(and create=False)") from None
            # Generated inside the token; these attributes make it impossible to read back out.
            key = session.generate_key(
                KeyType.AES, KEK_SIZE * 8, id=os.urandom(16), label=key_label, store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                          Attribute.PRIVATE: True, Attribute.MODIFIABLE: False})
        _check_token_key(key, key_label, token_label)
        return key

    @property
    def kek_id(self) -> str:
        """``pkcs11:<token>/<key label>/<CKA_ID hex>`` (see the class docstring)."""
        return self._kek_id

    @property
    def token_label(self) -> str:
        """Label of the token holding the KEK."""
        return self._token_label

    @property
    def key_label(self) -> str:
        """``CKA_LABEL`` of the KEK on the token."""
        return self._key_label

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise KeyError_(f"kek: Pkcs11Kek {self._kek_id} is closed")

    def wrap(self, material: SecretBytes | bytes, aad: bytes) -> bytes:
        """Encrypt ``material`` inside the token (CKM_AES_GCM), bound to ``aad``.

        Raises:
            KeyError_: material empty, too large or wiped; provider closed.
            PolicyError: ``aad`` is not bytes.
            ProviderError: the token failed.
        """
        import pkcs11
        from pkcs11.mechanisms import GCMParams

        view = _material_view(material)
        header = _header(KIND_PKCS11)
        params = GCMParams(os.urandom(_NONCE_SIZE), header + _aad_bytes(aad), _TAG_SIZE * 8)
        data = bytes(view)  # python-pkcs11 takes only bytes (see "Limits" above)
        try:
            with self._shared.lock:
                self._check_open()
                out = self._key.encrypt(data, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
        except pkcs11.PKCS11Error as exc:
            raise _module_error(exc, f"wrap on token {self._token_label!r}") from exc
        finally:
            del data
        if not isinstance(out, bytes) or len(out) != view.nbytes + _TAG_SIZE:
            raise ProviderError(f"pkcs11: token {self._token_label!r} returned a GCM output of the wrong size")
        return header + params.nonce + out

    def unwrap(self, wrapped: bytes, aad: bytes) -> SecretBytes:
        """Verify and decrypt inside the token; nothing is returned unless the tag verifies.

        Raises:
            AuthError: wrong KEK, wrong ``aad``, truncated, altered, or another provider's blob.
            PolicyError: ``wrapped`` or ``aad`` is not bytes.
            KeyError_: provider closed.
            ProviderError: the token failed for a reason other than authentication.
        """
        import pkcs11
        from pkcs11.mechanisms import GCMParams

        header, nonce, body = _split(wrapped, KIND_PKCS11)
        params = GCMParams(bytes(nonce), header + _aad_bytes(aad), _TAG_SIZE * 8)
        try:
            with self._shared.lock:
                self._check_open()
                out = self._key.decrypt(bytes(body), mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
        except (pkcs11.GeneralError, pkcs11.EncryptedDataInvalid, pkcs11.EncryptedDataLenRange,
                pkcs11.DataLenRange, pkcs11.FunctionFailed):
            # How tokens say "tag mismatch" (SoftHSM2: CKR_GENERAL_ERROR); no detail on purpose.
            raise AuthError(_AUTH_FAILED) from None
        except pkcs11.PKCS11Error as exc:
            raise _module_error(exc, f"unwrap on token {self._token_label!r}") from exc
        if not isinstance(out, bytes) or len(out) != body.nbytes - _TAG_SIZE:
            raise ProviderError(f"pkcs11: token {self._token_label!r} returned a GCM output of the wrong size")
        return SecretBytes(out)

    def close(self) -> None:
        """Release this provider's share of the token session (the key stays on the token). Idempotent."""
        self._finalizer()

    def __repr__(self) -> str:
        state = "open" if self._finalizer.alive else "closed"
        return f"Pkcs11Kek(kek_id={self._kek_id!r}, {state})"


# -- factory -------------------------------------------------------------------------------------


def _env_pin(pin_env: str) -> str:
    """The PIN in environment variable ``pin_env``; refused (by the variable's name) if unset,
    empty, or not UTF-8."""
    pin = os.environ.get(pin_env)
    if not pin:
        raise PolicyError(f"pin_env: environment variable {pin_env} is not set (it must hold the token PIN)")
    if utf8_text(pin):
        return pin
    # A traceback keeps this frame's locals, and error reporters record them.
    del pin
    raise PolicyError(f"pin_env: environment variable {pin_env} does not hold valid UTF-8 "
                      "(non-UTF-8 bytes in the PIN)")


def open_kek(provider: str, home: Path, *, path: str = "kek.key", module: str | None = None,
             token_label: str = "xps",  # noqa: S107  (a token's name, not a password)
             pin_env: str = "XPS_PKCS11_PIN", key_label: str = "xps-kek", create: bool = True) -> KekProvider:
    """Open the KEK the keyring configuration names.

    ``provider="file"``: :class:`FileKek` at ``home / path`` (an absolute ``path`` is used as
    is), created if missing and ``create``. ``provider="pkcs11"``: :class:`Pkcs11Kek` on
    ``module`` / ``token_label`` with the PIN read from the environment variable ``pin_env`` (so
    it is never in a config file), generating ``key_label`` if missing and ``create``. The
    keyring passes ``create=False`` once its home records the KEK: a lost KEK is a refusal,
    never a new key.

    Raises:
        PolicyError: unknown provider, ``module`` missing for pkcs11, ``pin_env`` unset or empty,
            or any :class:`Pkcs11Kek` configuration error.
        KeyError_: a :class:`FileKek` file problem.

    Example:
        >>> import tempfile, pathlib
        >>> kek = open_kek("file", pathlib.Path(tempfile.mkdtemp()))
        >>> kek.kek_id.startswith("file:")
        True
        >>> kek.close()
    """
    if provider == "file":
        if not isinstance(path, str) or not path:
            raise PolicyError(f"path: expected a non-empty str, got {type(path).__name__}")
        return FileKek(Path(home) / path, create=create)
    if provider == "pkcs11":
        if module is None:
            raise PolicyError("module: required for KEK provider 'pkcs11'")
        if not isinstance(pin_env, str) or not pin_env:
            raise PolicyError(f"pin_env: expected a non-empty str, got {type(pin_env).__name__}")
        return Pkcs11Kek(module, token_label, _env_pin(pin_env), key_label, create=create)
    shown = provider if isinstance(provider, str) else type(provider).__name__
    raise PolicyError(f"provider: expected 'file' or 'pkcs11', got {shown[:40]!r}")
