"""Approval bundles and operator registries read from files: every malformation is a PolicyError."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import ApprovalRequest, Approvals
from xpscerpto.keyring.approvals import OperatorRegistry

DEEP = "[" * 100_000 + "]" * 100_000


def _request() -> dict[str, Any]:
    return ApprovalRequest.new("revoke", "0123456789abcdef", reason="r", ttl=60, now=1_000.0,
                               keyring="0" * 32).to_json()


def _bundle(request: dict[str, Any], signatures: list[Any] | None = None) -> str:
    return json.dumps({"request": request, "signatures": signatures or []})


BUNDLES: dict[str, Callable[[], str]] = {
    "nested too deeply": lambda: DEEP,
    "expires a 400-digit int": lambda: _bundle({**_request(), "expires": 0}).replace(
        '"expires": 0', '"expires": ' + "9" * 400),
    "expires NaN": lambda: _bundle({**_request(), "expires": 0}).replace('"expires": 0', '"expires": NaN'),
    "expires Infinity": lambda: _bundle({**_request(), "expires": 0}).replace('"expires": 0', '"expires": Infinity'),
    "expires a string": lambda: _bundle({**_request(), "expires": "9999999999"}),
    "expires a bool": lambda: _bundle({**_request(), "expires": True}),
    "keyids of two types": lambda: _bundle(_request(), [{"keyid": 1, "sig": "00"}, {"keyid": "a", "sig": "00"}]),
    "keyid a list": lambda: _bundle(_request(), [{"keyid": ["a"], "sig": "00"}]),
    "signature not hex": lambda: _bundle(_request(), [{"keyid": "a", "sig": "zz"}]),
    # Review finding F3: every field is checked before anything shows it.
    "action unknown, with a terminal escape": lambda: _bundle({**_request(), "action": "revoke\n\x1b[2Jzz"}),
    "key_id not a key id": lambda: _bundle({**_request(), "key_id": "zz" * 5000}),
    "key_id of another action": lambda: _bundle({**_request(), "key_id": "policy:" + "ab" * 32}),
    "reason with a terminal escape": lambda: _bundle({**_request(), "reason": "ok\x1b[2Jzz"}),
    "reason too long": lambda: _bundle({**_request(), "reason": "zz" * 501}),
    "nonce not hex": lambda: _bundle({**_request(), "nonce": "zz" * 16}),
    "version a huge int": lambda: _bundle({**_request(), "version": 0}).replace(
        '"version": 0', '"version": ' + "9" * 400),
    "emergency a string": lambda: _bundle({**_request(), "emergency": "zz"}),
    "created missing": lambda: _bundle({k: v for k, v in _request().items() if k != "created"}),
    "created past the year 10000": lambda: _bundle({**_request(), "created": 99999999999999}),
    "request not an object": lambda: _bundle(["zz"]),  # type: ignore[arg-type]
}


def test_a_well_formed_bundle_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(_bundle(_request(), [{"keyid": "a", "sig": "00ff"}]))
    bundle = Approvals.load(path)
    assert bundle.request.expires == 1_060.0 and dict(bundle.signatures) == {"a": b"\x00\xff"}
    bundle.save(tmp_path / "again.json")
    assert Approvals.load(tmp_path / "again.json") == bundle


@pytest.mark.parametrize("case", sorted(BUNDLES))
def test_a_malformed_bundle_is_refused_and_names_nothing_of_its_content(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(BUNDLES[case]())
    with pytest.raises(PolicyError, match="malformed") as ei:
        Approvals.load(path)
    assert "9999" not in str(ei.value) and "zz" not in str(ei.value) and "\x1b" not in str(ei.value)


def test_an_operator_registry_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operators.json"
    path.write_text(DEEP)
    with pytest.raises(PolicyError, match="nested too deeply"):
        OperatorRegistry.load(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("loader", [Approvals.load, OperatorRegistry.load])
def test_a_path_that_is_not_a_regular_file_is_refused_without_blocking(
        tmp_path: Path, kind: str, loader: Callable[[Path], object]) -> None:
    path = tmp_path / "file.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(PolicyError, match="not a regular file"):
        loader(path)
