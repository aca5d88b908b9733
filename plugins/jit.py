"""The ``jit`` providers: numba kernels for (X)ChaCha20-Poly1305, compiled off the call path.

Two providers, because a provider offers one implementation per operation:

* ``jit``: whole-message ChaCha20-Poly1305 and XChaCha20-Poly1305, one numba call per message
  and no library object to build per call. Wins on small messages, where fixed costs dominate.
* ``jit-openssl``: XChaCha20-Poly1305 as numba HChaCha20 feeding OpenSSL's ChaCha20-Poly1305
  (pyca/cryptography). Wins on large messages, where OpenSSL's vector code dominates.

Nothing compiles when this module is imported or when a cipher is called. The kernels are
compiled, or loaded from numba's on-disk cache (see ``_jit_cache`` for the directory and its
checks), by :func:`warm_up`, which is meant to run on a background thread after the engine
starts (:func:`start_warm_up`). Until it has finished, :func:`make_providers` returns nothing,
so a routing table can only pick these providers up once they are ready. Every way of not
being ready has a reason, in :func:`status`:

====================  ==========================================================================
state                 meaning
====================  ==========================================================================
``cold``              :func:`warm_up` has not run yet
``warming``           it is running (compiling takes seconds; loading from the cache < 1 s)
``ready``             kernels loaded, self-tests passed: :func:`make_providers` returns them
``masked``            ``XPS_SIMD_ISA_MASK`` (or the ``mask`` argument) contains ``-jit``
``unavailable``       numba missing or disabled, cache directory refused or unreadable, compile
                      failed, or a self-test failed (sticky for this process; ``reason`` says)
====================  ==========================================================================

Example:
    >>> from xpscerpto.plugins import jit
    >>> jit.status().state in ("cold", "warming", "ready", "masked", "unavailable")
    True
    >>> st = jit.warm_up()                      # doctest: +SKIP
    >>> st.state, [p.name for p in jit.make_providers()]   # doctest: +SKIP
    ('ready', ['jit', 'jit-openssl'])
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from xpscerpto import isa_mask
from xpscerpto._buffers import BYTE_FORMATS
from xpscerpto.errors import AuthError, InternalError, KeyError_, NonceError, PolicyError
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, ImplementationInfo, Provider
from xpscerpto.plugins.jit_plugin import numba_version

if TYPE_CHECKING:
    from xpscerpto.kat import KatResult

__all__ = [
    "COMPOSITE_PROVIDER_NAME",
    "MASK_ENV",
    "PROVIDER_NAME",
    "JitStatus",
    "KernelInfo",
    "make_providers",
    "mask_tokens",
    "start_warm_up",
    "status",
    "warm_up",
    "xps_register_providers",
]

PROVIDER_NAME = "jit"
COMPOSITE_PROVIDER_NAME = "jit-openssl"
#: Incident mask: comma- or space-separated ``-token`` entries (``-jit``, ``-openssl``, ``-avx512``).
MASK_ENV = isa_mask.MASK_ENV

State = Literal["cold", "warming", "ready", "masked", "unavailable"]

# A message needs blocks 1 .. 2^32 - 1 of one ChaCha20 nonce (RFC 8439 2.8).
_MAX_MESSAGE = ((1 << 32) - 1) * 64
_ZEROS32 = bytes(32)
# Buffer types the kernels' entry points read in place (contiguous, one byte per item).
_DIRECT = (bytes, bytearray)
_XNONCE_PREFIX = b"\x00\x00\x00\x00"
# CPU feature families that decide which instructions LLVM may emit for the kernels.
_ISA_FAMILIES = ("sse", "ssse3", "avx", "bmi", "fma", "adx")


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """What the router and autotune need to know about one implementation.

    Attributes:
        provider: the provider offering it (``jit`` or ``jit-openssl``).
        operation: the operation it implements, e.g. ``aead.xchacha20poly1305``.
        kernel: what runs, in words.
        backends: the mask tokens it depends on (``-jit`` removes every implementation here,
            ``-openssl`` the composite).
        constant_time: no secret-dependent branch, index or variable-time instruction
            (see ``_jit_kernels`` for the argument; OpenSSL's ChaCha20-Poly1305 likewise).
        cpu_features: ``/proc/cpuinfo`` flag names of the ISA extensions the compiled code may
            use: numba compiles for the host CPU (so a cache from another CPU is not loaded),
            limited to the families that matter for code generation. OpenSSL picks its own
            code path at run time and needs none of them.
        weight: static preference before anything is measured (the provider's priority: low,
            so a static table never prefers these over OpenSSL or libsodium).
    """

    provider: str
    operation: str
    kernel: str
    backends: tuple[str, ...]
    constant_time: bool
    cpu_features: frozenset[str]
    weight: int


@dataclass(frozen=True, slots=True)
class JitStatus:
    """Readiness of the numba kernels, and why not (see the module docstring for states).

    ``reason`` never holds caller data (warm-up sees none). ``kernels`` and ``selftests`` are
    filled once the kernels are loaded. Truthy only when ``ready``.
    """

    state: State
    reason: str
    cache_dir: str | None = None
    loaded_from_cache: bool | None = None
    seconds: float | None = None
    numba_version: str | None = None
    kernels: tuple[KernelInfo, ...] = ()
    selftests: tuple[KatResult, ...] = ()

    def __bool__(self) -> bool:
        return self.state == "ready"


# -- mask -----------------------------------------------------------------------------------------


def mask_tokens(mask: str | None = None) -> frozenset[str]:
    """The removed tokens of an incident mask (default: ``$XPS_SIMD_ISA_MASK``), lower-cased.

    Example:
        >>> sorted(mask_tokens("-jit, -AVX512 +sse2"))
        ['avx512', 'jit']
    """
    if mask is not None and not isinstance(mask, str):
        raise PolicyError(f"mask: expected a string, got {type(mask).__name__}")
    # Lenient: discovery must not fail on an odd mask; the engine refuses it when it builds a table.
    return isa_mask.parse(os.environ.get(MASK_ENV, "") if mask is None else mask, strict=False)


def _masked_by(info: KernelInfo, tokens: frozenset[str]) -> str | None:
    for backend in info.backends:
        if backend in tokens:
            return f"-{backend}"
    for token in sorted(tokens):
        if any(feature.startswith(token) for feature in info.cpu_features):
            return f"-{token}"
    return None


# -- the keyed ciphers (the call path) ------------------------------------------------------------


def _not_warm(*_args: object) -> int:
    # Stands in for a kernel until warm_up() binds it: calling never compiles, it refuses.
    raise InternalError("jit: kernels are not warmed up (xpscerpto.plugins.jit.warm_up())")


def _flat(view: memoryview) -> bool:
    """One C-contiguous run of single bytes (a released view raises ValueError here)."""
    return view.c_contiguous and view.itemsize == 1 and view.format in BYTE_FORMATS


def _as_input(value: object, field: str) -> bytes:
    """Slow path: any other byte buffer (a memoryview, an array('B')) as bytes; a copy.

    Refuses, before anything is computed, what the engine's buffer rule refuses (a strided,
    wide-format or released view): the provider declares ``checks_buffers``, so the engine
    puts no check of its own in front of each call.
    """
    if value is None and field == "associated_data":
        return b""
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise PolicyError(f"{field}: expected bytes-like, got {type(value).__name__}") from None
    with view:
        if not _flat(view):
            raise BufferError(f"{field}: expected one contiguous run of single bytes")
        return view.tobytes()


def _length_error(key: Buffer, nonce: Buffer, nonce_size: int) -> Exception:
    """Why a kernel refused its buffers (error path only)."""
    if len(key) != 32:
        return KeyError_(f"key: expected 32 bytes, got {len(key)}")
    if len(nonce) != nonce_size:
        return NonceError(f"nonce: expected {nonce_size} bytes, got {len(nonce)}")
    return PolicyError(f"data: longer than {_MAX_MESSAGE} bytes, or changed size during the call")


class _Keyed:
    """Holds the key. The subclasses are their own ``cipher`` factories (one frame to build).

    The caller's ``bytes`` are immutable and kept as they are. Any other buffer is copied into a
    ``bytearray`` this object owns, so the caller may change or wipe theirs, and the copy is
    zeroed in place when this object goes (equal-length slice assignment writes the same memory).
    """

    __slots__ = ("_key",)

    def __init__(self, key: Buffer) -> None:
        if type(key) is bytes:
            self._key: bytes | bytearray = key
        elif type(key) is bytearray:
            self._key = bytearray(key)
        else:
            try:
                view = memoryview(key)
            except TypeError:
                raise KeyError_(f"key: expected bytes-like, got {type(key).__name__}") from None
            with view:
                if not _flat(view):
                    raise BufferError("key: expected one contiguous run of single bytes")
                self._key = bytearray(view)

    def __del__(self) -> None:
        try:
            key = self._key
        except AttributeError:  # __init__ refused the key
            return
        if type(key) is bytearray:
            key[:] = _ZEROS32 if len(key) == 32 else bytes(len(key))


class _WholeMessage(_Keyed):
    """A keyed numba AEAD: one kernel call per message.

    Inputs that are ``bytes`` or ``bytearray`` go to the kernel as they are (it reads them
    holding the GIL, so no other thread can resize one mid-call); other buffers are copied.
    """

    __slots__ = ()
    _seal: Callable[[Buffer, Buffer, Buffer, Buffer, bytearray], int] = staticmethod(_not_warm)
    _open: Callable[[Buffer, Buffer, Buffer, Buffer, bytearray], int] = staticmethod(_not_warm)
    _nonce_size: ClassVar[int]

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Return ``ciphertext || tag``."""
        if type(data) not in _DIRECT:
            data = _as_input(data, "data")
        if type(associated_data) not in _DIRECT:
            associated_data = _as_input(associated_data, "associated_data")
        if type(nonce) not in _DIRECT:
            nonce = _as_input(nonce, "nonce")
        out = bytearray(len(data) + 16)
        if self._seal(self._key, nonce, data, associated_data, out):
            raise _length_error(self._key, nonce, self._nonce_size)
        return bytes(out)

    def decrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Verify, then decrypt ``ciphertext || tag``; AuthError (and no plaintext) if it fails."""
        if type(data) not in _DIRECT:
            data = _as_input(data, "data")
        if type(associated_data) not in _DIRECT:
            associated_data = _as_input(associated_data, "associated_data")
        if type(nonce) not in _DIRECT:
            nonce = _as_input(nonce, "nonce")
        if len(data) < 16:  # no room for a tag: refused as the kernel would, key and nonce first
            if len(self._key) != 32 or len(nonce) != self._nonce_size:
                raise _length_error(self._key, nonce, self._nonce_size)
            raise AuthError("ciphertext: authentication failed")
        out = bytearray(len(data) - 16)
        ok = self._open(self._key, nonce, data, associated_data, out)
        if ok == 1:
            return bytes(out)
        if ok == 0:
            raise AuthError("ciphertext: authentication failed")
        raise _length_error(self._key, nonce, self._nonce_size)


class _ChaChaKeyed(_WholeMessage):
    __slots__ = ()
    _nonce_size = 12


class _XChaChaKeyed(_WholeMessage):
    __slots__ = ()
    _nonce_size = 24


class _CompositeKeyed(_Keyed):
    """XChaCha20-Poly1305 = ChaCha20-Poly1305(HChaCha20(key, nonce[:16]), 0^4 || nonce[16:]).

    HChaCha20 is the numba kernel; the AEAD is OpenSSL's (a cipher object per call, since the
    subkey changes with every nonce). The subkey buffer is zeroed as soon as OpenSSL has it.
    """

    __slots__ = ()
    _hchacha: Callable[[Buffer, Buffer, bytearray], int] = staticmethod(_not_warm)
    _aead: Any = None  # cryptography's ChaCha20Poly1305, bound by warm_up()
    _invalid_tag: type[BaseException] = AuthError

    def _subkey_cipher(self, nonce: Buffer) -> tuple[Any, bytes]:
        """OpenSSL's ChaCha20-Poly1305 under the subkey, and the 12-byte nonce to use with it."""
        if type(nonce) not in _DIRECT:
            nonce = _as_input(nonce, "nonce")
        sub = bytearray(32)
        if len(nonce) != 24 or self._hchacha(self._key, nonce, sub):
            raise _length_error(self._key, nonce, 24)
        try:
            return self._aead(sub), _XNONCE_PREFIX + nonce[16:]
        finally:
            sub[:] = _ZEROS32

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Return ``ciphertext || tag``."""
        # OpenSSL takes any contiguous buffer in place; anything else is copied (or refused).
        if type(data) not in _DIRECT and not (type(data) is memoryview and _flat(data)):
            data = _as_input(data, "data")
        if type(associated_data) not in _DIRECT and not (
                type(associated_data) is memoryview and _flat(associated_data)):
            associated_data = _as_input(associated_data, "associated_data")
        cipher, nonce12 = self._subkey_cipher(nonce)
        return cipher.encrypt(nonce12, data, associated_data)  # type: ignore[no-any-return]

    def decrypt(self, nonce: bytes, data: Buffer, associated_data: Buffer) -> bytes:
        """Open ``ciphertext || tag``; AuthError if it fails."""
        if type(data) not in _DIRECT and not (type(data) is memoryview and _flat(data)):
            data = _as_input(data, "data")
        if type(associated_data) not in _DIRECT and not (
                type(associated_data) is memoryview and _flat(associated_data)):
            associated_data = _as_input(associated_data, "associated_data")
        cipher, nonce12 = self._subkey_cipher(nonce)
        try:
            return cipher.decrypt(nonce12, data, associated_data)  # type: ignore[no-any-return]
        except self._invalid_tag:
            raise AuthError("ciphertext: authentication failed") from None


class JitChaCha20Poly1305(Aead):
    """ChaCha20-Poly1305 (RFC 8439), whole message in one numba call."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    # Every input is bytes/bytearray (taken as is) or goes through _as_input / _flat first.
    checks_buffers = True
    cipher: Any = _ChaChaKeyed


