"""k-of-n operator approvals for dangerous changes.

An operator registers an Ed25519 public key (``xps operator add NAME.pub``; the first ones at
``xps init``, later ones with the current approvals). A request is a canonical JSON document
naming the action, its subject, the reason, whether it is an emergency, a random nonce and an
expiry; approvers sign its exact bytes. The keyring accepts a request only with enough
distinct registered signatures, before expiry, for the very change asked, and only once (its
nonce is consumed in the change's own database transaction).

Actions and what ``key_id`` names: ``revoke`` and ``destroy`` (a key; ``version`` for one
version; ``emergency`` for the emergency revoke and the retention-bypassing destroy),
``policy`` (``policy:<digest>`` of the change to the home's recorded policy),
``operator-add`` / ``operator-remove`` (the operator's key id) and ``rewrap`` (``<revoked key
id>:<successor key id>``, re-encrypting a revoked key's blobs).

Request bundle file::

    {"request": {...}, "signatures": [{"keyid": "...", "sig": "<hex>"}]}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from xpscerpto._atomic import atomic_write
from xpscerpto._stored_file import read_stored
from xpscerpto.errors import PolicyError
from xpscerpto.secret import SecretBytes
from xpscerpto.signing import PublisherKey, key_id, sign, verify

__all__ = ["ACTIONS", "ApprovalRequest", "Approvals", "OperatorRegistry"]

_FORMAT = "xps-approval/1"
_MAX_FILE = 1 << 20  # a bundle or registry is a few kilobytes
#: What a request may ask for.
ACTIONS = ("revoke", "destroy", "policy", "operator-add", "operator-remove", "rewrap")


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class OperatorRegistry:
    """Registered operator keys (key id -> public key and label), stored as JSON."""

    keys: Mapping[str, tuple[bytes, str]] = field(default_factory=lambda: MappingProxyType({}))

    def add(self, key: PublisherKey, label: str = "") -> OperatorRegistry:
        """Register an operator key."""
        keys = dict(self.keys)
        keys[key.keyid] = (key.public_key, label)
        return OperatorRegistry(MappingProxyType(keys))

    @classmethod
    def load(cls, path: str | Path) -> OperatorRegistry:
        """Read the registry; a missing file is empty, any malformation a PolicyError naming the file."""
        p = Path(path)
        where = f"operators {str(p)!r}"
        try:
            doc = json.loads(read_stored(p, _MAX_FILE))  # never a FIFO, /dev/zero or a huge file
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise PolicyError(f"{where}: unreadable ({exc.strerror})") from None
        except ValueError as exc:  # also UnicodeDecodeError
            raise PolicyError(f"{where}: not JSON ({exc})") from None
        except RecursionError:
            raise PolicyError(f"{where}: not JSON (nested too deeply)") from None
        if not isinstance(doc, dict):
            raise PolicyError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != 1:
            raise PolicyError(f"{where}: format must be 1, got {doc.get('format')!r}")
        entries = doc.get("operators")
        if not isinstance(entries, list):
            raise PolicyError(f"{where}: 'operators' must be a list")
        keys: dict[str, tuple[bytes, str]] = {}
        for i, entry in enumerate(entries):
            at = f"{where}: operators[{i}]"
            if not isinstance(entry, dict):
                raise PolicyError(f"{at}: expected an object")
            kid, pk_hex, label = entry.get("keyid"), entry.get("public_key"), entry.get("label", "")
            if not isinstance(kid, str) or not kid:
                raise PolicyError(f"{at}: 'keyid' must be a non-empty string")
            if not isinstance(pk_hex, str) or len(pk_hex) != 64:
                raise PolicyError(f"{at}: 'public_key' must be 64 hex digits")
            try:
                pk = bytes.fromhex(pk_hex)
            except ValueError:
                raise PolicyError(f"{at}: 'public_key' must be 64 hex digits") from None
            if not isinstance(label, str):
                raise PolicyError(f"{at}: 'label' must be a string")
            if key_id(pk) != kid:
                raise PolicyError(f"{at}: key {kid[:12]!r} does not match its public key")
            if kid in keys:
                raise PolicyError(f"{at}: key {kid[:12]!r} is listed twice")
            keys[kid] = (pk, label)
        return cls(MappingProxyType(keys))

    def save(self, path: str | Path) -> None:
        """Write atomically."""
        doc = {"format": 1, "operators": [{"keyid": k, "public_key": pk.hex(), "label": label}
                                          for k, (pk, label) in sorted(self.keys.items())]}
        _write(Path(path), "operators", json.dumps(doc, indent=1).encode() + b"\n", 0o600)


def _write(path: Path, what: str, data: bytes, mode: int) -> None:
    try:
        atomic_write(path, data, mode)
    except OSError as exc:
        raise PolicyError(f"{what} {str(path)!r}: cannot write ({exc.strerror})") from None


@dataclass(frozen=True)
class ApprovalRequest:
    """What approvers sign: one transition of one key, once, before ``expires``."""

    action: str  # one of ACTIONS
    key_id: str
    reason: str
    expires: float
    nonce: str
    version: int | None = None
    emergency: bool = False

    @classmethod
    def new(cls, action: str, key_id: str, *, reason: str, ttl: float, now: float,
            version: int | None = None, emergency: bool = False) -> ApprovalRequest:
        """A fresh request with a random nonce."""
        if action not in ACTIONS:
            raise PolicyError(f"action: expected one of {', '.join(ACTIONS)}, got "
                              f"{action[:20]!r}" if isinstance(action, str) else "action: expected a str")
        return cls(action, key_id, reason, now + ttl, os.urandom(16).hex(), version, emergency)

    def to_json(self) -> dict[str, Any]:
        """The signed document."""
        return {"format": _FORMAT, "action": self.action, "key_id": self.key_id, "version": self.version,
                "reason": self.reason, "emergency": self.emergency, "nonce": self.nonce, "expires": self.expires}

    def message(self) -> bytes:
        """The exact bytes approvers sign."""
        return _canonical(self.to_json())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ApprovalRequest:
        """Parse a request document strictly."""
        try:
            if doc["format"] != _FORMAT or set(doc) != {"format", "action", "key_id", "version", "reason",
                                                        "emergency", "nonce", "expires"}:
                raise ValueError
            version = doc["version"]
            if version is not None and (type(version) is not int or version < 1):
                raise ValueError
            if type(doc["emergency"]) is not bool:
                raise ValueError
            expires = doc["expires"]
            # A number, finite: NaN would compare as never expired, a 400-digit int overflows.
            if type(expires) not in (int, float) or not math.isfinite(expires := float(expires)):
                raise ValueError
            return cls(str(doc["action"]), str(doc["key_id"]), str(doc["reason"]), expires,
                       str(doc["nonce"]), version, doc["emergency"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise PolicyError("approvals.request: malformed approval request") from None


def _keyid(value: object) -> str:
    if type(value) is not str:  # the bundle is saved sorted by keyid: one type only
        raise TypeError
    return value


@dataclass(frozen=True)
class Approvals:
    """A request with the signatures collected so far."""

    request: ApprovalRequest
    signatures: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def signed_by(self, key: PublisherKey, seed: SecretBytes) -> Approvals:
        """Add an operator's signature."""
        sigs = dict(self.signatures)
        sigs[key.keyid] = sign(seed, self.request.message())
        return Approvals(self.request, MappingProxyType(sigs))

    def valid_signers(self, registry: OperatorRegistry) -> frozenset[str]:
        """Distinct registered operators whose signature over the exact request verifies."""
        message = self.request.message()
        return frozenset(k for k, sig in self.signatures.items()
                         if k in registry.keys and verify(registry.keys[k][0], message, sig))

    def to_json(self) -> dict[str, Any]:
        """The bundle file document."""
        return {"request": self.request.to_json(),
                "signatures": [{"keyid": k, "sig": s.hex()} for k, s in sorted(self.signatures.items())]}

    @classmethod
    def load(cls, path: str | Path) -> Approvals:
        """Read a bundle file."""
        p = Path(path)
        try:
            doc = json.loads(read_stored(p, _MAX_FILE))
            sigs = {_keyid(e["keyid"]): bytes.fromhex(e["sig"]) for e in doc["signatures"]}
            request = doc["request"]
        except OSError as exc:
            raise PolicyError(f"approvals {str(p)!r}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, RecursionError):
            raise PolicyError(f"approvals {str(p)!r}: malformed bundle") from None
        return cls(ApprovalRequest.from_json(request), MappingProxyType(sigs))

    def save(self, path: str | Path) -> None:
        """Write atomically (readable by the approvers who pass it along)."""
        _write(Path(path), "approvals", json.dumps(self.to_json(), indent=1).encode() + b"\n", 0o644)
