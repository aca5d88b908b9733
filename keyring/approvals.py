"""k-of-n operator approvals for dangerous changes.

An operator registers an Ed25519 public key (``xps operator add NAME.pub``; the first ones at
``xps init``, later ones with the current approvals). A request is a canonical JSON document
naming the action, its subject, the reason, whether it is an emergency, a random nonce, when it
was created and its expiry; approvers sign its exact bytes. The keyring accepts a request only
with enough distinct registered signatures, before expiry, for the very change asked, and only
once (its nonce is consumed in the change's own database transaction). Since the expiry is the
requester's to write, the keyring also refuses one that stays open longer than the home's
``approvals.request_ttl`` after its signed creation time, or that was created in the future.

Actions and what ``key_id`` names: ``revoke`` and ``destroy`` (a key; ``version`` for one
version; ``emergency`` for the emergency revoke and the retention-bypassing destroy),
``policy`` (``policy:<digest>`` of the change to the home's recorded policy),
``operator-add`` / ``operator-remove`` (the operator's key id) and ``rewrap`` (``<revoked key
id>:<successor key id>``, re-encrypting a revoked key's blobs). Every field is checked when a
request is built or read — the action is one of :data:`ACTIONS`, the subject has its action's
format — so messages and ``xps key approve`` can show them: they are never arbitrary bytes.

Request bundle file::

    {"request": {...}, "signatures": [{"keyid": "...", "sig": "<hex>"}]}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
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

__all__ = ["ACTIONS", "SUBJECTS", "ApprovalRequest", "Approvals", "OperatorRegistry", "policy_digest"]

#: Version 2 added the signed ``created`` time, version 3 the ``keyring`` the request is for;
#: an earlier request lacks one of them and is refused.
_FORMAT = "xps-approval/3"
_OLD_FORMATS = ("xps-approval/1", "xps-approval/2")
_FIELDS = frozenset({"format", "action", "key_id", "version", "reason", "emergency", "nonce", "created", "expires",
                     "keyring", "policy"})
_MAX_POLICY = 1 << 16  # bytes of a policy request's old and new policy as JSON (a few dozen keys)
#: A keyring's id (Keyring.keyring_id): 128 bits of an HMAC under its integrity key.
_KEYRING = re.compile("[0-9a-f]{32}")
_MAX_FILE = 1 << 20  # a bundle or registry is a few kilobytes
#: What a request may ask for.
ACTIONS = ("revoke", "destroy", "policy", "operator-add", "operator-remove", "rewrap")
_KEY = "[0-9a-f]{16}"  # a keyring key id (8 random bytes)
#: The subject each action names: a key id, the revoked and successor key ids, the SHA-256 of a
#: policy change (Keyring.policy_digest), or an operator key id (signing.key_id: 32 hex digits).
SUBJECTS = MappingProxyType({
    "revoke": re.compile(_KEY), "destroy": re.compile(_KEY), "rewrap": re.compile(f"{_KEY}:{_KEY}"),
    "policy": re.compile("policy:[0-9a-f]{64}"), "operator-add": re.compile("[0-9a-f]{32}"),
    "operator-remove": re.compile("[0-9a-f]{32}"),
})
_NONCE = re.compile("[0-9a-f]{32}")
_MAX_REASON = 1000  # characters: a ticket reference and a sentence, shown to every approver
_MAX_VERSION = 2**31 - 1  # the keyring's highest version number
#: Times are seconds since the epoch before the year 10000, so every one prints as a UTC date.
_MAX_TIME = 253402300800.0
#: How far ahead of the keyring's clock a request's creation time may be (hosts' clocks differ
#: by a little).
CLOCK_SKEW = 300.0
#: ``created + ttl`` as written, minus ``created``, may differ from ``ttl`` by a float rounding.
_TTL_ROUNDING = 1.0


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def policy_digest(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What an approval of a policy change names: ``policy:`` + the SHA-256 of the change, in hex.

    All 256 bits: with fewer (64 once), two policy files crafted to collide would let an
    approval of a harmless change apply a loosening one.
    """
    doc = json.dumps([dict(old), dict(new)], sort_keys=True, separators=(",", ":")).encode()
    return "policy:" + hashlib.sha256(doc).hexdigest()


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


