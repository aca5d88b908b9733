"""The cacophony vectors (kat/noise/, Unlicense) through the handshake core and transport,
one test per vector, and ``xps channel vectors`` on files with failures and unsupported ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.channel._patterns import UnsupportedProtocol
from xpscerpto.channel.vectors import VECTOR_FILE, VectorFailure, load_vectors, replay_file, replay_vector
from xpscerpto.cli.main import main

VECTORS = load_vectors(VECTOR_FILE)


def test_the_shipped_file_is_the_documented_subset() -> None:
    names = [v["protocol_name"] for v in VECTORS]
    assert len(names) == len(set(names)) == 236
    assert {n.split("_")[2] for n in names} == {"25519"}
    assert {n.split("_")[3] for n in names} == {"ChaChaPoly", "AESGCM"}
    assert {n.split("_")[4] for n in names} == {"SHA256", "BLAKE2b"}
    assert sum("psk" in n for n in names) == 21 * 4  # every PSK pattern, each of the 4 suites


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_cacophony_vector(vector: dict[str, Any], engine: xps.Engine) -> None:
    replay_vector(vector, engine)


def _one(name: str) -> dict[str, Any]:
    return json.loads(json.dumps(next(v for v in VECTORS if v["protocol_name"] == name)))


@pytest.mark.parametrize(("field", "index"), [("ciphertext", 0), ("ciphertext", 1), ("ciphertext", 3),
                                              ("payload", 4)])
def test_an_altered_vector_fails(field: str, index: int, engine: xps.Engine) -> None:
    v = _one("Noise_XX_25519_ChaChaPoly_SHA256")
    raw = bytearray.fromhex(v["messages"][index][field])
    raw[-1] ^= 1
    v["messages"][index][field] = raw.hex()
    with pytest.raises(VectorFailure):
        replay_vector(v, engine)


def test_a_wrong_handshake_hash_fails_and_a_missing_one_is_fine(engine: xps.Engine) -> None:
    v = _one("Noise_IK_25519_AESGCM_BLAKE2b")
    del v["handshake_hash"]
    replay_vector(v, engine)
    v["handshake_hash"] = "00" * 64
    with pytest.raises(VectorFailure, match="handshake_hash"):
        replay_vector(v, engine)


def test_two_message_vectors_and_fail_vectors(engine: xps.Engine) -> None:
    v = _one("Noise_NNpsk0_25519_ChaChaPoly_SHA256")
    v["messages"] = v["messages"][:2]
    replay_vector(v, engine)
    v["fail"] = True
    with pytest.raises(VectorFailure, match="marked fail passed"):
        replay_vector(v, engine)
    v["messages"][1]["ciphertext"] = "00" + v["messages"][1]["ciphertext"][2:]
    replay_vector(v, engine)  # it fails, as it says


def test_unsupported_protocols_name_their_reason(engine: xps.Engine) -> None:
    for name, reason in [("Noise_XX_448_ChaChaPoly_SHA256", "dh 448"),
                         ("Noise_XX_25519_ChaChaPoly_SHA512", "hash SHA512"),
                         ("Noise_XX_25519_ChaChaPoly_BLAKE2s", "hash BLAKE2s"),
                         ("Noise_XXfallback_25519_ChaChaPoly_SHA256", "modifier fallback"),
                         ("Noise_ZZ_25519_ChaChaPoly_SHA256", "pattern ZZ")]:
        v = _one("Noise_XX_25519_ChaChaPoly_SHA256")
        v["protocol_name"] = name
        with pytest.raises(UnsupportedProtocol) as info:
            replay_vector(v, engine)
        assert info.value.reason == reason


def _write(tmp_path: Path, vectors: list[dict[str, Any]]) -> Path:
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps({"vectors": vectors}))
    return path


def test_xps_channel_vectors_counts_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = [_one("Noise_XX_25519_ChaChaPoly_SHA256"), _one("Noise_KK_25519_AESGCM_SHA256")]
    odd = _one("Noise_NK_25519_ChaChaPoly_SHA256")
    odd["protocol_name"] = "Noise_NK_448_ChaChaPoly_SHA256"
    assert main(["channel", "vectors", str(_write(tmp_path, [*good, odd]))]) == 0
    out = capsys.readouterr().out
    assert "2 passed, 0 failed, 1 unsupported" in out and "unsupported (dh 448): 1" in out
    bad = _one("Noise_XX_25519_ChaChaPoly_SHA256")
    bad["messages"][5]["ciphertext"] = "00" * 40
    assert main(["channel", "vectors", "--json", str(_write(tmp_path, [*good, bad]))]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] == 2 and doc["failed"] == [
        {"protocol": "Noise_XX_25519_ChaChaPoly_SHA256", "reason": "message 5: transport ciphertext differs"}]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"), ("{not json", "not JSON"), ("[]", "'vectors' list"),
    ('{"vectors": [1, 2]}', "'vectors' list"), ('{"vectors": {}}', "'vectors' list")])
def test_xps_channel_vectors_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                content: str | None, message: str) -> None:
    path = tmp_path / "v.json"
    if content is not None:
        path.write_text(content)
    assert main(["channel", "vectors", str(path)]) == 2
    err = capsys.readouterr().err
    assert "XPS_ERR_POLICY" in err and message in err


def test_malformed_vectors_are_failures_not_crashes(tmp_path: Path, engine: xps.Engine) -> None:
    base = _one("Noise_NN_25519_ChaChaPoly_SHA256")
    cases: list[dict[str, Any]] = [
        {**base, "init_ephemeral": "zz"}, {**base, "messages": []}, {**base, "messages": ["x"]},
        {**base, "init_static": 7}, {"messages": base["messages"]}, {**base, "protocol_name": "nonsense"},
        {**base, "init_ephemeral": "00" * 31},
    ]
    report = replay_file(_write(tmp_path, cases), engine)
    assert report.passed == 0 and len(report.failed) == len(cases) and not report
