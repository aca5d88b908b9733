"""The capsule container and manifest as the publisher writes them: deterministic bytes, the
exact layout, co-signing, and the publisher tool's own refusals."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from xpscerpto import UpdateError
from xpscerpto.capsules._verifier import verify_capsule
from xpscerpto.capsules.build import add_signature, build_capsule, collect_payload
from xpscerpto.capsules.format import (
    FORMAT,
    canonical_json,
    parse_manifest,
    parse_version,
    read_container,
    satisfies,
    write_container,
)

from .conftest import DEMO_OP, Capsule, CapsuleFactory, assert_never_ran

NOW = datetime(2030, 5, 17, 12, 30, 45, tzinfo=UTC)


def test_building_twice_with_the_same_time_gives_identical_bytes(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    first = build_capsule(src.path, [factory.signer().pair], now=NOW)
    second = build_capsule(src.path, [factory.signer().pair], now=NOW + timedelta(microseconds=999))
    assert first == second
    assert build_capsule(src.path, [factory.signer().pair], now=NOW + timedelta(seconds=1)) != first


def test_canonical_json_is_sorted_compact_ascii() -> None:
    doc = {"b": 1, "a": [1, {"d": 2, "c": "é"}]}
    assert canonical_json(doc) == b'{"a":[1,{"c":"\\u00e9","d":2}],"b":1}'
    assert canonical_json(json.loads(canonical_json(doc))) == canonical_json(doc)


def test_built_manifest_is_canonical_and_lists_every_payload_file(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    raw = factory.build(src, now=NOW).raw
    container = read_container(raw)
    doc = json.loads(container.manifest_bytes)
    assert container.manifest_bytes == canonical_json(doc)
    payload = collect_payload(src.path)
    assert doc == {
        "format": FORMAT,
        "name": "xchacha20-openssl",
        "version": "1.0.0",
        "publisher_keys": [factory.signer().keyid],
        "created": "2030-05-17T12:30:45Z",
        "expires": "2031-05-17T12:30:45Z",  # expires_days = 365
        "requires": {"engine_api": ">=1.0,<2", "python": ">=3.11"},
        "operations": {DEMO_OP: "xchacha:XChaCha20Poly1305"},
        "kat": {DEMO_OP: ["kat/xchacha20poly1305.json"]},
        "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in payload.items()},
        "constant_time": True,
    }
    assert dict(container.files) == payload
    assert set(container.signatures) == {factory.signer().keyid}


def test_container_layout_is_fixed(factory: CapsuleFactory) -> None:
    raw = factory.build(factory.demo_source(), now=NOW).raw
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["manifest.json", "signatures.json",
                                           "payload/kat/xchacha20poly1305.json", "payload/xchacha.py"]
    for i in infos:
        assert i.compress_type == zipfile.ZIP_DEFLATED
        assert i.date_time == (2020, 1, 1, 0, 0, 0)
        assert i.external_attr >> 16 == stat.S_IFREG | 0o644


def test_write_container_does_not_depend_on_insertion_order(factory: CapsuleFactory) -> None:
    alice = factory.signer()
    files = {"b.py": b"B", "a/x.json": b"{}", "a.py": b"A"}
    sigs = {alice.keyid: bytes(64), "f" * 32: bytes(range(64))}
    one = write_container(b"{}", sigs, files)
    other = write_container(b"{}", dict(reversed(sigs.items())), dict(reversed(files.items())))
    assert one == other


def test_parse_manifest_of_a_built_capsule(factory: CapsuleFactory) -> None:
    raw = factory.build(factory.demo_source(version="2.10.3"), now=NOW).raw
    m = parse_manifest(read_container(raw).manifest_bytes)
    assert (m.name, m.version, m.version_tuple) == ("xchacha20-openssl", "2.10.3", (2, 10, 3))
    assert (m.created, m.expires) == (NOW, NOW + timedelta(days=365))
    assert m.kat == {DEMO_OP: ("kat/xchacha20poly1305.json",)}


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0", (0, 0, 0)), ("1.2.3", (1, 2, 3)), ("10.20.300000", (10, 20, 300000)),
], ids=["zeros", "simple", "multi-digit"])
def test_parse_version_accepts(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["1.2", "1.2.3.4", "v1.2.3", "01.2.3", "1.2.3-rc1", " 1.2.3", "1.2.3\n",
                                  "1234567.0.0", "", "a.b.c"])
def test_parse_version_refuses(text: str) -> None:
    with pytest.raises(UpdateError) as info:
        parse_version(text)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ((1, 0), ">=1.0,<2", True),
    ((2, 0), ">=1.0,<2", False),
    ((1, 0), ">=1.1", False),
    ((1, 0), "<1.0", False),
    ((3, 11, 7), ">=3.11", True),
    ((3, 11, 7), "<3.11", False),
    ((3, 11, 7), ">=3.12", False),
    ((3, 11, 7), "==3.11", False),  # PEP 440: 3.11 means 3.11.0
    ((3, 11, 0), "==3.11", True),
    ((3, 11, 7), ">3.11", True),  # zero padding: 3.11.7 > 3.11.0
    ((3, 11, 7), ">=3.11,<3.12", True),
], ids=["api-in-range", "api-at-exclusive-upper", "api-below-minimum", "api-below-upper",
        "python-at-minimum", "python-below-upper", "python-below-minimum", "python-patch-is-not-equal",
        "python-equal-padded", "python-patch-above-minor", "python-any-3.11"])
def test_satisfies(version: tuple[int, ...], spec: str, ok: bool) -> None:
    assert satisfies(version, spec) is ok


# -- co-signing --------------------------------------------------------------------------------


def test_add_signature_completes_a_2_of_2_capsule(factory: CapsuleFactory) -> None:
    alice, bob = factory.signer("alice"), factory.signer("bob")
    src = factory.demo_source()
    doc = factory.manifest_for(src, [alice, bob])
    half = factory.assemble(doc, src.files, [alice])
    trust = factory.trust(alice, bob, threshold=2)
    with pytest.raises(UpdateError) as info:
        verify_capsule(half, trust=trust, highest={}, now=datetime.now(UTC))
    assert info.value.reason == "threshold"

    full = add_signature(half, bob.public, bob.seed)
    verified = verify_capsule(full, trust=trust, highest={}, now=datetime.now(UTC))
    assert verified.signed_by == {alice.keyid, bob.keyid}
    before, after = read_container(half), read_container(full)
    assert after.manifest_bytes == before.manifest_bytes  # the signed document is untouched
    assert dict(after.files) == dict(before.files)
    assert after.signatures[alice.keyid] == before.signatures[alice.keyid]
    assert add_signature(full, bob.public, bob.seed) == full  # deterministic, idempotent
    assert_never_ran(Capsule(full, src.marker))


def test_build_with_two_keys_is_a_2_of_2_capsule(factory: CapsuleFactory) -> None:
    alice, bob = factory.signer("alice"), factory.signer("bob")
    cap = factory.build(factory.demo_source(), [alice, bob])
    verified = verify_capsule(cap.raw, trust=factory.trust(alice, bob, threshold=2), highest={},
                              now=datetime.now(UTC))
    assert verified.signed_by == {alice.keyid, bob.keyid}


def test_add_signature_refuses_a_key_the_manifest_does_not_list(factory: CapsuleFactory) -> None:
    cap = factory.build(factory.demo_source())
    carol = factory.signer("carol")
    with pytest.raises(UpdateError) as info:
        add_signature(cap.raw, carol.public, carol.seed)
    assert info.value.reason == "key-not-allowed"
    assert carol.keyid[:12] in str(info.value)


# -- the publisher tool refuses what the verifier would refuse ------------------------------------


def test_build_refuses_a_symlink_in_the_source(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    (src.path / "evil.py").symlink_to("/etc/passwd")
    with pytest.raises(UpdateError) as info:
        factory.build(src)
    assert info.value.reason == "symlink"


def test_build_skips_dotfiles_pycache_and_the_source_file(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    (src.path / ".secret").write_text("token")
    (src.path / "__pycache__").mkdir()
    (src.path / "__pycache__" / "xchacha.cpython-311.pyc").write_bytes(b"\0")
    assert set(read_container(factory.build(src).raw).files) == {"xchacha.py", "kat/xchacha20poly1305.json"}


def test_build_without_capsule_toml_is_refused(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    (src.path / "capsule.toml").unlink()
    with pytest.raises(UpdateError) as info:
        factory.build(src)
    assert info.value.reason == "malformed"


def test_build_with_capsule_toml_missing_a_field_is_refused(factory: CapsuleFactory) -> None:
    src = factory.demo_source()
    toml = (src.path / "capsule.toml").read_text().replace('name = "xchacha20-openssl"\n', "")
    (src.path / "capsule.toml").write_text(toml)
    with pytest.raises(UpdateError) as info:
        factory.build(src)
    assert (info.value.reason, "missing field 'name'" in str(info.value)) == ("malformed", True)


def test_build_without_a_signing_key_is_refused(factory: CapsuleFactory) -> None:
    with pytest.raises(UpdateError) as info:
        factory.build(factory.demo_source(), [])
    assert info.value.reason == "unsigned"
