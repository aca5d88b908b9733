"""Review round 2, F3, F4 (keyring API) and F5.

F3: a key named by its id stops encrypting the moment this process revokes, destroys or rotates it.
F4: a str holding a lone surrogate (what os.fsdecode makes of stray bytes) is a typed refusal naming
the field, never a UnicodeEncodeError, and changes nothing.
F5: create and rotate refuse an AEAD the keyring's engine may not route (every encryption would fail).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps_api
from xpscerpto.errors import KeyError_, PolicyError
from xpscerpto.keyring import Keyring

from .test_home_policy import events, ok, refused, xps


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Keyring]:
    with Keyring(tmp_path / "home") as r:
        yield r


def _version_of(blob: bytes) -> int:
    return int.from_bytes(blob[9:13], "big")


# -- F3 ------------------------------------------------------------------------------------------


def test_encrypt_by_id_is_refused_at_once_after_revoke(ring: Keyring) -> None:
    kid = ring.create("k", "AES-256-GCM")
    ring.encrypt(kid, b"warm")  # cached under the id
    ring.encrypt("k", b"warm")  # and under the name
    ring.revoke("k", "compromised")
    for ref in (kid, "k"):
        with pytest.raises(KeyError_, match="revoked"):
            ring.encrypt(ref, b"secret")


def test_encrypt_by_id_is_refused_at_once_after_revoke_by_id(ring: Keyring) -> None:
    kid = ring.create("k", "AES-256-GCM")
    ring.encrypt(kid, b"warm")
    ring.encrypt("k", b"warm")
    ring.revoke(kid, "compromised")
    for ref in (kid, "k"):
        with pytest.raises(KeyError_, match="revoked"):
            ring.encrypt(ref, b"secret")


def test_encrypt_by_id_is_refused_at_once_after_destroy(ring: Keyring) -> None:
    kid = ring.create("k", "AES-256-GCM")
    ring.encrypt(kid, b"warm")
    ring.revoke("k", "compromised")
    ring.destroy("k")
    with pytest.raises(KeyError_, match="destroyed"):
        ring.encrypt(kid, b"secret")


def test_encrypt_by_id_uses_the_new_version_at_once_after_rotate(ring: Keyring) -> None:
    kid = ring.create("k", "AES-256-GCM")
    assert _version_of(ring.encrypt(kid, b"warm")) == 1
    assert ring.rotate("k") == 2
    blob = ring.encrypt(kid, b"after")
    assert _version_of(blob) == 2
    assert ring.describe("k").versions[0].encryptions <= ring.config.usage_block  # v1 got no more
    assert ring.decrypt(blob) == b"after"
    assert ring.rotate(kid) == 3
    assert _version_of(ring.encrypt(kid, b"again")) == 3
    assert _version_of(ring.encrypt("k", b"again")) == 3


def test_retention_destroying_a_version_drops_it_for_encrypt_by_id(tmp_path: Path) -> None:
    """The sweep is a transition too: what it forgets is forgotten under every name of the key."""
    now = [1_700_000_000.0]
    with Keyring(tmp_path / "home", clock=lambda: now[0]) as ring:
        kid = ring.create("k", "AES-256-GCM")
        ring.encrypt(kid, b"warm")
        ring.rotate("k")
        assert _version_of(ring.encrypt(kid, b"x")) == 2
        now[0] += ring.config.dual_window_seconds + ring.config.destroy_after_seconds + 1
        assert ring.enforce_retention() == [(kid, 1)]
        assert _version_of(ring.encrypt(kid, b"x")) == 2


# -- F4 (keyring API) ----------------------------------------------------------------------------

SURROGATE = "k\udcff"

CALLS: list[tuple[str, str, Callable[[Keyring], Any]]] = [
    ("encrypt name", "name", lambda r: r.encrypt(SURROGATE, b"x")),
    ("rotate ref", "name", lambda r: r.rotate(SURROGATE)),
    ("rotate reason", "reason", lambda r: r.rotate("k", reason="\udcff")),
    ("describe", "name", lambda r: r.describe(SURROGATE)),
    ("revoke ref", "name", lambda r: r.revoke(SURROGATE, "r")),
    ("revoke reason", "reason", lambda r: r.revoke("k", "bad \udcff")),
    ("destroy", "name", lambda r: r.destroy(SURROGATE)),
    ("get", "name", lambda r: r.get(SURROGATE)),
    ("unused_for", "name", lambda r: r.unused_for(SURROGATE, 1)),
    ("decrypt_counts", "name", lambda r: r.decrypt_counts(SURROGATE, 1)),
    ("grant_rewrap reason", "reason", lambda r: r.grant_rewrap("k", "k", reason="\udcff")),
    ("grant_rewrap revoked", "revoked", lambda r: r.grant_rewrap(SURROGATE, "k", reason="r")),
]


@pytest.mark.parametrize(("field", "call"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_a_lone_surrogate_is_a_typed_refusal_naming_the_field(ring: Keyring, field: str,
                                                             call: Callable[[Keyring], Any]) -> None:
    kid = ring.create("k", "AES-256-GCM")
    blob = ring.encrypt("k", b"hi")
    with pytest.raises(PolicyError) as info:
        call(ring)
    message = str(info.value)
    assert message.startswith(f"XPS_ERR_POLICY: {field}:"), message
    assert "\udcff" not in message and "udcff" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    info_k = ring.describe(kid)
    assert info_k.state.value == "active" and info_k.active_version == 1  # nothing changed
    assert ring.decrypt(blob) == b"hi"


def test_a_lone_surrogate_in_a_policy_change_reason_is_refused(ring: Keyring) -> None:
    from xpscerpto.config import XpsConfig

    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: reason:"):
        ring.apply_policy(XpsConfig(), reason="\udcff")


# -- F5 ------------------------------------------------------------------------------------------


def _forbidding_engine() -> xps_api.Engine:
    return xps_api.Engine(xps_api.EngineConfig(policy=xps_api.Policy(forbid=("aes128",))))


def test_create_and_rotate_refuse_an_aead_the_engine_forbids(tmp_path: Path) -> None:
    with Keyring(tmp_path / "home", engine=_forbidding_engine()) as ring:
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: algorithm: AES-128-GCM .*forbidden"):
            ring.create("w", "AES-128-GCM")
        assert [k.name for k in ring.list()] == []
        ring.create("k", "AES-256-GCM")
        with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: algorithm: AES-128-GCM .*forbidden"):
            ring.rotate("k", algorithm="AES-128-GCM")
        info = ring.describe("k")
        assert info.active_version == 1 and len(info.versions) == 1
        assert ring.decrypt(ring.encrypt("k", b"ok")) == b"ok"
        assert ring.rotate("k", algorithm="CHACHA20-POLY1305") == 2  # a routable one still moves it


def test_the_cli_refuses_an_aead_the_recorded_policy_forbids(tmp_path: Path) -> None:
    home, cfg = tmp_path / "home", tmp_path / "forbid.yaml"
    cfg.write_text("crypto:\n  policy:\n    forbid: [AES-128-GCM]\n")
    ok(xps(home, "init", config=cfg))
    ok(xps(home, "key", "create", "k", config=cfg))
    refused(xps(home, "key", "rotate", "k", "--algorithm", "AES-128-GCM", config=cfg), "algorithm: AES-128-GCM",
            "forbidden")
    refused(xps(home, "key", "create", "w", "--algo", "AES-128-GCM", config=cfg), "algorithm: AES-128-GCM",
            "forbidden")
    # Raw bytes, not xps()'s text mode (its newline translation would turn a \r in the blob into \n).
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home), "--config", str(cfg), "key"]
    blob = subprocess.run([*cmd, "encrypt", "k"], input=b"secret", capture_output=True, check=True).stdout
    assert subprocess.run([*cmd, "decrypt"], input=blob, capture_output=True, check=True).stdout == b"secret"
    assert [e["event"] for e in events(home) if e["event"] in ("KEY_CREATE", "KEY_ROTATE")] == ["KEY_CREATE"]
