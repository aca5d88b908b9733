"""An engine's state directory, and the record that says what it holds and what policy protects it.

``--home DIR``, else ``$XPS_HOME``, else ``$XDG_STATE_HOME/xpscerpto`` (default
``~/.local/state/xpscerpto``). Created with mode 0700: it holds the trust pins and the socket
that can roll back the running engine.

``HOME/home.json`` is the home's record:

* ``stores``: every stateful file ever created in the home (the keyring database, the KEK,
  the routing state, the audit journal …). A store is created only while the record does not
  list it; once listed, a missing, empty or unreadable file is a refusal naming the file and
  how to restore it — never a silent reset to an empty state.
* ``policy``: the security policy the home was initialised with (approval thresholds, the
  KEK, windows, retention, usage limits, hot-patch gates). Every later invocation uses it; a
  configuration that differs in any of these keys is refused unless the change is applied
  explicitly (``xps policy apply``), audited, with the current approvals when it loosens.
  Once the home has a keyring, the keyring keeps its own sealed copy of the policy (sealed
  under a key the KEK wraps) and refuses to open if ``home.json`` says otherwise, so an edit
  of ``home.json`` outside xps is detected where the keyring opens.
* ``sealed``: stores that sealed their rows (the keyring, from its first open). A keyring the
  record lists here but that has no integrity key or no sealed policy is refused: it is never
  sealed afresh, which would bless whatever rows someone who can write only the database left
  (a database on PostgreSQL, say). Records written before this field existed get it at the
  keyring's next open.

The record is created by ``xps init`` or by the first run on an empty home (no record and no
store file). A home that holds stores but no record is refused rather than adopted silently;
``xps init --adopt`` adopts it explicitly.

Example:
    >>> import tempfile
    >>> home = Home.resolve(tempfile.mkdtemp())
    >>> record = home.initialise(policy={"approvals.revoke": 2})
    >>> home.record().policy["approvals.revoke"], home.store_exists("keyring")
    (2, False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._atomic import atomic_write, locked_file, sweep_stale_temps
from ._stored_file import read_stored
from .errors import InternalError, PolicyError

__all__ = ["STORES", "Home", "HomeRecord"]

RECORD_FORMAT = 1
_TOKEN_PREFIX = "pkcs11:"  # noqa: S105 -- a URI scheme, not a secret

#: Store name -> its default file in the home, and how an operator restores it.
STORES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "keyring": ("keyring.db", "restore it from a backup of the home (it holds every wrapped key)"),
    "kek": ("kek.key", "restore it from a backup; without it no key in keyring.db can be unwrapped"),
    "routing": ("state.json", "restore it from a backup of the home (routing state and version memory)"),
    "audit": ("audit.log", "restore it from a backup (the journal cannot restart without losing its chain)"),
    "overrides": ("overrides.json", "restore it from a backup, or undo the emergency change with a new one"),
    # Routing state in PostgreSQL: the digest of the row this node last committed, kept in the
    # home so that a database writer cannot edit the row or put an older copy back unseen.
    "routing_anchor": ("state.anchor", "restore it from a backup of the home taken with the database's; "
                                       "it names the routing-state row this node last committed"),
    # How far this node followed the fleet's capsule announcements (`xps watch --cluster`).
    "announce_cursor": ("announce.json", "restore it from a backup of the home; it names the last capsule "
                                         "announcement this node followed"),
    # Recorded only when the configuration places it outside the home (hotpatch.trust_store).
    "trust": ("trust.json", "restore it from a backup, or pin the publishers again with `xps trust add`"),
})


@dataclass(frozen=True)
class HomeRecord:
    """What ``home.json`` holds (read-only; changes write a new record)."""

    created: str
    stores: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    policy: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    format: int = RECORD_FORMAT
    #: Stores that sealed their rows (the keyring): from then on a store without its seals is
    #: refused, never sealed afresh — re-sealing would bless whatever rows an editor left.
    sealed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``home.json`` document."""
        doc = {"format": self.format, "created": self.created, "stores": dict(self.stores),
               "policy": dict(self.policy)}
        if self.sealed:  # absent until a store seals (records written before it existed stay as they were)
            doc["sealed"] = list(self.sealed)
        return doc

    @classmethod
    def from_json(cls, doc: object, where: str) -> HomeRecord:
        """Parse strictly; PolicyError naming ``where`` and the bad field."""
        if not isinstance(doc, dict):
            raise PolicyError(f"{where}: expected a JSON object")
        if doc.get("format") != RECORD_FORMAT:
            raise PolicyError(f"{where}: format must be {RECORD_FORMAT}")
        if not {"format", "created", "stores", "policy"} <= set(doc) <= {"format", "created", "stores", "policy",
                                                                          "sealed"}:
            raise PolicyError(f"{where}: unexpected or missing fields")
        created, stores, policy = doc["created"], doc["stores"], doc["policy"]
        sealed = doc.get("sealed", [])
        if not isinstance(sealed, list) or (not sealed and "sealed" in doc) or not all(
                isinstance(s, str) and s in STORES for s in sealed) or len(set(sealed)) != len(sealed):
            raise PolicyError(f"{where}: 'sealed' must list known store names, once each")
        if not isinstance(created, str):
            raise PolicyError(f"{where}: 'created' must be a string")
        if not isinstance(stores, dict) or not all(
                isinstance(k, str) and k in STORES and isinstance(v, str) and v for k, v in stores.items()):
            raise PolicyError(f"{where}: 'stores' must map known store names to file names")
        if not isinstance(policy, dict) or not all(isinstance(k, str) for k in policy):
            raise PolicyError(f"{where}: 'policy' must be an object")
        return cls(created, MappingProxyType(dict(stores)), MappingProxyType(dict(policy)), sealed=tuple(sealed))


