"""Key-encryption-key providers: a real key file and a real SoftHSM2 token, no mocks.

The behaviour both providers share (round trip, aad binding, tamper and truncation detection,
per-KEK separation, stable ids, fresh nonces, closed providers, input errors) runs once per
provider; then each provider's own guarantees (file permissions and vetting; token key
attributes, PIN and module handling, device faults) and the ``open_kek`` factory.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from xpscerpto import AuthError, KeyError_, PolicyError, ProviderError, SecretBytes, XpsError
from xpscerpto.keyring import kek as kek_mod
from xpscerpto.keyring.kek import (
    FORMAT_VERSION,
    KEK_SIZE,
    KIND_FILE,
    KIND_PKCS11,
    MAX_MATERIAL,
    FileKek,
    KekProvider,
    Pkcs11Kek,
    open_kek,
)

from .conftest import softhsm_init_token

# Every byte distinct and printable, so a leak shows in any rendering.
MATERIAL = bytes(range(0x41, 0x41 + 32))
AAD = b"keyring/key-id/0001"
HEADER, NONCE, TAG = 2, 12, 16

Maker = Callable[..., KekProvider]


def _expect(exc_type: type[XpsError], fn: Callable[[], object], *fields: str) -> XpsError:
    with pytest.raises(exc_type) as ei:
        fn()
    e = ei.value
    assert type(e) is exc_type, f"expected exactly {exc_type.__name__}, got {type(e).__name__}"
    for field in fields:
        assert field in str(e), f"{field!r} not named in {e}"
    return e


def _assert_no_leak(text: str, secret: bytes) -> None:
    for form in (repr(secret), secret.hex(), secret.hex().upper(), secret.decode("latin-1"),
                 secret[:8].hex(), repr(secret[:8])[2:-1]):
        assert form not in text, f"secret leaked as {form!r} in {text!r}"


# -- providers under test ------------------------------------------------------------------------


@pytest.fixture(params=["file", "pkcs11"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_kek(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Maker]:
    """``make(name)``: the provider of this kind for KEK ``name`` (same name → same KEK)."""
    opened: list[KekProvider] = []
    token = request.getfixturevalue("softhsm_token") if kind == "pkcs11" else None

    def make(name: str = "a", *, create: bool = True) -> KekProvider:
        p: KekProvider
        if token is None:
            p = FileKek(tmp_path / f"{name}.key", create=create)
        else:
            module, label, pin = token
            p = Pkcs11Kek(module, label, pin, key_label=f"kek-{name}", create=create)
        opened.append(p)
        return p

    yield make
    for p in opened:
        p.close()


@pytest.fixture
def token_kek(softhsm_token: tuple[str, str, str]) -> Iterator[Pkcs11Kek]:
    module, label, pin = softhsm_token
    with Pkcs11Kek(module, label, pin) as k:
        yield k


# -- shared behaviour (both providers) -----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 16, 32, 64, 4096, MAX_MATERIAL])
def test_round_trip(make_kek: Maker, kind: str, size: int) -> None:
    k = make_kek()
    assert isinstance(k, KekProvider)
    material = (MATERIAL * (size // 32 + 1))[:size]
    for given in (material, SecretBytes(material), bytearray(material)):
        blob = k.wrap(given, AAD)  # type: ignore[arg-type]
        assert type(blob) is bytes
        assert len(blob) == HEADER + NONCE + size + TAG
        assert blob[0] == FORMAT_VERSION
        assert blob[1] == (KIND_FILE if kind == "file" else KIND_PKCS11)
        if size >= 16:  # shorter runs turn up in random bytes by chance
            assert material not in blob
        out = k.unwrap(blob, AAD)
        assert type(out) is SecretBytes
        assert out == material
        out.wipe()


def test_empty_aad_round_trips_and_differs_from_nonempty(make_kek: Maker) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, b"")
    assert k.unwrap(blob, b"") == MATERIAL
    _expect(AuthError, lambda: k.unwrap(blob, b"\x00"), "wrapped")


@pytest.mark.parametrize("other_aad", [b"", b"keyring/key-id/0002", AAD + b"\x00", AAD[:-1], AAD.upper()])
def test_aad_is_bound(make_kek: Maker, other_aad: bytes) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, AAD)
    e = _expect(AuthError, lambda: k.unwrap(blob, other_aad), "wrapped")
    assert e.code == "XPS_ERR_AUTH"
    assert k.unwrap(blob, AAD) == MATERIAL  # the failure changed nothing


def test_every_tampered_byte_is_refused(make_kek: Maker) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, AAD)
    regions = {"header": range(HEADER), "nonce": range(HEADER, HEADER + NONCE),
               "ciphertext": range(HEADER + NONCE, len(blob) - TAG), "tag": range(len(blob) - TAG, len(blob))}
    assert sum(len(r) for r in regions.values()) == len(blob)
    for region, positions in regions.items():
        for i in positions:
            for flip in (0x01, 0x80):
                bad = bytearray(blob)
                bad[i] ^= flip
                with pytest.raises(AuthError):
                    k.unwrap(bytes(bad), AAD)
            assert region  # every region exercised
    assert k.unwrap(blob, AAD) == MATERIAL


def test_truncated_or_extended_blob_is_refused(make_kek: Maker) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, AAD)
    for n in range(len(blob)):
        with pytest.raises(AuthError):
            k.unwrap(blob[:n], AAD)
    for extra in (b"\x00", b"\x00" * TAG):
        with pytest.raises(AuthError):
            k.unwrap(blob + extra, AAD)
    _expect(AuthError, lambda: k.unwrap(b"\x00" * (HEADER + NONCE + MAX_MATERIAL + TAG + 1), AAD), "longer")


def test_another_kek_cannot_unwrap(make_kek: Maker) -> None:
    a, b = make_kek("a"), make_kek("b")
    assert a.kek_id != b.kek_id
    blob = a.wrap(MATERIAL, AAD)
    _expect(AuthError, lambda: b.unwrap(blob, AAD), "wrapped")
    assert a.unwrap(blob, AAD) == MATERIAL


def test_kek_id_stable_across_reopen_and_old_blobs_unwrap(make_kek: Maker, kind: str) -> None:
    first = make_kek("a")
    kek_id = first.kek_id
    assert kek_id.startswith(f"{kind}:")
    blob = first.wrap(MATERIAL, AAD)
    first.close()
    again = make_kek("a", create=False)
    assert again.kek_id == kek_id
    assert again.unwrap(blob, AAD) == MATERIAL
    assert make_kek("b").kek_id != kek_id


def test_wrap_uses_a_fresh_nonce_each_time(make_kek: Maker) -> None:
    k = make_kek()
    blobs = [k.wrap(MATERIAL, AAD) for _ in range(16)]
    assert len(set(blobs)) == 16
    assert len({b[HEADER:HEADER + NONCE] for b in blobs}) == 16
    assert all(k.unwrap(b, AAD) == MATERIAL for b in blobs)


def test_closed_provider_refuses_work_and_close_is_idempotent(make_kek: Maker) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, AAD)
    k.close()
    k.close()
    assert "closed" in repr(k)
    _expect(KeyError_, lambda: k.wrap(MATERIAL, AAD), "closed")
    _expect(KeyError_, lambda: k.unwrap(blob, AAD), "closed")


def test_bad_inputs_raise_typed_errors_naming_the_field(make_kek: Maker) -> None:
    k = make_kek()
    blob = k.wrap(MATERIAL, AAD)
    wiped = SecretBytes(MATERIAL)
    wiped.wipe()
    _expect(KeyError_, lambda: k.wrap("text", AAD), "material", "str")  # type: ignore[arg-type]
    _expect(KeyError_, lambda: k.wrap(None, AAD), "material")  # type: ignore[arg-type]
    _expect(KeyError_, lambda: k.wrap(b"", AAD), "material", "got 0")
    _expect(KeyError_, lambda: k.wrap(b"\x00" * (MAX_MATERIAL + 1), AAD), "material", str(MAX_MATERIAL))
    _expect(KeyError_, lambda: k.wrap(wiped, AAD), "material", "wiped")
    _expect(PolicyError, lambda: k.wrap(MATERIAL, "aad"), "aad", "str")  # type: ignore[arg-type]
    _expect(PolicyError, lambda: k.unwrap(blob, None), "aad")  # type: ignore[arg-type]
    _expect(PolicyError, lambda: k.unwrap(blob.hex(), AAD), "wrapped", "str")  # type: ignore[arg-type]
    _expect(AuthError, lambda: k.unwrap(b"\x02" + blob[1:], AAD), "version")
    _expect(KeyError_, lambda: k.wrap(memoryview(MATERIAL * 2)[::2], AAD), "material", "contiguous")
    _expect(PolicyError, lambda: k.unwrap(memoryview(blob * 2)[::2], AAD), "wrapped", "contiguous")
    # Other contiguous buffers are fine, and the result does not depend on the buffer type.
    assert k.unwrap(memoryview(bytearray(blob)), memoryview(AAD)) == MATERIAL


def test_secrets_absent_from_repr_and_errors(make_kek: Maker) -> None:
    k = make_kek()
    secret = SecretBytes(MATERIAL)
    blob = k.wrap(secret, AAD)
    texts = [repr(k), str(k), f"{k}", repr([k])]
    for call in (lambda: k.unwrap(blob, b"x"), lambda: k.unwrap(blob[:-1], AAD),
                 lambda: k.wrap(MATERIAL * 3000, AAD)):
        with pytest.raises(XpsError) as ei:
            call()
        texts += [str(ei.value), repr(ei.value)]
    out = k.unwrap(blob, AAD)
    texts += [repr(out), str(out)]
    for text in texts:
        _assert_no_leak(text, MATERIAL)
    with pytest.raises(TypeError):
        pickle.dumps(k)


def test_blob_from_the_other_provider_kind_is_refused_cleanly(
        tmp_path: Path, token_kek: Pkcs11Kek) -> None:
    with FileKek(tmp_path / "kek.key") as file_kek:
        from_file = file_kek.wrap(MATERIAL, AAD)
        from_token = token_kek.wrap(MATERIAL, AAD)
        _expect(AuthError, lambda: token_kek.unwrap(from_file, AAD), "another KEK provider kind")
        _expect(AuthError, lambda: file_kek.unwrap(from_token, AAD), "another KEK provider kind")
        # Relabelling the kind byte does not help: the header is authenticated data.
        _expect(AuthError, lambda: token_kek.unwrap(bytes([FORMAT_VERSION, KIND_PKCS11]) + from_file[2:], AAD))


# -- FileKek -------------------------------------------------------------------------------------


def test_file_kek_created_0600_with_32_random_bytes(tmp_path: Path) -> None:
    old = os.umask(0)  # even a wide-open umask must not widen the KEK file
    try:
        a = FileKek(tmp_path / "a.key")
        b = FileKek(tmp_path / "b.key")
    finally:
        os.umask(old)
    with a, b:
        for k in (a, b):
            st = os.stat(k.path)
            assert stat.S_ISREG(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_size == KEK_SIZE
        raw_a, raw_b = a.path.read_bytes(), b.path.read_bytes()
        assert raw_a != raw_b
        assert raw_a != bytes(KEK_SIZE)
        assert len(set(raw_a)) > 8  # 32 CSPRNG bytes essentially never repeat this much
        # kek_id is the documented domain-separated hash of the file's bytes.
        expected = hashlib.sha256(b"xpscerpto/keyring/kek-id/v1\x00" + raw_a).hexdigest()[:16]
        assert a.kek_id == f"file:{expected}"
        _assert_no_leak(repr(a) + str(a), raw_a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key", "b.key"]  # no temp file left


def test_file_kek_reopen_reuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kek.key"
    with FileKek(path) as first:
        blob = first.wrap(MATERIAL, AAD)
        raw = path.read_bytes()
    with FileKek(str(path)) as again:  # str path, and create=True must not replace the key
        assert again.kek_id == first.kek_id
        assert again.unwrap(blob, AAD) == MATERIAL
    assert path.read_bytes() == raw


def test_file_kek_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    for round_ in range(5):
        path = tmp_path / f"race-{round_}.key"
        barrier = threading.Barrier(8)
        ids: list[str] = []

        def open_one(path: Path = path, barrier: threading.Barrier = barrier, ids: list[str] = ids) -> None:
            barrier.wait()
            with FileKek(path) as k:
                ids.append(k.kek_id)

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 8
        assert len(set(ids)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o666, 0o700 | 0o004])
def test_file_kek_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.key"
    FileKek(path).close()
    os.chmod(path, mode)
    _expect(KeyError_, lambda: FileKek(path), str(path), f"{mode:04o}")
    _expect(KeyError_, lambda: FileKek(path, create=False), str(path))
    os.chmod(path, 0o400)  # owner read-only is fine
    FileKek(path).close()


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64])
def test_file_kek_refuses_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "kek.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(size))
    os.close(fd)
    _expect(KeyError_, lambda: FileKek(path), str(path), f"{size} bytes", "32")
    assert path.stat().st_size == size  # refused, not "repaired"


@pytest.mark.parametrize("fill", [b"\x00", b"\xff"])
def test_file_kek_refuses_corrupt_content(tmp_path: Path, fill: bytes) -> None:
    path = tmp_path / "kek.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, fill * KEK_SIZE)
    os.close(fd)
    _expect(KeyError_, lambda: FileKek(path), str(path), "corrupt")


def test_file_kek_refuses_non_regular_files_and_missing_folders(tmp_path: Path) -> None:
    folder = tmp_path / "dir.key"
    folder.mkdir(mode=0o700)
    _expect(KeyError_, lambda: FileKek(folder), str(folder))
    missing_parent = tmp_path / "nowhere" / "kek.key"
    _expect(KeyError_, lambda: FileKek(missing_parent), str(missing_parent), "does not exist")
    assert not missing_parent.parent.exists()
    _expect(PolicyError, lambda: FileKek(42), "path")  # type: ignore[arg-type]
    _expect(PolicyError, lambda: FileKek(""), "path")


def test_file_kek_follows_a_symlink_but_vets_the_target(tmp_path: Path) -> None:
    # Secret mounts (e.g. Kubernetes) are symlinks; the permissions checked are the target's.
    real = tmp_path / "real.key"
    link = tmp_path / "link.key"
    with FileKek(real) as k:
        kek_id = k.kek_id
    link.symlink_to(real)
    with FileKek(link) as k:
        assert k.kek_id == kek_id
    os.chmod(real, 0o644)
    _expect(KeyError_, lambda: FileKek(link), "0644")


def test_file_kek_refuses_a_file_owned_by_another_user(tmp_path: Path) -> None:
    path = tmp_path / "kek.key"
    FileKek(path).close()
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)  # root can read anyone's file: the owner check must stop it
        _expect(KeyError_, lambda: FileKek(path), str(path), "uid 65534")
    else:
        # Unprivileged, a foreign-owned 0600 file cannot even be opened; our own must pass.
        assert os.stat(path).st_uid == os.geteuid()
        FileKek(path).close()


def test_file_kek_create_false_on_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    _expect(KeyError_, lambda: FileKek(path, create=False), str(path), "no KEK file")
    assert not path.exists()


def test_file_kek_close_and_collection_wipe_the_key(tmp_path: Path) -> None:
    k = FileKek(tmp_path / "kek.key")
    raw = k.path.read_bytes()
    secret = k._key
    assert secret == raw
    buf = secret._buf
    k.close()
    assert secret.wiped
    assert not any(buf)  # the bytes that held the key are zero (or released)
    assert len(secret) == 0

    k2 = FileKek(tmp_path / "kek.key")
    secret2 = k2._key
    del k2
    gc.collect()
    assert secret2.wiped  # dropped without close(): the finalizer wiped it


# -- Pkcs11Kek (real SoftHSM2 token) -------------------------------------------------------------


def test_pkcs11_key_generated_once_then_found(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    _expect(KeyError_, lambda: Pkcs11Kek(module, label, pin, create=False), "key_label", "xps-kek")
    with Pkcs11Kek(module, label, pin) as k:
        kek_id = k.kek_id
        assert kek_id.startswith("pkcs11:xps-test/xps-kek/")
        assert len(kek_id.rsplit("/", 1)[1]) == 32  # the random 16-byte CKA_ID
        assert (k.token_label, k.key_label) == (label, "xps-kek")
        blob = k.wrap(MATERIAL, AAD)
    with Pkcs11Kek(module, label, pin, create=False) as k:
        assert k.kek_id == kek_id
        assert k.unwrap(blob, AAD) == MATERIAL
    with Pkcs11Kek(module, label, pin) as k:  # create=True finds it, does not make a second one
        assert k.kek_id == kek_id
    assert _token_keys(module, label, pin, "xps-kek") == 1


def _token_keys(module: str, label: str, pin: str, key_label: str) -> int:
    lib = pkcs11.lib(os.path.realpath(module))
    try:
        with lib.get_token(token_label=label).open(user_pin=pin) as s:
            return len(list(s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_label})))
    finally:
        lib.finalize()  # leave the module as the next open expects it: uninitialised


def test_pkcs11_key_is_sensitive_and_never_extractable(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    with Pkcs11Kek(module, label, pin) as k:
        kek_id = k.kek_id
    lib = pkcs11.lib(os.path.realpath(module))
    try:
        with lib.get_token(token_label=label).open(user_pin=pin, rw=True) as s:
            key = s.get_key(object_class=ObjectClass.SECRET_KEY, label="xps-kek")
            assert key[Attribute.KEY_TYPE] == KeyType.AES
            assert key[Attribute.VALUE_LEN] == 32
            assert key[Attribute.TOKEN] is True
            assert key[Attribute.PRIVATE] is True
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.ALWAYS_SENSITIVE] is True
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            assert key[Attribute.ID].hex() == kek_id.rsplit("/", 1)[1]
            with pytest.raises(pkcs11.AttributeSensitive):
                key[Attribute.VALUE]
            # Not even wrapped out under another key of ours.
            wrapper = s.generate_key(KeyType.AES, 256, store=False, template={Attribute.WRAP: True})
            with pytest.raises(pkcs11.KeyUnextractable):
                wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        lib.finalize()


def _make_token_key(module: str, label: str, pin: str, key_label: str, key_type: KeyType, bits: int,
                    template: dict[Attribute, object]) -> None:
    lib = pkcs11.lib(os.path.realpath(module))
    try:
        with lib.get_token(token_label=label).open(user_pin=pin, rw=True) as s:
            s.generate_key(key_type, bits, label=key_label, store=True, template=template)
    finally:
        lib.finalize()


@pytest.mark.parametrize(("key_type", "bits", "template", "why"), [
    (KeyType.AES, 256, {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True}, "EXTRACTABLE"),
    (KeyType.AES, 256, {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: False}, "SENSITIVE"),
    (KeyType.AES, 128, {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True}, "AES-256"),
    (KeyType.GENERIC_SECRET, 256, {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True}, "AES-256"),
])
def test_pkcs11_refuses_a_weak_existing_key(softhsm_token: tuple[str, str, str], key_type: KeyType,
                                             bits: int, template: dict[Attribute, object], why: str) -> None:
    module, label, pin = softhsm_token
    _make_token_key(module, label, pin, "weak", key_type, bits, template)
    _expect(KeyError_, lambda: Pkcs11Kek(module, label, pin, key_label="weak"), "key_label", "weak", why)


def test_pkcs11_wrong_pin_is_a_policy_error_without_the_pin(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    wrong = "98761"
    e = _expect(PolicyError, lambda: Pkcs11Kek(module, label, wrong), "pin", label)
    assert e.code == "XPS_ERR_POLICY"
    assert wrong not in str(e) and wrong not in repr(e) and pin not in str(e)
    assert e.__cause__ is None and e.__suppress_context__
    # While another provider holds the token logged in, a wrong PIN must still fail.
    with Pkcs11Kek(module, label, pin) as ok:
        e = _expect(PolicyError, lambda: Pkcs11Kek(module, label, wrong, key_label="other"), "pin", label)
        assert wrong not in str(e)
        with Pkcs11Kek(module, label, pin, key_label="other") as second:  # the right PIN joins
            assert second.kek_id != ok.kek_id
            assert second.unwrap(second.wrap(MATERIAL, AAD), AAD) == MATERIAL
        assert ok.unwrap(ok.wrap(MATERIAL, AAD), AAD) == MATERIAL


def test_pkcs11_unknown_token_and_bad_module(softhsm_token: tuple[str, str, str], tmp_path: Path) -> None:
    module, label, pin = softhsm_token
    _expect(PolicyError, lambda: Pkcs11Kek(module, "no-such-token", pin), "token_label", "no-such-token")
    missing = str(tmp_path / "libmissing.so")
    _expect(PolicyError, lambda: Pkcs11Kek(missing, label, pin), "module", missing)
    _expect(PolicyError, lambda: Pkcs11Kek("libsofthsm2.so", label, pin), "module", "absolute")
    not_a_module = tmp_path / "garbage.so"
    not_a_module.write_bytes(b"\x7fELF not really")
    _expect(PolicyError, lambda: Pkcs11Kek(str(not_a_module), label, pin), "module", str(not_a_module))
    for field, args in (("module", ("", label, pin)), ("token_label", (module, "", pin)),
                        ("pin", (module, label, "")), ("key_label", (module, label, pin, ""))):
        e = _expect(PolicyError, lambda args=args: Pkcs11Kek(*args), field)
        assert pin not in str(e)


def test_pkcs11_another_token_is_another_kek(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    softhsm_init_token("xps-other", pin="4321")
    with Pkcs11Kek(module, label, pin) as a, Pkcs11Kek(module, "xps-other", "4321") as b:
        assert a.key_label == b.key_label
        assert a.kek_id != b.kek_id
        assert b.kek_id.startswith("pkcs11:xps-other/xps-kek/")
        blob = a.wrap(MATERIAL, AAD)
        _expect(AuthError, lambda: b.unwrap(blob, AAD))
        assert a.unwrap(blob, AAD) == MATERIAL


def test_pkcs11_providers_share_the_token_across_threads(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    errors: list[BaseException] = []
    with Pkcs11Kek(module, label, pin) as a, Pkcs11Kek(module, label, pin, key_label="b") as b:

        def work(k: Pkcs11Kek, n: int) -> None:
            try:
                for i in range(40):
                    material = MATERIAL + bytes([n, i])
                    aad = AAD + bytes([n])
                    assert k.unwrap(k.wrap(material, aad), aad) == material
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(a if n % 2 else b, n)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_pkcs11_device_fault_is_a_provider_error(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    k = Pkcs11Kek(module, label, pin)
    blob = k.wrap(MATERIAL, AAD)
    # A real fault: the module is finalised under the provider (as a crashed or reset device
    # would invalidate its session).
    pkcs11.lib(os.path.realpath(module)).finalize()
    e = _expect(ProviderError, lambda: k.wrap(MATERIAL, AAD), "pkcs11", "wrap")
    assert e.code == "XPS_ERR_INTERNAL"
    assert isinstance(e.__cause__, pkcs11.PKCS11Error)
    _expect(ProviderError, lambda: k.unwrap(blob, AAD), "unwrap")
    k.close()  # releasing a dead session does not raise
    assert os.path.realpath(module) not in kek_mod._MODULES


def test_pkcs11_provider_dropped_without_close_is_released(softhsm_token: tuple[str, str, str]) -> None:
    module, label, pin = softhsm_token
    k = Pkcs11Kek(module, label, pin)
    assert os.path.realpath(module) in kek_mod._MODULES
    del k
    gc.collect()
    assert os.path.realpath(module) not in kek_mod._MODULES


# -- open_kek ------------------------------------------------------------------------------------


def test_open_kek_file(tmp_path: Path) -> None:
    with contextlib.closing(open_kek("file", tmp_path)) as k:
        assert isinstance(k, FileKek)
        assert k.path == tmp_path / "kek.key"
        assert stat.S_IMODE(os.stat(k.path).st_mode) == 0o600
        blob = k.wrap(MATERIAL, AAD)
        kek_id = k.kek_id
    with FileKek(tmp_path / "kek.key", create=False) as direct:
        assert direct.kek_id == kek_id
        assert direct.unwrap(blob, AAD) == MATERIAL
    k2 = open_kek("file", tmp_path, path="sub.key")
    try:
        assert isinstance(k2, FileKek)
        assert k2.path == tmp_path / "sub.key"
        assert k2.kek_id != kek_id
    finally:
        k2.close()


def test_open_kek_pkcs11(softhsm_token: tuple[str, str, str], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    module, label, pin = softhsm_token
    monkeypatch.setenv("XPS_TEST_KEK_PIN", pin)
    k = open_kek("pkcs11", tmp_path, module=module, token_label=label, pin_env="XPS_TEST_KEK_PIN",
                 key_label="factory")
    try:
        assert isinstance(k, Pkcs11Kek)
        assert k.kek_id.startswith("pkcs11:xps-test/factory/")
        assert k.unwrap(k.wrap(MATERIAL, AAD), AAD) == MATERIAL
    finally:
        k.close()
    monkeypatch.setenv("XPS_TEST_KEK_PIN", "0000")
    e = _expect(PolicyError, lambda: open_kek("pkcs11", tmp_path, module=module, token_label=label,
                                              pin_env="XPS_TEST_KEK_PIN"), "pin")
    assert "0000" not in str(e)


def test_open_kek_configuration_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XPS_PKCS11_PIN", raising=False)
    module = "/usr/lib/softhsm/libsofthsm2.so"
    _expect(PolicyError, lambda: open_kek("pkcs11", tmp_path, module=module), "pin_env", "XPS_PKCS11_PIN")
    monkeypatch.setenv("XPS_PKCS11_PIN", "")
    _expect(PolicyError, lambda: open_kek("pkcs11", tmp_path, module=module), "XPS_PKCS11_PIN")
    monkeypatch.delenv("XPS_OTHER_PIN", raising=False)
    _expect(PolicyError, lambda: open_kek("pkcs11", tmp_path, module=module, pin_env="XPS_OTHER_PIN"),
            "XPS_OTHER_PIN")
    _expect(PolicyError, lambda: open_kek("pkcs11", tmp_path), "module")
    _expect(PolicyError, lambda: open_kek("vault", tmp_path), "provider", "vault")
    _expect(PolicyError, lambda: open_kek("file", tmp_path, path=""), "path")
    assert list(tmp_path.iterdir()) == []  # nothing was created by a refused configuration
