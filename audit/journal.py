"""The audit journal: append-only, hash-chained JSON lines with Ed25519-signed checkpoints.

One record per line, canonical JSON (sorted keys, compact, ASCII)::

    {"event":"PATCH_ENABLE","hash":"…","name":"demo","prev":"…","seq":7,"time":"2025-01-01T12:00:00.000000Z",…}

* ``seq`` counts 1, 2, 3, … with no gap;
* ``prev`` is the ``hash`` of the record before (64 zeros for the first);
* ``hash`` is SHA-256 over the canonical JSON of the record without ``hash`` (:func:`record_hash`).

So editing a record breaks its own hash, and deleting, inserting or reordering records breaks
``seq`` or the ``prev`` link. An attacker who can write the file can recompute every hash
after the record they changed — that is what the checkpoints are for: after every
``checkpoint_every`` records a ``CHECKPOINT`` record (itself chained) carries an Ed25519
signature over the seq and hash of the record before it (:func:`checkpoint_message`).

Where the checkpoints are is a pure function of ``seq``: exactly the seqs that are multiples
of the interval + 1 hold one (with the default 100: 101, 202, …), and each records the
interval it was written with in its ``every`` field (covered by the record's own signature).

**One journal, one interval.** The interval is the journal's, not each writer's: the
configured ``checkpoint_every`` (``audit.checkpoint_every``) applies only to a journal that
has no checkpoint yet. Once one exists, every writer keeps the ``every`` of the newest
checkpoint, whatever it is configured with — a command run without the writers'
configuration must not write a second interval into the journal, which would then verify
under none. A journal without a checkpoint whose length already passed a position due under
the configured interval was written with a larger one (or stripped of its checkpoints); a
writer refuses to append to it (:class:`PolicyError`, reason ``checkpoint-interval``) rather
than make it unverifiable.

:meth:`AuditLog.verify` checks positions both ways against one interval: the journal's (the
``every`` of its first checkpoint; the instance's ``checkpoint_every`` while there is none),
or the caller's when ``verify(checkpoint_every=…)`` asks for it explicitly. A due seq holding
another event is ``"missing checkpoint"``, a CHECKPOINT anywhere else is ``"unexpected
checkpoint"``, an ``every`` that differs is ``"checkpoint interval"``. The first checkpoint
must sit at the first position due under its own ``every``, so that field cannot be changed
to widen what is accepted; stripping every checkpoint and re-chaining falls back to the
configured interval and is ``"missing checkpoint"`` once the journal is longer than it. An
interval that differs from the configured one is a warning, not an error.

A checkpoint is only as strong as the secrecy of its key, and **by default the key lives next
to the log** (``audit.key``, 0600, beside ``audit.pub``). Whoever can write the home can
normally read that key as well, rewrite any record, re-chain and re-sign every checkpoint with
it: the result verifies, even against a pinned public key, because it is the same key. Only
two things kept *elsewhere*, out of the attacker's reach, protect against that:

* an **exported anchor**: ``last_seq``/``last_hash`` of a :class:`VerifyReport`, passed back as
  ``verify(anchor=(seq, hash))``. Rewriting any record up to the anchored seq, or cutting the
  log below it, then fails; records after the newest exported anchor remain rewritable by
  anyone holding the key;
* a **pinned public key** (``verify(public_key=…)``, exported earlier): it catches a log
  re-signed with any *other* key — an attacker who could not read ``audit.key`` and replaced
  it and ``audit.pub`` with their own. It cannot catch re-signing with the genuine key.

Moving the key out of the home (``signing_key=``) helps only against attackers who can write
the home but not read that file; the journal's writers must still be able to read it.

Everything the hot-patch updater does (PATCH_LOAD, PATCH_VERIFY, PATCH_KAT, PATCH_STAGE,
PATCH_ENABLE, PATCH_DRAINED, PATCH_ROLLBACK, PATCH_REJECT, …) and authentication failures
(CRYPTO_FAIL_AUTH, through :meth:`AuditLog.record_rate_limited`) go into the same journal.

Secrets are never recorded: field values that are bytes, bytearray, memoryview or
:class:`~xpscerpto.secret.SecretBytes` (also nested) are refused with a
:class:`~xpscerpto.errors.PolicyError` — callers log hex digests and key ids instead. A
secret pasted into a *string* cannot be recognised; callers keep whitelisting their fields.

Limits (what the chain can and cannot show):

* **Rewriting with the key**: see above — without an anchor, a log rewritten and re-signed
  with the key beside it is indistinguishable from the original.
* **Truncation**: removing the newest records — any number of them, checkpoints included —
  leaves a shorter chain that verifies (if the cut falls just before a due checkpoint,
  ``verify`` warns, as it does after a crash there, and ``strict=True`` refuses it). Only an
  exported anchor shows it. The same holds for deleting the whole log *and* its ``.pub`` file.
* **Replacing the key**: a verifier that trusts the ``.pub`` next to the log accepts a log
  that an attacker re-signed with a key of their own *and* wrote to ``.pub``; pin the public
  key you exported earlier.
* **Appending** well-formed records after the newest one needs no key until the next
  checkpoint is due (and none at all with the key): the chain proves the order and integrity
  of what is there, and a checkpoint proves that the key holder vouched for the history up to
  it — not who wrote each record. The log is created 0600 for that reason.
* Rate limiting and the lock are per host: ``fcntl.flock`` (not for NFS), and the
  rate-limit windows live in each process's memory.

Example:
    >>> import tempfile, pathlib
    >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log", checkpoint_every=2)
    >>> log.record("PATCH_LOAD", sha256="ab" * 32, operator="alice")["seq"]
    1
    >>> _ = log.record("PATCH_REJECT", sha256="ab" * 32, reason="bad-signature")
    >>> [e["event"] for e in log.tail(3)]      # a checkpoint followed the second record
    ['PATCH_LOAD', 'PATCH_REJECT', 'CHECKPOINT']
    >>> report = log.verify()
    >>> report.records, report.checkpoints, report.last_seq
    (3, 1, 3)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from xpscerpto._atomic import create_exclusive, fsync_dir
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import ErrorCode, InternalError, KeyError_, PolicyError, XpsError
from xpscerpto.secret import SecretBytes

__all__ = [
    "GENESIS",
    "STATEMENT_PREFIX",
    "AuditLog",
    "AuditPublicKeyMissing",
    "AuditTampered",
    "VerifyReport",
    "checkpoint_message",
    "read_public_key",
    "record_hash",
    "record_message",
]

#: ``prev`` of the first record.
GENESIS = "0" * 64
CHECKPOINT = "CHECKPOINT"
# A checkpoint's line holds this (canonical JSON has no spaces); lines without it are not parsed
# when looking for one.
_CHECKPOINT_NEEDLE = b'"event":"CHECKPOINT"'
REPAIRED = "AUDIT_REPAIRED"
#: Keys the journal sets itself; a caller passing one would forge the chain's own fields.
_RESERVED_FIELDS = frozenset({"seq", "time", "event", "prev", "hash", "rsig", "suppressed"})
#: Events only the journal writes (a caller-made CHECKPOINT would look like a signed one).
_RESERVED_EVENTS = frozenset({CHECKPOINT, REPAIRED})
_EVENT_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The last second datetime can print (9999-12-31T23:59:59Z): a later ``since`` has no cutoff to give.
_MAX_SINCE = 253402300799

_TXID = re.compile(r"[0-9a-f]{8,64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
#: One record (one line) at most; bounds memory for readers and keeps appends small.
MAX_RECORD_BYTES = 64 * 1024
_MAX_DEPTH = 16
# The interpreter refuses to print ints of more than 4300 digits (and may be set as low as 640):
# 2048 bits is about 617 digits.
_MAX_INT_BITS = 2048
# A field name as code writes one: short and without a run of digits, so a refusal never
# carries a token passed as a name (``**{"sk_live_4111…": …}``).
_FIELD_NAME = re.compile(r"(?![a-z0-9_]*[0-9]{4})[a-z][a-z0-9_]{0,31}")
#: Rate-limit windows kept per process; beyond this, new (event, bucket) pairs share one
#: overflow window so an attacker varying the bucket (e.g. a peer id) cannot exhaust memory.
_MAX_BUCKETS = 1024
_WINDOW_SECONDS = 60.0
_CHUNK = 64 * 1024
#: Lines record_once searches for its txid whatever their times (see _find_recent). A queued
#: record is delivered at the next keyring open or change; far fewer records come in between.
#: Every call reads them (about 0.5 MB of a typical journal), so the bound keeps that cost fixed.
_ONCE_NEWEST = 1024
_FORBIDDEN = (bytes, bytearray, memoryview, SecretBytes)
# O_NONBLOCK: opening a FIFO planted at one of the journal's paths returns at once instead of
# waiting for a writer that never comes; on the regular files we accept it changes nothing.
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
#: A ``.pub`` is 64 hex digits and a newline; anything far bigger is not one.
_MAX_PUB_BYTES = 4096


class AuditTampered(XpsError):
    """The journal does not verify. ``.seq`` is the first bad record's seq, ``.reason`` one of
    ``"modified"``, ``"deleted"``, ``"inserted"``, ``"reordered"``, ``"bad checkpoint signature"``,
    ``"missing checkpoint"``, ``"unexpected checkpoint"``, ``"checkpoint interval"``,
    ``"malformed line"``, ``"truncated tail"``; ``.line`` the 1-based line (None if unknown)."""

    code = ErrorCode.INTERNAL

    def __init__(self, path: Path, seq: int | None, reason: str, detail: str, line: int | None = None) -> None:
        where = f"record seq {seq}" if seq is not None else "record"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"audit journal {path}: {where}: {reason}: {detail}", reason=reason)
        self.path, self.seq, self.detail, self.line = path, seq, detail, line

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the richer __init__
        return (type(self), (self.path, self.seq, self.reason, self.detail, self.line))


class AuditPublicKeyMissing(KeyError_):
    """The journal's records are signed but its ``.pub`` file is missing: nothing could be checked.

    Not a finding about the records (no signature was checked, none failed): a first write or
    ``xps init`` killed before it published the key leaves this, and so does deleting the file.
    ``.path`` is the log, ``.pub_path`` the missing file, ``.seq``/``.line`` the first signed record.
    """

    def __init__(self, path: Path, pub_path: str, seq: int, line: int) -> None:
        super().__init__(
            f"audit journal {path}: record seq {seq} (line {line}) is signed but the journal's public key file "
            f"{pub_path} is missing, so no signature was checked (a first write or `xps init` killed before it "
            "published the key leaves this, as does deleting the file). Restore it: re-run `xps init` on the home "
            "(it writes the file from the journal's signing key), or verify with the public key exported earlier "
            "(--public-key, public_key=)", reason="public key missing")
        self.path, self.pub_path, self.seq, self.line = path, pub_path, seq, line

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the richer __init__
        return (type(self), (self.path, self.pub_path, self.seq, self.line))


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` checked. Export ``last_seq``/``last_hash`` to detect later truncation."""

    path: str
    records: int  # all records, checkpoints included
    checkpoints: int
    last_seq: int  # 0 for an empty journal
    last_hash: str  # GENESIS for an empty journal
    last_checkpoint_seq: int | None
    after_checkpoint: int  # records after the last checkpoint: not yet covered by a signature
    public_key: str | None  # hex of the key checkpoints were checked against
    checkpoint_every: int  # the interval checkpoint positions were checked against
    torn_tail: int = 0  # bytes of a torn final line (crash mid-append); 0 if none
    warnings: tuple[str, ...] = field(default_factory=tuple)
    signed_records: int = 0  # records carrying a valid per-record signature
    unsigned_prefix: int = 0  # records before the first signed one (written before records were signed)

    @property
    def anchor(self) -> str:
        """``SEQ:HASH`` of the newest record: keep it outside the home, pass it to ``--anchor``."""
        return f"{self.last_seq}:{self.last_hash}"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for ``xps audit verify --json``)."""
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(rec: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of ``rec`` without its ``hash`` key.

    The record's own signature (``rsig``) is inside what this covers, so the chain carries
    the signatures too: stripping one changes the hash every later record links to.

    Example:
        >>> record_hash({"seq": 1, "event": "X", "prev": GENESIS, "hash": "ignored"}) == record_hash(
        ...     {"prev": GENESIS, "event": "X", "seq": 1})
        True
    """
    return hashlib.sha256(_canonical({k: v for k, v in rec.items() if k != "hash"})).hexdigest()


