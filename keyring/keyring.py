"""The keyring: named keys with versions, a lifecycle, and a hard-to-misuse AEAD.

``encrypt(name, plaintext)`` returns one self-describing blob (see :mod:`.envelope`);
``decrypt(blob)`` finds the key version itself and fails with one opaque XPS_ERR_AUTH.

Material never touches disk unwrapped: versions are generated in memory, wrapped under the
KEK and stored; a usable version lives in a :class:`SecretBytes` in this process's cache and
is wiped when the key rotates away, is revoked or destroyed, or the keyring closes.

Usage counters: encryptions are reserved from the database in blocks (``usage_block``), so
a version never exceeds its ``max_encryptions`` across all processes (a crash only wastes the
rest of a block) and is rotated before it would. The call path pays an atomic counter step.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from xpscerpto.audit import AuditLog
from xpscerpto.audit.config import AuditConfig
from xpscerpto.engine import Engine, KeyedAead
from xpscerpto.errors import KeyError_, PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.secret import SecretBytes

from .approvals import Approvals, OperatorRegistry
from .config import ApprovalsConfig, KeyringConfig, safe_max_encryptions
from .envelope import CODES, HEADER, NONCE_SIZES, _opaque
from .kek import KekProvider, _random_secret, open_kek
from .states import Action, KeyState, VersionState, decrypt_deadline, key_after, version_destroyable
from .store import KeyRow, Store, VersionRow
from .usage import parse_policy

__all__ = ["MAX_CACHED_MISSES", "KeyInfo", "Keyring", "VersionInfo", "parse_policy"]

#: Unknown (key id, version) pairs a keyring remembers for a second, so that forged blobs do not
#: each cost a lock and a database read; the oldest are forgotten first.
MAX_CACHED_MISSES = 4096

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_urandom = os.urandom
_unpack = HEADER.unpack_from
_ct_eq = hmac.compare_digest  # constant time; both sides are 32-byte bytes here


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


class _Handle:
    """A usable key version in memory: derived keys, header prefix, usage window."""

    __slots__ = ("aead", "algorithm", "code", "commitment", "counter", "decrypt_until", "decryptions",
                 "header_size", "key_id", "last_used", "name", "nonce_size", "prefix", "recheck_at", "state",
                 "version")

    def __init__(self, row: KeyRow, ver: VersionRow, aead: KeyedAead, commitment: bytes) -> None:
        self.key_id, self.name, self.version, self.algorithm = row.key_id, row.name, ver.version, row.algorithm
        self.state = ver.state
        self.decrypt_until = -math.inf  # set by the keyring from the version's state
        self.aead, self.commitment = aead, commitment
        self.code = CODES[row.algorithm]
        self.prefix = HEADER.pack(1, bytes.fromhex(row.key_id), ver.version, self.code, commitment)
        self.nonce_size = NONCE_SIZES[row.algorithm]
        self.header_size = HEADER.size + self.nonce_size
        self.counter = itertools.count()  # at >= 0: no encryptions reserved (see Keyring.encrypt)
        self.recheck_at = 0.0
        self.decryptions = 0
        self.last_used = 0.0  # flushed to the database with the counters


class Keyring:
    """Named, versioned keys in SQLite under a KEK, with an audited lifecycle.

    Args:
        home: the engine home (the database, KEK file and operators live there).
        engine: the engine whose AEAD and HKDF the keyring uses (default: the module's).
        config: keyring settings (defaults: ``KeyringConfig()``).
        approvals: how many operator approvals revoke/destroy need.
        kek: a KEK provider (default: from ``config.kek``).
        audit: the journal (default: ``HOME/audit.log``).
        clock: seconds since the epoch (injectable for tests of time-based rules).

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
                 operator: str = "local") -> None:
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.config = config or KeyringConfig()
        self.approvals_config = approvals or ApprovalsConfig()
        self.audit_config = audit_config or AuditConfig()
        if engine is None:
            from xpscerpto import default_engine

            engine = default_engine()
        self.engine = engine
        k = self.config.kek
        self.kek = kek or open_kek(k.provider, self.home.root, path=k.path, module=k.module,
                                   token_label=k.token_label, pin_env=k.pin_env, key_label=k.key_label)
        self.audit = audit or AuditLog(self.home.audit, checkpoint_every=self.audit_config.checkpoint_every)
        self.store = Store(self.home.root / self.config.database)
        self.operators_path = self.home.root / "operators.json"
        self.clock = clock
        self.operator = operator
        self._lock = threading.RLock()  # slow paths only: loading, reserving, transitions
        self._active: dict[str, _Handle] = {}  # name -> the handle that encrypts
        self._handles: dict[tuple[bytes, int], _Handle] = {}  # (key id, version) -> handle
        self._misses: dict[tuple[bytes, int], float] = {}  # (key id, version) -> don't look again before
        self._aead = engine.aead

    # -- the AEAD ---------------------------------------------------------------------------

    def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under the active version of key ``name``; returns the self-describing blob."""
        try:
            h = self._active.get(name)
        except TypeError:
            raise KeyError_(f"name: expected str, got {type(name).__name__}") from None
        now = self.clock()
        # The counter runs from minus the reserved block up to zero: one atomic step per call.
        if h is None or now >= h.recheck_at or next(h.counter) >= 0:
            h = self._encrypting_handle(name, now)
        h.last_used = now
        nonce = _urandom(h.nonce_size)
        header = h.prefix + nonce
        try:
            aad = header + aad
        except TypeError:
            raise PolicyError(f"aad: expected bytes-like, got {type(aad).__name__}") from None
        return header + h.aead.encrypt(plaintext, aad, nonce).ciphertext_and_tag

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Open a blob from :meth:`encrypt`; any failure is one opaque AuthError naming no key."""
        try:
            fmt, key_id, version, code, commitment = _unpack(blob)
        except (struct.error, TypeError):
            raise _opaque() from None
        h = self._handles.get((key_id, version))
        now = self.clock()
        if h is None or now >= h.recheck_at:
            miss = self._misses.get((key_id, version))
            h = None if miss is not None and now < miss else self._decrypting_handle(key_id, version, now)
        # decrypt_until folds Appendix A into one number: +inf for the active version, the end
        # of the dual-key window for a retired one, -inf for anything unusable.
        if h is None or now >= h.decrypt_until or fmt != 1 or code != h.code or not _ct_eq(h.commitment, commitment):
            self._fail(key_id, version)
        n = h.header_size
        try:
            aad = blob[:n] + aad
        except TypeError:
            raise PolicyError(f"aad: expected bytes-like, got {type(aad).__name__}") from None
        try:
            plaintext = h.aead.decrypt(blob[HEADER.size:n], memoryview(blob)[n:], aad)
        except XpsError:
            self._fail(key_id, version)
        h.decryptions += 1
        h.last_used = now
        return plaintext

    def _fail(self, key_id: bytes, version: int) -> NoReturn:
        # The caller always gets the same opaque error, whatever happens to the audit record.
        with contextlib.suppress(XpsError, OSError):
            self.audit.record_rate_limited("CRYPTO_FAIL_AUTH", "keyring", self.audit_config.auth_fail_per_minute,
                                           key_id=key_id.hex(), version=version)
        raise _opaque()

    def rewrap(self, blobs: Sequence[bytes], aad: bytes = b"", *,
               progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """Re-encrypt blobs under their key's newest version (those already there are kept).

        ``progress(done, total)`` is called after each blob (the CLI draws a bar with it).
        """
        if not isinstance(blobs, list | tuple):
            raise PolicyError(f"blobs: expected a list of blobs, got {type(blobs).__name__}")
        out: list[bytes] = []
        for i, blob in enumerate(blobs, 1):
            try:
                _, key_id, version, _, _ = _unpack(blob)
            except (struct.error, TypeError):
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

        Idempotent: creating an existing name with the same algorithm and policy returns its id.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PolicyError(f"name: expected {_NAME.pattern}, got {name!r}")
        algorithm = algorithm or self.config.default_algorithm
        if not isinstance(algorithm, str) or algorithm not in CODES:
            raise PolicyError(f"algorithm: {algorithm!r} is not a keyring AEAD ({', '.join(CODES)})")
        if _KEY_ID.fullmatch(name):
            raise PolicyError(f"name: {name!r} looks like a key id; names and ids share one namespace")
        policy = policy if policy is not None else self.config.default_policy
        if not isinstance(policy, str):
            raise PolicyError(f"policy: expected a string like 'rotate=90d', got {type(policy).__name__}")
        rotate_every, max_enc = parse_policy(policy)
        # Never above the random-nonce bound of the algorithm, whatever the policy asks; and
        # SQLite integers are signed 64-bit (2^63 - 1 is "unlimited" in practice).
        max_enc = min(max_enc or self.config.max_encryptions[algorithm], safe_max_encryptions(algorithm), 2**63 - 1)
        now = self.clock()
        key_id = _urandom(8).hex()
        with self._lock:
            try:
                with self.store.write() as db:
                    existing = self.store.key(name, db)
                    if existing is not None:
                        if (existing.algorithm, existing.policy) != (algorithm, policy):
                            raise PolicyError(f"name: a key named {name!r} exists with another algorithm or policy")
                        return existing.key_id
                    db.execute("INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                               (key_id, name, algorithm, policy, rotate_every, max_enc, KeyState.ACTIVE, now, now))
                    self._insert_version(db, key_id, algorithm, 1, now)
                    # Journaled inside the transaction: if the journal refuses, nothing happened.
                    self.audit.record("KEY_CREATE", key_id=key_id, name=name, algorithm=algorithm, policy=policy,
                                      version=1, operator=self.operator)
            except sqlite3.IntegrityError:  # another process created the same name first
                existing = self.store.key(name)
                assert existing is not None
                return existing.key_id
        return key_id

    def rotate(self, ref: str, *, expected_version: int | None = None, reason: str = "manual") -> int:
        """Retire the active version and activate a new one; returns the active version.

        With ``expected_version`` the rotation happens only if that version is still active,
        so concurrent rotations (other threads or processes) produce exactly one new version.
        """
        with self._lock:
            with self.store.write() as db:
                row = self._key_row(ref, db)
                key_after(row.state, Action.ROTATE)
                active = self.store.active_version(row.key_id, db)
                assert active is not None
                if expected_version is not None and active.version != expected_version:
                    return active.version  # someone rotated away from it already
                now = self.clock()
                db.execute("UPDATE versions SET state = ?, retired_at = ? WHERE key_id = ? AND version = ?",
                           (VersionState.RETIRED, now, row.key_id, active.version))
                new = active.version + 1
                self._insert_version(db, row.key_id, row.algorithm, new, now)
                db.execute("UPDATE keys SET updated = ? WHERE key_id = ?", (now, row.key_id))
                self.audit.record("KEY_ROTATE", key_id=row.key_id, name=row.name, version=new,
                                  retired=active.version, reason=reason, operator=self.operator)
            self._forget(row.key_id, row.name)
        return new

    def revoke(self, ref: str, reason: str, *, approvals: Approvals | None = None, emergency: bool = False) -> None:
        """Make every version unusable (no encrypt, no decrypt). Idempotent."""
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError("reason: a revocation needs a reason")
        required = self.approvals_config.emergency_revoke if emergency else self.approvals_config.revoke
        with self._lock:
            with self.store.write() as db:
                row = self._key_row(ref, db)
                if row.state is KeyState.REVOKED:
                    return
                key_after(row.state, Action.REVOKE)
                signers = self._check_approvals(db, approvals, required, "revoke", row.key_id, None, emergency,
                                                reason=reason)
                now = self.clock()
                db.execute("UPDATE versions SET state = ?, revoked_at = ? WHERE key_id = ? AND state IN (?, ?)",
                           (VersionState.REVOKED, now, row.key_id, VersionState.ACTIVE, VersionState.RETIRED))
                db.execute("UPDATE keys SET state = ?, updated = ?, revoke_reason = ? WHERE key_id = ?",
                           (KeyState.REVOKED, now, reason, row.key_id))
                self.audit.record("KEY_REVOKE", key_id=row.key_id, name=row.name, reason=reason, emergency=emergency,
                                  approvers=sorted(signers), required_approvals=required, operator=self.operator)
            self._forget(row.key_id, row.name)

    def destroy(self, ref: str, *, version: int | None = None, approvals: Approvals | None = None) -> None:
        """Erase material: of one retired/revoked version, or of a revoked key. Idempotent, one-way."""
        required = self.approvals_config.destroy
        with self._lock:
            with self.store.write() as db:
                row = self._key_row(ref, db)
                if version is None:
                    if row.state is KeyState.DESTROYED:
                        return
                    key_after(row.state, Action.DESTROY)
                    targets = [v.version for v in self.store.versions(row.key_id, db)]
                else:
                    ver = self.store.version(row.key_id, version, db)
                    if ver is None:
                        raise KeyError_(f"version: key {row.name!r} has no version {version}")
                    if ver.state is VersionState.DESTROYED:
                        return
                    version_destroyable(ver.state)
                    targets = [version]
                signers = self._check_approvals(db, approvals, required, "destroy", row.key_id, version, False)
                now = self.clock()
                for v in targets:
                    db.execute("UPDATE versions SET state = ?, wrapped = NULL, kek_id = NULL, destroyed_at = ? "
                               "WHERE key_id = ? AND version = ?", (VersionState.DESTROYED, now, row.key_id, v))
                if version is None:
                    db.execute("UPDATE keys SET state = ?, updated = ? WHERE key_id = ?",
                               (KeyState.DESTROYED, now, row.key_id))
                self.audit.record("KEY_DESTROY", key_id=row.key_id, name=row.name,
                                  version=version if version else "all", approvers=sorted(signers),
                                  required_approvals=required, operator=self.operator)
            self._forget(row.key_id, row.name)
        self.store.checkpoint()  # the erased wrapped material leaves the WAL as well

    # -- queries ----------------------------------------------------------------------------

    def get(self, ref: str, version: int | None = None) -> SecretBytes:
        """The raw material of the active (or given) version, in a SecretBytes you should wipe."""
        row = self._key_row(ref)
        if row.state is not KeyState.ACTIVE:
            raise KeyError_(f"key: {row.name!r} is {row.state}")
        ver = (self.store.version(row.key_id, version) if version is not None
               else self.store.active_version(row.key_id))
        if ver is None or ver.wrapped is None:
            raise KeyError_(f"version: key {row.name!r} has no usable version {version or ''}".rstrip())
        material = self._unwrap(row, ver)
        self.audit.record("KEY_EXPORT", key_id=row.key_id, name=row.name, version=ver.version,
                          operator=self.operator)
        return material

    def list(self) -> list[KeyInfo]:
        """Every key with its versions."""
        return [self._info(r) for r in self.store.all_keys()]

    def describe(self, ref: str) -> KeyInfo:
        """One key with its versions and usage counters."""
        self._flush_usage()
        return self._info(self._key_row(ref))

    def unused_for(self, ref: str, version: int) -> float | None:
        """Seconds since version ``version`` was last used, or None if it never was."""
        self._flush_usage()
        ver = self.store.version(self._key_row(ref).key_id, version)
        if ver is None:
            raise KeyError_(f"version: no version {version}")
        return None if ver.last_used is None else self.clock() - ver.last_used

    def register_operator(self, public_key_path: str | Path, label: str = "") -> str:
        """Add an operator key allowed to approve revoke/destroy; returns its key id."""
        from xpscerpto.signing import load_public_key

        key = load_public_key(public_key_path)
        OperatorRegistry.load(self.operators_path).add(key, label).save(self.operators_path)
        self.audit.record("OPERATOR_ADD", keyid=key.keyid, label=label, operator=self.operator)
        return key.keyid

    def close(self) -> None:
        """Flush usage counters, wipe cached keys, close the database and the KEK.

        Call it once no other thread uses this keyring any more.
        """
        self._flush_usage()
        with self._lock:
            for h in self._handles.values():
                h.aead.wipe()
            self._handles.clear()
            self._active.clear()
        self.store.close()
        self.kek.close()

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _key_row(self, ref: str, db: sqlite3.Connection | None = None) -> KeyRow:
        row = self.store.key(ref, db) if isinstance(ref, str) else None
        if row is None:
            raise KeyError_(f"key: no key named or identified by {ref!r}")
        return row

    def _aad(self, key_id: str, version: int, algorithm: str) -> bytes:
        return f"xps-keyring/v1|{key_id}|{version}|{algorithm}".encode()

    def _insert_version(self, db: sqlite3.Connection, key_id: str, algorithm: str, version: int, now: float) -> None:
        size = 16 if algorithm == "AES-128-GCM" else 32
        with SecretBytes.take(_random_secret(size)) as material:  # straight into a wipeable buffer
            wrapped = self.kek.wrap(material, self._aad(key_id, version, algorithm))
        db.execute("INSERT INTO versions (key_id, version, state, kek_id, wrapped, created) VALUES (?,?,?,?,?,?)",
                   (key_id, version, VersionState.ACTIVE, self.kek.kek_id, wrapped, now))

    def _unwrap(self, row: KeyRow, ver: VersionRow) -> SecretBytes:
        assert ver.wrapped is not None
        if ver.kek_id != self.kek.kek_id:
            raise KeyError_(f"kek: version {ver.version} of {row.name!r} is wrapped under another KEK")
        return self.kek.unwrap(ver.wrapped, self._aad(row.key_id, ver.version, row.algorithm))

    def _make_handle(self, row: KeyRow, ver: VersionRow, now: float) -> _Handle:
        with self._unwrap(row, ver) as material:
            info = struct.pack(">8sI", bytes.fromhex(row.key_id), ver.version) + row.algorithm.encode()
            size = 16 if row.algorithm == "AES-128-GCM" else 32
            with self.engine.hkdf.derive(material, size + 32, salt=b"xps-keyring/v1", info=info) as okm:
                view = okm.view()
                aead = self._aead.keyed(row.algorithm, view[:size])  # keeps its own wipeable copy
                commitment = bytes(view[size:])
                del view
        h = _Handle(row, ver, aead, commitment)
        self._set_window(h, ver)
        # Re-read state at least once a second so other processes' revocations take effect.
        h.recheck_at = now + 1.0
        return h

    def _encrypting_handle(self, name: str, now: float) -> _Handle:
        with self._lock:
            h = self._active.get(name)
            if h is not None and now < h.recheck_at and next(h.counter) < 0:
                return h  # another thread refreshed it meanwhile
            row = self.store.key(name)
            if row is None:
                raise KeyError_(f"key: no key named {name!r}")
            if row.state is not KeyState.ACTIVE:
                self._forget(row.key_id, row.name)
                raise KeyError_(f"key: {name!r} is {row.state}; only an active key encrypts")
            ver = self.store.active_version(row.key_id)
            assert ver is not None
            if row.rotate_every is not None and now >= ver.created + row.rotate_every:
                self.rotate(row.key_id, expected_version=ver.version, reason="time")
                return self._encrypting_handle(name, now)
            cached = self._handles.get((bytes.fromhex(row.key_id), ver.version))
            reuse = cached is not None and cached.state is VersionState.ACTIVE
            h = cached if reuse and cached is not None else self._make_handle(row, ver, now)
            h.recheck_at = now + 1.0 if row.rotate_every is None else min(now + 1.0, ver.created + row.rotate_every)
            if next(h.counter) >= 0 and not self._reserve(row, h):
                self.rotate(row.key_id, expected_version=ver.version, reason="usage")
                return self._encrypting_handle(name, now)
            self._handles[(bytes.fromhex(row.key_id), ver.version)] = h
            self._active[name] = h
            return h

    def _reserve(self, row: KeyRow, h: _Handle) -> bool:
        """Reserve the next block of encryptions for this process; False if the limit is reached."""
        with self.store.write() as db:
            used = db.execute("SELECT encryptions FROM versions WHERE key_id = ? AND version = ?",
                              (row.key_id, h.version)).fetchone()[0]
            block = min(self.config.usage_block, row.max_encryptions - used)
            if block <= 0:
                return False
            db.execute("UPDATE versions SET encryptions = encryptions + ? WHERE key_id = ? AND version = ?",
                       (block, row.key_id, h.version))
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
        misses[ref] = now + 1.0

    def _decrypting_handle(self, key_id: bytes, version: int, now: float) -> _Handle | None:
        with self._lock:
            kid = key_id.hex()
            row = self.store.key(kid)
            ver = self.store.version(kid, version) if row is not None else None
            if row is None or ver is None or ver.wrapped is None or row.state is not KeyState.ACTIVE:
                # Remember the miss for a second: forged blobs naming unknown keys must not
                # cost a lock and database reads each.
                self._handles.pop((key_id, version), None)
                self._remember_miss((key_id, version), now)
                return None
            h = self._handles.get((key_id, version))
            if h is None:
                try:
                    h = self._make_handle(row, ver, now)
                except XpsError:
                    return None
                self._handles[(key_id, version)] = h
            h.state, h.recheck_at = ver.state, now + 1.0
            self._set_window(h, ver)
            return h

    def _set_window(self, h: _Handle, ver: VersionRow) -> None:
        h.decrypt_until = decrypt_deadline(ver.state, ver.retired_at, self.config.dual_window_seconds)

    def _forget(self, key_id: str, name: str) -> None:
        """Drop cached handles of a key after a transition.

        Not wiped here: another thread may be inside encrypt/decrypt with this handle. The key
        copy is a SecretBytes, zeroed when the last reference (that call's) goes away.
        """
        kid = bytes.fromhex(key_id)
        self._flush_usage()
        self._active.pop(name, None)
        for k in [k for k in self._handles if k[0] == kid]:
            del self._handles[k]

    def _flush_usage(self) -> None:
        with self._lock:
            pending = [(h.decryptions, h.last_used, h.key_id, h.version) for h in self._handles.values()
                       if h.decryptions or h.last_used]
            if not pending:
                return
            with self.store.write() as db:
                for n, used, kid, v in pending:
                    db.execute("UPDATE versions SET decryptions = decryptions + ?, "
                               "last_used = max(coalesce(last_used, 0), ?) WHERE key_id = ? AND version = ?",
                               (n, used, kid, v))
            for h in self._handles.values():
                h.decryptions = 0

    def _check_approvals(self, db: sqlite3.Connection, approvals: Approvals | None, required: int, action: str,
                         key_id: str, version: int | None, emergency: bool, *,
                         reason: str | None = None) -> frozenset[str]:
        """Verify k-of-n operator approvals for exactly this transition and consume them."""
        if required <= 0 and approvals is None:
            return frozenset()
        if approvals is None:
            raise PolicyError(f"approvals: {action} requires {required} operator approval(s), got none",
                              reason="approvals")
        req = approvals.request
        if (req.action, req.key_id, req.version, req.emergency) != (action, key_id, version, emergency):
            raise PolicyError(f"approvals.request: approves {req.action} of {req.key_id} (version {req.version}, "
                              f"emergency {req.emergency}), not this {action}", reason="approvals")
        if reason is not None and req.reason != reason:
            raise PolicyError("approvals.request: approves another reason than the one given", reason="approvals")
        if self.clock() >= req.expires:
            raise PolicyError("approvals.request: expired", reason="approvals")
        signers = approvals.valid_signers(OperatorRegistry.load(self.operators_path))
        if len(signers) < required:
            raise PolicyError(f"approvals: {action} requires {required} distinct operator approval(s), "
                              f"{len(signers)} valid", reason="approvals")
        try:
            db.execute("INSERT INTO approvals_used VALUES (?, ?)", (req.nonce, self.clock()))
        except sqlite3.IntegrityError:
            raise PolicyError("approvals.request: already used (replay)", reason="approvals") from None
        return signers

    def _info(self, row: KeyRow) -> KeyInfo:
        window = self.config.dual_window_seconds
        versions = tuple(VersionInfo(
            v.version, v.state, v.created, v.retired_at, v.revoked_at, v.destroyed_at, v.encryptions,
            v.decryptions, v.last_used,
            v.retired_at + window if v.state is VersionState.RETIRED and v.retired_at is not None else None)
            for v in self.store.versions(row.key_id))
        return KeyInfo(row.key_id, row.name, row.algorithm, row.policy, row.state, row.created, row.rotate_every,
                       row.max_encryptions, row.revoke_reason, versions)

