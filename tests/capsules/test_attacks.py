"""The TUF attack list against capsule verification: one scenario per attack, each refused with its
own reason code and nothing of the capsule imported.

Every scenario is crafted for real (keys, signatures, zip bytes) by the ``factory`` fixture and
checked twice: by the pure verifier (:func:`verify_capsule`) and end to end through
:meth:`Updater.apply` (audit event, nothing stored, routing untouched).
"""

from __future__ import annotations

import io
import json
import stat
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from xpscerpto import Policy, PolicyError, UpdateError, XpsError
from xpscerpto.capsules._verifier import verify_capsule
from xpscerpto.capsules.format import Limits
from xpscerpto.capsules.refusal import Refusal
from xpscerpto.capsules.store import RoutingState
from xpscerpto.errors import ErrorCode
from xpscerpto.home import Home
from xpscerpto.signing import TrustStore, sign

from .conftest import (
    DEMO_OP,
    Capsule,
    CapsuleFactory,
    Source,
    UpdaterMaker,
    assert_never_ran,
    assert_not_in_this_process,
    loaded_modules,
    marker_pids,
    regular,
    rejections,
    round_trip,
)

DEMO_NAME = "xchacha20-openssl"


@dataclass(frozen=True)
class Crafted:
    """A capsule plus the engine-side context it is judged in."""

    capsule: Capsule
    trust: TrustStore
    highest: Mapping[str, str] = field(default_factory=dict)
    now: datetime | None = None
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)


Builder = Callable[[CapsuleFactory], Crafted]


# -- builders ---------------------------------------------------------------------------------


def _honest(f: CapsuleFactory, **kw: str) -> tuple[Source, Capsule]:
    src = f.demo_source(**kw)
    return src, f.build(src)


def honest(f: CapsuleFactory) -> Crafted:
    """The untampered demo capsule (the control every attack is a variation of)."""
    _, cap = _honest(f)
    return Crafted(cap, f.trust())


def resigned(mutate: Callable[[dict], None]) -> Builder:
    """The publisher's key signs a manifest that ``mutate`` changed (a malformed but signed doc)."""
    def make(f: CapsuleFactory) -> Crafted:
        src = f.demo_source()
        doc = f.manifest_for(src)
        mutate(doc)
        return Crafted(Capsule(f.assemble(doc, src.files), src.marker), f.trust())
    return make


def payload(edit: Callable[[dict[str, bytes]], None]) -> Builder:
    """A correctly signed manifest shipped with a payload that ``edit`` changed afterwards."""
    def make(f: CapsuleFactory) -> Crafted:
        src = f.demo_source()
        doc = f.manifest_for(src)
        files = dict(src.files)
        edit(files)
        return Crafted(Capsule(f.assemble(doc, files), src.marker), f.trust())
    return make


Entries = list[tuple[str | zipfile.ZipInfo, bytes]]


def rezip(edit: Callable[[Entries], Entries]) -> Builder:
    """The honest capsule's members, re-zipped after ``edit`` (raw zip, no re-signing needed)."""
    def make(f: CapsuleFactory) -> Crafted:
        _, cap = _honest(f)
        entries: Entries = [(info.filename, blob) for info, blob in f.members(cap.raw)]
        return Crafted(Capsule(f.zip(edit(entries)), cap.marker), f.trust())
    return make


def add(name: str | zipfile.ZipInfo, blob: bytes = b"import os\n") -> Callable[[Entries], Entries]:
    return lambda entries: [*entries, (name, blob)]


def drop(name: str) -> Callable[[Entries], Entries]:
    return lambda entries: [(n, b) for n, b in entries if n != name]


def replace_entry(name: str, new: str | zipfile.ZipInfo, blob: bytes | None = None) -> Callable[[Entries], Entries]:
    return lambda entries: [((new, b if blob is None else blob) if n == name else (n, b)) for n, b in entries]


def with_limits(limits: Callable[[bytes], Limits]) -> Builder:
    """The honest capsule judged under ``limits(raw)``."""
    def make(f: CapsuleFactory) -> Crafted:
        _, cap = _honest(f)
        return Crafted(cap, f.trust(), limits=limits(cap.raw))
    return make


