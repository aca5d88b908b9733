"""Publisher key files and the trust store: real files, real Ed25519, real permissions."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from xpscerpto import KeyError_, PolicyError
from xpscerpto.signing import (
    PublisherKey,
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    verify,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def alice(tmp_path: Path) -> PublisherKey:
    return generate_keypair(tmp_path / "alice")


# -- key files ---------------------------------------------------------------------------------


def test_generate_writes_private_key_0600_and_public_key(tmp_path: Path, alice: PublisherKey) -> None:
    key_file, pub_file = tmp_path / "alice.key", tmp_path / "alice.pub"
    assert _mode(key_file) == 0o600
    assert _mode(pub_file) == 0o644
    doc = json.loads(key_file.read_text())
    assert set(doc) == {"type", "keyid", "seed"}
    assert (doc["type"], doc["keyid"], len(bytes.fromhex(doc["seed"]))) == ("ed25519-private", alice.keyid, 32)
    assert json.loads(pub_file.read_text()) == {"type": "ed25519-public", "keyid": alice.keyid,
                                                "public_key": alice.public_key.hex()}
    assert len(alice.public_key) == 32


def test_key_id_is_a_truncated_domain_separated_sha256(alice: PublisherKey) -> None:
    expected = hashlib.sha256(b"xps-ed25519:" + alice.public_key).hexdigest()[:32]
    assert key_id(alice.public_key) == alice.keyid == expected


@pytest.mark.parametrize("existing", ["alice.key", "alice.pub"])
def test_generate_refuses_to_overwrite_a_key(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(KeyError_, match="refusing to overwrite"):
        generate_keypair(tmp_path / "alice")
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_generate_twice_refuses_and_keeps_the_first_key(tmp_path: Path, alice: PublisherKey) -> None:
    before = (tmp_path / "alice.key").read_bytes()
    with pytest.raises(KeyError_):
        generate_keypair(tmp_path / "alice")
    assert (tmp_path / "alice.key").read_bytes() == before
    assert load_private_key(tmp_path / "alice.key")[0] == alice


def test_private_key_round_trip_signs_verifiably(tmp_path: Path, alice: PublisherKey) -> None:
    pub, seed = load_private_key(tmp_path / "alice.key")
    assert pub == alice == load_public_key(tmp_path / "alice.pub")
    sig = sign(seed, b"manifest bytes")
    assert len(sig) == 64
    assert verify(alice.public_key, b"manifest bytes", sig)
    assert not verify(alice.public_key, b"manifest bytes!", sig)
    assert not verify(alice.public_key, b"manifest bytes", bytes([sig[0] ^ 1]) + sig[1:])
    bob = generate_keypair(tmp_path / "bob")
    assert not verify(bob.public_key, b"manifest bytes", sig)
    assert not verify(alice.public_key, b"manifest bytes", sig[:63])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o601, 0o610],
                         ids=lambda m: f"{m:04o}")
def test_load_private_key_refuses_group_or_world_access(tmp_path: Path, alice: PublisherKey, mode: int) -> None:
    path = tmp_path / "alice.key"
    path.chmod(mode)
    with pytest.raises(KeyError_, match="too open"):
        load_private_key(path)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=lambda m: f"{m:04o}")
def test_load_private_key_accepts_owner_only_modes(tmp_path: Path, alice: PublisherKey, mode: int) -> None:
    path = tmp_path / "alice.key"
    path.chmod(mode)
    assert load_private_key(path)[0] == alice


@pytest.mark.parametrize(("content", "says"), [
    (b"not json", "invalid JSON"),
    (b"[]", "not a key file"),
    (json.dumps({"type": "ed25519-public", "seed": "00" * 32}).encode(), "type must be 'ed25519-private'"),
    (json.dumps({"type": "ed25519-private", "seed": "00" * 31}).encode(), "'seed' must be 32 bytes"),
    (json.dumps({"type": "ed25519-private", "seed": "zz" * 32}).encode(), "'seed' must be 32 bytes"),
], ids=["not-json", "not-an-object", "wrong-type", "short-seed", "seed-not-hex"])
def test_load_private_key_refuses_bad_files(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyError_, match=says):
        load_private_key(path)


def test_load_private_key_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyError_):
        load_private_key(tmp_path / "nobody.key")


def test_public_key_with_mismatched_keyid_is_refused(tmp_path: Path, alice: PublisherKey) -> None:
    path = tmp_path / "alice.pub"
    doc = json.loads(path.read_text())
    doc["keyid"] = "0" * 32
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyError_, match="keyid does not match the key"):
        load_public_key(path)


def test_public_key_without_keyid_gets_it_recomputed(tmp_path: Path, alice: PublisherKey) -> None:
    path = tmp_path / "alice.pub"
    path.write_text(json.dumps({"type": "ed25519-public", "public_key": alice.public_key.hex()}))
    assert load_public_key(path) == alice


@pytest.mark.parametrize(("doc", "says"), [
    ({"type": "ed25519-private", "public_key": "00" * 32}, "type must be 'ed25519-public'"),
    ({"type": "ed25519-public", "public_key": "00" * 33}, "'public_key' must be 32 bytes"),
    ({"type": "ed25519-public"}, "'public_key' must be 32 bytes"),
], ids=["wrong-type", "long-key", "no-key"])
def test_load_public_key_refuses_bad_files(tmp_path: Path, doc: dict, says: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyError_, match=says):
        load_public_key(path)


# -- the trust store ---------------------------------------------------------------------------


@pytest.fixture
def bob(tmp_path: Path) -> PublisherKey:
    return generate_keypair(tmp_path / "bob")


def test_trust_store_save_load_round_trip(tmp_path: Path, alice: PublisherKey, bob: PublisherKey) -> None:
    store = (TrustStore().add(alice, ["aead.*"], label="alice@example")
             .add(bob, ["aead.aes256gcm", "kdf.*"]).with_threshold(2))
    path = tmp_path / "trust.json"
    store.save(path)
    loaded = TrustStore.load(path)
    assert loaded == store
    assert loaded.threshold == 2
    assert loaded.keys[alice.keyid].ops == ("aead.*",)
    assert loaded.keys[alice.keyid].label == "alice@example"
    assert loaded.keys[bob.keyid].public_key == bob.public_key
    assert loaded.to_json() == json.loads(path.read_text())


def test_missing_trust_file_is_an_empty_store(tmp_path: Path) -> None:
    store = TrustStore.load(tmp_path / "absent.json")
    assert (dict(store.keys), store.threshold) == ({}, 1)


@pytest.mark.parametrize("content", [
    "not json", json.dumps({"threshold": 1}), json.dumps({"keys": [{"keyid": "a"}], "threshold": 1}),
    json.dumps({"keys": [], "threshold": "many"}),
], ids=["not-json", "no-keys", "key-without-public-key", "threshold-not-a-number"])
def test_malformed_trust_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "trust.json"
    path.write_text(content)
    with pytest.raises(PolicyError, match="trust store"):
        TrustStore.load(path)


@pytest.mark.parametrize("threshold", [0, -1], ids=["zero", "negative"])
def test_trust_file_with_threshold_below_one_is_refused(tmp_path: Path, alice: PublisherKey,
                                                        threshold: int) -> None:
    """with_threshold() refuses k < 1; a trust file saying so must not load either (k = 0 would
    let a capsule with no trusted signature through)."""
    doc = TrustStore().add(alice, ["aead.*"]).to_json()
    doc["threshold"] = threshold
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PolicyError):
        TrustStore.load(path)


def test_add_returns_a_new_store(alice: PublisherKey) -> None:
    empty = TrustStore()
    one = empty.add(alice, ["aead.*"])
    assert dict(empty.keys) == {}
    assert list(one.keys) == [alice.keyid]
    assert one.add(alice, ["sig.*"]).keys[alice.keyid].ops == ("sig.*",)  # re-pinning replaces


def test_add_refuses_a_key_allowed_no_operation(alice: PublisherKey) -> None:
    with pytest.raises(PolicyError, match="at least one operation"):
        TrustStore().add(alice, [])


def test_remove_unpins_and_refuses_unknown_keys(alice: PublisherKey, bob: PublisherKey) -> None:
    store = TrustStore().add(alice, ["aead.*"]).add(bob, ["aead.*"])
    assert list(store.remove(alice.keyid).keys) == [bob.keyid]
    assert len(store.keys) == 2
    with pytest.raises(PolicyError, match="not in the trust store"):
        store.remove("f" * 32)
    with pytest.raises(PolicyError):
        store.remove(alice.keyid).remove(alice.keyid)


@pytest.mark.parametrize("k", [0, -3])
def test_with_threshold_refuses_below_one(k: int) -> None:
    with pytest.raises(PolicyError, match="at least 1"):
        TrustStore().with_threshold(k)


def test_with_threshold_sets_k() -> None:
    assert TrustStore().with_threshold(3).threshold == 3


# -- verification against the trust store --------------------------------------------------------


def _signed(tmp_path: Path, name: str, data: bytes) -> tuple[str, bytes]:
    pub, seed = load_private_key(tmp_path / f"{name}.key")
    return pub.keyid, sign(seed, data)


def test_verify_counts_distinct_trusted_allowed_valid_signatures(tmp_path: Path, alice: PublisherKey,
                                                                 bob: PublisherKey) -> None:
    data = b"manifest"
    mallory = generate_keypair(tmp_path / "mallory")
    store = TrustStore().add(alice, ["aead.*"]).add(bob, ["sig.*"]).with_threshold(2)
    sigs = dict([_signed(tmp_path, "alice", data), _signed(tmp_path, "bob", data),
                 _signed(tmp_path, "mallory", data)])
    result = store.verify(data, sigs, ["aead.aes256gcm"])
    assert not result
    assert result.signed == {alice.keyid}
    assert dict(result.rejected) == {bob.keyid: "not allowed to provide aead.aes256gcm",
                                     mallory.keyid: "not a trusted key"}
    assert "signed by 1/2 required trusted keys" in result.describe()

    both = TrustStore().add(alice, ["aead.*"]).add(bob, ["aead.aes256gcm"]).with_threshold(2)
    assert both.verify(data, sigs, ["aead.aes256gcm"]).signed == {alice.keyid, bob.keyid}
    assert both.verify(data, sigs, ["aead.aes256gcm"])


def test_verify_rejects_a_signature_over_other_bytes(tmp_path: Path, alice: PublisherKey) -> None:
    store = TrustStore().add(alice, ["aead.*"])
    keyid, sig = _signed(tmp_path, "alice", b"manifest v1")
    result = store.verify(b"manifest v2", {keyid: sig}, ["aead.aes256gcm"])
    assert not result
    assert dict(result.rejected) == {alice.keyid: "bad signature"}


@pytest.mark.parametrize(("globs", "ops", "allowed"), [
    (("aead.*",), ("aead.aes256gcm",), True),
    (("aead.*",), ("aead.aes256gcm", "sig.ed25519"), False),
    (("aead.aes*",), ("aead.xchacha20poly1305",), False),
    (("aead.*", "sig.*"), ("aead.aes256gcm", "sig.ed25519"), True),
    (("AEAD.*",), ("aead.aes256gcm",), False),
], ids=["glob-matches", "every-op-must-match", "narrow-glob", "two-globs", "case-sensitive"])
def test_allow_list_globs(alice: PublisherKey, globs: tuple[str, ...], ops: tuple[str, ...],
                          allowed: bool) -> None:
    assert TrustStore().add(alice, globs).keys[alice.keyid].allows(ops) is allowed


SMALL_ORDER = json.loads((Path(__file__).parent / "data" / "small_order_ed25519_keys.json").read_text())["keys"]


@pytest.mark.parametrize("name", sorted(SMALL_ORDER))
def test_a_small_order_key_is_never_pinned_and_verifies_nothing(tmp_path: Path, alice: PublisherKey,
                                                                 name: str) -> None:
    pk = bytes.fromhex(SMALL_ORDER[name])
    forged = (1).to_bytes(32, "little") + bytes(32)  # R = identity, S = 0: "valid" under a lenient check
    assert not verify(pk, b"any manifest", forged)
    path = tmp_path / "evil.pub"
    path.write_text(json.dumps({"type": "ed25519-public", "public_key": pk.hex()}))
    with pytest.raises(KeyError_, match="not a valid Ed25519 public key"):
        load_public_key(path)
    evil = PublisherKey(key_id(pk), pk)
    with pytest.raises(PolicyError, match="not a valid Ed25519 public key"):
        TrustStore().add(evil, ["aead.*"])
    doc = TrustStore().add(alice, ["aead.*"]).to_json()
    doc["keys"].append({"keyid": evil.keyid, "public_key": pk.hex(), "ops": ["aead.*"], "label": ""})
    with pytest.raises(PolicyError, match="not a valid Ed25519 public key"):
        TrustStore.from_json(doc)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
@pytest.mark.parametrize("loader", [load_public_key, load_private_key])
def test_a_key_path_that_is_not_a_regular_file_is_refused_without_blocking(
        tmp_path: Path, kind: str, loader: Callable[[Path], object]) -> None:
    # A FIFO would block the reader for ever and /dev/zero never end.
    path = tmp_path / "key"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir(mode=0o700)
    # /dev/zero is mode 0666: the private-key loader refuses it on its permissions first.
    expected = "too open" if (loader, kind) == (load_private_key, "dev-zero") else "not a regular file"
    with pytest.raises(KeyError_, match=expected):
        loader(path)
