"""Loader for Project Wycheproof vector files (one JSON format, many schemas).

Yields one :class:`WycheproofCase` per test with its group parameters merged in and every
hex field decoded, so tests can be parametrised directly over the cases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WycheproofCase", "load_wycheproof"]

# Fields that are not hex byte strings in any schema we read.
_NOT_HEX = frozenset({"tcId", "comment", "flags", "result", "size", "type", "source",
                      "keySize", "ivSize", "tagSize", "parameterSet", "curve",
                      "publicKeyPem", "publicKeyJwk", "privateKeyPem", "publicKeyDer",
                      "privateKeyPkcs8", "privateKeyJwk"})


@dataclass(frozen=True, slots=True)
class WycheproofCase:
    """One Wycheproof test: ``result`` is ``valid``, ``invalid`` or ``acceptable``."""

    file: str
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    result: str
    group: dict[str, Any]
    data: dict[str, Any]

    @property
    def id(self) -> str:
        """A stable pytest id: ``file#tcId``."""
        return f"{self.file.removesuffix('_test.json')}#{self.tc_id}"


def _decode(key: str, value: Any) -> Any:
    if key in _NOT_HEX or not isinstance(value, str):
        return value
    try:
        return bytes.fromhex(value)
    except ValueError:
        return value


def load_wycheproof(path: str | Path) -> Iterator[WycheproofCase]:
    """Yield every test in a Wycheproof file, hex fields decoded to ``bytes``."""
    p = Path(path)
    doc = json.loads(p.read_text())
    for group in doc["testGroups"]:
        params = {k: _decode(k, v) for k, v in group.items() if k != "tests"}
        if isinstance(params.get("publicKey"), dict):  # EdDSA groups nest the raw key
            params["publicKey"] = _decode("pk", params["publicKey"]["pk"])
        for test in group["tests"]:
            data = {k: _decode(k, v) for k, v in test.items()}
            yield WycheproofCase(
                file=p.name,
                tc_id=int(test["tcId"]),
                comment=str(test.get("comment", "")),
                flags=tuple(test.get("flags", ())),
                result=str(test["result"]),
                group=params,
                data=data,
            )