def record_message(rec: Mapping[str, Any]) -> bytes:
    """The exact bytes a record's own signature (``rsig``) covers: its content, prev included.

    Example:
        >>> record_message({"seq": 1, "event": "X", "prev": GENESIS, "rsig": "s", "hash": "h"})[:24]
        b'XPSCERPTO-AUDIT-RECORD/1'
    """
    body = {k: v for k, v in rec.items() if k not in ("hash", "rsig")}
    return b"XPSCERPTO-AUDIT-RECORD/1\nseq=" + str(rec["seq"]).encode() + b"\n" + _canonical(body)


#: What every :meth:`AuditLog.sign_statement` signature covers first (domain separation).
STATEMENT_PREFIX = b"XPSCERPTO-NODE-STATEMENT/1\n"


def checkpoint_message(signed_seq: int, signed_hash: str) -> bytes:
    """The exact bytes a checkpoint's Ed25519 signature covers.

    Example:
        >>> checkpoint_message(100, "ab" * 32)[:33]
        b'XPSCERPTO-AUDIT-CHECKPOINT/1\\nseq='
    """
    return f"XPSCERPTO-AUDIT-CHECKPOINT/1\nseq={signed_seq}\nhash={signed_hash}\n".encode("ascii")


def read_public_key(path: str | Path) -> bytes:
    """Read a ``.pub`` file (64 hex digits) as 32 raw bytes; :class:`KeyError_` if it is not one
    (missing, unreadable, a directory or FIFO, or not 64 hex digits)."""
    try:
        text = read_stored(Path(path), _MAX_PUB_BYTES).decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise KeyError_(f"audit public key {path}: cannot read it ({why})") from exc
    if not _HEX64.fullmatch(text):
        raise KeyError_(f"audit public key {path}: expected 64 lowercase hex digits")
    return bytes.fromhex(text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that accepts only a regular file.

    A directory opens read-only and only fails at the first read (an untyped IsADirectoryError
    far from here); a FIFO would be written into. Both are refused here as an ``OSError`` whose
    ``strerror`` says so, for the caller's typed refusal; FileNotFoundError passes through.
    """
    fd = os.open(path, flags | _OPEN_FLAGS, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON-plain copy of ``value``; refuses secrets/raw bytes and anything not JSON."""
    if isinstance(value, _FORBIDDEN):
        # Never echo the value: it may be key material.
        raise PolicyError(f"audit field {where}: {type(value).__name__} refused — secrets and raw bytes are "
                          "never recorded; record a hex digest or a key id instead", reason="secret-field")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            # Beyond the interpreter's int-to-text limit json.dumps raises an untyped ValueError;
            # no count or size a caller audits comes near this anyway.
            raise PolicyError(f"audit field {where}: int wider than {_MAX_INT_BITS} bits refused; record a "
                              "hex digest or a str instead", reason="not-json")
        return int(value)  # IntEnum and friends become plain ints, as they would read back
    if isinstance(value, float):
        # JSON has no NaN/Infinity; a measurement that came out non-finite is kept as text
        # rather than failing the operation being audited.
        return float(value) if math.isfinite(value) else repr(float(value))
    if isinstance(value, str):
        return str.__str__(value)  # a StrEnum becomes its plain value
    if depth >= _MAX_DEPTH:
        raise PolicyError(f"audit field {where}: nested deeper than {_MAX_DEPTH} levels", reason="not-json")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise PolicyError(f"audit field {where}: mapping keys must be str, got {type(k).__name__}",
                                  reason="not-json")
            # A nested key is data (a token, a password as a dict key): named by its position.
            out[str.__str__(k)] = _plain(v, f"{where}{{key {i}}}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise PolicyError(f"audit field {where}: {type(value).__name__} is not JSON-serialisable "
                      "(pass str, int, float, bool, None, lists or dicts of them)", reason="not-json")


def _check_event(event: Any) -> str:
    if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
        raise PolicyError("audit event: expected an UPPER_SNAKE_CASE name of at most 64 characters",
                          reason="bad-event")
    if event in _RESERVED_EVENTS:
        raise PolicyError(f"audit event: {event} is written by the journal itself", reason="bad-event")
    return str.__str__(event)


def _field_name(key: str, index: int) -> str:
    """How a refusal names a top-level field: its name when that looks like one (what the
    caller's code wrote), else its position — ``**{secret: …}`` must not echo the secret."""
    return key if _FIELD_NAME.fullmatch(key) else f"#{index}"


def _check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    clash = sorted(_RESERVED_FIELDS.intersection(fields))
    if clash:
        raise PolicyError(f"audit fields: {', '.join(clash)} are set by the journal itself", reason="reserved-field")
    clean = {k: _plain(v, _field_name(k, i)) for i, (k, v) in enumerate(fields.items())}
    # Checked before the log is touched; the margin covers seq, time, event, prev and hash.
    if len(_canonical(clean)) > MAX_RECORD_BYTES - 512:
        raise PolicyError(f"audit fields: larger than {MAX_RECORD_BYTES - 512} bytes once encoded", reason="too-large")
    return clean


def _last_newline(fd: int, end: int) -> int:
    """Offset of the last ``\\n`` before ``end``, or -1; reads backwards so big logs stay cheap."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            return start + i
        pos = start
    return -1


def _find_recent(fd: int, size: int, needle: bytes, cutoff: str) -> dict[str, Any] | None:
    """The newest record whose line contains ``needle``: searched in the last ``_ONCE_NEWEST``
    lines whatever their times, and on back to the first record older than time ``cutoff``.

    Times alone cannot bound the search: after the wall clock steps back, records appended
    later carry earlier times than the one looked for.
    """
    pos, carry, seen = _last_newline(fd, size) + 1, b"", 0  # carry: a line's start that lies before ``pos``
    while pos > 0:
        start = max(0, pos - _CHUNK)
        data = os.pread(fd, pos - start, start) + carry
        lines = data.split(b"\n")
        carry, lines = (lines[0], lines[1:]) if start > 0 else (b"", lines)
        if seen + len(lines) <= _ONCE_NEWEST and needle not in data:
            seen += len(lines)  # nothing to parse: no candidate, and no time to look at yet
            pos = start
            continue
        for line in reversed(lines):
            seen += 1
            if needle in line:
                rec, _ = _parse_record(line)
                if rec is not None:
                    return rec
            elif seen > _ONCE_NEWEST and line:
                rec, _ = _parse_record(line)
                if rec is not None and rec["time"] < cutoff:
                    return None
        pos = start
    return None


def _newest_checkpoint(fd: int, end: int, begin: int = 0) -> dict[str, Any] | None:
    """The newest CHECKPOINT record in bytes ``begin`` to ``end`` (``begin`` a line start),
    searching backwards; None if none.

    In a journal that verifies, at most ``every + 1`` records lie after it, so an append reads
    little. A line too long to be a record is skipped without being held whole.
    """
    pos, carry = end, b""
    while pos > begin:
        start = max(begin, pos - _CHUNK)
        lines = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        carry, lines = (lines[0], lines[1:]) if start > begin else (b"", lines)
        if len(carry) > MAX_RECORD_BYTES:
            carry = b"\x00"  # stands for the rest of an overlong line: never parses as a record
        for line in reversed(lines):
            if _CHECKPOINT_NEEDLE in line:
                rec, _ = _parse_record(line)
                if rec is not None and rec["event"] == CHECKPOINT:
                    return rec
        pos = start
    return None


def _first_checkpoint_every(lines: Iterable[bytes]) -> int | None:
    """The ``every`` of the first CHECKPOINT record among ``lines``; None if there is none or it
    records no valid interval."""
    for raw in lines:
        if _CHECKPOINT_NEEDLE in raw:
            rec, _ = _parse_record(raw)
            if rec is not None and rec["event"] == CHECKPOINT:
                every = rec.get("every")
                return every if _is_count(every) else None
    return None


def records_of(lines: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines`` (what :meth:`AuditLog.tail` shows; unparsable lines skipped)."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError, MemoryError):
            # Nesting deeper than the interpreter's stack or a line too big to hold is as
            # unreadable as bad JSON; whoever can write one line must not crash every reader.
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _parse_record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse one line (without its newline) into a record, or (None, what is wrong)."""
    if len(raw) > MAX_RECORD_BYTES:
        return None, f"longer than {MAX_RECORD_BYTES} bytes"
    try:
        rec = json.loads(raw)
    except ValueError:
        return None, "not JSON"
    except (RecursionError, MemoryError):
        # One line of ``[[[[…`` (a few dozen KB) exhausts the parser's stack: a malformed line
        # like any other, never an untyped crash of verify, record or tail.
        return None, "not JSON (nested too deeply)"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    seq, h, prev = rec.get("seq"), rec.get("hash"), rec.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None, "no valid seq"
    if not isinstance(h, str) or not _HEX64.fullmatch(h) or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return None, "no valid hash/prev"
    if not isinstance(rec.get("event"), str) or not isinstance(rec.get("time"), str):
        return None, "no event/time"
    try:
        canonical = _canonical(rec)
    except (ValueError, RecursionError):
        return None, "not canonical JSON"
    # Byte-exact canonical form: duplicate keys, re-spacing or re-escaping are edits too.
    if canonical != raw:
        return None, "not in canonical form (edited by hand?)"
    return rec, ""


@dataclass
class _Window:
    times: deque[float] = field(default_factory=deque)
    suppressed: int = 0


@dataclass
class _Head:
    seq: int
    hash: str


class AuditLog:
    """The journal at ``path``: append with :meth:`record`, read with :meth:`tail`, check with :meth:`verify`.

    Safe across threads and processes: every append takes an exclusive ``flock`` on the log,
    reads the last record, appends with ``O_APPEND`` in one ``write`` and fsyncs. Opening an
    AuditLog creates nothing; the first :meth:`record` creates the log (0600) and then the
    signing key.

    ``signing_key`` is the path of the Ed25519 key file (a 32-byte seed); by default
    ``path.with_suffix(".key")`` next to the log. If missing it is created 0600 — exclusively
    (a temp file opened with O_EXCL, then ``link(2)``, which fails if the name exists), so two
    processes racing to create it end up with one key, never a half-written one. A key file
    readable by group or others, or not exactly 32 bytes, is refused (:class:`KeyError_`).
    The public key is written to ``path.with_suffix(".pub")`` (hex) so verifiers can pin it.

    ``clock`` (seconds, monotonic) drives the rate-limit windows only; tests inject one.

    Example:
        >>> import tempfile, pathlib
        >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
        >>> for _ in range(1000):
        ...     _ = log.record_rate_limited("CRYPTO_FAIL_AUTH", "aead.aes-256-gcm", 10, operation="aead")
        >>> len(log.tail(100))
        10
    """

    def __init__(self, path: str | Path, *, signing_key: str | Path | None = None, checkpoint_every: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.key_path = Path(signing_key) if signing_key is not None else self.path.with_suffix(".key")
        self.pub_path = self.path.with_suffix(".pub")
        if len({self.path, self.key_path, self.pub_path}) != 3:
            raise PolicyError(f"audit log {self.path}: the log, key and .pub paths must differ", reason="bad-path")
        if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
            raise PolicyError("checkpoint_every: expected an int >= 1", reason="bad-argument")
        self.checkpoint_every = checkpoint_every
        self._clock = clock
        self._lock = threading.Lock()  # threads of this instance; flock covers other fds and processes
        self._sk: Ed25519PrivateKey | None = None
        self._pub_hex: str | None = None
        self._published = False
        #: (journal identity, seq of a checkpoint, its interval): see _known_interval.
        self._interval_seen: tuple[object, int, int] | None = None
        #: (journal identity, offset): the journal holds no checkpoint before that offset.
        self._no_checkpoint_below: tuple[object, int] | None = None
        self._rl_lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._listeners: tuple[Callable[[str, dict[str, Any]], None], ...] = ()

    def add_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(event, record)`` after each record this instance writes (metrics).

        Runs on the writer's thread after the append; an exception it raises is swallowed.
        """
        self._listeners = (*self._listeners, listener)

    def _written(self, record: dict[str, Any]) -> None:
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener(record["event"], record)

    # ------------------------------------------------------------------ writing

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the record as written (with ``seq``, ``prev``, ``hash``).

        ``event`` is UPPER_SNAKE_CASE; ``fields`` must be JSON values (str, int, float, bool,
        None, lists, dicts). Bytes-like values and SecretBytes are refused. If the log ends in
        a torn line (a crash mid-append) it is repaired first and an ``AUDIT_REPAIRED``
        record says so. Raises :class:`AuditTampered` if the last line is not a record (the
        chain cannot be continued — run :meth:`verify`), :class:`InternalError` on I/O errors
        (or a log that is not a regular file), :class:`PolicyError` (``checkpoint-interval``) if
        the journal has no checkpoint yet but already passed one due under ``checkpoint_every``
        (see the module docs: a journal keeps one interval).

        Example:
            >>> import tempfile, pathlib
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
            >>> r = log.record("PATCH_ROLLBACK", name="demo", reason="operator request")
            >>> r["seq"], r["prev"] == GENESIS, r["hash"] == record_hash(r)
            (1, True, True)
        """
        return self._append(_check_event(event), _check_fields(fields))

    def record_rate_limited(self, event: str, bucket: str, per_minute: int, **fields: Any) -> dict[str, Any] | None:
        """Record at most ``per_minute`` events per (event, bucket) in any rolling 60 s; None if suppressed.

        Suppressed events are counted, and the next one that passes carries ``"suppressed": n``.
        Meant for CRYPTO_FAIL_AUTH: a flood of forged ciphertexts must not flood the journal
        or push the real events out of ``tail``. The window is in this process's memory.
        Bad input is refused even when the event would have been suppressed.

        Example:
            >>> import tempfile, pathlib
            >>> t = [0.0]
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "a.log", clock=lambda: t[0])
            >>> [log.record_rate_limited("CRYPTO_FAIL_AUTH", "k1", 1) is None for _ in range(3)]
            [False, True, True]
            >>> t[0] = 61.0
            >>> log.record_rate_limited("CRYPTO_FAIL_AUTH", "k1", 1)["suppressed"]
            2
        """
        event = _check_event(event)
        clean = _check_fields(fields)
        if not isinstance(per_minute, int) or isinstance(per_minute, bool) or per_minute < 1:
            raise PolicyError("per_minute: expected an int >= 1", reason="bad-argument")
        if not isinstance(bucket, str):
            raise PolicyError("bucket: expected a str", reason="bad-argument")
        with self._rl_lock:
            now = self._clock()
            win = self._window((event, bucket), now)
            while win.times and now - win.times[0] >= _WINDOW_SECONDS:
                win.times.popleft()
            if len(win.times) >= per_minute:
                win.suppressed += 1
                return None
            win.times.append(now)
            suppressed, win.suppressed = win.suppressed, 0
        if suppressed:
            clean["suppressed"] = suppressed
        try:
            return self._append(event, clean)
        except BaseException:
            with self._rl_lock:  # not written: keep the count for the next one
                self._window((event, bucket), now).suppressed += suppressed
            raise

    def _window(self, key: tuple[str, str], now: float) -> _Window:
        win = self._windows.get(key)
        if win is not None:
            return win
        if len(self._windows) >= _MAX_BUCKETS:
            # Drop idle windows (nothing in the last minute, nothing pending); if all are busy,
            # the newcomer shares one overflow window per event.
            for k in [k for k, w in self._windows.items()
                      if not w.suppressed and (not w.times or now - w.times[-1] >= _WINDOW_SECONDS)]:
                del self._windows[k]
            if len(self._windows) >= _MAX_BUCKETS:
                key = (key[0], "\x00overflow")
                win = self._windows.get(key)
                if win is not None:
                    return win
        win = self._windows[key] = _Window()
        return win

    def record_once(self, event: str, txid: str, *, since: float, **fields: Any) -> dict[str, Any]:
        """Append ``event`` with field ``txid`` unless a record with that ``txid`` is already there.

        For records committed elsewhere first (the keyring's outbox): whoever delivers them —
        the process that made the change, or a later one reconciling after a crash — delivers
        each exactly once. The check and the append happen under the journal's lock. The
        newest 1,024 records are searched whatever their times (a wall clock stepped back makes
        later records look older); beyond them the search stops at the first record older than
        ``since`` (seconds since the epoch, the change's time) minus ten minutes.

        Example:
            >>> import tempfile, pathlib, time
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
            >>> a = log.record_once("KEY_CREATE", "0123abcd", since=time.time(), name="k")
            >>> b = log.record_once("KEY_CREATE", "0123abcd", since=time.time(), name="k")
            >>> a["seq"] == b["seq"] == 1
            True
        """
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            raise PolicyError("txid: expected 8 to 64 lowercase hex digits", reason="bad-argument")
        if not isinstance(since, int | float) or isinstance(since, bool) or not -_MAX_SINCE <= since <= _MAX_SINCE:
            # NaN fails the comparison too; a huge int is compared, never converted (OverflowError).
            raise PolicyError("since: expected seconds since the epoch (before year 10000)", reason="bad-argument")
        clean = _check_fields({**fields, "txid": txid})
        cutoff = datetime.fromtimestamp(max(0.0, since - 600.0), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self._append(_check_event(event), clean, once=(f'"txid":"{txid}"'.encode(), cutoff))

    def _append(self, event: str, fields: dict[str, Any],
                once: tuple[bytes, str] | None = None) -> dict[str, Any]:
        with self._lock:
            fd = self._open_for_append()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
                size = os.fstat(fd).st_size
                if size == 0:
                    self._refuse_restart("empty")
                elif _last_newline(fd, size) < 0:  # not one complete record: as good as empty
                    self._refuse_restart("torn to less than one record")
                if once is not None:
                    found = _find_recent(fd, size, *once)
                    if found is not None:
                        return found
                if size > 0:
                    # Existing journal: a key problem must surface before anything is written. A
                    # new key is made only while no record was completed (a torn first write).
                    self._signing_key(create=_last_newline(fd, size) < 0)
                # Before _head: a refusal must not have cut a torn tail off unrecorded.
                every = self._journal_interval(fd, self._last_complete(fd, _last_newline(fd, size)).seq)
                prefix, head, repair = self._head(fd, size)
                written, main = self._build(head, repair, event, fields, every=every)
                data = prefix + b"".join(_canonical(r) + b"\n" for r in written)
                end = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as exc:
                    # Leave no torn line behind if we can (ENOSPC, EIO); a crash is repaired later.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, end)
                    raise InternalError(f"audit journal {self.path}: write failed ({exc.strerror})") from exc
                if size == 0:
                    fsync_dir(self.path.parent)
            finally:
                os.close(fd)
            if not self._published:
                # First record of a new journal: the .pub comes after it, so a .pub next to
                # an empty or missing log means the log was deleted (see verify).
                self._signing_key()
            self._written(main)
            return main

    def _open_for_append(self) -> int:
        flags = os.O_RDWR | os.O_APPEND
        try:
            try:
                return _open_regular(self.path, flags)
            except FileNotFoundError:
                self._refuse_restart("missing")  # before O_CREAT: a refusal leaves no empty log behind
                return _open_regular(self.path, flags | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InternalError(f"audit journal {self.path}: cannot open ({exc.strerror})") from exc

    def _refuse_restart(self, state: str) -> None:
        """Refuse to start a new chain where one existed: it would hide the deletion for good.

        The ``.pub`` is written after a journal's first record, so a ``.pub`` beside an empty or
        missing log means records were removed (as :meth:`verify` reports); so does an empty log
        under a writer that has already appended to it.
        """
        if self.pub_path.exists():
            why = f"{self.pub_path.name} exists (written after the first record)"
        elif self._published:
            why = "this writer has appended to it"
        else:
            return
        raise AuditTampered(self.path, 1, "deleted", f"the journal is {state} but {why}: "
                                "every record was removed; nothing is "
                                "written over it (to start a new journal on purpose, move the log, "
                                f"{self.pub_path.name} and {self.key_path.name} aside first)")

    def _head(self, fd: int, size: int) -> tuple[bytes, _Head, dict[str, Any] | None]:
        """The last record's (seq, hash), repairing a torn final line first.

        Returns (bytes to write before the new records, head, AUDIT_REPAIRED fields or None).
        """
        if size == 0:
            return b"", _Head(0, GENESIS), None
        nl = _last_newline(fd, size)
        head = self._last_complete(fd, nl)
        if nl == size - 1:
            return b"", head, None
        # A torn final line: the crash happened mid-write. If the bytes are the complete next
        # record minus its newline, keep it; otherwise cut them off. Either way the repair is
        # itself recorded, chained after whatever survives.
        torn_len = size - (nl + 1)
        digest = hashlib.sha256()
        off = nl + 1
        while off < size:
            chunk = os.pread(fd, min(_CHUNK, size - off), off)
            digest.update(chunk)
            off += len(chunk)
        if torn_len <= MAX_RECORD_BYTES:
            rec, _ = _parse_record(os.pread(fd, torn_len, nl + 1))
            if (rec is not None and rec["hash"] == record_hash(rec) and rec["seq"] == head.seq + 1
                    and rec["prev"] == head.hash):
                return b"\n", _Head(rec["seq"], rec["hash"]), {
                    "action": "completed", "repaired_seq": rec["seq"], "bytes": torn_len}
        os.ftruncate(fd, nl + 1)
        return b"", head, {"action": "truncated", "bytes": torn_len, "sha256": digest.hexdigest()}

    def _last_complete(self, fd: int, nl: int) -> _Head:
        if nl < 0:
            return _Head(0, GENESIS)
        begin = _last_newline(fd, nl) + 1
        if nl - begin > MAX_RECORD_BYTES:
            rec, why = None, f"longer than {MAX_RECORD_BYTES} bytes"
        else:
            rec, why = _parse_record(os.pread(fd, nl - begin, begin))
        if rec is None:
            raise AuditTampered(self.path, None, "malformed line",
                                f"the last line is not an audit record ({why}); the chain cannot be "
                                "continued — run verify")
        return _Head(rec["seq"], rec["hash"])

    def _journal_interval(self, fd: int, head_seq: int) -> int:
        """The checkpoint interval the next records keep (see the module docs).

        A journal that has a checkpoint keeps the interval it records, whatever this writer is
        configured with: positions are a pure function of seq, so a second interval in the same
        journal would leave it verifying under none. Only a journal without one yet takes the
        configured interval — unless a position due under it has already passed without a
        checkpoint: the journal was written with a larger interval (or its checkpoints were
        stripped), and continuing with ours would make it unverifiable, so that is refused.

        Raises:
            PolicyError: no checkpoint yet, and ``checkpoint_every`` does not fit the journal.
        """
        if head_seq == 0:
            return self.checkpoint_every
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        known = self._known_interval(ident, head_seq)
        if known is not None:
            return known
        # The complete lines only: a torn tail is cut and rewritten, never completed.
        end = _last_newline(fd, st.st_size) + 1
        # No checkpoint up to an offset seen before: only the lines added since are read (a
        # journal with a large interval has none for long, and re-reading it all at every
        # append made filling it quadratic).
        below = self._no_checkpoint_below
        begin = below[1] if below is not None and below[0] == ident and below[1] <= end else 0
        newest = _newest_checkpoint(fd, end, begin)
        if newest is None:
            self._no_checkpoint_below = (ident, end)
        return self._remember_interval(ident, newest, self._interval_after(newest, head_seq))

    def _known_interval(self, ident: object, head_seq: int) -> int | None:
        """The interval found before for this journal, while its head is not behind that checkpoint.

        Once a journal has a checkpoint its interval never changes, and looking it up walks back
        over up to an interval of records: done at every append that made filling a journal
        quadratic in its interval (found by a review).
        """
        known = self._interval_seen
        if known is not None and known[0] == ident and known[1] <= head_seq:
            return known[2]
        return None

    def _remember_interval(self, ident: object, newest: dict[str, Any] | None, every: int) -> int:
        if newest is not None and type(newest.get("seq")) is int and _is_count(newest.get("every")):
            self._interval_seen = (ident, newest["seq"], every)
        return every

    def _interval_after(self, newest: dict[str, Any] | None, head_seq: int) -> int:
        """:meth:`_journal_interval`, given the journal's newest checkpoint (None: it has none)."""
        if newest is not None:
            every = newest.get("every")
            # One that records no valid interval is damage for verify to report, not a reason
            # to stop writing.
            return every if _is_count(every) else self.checkpoint_every
        if head_seq > self.checkpoint_every:
            raise PolicyError(
                f"checkpoint_every: {self.checkpoint_every} does not fit the audit journal {self.path}: its "
                f"{head_seq} records hold no checkpoint, although one is due at seq {self.checkpoint_every + 1} "
                f"with this interval, so its writers use an interval of at least {head_seq} (the default is 100); "
                "configure theirs (or verify it: checkpoints may have been stripped)", reason="checkpoint-interval")
        return self.checkpoint_every

    def _build(self, head: _Head, repair: dict[str, Any] | None, event: str,
               fields: dict[str, Any], *, every: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The records to append after ``head``, with checkpoints every ``every`` records (the
        journal's interval; ``None``: this instance's, for a backend that does not look it up)."""
        every = self.checkpoint_every if every is None else every
        now = _now()
        out: list[dict[str, Any]] = []
        seq, prev = head.seq, head.hash

        sk = self._signing_key(publish=head.seq > 0)

        def chain(ev: str, body: dict[str, Any]) -> dict[str, Any]:
            nonlocal seq, prev
            seq += 1
            rec = {"seq": seq, "time": now, "event": ev, **body, "prev": prev}
            # Every record is signed: appending a well-chained forgery, or editing and
            # re-chaining the records after the last checkpoint, now needs the key.
            rec["rsig"] = sk.sign(record_message(rec)).hex()
            rec["hash"] = prev = record_hash(rec)
            out.append(rec)
            return rec

        def checkpoint_if_due() -> None:
            # Positions are a pure function of seq and the journal's interval (see
            # _checkpoint_due, _journal_interval), so processes appending to the same log agree
            # on them without any other shared state, and verify() can insist on them.
            if _checkpoint_due(seq + 1, every):
                chain(CHECKPOINT, {"signed_seq": seq, "signed_hash": prev, "key": self._pub_hex,
                                   "every": every,
                                   "sig": sk.sign(checkpoint_message(seq, prev)).hex()})

        # One owed by the journal as it stands: a crash that kept the record but not the
        # checkpoint written with it (cut at the newline between them, or in the middle of the
        # checkpoint line, which the repair truncates). Written first, so no other record ever
        # takes a due position.
        checkpoint_if_due()
        if repair is not None:
            chain(REPAIRED, repair)
            checkpoint_if_due()
        main = chain(event, fields)
        checkpoint_if_due()
        return out, main

    # ------------------------------------------------------------------ keys

    def _signing_key(self, *, publish: bool = True, create: bool = True) -> Ed25519PrivateKey:
        """The signing key, created on first use; ``publish`` also writes/checks the ``.pub`` file.

        A new journal signs its first record before the ``.pub`` exists: the ``.pub`` is written
        after that record, so a ``.pub`` beside an empty or missing log still means deletion.
        """
        if self._sk is None:
            seed = _load_or_create_seed(self.key_path, create=create)
            try:
                sk = Ed25519PrivateKey.from_private_bytes(seed)
            finally:
                seed[:] = bytes(len(seed))  # our copy; the key object keeps its own
            self._sk, self._pub_hex = sk, sk.public_key().public_bytes_raw().hex()
            self._published = False
        if publish and not self._published:
            assert self._pub_hex is not None
            _ensure_pub(self.pub_path, self._pub_hex)
            self._published = True
        return self._sk

    def sign_statement(self, statement: bytes) -> tuple[bytes, bytes]:
        """Sign a statement this node makes to others with the journal's key.

        The signed bytes are ``STATEMENT_PREFIX + statement``; no record or checkpoint message
        starts that way, so a statement is never mistaken for either. Returns (public key,
        signature), raw bytes.

        Raises:
            PolicyError: ``statement`` is not bytes.
            KeyError_: the signing key is unreadable.
        """
        if type(statement) is not bytes:
            raise PolicyError(f"statement: expected bytes, got {type(statement).__name__}")
        with self._lock:  # never creates a key: a missing one is the journal's damage to report
            sk = self._signing_key(publish=False, create=False)
        return sk.public_key().public_bytes_raw(), sk.sign(STATEMENT_PREFIX + statement)

    def public_key(self) -> bytes:
        """The journal's Ed25519 public key, raw.

        Raises:
            KeyError_: the journal has no signing key (yet) or it is unreadable.
        """
        with self._lock:
            return self._signing_key(publish=False, create=False).public_key().public_bytes_raw()

    def check_writable(self) -> None:
        """Raise now what the next :meth:`record` would raise about the journal itself.

        A service calls this before it starts, so a journal it could not continue (a last line
        that is not a record, a missing or foreign signing key) stops it with one typed line
        instead of failing later on a background thread. Writes nothing; a torn last line is
        left for the next record to repair (and audit).

        Raises:
            AuditTampered: the last complete line is not a record, or the journal lost every
                record (missing, empty, or torn to less than one, beside its ``.pub``).
            KeyError_: the signing key is missing, unreadable or does not match ``.pub``.
            InternalError: the journal cannot be opened, or is not a regular file.
            PolicyError: ``checkpoint_every`` does not fit a journal without checkpoints (as
                :meth:`record` would refuse).
        """
        with self._lock:
            try:
                fd = _open_regular(self.path, os.O_RDONLY)
            except FileNotFoundError:
                # A new journal (the first record creates it and its key) — unless its .pub says
                # it held records: then record() refuses, and so must this.
                self._refuse_restart("missing")
                return
            except OSError as exc:
                raise InternalError(f"audit journal {self.path}: cannot open ({exc.strerror})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                size = os.fstat(fd).st_size
                if size == 0:
                    self._refuse_restart("empty")
                else:
                    nl = _last_newline(fd, size)
                    if nl >= 0:  # a complete record exists: its key must too
                        self._signing_key(create=False)
                    else:
                        self._refuse_restart("torn to less than one record")
                    self._journal_interval(fd, self._last_complete(fd, nl).seq)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ reading

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The newest ``n`` records, oldest first (checkpoints included; a torn last line is skipped).

        Example:
            >>> import tempfile, pathlib
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
            >>> for i in range(5):
            ...     _ = log.record("PATCH_LOAD", i=i)
            >>> [e["i"] for e in log.tail(2)]
            [3, 4]
        """
        if type(n) is not int:
            raise PolicyError(f"n: expected an int, got {type(n).__name__}")
        if n <= 0:
            return []
        try:
            fd = _open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InternalError(f"audit journal {self.path}: cannot open ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a writer's line is never seen half-written
            size = os.fstat(fd).st_size
            end = _last_newline(fd, size) + 1  # drop a torn last line
            pos, buf = end, b""
            while pos > 0 and buf.count(b"\n") <= n:
                start = max(0, pos - max(_CHUNK, len(buf)))
                buf = os.pread(fd, pos - start, start) + buf
                pos = start
        finally:
            os.close(fd)
        lines = buf.split(b"\n")[:-1]
        if pos > 0:
            lines = lines[1:]  # the first piece may be a partial line
        return records_of(lines[-n:])

    def mentions(self, event: str) -> bool:
        """Whether any record of the journal is of ``event`` (a scan; for rare questions like init's).

        Example:
            >>> import tempfile, pathlib
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
            >>> _ = log.record("HOME_INIT")
            >>> log.mentions("HOME_INIT"), log.mentions("KEY_DESTROY")
            (True, False)
        """
        needle = _event_needle(event)
        try:
            fd = _open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InternalError(f"audit journal {self.path}: cannot open ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            pos, carry = 0, b""
            while chunk := os.pread(fd, _CHUNK, pos):
                if needle in carry + chunk:
                    return True
                carry = chunk[-len(needle):]  # a needle split across two chunks
                pos += len(chunk)
            return False
        finally:
            os.close(fd)

    def verify(self, *, public_key: bytes | str | None = None, anchor: tuple[int, str] | None = None,
               strict: bool = False, checkpoint_every: int | None = None) -> VerifyReport:
        """Check the whole journal; raise :class:`AuditTampered` on the first problem.

        Recomputes every hash and ``prev`` link, checks ``seq`` runs 1..N without gap and
        verifies every checkpoint: it must sign (seq, hash) of the record before it, with
        ``public_key`` if given (pinned: 32 raw bytes or 64 hex digits), else with the key in
        the ``.pub`` file next to the log — a checkpoint by any other key fails. The error's
        ``reason`` names what is wrong: ``modified`` (a record's hash does not match its
        content, or a record was altered and re-hashed so the next ``prev`` breaks),
        ``deleted`` (seq gap), ``inserted`` (an extra record: a duplicate seq, or a line whose
        removal repairs the chain), ``reordered`` (a missing seq appears later),
        ``bad checkpoint signature``, ``malformed line``, and for checkpoint positions:

        * ``missing checkpoint`` — a seq where a CHECKPOINT is due (a multiple of
          ``checkpoint_every + 1``) holds another event: checkpoints were stripped and the
          chain re-hashed, or the journal was written with a larger interval;
        * ``unexpected checkpoint`` — a correctly signed CHECKPOINT where none is due;
        * ``checkpoint interval`` — a CHECKPOINT's ``every`` field is not the interval checked
          against (the journal's checkpoints disagree, or the caller asked for another one).

        Without ``checkpoint_every`` the interval is the journal's own: the ``every`` of its
        first checkpoint, which must sit at the first position due under it (so the field
        cannot widen what is accepted), or this instance's ``checkpoint_every`` while the
        journal has no checkpoint; one that differs from the instance's is a warning. With
        ``checkpoint_every`` the journal must have been written with exactly that interval.

        A **torn final line** (crash mid-append: bytes after the last newline) is *not* an
        error: a crash legitimately leaves one, the chain before it is intact, and the next
        :meth:`record` repairs it and writes an AUDIT_REPAIRED record into the chain. It is
        reported in ``torn_tail``/``warnings``; ``strict=True`` makes it an error
        (reason ``"truncated tail"``). Likewise a journal that **ends just before a due
        checkpoint** (the crash cut the append between the record and its checkpoint — or
        someone cut the log there) only warns; the next :meth:`record` writes the checkpoint
        first. ``strict=True`` makes it ``"missing checkpoint"``.

        ``anchor=(seq, hash)`` is an externally kept earlier state (e.g. an exported
        ``last_seq``/``last_hash``): the journal must still contain that record unchanged.
        Without it, removal of the newest records is undetectable (see the module docs).
        Seq 0 is the state before the first record; its only hash is :data:`GENESIS`.
        A missing or empty log whose ``.pub`` exists counts as deleted (the key is written
        only after the first record). Signed records with no ``.pub`` and no ``public_key``
        raise :class:`AuditPublicKeyMissing` (``XPS_ERR_KEY``): no signature could be checked.

        Example:
            >>> import tempfile, pathlib
            >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
            >>> r = log.record("PATCH_LOAD", sha256="00" * 32)
            >>> log.verify(anchor=(1, r["hash"])).last_seq
            1
        """
        if checkpoint_every is not None and not _is_count(checkpoint_every):
            raise PolicyError("checkpoint_every: expected an int >= 1", reason="bad-argument")
        if anchor is not None and not (
                isinstance(anchor, tuple) and len(anchor) == 2 and isinstance(anchor[0], int)
                and not isinstance(anchor[0], bool) and anchor[0] >= 0 and isinstance(anchor[1], str)
                and _HEX64.fullmatch(anchor[1])):
            raise PolicyError("anchor: expected (seq >= 0, 64 lowercase hex digits)", reason="bad-argument")
        if anchor is not None and anchor[0] == 0 and anchor[1] != GENESIS:
            # Seq 0 is "before the first record": its only hash is the genesis value, so any
            # other is not an anchor this journal (or any) ever exported.
            raise PolicyError("anchor: seq 0 (an empty journal) has the hash 000…0; any other is no anchor",
                              reason="bad-argument")
        pinned: str | None = None
        if public_key is not None:
            pinned = _coerce_public_key(public_key)
        data, exists = self._read_all()

        warnings: list[str] = []
        pub_hex = pinned
        pub_file: str | None = None
        if self.pub_path.exists():
            pub_file = read_public_key(self.pub_path).hex()
        if pinned is None:
            pub_hex = pub_file
        elif pub_file is not None and pub_file != pinned:
            warnings.append(f"{self.pub_path} does not hold the pinned public key")

        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline (or is empty)
        every = checkpoint_every
        if every is None:
            # The journal's own interval, fixed by its first checkpoint (whose position the walk
            # then checks against it); the configured one only while it has none.
            every = _first_checkpoint_every(lines) or self.checkpoint_every
            if every != self.checkpoint_every:
                warnings.append(f"checkpoint interval: the journal is checkpointed every {every} records, not every "
                                f"{self.checkpoint_every} as configured here; writers keep the journal's interval")
        if not lines and pub_file is not None:
            # Torn to less than its first line counts too: the .pub follows a complete first
            # record, so no crash leaves it beside a journal without one (found by a review: a
            # journal cut to one byte verified as "OK: 0 records" and was then restarted).
            state = "torn to less than one record" if torn else "empty" if exists else "missing"
            raise AuditTampered(self.path, 1, "deleted", f"the journal is {state} but {self.pub_path.name} exists "
                                "(written after the first record): every record was removed")
        walk = _Walk(self.path, lines, pub_hex, "pinned" if pinned else str(self.pub_path), every)
        walk.run()

        if strict and walk.unsigned:
            raise AuditTampered(self.path, 1, "unsigned record",
                                f"{walk.unsigned} record(s) at the start carry no signature (written before records "
                                "were signed, or stripped of them); strict verification requires every record signed",
                                line=1)
        if walk.unsigned:
            warnings.append(f"unsigned prefix: the first {walk.unsigned} record(s) predate per-record signatures")
        if torn:
            detail = (f"{len(torn)} bytes after the last newline (line {len(lines) + 1}): a torn final "
                      "record, as a crash mid-append leaves; the next record() repairs it")
            if strict:
                raise AuditTampered(self.path, walk.last_seq + 1, "truncated tail", detail, line=len(lines) + 1)
            warnings.append(f"truncated tail: {detail}")
        owed = walk.last_seq + 1
        if walk.last_seq and _checkpoint_due(owed, every):
            detail = (f"the journal ends at seq {walk.last_seq}, just before the checkpoint due at seq {owed} "
                      f"(checkpoint_every={every}): the append that writes it was cut short (a crash) or the "
                      "log was cut there; the next record() writes it")
            if strict:
                raise AuditTampered(self.path, owed, "missing checkpoint", detail, line=len(lines) + 1)
            warnings.append(f"missing checkpoint: {detail}")
        if anchor is not None:
            a_seq, a_hash = anchor
            if a_seq > walk.last_seq:
                raise AuditTampered(self.path, walk.last_seq + 1, "deleted",
                                    f"the journal ends at seq {walk.last_seq} but the anchor is seq {a_seq}: "
                                    "the newest records were removed")
            if a_seq >= 1 and walk.hashes[a_seq - 1] != a_hash:
                raise AuditTampered(self.path, a_seq, "modified",
                                    "its hash differs from the anchored one: the chain was rewritten")
        return VerifyReport(
            path=str(self.path), records=walk.last_seq, checkpoints=walk.checkpoints, last_seq=walk.last_seq,
            last_hash=walk.hashes[-1] if walk.hashes else GENESIS, last_checkpoint_seq=walk.last_checkpoint,
            after_checkpoint=walk.last_seq - (walk.last_checkpoint or 0), public_key=pub_hex,
            checkpoint_every=every, torn_tail=len(torn), warnings=tuple(warnings), signed_records=walk.signed,
            unsigned_prefix=walk.unsigned)


    def close(self) -> None:
        """Release what the journal holds open (nothing for a file; connections for a database)."""

    def _read_all(self) -> tuple[bytes, bool]:
        """Every byte of the journal (whole lines, under a shared lock) and whether it exists."""
        try:
            fd = _open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return b"", False
        except OSError as exc:
            raise InternalError(f"audit journal {self.path}: cannot open ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # appends wait; we see whole lines only
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(), True
        finally:
            os.close(fd)


class _Walk:
    """One pass over the lines of a journal, raising on the first problem.

    Only the failure paths look ahead (to tell an insertion from a reordering or deletion),
    so a journal that verifies is parsed exactly once.
    """

    def __init__(self, path: Path, lines: list[bytes], pub_hex: str | None, pub_source: str, every: int) -> None:
        self.path, self.lines, self.pub_hex, self.pub_source = path, lines, pub_hex, pub_source
        self.every = every
        self.hashes: list[str] = []  # hashes[seq - 1]
        self.lines_of: list[int] = []  # line number of each seq
        self.checkpoints = 0
        self.last_checkpoint: int | None = None
        self.signed_recs: list[tuple[dict[str, Any], int]] = []  # checked after the chain walk
        self.signed = 0  # records with a valid own signature
        self.unsigned = 0  # records before the first signed one (journals from before record signing)

    @property
    def last_seq(self) -> int:
        return len(self.hashes)

    def _fail(self, seq: int | None, reason: str, detail: str, line: int) -> AuditTampered:
        return AuditTampered(self.path, seq, reason, detail, line)

    def run(self) -> None:
        for i, raw in enumerate(self.lines):
            line = i + 1
            expected = len(self.hashes) + 1
            last = self.hashes[-1] if self.hashes else GENESIS
            rec, why = _parse_record(raw)
            if rec is None:
                raise self._fail(expected, "malformed line", f"line {line} is not an audit record ({why})", line)
            seq = rec["seq"]
            if rec["hash"] != record_hash(rec):
                if self._continues(i + 1, expected, last):
                    raise self._fail(expected, "inserted", f"line {line} (claims seq {seq}, hash does not match) "
                                     "was inserted: the next line continues the chain", line)
                claim = "" if seq == expected else f" (its seq field now says {seq})"
                raise self._fail(expected, "modified", f"its content no longer matches its hash{claim}", line)
            if seq != expected or rec["prev"] != last:
                raise self._classify(i, rec, expected, last)
            self.signed_recs.append((rec, line))
            due = _checkpoint_due(seq, self.every)
            if rec["event"] == CHECKPOINT:
                self._checkpoint(rec, line, due)
            elif due:
                raise self._fail(seq, "missing checkpoint", f"a CHECKPOINT is due at seq {seq} (checkpoint_every="
                                 f"{self.every}: after every {self.every} records) but it holds "
                                 f"{_shown_event(rec['event'])}: "
                                 "checkpoints were removed and the chain re-hashed, or the journal was written with "
                                 f"another interval{self._interval_hint()}", line)
            self.hashes.append(rec["hash"])
            self.lines_of.append(line)
        # Second pass, once the chain and its checkpoints hold: each record's own signature.
        # (Structure first, so a broken chain is named as such rather than as a bad signature.)
        for rec, line in self.signed_recs:
            self._record_signature(rec, line)
        self.signed_recs = []

    # -- look-ahead helpers (failure paths only)

    def _records(self, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        for j in range(start, len(self.lines)):
            rec, _ = _parse_record(self.lines[j])
            if rec is not None:
                yield j, rec

    def _continues(self, i: int, seq: int, prev: str) -> bool:
        """Whether line ``i`` is an intact record with this seq and prev (the chain resumes there)."""
        if i >= len(self.lines):
            return False
        rec, _ = _parse_record(self.lines[i])
        return rec is not None and rec["hash"] == record_hash(rec) and rec["seq"] == seq and rec["prev"] == prev

    def _line_with_seq(self, start: int, seq: int) -> int | None:
        return next((j + 1 for j, rec in self._records(start) if rec["seq"] == seq), None)

    def _linked(self, i: int, rec: dict[str, Any]) -> bool:
        """Whether another line links to this record or it links to another: a genuine record moved."""
        return any(j != i and (r["prev"] == rec["hash"] or r["hash"] == rec["prev"]) for j, r in self._records(0))

    def _classify(self, i: int, rec: dict[str, Any], expected: int, last: str) -> AuditTampered:
        line, seq = i + 1, rec["seq"]
        if seq < expected:
            first = self.lines_of[seq - 1]
            what = "a copy of" if self.hashes[seq - 1] == rec["hash"] else "a second record claiming"
            return self._fail(seq, "inserted", f"{what} seq {seq} (first at line {first}) was inserted here", line)
        if seq > expected:
            again = self._line_with_seq(i + 1, seq)
            if again is not None:
                return self._fail(seq, "inserted", f"a second record claiming seq {seq} (again at line {again}) "
                                  "was inserted here", line)
            later = self._line_with_seq(i + 1, expected)
            if later is not None:
                if self._continues(i + 1, expected, last) and not self._linked(i, rec):
                    return self._fail(seq, "inserted", f"line {line} (claims seq {seq}) was inserted: "
                                      "the next line continues the chain", line)
                return self._fail(expected, "reordered", f"seq {expected} is out of order: found at line {later}, "
                                  f"after seq {seq} (line {line})", line)
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            return self._fail(expected, "deleted", f"record(s) {missing} missing: line {line} is seq {seq}", line)
        if self._continues(i + 1, expected, last):
            return self._fail(seq, "inserted", f"line {line} (claims seq {seq}) was inserted: "
                              "the next line continues the chain", line)
        if expected == 1:
            return self._fail(1, "modified", "the first record's prev is not the genesis value", line)
        # seq is right but prev is not the previous record's hash: that record was edited and
        # re-hashed (an attacker keeps their own record's prev consistent, so the break shows
        # one record later).
        return self._fail(expected - 1, "modified", f"it was altered and its hash recomputed: seq {expected} "
                          f"(line {line}) links to a different hash", self.lines_of[-1])

    def _interval_hint(self) -> str:
        """Failure path: the interval a later checkpoint claims, if it is not ours."""
        for _, rec in self._records(0):
            every = rec.get("every")
            if rec["event"] == CHECKPOINT and _is_count(every) and every != self.every:
                return f" (its checkpoints say checkpoint_every={every})"
        return ""

    def _no_public_key(self, seq: int, line: int) -> AuditPublicKeyMissing:
        # A typed KEY error naming the missing file, not a "bad signature": none was checked. The
        # .pub is not rebuilt from the signing key here: verify stays read-only and trusts only
        # the .pub (or a pinned key), which is what an independent verifier holds.
        return AuditPublicKeyMissing(self.path, self.pub_source, seq, line)

    def _record_signature(self, rec: dict[str, Any], line: int) -> None:
        seq, rsig = rec["seq"], rec.get("rsig")
        if rsig is None:
            if self.signed:
                raise self._fail(seq, "unsigned record", "a record without its signature follows signed ones: it was "
                                 "appended, or the chain rewritten, by someone without the signing key", line)
            self.unsigned += 1
            return
        bad = "bad record signature"
        if self.pub_hex is None:
            raise self._no_public_key(seq, line)
        if not isinstance(rsig, str) or not _HEX128.fullmatch(rsig):
            raise self._fail(seq, bad, "the signature is not 64 bytes of hex", line)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.pub_hex)).verify(
                bytes.fromhex(rsig), record_message(rec))
        except InvalidSignature:
            # Its content no longer matches what the key signed: edited (or forged and chained).
            raise self._fail(seq, "modified", "it was altered and its hash recomputed (or forged and chained), but "
                             f"its own signature does not verify under the signing key {self.pub_hex[:16]}…",
                             line) from None
        self.signed += 1

    def _checkpoint(self, rec: dict[str, Any], line: int, due: bool) -> None:
        seq = rec["seq"]
        bad = "bad checkpoint signature"
        if self.pub_hex is None:
            raise self._no_public_key(seq, line)
        key, sig = rec.get("key"), rec.get("sig")
        if not isinstance(key, str) or key != self.pub_hex:
            # Not str(key): the repr of a value nested near the parser's limit can exhaust the stack.
            # Nor the text of a key that is not hex: whoever forged the record chose it (escape sequences).
            if isinstance(key, str) and _HEX64.fullmatch(key):
                shown = f"{key[:16]}…"
            elif isinstance(key, str):
                shown = "that is not 64 lowercase hex digits"
            else:
                shown = f"of type {type(key).__name__}"
            raise self._fail(seq, bad, f"signed by key {shown}, not the expected key "
                             f"{self.pub_hex[:16]}… ({self.pub_source})", line)
        if rec.get("signed_seq") != seq - 1 or rec.get("signed_hash") != rec["prev"]:
            raise self._fail(seq, bad, "it does not cover the record just before it", line)
        if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
            raise self._fail(seq, bad, "the signature is not 64 bytes of hex", line)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.pub_hex)).verify(
                bytes.fromhex(sig), checkpoint_message(seq - 1, rec["prev"]))
        except InvalidSignature:
            raise self._fail(seq, bad, "the Ed25519 signature does not verify", line) from None
        every = rec.get("every")
        if not _is_count(every) or every != self.every:
            claim = f"written with checkpoint_every={every}" if _is_count(every) else "it records no valid interval"
            raise self._fail(seq, "checkpoint interval", f"{claim}, verified with checkpoint_every={self.every}: "
                             "a journal holds one interval (the field was edited, the caller asked for another "
                             "interval, or writers of an older version disagreed)", line)
        if not due:
            raise self._fail(seq, "unexpected checkpoint", f"none is due at seq {seq} with checkpoint_every="
                             f"{self.every} (they sit at multiples of {self.every + 1})", line)
        self.checkpoints += 1
        self.last_checkpoint = seq


def _event_needle(event: str) -> bytes:
    """The bytes a record of ``event`` holds: canonical JSON has no spaces, and a quote inside a
    string value is escaped, so only a record's own ``event`` (or a nested key of that name) matches."""
    if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
        raise PolicyError("audit event: expected an UPPER_SNAKE_CASE name of at most 64 characters",
                          reason="bad-event")
    return b'"event":"' + str.__str__(event).encode("ascii") + b'"'


def _shown_event(event: str) -> str:
    """A record's event name as a refusal may quote it: a name xps writes, else no text of it.

    A forged record's event is anyone's text of any length (escape sequences that rewrite the
    operator's terminal, 60 KB of it); only a name record() would accept is shown.
    """
    return event if _EVENT_RE.fullmatch(event) else "an event name that is not UPPER_SNAKE_CASE"


def _checkpoint_due(seq: int, every: int) -> bool:
    """Whether record ``seq`` must be a CHECKPOINT: one after every ``every`` records.

    Example:
        >>> [s for s in range(1, 13) if _checkpoint_due(s, 5)]
        [6, 12]
    """
    return seq % (every + 1) == 0


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _coerce_public_key(key: bytes | str) -> str:
    if isinstance(key, str):
        if not _HEX64.fullmatch(key.strip().lower()):
            raise KeyError_("public_key: expected 64 hex digits")
        return key.strip().lower()
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != 32:
        raise KeyError_("public_key: expected 32 bytes")
    return bytes(key).hex()



def _load_or_create_seed(path: Path, *, create: bool = True) -> bytearray:
    try:
        if not path.exists() and not path.is_symlink():
            if not create:
                raise KeyError_(f"audit signing key {path}: missing while the journal holds records; restore it "
                                f"from a backup (a new key could not continue the chain)")
            create_exclusive(path, os.urandom(32), 0o600)
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError as exc:
        raise KeyError_(f"audit signing key {path}: cannot create or open it ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"audit signing key {path}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyError_(f"audit signing key {path}: readable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        seed = bytearray(33)
        n = os.readv(fd, [seed])
    finally:
        os.close(fd)
    if n != 32:
        seed[:] = bytes(33)
        raise KeyError_(f"audit signing key {path}: expected a 32-byte Ed25519 seed, got {n} bytes")
    del seed[32:]
    return seed


def _ensure_pub(path: Path, pub_hex: str) -> None:
    try:
        if not path.exists():
            create_exclusive(path, (pub_hex + "\n").encode("ascii"), 0o644)
    except OSError as exc:
        raise KeyError_(f"audit public key {path}: cannot write it ({exc.strerror})") from exc
    # Whoever created it, it must be our key: a different .pub means key or .pub were swapped.
    if read_public_key(path).hex() != pub_hex:
        raise KeyError_(f"audit public key {path} does not match the signing key; refusing to sign "
                        "checkpoints a verifier would reject")
