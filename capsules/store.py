"""Accepted capsules on disk and the committed routing state.

The capsule store is content-addressed (``<sha256>.capsule``, written atomically, never
modified). ``state.json`` is the single commit point of the routing state: which capsules
are active (in precedence order), what each replaced, the highest version ever accepted per
capsule name, every version ever enabled here (what ``rollback --to`` needs), and a bounded
history for ``xps status``. Nothing a rollback needs lives only in the bounded history. It is
replaced atomically, so a crash at any moment leaves either the previous or the next state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xpscerpto._atomic import atomic_write, locked_file
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import XpsError
from xpscerpto.home import Home

from .format import parse_version
from .refusal import Refusal, refuse

__all__ = ["ActiveCapsule", "CapsuleStore", "RoutingState", "merged", "raised_to", "refused_entry", "state_lock"]

_HISTORY = 200


@dataclass(frozen=True, slots=True)
class ActiveCapsule:
    """One enabled capsule: its identity, the operations it serves, and what it replaced."""

    name: str
    version: str
    sha256: str
    operations: tuple[str, ...]
    replaced: str | None = None  # sha256 of the same-name capsule it replaced, if any
    replaced_version: str | None = None  # and its version


_ACTIVE_FIELDS = frozenset({"name", "version", "sha256", "operations", "replaced", "replaced_version"})

_FORMAT_1_FIELDS = frozenset({"format", "active", "highest", "history", "enabled", "op_highest"})

#: ``state.json``'s format: 2 has every field (1, older, may lack ``enabled``/``op_highest``).
STATE_FORMAT = 2


@dataclass(frozen=True)
class RoutingState:
    """The committed routing state (immutable; methods return new states).

    ``enabled`` maps capsule name -> version -> sha256 for every version ever enabled here;
    unlike ``history`` (the newest events, for display) it is never truncated.
    """

    active: tuple[ActiveCapsule, ...] = ()
    highest: Mapping[str, str] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    enabled: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: operation -> highest capsule version ever enabled for it, by any capsule name.
    op_highest: Mapping[str, str] = field(default_factory=dict)

    def find(self, target: str) -> ActiveCapsule | None:
        """The active capsule named ``target``, serving operation ``target``, or with that hash."""
        for a in reversed(self.active):  # later entries take precedence
            if target in (a.name, a.sha256) or target in a.operations or (
                    len(target) >= 8 and a.sha256.startswith(target)):
                return a
        return None

    def sha_of(self, name: str, version: str) -> str | None:
        """The sha256 of ``name`` ``version`` if it was ever enabled here."""
        return self.enabled.get(name, {}).get(version)

    def version_of(self, name: str, sha256: str) -> str | None:
        """The version of ``name`` whose capsule has ``sha256``, if it was ever enabled here."""
        return next((v for v, sha in self.enabled.get(name, {}).items() if sha == sha256), None)

    def enable(self, cap: ActiveCapsule, *, operator: str) -> RoutingState:
        """``cap`` becomes active (replacing a same-name version); raises the highest version."""
        previous = next((a for a in self.active if a.name == cap.name), None)
        cap = replace(cap, replaced=previous.sha256 if previous else None,
                      replaced_version=previous.version if previous else None)
        active = (*(a for a in self.active if a.name != cap.name), cap)
        highest = raised_to(self.highest, (cap.name,), cap.version)
        enabled = {name: dict(versions) for name, versions in self.enabled.items()}
        enabled.setdefault(cap.name, {})[cap.version] = cap.sha256
        op_highest = raised_to(self.op_highest, cap.operations, cap.version)
        return replace(self._with(active, highest, "enable", cap, operator), enabled=enabled, op_highest=op_highest)

    def disable(self, cap: ActiveCapsule, *, operator: str, restore: ActiveCapsule | None = None) -> RoutingState:
        """Deactivate ``cap``; optionally activate ``restore`` (an earlier version) in its place."""
        active = tuple(a for a in self.active if a.sha256 != cap.sha256)
        highest, op_highest = self.highest, self.op_highest
        if restore is not None:
            active = (*active, restore)
            # What becomes active is remembered as any enable is (memory only rises): a
            # rollback --to a higher version, or one serving another operation, keeps the
            # document's invariant that memory covers every active capsule.
            highest = raised_to(highest, (restore.name,), restore.version)
            op_highest = raised_to(op_highest, restore.operations, restore.version)
        return replace(self._with(active, highest, "rollback", cap, operator,
                                  to=(restore.version if restore else None)), op_highest=op_highest)

    def _with(self, active: tuple[ActiveCapsule, ...], highest: Mapping[str, str], event: str,
              cap: ActiveCapsule, operator: str, **extra: Any) -> RoutingState:
        entry = {"time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "event": event, "name": cap.name,
                 "version": cap.version, "sha256": cap.sha256, "operator": operator, **extra}
        return RoutingState(active, highest, (*self.history, entry)[-_HISTORY:], self.enabled, self.op_highest)

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` document."""
        return {"format": STATE_FORMAT, "active": [asdict(a) | {"operations": list(a.operations)} for a in self.active],
                "highest": dict(self.highest), "enabled": {n: dict(v) for n, v in self.enabled.items()},
                "op_highest": dict(self.op_highest),
                "history": list(self.history)}

    @classmethod
    def load(cls, path: Path) -> RoutingState:
        """Read ``state.json``; missing means nothing was ever enabled."""
        try:
            raw = read_stored(path)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise refuse(Refusal.STATE, f"state {str(path)!r}: unreadable ({exc.strerror or type(exc).__name__})"
                         ) from None
        return cls.from_bytes(raw, str(path))

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> RoutingState:
        """Parse a state document (``where`` names its file or database row in refusals)."""
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError, MemoryError) as exc:
            raise refuse(Refusal.STATE, f"state {where!r}: unreadable ({type(exc).__name__})") from None
        try:
            fmt = doc.get("format", 1)
            if fmt not in (1, STATE_FORMAT) or type(fmt) is not int:
                raise ValueError(f"format must be 1 or {STATE_FORMAT}")
            if fmt != STATE_FORMAT and not set(doc) <= _FORMAT_1_FIELDS:  # a damaged "format" key, say
                unknown = ", ".join(sorted(set(doc) - _FORMAT_1_FIELDS))
                raise KeyError(f"unknown fields in a format 1 document: {unknown}")
            if fmt == STATE_FORMAT:
                # Only documents written before these fields existed may lack them (and have them
                # derived); from format 2 on, a missing one is a lost field, not an old file.
                if set(doc) != {"format", "active", "highest", "enabled", "op_highest", "history", "digest"}:
                    raise KeyError("format, active, highest, enabled, op_highest, history and digest, exactly")
                # A damaged byte that keeps the JSON well-formed (a version digit, a name) is
                # refused here rather than read as another state. Not a seal: whoever edits the
                # file on purpose can recompute it; the checks below catch inconsistent edits.
                body = {k: v for k, v in doc.items() if k != "digest"}
                if not isinstance(doc["digest"], str) or not hmac.compare_digest(doc["digest"], _digest(body)):
                    raise ValueError("digest: does not match the document (edited outside xps, or damaged)")
            history = tuple(doc.get("history", ()))
            if not all(isinstance(e, dict) for e in history):
                raise TypeError("history entries must be objects")
            enabled: dict[str, dict[str, str]] = {n: dict(v) for n, v in doc.get("enabled", {}).items()}
            if "enabled" not in doc:  # written before "enabled" existed: what the history still shows
                for e in history:
                    if e.get("event") == "enable":
                        enabled.setdefault(e["name"], {})[e["version"]] = e["sha256"]
            active = []
            for a in doc["active"]:
                if fmt == STATE_FORMAT and set(a) != _ACTIVE_FIELDS:  # a damaged field name reads as absent
                    raise KeyError(f"an active entry must have exactly {', '.join(sorted(_ACTIVE_FIELDS))}")
                replaced = a.get("replaced")
                replaced_version = a.get("replaced_version")
                if replaced is not None and replaced_version is None:
                    replaced_version = next((v for v, sha in enabled.get(a["name"], {}).items() if sha == replaced),
                                            None)
                active.append(ActiveCapsule(a["name"], a["version"], a["sha256"], tuple(a["operations"]),
                                            replaced, replaced_version))
            op_highest: dict[str, str] = {str(k): str(v) for k, v in doc.get("op_highest", {}).items()}
            if "op_highest" not in doc:  # written before it existed: at least what is active now
                for cap in active:
                    op_highest = raised_to(op_highest, cap.operations, cap.version)
            highest = doc["highest"]
            if not isinstance(highest, dict):
                raise TypeError("highest must be an object")
            _check_document(active, highest, enabled, op_highest, complete=fmt == STATE_FORMAT)
            return cls(tuple(active), dict(highest), history, enabled, op_highest)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A document edited outside xps (a file, or a database row) is refused, naming the
            # field, before a wrong type reaches version comparisons or the verifier.
            raise refuse(Refusal.STATE, f"state {where!r}: malformed ({exc})") from None

    def to_bytes(self) -> bytes:
        """The document as committed."""
        # Compact: json.dumps with indent runs the pure-Python encoder, which holds the GIL for
        # milliseconds on a long history, while API calls on other threads wait for it.
        doc = self.to_json()
        return json.dumps({**doc, "digest": _digest(doc)}, separators=(",", ":")).encode() + b"\n"

    def save(self, path: Path) -> None:
        """Commit atomically."""
        try:
            atomic_write(path, self.to_bytes())
        except OSError as exc:  # the old state stays committed (atomic_write leaves no temp file)
            raise refuse(Refusal.IO, f"state {str(path)!r}: cannot write ({exc.strerror})") from None