def signed_bomb(f: CapsuleFactory) -> Crafted:
    """A payload member of 1 MiB of zeros (deflates ~1000:1), listed in a correctly signed manifest."""
    src = f.demo_source()
    files = {**src.files, "bomb.bin": bytes(1 << 20)}
    doc = f.manifest_for(src, files=files)
    return Crafted(Capsule(f.assemble(doc, files), src.marker), f.trust())


def understated_bomb(f: CapsuleFactory) -> Crafted:
    """A 1 MiB member whose zip headers claim 1000 bytes (fools any check on declared sizes)."""
    src = f.demo_source()
    doc = f.manifest_for(src)
    raw = bytearray(f.assemble(doc, {**src.files, "bomb.bin": bytes(1 << 20)}))
    name = b"payload/bomb.bin"
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        local = zf.getinfo(name.decode()).header_offset
    assert raw[local:local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, local + 22, 1000)  # local header: uncompressed size
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        n = struct.unpack_from("<H", raw, central + 28)[0]
        if raw[central + 46:central + 46 + n] == name:
            struct.pack_into("<I", raw, central + 24, 1000)  # central directory: uncompressed size
            break
        central = raw.find(b"PK\x01\x02", central + 4)
    assert central != -1
    return Crafted(Capsule(bytes(raw), src.marker), f.trust())


def untrusted_key(f: CapsuleFactory) -> Crafted:
    src = f.demo_source()
    mallory = f.signer("mallory")
    return Crafted(f.build(src, [mallory]), f.trust(f.signer("alice")))


def modified_after_signing(f: CapsuleFactory) -> Crafted:
    """The signed manifest bytes changed (version bumped) while signatures.json stays."""
    _, cap = _honest(f)
    entries = [(i.filename, b) for i, b in f.members(cap.raw)]
    doc = json.loads(dict(entries)["manifest.json"])
    doc["version"] = "9.9.9"
    forged = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return Crafted(Capsule(f.zip(replace_entry("manifest.json", "manifest.json", forged)(entries)), cap.marker),
                   f.trust())


def signatures_of_another_capsule(f: CapsuleFactory) -> Crafted:
    """Mix-and-match metadata: v1.0.1's manifest with the valid signatures of v1.0.0's."""
    _, old = _honest(f)
    _, new = _honest(f, version="1.0.1")
    old_sigs = dict((i.filename, b) for i, b in f.members(old.raw))["signatures.json"]
    entries = [(i.filename, b) for i, b in f.members(new.raw)]
    return Crafted(Capsule(f.zip(replace_entry("signatures.json", "signatures.json", old_sigs)(entries)),
                           new.marker), f.trust())


def threshold_two_one_signature(f: CapsuleFactory) -> Crafted:
    alice, bob = f.signer("alice"), f.signer("bob")
    src = f.demo_source()
    doc = f.manifest_for(src, [alice, bob])
    raw = f.assemble(doc, src.files, [alice])
    return Crafted(Capsule(raw, src.marker), f.trust(alice, bob, threshold=2))


def threshold_two_same_key_twice(f: CapsuleFactory) -> Crafted:
    """signatures.json lists alice's valid signature twice: one key never counts twice."""
    alice, bob = f.signer("alice"), f.signer("bob")
    src = f.demo_source()
    doc = f.manifest_for(src, [alice, bob])
    raw = f.assemble(doc, src.files, [alice])
    entries = [(i.filename, b) for i, b in f.members(raw)]
    sig = json.loads(dict(entries)["signatures.json"])["signatures"][0]
    doubled = json.dumps({"signatures": [sig, sig]}).encode()
    return Crafted(Capsule(f.zip(replace_entry("signatures.json", "signatures.json", doubled)(entries)),
                           src.marker), f.trust(alice, bob, threshold=2))


def key_not_allowed(f: CapsuleFactory) -> Crafted:
    _, cap = _honest(f)
    return Crafted(cap, f.trust(f.signer("alice"), ops=("sig.*",)))


def key_allowed_other_aead_only(f: CapsuleFactory) -> Crafted:
    _, cap = _honest(f)
    return Crafted(cap, f.trust(f.signer("alice"), ops=("aead.aes*",)))


def signed_only_by_unlisted_key(f: CapsuleFactory) -> Crafted:
    """Bob is pinned and signs validly, but the manifest lists only alice."""
    alice, bob = f.signer("alice"), f.signer("bob")
    src = f.demo_source()
    doc = f.manifest_for(src, [alice])
    return Crafted(Capsule(f.assemble(doc, src.files, [bob]), src.marker), f.trust(alice, bob))


