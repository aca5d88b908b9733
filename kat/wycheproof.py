"""Loader for Project Wycheproof vector files (one JSON format, many schemas).

Yields one :class:`WycheproofCase` per test with its group parameters merged in and every
hex field decoded, so tests can be parametrised directly over the cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpscerpto._stored_file import read_stored
from xpscerpto.errors import PolicyError

from .selftest import json_document

__all__ = ["WycheproofCase", "load_wycheproof"]

#: The largest upstream file is under 2 MB (ML-DSA verify); a file past this is not one.
MAX_WYCHEPROOF_FILE = 32 << 20

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


def _decode(where: str, key: str, value: Any) -> Any:
    if key in _NOT_HEX or not isinstance(value, str):
        return value
    try:
        return bytes.fromhex(value)
    except ValueError:
        # Kept as text, an 'invalid' vector would then fail for a reason other than its own.
        raise PolicyError(f"{where}.{_field(key)}: expected hex digits") from None


def _field(key: str) -> str:
    # A field name from the file, shown only if it looks like one.
    return key if len(key) <= 32 and key.isascii() and key.isidentifier() else "a field"


def load_wycheproof(path: str | Path) -> Iterator[WycheproofCase]:
    """Yield every test in a Wycheproof file, hex fields decoded to ``bytes``.

    Raises:
        PolicyError: naming the file, group, test and field (never their content): unreadable,
            larger than :data:`MAX_WYCHEPROOF_FILE`, not JSON, not the Wycheproof shape, or a
            hex field that is not hex. The whole file is checked before the first case.
    """
    return iter(_cases(Path(path)))


def _cases(p: Path) -> list[WycheproofCase]:
    name = f"Wycheproof file {str(p)!r}"
    try:
        raw = read_stored(p, MAX_WYCHEPROOF_FILE)  # never a FIFO, /dev/zero or a huge file
    except OSError as exc:
        raise PolicyError(f"{name}: unreadable ({exc.strerror})") from None
    doc = json_document(raw, name)
    groups = doc.get("testGroups") if isinstance(doc, dict) else None
    if not isinstance(groups, list):
        raise PolicyError(f"{name}: expected an object with a 'testGroups' list")
    out = []
    for g, group in enumerate(groups):
        where = f"{name}: testGroups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("tests"), list):
            raise PolicyError(f"{where}: expected an object with a 'tests' list")
        params = {k: _decode(where, k, v) for k, v in group.items() if k != "tests"}
        if isinstance(params.get("publicKey"), dict):  # EdDSA groups nest the raw key
            pk = params["publicKey"].get("pk")
            if not isinstance(pk, str):
                raise PolicyError(f"{where}.publicKey.pk: expected hex digits")
            params["publicKey"] = _decode(f"{where}.publicKey", "pk", pk)
        for t, test in enumerate(group["tests"]):
            at = f"{where}.tests[{t}]"
            if not isinstance(test, dict):
                raise PolicyError(f"{at}: expected an object")
            tc_id, result, comment, flags = test.get("tcId"), test.get("result"), test.get("comment", ""), \
                test.get("flags", [])
            if type(tc_id) is not int:
                raise PolicyError(f"{at}.tcId: expected an int")
            if result not in ("valid", "invalid", "acceptable"):
                raise PolicyError(f"{at}.result: expected valid, invalid or acceptable")
            if not isinstance(comment, str):
                raise PolicyError(f"{at}.comment: expected a str")
            if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
                raise PolicyError(f"{at}.flags: expected a list of str")
            out.append(WycheproofCase(file=p.name, tc_id=tc_id, comment=comment, flags=tuple(flags),
                                      result=result, group=params,
                                      data={k: _decode(at, k, v) for k, v in test.items()}))
    return out
