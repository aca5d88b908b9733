"""Engine configuration: routing policy, nonce policy, provider preferences.

Built once, validated, frozen. Tables are built from it off the hot path; nothing reads it per
operation. Load from a mapping (or a TOML/JSON file); unknown keys and wrong types are errors
that name the key.

Example:
    >>> cfg = EngineConfig.from_mapping({"policy": {"forbid": ["aes128"]}, "nonce": "auto"})
    >>> cfg.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm"))
    False
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import PolicyError

__all__ = ["EngineConfig", "Policy"]

NonceMode = Literal["auto", "app"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Which operations may be routed.

    Args:
        allow: glob patterns of operation names that may be routed (``None``: all).
        forbid: algorithm tokens or operation globs that must never be routed, e.g.
            ``("sha1", "des", "aes128")`` or ``("aead.aes128*",)``.
    """

    allow: tuple[str, ...] | None = None
    forbid: tuple[str, ...] = ()

    def permits(self, operation: str, tokens: tuple[str, ...]) -> bool:
        """Whether ``operation`` (with its algorithm ``tokens``) may be routed."""
        return self.reason(operation, tokens) is None

    def reason(self, operation: str, tokens: tuple[str, ...]) -> str | None:
        """Why ``operation`` is not permitted, or None."""
        for pattern in self.forbid:
            p = pattern.lower()
            if p in tokens or fnmatch.fnmatchcase(operation, p):
                return f"forbidden by policy (forbid: {pattern!r})"
        if self.allow is not None and not any(fnmatch.fnmatchcase(operation, p) for p in self.allow):
            return "not in the policy allow-list"
        return None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything an engine needs to build routing tables.

    Args:
        policy: allow/forbid lists.
        nonce: ``"auto"`` draws a nonce from the CSPRNG when none is given; ``"app"`` requires
            the application to pass one (and a missing nonce is XPS_ERR_NONCE).
        prefer: operation -> provider name that wins over priority for that operation.
        providers: if set, only these providers are considered (tests, pinning).
        autoload_plugins: load third-party entry points (``None``: follow the env var).
    """

    policy: Policy = field(default_factory=Policy)
    nonce: NonceMode = "auto"
    prefer: Mapping[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] | None = None
    autoload_plugins: bool | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EngineConfig:
        """Validate and build from plain data; raises PolicyError naming the bad key."""
        known = {"policy", "nonce", "prefer", "providers", "autoload_plugins"}
        _no_unknown(data, known, "config")
        policy_data = data.get("policy", {})
        _expect(policy_data, Mapping, "policy")
        _no_unknown(policy_data, {"allow", "forbid"}, "policy")
        allow = policy_data.get("allow")
        if allow is not None:
            allow = tuple(_str_list(allow, "policy.allow"))
        forbid = tuple(_str_list(policy_data.get("forbid", []), "policy.forbid"))
        nonce = data.get("nonce", "auto")
        if nonce not in ("auto", "app"):
            raise PolicyError(f"config key 'nonce': expected 'auto' or 'app', got {nonce!r}")
        prefer = data.get("prefer", {})
        _expect(prefer, Mapping, "prefer")
        for k, v in prefer.items():
            _expect(k, str, "prefer (key)")
            _expect(v, str, f"prefer.{k}")
        providers = data.get("providers")
        if providers is not None:
            providers = tuple(_str_list(providers, "providers"))
        autoload = data.get("autoload_plugins")
        if autoload is not None:
            _expect(autoload, bool, "autoload_plugins")
        return cls(Policy(allow, forbid), nonce, dict(prefer), providers, autoload)

    @classmethod
    def from_file(cls, path: str | Path) -> EngineConfig:
        """Load a ``.toml`` or ``.json`` file (the keyring issue adds the full YAML schema)."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise PolicyError(f"config file {str(p)!r}: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PolicyError(f"config file {str(p)!r}: not valid {p.suffix[1:] or 'json'}: {exc}") from None
        _expect(data, Mapping, "config")
        return cls.from_mapping(data)


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise PolicyError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _expect(value: object, typ: type | tuple[type, ...], key: str) -> None:
    if not isinstance(value, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise PolicyError(f"config key {key!r}: expected {name}, got {type(value).__name__}")


def _str_list(value: object, key: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"config key {key!r}: expected a list of strings")
    return list(value)