class JitXChaCha20Poly1305(JitChaCha20Poly1305):
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha), whole message in one numba call."""

    nonce_size = 24
    cipher: Any = _XChaChaKeyed


class CompositeXChaCha20Poly1305(JitXChaCha20Poly1305):
    """XChaCha20-Poly1305: numba HChaCha20, then OpenSSL ChaCha20-Poly1305."""

    cipher: Any = _CompositeKeyed
    max_input = 2**31 - 1  # pyca/cryptography's ChaCha20Poly1305 raises OverflowError beyond


# -- readiness ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Snapshot:
    status: JitStatus
    providers: tuple[Provider, ...] = ()
    #: An unusable cache directory is the caller's to fix (an argument, a file to remove): a
    #: later warm-up tries again, unlike a broken compiler, which is not retried every start.
    retry: bool = False


class _Current:
    """Holds the one snapshot readers load: status and providers change together, in one store."""

    __slots__ = ("snapshot",)

    def __init__(self) -> None:
        self.snapshot = _Snapshot(JitStatus("cold", "not warmed up yet (call xpscerpto.plugins.jit.warm_up())"))


_current = _Current()
_lock = threading.Lock()  # serialises warm_up(); never taken by status(), make_providers() or a call


def status(mask: str | None = None) -> JitStatus:
    """Where the kernels stand and, unless ready, why; never compiles or imports numba.

    Args:
        mask: an incident mask to apply instead of ``$XPS_SIMD_ISA_MASK``.

    Raises:
        PolicyError: ``mask`` is not a string.
    """
    current = _current.snapshot.status
    if "jit" in mask_tokens(mask):
        return replace(current, state="masked", reason=f"masked by {MASK_ENV} (-jit)")
    return current


def make_providers(mask: str | None = None) -> tuple[Provider, ...]:
    """The providers whose kernels are ready and not masked; ``()`` before :func:`warm_up`.

    A provider is left out when the mask names one of its backends (``-jit``, ``-openssl``) or
    a CPU feature family its compiled code may use (``-avx512``). Never compiles.
    """
    snapshot = _current.snapshot
    if not snapshot.status:
        return ()
    tokens = mask_tokens(mask)
    masked = {k.provider for k in snapshot.status.kernels if _masked_by(k, tokens)}
    return tuple(p for p in snapshot.providers if p.name not in masked)


@hookimpl
def xps_register_providers(registry: Any) -> None:
    """Register the ready providers; while cold, a deferred source that warms them up.

    Never compiles here: an engine that tunes itself runs the source on its background
    thread (compiling, or loading numba's disk cache), then self-tests and routes.
    """
    ready = make_providers()
    for provider in ready:
        registry.add(provider)
    if not ready and status().state == "cold" and hasattr(registry, "add_later"):
        registry.add_later(_warmed_providers, provides=(PROVIDER_NAME, COMPOSITE_PROVIDER_NAME),
                           version=numba_version, backends=("jit",))


def _warmed_providers() -> tuple[Provider, ...]:
    warm_up()
    return make_providers()


def start_warm_up(cache_dir: str | os.PathLike[str] | None = None, *, mask: str | None = None) -> threading.Thread:
    """Run :func:`warm_up` on a daemon thread and return it (join it to wait).

    Raises:
        PolicyError: as :func:`warm_up`, here in the caller's thread (nothing was started).
    """
    _check_arguments(cache_dir, mask)
    thread = threading.Thread(target=warm_up, args=(cache_dir,), kwargs={"mask": mask}, name="xps-jit-warm-up",
                              daemon=True)
    thread.start()
    return thread


def _check_arguments(cache_dir: object, mask: object) -> None:
    # Refused before any state changes: a bad argument must not end jit for the process.
    if cache_dir is not None and (not isinstance(cache_dir, str | os.PathLike) or "\x00" in os.fspath(cache_dir)):
        raise PolicyError(f"cache_dir: expected a path, got {type(cache_dir).__name__}")
    if mask is not None and not isinstance(mask, str):
        raise PolicyError(f"mask: expected a string, got {type(mask).__name__}")


def warm_up(cache_dir: str | os.PathLike[str] | None = None, *, mask: str | None = None) -> JitStatus:
    """Compile the kernels, or load them from the disk cache, then self-test them.

    Idempotent and thread-safe: a second call returns the first one's outcome (a failure is
    kept for the life of the process, so a broken compiler is not retried on every start).
    A masked call does nothing, so lifting the mask later still allows a warm-up. Never
    raises for a failure; the returned status says what happened.

    Args:
        cache_dir: where numba's cache lives (default: ``NUMBA_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/xpscerpto/numba``); checked to be private to this user.
        mask: an incident mask to apply instead of ``$XPS_SIMD_ISA_MASK``.

    Raises:
        PolicyError: ``cache_dir`` is not a path or ``mask`` not a string (nothing changes).
    """
    _check_arguments(cache_dir, mask)
    with _lock:
        if "jit" in mask_tokens(mask):
            return status(mask)
        if _current.snapshot.status.state in ("ready", "unavailable") and not _current.snapshot.retry:
            return _current.snapshot.status
        _current.snapshot = _Snapshot(JitStatus("warming", "compiling or loading the kernels"))
        try:
            snapshot = _load(cache_dir)
        except Exception as exc:  # a warm-up fault must never escape into the engine's thread
            snapshot = _Snapshot(JitStatus("unavailable", f"warm-up failed: {_describe(exc)}"))
        _current.snapshot = snapshot
        return snapshot.status


# -- warm-up steps --------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _from_cache_code(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while numba read its cache (not while compiling)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("numba", "core", "caching.py")):
            return True
        tb = tb.tb_next
    return False


def _unavailable(reason: str, **details: Any) -> _Snapshot:
    return _Snapshot(JitStatus("unavailable", reason, **details))


def _load(cache_dir: str | os.PathLike[str] | None) -> _Snapshot:
    try:
        import numba
    except Exception as exc:
        return _unavailable(f"numba cannot be imported ({_describe(exc)})")
    version = str(numba.__version__)
    config: Any = numba.config
    if config.DISABLE_JIT:
        return _unavailable("NUMBA_DISABLE_JIT is set: the kernels would run as slow, non-constant-time "
                            "Python", numba_version=version)

    from . import _jit_cache

    try:
        path = _jit_cache.check_cache_dir(_jit_cache.resolve_cache_dir(cache_dir))
        _jit_cache.check_cache_files(path)
    except (_jit_cache.CacheDirError, RuntimeError) as exc:  # RuntimeError: no home directory
        return replace(_unavailable(f"cache: {exc}", numba_version=version), retry=True)

    start = time.perf_counter()
    try:
        with _jit_cache.directed(config, path):
            from . import _jit_kernels as kernels
    except Exception as exc:
        if _from_cache_code(exc):
            reason = (f"the kernel cache in {path} is unreadable ({_describe(exc)}); "
                      f"remove that directory to recompile")
        else:
            reason = f"compiling the kernels failed ({_describe(exc)})"
        return _unavailable(reason, cache_dir=str(path), numba_version=version)
    seconds = time.perf_counter() - start

    try:
        entry = _entry_points(kernels.KERNELS)
    except Exception as exc:
        return _unavailable(f"numba {version}: no compiled entry point ({_describe(exc)})",
                            cache_dir=str(path), numba_version=version)
    hits = sum(sum(d.stats.cache_hits.values()) for d in kernels.KERNELS.values())
    from_cache = hits == len(kernels.KERNELS)
    actual_dir = str(next(iter(kernels.KERNELS.values())).stats.cache_path)

    _bind(entry)
    features = _compiled_features()
    providers, infos = _build_providers(version, features)

    from xpscerpto.kat import run_selftest

    results = tuple(run_selftest(p.name, op, "aead", impl) for p in providers
                    for op, impl in sorted(p.implementations.items()))
    base = JitStatus("unavailable", "", actual_dir, from_cache, seconds, version, infos, results)
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        return _Snapshot(replace(base, reason=f"self-test failed: {first.provider} {first.operation}: "
                                              f"{first.failure}"))
    how = "loaded from the cache" if from_cache else "compiled"
    return _Snapshot(replace(base, state="ready", reason=f"{how} in {seconds:.2f} s"), providers)


def _entry_points(dispatchers: dict[str, Any]) -> dict[str, Callable[..., int]]:
    """Each kernel's native entry point, and a dispatcher that can never compile again.

    The entry point runs the compiled code for the one signature with no type dispatch
    (about 0.2 us less per call). It does not check argument types, so callers pass only
    ``bytes``/``bytearray`` inputs and a ``bytearray`` output, and the kernels check lengths.
    """
    out: dict[str, Callable[..., int]] = {}
    for name, dispatcher in dispatchers.items():
        dispatcher.disable_compile()
        (signature,) = dispatcher.signatures
        out[name] = dispatcher.overloads[signature].entry_point
    return out


def _bind(entry: dict[str, Callable[..., int]]) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    _ChaChaKeyed._seal = staticmethod(entry["chacha20poly1305_seal"])
    _ChaChaKeyed._open = staticmethod(entry["chacha20poly1305_open"])
    _XChaChaKeyed._seal = staticmethod(entry["xchacha20poly1305_seal"])
    _XChaChaKeyed._open = staticmethod(entry["xchacha20poly1305_open"])
    _CompositeKeyed._hchacha = staticmethod(entry["hchacha20"])
    _CompositeKeyed._aead = ChaCha20Poly1305
    _CompositeKeyed._invalid_tag = InvalidTag


def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _compiled_features() -> frozenset[str]:
    """The ISA extensions numba compiled for that this machine reports (cpuinfo names)."""
    import llvmlite.binding as llvm  # type: ignore[import-untyped]  # no stubs; numba's own LLVM binding
    import numba

    config: Any = numba.config
    if config.CPU_FEATURES is not None:  # NUMBA_CPU_FEATURES overrides the host's
        enabled = {f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+")}
    else:
        enabled = {name for name, on in llvm.get_host_cpu_features().items() if on}
    names = {f.replace(".", "_") for f in enabled} | ({"bmi1"} if "bmi" in enabled else set())
    return frozenset(f for f in names & _cpu_flags() if f.startswith(_ISA_FAMILIES))


def _build_providers(version: str, features: frozenset[str]) -> tuple[tuple[Provider, ...], tuple[KernelInfo, ...]]:
    import cryptography
    import llvmlite.binding as llvm
    from cryptography.hazmat.backends.openssl.backend import backend

    llvm_version = ".".join(str(v) for v in llvm.llvm_version_info)
    openssl = str(backend.openssl_version_text())
    priority = 10
    whole = "numba whole-message {} (ChaCha20 + Poly1305-donna-32, one call)"
    infos = (
        KernelInfo(PROVIDER_NAME, "aead.chacha20poly1305", whole.format("ChaCha20-Poly1305"), ("jit",),
                   True, features, priority),
        KernelInfo(PROVIDER_NAME, "aead.xchacha20poly1305", whole.format("XChaCha20-Poly1305"), ("jit",),
                   True, features, priority),
        KernelInfo(COMPOSITE_PROVIDER_NAME, "aead.xchacha20poly1305",
                   "numba HChaCha20 + OpenSSL ChaCha20-Poly1305", ("jit", "openssl"), True, features, priority),
    )
    def info(provider: str) -> dict[str, ImplementationInfo]:
        # What the engine's router reads (mask tokens, CPU features, constant time, weight).
        return {k.operation: ImplementationInfo(k.backends, k.cpu_features, k.constant_time, k.weight)
                for k in infos if k.provider == provider}

    providers = (
        Provider(name=PROVIDER_NAME, backend=f"numba {version} (LLVM {llvm_version})", version=version,
                 implementations={"aead.chacha20poly1305": JitChaCha20Poly1305(),
                                  "aead.xchacha20poly1305": JitXChaCha20Poly1305()},
                 constant_time=True, priority=priority, info=info(PROVIDER_NAME)),
        Provider(name=COMPOSITE_PROVIDER_NAME,
                 backend=f"numba {version} HChaCha20 + {openssl} via cryptography {cryptography.__version__}",
                 version=version, implementations={"aead.xchacha20poly1305": CompositeXChaCha20Poly1305()},
                 constant_time=True, priority=priority, info=info(COMPOSITE_PROVIDER_NAME)),
    )
    return providers, infos
