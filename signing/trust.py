"""The trust store: pinned publisher keys, per-key operation allow-lists, a k-of-n threshold.

Pure data plus an atomic JSON file. :meth:`TrustStore.verify` answers "do at least
``threshold`` distinct pinned keys, each allowed to provide every operation of this capsule,
sign these exact manifest bytes?" — the single provenance question of the updater.
"""

from __future__ import annotations

import enum
import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import PolicyError

from .keys import PublisherKey, is_publisher_key, key_id, verify

__all__ = ["Rejection", "TrustStore", "TrustedKey", "VerificationResult"]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A pinned publisher key and the operations (globs) it may provide."""

    keyid: str
    public_key: bytes
    ops: tuple[str, ...]
    label: str = ""

    def allows(self, operations: Iterable[str]) -> bool:
        """Whether every operation matches one of this key's globs."""
        return all(any(fnmatch.fnmatchcase(op, g) for g in self.ops) for op in operations)


class Rejection(enum.Enum):
    """Why one signature does not count towards the threshold."""

    UNTRUSTED = "not a trusted key"
    BAD_SIGNATURE = "bad signature"
    NOT_ALLOWED = "not allowed to provide the operations"


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """How many trusted keys validly signed, against the threshold.

    ``signed``: key ids that count; ``rejected``: key id -> why it does not count (one line);
    ``kinds``: key id -> the :class:`Rejection` behind that line (what code decides on).
    """

    threshold: int
    signed: frozenset[str]
    rejected: Mapping[str, str]
    kinds: Mapping[str, Rejection] = field(default_factory=lambda: MappingProxyType({}))

    def __bool__(self) -> bool:
        return len(self.signed) >= self.threshold

    def describe(self) -> str:
        """One line: ``signed by 1/2 required keys (abcd: not allowed to provide kex.x25519)``."""
        detail = "; ".join(f"{k[:12]}: {why}" for k, why in sorted(self.rejected.items()))
        return (f"signed by {len(self.signed)}/{self.threshold} required trusted keys"
                + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class TrustStore:
    """Pinned keys and the signature threshold. Immutable; ``add``/``remove`` return a new store."""

    keys: Mapping[str, TrustedKey] = field(default_factory=lambda: MappingProxyType({}))
    threshold: int = 1

    def add(self, key: PublisherKey, ops: Iterable[str], label: str = "") -> TrustStore:
        """Pin ``key`` for operations matching ``ops`` (globs such as ``aead.*``)."""
        ops = tuple(ops)
        if not ops:
            raise PolicyError("ops: a trusted key must be allowed at least one operation glob")
        if not is_publisher_key(key.public_key):
            raise PolicyError(f"key {key.keyid[:12]}: not a valid Ed25519 public key "
                              "(small order, or not on the curve)")
        keys = dict(self.keys)
        keys[key.keyid] = TrustedKey(key.keyid, key.public_key, ops, label)
        return replace(self, keys=MappingProxyType(keys))

    def remove(self, keyid: str) -> TrustStore:
        """Unpin a key."""
        if keyid not in self.keys:
            raise PolicyError(f"keyid: {keyid!r} is not in the trust store")
        keys = dict(self.keys)
        del keys[keyid]
        return replace(self, keys=MappingProxyType(keys))

    def with_threshold(self, k: int) -> TrustStore:
        """Require ``k`` distinct signatures."""
        if k < 1:
            raise PolicyError(f"threshold: must be at least 1, got {k}")
        return replace(self, threshold=k)

    def verify(self, manifest_bytes: bytes, signatures: Mapping[str, bytes],
               operations: Iterable[str]) -> VerificationResult:
        """Count distinct pinned keys that validly signed and may provide ``operations``."""
        ops = tuple(operations)
        signed: set[str] = set()
        rejected: dict[str, str] = {}
        kinds: dict[str, Rejection] = {}
        for keyid, sig in signatures.items():
            key = self.keys.get(keyid)
            if key is None:
                kinds[keyid], rejected[keyid] = Rejection.UNTRUSTED, Rejection.UNTRUSTED.value
            elif not verify(key.public_key, manifest_bytes, sig):
                kinds[keyid], rejected[keyid] = Rejection.BAD_SIGNATURE, Rejection.BAD_SIGNATURE.value
            elif not key.allows(ops):
                denied = [op for op in ops if not key.allows((op,))]
                kinds[keyid], rejected[keyid] = Rejection.NOT_ALLOWED, f"not allowed to provide {', '.join(denied)}"
            else:
                signed.add(keyid)
        return VerificationResult(self.threshold, frozenset(signed), MappingProxyType(rejected),
                                  MappingProxyType(kinds))

    # -- persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        """The trust file document."""
        return {"format": 1, "threshold": self.threshold,
                "keys": [{"keyid": k.keyid, "public_key": k.public_key.hex(), "ops": list(k.ops),
                          "label": k.label} for k in sorted(self.keys.values(), key=lambda k: k.keyid)]}

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        """Read the trust file; a missing file is an empty store (threshold 1)."""
        p = Path(path)
        try:
            doc = json.loads(read_stored(p))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            raise PolicyError(f"trust store {str(p)!r}: unreadable: {type(exc).__name__}") from None
        return cls.from_json(doc, f"trust store {str(p)!r}")

    @classmethod
    def from_json(cls, doc: Any, where: str = "trust store") -> TrustStore:
        """Parse a trust document (:meth:`to_json`'s shape); PolicyError naming ``where`` if malformed."""
        try:
            if doc.get("format") != 1:
                raise PolicyError(f"{where}: format must be 1")
            threshold = doc["threshold"]
            if type(threshold) is not int or threshold < 1:
                raise PolicyError(f"{where}: threshold must be an integer >= 1, got {threshold!r}")
            keys = {}
            for k in doc["keys"]:
                pk = bytes.fromhex(k["public_key"])
                if len(pk) != 32 or key_id(pk) != k["keyid"]:
                    raise PolicyError(f"{where}: key {str(k['keyid'])[:12]} does not match its public key")
                if not is_publisher_key(pk):
                    raise PolicyError(f"{where}: key {k['keyid'][:12]} is not a valid Ed25519 public key "
                                      "(small order, or not on the curve)")
                ops = k["ops"]
                if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
                    raise PolicyError(f"{where}: key {k['keyid'][:12]}: ops must be a non-empty list of globs")
                keys[k["keyid"]] = TrustedKey(k["keyid"], pk, tuple(ops), str(k.get("label", "")))
            return cls(MappingProxyType(keys), threshold)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyError(f"{where}: malformed ({exc})") from None

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file in the same folder, fsync, rename)."""
        atomic_write(Path(path), json.dumps(self.to_json(), indent=1).encode() + b"\n")

