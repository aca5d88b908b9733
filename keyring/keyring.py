"""The keyring: named keys with versions, a lifecycle, and a hard-to-misuse AEAD.

``encrypt(name, plaintext)`` returns one self-describing blob (see :mod:`.envelope`);
``decrypt(blob)`` finds the key version itself and fails with one opaque XPS_ERR_AUTH.

Material never touches disk unwrapped: versions are generated in memory, wrapped under the
KEK and stored; a usable version lives in a :class:`SecretBytes` in this process's cache and
is wiped when the key rotates away, is revoked or destroyed, or the keyring closes.

Usage counters: encryptions are reserved from the database in blocks (``usage_block``), so
a version never exceeds its ``max_encryptions`` across all processes (a crash only wastes the
rest of a block) and is rotated before it would. The call path pays an atomic counter step.

The home decides, not the caller: a keyring opens under the security policy its home
recorded when it was initialised (approval thresholds, the KEK, windows, retention, usage
limits); a configuration that differs is refused (:meth:`Keyring.apply_policy` changes the
recorded policy, with approvals when it loosens). Every row that decides what a key may do is
sealed under a key the KEK wraps (:mod:`.integrity`), and every change is journaled if and
only if it committed (:mod:`.outbox`).

Another process's revocation reaches a long-lived keyring within :data:`RECHECK_SECONDS`
(each cached key version re-reads its state at most that long after it last did); within one
process it takes effect at once. Another process's policy change reaches it at its next
transition or retention sweep, each of which re-reads the database's sealed copy of the policy.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from xpscerpto._config_fields import utf8_text
from xpscerpto._nonce_source import GUARD as NONCE_GUARD
from xpscerpto._nonce_source import NONCES
from xpscerpto._nonce_source import refill as refill_nonces
from xpscerpto.audit import AuditLog
from xpscerpto.audit.config import AuditConfig
from xpscerpto.config import SECURITY_KEYS, XpsConfig, policy_changes
from xpscerpto.db.postgres import check_dsn, is_dsn
from xpscerpto.engine import Engine, KeyedAead
from xpscerpto.errors import KeyError_, PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.secret import SecretBytes

from .approvals import SUBJECTS, Approvals, OperatorRegistry, policy_digest
from .config import ApprovalsConfig, KeyringConfig, safe_max_encryptions
from .envelope import CODES, HEADER, NONCE_SIZES, _opaque
from .integrity import INTEGRITY_KEY_SIZE, KeyringTampered, Sealer
from .kek import KekProvider, _random_secret, open_kek
from .outbox import Outbox
from .states import Action, KeyState, VersionState, decrypt_deadline, key_after, version_destroyable
from .store import Connection, KeyRow, RewrapGrant, RosterCheck, Store, VersionRow
from .usage import parse_policy

__all__ = ["MAX_CACHED_MISSES", "MIN_REQUEST_TTL_SECONDS", "RECHECK_SECONDS", "KeyInfo", "Keyring", "VersionInfo",
           "parse_policy"]

#: Unknown (key id, version) pairs a keyring remembers for a second, so that forged blobs do not
#: each cost a lock and a database read; the oldest are forgotten first.
MAX_CACHED_MISSES = 4096
#: How long a cached key version may go without re-reading its state: the bound on how late
#: another process's revocation (or rotation) takes effect in a long-lived keyring.
RECHECK_SECONDS = 1.0
#: How old the last full roster check may get before a re-read checks every row again (see
#: Keyring._check_rows); one check costs about 12 ms per 1,000 keys.
ROSTER_FULL_SECONDS = 10.0
#: Highest version number a key may have (SQLite integers are 64-bit; this is plenty).
MAX_VERSION = 2**31 - 1
#: How long an approved rewrap of a revoked key's blobs stays usable (it may be resumed).
REWRAP_GRANT_SECONDS = 7 * 86400.0
#: The shortest ``approvals.request_ttl`` :meth:`Keyring.apply_policy` accepts: a request must live
#: long enough to be signed by each approver and applied, or nothing (not even undoing the change)
#: could be approved again.
MIN_REQUEST_TTL_SECONDS = 300.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_HEXISH = re.compile(r"[0-9A-Fa-f]+")
_urandom = os.urandom
_next = next  # blob nonces: a batch of os.urandom output (xpscerpto._nonce_source)
_unpack = HEADER.unpack_from
_BYTES_LIKE = (bytes, bytearray, memoryview)  # a tuple: ``bytes | bytearray | memoryview`` is built per call
_ct_eq = hmac.compare_digest  # constant time; both sides are 32-byte bytes here
_PREFIX_SIZE = HEADER.size
#: Below this many bytes after the header, a bytes blob's ciphertext is sliced (one small copy,
#: cheaper than a memoryview and its slice); from here on it is read in place.
_SLICE_BELOW = 4096
_INTEGRITY_AAD = b"xps-keyring/integrity-key/v1"
#: The integrity key's wrapping once the database keeps a roster (see store.py). The roster's
#: presence is bound to the KEK this way: deleting the roster row cannot make the database look
#: like one from before rosters, which would be given a fresh roster over whatever rows are left.
_INTEGRITY_AAD_ROSTER = b"xps-keyring/integrity-key/v2+roster"
_RETENTION_EVERY = 60.0  # seconds between retention sweeps in a long-lived keyring
#: Seconds between writes of the usage counters (decryptions, last use) from the slow path, so
#: other nodes' "unused for" proofs (orchestrator hygiene) are at most this much behind.
USAGE_FLUSH_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What ``describe`` reports about one version (never material)."""

    version: int
    state: VersionState
    created: float
    retired_at: float | None
    revoked_at: float | None
    destroyed_at: float | None
    encryptions: int  # reserved: an upper bound of the encryptions made
    decryptions: int
    last_used: float | None
    decrypts_until: float | None  # end of the dual-key window for a retired version
    algorithm: str | None = None  # this version's AEAD (a rotation may change it)
    destroy_after: float | None = None  # when retention destroys a retired version


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key's metadata and versions."""

    key_id: str
    name: str
    algorithm: str
    policy: str
    state: KeyState
    created: float
    rotate_every: float | None
    max_encryptions: int
    revoke_reason: str | None
    versions: tuple[VersionInfo, ...]

    @property
    def active_version(self) -> int | None:
        """The version that encrypts, if any."""
        return next((v.version for v in self.versions if v.state is VersionState.ACTIVE), None)


def _aad_bytes(aad: object) -> bytes:
    """A caller's associated data as plain bytes, else PolicyError (checked before the blob is read)."""
    if not isinstance(aad, _BYTES_LIKE):
        raise PolicyError(f"aad: expected bytes-like, got {type(aad).__name__}")
    try:
        with memoryview(aad) as view:
            return view.tobytes()
    except ValueError:
        raise PolicyError("aad: expected bytes-like, got a released memoryview") from None


class _Handle:
    """A usable key version in memory: derived keys, header prefix, usage window."""

    __slots__ = ("aead", "algorithm", "checked_at", "code", "commitment", "counter", "decrypt_until",
                 "decrypted_before", "decryptions", "header_size", "key_id", "last_used", "name", "nonce_size",
                 "prefix", "recheck_at", "state", "version")

    def __init__(self, row: KeyRow, ver: VersionRow, algorithm: str, aead: KeyedAead, commitment: bytes) -> None:
        self.key_id, self.name, self.version, self.algorithm = row.key_id, row.name, ver.version, algorithm
        self.state = ver.state
        self.decrypt_until = -math.inf  # set by the keyring from the version's state
        self.aead, self.commitment = aead, commitment
        self.code = CODES[algorithm]
        self.prefix = HEADER.pack(1, bytes.fromhex(row.key_id), ver.version, self.code, commitment)
        self.nonce_size = NONCE_SIZES[algorithm]
        self.header_size = HEADER.size + self.nonce_size
        self.counter = itertools.count()  # at >= 0: no encryptions reserved (see Keyring.encrypt)
        # Usable without a re-read while checked_at <= now < recheck_at: a clock stepped back
        # (now < checked_at) re-reads at once instead of trusting the cache until it catches up.
        self.recheck_at = 0.0
        self.checked_at = 0.0
        self.decryptions = 0
        self.decrypted_before = 0  # decryptions already flushed (decrypt_counts adds both)
        self.last_used = 0.0  # flushed to the database with the counters