def _check_document(active: list[ActiveCapsule], highest: Mapping[Any, Any], enabled: Mapping[Any, Any],
                    op_highest: Mapping[Any, Any], *, complete: bool) -> None:
    """Every field of a parsed state document has the type and shape ``save`` writes.

    ``complete``: the document has every field (format 2), so ``enabled`` lists every active
    capsule by the same name, version and hash.
    """
    for a in active:
        if not (isinstance(a.name, str) and a.name and _is_sha(a.sha256) and isinstance(a.version, str)
                and all(isinstance(op, str) and op for op in a.operations)):
            raise TypeError("an active entry has a wrong name, version, sha256 or operations")
        if not _is_version(a.version) or (a.replaced_version is not None and not _is_version(a.replaced_version)):
            raise TypeError("an active entry's version is not MAJOR.MINOR.PATCH")
        if a.replaced is not None and not _is_sha(a.replaced):
            raise TypeError("an active entry's 'replaced' is not a sha256")
    for what, versions in (("highest", highest), ("op_highest", op_highest)):
        for key, version in versions.items():
            if not isinstance(key, str) or not _is_version(version):
                raise TypeError(f"{what} must map names to MAJOR.MINOR.PATCH versions")
    for name, by_version in enabled.items():
        if not isinstance(name, str) or not all(isinstance(v, str) and _is_sha(sha) for v, sha in by_version.items()):
            raise TypeError("enabled must map names to {version: sha256}")
    # Version memory only rises, and every enable raised it: a document whose memory is below
    # what it says was enabled lost the memory (an edit, a damaged byte in a version) and would
    # accept a downgrade. Refused, never read as "nothing remembered".
    for name, by_version in enabled.items():
        for version in by_version:
            if not _is_version(version):
                raise TypeError(f"enabled: {name!r} lists a version that is not MAJOR.MINOR.PATCH")
            if name not in highest or parse_version(highest[name]) < parse_version(version):
                raise ValueError(f"highest: below version {version} of {name!r}, which was enabled here "
                                 "(version memory lost or damaged)")
    for a in active:
        # A damaged name, version or hash of an active entry would otherwise read as another
        # capsule: restore would then retire it (un-routing a security patch) for a wrong reason.
        if complete and enabled.get(a.name, {}).get(a.version) != a.sha256:
            raise ValueError(f"active: {a.name!r} {a.version} is not the capsule 'enabled' records "
                             "(edited or damaged)")
        if complete and (a.replaced is not None or a.replaced_version is not None) and (
                a.replaced is None or enabled.get(a.name, {}).get(a.replaced_version) != a.replaced):
            raise ValueError(f"active: what {a.name!r} {a.version} replaced is not what 'enabled' records "
                             "(edited or damaged)")
        if a.name not in highest or parse_version(highest[a.name]) < parse_version(a.version):
            raise ValueError(f"highest: below version {a.version} of {a.name!r}, which is active "
                             "(version memory lost or damaged)")
        for op in a.operations:
            if op not in op_highest or parse_version(op_highest[op]) < parse_version(a.version):
                raise ValueError(f"op_highest: below version {a.version} of {a.name!r}, which serves {op!r} "
                                 "(version memory lost or damaged)")


