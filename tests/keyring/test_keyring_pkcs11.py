"""The keyring end to end with its KEK inside a real SoftHSM2 token (PKCS#11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import Keyring


def _config(module: str, token: str) -> XpsConfig:
    return XpsConfig.from_mapping({"keyring": {"kek": {
        "provider": "pkcs11", "module": module, "token_label": token, "pin_env": "XPS_TEST_PKCS11_PIN"}}})


def test_keyring_on_a_pkcs11_kek_survives_reopen_and_keeps_no_material_on_disk(
        softhsm_token: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, token, pin = softhsm_token
    monkeypatch.setenv("XPS_TEST_PKCS11_PIN", pin)
    home = tmp_path / "home"
    cfg = _config(module, token)
    with Keyring(home, config=cfg.keyring) as ring:
        assert ring.kek.kek_id.startswith(f"pkcs11:{token}/")
        ring.create("orders", "XCHACHA20-POLY1305")
        old = ring.encrypt("orders", b"before rotation", b"a")
        ring.rotate("orders")
        with ring.get("orders", version=1) as v1, ring.get("orders") as v2:
            materials = [bytes(v1.view()), bytes(v2.view())]
    with Keyring(home, config=cfg.keyring) as ring:  # a new process would do the same
        assert ring.decrypt(old, b"a") == b"before rotation"
        assert ring.decrypt(ring.encrypt("orders", b"after", b"a"), b"a") == b"after"
    on_disk = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert not (home / "kek.key").exists()  # the KEK never left the token
    for m in materials:
        assert m not in on_disk


def test_keyring_refuses_to_start_without_the_pin(softhsm_token: tuple[str, str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module, token, _ = softhsm_token
    monkeypatch.delenv("XPS_TEST_PKCS11_PIN", raising=False)
    with pytest.raises(PolicyError, match="XPS_TEST_PKCS11_PIN"):
        Keyring(tmp_path / "home", config=_config(module, token).keyring)
