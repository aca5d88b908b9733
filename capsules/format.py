"""The capsule file: a bounded zip container and a strictly parsed manifest.

Layout of ``NAME-VERSION.capsule`` (a zip archive, members stored or deflated)::

    manifest.json      the signed document (exact bytes)
    signatures.json    {"signatures": [{"keyid": "<hex>", "sig": "<hex>"}]}  detached Ed25519
    payload/<path>     provider modules and KAT files, each listed in the manifest

Nothing here trusts the archive: every limit is enforced on the bytes actually read, not on
sizes the archive declares, and every member name is checked before anything is read.
See ``capsules/FORMAT.md`` for the manifest fields.
"""

from __future__ import annotations

import io
import json
import re
import stat
import sys
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from xpscerpto._config_fields import show
from xpscerpto.errors import UpdateError
from xpscerpto.interfaces import OPERATIONS

from .refusal import Refusal

__all__ = ["FORMAT", "Container", "Limits", "Manifest", "canonical_json", "parse_manifest",
           "parse_version", "read_container", "satisfies", "write_container"]

FORMAT = "xps-capsule/1"
MANIFEST, SIGNATURES, PAYLOAD = "manifest.json", "signatures.json", "payload/"
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits for reading a capsule (defence against endless data)."""

    max_capsule_bytes: int = 8 * 1024 * 1024  # bytes, the capsule file
    max_entries: int = 256  # members in the archive
    max_file_bytes: int = 4 * 1024 * 1024  # bytes, one member uncompressed
    max_total_bytes: int = 16 * 1024 * 1024  # bytes, all members uncompressed
    max_ratio: int = 100  # uncompressed / compressed, per member over 4 KiB
    max_manifest_bytes: int = 256 * 1024  # bytes


@dataclass(frozen=True, slots=True)
class Container:
    """What a capsule archive holds, read within limits. Nothing here is verified yet."""

    manifest_bytes: bytes
    signatures: Mapping[str, bytes]
    files: Mapping[str, bytes]


def _reject(message: str, reason: Refusal) -> UpdateError:
    return UpdateError(message, reason=reason)


def _check_member_name(name: str) -> None:
    if "\\" in name or "\x00" in name:
        raise _reject(f"entry {name!r}: backslash or NUL in path", Refusal.PATH)
    if not name.isprintable():
        # A name is shown to operators (`xps capsule inspect`, errors): a newline or an escape
        # sequence in it would forge lines or rewrite their terminal. No provider needs one.
        raise _reject(f"entry {name!r}: a character that is not printable in path", Refusal.PATH)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _reject(f"entry {name!r}: absolute path", Refusal.PATH)
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _reject(f"entry {name!r}: '..', '.' or empty path component", Refusal.PATH)
    if name not in (MANIFEST, SIGNATURES) and not name.startswith(PAYLOAD):
        raise _reject(f"entry {name!r}: not manifest.json, signatures.json or payload/…", Refusal.UNEXPECTED_ENTRY)


def read_container(raw: bytes, limits: Limits = Limits()) -> Container:
    """Read a capsule archive within ``limits``; raise UpdateError naming the first problem."""
    if len(raw) > limits.max_capsule_bytes:
        raise _reject(f"capsule: {len(raw)} bytes exceeds the {limits.max_capsule_bytes}-byte limit",
                      Refusal.TOO_LARGE)
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, zlib.error) as exc:
        # NotImplementedError: zipfile's answer to an unknown "zip version" field (a flipped byte).
        raise _reject(f"capsule: not a capsule archive ({exc})", Refusal.MALFORMED) from None
    if len(infos) > limits.max_entries:
        raise _reject(f"capsule: {len(infos)} entries exceeds the {limits.max_entries}-entry limit",
                      Refusal.TOO_MANY_ENTRIES)
    seen: set[str] = set()
    declared_total = 0
    for info in infos:
        name = info.filename
        if "\x00" in info.orig_filename:  # zipfile cuts the name at a NUL before we see it
            raise _reject(f"entry {info.orig_filename!r}: backslash or NUL in path", Refusal.PATH)
        if name in seen:
            raise _reject(f"entry {name!r}: duplicate name", Refusal.DUPLICATE)
        seen.add(name)
        _check_member_name(name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _reject(f"entry {name!r}: not a regular file (symlink)", Refusal.SYMLINK)
        if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise _reject(f"entry {name!r}: not a regular file (directory, FIFO or device)", Refusal.NOT_REGULAR_FILE)
        if info.flag_bits & 0x1:
            raise _reject(f"entry {name!r}: encrypted members are not allowed", Refusal.MALFORMED)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _reject(f"entry {name!r}: compression method {info.compress_type} not allowed", Refusal.MALFORMED)
        if info.file_size > limits.max_file_bytes:
            raise _reject(f"entry {name!r}: {info.file_size} bytes exceeds the {limits.max_file_bytes}-byte "
                          "limit", Refusal.TOO_LARGE)
        if info.file_size > 4096 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _reject(f"entry {name!r}: compression ratio above {limits.max_ratio}:1 (compression bomb?)",
                          Refusal.COMPRESSION_BOMB)
        declared_total += info.file_size
        if declared_total > limits.max_total_bytes:
            raise _reject(f"capsule: uncompressed size exceeds the {limits.max_total_bytes}-byte limit",
                          Refusal.TOO_LARGE)

    data: dict[str, bytes] = {}
    total = 0
    for info in infos:
        # Read at most the declared size + 1: a member that inflates beyond what its header
        # claims is caught here, whatever the header says.
        try:
            with zf.open(info) as member:
                blob = member.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as exc:
            # zlib.error: a deflated member whose bytes were altered (found by flipping bytes of
            # announced capsules in the shared database).
            raise _reject(f"entry {info.filename!r}: unreadable ({exc})", Refusal.MALFORMED) from None
        if len(blob) != info.file_size:
            raise _reject(f"entry {info.filename!r}: size differs from its header", Refusal.MALFORMED)
        total += len(blob)
        if total > limits.max_total_bytes:
            raise _reject(f"capsule: uncompressed size exceeds the {limits.max_total_bytes}-byte limit",
                          Refusal.TOO_LARGE)
        data[info.filename] = blob

    manifest_bytes = data.pop(MANIFEST, None)
    if manifest_bytes is None:
        raise _reject("capsule: manifest.json is missing", Refusal.MALFORMED)
    if len(manifest_bytes) > limits.max_manifest_bytes:
        raise _reject("manifest.json: larger than the manifest limit", Refusal.TOO_LARGE)
    sig_bytes = data.pop(SIGNATURES, None)
    if sig_bytes is None:
        raise _reject("capsule: signatures.json is missing", Refusal.UNSIGNED)
    files = {name[len(PAYLOAD):]: blob for name, blob in data.items()}
    return Container(manifest_bytes, _parse_signatures(sig_bytes), MappingProxyType(files))


def _parse_signatures(raw: bytes) -> Mapping[str, bytes]:
    try:
        doc = json.loads(raw)
        entries = doc["signatures"]
        if set(doc) != {"signatures"} or not isinstance(entries, list):
            raise ValueError
        sigs: dict[str, bytes] = {}
        for e in entries:
            if set(e) != {"keyid", "sig"}:
                raise ValueError
            sig = bytes.fromhex(e["sig"])
            # A key id as keys have them (like manifest.publisher_keys): anything else is no key's,
            # and would be shown to the operator as the capsule author wrote it.
            if not isinstance(e["keyid"], str) or not _KEYID.fullmatch(e["keyid"]) or len(sig) != 64:
                raise ValueError
            if e["keyid"] in sigs:
                raise _reject(f"signatures.json: key {e['keyid'][:12]} signs twice", Refusal.MALFORMED)
            sigs[e["keyid"]] = sig
    except UpdateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise _reject("signatures.json: malformed", Refusal.MALFORMED) from None
    if not sigs:
        raise _reject("signatures.json: no signatures", Refusal.UNSIGNED)
    return MappingProxyType(sigs)


# -- manifest ---------------------------------------------------------------------------------

# Always used with fullmatch(): "$" alone would accept a trailing newline.
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$")
_KEYID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_SPEC = re.compile(r"^(>=|<=|==|<|>)(\d{1,6}(?:\.\d{1,6}){0,2})$")  # bounded: int() of 5000 digits raises
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Manifest:
    """A parsed, schema-checked manifest. Not yet trusted: see the verifier."""

    format: str
    name: str
    version: str
    publisher_keys: tuple[str, ...]
    created: datetime
    expires: datetime
    requires_engine_api: str
    requires_python: str
    operations: Mapping[str, str]
    kat: Mapping[str, tuple[str, ...]]
    files: Mapping[str, tuple[str, int]] = field(repr=False)  # path -> (sha256 hex, size)
    #: The publisher's signed claim that every implementation is constant-time (default false).
    constant_time: bool = False

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        """The version as integers, for ordering."""
        return parse_version(self.version)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; raises UpdateError for anything else."""
    m = _VERSION.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise _reject(f"version: {show(text)} is not MAJOR.MINOR.PATCH", Refusal.MALFORMED)
    return int(m[1]), int(m[2]), int(m[3])