def _digest(doc: Mapping[str, Any]) -> str:
    """``sha256:HEX`` over the document's canonical JSON (sorted keys, compact, ASCII)."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _is_version(value: object) -> bool:
    try:
        parse_version(value)  # type: ignore[arg-type]
    except XpsError:
        return False
    return True


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def raised_to(versions: Mapping[str, str], keys: Iterable[str], version: str) -> dict[str, str]:
    """A copy of ``versions`` where each of ``keys`` is at least ``version`` (version memory only rises)."""
    out = dict(versions)
    for key in keys:
        if key not in out or parse_version(version) > parse_version(out[key]):
            out[key] = version
    return out


def merged(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    """The higher version of each key of ``a`` and ``b``."""
    out = dict(a)
    for key, version in b.items():
        out = raised_to(out, (key,), version)
    return out


def refused_entry(cap: ActiveCapsule, exc: XpsError) -> dict[str, str]:
    """How ``xps status`` lists a committed capsule whose stored file was refused."""
    return {"name": cap.name, "version": cap.version, "sha256": cap.sha256, "reason": str(exc.reason),
            "detail": str(exc)}


class CapsuleStore:
    """Content-addressed accepted capsules."""

    def __init__(self, home: Home) -> None:
        self.dir = home.capsules

    def put(self, raw: bytes) -> str:
        """Store ``raw`` (idempotent; a damaged copy under that name is replaced); returns its SHA-256."""
        sha = hashlib.sha256(raw).hexdigest()
        path = self.dir / f"{sha}.capsule"
        if not self.intact(sha):
            try:
                atomic_write(path, raw, 0o600)
            except OSError as exc:  # ENOSPC, EDQUOT, EIO: a refusal with a reason, never a bare OSError
                raise refuse(Refusal.IO, f"capsule store: cannot write {sha[:12]} ({exc.strerror})") from None
        return sha

    def intact(self, sha256: str) -> bool:
        """Whether the stored copy of ``sha256`` exists, is readable and still has that hash."""
        try:
            return hashlib.sha256(read_stored(self.dir / f"{sha256}.capsule")).hexdigest() == sha256
        except OSError:
            return False

    def get(self, sha256: str) -> bytes:
        """The stored bytes; their hash is checked against the name."""
        path = self.dir / f"{sha256}.capsule"
        try:
            raw = read_stored(path)  # a regular file of sane size: not a FIFO, not /dev/zero
        except OSError as exc:
            raise refuse(Refusal.STATE, f"capsule store: {sha256[:12]} unreadable ({exc.strerror})") from None
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise refuse(Refusal.DIGEST_MISMATCH, f"capsule store: {sha256[:12]} was modified on disk")
        return raw


@contextmanager
def state_lock(home: Home) -> Iterator[None]:
    """Exclusive lock for read-modify-write of ``state.json`` across processes.

    Raises:
        UpdateError: ``state`` -- the lock file cannot be opened or locked (replaced by a
            directory, a symlink, a FIFO; out of descriptors): nothing is read or changed.
    """
    with locked_file(home.lock, f"state lock {str(home.lock)!r}", lambda message: refuse(Refusal.STATE, message)):
        yield

