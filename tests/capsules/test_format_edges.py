"""Edge inputs in capsule containers and stored files (issue 8 item 8): typed, audited refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from xpscerpto import PolicyError, UpdateError
from xpscerpto.capsules.format import MANIFEST, SIGNATURES
from xpscerpto.capsules.store import RoutingState
from xpscerpto.signing import TrustStore

from .conftest import CapsuleFactory, UpdaterMaker, assert_never_ran, regular, rejections

DEEP = b"[" * 20_000 + b"]" * 20_000  # far past the JSON decoder's recursion limit


def _apply_refused(factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, raw: bytes) -> UpdateError:
    factory.pin(tmp_path / "home")
    up = make_updater()
    with pytest.raises(UpdateError) as ei:
        up.apply(raw)
    assert rejections(up)[-1]["reason"] == ei.value.reason  # audited, not filed as internal
    assert up.engine.table.provider_for("aead.aes256gcm") == "openssl"
    return ei.value


@pytest.mark.parametrize("member", [MANIFEST, SIGNATURES])
def test_a_deeply_nested_container_file_is_malformed(member: str, factory: CapsuleFactory,
                                                     make_updater: UpdaterMaker, tmp_path: Path) -> None:
    cap = factory.build(factory.source())
    entries = [(regular(info.filename, compression=zipfile.ZIP_STORED), DEEP if info.filename == member else blob)
               for info, blob in factory.members(cap.raw)]
    err = _apply_refused(factory, make_updater, tmp_path, factory.zip(entries, zipfile.ZIP_STORED))
    assert err.reason == "malformed" and member in str(err)
    assert_never_ran(cap)


def test_a_nul_in_a_member_name_is_refused_before_zipfile_cuts_it(factory: CapsuleFactory,
                                                                 make_updater: UpdaterMaker, tmp_path: Path) -> None:
    cap = factory.build(factory.source())
    entries = [(info.filename, blob) for info, blob in factory.members(cap.raw)]
    # An extra member whose name carries a NUL: "payload/xNULevil.py" reads back as "payload/x".
    raw = factory.zip([*entries, ("payload/xQevil.py", b"print('hi')")]).replace(b"payload/xQevil.py",
                                                                                 b"payload/x\x00evil.py")
    err = _apply_refused(factory, make_updater, tmp_path, raw)
    assert err.reason == "path" and "\\x00" in str(err)
    assert_never_ran(cap)


def test_a_deeply_nested_state_file_is_a_typed_refusal(make_updater: UpdaterMaker, tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_updater(home)
    (home / "state.json").write_bytes(DEEP)
    with pytest.raises(UpdateError) as ei:
        RoutingState.load(home / "state.json")
    assert ei.value.reason == "state"
    with pytest.raises(UpdateError):
        make_updater(home)


def test_a_deeply_nested_trust_file_is_a_typed_refusal(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(DEEP)
    with pytest.raises(PolicyError, match="unreadable"):
        TrustStore.load(path)