def satisfies(version: tuple[int, ...], spec: str) -> bool:
    """Whether ``version`` meets a ``>=1.0,<2`` style specifier.

    Both sides are padded with zeros, as PEP 440 compares releases: ``3.11.7 > 3.11`` and
    ``3.11.7 != 3.11`` (so write ``>=3.11,<3.12`` for "any 3.11").
    """
    for clause in spec.split(","):
        m = _SPEC.fullmatch(clause.strip())
        if m is None:
            raise _reject(f"requires: bad version specifier {show(spec)}", Refusal.MALFORMED)
        want_raw = tuple(int(x) for x in m[2].split("."))
        width = max(len(want_raw), len(version))
        want = want_raw + (0,) * (width - len(want_raw))
        have = tuple(version) + (0,) * (width - len(version))
        ok = {">=": have >= want, "<=": have <= want, "==": have == want,
              "<": have < want, ">": have > want}[m[1]]
        if not ok:
            return False
    return True


def _field(doc: Mapping[str, Any], key: str, typ: type, where: str = "manifest") -> Any:
    if key not in doc:
        raise _reject(f"{where}: missing field {key!r}", Refusal.MALFORMED)
    value = doc[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _reject(f"{where}.{key}: expected {typ.__name__}", Refusal.MALFORMED)
    return value


def _time(doc: Mapping[str, Any], key: str) -> datetime:
    text = _field(doc, key, str)
    try:
        return datetime.strptime(text, _TIME).replace(tzinfo=UTC)
    except ValueError:
        raise _reject(f"manifest.{key}: {text!r} is not YYYY-MM-DDTHH:MM:SSZ", Refusal.MALFORMED) from None


def _payload_path(path: object, where: str) -> str:
    if not isinstance(path, str):
        raise _reject(f"{where}: path must be a string", Refusal.MALFORMED)
    _check_member_name(PAYLOAD + path)
    return path


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and schema-check manifest bytes; unknown fields and versions are refused."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting too deep
        raise _reject("manifest.json: not valid UTF-8 JSON", Refusal.MALFORMED) from None
    if not isinstance(doc, dict):
        raise _reject("manifest.json: not an object", Refusal.MALFORMED)
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise _reject(f"manifest.format: {fmt!r} is not a supported format (want {FORMAT!r})",
                      Refusal.UNKNOWN_FORMAT)
    known = {"format", "name", "version", "publisher_keys", "created", "expires", "requires",
             "operations", "kat", "files", "constant_time"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _reject(f"manifest: unknown field {unknown[0]!r}", Refusal.MALFORMED)

    name = _field(doc, "name", str)
    if not _NAME.fullmatch(name):
        raise _reject(f"manifest.name: {name!r} must match {_NAME.pattern}", Refusal.MALFORMED)
    version = _field(doc, "version", str)
    parse_version(version)
    keys = _field(doc, "publisher_keys", list)
    if not keys or not all(isinstance(k, str) and _KEYID.fullmatch(k) for k in keys) or len(set(keys)) != len(keys):
        raise _reject("manifest.publisher_keys: a non-empty list of distinct key ids", Refusal.MALFORMED)
    requires = _field(doc, "requires", dict)
    if set(requires) != {"engine_api", "python"}:
        raise _reject("manifest.requires: exactly 'engine_api' and 'python'", Refusal.MALFORMED)
    for k in ("engine_api", "python"):
        satisfies((0, 0, 0), _field(requires, k, str, "manifest.requires"))  # syntax check only

    ops = _field(doc, "operations", dict)
    if not ops:
        raise _reject("manifest.operations: provides nothing", Refusal.MALFORMED)
    for op, entry in ops.items():
        if op not in OPERATIONS:
            raise _reject(f"manifest.operations: {op!r} is not an engine operation", Refusal.MALFORMED)
        if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
            raise _reject(f"manifest.operations.{op}: entry must be 'module:attribute'", Refusal.MALFORMED)

    files_doc = _field(doc, "files", dict)
    files: dict[str, tuple[str, int]] = {}
    for path, meta in files_doc.items():
        _payload_path(path, "manifest.files")
        if not isinstance(meta, dict) or set(meta) != {"sha256", "size"}:
            raise _reject(f"manifest.files.{path}: exactly 'sha256' and 'size'", Refusal.MALFORMED)
        digest, size = _field(meta, "sha256", str, f"manifest.files.{path}"), _field(
            meta, "size", int, f"manifest.files.{path}")
        if not _SHA256.fullmatch(digest) or size < 0:
            raise _reject(f"manifest.files.{path}: bad sha256 or size", Refusal.MALFORMED)
        files[path] = (digest, size)

    kat_doc = _field(doc, "kat", dict)
    kat: dict[str, tuple[str, ...]] = {}
    for op, paths in kat_doc.items():
        if op not in ops or not isinstance(paths, list):
            raise _reject(f"manifest.kat.{op}: must list files for a provided operation", Refusal.MALFORMED)
        for p in paths:
            if _payload_path(p, f"manifest.kat.{op}") not in files:
                raise _reject(f"manifest.kat.{op}: {p!r} is not a payload file", Refusal.MALFORMED)
        kat[op] = tuple(paths)

    constant_time = doc.get("constant_time", False)
    if type(constant_time) is not bool:
        raise _reject("manifest.constant_time: expected true or false", Refusal.MALFORMED)
    return Manifest(
        constant_time=constant_time,
        format=fmt, name=name, version=version, publisher_keys=tuple(keys),
        created=_time(doc, "created"), expires=_time(doc, "expires"),
        requires_engine_api=requires["engine_api"], requires_python=requires["python"],
        operations=MappingProxyType(dict(ops)), kat=MappingProxyType(kat),
        files=MappingProxyType(files))


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON (sorted keys, no whitespace) so rebuilt capsules are byte-identical."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def write_container(manifest_bytes: bytes, signatures: Mapping[str, bytes], files: Mapping[str, bytes]) -> bytes:
    """Assemble a capsule archive (deterministic: fixed times, sorted names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        def add(name: str, blob: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, blob)

        add(MANIFEST, manifest_bytes)
        add(SIGNATURES, canonical_json(
            {"signatures": [{"keyid": k, "sig": s.hex()} for k, s in sorted(signatures.items())]}))
        for path in sorted(files):
            add(PAYLOAD + path, files[path])
    return buf.getvalue()


def python_version() -> tuple[int, int, int]:
    """This interpreter's version, for ``requires.python``."""
    return sys.version_info[0], sys.version_info[1], sys.version_info[2]
