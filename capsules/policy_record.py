"""The policy in force when a capsule is enabled or rolled back, as an audit record names it.

Workflow 4's fifth gate asks that PATCH_ENABLE / PATCH_ROLLBACK say *under which policy* the
change happened, so an auditor can tell later whether a capsule went live under a trust store or
configuration that has since changed. Digests, not copies: the trust file and the configuration
can be large, and the journal only has to let someone match them against a kept copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from xpscerpto.signing import TrustStore

__all__ = ["config_digest", "policy_fields", "trust_digest"]


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_plain).encode()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return repr(value)


def trust_digest(trust: TrustStore) -> str:
    """SHA-256 over the trust document in canonical JSON (key order and spacing do not count)."""
    return hashlib.sha256(_canonical(trust.to_json())).hexdigest()


def config_digest(*parts: Any) -> str:
    """SHA-256 over the canonical JSON of the configuration parts that govern hot-patching."""
    return hashlib.sha256(_canonical(list(parts))).hexdigest()


def policy_fields(trust: TrustStore, publishers: Iterable[str], operations: Iterable[str],
                  config: str) -> dict[str, Any]:
    """The ``policy`` field of a PATCH_ENABLE / PATCH_ROLLBACK record.

    ``publishers`` are the key ids that signed the capsule when known; otherwise (an offline
    rollback, a capsule whose signers were not loaded here) the pins that may provide
    ``operations`` are named, which is what would let such a capsule through.

    Example:
        >>> f = policy_fields(TrustStore(), [], ["aead.aes256gcm"], config_digest({}))
        >>> sorted(f)
        ['config_digest', 'pins', 'threshold', 'trust_digest']
    """
    ops = tuple(operations)
    wanted = [k for k in publishers if k in trust.keys]
    if not wanted:
        wanted = [k.keyid for k in trust.keys.values() if k.allows(ops)]
    return {
        "trust_digest": trust_digest(trust),
        "threshold": trust.threshold,
        "pins": [{"keyid": k, "allow": list(trust.keys[k].ops)} for k in sorted(wanted)],
        "config_digest": config,
    }