class Keyring:
    """Named, versioned keys in SQLite under a KEK, with an audited lifecycle.

    Args:
        home: the engine home (the database, KEK file and the home's record live there).
        engine: the engine whose AEAD and HKDF the keyring uses (default: the module's).
        config: keyring settings. ``None`` (and ``approvals=None``): the security policy the
            home recorded. Given: its security keys must equal the recorded ones.
        approvals: how many operator approvals revoke/destroy need (same rule as ``config``).
        kek: a KEK provider (default: from the recorded ``keyring.kek``).
        audit: the journal (default: ``HOME/audit.log``).
        clock: seconds since the epoch (injectable for tests of time-based rules).
        operator: who acts (recorded in the journal).
        adopt: seal a database that has no seals yet (one written by an earlier release), as
            it is; only ``xps init --adopt`` passes it. Without it such a database is refused:
            its rows could be anyone's, and sealing them would make them look genuine.

    Raises:
        PolicyError: the configuration differs from the home's recorded policy, a recorded
            store (database, KEK, journal) is missing or unreadable, or ``home`` is not a path.
        KeyringTampered: a row or the recorded policy fails its integrity seal.

    Example:
        >>> ring = Keyring("/tmp/xps-home")                          # doctest: +SKIP
        >>> kid = ring.create("orders", "AES-256-GCM", policy="rotate=90d")
        >>> blob = ring.encrypt("orders", b"secret", aad=b"order:42")
        >>> ring.decrypt(blob, aad=b"order:42")
        b'secret'
    """

    def __init__(self, home: str | Path | Home | None = None, *, engine: Engine | None = None,
                 config: KeyringConfig | None = None, approvals: ApprovalsConfig | None = None,
                 audit_config: AuditConfig | None = None, kek: KekProvider | None = None,
                 audit: AuditLog | None = None, clock: Callable[[], float] = time.time,
                 operator: str = "local", adopt: bool = False) -> None:
        for name, value, typ in (("config", config, KeyringConfig), ("approvals", approvals, ApprovalsConfig),
                                 ("audit_config", audit_config, AuditConfig)):
            if value is not None and not isinstance(value, typ):
                raise PolicyError(f"{name}: expected a {typ.__name__}, got {type(value).__name__}")
        if not callable(clock):
            raise PolicyError(f"clock: expected a callable, got {type(clock).__name__}")
        if not isinstance(operator, str) or not operator:
            raise PolicyError("operator: expected a non-empty str")
        if home is not None and not isinstance(home, str | os.PathLike | Home):
            raise PolicyError(f"home: expected a path, got {type(home).__name__}")
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.clock = clock
        self.operator = operator
        self._adopt = adopt is True
        #: True once this open sealed an earlier release's database (its HOME_INIT is journaled).
        self.adopted = False
        self.config, self.approvals_config = self._bind_policy(config, approvals)
        self.audit_config = audit_config or AuditConfig()
        if engine is None:
            from xpscerpto import default_engine

            engine = default_engine()
        self.engine = engine
        self.audit = audit or self.audit_config.journal(self.home.root, self.home.audit)
        self._owns_audit = audit is None
        if audit is None:
            self._check_audit_store()
        # A new KEK is recorded only with its keyring (below): a home that records a KEK always
        # had a keyring, so one whose keyring is missing from the record is refused, not re-made.
        owns_kek, new_kek = kek is None, None
        if kek is None:
            kek, new_kek = self._open_kek()
        self.kek = kek
        try:
            self.store, ref, create = self._open_store()
        except BaseException:
            if owns_kek:
                self.kek.close()
            raise
        self._lock = threading.RLock()  # slow paths only: loading, reserving, transitions
        self._active: dict[str, _Handle] = {}  # name -> the handle that encrypts
        self._handles: dict[tuple[bytes, int], _Handle] = {}  # (key id, version) -> handle
        # The same handles by their blobs' 46-byte header prefix, for decrypt's one-lookup path;
        # changed only with _handles, through _keep_handle and _drop_handle.
        self._by_prefix: dict[bytes, _Handle] = {}
        self._misses: dict[tuple[bytes, int], float] = {}  # (key id, version) -> don't look again before
        # The last roster check that passed, at open or later: re-reads compare with it (see _check_rows).
        self._roster_check: RosterCheck | None = None
        self.store.roster_listener = self._roster_written
        self._aead = engine.aead
        self.outbox = Outbox(self.store, self.audit, clock)
        self._retention_at = 0.0
        self._usage_flush_at = 0.0
        self._policy_text: str | None = None  # the sealed policy (JSON) self.config was last taken from
        self._failures: dict[tuple[bytes, int], itertools.count[int]] = {}  # (key id, version) -> failures
        # Successful decryptions of handles dropped at a transition, and their names: the counts
        # stay monotonic (a canary's evidence must survive a rotation during its watch).
        self._dropped: dict[tuple[bytes, int], tuple[str, int]] = {}
        try:
            self._attach_integrity(created=create and self.store.empty())
            if create:
                self.home.register_store("keyring", ref)
            if new_kek is not None:
                self.home.register_store("kek", new_kek)
            self.store.on_change(self._changed_elsewhere)
            self._check_policy_seal()
            self.outbox.deliver()  # records a crash left queued (see .outbox)
            self.enforce_retention()
        except BaseException:
            self.store.close()
            if owns_kek:
                self.kek.close()
            raise

    # -- the AEAD ---------------------------------------------------------------------------

    def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under the active version of key ``name``; returns the self-describing blob.

        Raises:
            KeyError_: no usable key of that name (unknown, revoked, destroyed).
            PolicyError: ``plaintext`` or ``aad`` is not bytes-like.
        """
        try:
            h = self._active.get(name)
        except (TypeError, ValueError):  # ValueError: a writable or released memoryview is not hashable
            raise KeyError_(f"name: expected str, got {type(name).__name__}") from None
        now = self.clock()
        # The counter runs from minus the reserved block up to zero: one atomic step per call.
        if h is None or not h.checked_at <= now < h.recheck_at or next(h.counter) >= 0:
            h = self._encrypting_handle(name, now)
        h.last_used = now
        nonce = (NONCE_GUARD[0] and _next(NONCES[h.nonce_size], None)) or refill_nonces(h.nonce_size)
        header = h.prefix + nonce
        try:
            aad = header + aad
        except TypeError:
            raise PolicyError(f"aad: expected bytes-like, got {type(aad).__name__}") from None
        return header + h.aead.encrypt_wire(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Open a blob from :meth:`encrypt`; any failure is one opaque AuthError naming no key.

        Every failure — malformed blob, unknown, revoked or destroyed key, version outside its
        window, wrong tag — raises the same error from the same place, with no chained cause
        or context, so neither the message nor the traceback tells a valid key from another.

        Raises:
            AuthError: ``keyring: decryption failed``.
            PolicyError: ``aad`` is not bytes-like (checked before the blob is looked at).
        """
        if type(aad) is not bytes:
            # Plain bytes from here on: a subclass's own __radd__ could change what is authenticated.
            aad = _aad_bytes(aad)
        # One frame for the whole success path (a 64-byte decrypt is mostly fixed costs). Every
        # failure leaves its except block first and ends at the one _fail() below, so the
        # opaque error carries no context.
        ref: tuple[bytes, int] | None = None
        # Fast path: the header prefix (format, key id, version, algorithm, commitment) names a
        # loaded handle outright, which replaces the unpack and the field checks. A dict lookup
        # is not a constant-time comparison, and need not be: the prefix, commitment included,
        # is written in clear into every blob of that version, so equality with it reveals
        # nothing (and where a probe goes depends on a keyed hash, not on matching bytes).
        h = self._by_prefix.get(blob[:_PREFIX_SIZE]) if type(blob) is bytes else None
        now = self.clock()
        # Past its re-check deadline, or outside its window, the full path decides.
        if h is not None and h.checked_at <= now < h.recheck_at and now < h.decrypt_until:
            n = h.header_size
            try:
                plaintext = h.aead.decrypt(blob[_PREFIX_SIZE:n],
                                           blob[n:] if len(blob) - n < _SLICE_BELOW else memoryview(blob)[n:],
                                           blob[:n] + aad)
            except (XpsError, TypeError, BufferError, ValueError):
                plaintext = None
            if plaintext is not None:
                h.decryptions += 1
                h.last_used = now
                return plaintext
            ref = (blob[1:9], h.version)
        else:
            src: Any = blob
            if type(src) is not bytes and type(src) is not bytearray and type(src) is not memoryview:
                try:  # a subclass is read through a view: its own __getitem__ is not called
                    src = memoryview(src)
                except (TypeError, ValueError):
                    src = None
            try:
                fmt, key_id, version, code, commitment = _unpack(src)
            except (struct.error, TypeError, BufferError, ValueError):
                fmt = None
            if fmt is not None:
                ref = (key_id, version)
                h = self._handles.get(ref)
                if h is None or not h.checked_at <= now < h.recheck_at:
                    h = self._handle_for_decrypt(key_id, version, now)
                # decrypt_until folds Appendix A into one number: +inf for the active version,
                # the end of the dual-key window for a retired one, -inf for anything unusable.
                if h is not None and now < h.decrypt_until and fmt == 1 and code == h.code and _ct_eq(
                        h.commitment, commitment):
                    n = h.header_size
                    try:
                        plaintext = h.aead.decrypt(src[HEADER.size:n], memoryview(src)[n:], bytes(src[:n]) + aad)
                    except (XpsError, TypeError, BufferError, ValueError):
                        plaintext = None
                    if plaintext is not None:
                        h.decryptions += 1
                        h.last_used = now
                        return plaintext
        self._fail(ref)

    def _handle_for_decrypt(self, key_id: bytes, version: int, now: float) -> _Handle | None:
        """The version's handle, or None (a recent miss is remembered; never raises)."""
        miss = self._misses.get((key_id, version))
        if miss is not None and miss - RECHECK_SECONDS <= now < miss:
            return None
        try:
            return self._decrypting_handle(key_id, version, now)
        except XpsError:
            return None

    def _fail(self, ref: tuple[bytes, int] | None) -> NoReturn:
        # The caller always gets the same opaque error, whatever happens to the audit record.
        if ref is not None and ref in self._handles:  # counted for known versions only: forged
            counter = self._failures.get(ref)         # blobs name endless key ids
            if counter is None:
                counter = self._failures.setdefault(ref, itertools.count(1))
            next(counter)
        fields: dict[str, Any] = {"key_id": ref[0].hex(), "version": ref[1]} if ref is not None else {}
        with contextlib.suppress(XpsError, OSError):
            self.audit.record_rate_limited("CRYPTO_FAIL_AUTH", "keyring", self.audit_config.auth_fail_per_minute,
                                           **fields)
        raise _opaque()

    def rewrap(self, blobs: Sequence[bytes], aad: bytes = b"", *,
               progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """Re-encrypt blobs under their key's newest version (those already there are kept).

        ``progress(done, total)`` is called after each blob (the CLI draws a bar with it).
        """
        if not isinstance(blobs, list | tuple):
            raise PolicyError(f"blobs: expected a list of blobs, got {type(blobs).__name__}")
        if progress is not None and not callable(progress):  # checked before any blob is done
            raise PolicyError(f"progress: expected a callable or None, got {type(progress).__name__}")
        out: list[bytes] = []
        for i, blob in enumerate(blobs, 1):
            try:
                _, key_id, version, _, _ = _unpack(blob)
            except (struct.error, TypeError, BufferError, ValueError):
                raise _opaque() from None
            row = self.store.key(key_id.hex())
            active = self.store.active_version(row.key_id) if row is not None else None
            if active is not None and active.version == version:
                out.append(bytes(blob))
            else:
                plaintext = self.decrypt(blob, aad)  # raises the opaque error for unusable keys
                assert row is not None
                out.append(self.encrypt(row.name, plaintext, aad))
            if progress is not None:
                progress(i, len(blobs))
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, name: str, algorithm: str | None = None, policy: str | None = None) -> str:
        """Create key ``name`` with an active version 1; returns its key id.

        ``algorithm`` defaults to the configured ``aead.default``. Idempotent: creating an
        existing active name with the same algorithm and policy returns its id. A name that
        belonged to a revoked or destroyed key is not reused.

        Raises:
            PolicyError: a bad name, algorithm or policy, or the name is taken.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PolicyError(f"name: expected a name like 'orders' (letters, digits, _.-; at most 128), got "
                              f"{_shown(name)}")
        algorithm = self._algorithm(algorithm, "algorithm")
        if _KEY_ID.fullmatch(name):
            raise PolicyError(f"name: {name!r} looks like a key id; names and ids share one namespace")
        if len(name) > 16 and _HEXISH.fullmatch(name):
            # A long run of hex digits is far more likely key material pasted in the wrong place
            # than a name; names end up in messages and the journal, so refuse it.
            raise PolicyError(f"name: a str of {len(name)} hex digits looks like key material, not a name")
        if policy is not None:
            parse_policy(policy)  # a bad policy is refused before anything is read
        self._routable(algorithm, "algorithm")
        now = self._now()
        key_id = _urandom(8).hex()
        with self._lock:
            self.outbox.deliver()
            try:
                with self.store.write() as db:
                    self._refresh_policy(db)
                    policy = policy if policy is not None else self.config.default_policy
                    rotate_every, max_enc = parse_policy(policy)
                    existing = self.store.key(name, db)
                    if existing is not None:
                        if existing.state is not KeyState.ACTIVE:
                            raise PolicyError(f"name: {name!r} belonged to a key that is now {existing.state}; "
                                              "names are not reused (the journal still refers to it)")
                        if (existing.algorithm, existing.policy) != (algorithm, policy):
                            raise PolicyError(f"name: a key named {name!r} exists with another algorithm or policy")
                        return existing.key_id
                    self.store.insert_key(db, KeyRow(key_id, name, algorithm, policy, rotate_every,
                                                     self._max_encryptions(algorithm, max_enc), KeyState.ACTIVE,
                                                     now, now, None))
                    self._insert_version(db, key_id, algorithm, 1, now)
                    self.outbox.add(db, "KEY_CREATE", key_id=key_id, name=name, algorithm=algorithm, policy=policy,
                                    version=1, operator=self.operator)
            except sqlite3.IntegrityError:  # another process created the same name first
                existing = self.store.key(name)
                assert existing is not None
                return existing.key_id
        self._deliver()
        return key_id

    def rotate(self, ref: str, *, expected_version: int | None = None, reason: str = "manual",
               algorithm: str | None = None, claim: Callable[[Connection], None] | None = None) -> int:
        """Retire the active version and activate a new one; returns the active version.

        With ``expected_version`` the rotation happens only if that version is still active,
        so concurrent rotations (other threads or processes) produce exactly one new version.
        ``algorithm`` moves the key to another suite from the new version on (old blobs still
        open under their own version's algorithm during the dual-key window). ``claim`` runs
        last inside the rotation's transaction (the orchestrator's fenced run record): if it
        raises, nothing of the rotation is committed.

        Raises:
            PolicyError: the key cannot rotate (revoked, destroyed), a bad algorithm or
                ``expected_version``.
            KeyError_: no such key.
        """
        expected = _optional_version(expected_version, "expected_version")
        algo = self._algorithm(algorithm, "algorithm") if algorithm is not None else None
        if algo is not None:
            self._routable(algo, "algorithm")
        if not isinstance(reason, str) or not reason:
            raise PolicyError("reason: expected a non-empty str")
        _utf8(reason, "reason")
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                self._refresh_policy(db)
                row = self._key_row(ref, db)
                key_after(row.state, Action.ROTATE)
                active = self.store.active_version(row.key_id, db)
                if active is None:
                    raise KeyringTampered(f"keyring database {self.store.name!r}: key {_shown(row.name)} has no "
                                          "active version (a row removed?); restore it from a backup")
                if expected is not None and active.version != expected:
                    return active.version  # someone rotated away from it already
                now = self._now()
                new_algo = algo or active.algorithm or row.algorithm
                self.store.update_version(db, row.key_id, active.version, state=VersionState.RETIRED, retired_at=now)
                new = active.version + 1
                self._insert_version(db, row.key_id, new_algo, new, now)
                self.store.update_key(db, row.key_id, updated=now,
                                      max_encryptions=self._max_encryptions(new_algo, parse_policy(row.policy)[1]))
                fields: dict[str, Any] = {"algorithm": new_algo} if new_algo != (active.algorithm or row.algorithm) \
                    else {}
                self.outbox.add(db, "KEY_ROTATE", key_id=row.key_id, name=row.name, version=new,
                                retired=active.version, reason=reason, operator=self.operator, **fields)
                if claim is not None:
                    claim(db)
            self._forget(row.key_id, row.name)
        self._deliver()
        # Committed: a database gone now must not make the caller think the rotation did not
        # happen (an operator retrying rotated twice: found by a review). Retention runs again
        # at the next operation.
        with contextlib.suppress(XpsError):
            self.enforce_retention()
        return new

    def revoke(self, ref: str, reason: str, *, approvals: Approvals | None = None, emergency: bool = False) -> None:
        """Make every version unusable (no encrypt, no decrypt). Idempotent.

        Raises:
            PolicyError: no reason, too few or wrong approvals, or the key is destroyed.
            KeyError_: no such key.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError("reason: a revocation needs a reason")
        _utf8(reason, "reason")
        if not isinstance(emergency, bool):
            raise PolicyError("emergency: expected a bool")
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                self._refresh_policy(db)
                required = self.approvals_config.emergency_revoke if emergency else self.approvals_config.revoke
                row = self._key_row(ref, db)
                if row.state is KeyState.REVOKED:
                    return
                key_after(row.state, Action.REVOKE)
                signers = self._check_approvals(db, approvals, required, "revoke", row.key_id, None, emergency,
                                                reason=reason)
                now = self._now()
                for ver in self.store.versions(row.key_id, db):
                    if ver.state in (VersionState.ACTIVE, VersionState.RETIRED):
                        self.store.update_version(db, row.key_id, ver.version, state=VersionState.REVOKED,
                                                  revoked_at=now)
                self.store.update_key(db, row.key_id, state=KeyState.REVOKED, updated=now, revoke_reason=reason)
                self.outbox.add(db, "KEY_REVOKE", key_id=row.key_id, name=row.name, reason=reason,
                                emergency=emergency, approvers=sorted(signers), required_approvals=required,
                                operator=self.operator)
            self._forget(row.key_id, row.name)
        self._deliver()

    def destroy(self, ref: str, *, version: int | None = None, approvals: Approvals | None = None,
                emergency: bool = False) -> None:
        """Erase material: of one retired/revoked version, or of a revoked key. Idempotent, one-way.

        A retired version is kept (retention) until its dual-key window and then
        ``keyring.destroy_after`` have passed, when it is destroyed automatically; destroying
        it earlier needs an approved emergency destroy (``emergency=True``).

        Raises:
            PolicyError: the state does not allow it, retention is not over, or approvals
                are short.
            KeyError_: no such key or version.
        """
        target_version = _optional_version(version, "version")
        if not isinstance(emergency, bool):
            raise PolicyError("emergency: expected a bool")
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                self._refresh_policy(db)
                required = self.approvals_config.destroy
                row = self._key_row(ref, db)
                now = self._now()
                if target_version is None:
                    if row.state is KeyState.DESTROYED:
                        return
                    key_after(row.state, Action.DESTROY)
                    targets = [v.version for v in self.store.versions(row.key_id, db)]
                else:
                    ver = self.store.version(row.key_id, target_version, db)
                    if ver is None:
                        raise KeyError_(f"version: key {row.name!r} has no version {target_version}")
                    if ver.state is VersionState.DESTROYED:
                        return
                    version_destroyable(ver.state)
                    until = self._retained_until(ver)
                    if until is not None and now < until and not emergency:
                        raise PolicyError(f"retention: version {target_version} of {row.name!r} is kept until "
                                          f"{_utc(until)} (dual-key window, then keyring.destroy_after); destroying "
                                          "it earlier needs an approved emergency destroy", reason="retention")
                    targets = [target_version]
                signers = self._check_approvals(db, approvals, required, "destroy", row.key_id, target_version,
                                                emergency)
                self._erase(db, row, targets, now, final=target_version is None)
                self.outbox.add(db, "KEY_DESTROY", key_id=row.key_id, name=row.name,
                                version=target_version if target_version else "all", approvers=sorted(signers),
                                required_approvals=required, emergency=emergency, operator=self.operator)
            self._forget(row.key_id, row.name)
        self._deliver()
        self.store.checkpoint()  # the erased wrapped material leaves the WAL as well

    def enforce_retention(self) -> list[tuple[str, int]]:
        """Destroy every retired version whose retention is over; returns (key id, version) pairs.

        Runs when a keyring opens, after each rotation, and at most once a minute in a
        long-lived keyring. Each destruction is journaled (``KEY_DESTROY`` with
        ``reason: retention``); the versions' metadata and their records remain.
        """
        now = self._now()
        self._retention_at = now + _RETENTION_EVERY
        self._refresh_policy_now()
        due = [v for v in self.store.retired_versions() if (u := self._retained_until(v)) is not None and now >= u]
        done: list[tuple[str, int]] = []
        for ver in due:
            with self._lock, self.store.write() as db:
                # Decided again in the destroying transaction, under the policy sealed now.
                self._refresh_policy(db)
                current = self.store.version(ver.key_id, ver.version, db)
                row = self.store.key(ver.key_id, db)
                if (current is None or row is None or current.state is not VersionState.RETIRED
                        or (until := self._retained_until(current)) is None or now < until):
                    continue
                self._erase(db, row, [ver.version], now, final=False)
                self.outbox.add(db, "KEY_DESTROY", key_id=row.key_id, name=row.name, version=ver.version,
                                reason="retention", approvers=[], required_approvals=0, emergency=False,
                                operator="retention")
                done.append((row.key_id, ver.version))
            self._forget(ver.key_id, row.name)
        if done:
            self._deliver()
            self.store.checkpoint()
        return done

    # -- rewrap after a revocation -----------------------------------------------------------

    def grant_rewrap(self, revoked: str, successor: str, *, reason: str,
                     approvals: Approvals | None = None) -> RewrapGrant:
        """Authorise re-encrypting a revoked key's blobs under ``successor`` (an active key).

        The revoked key stays unusable for everything else; the grant only lets
        :meth:`rewrap_revoked` open its blobs to re-encrypt them. It needs the home's
        administrative approvals (``max(approvals.revoke, approvals.destroy)``), is journaled
        (``REWRAP_GRANT``), and lasts :data:`REWRAP_GRANT_SECONDS` so an interrupted rewrap can
        resume.

        Raises:
            PolicyError: the first key is not revoked, the successor is not active, or
                approvals are short.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError("reason: a rewrap of a revoked key needs a reason")
        _utf8(reason, "reason")
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                self._refresh_policy(db)
                old, new = self._key_row(revoked, db, "revoked"), self._key_row(successor, db, "successor")
                if old.state is not KeyState.REVOKED:
                    raise PolicyError(f"revoked: {old.name!r} is {old.state}; only a revoked key's blobs are rewrapped "
                                      "this way (use rewrap for rotated keys)")
                if new.state is not KeyState.ACTIVE:
                    raise PolicyError(f"successor: {new.name!r} is {new.state}; it must be active")
                signers = self._check_approvals(db, approvals, self._admin_threshold, "rewrap",
                                                f"{old.key_id}:{new.key_id}", None, False, reason=reason)
                grant = RewrapGrant(old.key_id, new.key_id, self._now() + REWRAP_GRANT_SECONDS,
                                    tuple(sorted(signers)))
                self.store.put_grant(db, grant)
                self.outbox.add(db, "REWRAP_GRANT", key_id=old.key_id, name=old.name, successor=new.key_id,
                                successor_name=new.name, reason=reason, approvers=sorted(signers),
                                required_approvals=self._admin_threshold, expires=grant.expires,
                                operator=self.operator)
        self._deliver()
        return grant

    def rewrap_revoked(self, blobs: Sequence[bytes], aad: bytes = b"", *,
                       progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """Re-encrypt blobs of granted revoked keys under their successor; others pass through rewrap.

        Blobs already under the successor's active version are kept as they are, so running it
        again after an interruption resumes where it stopped. Each call is journaled once
        (``REWRAP_REVOKED`` with the count per key).

        Raises:
            AuthError: a blob does not open (the same opaque error as :meth:`decrypt`).
            PolicyError: a blob's key is revoked without a valid grant.
        """
        if not isinstance(blobs, list | tuple):
            raise PolicyError(f"blobs: expected a list of blobs, got {type(blobs).__name__}")
        if progress is not None and not callable(progress):  # checked before any blob is done
            raise PolicyError(f"progress: expected a callable or None, got {type(progress).__name__}")
        counts: dict[str, int] = {}
        out: list[bytes] = []
        for i, blob in enumerate(blobs, 1):
            try:
                _, key_id, version, _, _ = _unpack(blob)
            except (struct.error, TypeError, BufferError, ValueError):
                raise _opaque() from None
            grant = self.store.grant(key_id.hex())
            if grant is None:
                out.extend(self.rewrap([blob], aad))
            else:
                if self._now() >= grant.expires:
                    raise PolicyError(f"rewrap: the grant for {key_id.hex()} expired; request a new one",
                                      reason="approvals")
                successor = self._key_row(grant.successor)
                plaintext = self._open_revoked(blob, aad, key_id.hex(), version)
                out.append(self.encrypt(successor.name, plaintext, aad))
                counts[key_id.hex()] = counts.get(key_id.hex(), 0) + 1
            if progress is not None:
                progress(i, len(blobs))
        if counts:
            with self._lock, self.store.write() as db:
                for kid, n in sorted(counts.items()):
                    self.outbox.add(db, "REWRAP_REVOKED", key_id=kid, blobs=n, operator=self.operator)
            self._deliver()
        return out

    def _open_revoked(self, blob: bytes, aad: bytes, key_id: str, version: int) -> bytes:
        """Open one blob of a revoked version for a granted rewrap (never cached, never encrypts)."""
        with self._lock, self.store.snapshot() as db:
            row = self.store.key(key_id, db)
            ver = self.store.version(key_id, version, db) if row is not None else None
            self._check_rows(db, row, ver)
        if row is None or ver is None or ver.wrapped is None or ver.state is not VersionState.REVOKED:
            self._fail((bytes.fromhex(key_id), version))
        h = self._make_handle(row, ver, self.clock())
        try:
            fmt, _, _, code, commitment = _unpack(blob)
            n = h.header_size
            if fmt != 1 or code != h.code or not _ct_eq(h.commitment, commitment):
                raise _opaque()
            return h.aead.decrypt(blob[HEADER.size:n], memoryview(blob)[n:], bytes(blob[:n]) + aad)
        except XpsError:
            self._fail((bytes.fromhex(key_id), version))
        finally:
            h.aead.wipe()

    # -- operators and the home's policy -----------------------------------------------------

    def register_operator(self, public_key_path: str | Path, label: str = "", *,
                          approvals: Approvals | None = None) -> str:
        """Add an operator key allowed to approve; returns its key id.

        The home's first operator joins without approvals (see :meth:`register_operators`);
        every later one needs the home's administrative approvals
        (``max(approvals.revoke, approvals.destroy)``) — so whoever can run the CLI cannot
        register two keys of their own and approve their own revocation or a looser policy.
        One transaction with its journal record.
        """
        return self.register_operators([public_key_path], label, approvals=approvals)[0]

    def register_operators(self, public_key_paths: Sequence[str | Path], label: str = "", *,
                           approvals: Approvals | None = None,
                           labels: Sequence[str] | None = None) -> list[str]:
        """Add several operator keys in one transaction (each journaled); returns their key ids.

        Only a home with no operator registered and no key yet — the set-up ``xps init`` does —
        takes its first operators without approvals, all of them at once; after that, the set-up
        window is closed for good, whether or not a key was created. A key registered already
        is left as it is (nothing to approve, nothing journaled).

        Args:
            label: the label of every key, unless ``labels`` gives one per key.

        Raises:
            PolicyError: approvals short of the administrative threshold, a bad label, or
                ``labels`` of another length.
        """
        from xpscerpto.signing import load_public_key

        if isinstance(public_key_paths, (str, bytes)) or not isinstance(public_key_paths, Sequence):
            raise PolicyError("public_key_paths: expected a list of paths")
        names = [label] * len(public_key_paths) if labels is None else labels
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != len(public_key_paths) \
                or not all(isinstance(n, str) for n in names):
            raise PolicyError("label: expected a str (labels: one str per key)")
        for name in names:
            _utf8(name, "label")
        keys = [load_public_key(path) for path in public_key_paths]
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                self._refresh_policy(db)
                known = self.store.operators(db)
                setting_up = not known and db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is None
                required = 0 if setting_up else self._admin_threshold
                for key, name in zip(keys, names, strict=True):
                    if key.keyid in known:
                        continue
                    signers = self._check_approvals(db, approvals, required, "operator-add", key.keyid, None,
                                                    False)
                    if self.store.add_operator(db, key.keyid, key.public_key, name, self._now()):
                        known[key.keyid] = (key.public_key, name)
                        self.outbox.add(db, "OPERATOR_ADD", keyid=key.keyid, label=name,
                                        approvers=sorted(signers), required_approvals=required,
                                        operator=self.operator)
                if setting_up:
                    # The set-up window closes now: thresholds above the roster it leaves could
                    # never be met (no operator could join, nothing gated be approved again).
                    self._check_roster(len(known))
        self._deliver()
        return [key.keyid for key in keys]

    def remove_operator(self, keyid: str, *, approvals: Approvals | None = None) -> None:
        """Unregister an operator key (needs the administrative approvals); journaled.

        Raises:
            PolicyError: approvals are short, or fewer operators would be left than an
                approval threshold of the policy (nothing it gates could be approved again).
            KeyError_: ``keyid`` is not a registered operator.
        """
        if not isinstance(keyid, str):
            raise PolicyError("keyid: expected a str")
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                if keyid not in self.store.operators(db):
                    # An operator key id (32 hex digits) is public, like a key id; anything else
                    # is described, not repeated.
                    shown = repr(keyid) if SUBJECTS["operator-remove"].fullmatch(keyid) else _shown(keyid)
                    raise KeyError_(f"keyid: {shown} is not a registered operator")
                self._refresh_policy(db)
                self._check_operators_left(len(self.store.operators(db)) - 1)
                signers = self._check_approvals(db, approvals, self._admin_threshold, "operator-remove", keyid,
                                                None, False)
                self.store.remove_operator(db, keyid)
                self.outbox.add(db, "OPERATOR_REMOVE", keyid=keyid, approvers=sorted(signers),
                                required_approvals=self._admin_threshold, operator=self.operator)
        self._deliver()

    @property
    def keyring_id(self) -> str:
        """This keyring's id, which every approval request names (32 hex digits).

        An HMAC under the keyring's integrity key: the same for every node that shares the
        database, different for every other keyring, and not something anyone without the KEK
        can make match another keyring.

        Example:
            >>> ApprovalRequest.new("revoke", kid, reason="INC-7", ttl=3600, now=ring.clock(),  # doctest: +SKIP
            ...                     keyring=ring.keyring_id)
        """
        return self.store.row_seal("xps-keyring-id", ())[:32]

    def operators(self) -> OperatorRegistry:
        """The registered operator keys."""
        from types import MappingProxyType

        return OperatorRegistry(MappingProxyType(self.store.operators()))

    @staticmethod
    def policy_digest(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
        """What an approval of a policy change signs (:func:`~.approvals.policy_digest`)."""
        return policy_digest(old, new)

    def apply_policy(self, new: XpsConfig, *, reason: str, approvals: Approvals | None = None) -> list[Any]:
        """Change the security policy the home recorded; returns the changes (empty: nothing to do).

        Tightening needs only the operator who runs it; any loosening needs the current
        administrative approvals over exactly this change (``ApprovalRequest`` action
        ``policy``, subject :meth:`policy_digest`). The KEK cannot change this way (every key
        would have to be re-wrapped). Journaled as ``POLICY_CHANGE`` with old and new values.

        Whatever approvals it has, a change is refused that would leave the home unable to
        approve anything: an approval threshold it sets above the operators registered now, or
        an ``approvals.request_ttl`` below :data:`MIN_REQUEST_TTL_SECONDS` (both count as
        "tightening", so would otherwise need no approvals, and could then never be undone).

        Raises:
            PolicyError: the KEK changes, a threshold exceeds the registered operators, the
                request lifetime is below the floor, approvals are short, or no reason is given.
        """
        if not isinstance(new, XpsConfig):
            raise PolicyError(f"new: expected an XpsConfig, got {type(new).__name__}")
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError("reason: a policy change needs a reason")
        _utf8(reason, "reason")
        target = new.security_policy()
        with self._lock:
            self.outbox.deliver()
            with self.store.write() as db:
                # The change is judged against the policy sealed now (another process may have
                # changed it since this keyring opened), and applied in the same transaction.
                self._refresh_policy(db)
                assert self._policy_text is not None
                old = json.loads(self._policy_text)
                changes = policy_changes(old, target)
                if not changes:
                    return []
                if any(c.key == "keyring.kek" for c in changes):
                    raise PolicyError("keyring.kek: a home keeps the KEK it was initialised with (every key is "
                                      "wrapped under it); migrating to another KEK is not supported")
                self._check_reachable(db, target, {c.key for c in changes})
                required = self._admin_threshold if any(c.loosens for c in changes) else 0
                signers = self._check_approvals(db, approvals, required, "policy", self.policy_digest(old, target),
                                                None, False, reason=reason)
                self._seal_policy(db, target)
                self.outbox.add(db, "POLICY_CHANGE", reason=reason, approvers=sorted(signers),
                                required_approvals=required, operator=self.operator,
                                changes=[{"key": c.key, "old": c.old, "new": c.new, "loosens": c.loosens}
                                         for c in changes])
            # The policy sealed last, read under the home's lock: of two changes committed one
            # after the other, the one committed last must be the one home.json keeps.
            self.home.replace_policy(target, latest=self._sealed_policy)
            # Committed: act on it now (without waiting for the next transition to re-read it).
            with self.store.snapshot() as db:
                self._refresh_policy(db)
        self._deliver()
        return changes

    def _check_reachable(self, db: Connection, target: Mapping[str, Any], changed: set[str]) -> None:
        """Refuse a policy change after which no approval could be given (see :meth:`apply_policy`).

        Only the keys the change sets are judged: a home may have been initialised with
        thresholds before its operators joined, and an unrelated change must not be refused for it.
        """
        _, proposed = _sections(target, self.config)
        operators = len(self.store.operators(db))
        for key in ("revoke", "destroy", "emergency_revoke"):
            wanted = getattr(proposed, key)
            if f"approvals.{key}" in changed and wanted > operators:
                raise PolicyError(f"approvals.{key}: {_shown(wanted)} approvals would be more than the {operators} "
                                  "operator(s) registered in this home, so nothing it gates could be approved "
                                  "again; register operators first (`xps operator add`)")
        if "approvals.request_ttl" in changed and proposed.request_ttl_seconds < MIN_REQUEST_TTL_SECONDS:
            raise PolicyError(f"approvals.request_ttl: below the floor of {MIN_REQUEST_TTL_SECONDS:g} seconds; a "
                              "shorter-lived request expires before it can be approved and applied")

    def _check_roster(self, operators: int) -> None:
        """Refuse a first roster smaller than an approval threshold of the policy (a lock-out)."""
        cfg = self.approvals_config
        for key in ("revoke", "destroy", "emergency_revoke"):
            wanted = getattr(cfg, key)
            if wanted > operators:
                raise PolicyError(f"approvals.{key}: {_shown(wanted)} approvals would be more than the {operators} "
                                  "operator(s) registered at set-up, so nothing it gates could be approved "
                                  "again; register at least that many operators, or lower the threshold")

    def _check_operators_left(self, left: int) -> None:
        """Refuse leaving fewer operators than the highest approval threshold (a lock-out)."""
        cfg = self.approvals_config
        key, highest = max((("revoke", cfg.revoke), ("destroy", cfg.destroy),
                            ("emergency_revoke", cfg.emergency_revoke)), key=lambda kv: kv[1])
        if left < highest:
            raise PolicyError(f"keyid: removing this operator would leave {left} registered operator(s), fewer "
                              f"than approvals.{key} ({highest}); lower that threshold first (`xps policy apply`)")

    # -- queries ----------------------------------------------------------------------------

    def get(self, ref: str, version: int | None = None) -> SecretBytes:
        """The raw material of the active (or given) version, in a SecretBytes you should wipe.

        Only a version that may still decrypt is exported: the active one, or a retired one
        inside its dual-key window (journaled as ``KEY_EXPORT``).

        Raises:
            KeyError_: no such key or version, or the version may not decrypt any more.
        """
        wanted = _optional_version(version, "version")
        with self._lock, self.store.snapshot() as db:  # exported material: rows the roster vouches for
            self._refresh_policy(db)  # the dual-key window sealed now decides what may be exported
            row = self._key_row(ref, db)
            ver = (self.store.active_version(row.key_id, db) if wanted is None
                   else self.store.version(row.key_id, wanted, db))
            self._check_rows(db, row, ver)
        if row.state is not KeyState.ACTIVE:
            raise KeyError_(f"key: {row.name!r} is {row.state}")
        if ver is None or ver.wrapped is None or self.clock() >= decrypt_deadline(
                ver.state, ver.retired_at, self.config.dual_window_seconds):
            raise KeyError_(f"version: key {row.name!r} has no usable version {wanted or ''}".rstrip())
        material = self._unwrap(row, ver)
        try:
            self.audit.record("KEY_EXPORT", key_id=row.key_id, name=row.name, version=ver.version,
                              operator=self.operator)
        except BaseException:
            material.wipe()
            raise
        return material

    def list(self) -> list[KeyInfo]:
        """Every key with its versions."""
        self._refresh_policy_now()  # the windows and retention shown are the ones in force
        return [self._info(r) for r in self.store.all_keys()]

    def describe(self, ref: str) -> KeyInfo:
        """One key with its versions and usage counters."""
        self._flush_usage()
        self._refresh_policy_now()
        return self._info(self._key_row(ref))

    def unused_for(self, ref: str, version: int) -> float | None:
        """Seconds since version ``version`` was last used, or None if it never was."""
        wanted = _version_arg(version, "version")
        self._flush_usage()
        ver = self.store.version(self._key_row(ref).key_id, wanted)
        if ver is None:
            raise KeyError_(f"version: no version {wanted}")
        return None if ver.last_used is None else self.clock() - ver.last_used

    def decrypt_counts(self, ref: str, version: int) -> tuple[int, int]:
        """(successful, failed) decryptions of a version in this process since it was loaded here.

        The counters the metrics export and a suite migration's canary decision reads. Failures
        count blobs that named this version and did not open (wrong tag, aad, commitment).
        """
        wanted = _version_arg(version, "version")
        return self._counts((bytes.fromhex(self._key_row(ref).key_id), wanted))

    def loaded_decrypt_counts(self) -> dict[tuple[str, int], tuple[int, int]]:
        """:meth:`decrypt_counts` of every version loaded in this process: (name, version) -> counts."""
        names = {ref: name for ref, (name, _) in list(self._dropped.items())}
        names.update((ref, h.name) for ref, h in list(self._handles.items()))
        return {(name, ref[1]): self._counts(ref) for ref, name in names.items()}

    def _counts(self, ref: tuple[bytes, int]) -> tuple[int, int]:
        h = self._handles.get(ref)
        dropped = self._dropped.get(ref)
        ok = (0 if h is None else h.decrypted_before + h.decryptions) + (0 if dropped is None else dropped[1])
        failures = self._failures.get(ref)
        # repr is the one read-only view of an itertools.count ("count(N)": N - 1 so far).
        return ok, 0 if failures is None else int(repr(failures)[6:-1]) - 1

    def close(self) -> None:
        """Flush usage counters, wipe cached keys, close the database and the KEK.

        Call it once no other thread uses this keyring any more.
        """
        self._flush_usage()
        with self._lock:
            for h in self._handles.values():
                h.aead.wipe()
            self._by_prefix.clear()
            self._handles.clear()
            self._active.clear()
        self.store.close()
        self.kek.close()
        if self._owns_audit:
            self.audit.close()

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening: policy, stores, integrity --------------------------------------------------

    def _bind_policy(self, config: KeyringConfig | None,
                     approvals: ApprovalsConfig | None) -> tuple[KeyringConfig, ApprovalsConfig]:
        """The effective sections: the home's recorded policy, checked against what was given."""
        given = XpsConfig(keyring=config or KeyringConfig(), approvals=approvals or ApprovalsConfig())
        self.home.refuse_foreign_directory()
        record = self.home.initialise(policy=given.security_policy())
        passed = {name for name, value in (("keyring", config), ("approvals", approvals)) if value is not None}
        for change in policy_changes(record.policy, given.security_policy()):
            if change.key.split(".")[0] in passed:
                raise PolicyError(f"config key {change.key!r}: {_shown(change.new)} differs from the security policy "
                                  f"this home recorded ({_shown(change.old)}); the home's policy changes only with "
                                  "`xps policy apply`, audited, with approvals when it loosens")
        return _sections(record.policy, given.keyring)

    def _check_audit_store(self) -> None:
        # Created by its first record; registered once it exists, so a later deletion is refused.
        if self.home.check_store("audit") and self.home.audit.exists() and self.home.audit.stat().st_size > 0:
            self.home.register_store("audit")

    def _open_store(self) -> tuple[Store, str, bool]:
        """The keyring database the policy names: a file in the home, or ``postgresql://…``."""
        database = self.config.database
        if is_dsn(database):
            from xpscerpto.db.keyring_store import PgStore

            ref = check_dsn(database)
            create = self.home.check_store("keyring", ref)
            return PgStore(ref, create=create), ref, create
        db_path = self.home.root / database
        ref = self.home.store_ref(db_path)
        create = self.home.check_store("keyring", ref)
        if create and not db_path.exists():
            self._refuse_lost_keyring(db_path)
        return Store(db_path, create=create), ref, create

    def _refuse_lost_keyring(self, db_path: Path) -> None:
        """Refuse to create a keyring in a home that had one.

        Someone who can write the home (no KEK needed) moved ``keyring.db`` away and took it out
        of ``home.json``: the next command made a new, empty keyring under whatever policy the
        edited record said — every key gone, the approvals thresholds theirs, the setup window
        for operators open again (found by a review). A home records its KEK only with its
        keyring, and the journal records each keyring made, so either says one existed.
        """
        if self.home.store_exists("kek") or self.home.is_sealed("keyring"):
            why = "records a KEK (made with its keyring)"
        elif self.audit_config.database is None and self.audit.mentions("KEYRING_CREATE"):
            why = "has a journal that records its keyring's creation"
        else:
            return
        raise KeyringTampered(f"keyring database {str(db_path)!r}: missing, and not in home.json, though this home "
                              f"{why}: keyring.db was moved away or home.json edited; restore both from a backup "
                              "of the home (a keyring is never made again in place of a lost one)")

    def _changed_elsewhere(self, key_id: str) -> None:
        """Another node changed ``key_id`` ("*": maybe any key): re-read it before next use.

        Runs on the store's listener thread. Only the re-check deadlines move (one store each);
        the hot path reads them as it always does, so no lock is taken here or there.
        """
        for h in list(self._handles.values()) + list(self._active.values()):
            if key_id in ("*", h.key_id):
                h.recheck_at = 0.0

    def _open_kek(self) -> tuple[KekProvider, str | None]:
        """The KEK the configuration names, and its reference if the home does not record it yet
        (recorded only with the keyring: see ``__init__``)."""
        k = self.config.kek
        ref = (f"pkcs11:{k.token_label}/{k.key_label}" if k.provider == "pkcs11"
               else self.home.store_ref(self.home.root / k.path))
        unrecorded = self.home.check_store("kek", ref)
        # A keyring database already here was made with a KEK: a new one (a fresh key on a
        # token, say, while adopting a home whose KEK object was deleted) could never unwrap it,
        # and would stay on the token beside the original once that is restored (a review).
        existing = not is_dsn(self.config.database) and (self.home.root / self.config.database).exists()
        kek = open_kek(k.provider, self.home.root, path=k.path, module=k.module, token_label=k.token_label,
                       pin_env=k.pin_env, key_label=k.key_label, create=unrecorded and not existing)
        return kek, ref if unrecorded else None

    def _attach_integrity(self, *, created: bool) -> None:
        """Unwrap the integrity key (or make it, for a new or just-upgraded database), seal, and
        check the roster."""
        wrapped = self.store.meta("integrity_key")
        if wrapped is not None and self._operators_file.exists() and self._operators_file_imported():
            # The upgrade committed its import and was killed before it renamed the file: finish that.
            self._retire_operators_file()
        if wrapped is not None and self._operators_file.exists():
            # Operators live in the sealed database now; a file dropped into the home later is
            # not read (it would bypass the approvals operator changes need): refuse it.
            raise PolicyError(f"operators {str(self._operators_file)!r}: operators are kept in the keyring database; "
                              "this file is not read — remove it (register operators with `xps operator add`)")
        if wrapped is not None:
            if self._unwrap_integrity(wrapped, _INTEGRITY_AAD_ROSTER):
                self.store.roster_on = True
                with self.store.snapshot() as db:  # one moment of the database; writers go on
                    self.store.check_schema(db)
                    if self.store.meta("policy_seal", db) is None:  # the roster would say so too; this names it
                        raise KeyringTampered(f"keyring database {self.store.name!r}: its sealed copy of the home's "
                                              "policy is missing (removed?); restore the database from a backup")
                    self._roster_check = self.store.checked_rows(db)
                return
            if not self._unwrap_integrity(wrapped, _INTEGRITY_AAD):
                raise KeyringTampered(f"keyring database {self.store.name!r}: its integrity key does not unwrap "
                                      "under this home's KEK (another KEK, or edited)") from None
            if not self._add_roster(wrapped):
                self.store.sealer = None  # another process added it first: read theirs
                self._attach_integrity(created=created)
            return
        upgrading = not created
        if upgrading and self.home.is_sealed("keyring"):
            # Sealing it afresh would seal whatever rows an editor of the database left.
            raise KeyringTampered(f"keyring database {self.store.name!r}: it has no integrity key, though this home "
                                  "recorded it sealed (removed, or the database replaced); restore it from a backup")
        if upgrading and not self._adopt:
            # Only an operator's explicit adoption seals an unsealed database: its schema number
            # and markers are the database's own rows, which anyone who can write it can forge.
            raise KeyringTampered(f"keyring database {self.store.name!r}: it has no integrity key (removed?); "
                                  "restore the database from a backup — a database written by an earlier release "
                                  "is sealed once, by `xps init --adopt`")
        with SecretBytes.take(_random_secret(INTEGRITY_KEY_SIZE)) as key:
            self.store.sealer = Sealer(key)
            wrapped_new = self.kek.wrap(key, _INTEGRITY_AAD_ROSTER).hex()
        with self.store.write() as db:
            if self.store.meta("integrity_key", db) is not None:
                raced = True  # another process's first open made it while we made ours: theirs stands
            else:
                raced = False
                self._seal_new(db, wrapped_new, upgrading)
        if raced:
            self.store.sealer.wipe()
            self.store.sealer = None
            self._attach_integrity(created=created)
            return
        self._retire_operators_file()

    def _unwrap_integrity(self, wrapped: str, aad: bytes) -> bool:
        """Attach the integrity key if ``wrapped`` unwraps under ``aad``."""
        try:
            with self.kek.unwrap(bytes.fromhex(wrapped), aad) as key:
                self.store.sealer = Sealer(key)
        except (ValueError, XpsError):
            return False
        return True

    def _add_roster(self, wrapped: str) -> bool:
        """Give a database sealed by an earlier release its roster, once (False: another process
        changed the integrity key meanwhile).

        Every row is checked under the old integrity key and sealed again under a new one,
        wrapped with the roster's associated data, in one transaction. So the wrapped old key —
        which any backup from before this moment holds — no longer verifies a single current
        row: putting it back cannot make the database pass for a pre-roster one. Nothing from
        home.json is sealed here: a database without its sealed policy is refused.
        """
        assert self.store.sealer is not None
        with SecretBytes.take(_random_secret(INTEGRITY_KEY_SIZE)) as key:
            new = Sealer(key)
            wrapped_new = self.kek.wrap(key, _INTEGRITY_AAD_ROSTER).hex()
        with self.store.write() as db:
            if self.store.meta("integrity_key", db) != wrapped:
                new.wipe()
                return False
            self.store.check_schema(db)
            if self.store.meta("policy", db) is None:
                new.wipe()
                raise KeyringTampered(f"keyring database {self.store.name!r}: its sealed copy of the home's policy is "
                                      "missing (removed?); restore the database from a backup")
            old = self.store.sealer
            try:
                self.store.reseal(db, new)
            except BaseException:
                new.wipe()
                raise
            self.store.set_meta(db, "integrity_key", wrapped_new)
            self.store.build_roster(db)
            self.outbox.add(db, "KEYRING_SEALED", scope="roster", operator=self.operator)
        old.wipe()
        return True

    def _seal_new(self, db: Connection, wrapped_new: str, upgrading: bool) -> None:
        """Store the new integrity key, seal every row and the policy, and build the roster
        (inside the write transaction ``db``: a database has all of them or none)."""
        self.store.set_meta(db, "integrity_key", wrapped_new)
        sealed = self.store.seal_all(db)
        db.execute("DELETE FROM meta WHERE k = 'upgrading'")
        imported = self._import_operators(db)
        self._seal_policy(db, self.home.record().policy)
        if not upgrading and is_dsn(self.config.database):
            from xpscerpto.db.sealed_tables import mark_new

            # Sealed from its first transaction: an unmarked shared database would take rows a
            # database writer inserts before the first orchestrator for an earlier release's.
            mark_new(self.store, db)
        self.store.build_roster(db)
        if upgrading:
            self.outbox.add(db, "KEYRING_SEALED", rows=sealed, schema_from=self.store.upgraded_from or "1",
                            operator=self.operator)
            # Only `xps init --adopt` seals an earlier release's database: its HOME_INIT goes in
            # this transaction, so an adoption killed after it committed is still journaled.
            self.outbox.add(db, "HOME_INIT", stores=sorted(self.home.record().stores), operators=[],
                            adopted=True, operator=self.operator)
            self.adopted = True
        else:  # a new database is journaled: one that replaced a deleted one shows in the journal
            self.outbox.add(db, "KEYRING_CREATE", store="postgresql" if is_dsn(self.config.database) else "sqlite",
                            operator=self.operator)
        if imported:
            self.outbox.add(db, "OPERATORS_IMPORTED", keyids=list(imported), source="operators.json",
                            operator=self.operator)

    @property
    def _operators_file(self) -> Path:
        return self.home.root / "operators.json"

    def _import_operators(self, db: Connection) -> tuple[str, ...]:
        """Earlier releases kept operators in operators.json; they move into the sealed table once,
        when the database is created or upgraded (a malformed file is refused, naming it)."""
        if not self._operators_file.exists():
            return ()
        registry = OperatorRegistry.load(self._operators_file)
        for keyid, (pk, label) in registry.keys.items():
            self.store.add_operator(db, keyid, pk, label, self.clock())
        return tuple(sorted(registry.keys))

    def _operators_file_imported(self) -> bool:
        """Whether operators.json is the file an upgrade imported and was killed before setting
        aside: no ``operators.json.imported`` yet, and only operators the database has, with
        their keys (any other file is refused, not read)."""
        if self._operators_file.with_name("operators.json.imported").exists():
            return False
        try:
            registry = OperatorRegistry.load(self._operators_file)
        except XpsError:
            return False
        known = self.store.operators()
        return bool(registry.keys) and all(known.get(keyid, (None,))[0] == pk
                                           for keyid, (pk, _) in registry.keys.items())

    def _retire_operators_file(self) -> None:
        if self._operators_file.exists():
            os.replace(self._operators_file, self._operators_file.with_name("operators.json.imported"))

    def _check_policy_seal(self) -> None:
        """The home's recorded policy must be the one this database sealed (or be sealed now)."""
        recorded = dict(self.home.record().policy)
        sealed, seal = self.store.meta("policy"), self.store.meta("policy_seal")
        assert self.store.sealer is not None
        if sealed is None:
            # The policy is sealed with the integrity key, in one transaction: a database with
            # the one and not the other was edited.
            raise KeyringTampered(f"keyring database {self.store.name!r}: its sealed copy of the home's policy is "
                                  "missing (removed?); restore the database from a backup")
        self.store.sealer.check("policy", [sealed], seal, what="the sealed copy of the home's policy")
        if json.loads(sealed) != recorded and self._policy_change_pending(json.loads(sealed), recorded):
            # apply_policy committed here and was killed before it rewrote home.json: the
            # database (sealed, with the change's journal record queued) is the truth.
            self.home.replace_policy(json.loads(sealed))
            recorded = dict(self.home.record().policy)
        if json.loads(sealed) != recorded:
            raise KeyringTampered(f"home record {str(self.home.record_path)!r}: its policy differs from the one "
                                  "this keyring sealed (edited outside xps?); restore home.json, or change the "
                                  "policy with `xps policy apply`")
        self._use_policy(sealed)
        # Last, once the integrity key and the policy are sealed in the database (a crash before
        # this leaves a sealed database the next open marks).
        self.home.mark_sealed("keyring")

    def _policy_change_pending(self, sealed: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
        """A queued (sealed, undelivered) POLICY_CHANGE turns exactly ``recorded`` into ``sealed``."""
        def plain(value: Any) -> Any:
            return json.loads(json.dumps(value))

        for row in self.store.outbox():
            changes = row.fields.get("changes")
            if row.event != "POLICY_CHANGE" or not isinstance(changes, list):
                continue
            after = {k: plain(v) for k, v in recorded.items()}
            try:
                for c in changes:
                    if plain(after.get(c["key"])) != plain(c["old"]):
                        raise ValueError
                    after[c["key"]] = plain(c["new"])
            except (KeyError, TypeError, ValueError):
                continue
            if after == {k: plain(v) for k, v in sealed.items()}:
                return True
        return False

    def _seal_policy(self, db: Connection, policy: Mapping[str, Any]) -> None:
        self.store.seal_policy(db, json.dumps({k: policy[k] for k in SECURITY_KEYS if k in policy}, sort_keys=True))

    def _refresh_policy(self, db: Connection) -> None:
        """Act on the policy the database has sealed now, read in ``db`` (the caller's transaction).

        Another process's ``xps policy apply`` changes only that process's keyring; a long-lived
        one would otherwise revoke, destroy and sweep under the policy it opened with. Called by
        every transition and the retention sweep, never by encrypt or decrypt: one small read,
        compared as text with the last one taken; a changed text is checked against its seal and
        the roster (a sealed copy put back from a backup passes its own seal, not the roster).
        Called with the keyring's lock held.

        Raises:
            KeyringTampered: the sealed copy is missing or fails its seal or the roster.
        """
        text = self.store.meta("policy", db)
        if text is not None and text == self._policy_text:
            return
        seal = self.store.meta("policy_seal", db)
        if text is None or seal is None:
            raise KeyringTampered(f"keyring database {self.store.name!r}: its sealed copy of the home's policy is "
                                  "missing (removed?); restore the database from a backup")
        assert self.store.sealer is not None
        self.store.sealer.check("policy", [text], seal, what="the sealed copy of the home's policy")
        if self.store.roster_on:
            self._roster_check = self.store.checked_rows(db)
        self._use_policy(text)

    def _sealed_policy(self) -> dict[str, Any]:
        """The policy the database has sealed now (read in a snapshot of its own)."""
        with self.store.snapshot() as db:
            text = self.store.meta("policy", db)
        if text is None:
            raise KeyringTampered(f"keyring database {self.store.name!r}: its sealed copy of the home's policy is "
                                  "missing (removed?); restore the database from a backup")
        policy: dict[str, Any] = json.loads(text)
        return policy

    def _refresh_policy_now(self) -> None:
        """:meth:`_refresh_policy` in a read snapshot of its own."""
        with self._lock, self.store.snapshot() as db:
            self._refresh_policy(db)

    def _use_policy(self, text: str) -> None:
        """Take the keyring and approvals sections from a sealed policy's JSON ``text``."""
        if text != self._policy_text:
            self.config, self.approvals_config = _sections(json.loads(text), self.config)
            self._policy_text = text

    @property
    def _admin_threshold(self) -> int:
        """Approvals for changes to who approves and to the policy itself."""
        return max(self.approvals_config.revoke, self.approvals_config.destroy)

    # -- internals --------------------------------------------------------------------------

    def _now(self) -> float:
        """The clock, read for a transition: finite seconds, else a PolicyError.

        A NaN makes every ``now < deadline`` false: retention would let a retired version be
        destroyed, an expired request or grant would not look expired, and the database would
        refuse the time only later, as a raw error. encrypt and decrypt read the clock
        unchecked: there a bad value can only make a cached version be re-read.
        """
        now = self.clock()
        try:
            ok = isinstance(now, int | float) and not isinstance(now, bool) and math.isfinite(now)
        except OverflowError:  # an int too large for a float
            ok = False
        if not ok:
            raise PolicyError(f"clock: expected finite seconds since the epoch, got "
                              f"{'a non-finite float' if isinstance(now, float) else 'a ' + type(now).__name__}")
        return float(now)

    def _deliver(self) -> None:
        # The change is committed; its record is queued. If the journal fails now, the record
        # stays queued and the next operation (or open) delivers it — never twice.
        with contextlib.suppress(XpsError, OSError):
            self.outbox.deliver()

    def _algorithm(self, algorithm: object, field: str) -> str:
        if algorithm is None:
            return str(self.config.default_algorithm)
        from xpscerpto.algorithms import AEAD

        try:
            name = str(AEAD.parse(algorithm))
        except ValueError:
            raise PolicyError(f"{field}: {_shown(algorithm)} is not a keyring AEAD ({', '.join(CODES)})") from None
        return name

    def _routable(self, algorithm: str, field: str) -> None:
        """Refuse an AEAD this keyring's engine may not route (forbidden by its policy, or no
        provider): a key or version made for it could never encrypt. Checked once, at create or
        rotate; the engine's routing table is asked, not the encrypt path."""
        try:
            self.engine.aead.info(algorithm)
        except PolicyError as exc:
            # exc names the AEAD by its public name and the engine's reason; no caller bytes.
            why = str(exc.args[0]).removeprefix("algo: ")
            raise PolicyError(f"{field}: {algorithm} is forbidden or not routable by this keyring's engine, so "
                              f"nothing could be encrypted under it ({why})") from None

    def _max_encryptions(self, algorithm: str, policy_max: int | None) -> int:
        # Never above the random-nonce bound of the algorithm, whatever the policy asks; and
        # SQLite integers are signed 64-bit (2^63 - 1 is "unlimited" in practice).
        return min(policy_max or self.config.max_encryptions[algorithm], safe_max_encryptions(algorithm), 2**63 - 1)

    def _key_row(self, ref: str, db: Connection | None = None, field: str = "name") -> KeyRow:
        if isinstance(ref, str):
            _utf8(ref, field)
        row = self.store.key(ref, db) if isinstance(ref, str) else None
        if row is None:
            # A key id (16 hex digits) is safe to name: it is not secret, and the journal has it.
            shown = repr(ref) if isinstance(ref, str) and _KEY_ID.fullmatch(ref) else _shown(ref)
            raise KeyError_(f"key: no key named or identified by {shown}")
        return row

    def _aad(self, key_id: str, version: int, algorithm: str) -> bytes:
        return f"xps-keyring/v1|{key_id}|{version}|{algorithm}".encode()

    def _insert_version(self, db: Connection, key_id: str, algorithm: str, version: int, now: float) -> None:
        if version > MAX_VERSION:
            raise PolicyError(f"version: key {key_id} reached the highest version number")
        size = 16 if algorithm == "AES-128-GCM" else 32
        with SecretBytes.take(_random_secret(size)) as material:  # straight into a wipeable buffer
            wrapped = self.kek.wrap(material, self._aad(key_id, version, algorithm))
        self.store.insert_version(db, VersionRow(key_id, version, VersionState.ACTIVE, self.kek.kek_id, wrapped, now,
                                                 None, None, None, 0, 0, None, algorithm))

    def _erase(self, db: Connection, row: KeyRow, versions: Sequence[int], now: float, *,
               final: bool) -> None:
        for v in versions:
            self.store.update_version(db, row.key_id, v, state=VersionState.DESTROYED, wrapped=None, kek_id=None,
                                      destroyed_at=now)
        if final:
            self.store.update_key(db, row.key_id, state=KeyState.DESTROYED, updated=now)

    def _retained_until(self, ver: VersionRow) -> float | None:
        """When retention lets a retired version be destroyed (None: not retired)."""
        if ver.state is not VersionState.RETIRED or ver.retired_at is None:
            return None
        return ver.retired_at + self.config.dual_window_seconds + self.config.destroy_after_seconds

    def _version_algorithm(self, row: KeyRow, ver: VersionRow) -> str:
        return ver.algorithm or row.algorithm

    def _unwrap(self, row: KeyRow, ver: VersionRow) -> SecretBytes:
        assert ver.wrapped is not None
        if ver.kek_id != self.kek.kek_id:
            raise KeyError_(f"kek: version {ver.version} of {row.name!r} is wrapped under another KEK")
        return self.kek.unwrap(ver.wrapped, self._aad(row.key_id, ver.version, self._version_algorithm(row, ver)))

    def _make_handle(self, row: KeyRow, ver: VersionRow, now: float) -> _Handle:
        algorithm = self._version_algorithm(row, ver)
        with self._unwrap(row, ver) as material:
            info = struct.pack(">8sI", bytes.fromhex(row.key_id), ver.version) + algorithm.encode()
            size = 16 if algorithm == "AES-128-GCM" else 32
            with self.engine.hkdf.derive(material, size + 32, salt=b"xps-keyring/v1", info=info) as okm:
                view = okm.view()
                # Keeps its own wipeable copy. Nonces: drawn from the CSPRNG per call (encrypt()
                # needs them before sealing, for the header), within the version's usage limit.
                # Failures are journaled by _fail() with the key id, not again by the engine.
                aead = self._aead.keyed(algorithm, view[:size], nonce_reuse="caller", report_auth_failures=False)
                commitment = bytes(view[size:])
                del view
        h = _Handle(row, ver, algorithm, aead, commitment)
        self._set_window(h, ver)
        # Re-read state at least every RECHECK_SECONDS so other processes' revocations take effect.
        h.checked_at, h.recheck_at = now, now + RECHECK_SECONDS
        return h

    def _encrypting_handle(self, name: str, now: float) -> _Handle:
        if not isinstance(name, str):
            raise KeyError_(f"name: expected str, got {type(name).__name__}")
        _utf8(name, "name")
        with self._lock:
            if now >= self._retention_at:
                self.enforce_retention()
            self._flush_usage_if_due(now)
            h = self._active.get(name)
            if h is not None and h.checked_at <= now < h.recheck_at and next(h.counter) < 0:
                return h  # another thread refreshed it meanwhile
            with self.store.snapshot() as db:
                row = self.store.key(name, db)
                ver = self.store.active_version(row.key_id, db) if row is not None else None
                if row is not None and row.state is KeyState.ACTIVE and ver is not None:
                    self._check_rows(db, row, ver)  # only rows about to be used (a refusal needs none)
            if row is None:
                raise KeyError_(f"key: no key named {_shown(name)}")
            if row.state is not KeyState.ACTIVE:
                self._forget(row.key_id, row.name)
                raise KeyError_(f"key: {name!r} is {row.state}; only an active key encrypts")
            if ver is None:  # every transition keeps one: its row was removed outside xps
                raise KeyringTampered(f"keyring database {self.store.name!r}: key {_shown(name)} is active but has "
                                      "no active version (a row removed?); restore the database from a backup")
            if row.rotate_every is not None and now >= ver.created + row.rotate_every:
                self.rotate(row.key_id, expected_version=ver.version, reason="time")
                return self._encrypting_handle(name, now)
            cached = self._handles.get((bytes.fromhex(row.key_id), ver.version))
            reuse = cached is not None and cached.state is VersionState.ACTIVE
            h = cached if reuse and cached is not None else self._make_handle(row, ver, now)
            h.checked_at = now
            h.recheck_at = now + RECHECK_SECONDS if row.rotate_every is None else min(
                now + RECHECK_SECONDS, ver.created + row.rotate_every)
            if next(h.counter) >= 0 and not self._reserve(row, h):
                self.rotate(row.key_id, expected_version=ver.version, reason="usage")
                return self._encrypting_handle(name, now)
            self._keep_handle((bytes.fromhex(row.key_id), ver.version), h)
            self._active[name] = h
            return h

    def _reserve(self, row: KeyRow, h: _Handle) -> bool:
        """Reserve the next block of encryptions for this process; False if the limit is reached."""
        with self.store.write() as db:
            current = self.store.version(row.key_id, h.version, db)
            if current is None:
                raise KeyringTampered(f"keyring database {self.store.name!r}: version {h.version} of key "
                                      f"{_shown(row.name)} is gone (a row removed?); restore it from a backup")
            block = min(self.config.usage_block, row.max_encryptions - current.encryptions)
            if block <= 0:
                return False
            self.store.update_version(db, row.key_id, h.version, encryptions=current.encryptions + block)
        # This call uses one of the block; the rest are the negative values before zero. One new
        # counter object replaces the old, so no thread ever pairs an old count with a new bound.
        h.counter = itertools.count(1 - block)
        return True

    def _remember_miss(self, ref: tuple[bytes, int], now: float) -> None:
        """Cache a miss for a second, in a bounded FIFO (forged blobs name endless key ids)."""
        misses = self._misses
        misses.pop(ref, None)  # re-inserted at the end: insertion order stays expiry order
        while misses:
            oldest, until = next(iter(misses.items()))
            if until > now and len(misses) < MAX_CACHED_MISSES:
                break
            del misses[oldest]
        misses[ref] = now + RECHECK_SECONDS

    def _decrypting_handle(self, key_id: bytes, version: int, now: float) -> _Handle | None:
        with self._lock:
            if now >= self._retention_at:
                self.enforce_retention()
            self._flush_usage_if_due(now)
            kid = key_id.hex()
            with self.store.snapshot() as db:
                row = self.store.key(kid, db)
                ver = self.store.version(kid, version, db) if row is not None else None
                if row is not None and ver is not None and ver.wrapped is not None and row.state is KeyState.ACTIVE:
                    self._check_rows(db, row, ver)
                else:
                    # Unusable: a miss. It uses no key material, so it needs no roster check (a
                    # forged blob must not cost one whenever another process has written).
                    row = None
            if row is None or ver is None:
                # Remember the miss for a second: forged blobs naming unknown keys must not
                # cost a lock and database reads each.
                self._drop_handle((key_id, version))
                self._remember_miss((key_id, version), now)
                return None
            h = self._handles.get((key_id, version))
            if h is None:
                try:
                    h = self._make_handle(row, ver, now)
                except XpsError:
                    return None
                self._keep_handle((key_id, version), h)
            h.state, h.checked_at, h.recheck_at = ver.state, now, now + RECHECK_SECONDS
            self._set_window(h, ver)
            return h

    def _check_rows(self, db: Connection, *rows: KeyRow | VersionRow | None) -> None:
        """Refuse rows re-read for a cached key unless the roster still vouches for them.

        The roster is checked against every row at open; a row put back later from an older
        copy (a revoked key's active rows, say) passes its own seal. So a re-read that finds
        the roster, or one of the rows read, changed since the last check passing checks the
        whole roster again, in the same snapshot; unchanged, nothing more is read. Rows put back
        together with the roster exactly as the last check saw them match that check, so the
        whole roster is also checked again once that check is ROSTER_FULL_SECONDS old.

        Raises:
            KeyringTampered: the rows no longer add up to the sealed roster.
        """
        if not self.store.roster_on:
            return
        last = self._roster_check
        if (last is not None and time.monotonic() - last.at < ROSTER_FULL_SECONDS
                and last.unchanged(self.store.roster_text(db), rows)):
            return
        self._roster_check = self.store.checked_rows(db)

    def _roster_written(self, before: str | None, after: str, add: Sequence[Sequence[Any]],
                        remove: Sequence[Sequence[Any]]) -> None:
        """Carry the last roster check past this process's own write, so that the write (a
        usage reservation, say) does not cost the next re-read a full check. Runs inside the
        write, on the writing thread, without the keyring's lock (a thread holding that lock may
        be waiting for this write)."""
        last = self._roster_check
        if last is not None and (moved := last.carried(before, after, add, remove)) is not None:
            self._roster_check = moved

    def _set_window(self, h: _Handle, ver: VersionRow) -> None:
        h.decrypt_until = decrypt_deadline(ver.state, ver.retired_at, self.config.dual_window_seconds)

    def _forget(self, key_id: str, name: str) -> None:
        """Drop cached handles of a key after a transition.

        Not wiped here: another thread may be inside encrypt/decrypt with this handle. The key
        copy is a SecretBytes, zeroed when the last reference (that call's) goes away.
        """
        kid = bytes.fromhex(key_id)
        self._flush_usage()
        # Under the lock (an RLock: transitions already hold it), so no encrypt or decrypt slow
        # path caches a handle of this key between the two indexes being cleared.
        with self._lock:
            # encrypt() caches a handle under whatever the caller named the key by: its name or
            # its id. Every entry of this key goes, or one naming it by id would keep encrypting
            # under a revoked key (or a retired version) until its re-check.
            self._active.pop(name, None)
            for ref in [ref for ref, h in list(self._active.items()) if h.key_id == key_id]:
                self._active.pop(ref, None)
            for k in [k for k in list(self._handles) if k[0] == kid]:
                self._drop_handle(k)
            # And whatever the prefix index still holds for this key id (bytes 1-9 of a prefix).
            for prefix in [p for p in list(self._by_prefix) if p[1:9] == kid]:
                self._by_prefix.pop(prefix, None)

    def _keep_handle(self, ref: tuple[bytes, int], h: _Handle) -> None:
        """Cache a handle under both keys (its prefix is fixed by ``ref`` and the version's key)."""
        old = self._handles.get(ref)
        if old is not None and old.prefix != h.prefix:
            self._by_prefix.pop(old.prefix, None)
        self._by_prefix[h.prefix] = h
        self._handles[ref] = h

    def _drop_handle(self, ref: tuple[bytes, int]) -> None:
        # The fast path's index first: from then on a decrypt goes through the slow path.
        h = self._handles.get(ref)
        if h is not None:
            self._by_prefix.pop(h.prefix, None)
            # Kept for decrypt_counts (a reloaded handle counts from 0 again). A decrypt still
            # running on the dropped handle may add one after this read: at most one per thread.
            before = self._dropped.get(ref, ("", 0))[1]
            self._dropped[ref] = (h.name, before + h.decrypted_before + h.decryptions)
        self._handles.pop(ref, None)

    def _flush_usage_if_due(self, now: float) -> None:
        if now >= self._usage_flush_at:
            self._usage_flush_at = now + USAGE_FLUSH_EVERY
            with contextlib.suppress(XpsError):  # informational counters: never fail a call for them
                self._flush_usage()

    def _flush_usage(self) -> None:
        with self._lock:
            pending = [(h.decryptions, h.last_used, h.key_id, h.version) for h in self._handles.values()
                       if h.decryptions or h.last_used]
            if not pending:
                return
            with self.store.write() as db:
                for n, used, kid, v in pending:
                    self.store.add_usage(db, kid, v, n, used)
            for h in self._handles.values():
                h.decrypted_before += h.decryptions
                h.decryptions = 0

    def _check_approvals(self, db: Connection, approvals: Approvals | None, required: int, action: str,
                         key_id: str, version: int | None, emergency: bool, *,
                         reason: str | None = None) -> frozenset[str]:
        """Verify k-of-n operator approvals for exactly this change and consume them."""
        if approvals is not None and not isinstance(approvals, Approvals):
            raise PolicyError(f"approvals: expected Approvals, got {type(approvals).__name__}")
        if required <= 0 and approvals is None:
            return frozenset()
        if approvals is None:
            raise PolicyError(f"approvals: {action} requires {required} operator approval(s), got none",
                              reason="approvals")
        req = approvals.request
        # Shown as they are: ApprovalRequest checked each (a known action, a subject of its format).
        if (req.action, req.key_id, req.version, req.emergency) != (action, key_id, version, emergency):
            raise PolicyError(f"approvals.request: approves {req.action} of {req.key_id} (version {req.version}, "
                              f"emergency {req.emergency}), not this {action}", reason="approvals")
        if reason is not None and req.reason != reason:
            raise PolicyError("approvals.request: approves another reason than the one given", reason="approvals")
        if not hmac.compare_digest(str(req.keyring).encode(), self.keyring_id.encode()):
            raise PolicyError(f"approvals.request.keyring: approves a change in keyring {req.keyring}, not in this "
                              f"one ({self.keyring_id})", reason="approvals")
        now = self._now()
        if now >= req.expires:
            raise PolicyError("approvals.request: expired", reason="approvals")
        # The expiry is the requester's to write: held to this home's request_ttl.
        req.check_open_window(now, self.approvals_config.request_ttl_seconds)
        registry = OperatorRegistry(self.store.operators(db))
        signers = approvals.valid_signers(registry)
        if len(signers) < required:
            raise PolicyError(f"approvals: {action} requires {required} distinct operator approval(s), "
                              f"{len(signers)} valid", reason="approvals")
        if not self.store.use_approval(db, req.nonce, now):
            raise PolicyError("approvals.request: already used (replay)", reason="approvals")
        return signers

    def _info(self, row: KeyRow) -> KeyInfo:
        window = self.config.dual_window_seconds
        versions = tuple(VersionInfo(
            v.version, v.state, v.created, v.retired_at, v.revoked_at, v.destroyed_at, v.encryptions,
            v.decryptions, v.last_used,
            v.retired_at + window if v.state is VersionState.RETIRED and v.retired_at is not None else None,
            self._version_algorithm(row, v), self._retained_until(v))
            for v in self.store.versions(row.key_id))
        return KeyInfo(row.key_id, row.name, row.algorithm, row.policy, row.state, row.created, row.rotate_every,
                       row.max_encryptions, row.revoke_reason, versions)


def _sections(policy: Mapping[str, Any], keyring: KeyringConfig) -> tuple[KeyringConfig, ApprovalsConfig]:
    """Keyring and approvals sections under a recorded ``policy`` (other keyring keys kept)."""
    recorded = XpsConfig(keyring=keyring).with_security_policy(policy)
    return recorded.keyring, recorded.approvals


def _optional_version(value: object, field: str) -> int | None:
    return None if value is None else _version_arg(value, field)


def _version_arg(value: object, field: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_VERSION:
        if isinstance(value, int) and not isinstance(value, bool):
            shown = str(value) if abs(value) < 10**12 else "a huge int"
        else:
            shown = type(value).__name__
        raise PolicyError(f"{field}: expected an int in 1..{MAX_VERSION}, got {shown}")
    return value


def _utf8(value: str, field: str) -> None:
    """Refuse a str that is not UTF-8 text: a lone surrogate, which is what ``os.fsdecode`` and
    argv make of stray bytes, would fail only in the database driver, as an untyped error.
    The value is not shown."""
    if not utf8_text(value):
        raise PolicyError(f"{field}: not valid UTF-8 text (it holds a lone surrogate)") from None


def _shown(value: object) -> str:
    """A caller's value in a message: a short name or a number as written, anything else by type.

    A long or hex-looking string is never echoed: it may be key material passed in the wrong
    place (a hex key as a key name), and messages carry no caller bytes.
    """
    if (isinstance(value, str) and len(value) <= 24 and _NAME.fullmatch(value)
            and not (len(value) >= 16 and _HEXISH.fullmatch(value))):
        return repr(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 2**64:
        return repr(value)
    return f"a {type(value).__name__}" + (f" of {len(value)} characters" if isinstance(value, str) else "")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