def unlisted_key_towards_threshold(f: CapsuleFactory) -> Crafted:
    """2-of-2: alice (listed) and bob (pinned, valid, but not listed) — bob does not count."""
    alice, bob = f.signer("alice"), f.signer("bob")
    src = f.demo_source()
    doc = f.manifest_for(src, [alice])
    return Crafted(Capsule(f.assemble(doc, src.files, [alice, bob]), src.marker),
                   f.trust(alice, bob, threshold=2))


def signatures_json(blob: bytes) -> Builder:
    return rezip(replace_entry("signatures.json", "signatures.json", blob))


def short_signature(f: CapsuleFactory) -> Crafted:
    alice = f.signer("alice")
    return signatures_json(json.dumps(
        {"signatures": [{"keyid": alice.keyid, "sig": "00" * 63}]}).encode())(f)


def rollback(built: str, highest: str) -> Builder:
    def make(f: CapsuleFactory) -> Crafted:
        _, cap = _honest(f, version=built)
        return Crafted(cap, f.trust(), highest={DEMO_NAME: highest})
    return make


def built_at(delta: timedelta) -> Builder:
    def make(f: CapsuleFactory) -> Crafted:
        src = f.demo_source()
        return Crafted(f.build(src, now=datetime.now(UTC) + delta), f.trust())
    return make


def judged_at(delta: timedelta) -> Builder:
    """The honest capsule judged by an engine whose clock reads now + ``delta``."""
    def make(f: CapsuleFactory) -> Crafted:
        _, cap = _honest(f)
        return Crafted(cap, f.trust(), now=datetime.now(UTC) + delta)
    return make


def expires_before_created(f: CapsuleFactory) -> Crafted:
    now = datetime.now(UTC).replace(microsecond=0)
    fmt = "%Y-%m-%dT%H:%M:%SZ"

    def mutate(doc: dict) -> None:
        doc["created"] = (now + timedelta(minutes=4)).strftime(fmt)
        doc["expires"] = (now + timedelta(minutes=2)).strftime(fmt)
    return resigned(mutate)(f)


def flip_byte(path: str) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        blob = bytearray(files[path])
        i = blob.index(b"_MASK = 0xFFFFFFFF")
        blob[i + len("_MASK = 0x")] = ord("E")  # same size, different code
        files[path] = bytes(blob)
    return edit


def setitem(key: str, value: object) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        doc[key] = value
    return mutate