def _bad(field: str, expected: str) -> PolicyError:
    # Names the field, never its value: a bundle is anyone's file.
    return PolicyError(f"approvals.request.{field}: malformed approval request ({expected})")


def _time(value: object, field: str) -> float:
    """Seconds since the epoch: an int or float, finite, in 0 .. the year 10000."""
    # NaN would compare as never expired, a 400-digit int overflows, a bool is no time.
    if type(value) not in (int, float):
        raise _bad(field, "expected seconds since the epoch")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:
        seconds = math.inf
    if not 0 <= seconds < _MAX_TIME:  # False for NaN as well
        raise _bad(field, "expected finite seconds since the epoch, before the year 10000")
    return seconds


@dataclass(frozen=True)
class ApprovalRequest:
    """What approvers sign: one transition of one key, once, before ``expires``.

    Every field is checked on construction (a PolicyError naming the field, never its value):
    a request built in code is held to what a request file is.
    """

    action: str  # one of ACTIONS
    key_id: str  # the subject, in the format SUBJECTS gives for the action
    reason: str
    expires: float
    nonce: str
    version: int | None = None
    emergency: bool = False
    #: When the request was written (signed). Optional in the signature only so that a request
    #: built without it fails with a PolicyError naming it rather than a TypeError.
    created: float | None = None
    #: The keyring it is for (:attr:`Keyring.keyring_id`), signed: homes of one fleet share
    #: operators and policy files, so without it an approval for one home applied in another
    #: (its nonce is spent only where it is used). Optional here for the same reason as ``created``.
    keyring: str | None = None
    #: A policy request's ``{"old": …, "new": …}`` security policies, which ``key_id`` hashes
    #: (:func:`policy_digest`): what approvers are shown change, not only a hash of it. None
    #: for every other action.
    policy: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if type(self.action) is not str or self.action not in ACTIONS:
            raise _bad("action", f"expected one of {', '.join(ACTIONS)}")
        if type(self.key_id) is not str or not SUBJECTS[self.action].fullmatch(self.key_id):
            raise _bad("key_id", f"not the subject format of a {self.action} request")
        if type(self.reason) is not str or len(self.reason) > _MAX_REASON or not self.reason.isprintable():
            # Printable: approvers read it on a terminal before they sign.
            raise _bad("reason", f"expected printable text of at most {_MAX_REASON} characters")
        if type(self.nonce) is not str or not _NONCE.fullmatch(self.nonce):
            raise _bad("nonce", "expected 32 hex digits")
        if self.version is not None and (type(self.version) is not int or not 1 <= self.version <= _MAX_VERSION):
            raise _bad("version", f"expected null or an int in 1..{_MAX_VERSION}")
        if type(self.emergency) is not bool:
            raise _bad("emergency", "expected true or false")
        if self.created is None:
            raise _bad("created", "missing: the signed time the request was written")
        if type(self.keyring) is not str or not _KEYRING.fullmatch(self.keyring):
            raise _bad("keyring", "expected the 32 hex digits of the keyring it is for")
        self._check_policy()
        object.__setattr__(self, "created", _time(self.created, "created"))
        object.__setattr__(self, "expires", _time(self.expires, "expires"))

    def _check_policy(self) -> None:
        if self.action != "policy":
            if self.policy is not None:
                raise _bad("policy", "expected null for a request that is not a policy change")
            return
        p = self.policy
        if not isinstance(p, Mapping) or set(p) != {"old", "new"} or not all(
                isinstance(p[k], Mapping) for k in ("old", "new")):
            raise _bad("policy", "expected the old and new security policy the request's subject hashes")
        # Plain dicts whatever mapping was given (a request's own read-only one, rebuilt in code).
        plain = {"old": dict(p["old"]), "new": dict(p["new"])}
        try:
            if len(_canonical(plain)) > _MAX_POLICY or policy_digest(plain["old"], plain["new"]) != self.key_id:
                raise _bad("policy", "the old and new policy do not hash to the request's subject")
        except (TypeError, ValueError, RecursionError):  # not JSON data (a set, NaN is fine; a cycle)
            raise _bad("policy", "expected the old and new security policy as JSON data") from None
        object.__setattr__(self, "policy", MappingProxyType(plain))

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(key, old, new) of each setting a policy request changes, sorted (empty otherwise)."""
        if self.policy is None:
            return []
        old, new = self.policy["old"], self.policy["new"]
        return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]

    @classmethod
    def new(cls, action: str, key_id: str, *, reason: str, ttl: float, now: float, keyring: str,
            version: int | None = None, emergency: bool = False,
            policy: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> ApprovalRequest:
        """A fresh request for ``keyring`` (:attr:`Keyring.keyring_id`) with a random nonce,
        created ``now``, open for ``ttl`` seconds; a policy change names its (old, new) policy."""
        if type(ttl) not in (int, float) or not 0 < ttl < _MAX_TIME:
            raise PolicyError("ttl: expected a positive number of seconds")
        created = _time(now, "created")
        detail = None if policy is None else {"old": policy[0], "new": policy[1]}
        return cls(action, key_id, reason, created + ttl, os.urandom(16).hex(), version, emergency, created, keyring,
                   detail)

    def check_open_window(self, now: float, request_ttl: float) -> None:
        """Refuse a request open longer than ``request_ttl`` or created after ``now`` (+ skew).

        ``expires`` is the requester's to write; without this, a request would stay usable for
        as long as its file says (years), whatever the home's ``approvals.request_ttl``. The
        bound runs from the signed ``created`` (approvers see both before they sign), and a
        ``created`` ahead of the keyring's clock cannot stretch it.

        Raises:
            PolicyError: naming ``approvals.request.expires`` or ``approvals.request.created``.
        """
        assert self.created is not None  # __post_init__ refuses a request without one
        if self.expires - self.created > request_ttl + _TTL_ROUNDING:
            raise PolicyError(f"approvals.request.expires: {(self.expires - self.created) / 3600:.1f} h after the "
                              f"request's creation, longer than approvals.request_ttl ({request_ttl / 3600:.1f} h)",
                              reason="approvals")
        if self.created > now + CLOCK_SKEW:
            raise PolicyError(f"approvals.request.created: {self.created - now:.0f} s ahead of this keyring's clock "
                              f"(more than {CLOCK_SKEW:.0f} s: a requester's clock is wrong)", reason="approvals")

    def to_json(self) -> dict[str, Any]:
        """The signed document."""
        return {"format": _FORMAT, "action": self.action, "key_id": self.key_id, "version": self.version,
                "reason": self.reason, "emergency": self.emergency, "nonce": self.nonce, "created": self.created,
                "expires": self.expires, "keyring": self.keyring,
                "policy": None if self.policy is None else {k: dict(v) for k, v in self.policy.items()}}

    def message(self) -> bytes:
        """The exact bytes approvers sign."""
        return _canonical(self.to_json())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ApprovalRequest:
        """Parse a request document strictly (a PolicyError naming the first bad field)."""
        if not isinstance(doc, Mapping):
            raise PolicyError("approvals.request: malformed approval request (expected an object)")
        if doc.get("format") in _OLD_FORMATS:
            raise PolicyError("approvals.request.format: a request written by an earlier release (no signed "
                              "creation time or keyring); write a new one with `xps key request` and have it "
                              "approved again")
        if doc.get("format") != _FORMAT:
            raise _bad("format", f"expected {_FORMAT!r}")
        if set(doc) != _FIELDS:
            raise PolicyError(f"approvals.request: malformed approval request (expected exactly the fields "
                              f"{', '.join(sorted(_FIELDS))})")
        return cls(doc["action"], doc["key_id"], doc["reason"], doc["expires"], doc["nonce"], doc["version"],
                   doc["emergency"], doc["created"], doc["keyring"], doc["policy"])


def _keyid(value: object) -> str:
    if type(value) is not str:  # the bundle is saved sorted by keyid: one type only
        raise TypeError
    return value


@dataclass(frozen=True)
class Approvals:
    """A request with the signatures collected so far."""

    request: ApprovalRequest
    signatures: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Checked here, so the keyring never meets another object where a request should be.
        if not isinstance(self.request, ApprovalRequest):
            raise PolicyError(f"approvals.request: expected an ApprovalRequest, got {type(self.request).__name__}")
        if not isinstance(self.signatures, Mapping) or not all(
                type(k) is str and type(v) is bytes for k, v in self.signatures.items()):
            raise PolicyError("approvals.signatures: expected a mapping of operator key id (str) to signature (bytes)")

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