@dataclass(frozen=True, slots=True)
class Home:
    """Paths inside one engine home, and its record."""

    root: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None, *, create: bool = True) -> Home:
        """Pick the home directory (argument, env, XDG default) and create it 0700.

        Raises:
            PolicyError: ``home`` is not a path.
            InternalError: the directory cannot be created or used (the OS error's type named).
        """
        if home is None:
            home = os.environ.get("XPS_HOME") or Path(
                os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "xpscerpto"
        if not isinstance(home, str | os.PathLike):
            raise PolicyError(f"home: expected a path, got {type(home).__name__}")
        if not os.fspath(home):
            # Path("") is the current directory: an unset variable in `--home "$DIR"` must not
            # make whatever directory a script runs in a home (found by a review).
            raise PolicyError("home: expected a path, got an empty one")
        try:
            h = cls(Path(home).expanduser().resolve())
            if create:
                h.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                h.capsules.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InternalError(f"{type(exc).__name__}: home: cannot use {str(home)!r} ({exc.strerror})") from None
        except ValueError:
            raise PolicyError("home: not a usable path (NUL byte?)") from None
        except RuntimeError:  # a symlink loop, or ~user with no such user (Python 3.11's resolve)
            raise PolicyError("home: cannot be resolved (a symlink loop, or ~ of an unknown user)") from None
        if create:
            h.sweep_stale_temps()
        return h

    def sweep_stale_temps(self) -> list[Path]:
        """Remove the temp files that writers killed mid-write left in the home; the paths removed.

        Run by :meth:`resolve` (every command and service opens its home through it). Swept, once
        the folder is a home (``home.json`` exists, readable or not): the home folder and
        ``capsules/`` — every durable write in the home goes to one of the two — each with one
        listing, for any name; and the folder of each file store the record places elsewhere (a
        KEK file outside the home, say), for temps of that store's file only. A folder without
        ``home.json`` may be anything the caller pointed ``--home`` at (their own folder, ``/tmp``):
        there only temps of ``home.json`` itself go (an ``xps init`` killed before its record
        landed); temps of any other name are removed by the next write of that name instead.
        Only temps as :mod:`xpscerpto._atomic` names them, regular files last written at least
        :data:`~xpscerpto._atomic.STALE_TEMP_SECONDS` ago (a live writer's temp is left alone).
        Never raises: failures are logged and left for the next open.
        """
        if not os.path.lexists(self.record_path):
            return [self.root / name for name in sweep_stale_temps(self.root, target=self.record_path.name)]
        removed = [folder / name for folder in (self.root, self.capsules) for name in sweep_stale_temps(folder)]
        try:
            record = self._read_record()
        except PolicyError:
            record = None  # reported, with how to restore it, by whatever reads the record next
        for ref in record.stores.values() if record is not None else ():
            if ref.startswith((_TOKEN_PREFIX, "postgresql://")):
                continue
            path = self.root / ref
            if path.parent not in (self.root, self.capsules):
                removed += [path.parent / name for name in sweep_stale_temps(path.parent, target=path.name)]
        return removed

    @property
    def trust(self) -> Path:
        """Pinned publisher keys."""
        return self.root / "trust.json"

    @property
    def capsules(self) -> Path:
        """Accepted capsules, content-addressed (``<sha256>.capsule``)."""
        return self.root / "capsules"

    @property
    def state(self) -> Path:
        """Committed routing state and its history."""
        return self.root / "state.json"

    @property
    def audit(self) -> Path:
        """The audit journal."""
        return self.root / "audit.log"

    @property
    def socket(self) -> Path:
        """The running engine's control socket."""
        return self.root / "control.sock"

    @property
    def lock(self) -> Path:
        """Serialises writers of ``state.json`` across processes."""
        return self.root / "state.lock"

    @property
    def record_path(self) -> Path:
        """The home's record (stores and security policy)."""
        return self.root / "home.json"

    # -- the record -------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of ``home.json`` across processes.

        Raises:
            PolicyError: ``HOME/home.lock`` cannot be opened or locked (replaced by a directory,
                a symlink, a FIFO; out of descriptors): nothing is read or changed.
        """
        lock = self.root / "home.lock"
        with locked_file(lock, f"home lock {str(lock)!r}", PolicyError):
            yield

    def record(self) -> HomeRecord:
        """The record; PolicyError if the home has none or it is unreadable (naming the fix)."""
        found = self._read_record()
        if found is None:
            raise PolicyError(f"home {str(self.root)!r}: no home.json; run `xps init` (or open the empty home once)")
        return found

    def _read_record(self) -> HomeRecord | None:
        where = f"home record {str(self.record_path)!r}"
        try:
            raw = read_stored(self.record_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyError(f"{where}: unreadable ({exc.strerror}); restore it from a backup") from None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError, MemoryError):
            raise PolicyError(f"{where}: not JSON (emptied or corrupted); restore it from a backup") from None
        return HomeRecord.from_json(doc, where)

    def initialise(self, *, policy: Mapping[str, Any], adopt: bool = False) -> HomeRecord:
        """Create the record if there is none; return the record in force.

        Without ``adopt``, a home that already holds a store file but no record is refused: its
        record was lost, and guessing its policy (or re-creating its stores) would undo what it
        protected. With ``adopt`` the store files present are recorded as they are.

        Raises:
            PolicyError: ``policy`` is not a security policy (a key outside
                :data:`~xpscerpto.config.SECURITY_KEYS`, or a value it refuses, named), the home
                holds state but no record (and ``adopt`` is false), or the existing record is
                unreadable.
        """
        _check_policy(policy)
        with self.locked():
            found = self._read_record()
            if found is not None:
                return found
            present = self._unrecorded_stores()
            if present and not adopt:
                raise self._lost_record(present)
            record = HomeRecord(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                MappingProxyType(present), MappingProxyType(dict(policy)))
            self._write_record(record)
            return record

    def refuse_lost_record(self) -> None:
        """Refuse a home that holds stores but lost its ``home.json``, as :meth:`initialise` does.

        For commands that read or write the home's stores without creating its record (``xps
        status``, an offline ``xps rollback``): without the record nothing says where the stores
        are or what protects them, and a missing ``state.json`` would read as "nothing enabled".
        A home with a record, or with no store yet, passes (nothing is created or locked here).

        Raises:
            PolicyError: the home holds a store file but no ``home.json`` (the message says how to
                restore or adopt it), or its ``home.json`` is unreadable.
        """
        if self._read_record() is not None:
            return
        present = self._unrecorded_stores()
        # Read again: a first run on this empty home may have written its record, then created a
        # store, between the two looks; that home is whole.
        if present and self._read_record() is None:
            raise self._lost_record(present)

    def refuse_foreign_directory(self) -> None:
        """Refuse to initialise, implicitly, a directory that holds files of something else.

        Only a missing or empty directory (or one holding only what a home makes before its
        record: lock files, ``capsules/``, audit keys, trust pins) becomes a home by a first
        command; a read-only ``xps key list`` pointed at a project directory wrote a KEK, a
        database and a journal into it. ``xps init`` (and ``--adopt``) writes the record first,
        so this passes for it.

        Raises:
            PolicyError: the directory has no ``home.json``, no store, and other entries.
        """
        if self.record_path.exists() or self._unrecorded_stores():
            return
        # operators.json: what an earlier release kept operators in, imported at the first open.
        own = {rel for rel, _ in STORES.values()} | {"capsules", "home.json", "audit.key", "audit.pub",
                                                      "operators.json", "operators.json.imported"}
        try:
            names = [p.name for p in self.root.iterdir()]
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PolicyError(f"home {str(self.root)!r}: unreadable ({exc.strerror})") from None
        foreign = [n for n in names if n not in own and not n.endswith(".lock") and not n.startswith(".")]
        if foreign:
            raise PolicyError(f"home {str(self.root)!r}: not empty and not a home ({len(foreign)} other "
                              "entr(ies), no home.json); only an empty directory is initialised by a first "
                              "command: use an empty directory, or run `xps init` there on purpose")

    def _unrecorded_stores(self) -> dict[str, str]:
        # HOME/trust.json alone is no state to protect (pins come and go with `xps trust`).
        return {name: rel for name, (rel, _) in STORES.items() if name != "trust" and (self.root / rel).exists()}

    def _lost_record(self, present: Mapping[str, str]) -> PolicyError:
        files = ", ".join(sorted(present.values()))
        return PolicyError(f"home {str(self.root)!r}: it holds {files} but no home.json (lost or from an older "
                           "xpscerpto); restore home.json from a backup, or adopt the home as it is with "
                           "`xps init --adopt --config FILE`")

    def store_exists(self, name: str) -> bool:
        """Whether the record lists store ``name`` (so it must be there, and is never re-created)."""
        found = self._read_record()
        return found is not None and name in found.stores

    def store_ref(self, path: Path) -> str:
        """How the record names a store file: relative to the home when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def check_store(self, name: str, ref: str | None = None) -> bool:
        """Before opening store ``name``: True if it must be created now, False if it exists.

        ``ref`` is what the record calls the store: a file (relative to the home, or absolute;
        default: the store's usual file) or, for a KEK inside a token, ``pkcs11:TOKEN/LABEL``.

        Raises:
            PolicyError: the record lists the store but its file is missing or empty, or names
                another file or token for it than ``ref`` (the message says how to restore it).
        """
        default, restore = STORES[name]
        ref = ref or default
        record = self._read_record()
        if record is None or name not in record.stores:
            return True
        if record.stores[name] != ref:
            raise PolicyError(f"{name} store: this home records {record.stores[name]!r}, the configuration names "
                              f"{ref!r}; a home keeps its stores where they were created")
        if ref.startswith((_TOKEN_PREFIX, "postgresql://")):
            return False  # not a file: its opener checks it exists (and is told not to create it)
        path = self.root / ref
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise PolicyError(f"{name} store {str(path)!r}: missing, though this home recorded it; {restore}; "
                              "xpscerpto never re-creates a recorded store") from None
        except OSError as exc:
            raise PolicyError(f"{name} store {str(path)!r}: unreadable ({exc.strerror}); {restore}") from None
        if size == 0:
            raise PolicyError(f"{name} store {str(path)!r}: empty, though this home recorded it; {restore}")
        return False

    def register_store(self, name: str, ref: str | None = None) -> None:
        """Record that store ``name`` (called ``ref``, as for :meth:`check_store`) now exists."""
        ref = ref or STORES[name][0]
        with self.locked():
            record = self._read_record()
            if record is None:
                raise PolicyError(f"home {str(self.root)!r}: no home.json to record the {name} store in")
            if record.stores.get(name) == ref:
                return
            self._write_record(replace(record, stores=MappingProxyType({**record.stores, name: ref})))

    def register_journal(self) -> bool:
        """Record ``HOME/audit.log`` as a store once it holds a record; True if it is recorded.

        Not before: a process killed while creating the journal leaves an empty file, and
        recording that would make every later command refuse the home as damaged.

        Raises:
            PolicyError: the record lists the journal and it is missing or empty.
        """
        if self.check_store("audit"):
            if not (self.audit.exists() and self.audit.stat().st_size > 0):
                return False
            self.register_store("audit")
        return True

    def is_sealed(self, name: str) -> bool:
        """Whether store ``name`` sealed its rows here (so a store without seals is tampered)."""
        found = self._read_record()
        return found is not None and name in found.sealed

    def mark_sealed(self, name: str) -> None:
        """Record that store ``name`` holds seals from now on (never undone).

        Raises:
            PolicyError: ``name`` is not a store name, or the home has no record.
        """
        if not isinstance(name, str) or name not in STORES:
            raise PolicyError(f"store: expected one of {', '.join(sorted(STORES))}")
        with self.locked():
            record = self.record()
            if name not in record.sealed:
                self._write_record(replace(record, sealed=(*record.sealed, name)))

    def replace_policy(self, policy: Mapping[str, Any],
                       latest: Callable[[], Mapping[str, Any]] | None = None) -> HomeRecord:
        """Write a new policy; callers have authorised and committed the change.

        ``latest``, if given, is called under the home's lock and its result written instead of
        ``policy``: the policy committed last (two changes committed in one order could
        otherwise reach ``home.json`` in the other, leaving it behind the database).
        """
        with self.locked():
            if latest is not None:
                policy = latest()
            record = self.record()
            if dict(record.policy) == dict(policy):
                return record
            new = replace(record, policy=MappingProxyType(dict(policy)))
            self._write_record(new)
            return new

    def _write_record(self, record: HomeRecord) -> None:
        try:
            atomic_write(self.record_path, json.dumps(record.to_json(), indent=1, sort_keys=True).encode() + b"\n",
                         0o600)
        except OSError as exc:
            raise PolicyError(f"home record {str(self.record_path)!r}: cannot write ({exc.strerror})") from None


def _check_policy(policy: object) -> None:
    """Refuse what no open could read back, before it is recorded.

    An unchecked record was written as given: an unknown key or a float made every later open
    refuse (as "edited outside xps?"), a value JSON cannot hold escaped untyped.
    """
    from ._config_fields import show
    from .config import SECURITY_KEYS, XpsConfig

    if not isinstance(policy, Mapping):
        raise PolicyError("policy: expected a mapping of security-policy keys")
    for key in policy:
        if key not in SECURITY_KEYS:
            raise PolicyError(f"policy: {show(key)} is not a security-policy key")
    XpsConfig().with_security_policy(policy)
    XpsConfig().under_recorded_routing(policy, given=False)
    try:
        json.dumps(dict(policy), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise PolicyError("policy: a value is not plain data (JSON)") from None