def delitem(key: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        del doc[key]
    return mutate


def nested(outer: str, key: str, value: object) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        doc[outer][key] = value
    return mutate


def bad_sha(doc: dict) -> None:
    doc["files"]["xchacha.py"]["sha256"] = "not-a-digest"


def files_path_escape(doc: dict) -> None:
    doc["files"]["../escape.py"] = doc["files"].pop("xchacha.py")


def kat_not_in_payload(doc: dict) -> None:
    doc["kat"][DEMO_OP] = ["kat/absent.json"]


def with_policy(policy: Policy) -> Builder:
    def make(f: CapsuleFactory) -> Crafted:
        _, cap = _honest(f)
        return Crafted(cap, f.trust(), policy=policy)
    return make


_PY_NEXT = f">={sys.version_info[0]}.{sys.version_info[1] + 1}"
_SYMLINK = stat.S_IFLNK | 0o777


def P(builder: Builder, reason: str, says: str, *, error: type[XpsError] = UpdateError, id: str):
    """One attack: how to craft it, the reason code expected, a fragment the message must contain."""
    return pytest.param(builder, reason, says, error, id=id)


ATTACKS = [
    # -- provenance: arbitrary software, key compromise, threshold, allow-lists ----------------------
    P(untrusted_key, "untrusted-key", "not a trusted key", id="signed-by-untrusted-key"),
    P(modified_after_signing, "bad-signature", "bad signature", id="manifest-modified-after-signing"),
    P(signatures_of_another_capsule, "bad-signature", "bad signature", id="signatures-from-another-capsule"),
    P(threshold_two_one_signature, "threshold", "signed by 1/2", id="threshold-2-with-one-signature"),
    P(threshold_two_same_key_twice, "malformed", "signs twice", id="threshold-2-same-key-signing-twice"),
    P(unlisted_key_towards_threshold, "threshold", "keys the manifest does not list",
      id="threshold-2-second-signer-not-listed-in-manifest"),
    P(signed_only_by_unlisted_key, "unlisted-key", "keys the manifest does not list",
      id="signature-by-key-the-manifest-does-not-list"),
    P(key_not_allowed, "key-not-allowed", "not allowed to provide aead.xchacha20poly1305",
      id="key-allowed-sig-only-signs-aead-op"),
    P(key_allowed_other_aead_only, "key-not-allowed", "not allowed to provide aead.xchacha20poly1305",
      id="key-allowed-aes-only-signs-xchacha-op"),
    P(rezip(drop("signatures.json")), "unsigned", "signatures.json is missing", id="signatures-json-missing"),
    P(signatures_json(b'{"signatures": []}'), "unsigned", "no signatures", id="signatures-json-empty-list"),
    P(signatures_json(b""), "malformed", "signatures.json: malformed", id="signatures-json-empty-file"),
    P(signatures_json(b"{not json"), "malformed", "signatures.json: malformed", id="signatures-json-not-json"),
    P(short_signature, "malformed", "signatures.json: malformed", id="signature-of-wrong-length"),
    # -- rollback, downgrade and freeze --------------------------------------------------------------
    P(rollback("1.0.1", "1.0.1"), "rollback", "not newer than the highest accepted version 1.0.1",
      id="rollback-same-version-as-highest"),
    P(rollback("1.0.0", "1.0.1"), "rollback", "not newer", id="rollback-lower-patch-version"),
    P(rollback("1.9.9", "2.0.0"), "rollback", "not newer", id="rollback-lower-major-version"),
    P(rollback("1.0.9", "1.0.10"), "rollback", "not newer", id="rollback-numeric-not-lexical-order"),
    P(built_at(timedelta(days=-400)), "expired", "expired at", id="freeze-expired-capsule"),
    P(judged_at(timedelta(days=366)), "expired", "expired at", id="freeze-engine-clock-past-expiry"),
    P(built_at(timedelta(days=1)), "malformed", "created: lies in the future", id="created-in-the-future"),
    P(expires_before_created, "malformed", "expires: not after created", id="expires-before-created"),
    # -- arbitrary/tampered payload and mix-and-match -------------------------------------------------
    P(payload(flip_byte("xchacha.py")), "digest-mismatch", "'xchacha.py' SHA-256 does not match",
      id="payload-tampered-same-size-digest-mismatch"),
    P(payload(lambda fs: fs.update({"xchacha.py": fs["xchacha.py"] + b"\nimport os\n"})), "size-mismatch",
      "'xchacha.py' is", id="payload-tampered-size-mismatch"),
    P(payload(lambda fs: fs.update({"evil.py": b"import os\n"})), "extra-file",
      "'evil.py' is not listed in the manifest", id="extra-payload-file-not-in-manifest"),
    P(payload(lambda fs: fs.pop("kat/xchacha20poly1305.json")), "missing-file",
      "'kat/xchacha20poly1305.json' is listed in the manifest but missing", id="payload-file-missing"),
    P(resigned(nested("operations", DEMO_OP, "nothere:XChaCha20Poly1305")), "missing-file",
      "module 'nothere' is not in the payload", id="entry-module-not-in-payload"),
    # -- endless data ---------------------------------------------------------------------------------
    P(with_limits(lambda raw: Limits(max_capsule_bytes=len(raw) - 1)), "too-large", "exceeds the",
      id="capsule-file-too-large"),
    P(with_limits(lambda raw: Limits(max_entries=3)), "too-many-entries", "4 entries exceeds the 3-entry limit",
      id="too-many-entries"),
    P(with_limits(lambda raw: Limits(max_file_bytes=1024)), "too-large", "exceeds the 1024-byte limit",
      id="member-too-large"),
    P(with_limits(lambda raw: Limits(max_total_bytes=3000)), "too-large", "uncompressed size exceeds",
      id="total-uncompressed-too-large"),
    P(with_limits(lambda raw: Limits(max_manifest_bytes=100)), "too-large", "larger than the manifest limit",
      id="manifest-too-large"),
    P(signed_bomb, "compression-bomb", "compression ratio above 100:1", id="compression-bomb-signed-member"),
    P(understated_bomb, "malformed", "'payload/bomb.bin'", id="compression-bomb-understating-its-size"),
    P(rezip(replace_entry("payload/xchacha.py", regular("payload/xchacha.py", compression=zipfile.ZIP_BZIP2))),
      "malformed", "compression method", id="member-with-disallowed-compression"),
    # -- path tricks ----------------------------------------------------------------------------------
    P(rezip(add("/tmp/evil.py")), "path", "absolute path", id="absolute-path"),
    P(rezip(add("C:/evil.py")), "path", "absolute path", id="windows-drive-path"),
    P(rezip(add("payload/../manifest.json")), "path", "'..'", id="dot-dot-path"),
    P(rezip(add("payload/./evil.py")), "path", "'.'", id="dot-path-component"),
    P(rezip(add("payload//evil.py")), "path", "empty path component", id="empty-path-component"),
    P(rezip(add("payload\\evil.py")), "path", "backslash", id="backslash-path"),
    P(rezip(replace_entry("payload/xchacha.py", regular("payload/xchacha.py", _SYMLINK), b"/etc/passwd")),
      "symlink", "not a regular file", id="symlink-member"),
    P(rezip(add(regular("payload/evil.py", _SYMLINK), b"../../manifest.json")), "symlink", "not a regular file",
      id="extra-symlink-member"),
    P(rezip(add(regular("payload/fifo", stat.S_IFIFO | 0o644), b"")), "not-regular-file", "not a regular file",
      id="fifo-member"),
    P(rezip(add(regular("payload/sub", stat.S_IFDIR | 0o755), b"")), "not-regular-file", "not a regular file",
      id="directory-by-mode-member"),
    P(rezip(add("payload/sub/", b"")), "path", "empty path component", id="directory-entry"),
    P(rezip(add("payload/xchacha.py", b"import os\n")), "duplicate", "duplicate name",
      id="duplicate-payload-name"),
    P(rezip(add("manifest.json", b"{}")), "duplicate", "duplicate name", id="duplicate-manifest"),
    P(rezip(add("README.txt", b"hello")), "unexpected-entry", "not manifest.json", id="unexpected-top-level-entry"),
    P(rezip(add("payloadx/evil.py")), "unexpected-entry", "not manifest.json", id="lookalike-payload-prefix"),
    P(resigned(files_path_escape), "path", "'..'", id="manifest-lists-dot-dot-path"),
    # -- malformed or unknown manifests ---------------------------------------------------------------
    P(rezip(drop("manifest.json")), "malformed", "manifest.json is missing", id="manifest-missing"),
    P(rezip(replace_entry("manifest.json", "manifest.json", b"not json {")), "malformed", "not valid UTF-8 JSON",
      id="manifest-not-json"),
    P(rezip(replace_entry("manifest.json", "manifest.json", b"\xff\xfe{}")), "malformed", "not valid UTF-8 JSON",
      id="manifest-not-utf8"),
    P(rezip(replace_entry("manifest.json", "manifest.json", b"[]")), "malformed", "not an object",
      id="manifest-not-an-object"),
    P(rezip(replace_entry("manifest.json", "manifest.json", b"")), "malformed", "not valid UTF-8 JSON",
      id="manifest-empty"),
    P(resigned(setitem("format", "xps-capsule/2")), "unknown-format", "'xps-capsule/2' is not a supported format",
      id="unknown-format-version"),
    P(resigned(delitem("format")), "unknown-format", "not a supported format", id="format-missing"),
    P(resigned(setitem("hooks", {"post_install": "rm -rf /"})), "malformed", "unknown field 'hooks'",
      id="unknown-manifest-field"),
    P(resigned(delitem("expires")), "malformed", "missing field 'expires'", id="manifest-field-missing"),
    P(resigned(setitem("name", "XChaCha")), "malformed", "manifest.name", id="bad-name-uppercase"),
    P(resigned(setitem("constant_time", "yes")), "malformed", "manifest.constant_time", id="constant-time-not-bool"),
    P(resigned(delitem("constant_time")), "policy", "does not claim it", error=PolicyError,
      id="no-constant-time-claim-under-the-default-policy"),
    P(resigned(setitem("constant_time", False)), "policy", "require_constant_time", error=PolicyError,
      id="constant-time-disclaimed"),
    P(resigned(setitem("name", "../evil")), "malformed", "manifest.name", id="bad-name-path"),
    P(resigned(setitem("name", 7)), "malformed", "manifest.name: expected str", id="bad-name-not-a-string"),
    P(resigned(setitem("name", "openssl\n")), "malformed", "manifest.name", id="bad-name-trailing-newline"),
    P(resigned(setitem("version", "1.0")), "malformed", "is not MAJOR.MINOR.PATCH", id="bad-version-two-parts"),
    P(resigned(setitem("version", "1.0.0-rc1")), "malformed", "is not MAJOR.MINOR.PATCH",
      id="bad-version-prerelease"),
    P(resigned(setitem("version", "01.0.0")), "malformed", "is not MAJOR.MINOR.PATCH",
      id="bad-version-leading-zero"),
    P(resigned(setitem("version", "1.0.0\n")), "malformed", "is not MAJOR.MINOR.PATCH",
      id="bad-version-trailing-newline"),
    P(resigned(setitem("publisher_keys", [])), "malformed", "publisher_keys", id="no-publisher-keys"),
    P(resigned(nested("operations", "aead.rot13", "xchacha:XChaCha20Poly1305")), "malformed",
      "'aead.rot13' is not an engine operation", id="unknown-operation"),
    P(resigned(nested("operations", DEMO_OP, "xchacha")), "malformed", "entry must be 'module:attribute'",
      id="entry-not-module-colon-attribute"),
    P(resigned(setitem("operations", {})), "malformed", "provides nothing", id="no-operations"),
    P(resigned(nested("requires", "engine_api", "~=1.0")), "malformed", "bad version specifier",
      id="bad-requires-specifier"),
    P(resigned(nested("requires", "os", "linux")), "malformed", "exactly 'engine_api' and 'python'",
      id="unknown-requires-key"),
    # int() of more than 4300 digits raises ValueError: refused as malformed, the digits not echoed.
    P(resigned(nested("requires", "python", ">=" + "9" * 5000)), "malformed",
      "bad version specifier a string of 5002 characters", id="requires-specifier-of-5000-digits"),
    P(resigned(setitem("version", "1.0." + "9" * 5000)), "malformed",
      "version: a string of 5004 characters is not MAJOR.MINOR.PATCH", id="version-of-5000-digits"),
    P(resigned(kat_not_in_payload), "malformed", "is not a payload file", id="kat-file-not-in-payload"),
    P(resigned(bad_sha), "malformed", "bad sha256 or size", id="files-digest-not-hex"),
    P(resigned(setitem("created", "yesterday")), "malformed", "is not YYYY-MM-DDTHH:MM:SSZ",
      id="created-not-a-timestamp"),
    # -- compatibility and policy ---------------------------------------------------------------------
    P(resigned(nested("requires", "engine_api", ">=2.0")), "incompatible", "excludes this engine's API 1.0",
      id="engine-api-range-above-1-0"),
    P(resigned(nested("requires", "engine_api", "<1.0")), "incompatible", "excludes this engine's API 1.0",
      id="engine-api-range-below-1-0"),
    P(resigned(nested("requires", "python", "<3.11")), "incompatible", "excludes Python",
      id="python-range-below-this-python"),
    P(resigned(nested("requires", "python", _PY_NEXT)), "incompatible", "excludes Python",
      id="python-range-above-this-python"),
    P(with_policy(Policy(forbid=("xchacha20",))), "policy", "forbidden by policy", error=PolicyError,
      id="operation-forbidden-by-engine-policy"),
    P(with_policy(Policy(allow=("aead.aes*",))), "policy", "not in the policy allow-list", error=PolicyError,
      id="operation-outside-engine-allow-list"),
]


# -- the control: the honest capsule passes in every context an attack uses --------------------


def test_honest_demo_capsule_verifies(factory: CapsuleFactory) -> None:
    crafted = honest(factory)
    v = verify_capsule(crafted.capsule.raw, trust=crafted.trust, highest={}, now=datetime.now(UTC))
    assert v.label == f"{DEMO_NAME}-1.0.0"
    assert v.signed_by == {factory.signer().keyid}
    assert set(v.files) == {"xchacha.py", "kat/xchacha20poly1305.json"}
    assert_never_ran(crafted.capsule)  # verification alone imports nothing


def test_honest_capsule_newer_than_highest_verifies(factory: CapsuleFactory) -> None:
    _, cap = _honest(factory, version="1.0.2")
    v = verify_capsule(cap.raw, trust=factory.trust(), highest={DEMO_NAME: "1.0.1"}, now=datetime.now(UTC))
    assert v.manifest.version_tuple == (1, 0, 2)


def test_a_capsule_without_the_constant_time_claim_is_applied_when_the_policy_allows(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater(policy=Policy(require_constant_time=False))
    src = factory.demo_source()
    doc = factory.manifest_for(src)
    del doc["constant_time"]
    cap = factory.assemble(doc, src.files)
    active = up.apply(cap)
    assert up.engine.table.provider_for(DEMO_OP) == active.name == DEMO_NAME
    assert up.engine.table.routes[DEMO_OP].constant_time is False


def test_honest_demo_capsule_is_applied(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                        tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    cap = honest(factory).capsule
    active = up.apply(cap.raw)
    assert (active.name, active.version, active.sha256) == (DEMO_NAME, "1.0.0", cap.sha256)
    assert up.engine.table.provider_for(DEMO_OP) == DEMO_NAME
    round_trip(up.engine, DEMO_OP)
    # it ran in the validation child and then here, from the verified bytes
    assert len(marker_pids(cap.marker)) == 2
    assert loaded_modules(cap) == [cap.package, f"{cap.package}.xchacha"]


# -- every attack, at the verifier ---------------------------------------------------------------


@pytest.mark.parametrize(("build", "reason", "says", "error"), ATTACKS)
def test_verifier_refuses(factory: CapsuleFactory, build: Builder, reason: str, says: str,
                          error: type[XpsError]) -> None:
    c = build(factory)
    with pytest.raises(XpsError) as info:
        verify_capsule(c.capsule.raw, trust=c.trust, highest=c.highest, now=c.now or datetime.now(UTC),
                       policy=c.policy, limits=c.limits)
    exc = info.value
    assert type(exc) is error
    assert exc.reason == reason, str(exc)
    assert isinstance(exc.reason, Refusal)  # a member of the closed set, not free text
    assert says in str(exc)
    assert str(exc).startswith(f"{error.code}: ")
    assert_never_ran(c.capsule)


# -- every attack, end to end through the updater ------------------------------------------------


@pytest.mark.parametrize(("build", "reason", "says", "error"), ATTACKS)
def test_updater_refuses(factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path,
                         build: Builder, reason: str, says: str, error: type[XpsError]) -> None:
    c = build(factory)
    home = Home.resolve(tmp_path / "home")
    c.trust.save(home.trust)
    if c.highest:
        RoutingState(highest=dict(c.highest)).save(home.state)
    up = make_updater(home.root, limits=c.limits, policy=c.policy,
                      clock=(lambda: c.now) if c.now is not None else None)
    up.restore()
    table = up.engine.table
    state_before = home.state.read_bytes() if home.state.exists() else None

    with pytest.raises(XpsError) as info:
        up.apply(c.capsule.raw, source="test")
    exc = info.value
    assert type(exc) is error
    assert (exc.code, exc.reason) == (error.code, reason), str(exc)
    assert says in str(exc)

    event = rejections(up)[-1]
    assert (event["sha256"], event["reason"], event["source"]) == (c.capsule.sha256, reason, "test")
    assert says in event["detail"]
    assert up.engine.table is table  # routing untouched
    assert list(home.capsules.iterdir()) == []  # nothing stored
    assert (home.state.read_bytes() if home.state.exists() else None) == state_before
    round_trip(up.engine, "aead.aes256gcm")
    if DEMO_OP in table.routes:
        round_trip(up.engine, DEMO_OP)
    assert_never_ran(c.capsule)


# -- rollback memory across restarts ---------------------------------------------------------------


@pytest.fixture
def applied_101(factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> Capsule:
    """Demo capsule 1.0.1 accepted by an updater whose engine then 'stops'."""
    factory.pin(tmp_path / "home")
    cap = factory.build(factory.demo_source(version="1.0.1"))
    assert make_updater().apply(cap.raw).version == "1.0.1"
    return cap


@pytest.mark.parametrize("version", ["1.0.0", "1.0.1"], ids=["lower-version", "same-version"])
def test_rollback_memory_survives_restart(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                          applied_101: Capsule, version: str) -> None:
    up = make_updater()  # a new engine process on the same home
    up.restore()
    assert up.engine.table.provider_for(DEMO_OP) == DEMO_NAME
    cap = factory.build(factory.demo_source(version=version))
    with pytest.raises(UpdateError) as info:
        up.apply(cap.raw)
    assert info.value.reason == "rollback"
    assert "highest accepted version 1.0.1" in str(info.value)
    assert rejections(up)[-1]["reason"] == "rollback"
    assert_never_ran(cap)


def test_rollback_memory_survives_restart_before_restore(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                                         applied_101: Capsule, tmp_path: Path) -> None:
    """A restarted updater that has not called restore() yet must not forget the highest version
    (nor overwrite the committed one) when asked to apply an older capsule."""
    home = Home.resolve(tmp_path / "home")
    committed = RoutingState.load(home.state).highest
    assert committed == {DEMO_NAME: "1.0.1"}
    up = make_updater(restore=False)
    cap = factory.build(factory.demo_source(version="1.0.0"))
    with pytest.raises(UpdateError) as info:
        up.apply(cap.raw)
    assert info.value.reason == "rollback"
    assert RoutingState.load(home.state).highest == committed
    assert_not_in_this_process(cap)


def test_rollback_memory_survives_operator_rollback(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                                    applied_101: Capsule) -> None:
    up = make_updater()
    up.restore()
    up.rollback(DEMO_NAME)  # back to the built-in provider
    assert up.engine.table.provider_for(DEMO_OP) == "sodium"
    restarted = make_updater()
    restarted.restore()
    cap = factory.build(factory.demo_source(version="1.0.0"))
    with pytest.raises(UpdateError) as info:
        restarted.apply(cap.raw)
    assert info.value.reason == "rollback"
    assert_never_ran(cap)


# -- updater-only checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openssl", "sodium"])
def test_capsule_named_like_builtin_provider_is_refused(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                                        tmp_path: Path, name: str) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    before = up.engine.table
    cap = factory.build(factory.demo_source(name=name))
    with pytest.raises(UpdateError) as info:
        up.apply(cap.raw)
    assert info.value.reason == "name-collision"
    assert f"{name!r} is a built-in provider's name" in str(info.value)
    assert rejections(up)[-1]["reason"] == "name-collision"
    assert up.engine.table is before
    assert up.engine.table.provider_for(DEMO_OP) == "sodium"
    assert_never_ran(cap)


def test_trust_file_with_threshold_zero_does_not_admit_untrusted_capsule(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    """A hand-edited trust file saying threshold 0 must not turn verification off."""
    home = Home.resolve(tmp_path / "home")
    doc = factory.trust().to_json()
    doc["threshold"] = 0
    home.trust.write_text(json.dumps(doc))
    up = make_updater()
    mallory = factory.signer("mallory")
    cap = factory.build(factory.demo_source(), [mallory])
    with pytest.raises(XpsError):
        up.apply(cap.raw)
    assert up.engine.table.provider_for(DEMO_OP) == "sodium"
    assert_not_in_this_process(cap)


def test_refusal_is_audited_after_the_load_event(factory: CapsuleFactory, make_updater: UpdaterMaker,
                                                 tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    c = untrusted_key(factory)
    with pytest.raises(UpdateError) as info:
        up.apply(c.capsule.raw, operator="ops-team")
    assert info.value.code is ErrorCode.UPDATE
    events = [e for e in up.audit.tail() if e.get("sha256") == c.capsule.sha256]
    assert [e["event"] for e in events] == ["PATCH_LOAD", "PATCH_REJECT"]
    assert events[1]["operator"] == "ops-team"
    assert events[0]["bytes"] == len(c.capsule.raw)


def test_signature_is_over_exact_manifest_bytes(factory: CapsuleFactory) -> None:
    """Re-serialising a signed manifest (same JSON, other whitespace) breaks the signature."""
    src = factory.demo_source()
    doc = factory.manifest_for(src)
    alice = factory.signer()
    pretty = json.dumps(doc, indent=2, sort_keys=True).encode()
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    raw = factory.assemble(pretty, src.files, [], signatures={alice.keyid: sign(alice.seed, canonical)})
    with pytest.raises(UpdateError) as info:
        verify_capsule(raw, trust=factory.trust(), highest={}, now=datetime.now(UTC))
    assert info.value.reason == "bad-signature"
    assert_never_ran(Capsule(raw, src.marker))
