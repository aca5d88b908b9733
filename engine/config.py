"""Configuration (seed Appendix C): one YAML file, loaded and validated at start, then frozen.

:class:`XpsConfig` is the whole file; each section is a frozen dataclass that the component
owning it reads once (routing tables, keyring, approvals, hot-patch gates, secure channel,
audit journal). Nothing reads the configuration per operation.

Every key is optional and has the default below. An unknown key (at any depth) or a value of
the wrong type or range is a :class:`~xpscerpto.errors.PolicyError` whose message names the
full dotted key (``config key 'keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'``).
``bool`` is never accepted as a number. Durations are seconds (int or float) or strings
``"250ms"``, ``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``, ``"2w"``; sizes are bytes (int) or
strings ``"512B"``, ``"64KiB"``, ``"1MiB"``, ``"2GiB"``, ``"1TiB"``. Neither may be negative.

A configuration never changes in place. :meth:`XpsConfig.emergency_change` returns a *new*
object with one whitelisted key changed (:data:`EMERGENCY_KEYS`), after validating it exactly
like loading does and recording ``CONFIG_EMERGENCY_CHANGE`` in the audit journal.

========================================  ======================  ===================================
key                                       default                 meaning
========================================  ======================  ===================================
``engine.nonce``                          ``auto``                ``auto``: draw a nonce when none is
                                                                  given; ``app``: the caller must
``engine.autoload_plugins``               ``null``                load entry-point plugins (``null``:
                                                                  yes unless
                                                                  ``XPS_DISABLE_PLUGIN_AUTOLOAD``)
``engine.providers``                      ``null``                only these providers (``null``: all)
``engine.prefer``                         ``{}``                  operation -> provider that wins
``engine.policy.allow``                   ``null``                operation globs allowed (``null``:
                                                                  all)
``engine.policy.forbid``                  ``[]``                  algorithm tokens / operation globs
                                                                  never routed
``aead.default_algorithm``                ``AES-256-GCM``         an :class:`~xpscerpto.AEAD` name
``keyring.database``                      ``keyring.db``          relative to the engine home
``keyring.default_algorithm``             ``AES-256-GCM``         AEAD of new keys
``keyring.default_policy``                ``rotate=365d``         policy string of new keys
``keyring.dual_window``                   ``30d``                 retired versions still decrypt
``keyring.usage_block``                   ``16384``               encryptions reserved per DB write
                                                                  (>= 1)
``keyring.max_encryptions.<AEAD>``        see below               rotate before reaching it (>= 1)
``keyring.kek.provider``                  ``file``                ``file`` or ``pkcs11``
``keyring.kek.path``                      ``kek.key``             file provider, relative to home
``keyring.kek.module``                    ``null``                PKCS#11 module path (required for
                                                                  ``pkcs11``)
``keyring.kek.token_label``               ``xps``                 PKCS#11 token label
``keyring.kek.pin_env``                   ``XPS_PKCS11_PIN``      env var *name* holding the PIN
``keyring.kek.key_label``                 ``xps-kek``             PKCS#11 key label
``approvals.revoke``                      ``0``                   distinct operator approvals
``approvals.destroy``                     ``0``                   distinct operator approvals
``approvals.emergency_revoke``            ``0``                   approvals; <= ``approvals.revoke``
``approvals.request_ttl``                 ``1d``                  how long a request stays open (> 0)
``hotpatch.canary_share``                 ``0.1``                 fraction of calls in canary, [0, 1]
``hotpatch.canary_seconds``               ``0``                   canary phase (0 skips it)
``hotpatch.dual_run_seconds``             ``0``                   dual-run phase (0 skips it)
``hotpatch.timeout``                      ``60s``                 validation child wall clock (> 0)
``hotpatch.memory``                       ``2GiB``                validation child memory (> 0)
``hotpatch.max_slowdown``                 ``2.0``                 refuse a slower candidate (>= 1)
``hotpatch.bench_bytes``                  ``64KiB``               benchmark size (0 disables)
``hotpatch.settle``                       ``0.5s``                inbox quiet time before loading
``hotpatch.drain_timeout``                ``30s``                 wait for calls on the old table
``channel.rekey_after_messages``          ``1048576``             rekey after this many (>= 1)
``channel.rekey_after_bytes``             ``1GiB``                rekey after this much (> 0)
``channel.rekey_after``                   ``1h``                  rekey after this long (> 0)
``audit.checkpoint_every``                ``100``                 records per signed checkpoint
                                                                  (>= 1)
``audit.auth_fail_per_minute``            ``10``                  CRYPTO_FAIL_AUTH records kept per minute (>= 1)
========================================  ======================  ===================================

``keyring.max_encryptions`` defaults: 2^32 for AES-128-GCM, AES-256-GCM and CHACHA20-POLY1305
(NIST SP 800-38D bound for random 96-bit nonces), 2^48 for AES-256-GCM-SIV, 2^64-1 for
XCHACHA20-POLY1305 and AEGIS-256. Entries given in the file override these per algorithm;
the others keep their default. ``docs/CONFIGURATION.md`` has the same table and an example.

Example:
    >>> cfg = XpsConfig.from_mapping({"engine": {"policy": {"forbid": ["aes128"]}},
    ...                               "keyring": {"dual_window": "7d"}})
    >>> cfg.engine.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm"))
    False
    >>> cfg.keyring.dual_window_seconds
    604800.0
    >>> try:
    ...     XpsConfig.from_mapping({"keyring": {"kek": {"provider": "hsm"}}})
    ... except PolicyError as e:
    ...     print(e)
    XPS_ERR_POLICY: config key 'keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, cast

from .algorithms import AEAD
from .errors import PolicyError

__all__ = [
    "EMERGENCY_KEYS",
    "AeadDefaults",
    "ApprovalsConfig",
    "AuditConfig",
    "AuditSink",
    "ChannelConfig",
    "EngineConfig",
    "HotpatchConfig",
    "KekConfig",
    "KeyringConfig",
    "Policy",
    "XpsConfig",
    "parse_duration",
    "parse_size",
]

NonceMode = Literal["auto", "app"]
KekProvider = Literal["file", "pkcs11"]

#: Keys that :meth:`XpsConfig.emergency_change` may change at runtime (everything else is fixed
#: for the life of the process).
EMERGENCY_KEYS: frozenset[str] = frozenset({
    "engine.policy.forbid", "engine.policy.allow",
    "hotpatch.max_slowdown", "hotpatch.canary_share",
})

_ENGINE_KEYS = frozenset({"policy", "nonce", "prefer", "providers", "autoload_plugins"})


# --------------------------------------------------------------------------- engine section


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
    """Everything an engine needs to build routing tables (the ``engine:`` section).

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
        return _engine_from_mapping(data, "")

    @classmethod
    def from_file(cls, path: str | Path) -> EngineConfig:
        """Load the engine settings from a file.

        ``.toml`` and ``.json`` (any other suffix is read as JSON) hold the engine keys at
        their root, as ``xps --config`` always accepted; ``.yaml``/``.yml`` is the whole
        Appendix C file (:meth:`XpsConfig.load`), of which the ``engine:`` section is returned.
        """
        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            return XpsConfig.load(p).engine
        data = _read_file(p, "toml" if p.suffix == ".toml" else "json")
        _expect(data, Mapping, "config")
        return cls.from_mapping(cast("Mapping[str, Any]", data))

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (lists, dicts) that :meth:`from_mapping` turns back into an equal config."""
        return {
            "nonce": self.nonce,
            "autoload_plugins": self.autoload_plugins,
            "providers": None if self.providers is None else list(self.providers),
            "prefer": dict(self.prefer),
            "policy": {"allow": None if self.policy.allow is None else list(self.policy.allow),
                       "forbid": list(self.policy.forbid)},
        }


def _engine_from_mapping(data: object, prefix: str) -> EngineConfig:
    where = prefix.rstrip(".") or "config"
    _expect(data, Mapping, where)
    data = cast("Mapping[str, Any]", data)
    _no_unknown(data, _ENGINE_KEYS, prefix)
    policy_data = data.get("policy", {})
    _expect(policy_data, Mapping, f"{prefix}policy")
    _no_unknown(policy_data, {"allow", "forbid"}, f"{prefix}policy.")
    allow = policy_data.get("allow")
    if allow is not None:
        allow = tuple(_str_list(allow, f"{prefix}policy.allow"))
    forbid = tuple(_str_list(policy_data.get("forbid", []), f"{prefix}policy.forbid"))
    nonce = data.get("nonce", "auto")
    if nonce not in ("auto", "app"):
        raise PolicyError(f"config key '{prefix}nonce': expected 'auto' or 'app', got {nonce!r}")
    prefer = data.get("prefer", {})
    _expect(prefer, Mapping, f"{prefix}prefer")
    for k, v in prefer.items():
        _expect(k, str, f"{prefix}prefer (key)")
        _expect(v, str, f"{prefix}prefer.{k}")
    providers = data.get("providers")
    if providers is not None:
        providers = tuple(_str_list(providers, f"{prefix}providers"))
    autoload = data.get("autoload_plugins")
    if autoload is not None:
        _expect(autoload, bool, f"{prefix}autoload_plugins")
    return EngineConfig(Policy(allow, forbid), nonce, MappingProxyType(dict(prefer)), providers, autoload)


# --------------------------------------------------------------------------- the other sections


@dataclass(frozen=True, slots=True)
class AeadDefaults:
    """``aead:`` -- defaults of the raw AEAD layer."""

    default_algorithm: AEAD = AEAD.AES_256_GCM


def _default_max_encryptions() -> Mapping[str, int]:
    two32, two48, two64 = 2**32, 2**48, 2**64 - 1
    return MappingProxyType({
        AEAD.AES_128_GCM.value: two32, AEAD.AES_256_GCM.value: two32, AEAD.CHACHA20_POLY1305.value: two32,
        AEAD.AES_256_GCM_SIV.value: two48, AEAD.XCHACHA20_POLY1305.value: two64, AEAD.AEGIS_256.value: two64,
    })


@dataclass(frozen=True, slots=True)
class KekConfig:
    """``keyring.kek:`` -- where the key-encryption key lives.

    ``pin_env`` is the *name* of the environment variable holding the PKCS#11 PIN; the PIN
    itself never appears in a configuration file.
    """

    provider: KekProvider = "file"
    path: str = "kek.key"
    module: str | None = None
    token_label: str = "xps"  # noqa: S105 -- a token label, not a secret
    pin_env: str = "XPS_PKCS11_PIN"
    key_label: str = "xps-kek"


@dataclass(frozen=True, slots=True)
class KeyringConfig:
    """``keyring:`` -- the managed key store.

    ``max_encryptions`` maps every :class:`~xpscerpto.AEAD` name to the number of encryptions
    after which a key must have been rotated (read-only mapping).
    """

    database: str = "keyring.db"
    default_algorithm: AEAD = AEAD.AES_256_GCM
    default_policy: str = "rotate=365d"
    dual_window_seconds: float = 30 * 86400.0
    usage_block: int = 16384  # one fsynced write per block; a crash wastes at most one block of budget
    max_encryptions: Mapping[str, int] = field(default_factory=_default_max_encryptions)
    kek: KekConfig = field(default_factory=KekConfig)


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    """``approvals:`` -- distinct operator approvals required for dangerous key operations."""

    revoke: int = 0
    destroy: int = 0
    emergency_revoke: int = 0
    request_ttl_seconds: float = 86400.0


@dataclass(frozen=True, slots=True)
class HotpatchConfig:
    """``hotpatch:`` -- capsule validation gates and staging (``Gates``/``StagePlan``/inbox)."""

    canary_share: float = 0.1
    canary_seconds: float = 0.0
    dual_run_seconds: float = 0.0
    timeout_seconds: float = 60.0
    memory_bytes: int = 2 * 1024**3
    max_slowdown: float = 2.0
    bench_bytes: int = 64 * 1024
    settle_seconds: float = 0.5
    drain_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """``channel:`` -- secure-channel rekey limits (whichever is reached first)."""

    rekey_after_messages: int = 1 << 20
    rekey_after_bytes: int = 1024**3
    rekey_after_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit:`` -- journal checkpoints and alert thresholds."""

    checkpoint_every: int = 100
    auth_fail_per_minute: int = 10


class AuditSink(Protocol):
    """What :meth:`XpsConfig.emergency_change` records to (e.g. :class:`~xpscerpto.audit.AuditLog`)."""

    def record(self, event: str, **fields: Any) -> object:
        """Append one event."""
        ...


# --------------------------------------------------------------------------- value parsers

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_RE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_duration(value: object, key: str = "duration") -> float:
    """Seconds from an int/float or a string like ``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``.

    Raises:
        PolicyError: naming ``key`` if the value is not a duration or is negative.

    >>> parse_duration("90m"), parse_duration(2), parse_duration("250ms")
    (5400.0, 2.0, 0.25)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise PolicyError(f"config key {key!r}: expected a duration (seconds, or a string like '45s', "
                          f"'90m', '12h', '30d'), got {_show(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PolicyError(f"config key {key!r}: a duration must be finite and >= 0, got {_show(value)}")
    return seconds


def parse_size(value: object, key: str = "size") -> int:
    """Bytes from an int or a string like ``"64KiB"``, ``"1MiB"``, ``"2GiB"``.

    Raises:
        PolicyError: naming ``key`` if the value is not a size or is negative.

    >>> parse_size("64KiB"), parse_size(512), parse_size("2GiB")
    (65536, 512, 2147483648)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise PolicyError(f"config key {key!r}: expected a size (bytes, or a string like '64KiB', "
                          f"'1MiB', '2GiB'), got {_show(value)}")
    if size < 0:
        raise PolicyError(f"config key {key!r}: a size must be >= 0, got {_show(value)}")
    return size


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float | str):
        return repr(value)
    return type(value).__name__


def _positive(parse: Callable[[object, str], Any]) -> Callable[[object, str], Any]:
    def check(value: object, key: str) -> Any:
        out = parse(value, key)
        if out <= 0:
            raise PolicyError(f"config key {key!r}: must be > 0, got {_show(value)}")
        return out
    return check


def _count(minimum: int = 0) -> Callable[[object, str], int]:
    def parse(value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise PolicyError(f"config key {key!r}: expected an integer, got {_show(value)}")
        if value < minimum:
            raise PolicyError(f"config key {key!r}: must be >= {minimum}, got {value}")
        return value
    return parse


def _number(low: float, high: float = math.inf) -> Callable[[object, str], float]:
    def parse(value: object, key: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise PolicyError(f"config key {key!r}: expected a number, got {_show(value)}")
        out = float(value)
        if not (math.isfinite(out) and low <= out <= high):
            bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            raise PolicyError(f"config key {key!r}: must be {bound}, got {_show(value)}")
        return out
    return parse


def _text(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"config key {key!r}: expected a non-empty string, got {_show(value)}")
    return value


def _optional_text(value: object, key: str) -> str | None:
    return None if value is None else _text(value, key)


def _aead(value: object, key: str) -> AEAD:
    try:
        return AEAD(cast("str", value))
    except (ValueError, TypeError):
        names = ", ".join(a.value for a in AEAD)
        raise PolicyError(f"config key {key!r}: expected an AEAD algorithm ({names}), got {_show(value)}") from None


def _kek_provider(value: object, key: str) -> str:
    if value not in ("file", "pkcs11"):
        raise PolicyError(f"config key {key!r}: expected 'file' or 'pkcs11', got {_show(value)}")
    return value


def _env_name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME_RE.fullmatch(value):
        raise PolicyError(f"config key {key!r}: expected the name of an environment variable "
                          f"(never the PIN itself), got {'a string' if isinstance(value, str) else _show(value)}")
    return value


def _seconds_out(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _same(value: Any) -> Any:
    return value


def _to_str(value: Any) -> Any:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- section schemas


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # name in the file
    attr: str  # dataclass attribute
    parse: Callable[[object, str], Any]
    dump: Callable[[Any], Any] = _same


_DURATION = parse_duration
_SIZE = parse_size

_SECTIONS: dict[str, tuple[type, tuple[_Field, ...]]] = {
    "aead": (AeadDefaults, (_Field("default_algorithm", "default_algorithm", _aead, _to_str),)),
    "keyring": (KeyringConfig, (
        _Field("database", "database", _text),
        _Field("default_algorithm", "default_algorithm", _aead, _to_str),
        _Field("default_policy", "default_policy", _text),
        _Field("dual_window", "dual_window_seconds", _DURATION, _seconds_out),
        _Field("usage_block", "usage_block", _count(1)),
        # max_encryptions and kek are nested; handled in _keyring_from_mapping
    )),
    "approvals": (ApprovalsConfig, (
        _Field("revoke", "revoke", _count()),
        _Field("destroy", "destroy", _count()),
        _Field("emergency_revoke", "emergency_revoke", _count()),
        _Field("request_ttl", "request_ttl_seconds", _positive(_DURATION), _seconds_out),
    )),
    "hotpatch": (HotpatchConfig, (
        _Field("canary_share", "canary_share", _number(0.0, 1.0)),
        _Field("canary_seconds", "canary_seconds", _DURATION, _seconds_out),
        _Field("dual_run_seconds", "dual_run_seconds", _DURATION, _seconds_out),
        _Field("timeout", "timeout_seconds", _positive(_DURATION), _seconds_out),
        _Field("memory", "memory_bytes", _positive(_SIZE)),
        _Field("max_slowdown", "max_slowdown", _number(1.0)),
        _Field("bench_bytes", "bench_bytes", _SIZE),
        _Field("settle", "settle_seconds", _DURATION, _seconds_out),
        _Field("drain_timeout", "drain_timeout_seconds", _DURATION, _seconds_out),
    )),
    "channel": (ChannelConfig, (
        _Field("rekey_after_messages", "rekey_after_messages", _count(1)),
        _Field("rekey_after_bytes", "rekey_after_bytes", _positive(_SIZE)),
        _Field("rekey_after", "rekey_after_seconds", _positive(_DURATION), _seconds_out),
    )),
    "audit": (AuditConfig, (
        _Field("checkpoint_every", "checkpoint_every", _count(1)),
        _Field("auth_fail_per_minute", "auth_fail_per_minute", _count(1)),
    )),
}

_KEK_FIELDS = (
    _Field("provider", "provider", _kek_provider),
    _Field("path", "path", _text),
    _Field("module", "module", _optional_text),
    _Field("token_label", "token_label", _text),
    _Field("pin_env", "pin_env", _env_name),
    _Field("key_label", "key_label", _text),
)
_KEYRING_NESTED = ("max_encryptions", "kek")
_ROOT_KEYS = frozenset({"engine", *_SECTIONS})


def _build(cls: type, schema: tuple[_Field, ...], data: object, prefix: str,
           extra: frozenset[str] = frozenset(), **nested: Any) -> Any:
    _expect(data, Mapping, prefix.rstrip("."))
    data = cast("Mapping[Any, Any]", data)
    _no_unknown(data, {f.key for f in schema} | extra, prefix)
    values = {f.attr: f.parse(data[f.key], prefix + f.key) for f in schema if f.key in data}
    return cls(**values, **nested)


def _dump(obj: object, schema: tuple[_Field, ...]) -> dict[str, Any]:
    return {f.key: f.dump(getattr(obj, f.attr)) for f in schema}


def safe_max_encryptions(algorithm: str) -> int:
    """The most encryptions one key may safely make with ``algorithm`` (random nonces).

    2^32 for 96-bit random nonces (AES-GCM, ChaCha20-Poly1305: NIST SP 800-38D 8.3), 2^48 for
    AES-GCM-SIV (nonce-misuse resistant), unbounded for 192/256-bit nonces.
    """
    return _default_max_encryptions()[algorithm]


def _max_encryptions(data: object, key: str) -> Mapping[str, int]:
    _expect(data, Mapping, key)
    merged = dict(_default_max_encryptions())
    count = _count(1)
    for name, limit in cast("Mapping[Any, Any]", data).items():
        algo = _aead(name, f"{key}.{name}")
        value = count(limit, f"{key}.{name}")
        # Lower is allowed (rotate sooner); higher would let random nonces repeat.
        if value > safe_max_encryptions(algo.value):
            raise PolicyError(f"config key '{key}.{name}': {value} exceeds the safe bound "
                              f"{safe_max_encryptions(algo.value)} for random nonces")
        merged[algo.value] = value
    return MappingProxyType(merged)


def _keyring_from_mapping(data: object) -> KeyringConfig:
    _expect(data, Mapping, "keyring")
    data = cast("Mapping[Any, Any]", data)
    nested: dict[str, Any] = {}
    if "max_encryptions" in data:
        nested["max_encryptions"] = _max_encryptions(data["max_encryptions"], "keyring.max_encryptions")
    if "kek" in data:
        kek = _build(KekConfig, _KEK_FIELDS, data["kek"], "keyring.kek.")
        if kek.provider == "pkcs11" and kek.module is None:
            raise PolicyError("config key 'keyring.kek.module': required when keyring.kek.provider is 'pkcs11' "
                              "(the path of the PKCS#11 module)")
        nested["kek"] = kek
    schema = _SECTIONS["keyring"][1]
    return cast("KeyringConfig", _build(KeyringConfig, schema, data, "keyring.", frozenset(_KEYRING_NESTED),
                                        **nested))


# --------------------------------------------------------------------------- the root


@dataclass(frozen=True, slots=True)
class XpsConfig:
    """The whole configuration file (Appendix C): one frozen object per section.

    Build it with :meth:`load`, :meth:`from_mapping` or :meth:`defaults`; it never changes
    afterwards (see :meth:`emergency_change` for the one audited exception).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    aead: AeadDefaults = field(default_factory=AeadDefaults)
    keyring: KeyringConfig = field(default_factory=KeyringConfig)
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    hotpatch: HotpatchConfig = field(default_factory=HotpatchConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    @classmethod
    def defaults(cls) -> XpsConfig:
        """Every key at its documented default."""
        return cls()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> XpsConfig:
        """Validate plain data (the parsed file) and build; raises PolicyError naming the bad key."""
        _expect(data, Mapping, "config")
        _no_unknown(data, _ROOT_KEYS, "")
        sections: dict[str, Any] = {}
        if "engine" in data:
            sections["engine"] = _engine_from_mapping(data["engine"], "engine.")
        if "keyring" in data:
            sections["keyring"] = _keyring_from_mapping(data["keyring"])
        for name, (section_cls, schema) in _SECTIONS.items():
            if name in data and name != "keyring":
                sections[name] = _build(section_cls, schema, data[name], f"{name}.")
        cfg = cls(**sections)
        if cfg.approvals.emergency_revoke > cfg.approvals.revoke:
            raise PolicyError(f"config key 'approvals.emergency_revoke': must be <= approvals.revoke "
                              f"({cfg.approvals.revoke}); an emergency may need fewer approvals, not more, "
                              f"got {cfg.approvals.emergency_revoke}")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> XpsConfig:
        """Read and validate a configuration file.

        ``.yaml``/``.yml`` (the Appendix C format; duplicate keys are refused, only plain YAML
        types are built), ``.toml`` or ``.json`` with the same structure. An empty YAML file
        is all defaults. For compatibility with the pre-Appendix C ``xps --config`` files, a
        ``.toml``/``.json`` whose top-level keys are all ``engine:`` keys (``policy``,
        ``nonce``, ``prefer``, ``providers``, ``autoload_plugins``) is read as the ``engine:``
        section.

        Raises:
            PolicyError: unreadable file or bad syntax (naming the file), or an invalid key.
        """
        p = Path(path)
        kinds = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
        kind = kinds.get(p.suffix.lower())
        if kind is None:
            raise PolicyError(f"config file {str(p)!r}: unsupported file type {p.suffix or '(none)'!r} "
                              "(use .yaml, .yml, .toml or .json)")
        data = _read_file(p, kind)
        if data is None and kind == "yaml":
            data = {}
        if not isinstance(data, Mapping):
            raise PolicyError(f"config file {str(p)!r}: expected a mapping of sections at the top level, "
                              f"got {_show(data)}")
        if kind != "yaml" and data and set(data) <= _ENGINE_KEYS:
            data = {"engine": data}
        return cls.from_mapping(data)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data (durations in seconds, sizes in bytes, lists, dicts).

        ``XpsConfig.from_mapping(cfg.to_mapping()) == cfg``; the result can be written with
        ``yaml.safe_dump`` or ``json.dumps``.
        """
        out: dict[str, Any] = {"engine": self.engine.to_mapping()}
        for name, (_, schema) in _SECTIONS.items():
            out[name] = _dump(getattr(self, name), schema)
        out["keyring"]["max_encryptions"] = dict(self.keyring.max_encryptions)
        out["keyring"]["kek"] = _dump(self.keyring.kek, _KEK_FIELDS)
        return out

    def get(self, key: str) -> Any:
        """The plain value of a dotted key as :meth:`to_mapping` shows it (``"approvals.destroy"``)."""
        node: Any = self.to_mapping()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PolicyError(f"config key {key!r}: no such key")
            node = node[part]
        return node

    def emergency_change(self, key: str, value: Any, *, operator: str, reason: str,
                         audit: AuditSink) -> XpsConfig:
        """An audited runtime change of one whitelisted key; returns a NEW configuration.

        Only :data:`EMERGENCY_KEYS` may change. The value is validated exactly as loading
        would (including cross-key rules), then ``CONFIG_EMERGENCY_CHANGE`` is recorded with
        ``key``, ``old``, ``new``, ``operator`` and ``reason``; if recording fails, nothing
        changes. ``self`` is never modified.

        Raises:
            PolicyError: the key is not changeable at runtime, the value is invalid, or the
                operator/reason is missing.
        """
        if key not in EMERGENCY_KEYS:
            raise PolicyError(f"config key {key!r}: not changeable at runtime "
                              f"(emergency changes allowed for: {', '.join(sorted(EMERGENCY_KEYS))})")
        for name, given in (("operator", operator), ("reason", reason)):
            if not isinstance(given, str) or not given.strip():
                raise PolicyError(f"emergency change of {key!r}: {name} must be a non-empty string")
        data = self.to_mapping()
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        old = node[leaf]
        node[leaf] = value
        new_cfg = XpsConfig.from_mapping(data)
        new = new_cfg.get(key)
        audit.record("CONFIG_EMERGENCY_CHANGE", key=key, old=old, new=new, operator=operator, reason=reason)
        return new_cfg


# --------------------------------------------------------------------------- files and helpers


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k, 0)
        out[k] = v
    return out


def _read_file(p: Path, kind: str) -> object:
    """Parse ``p`` as ``kind`` (yaml/toml/json); every failure is a PolicyError naming the file."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"config file {str(p)!r}: {exc.strerror}") from None
    try:
        text = raw.decode()
        if kind == "yaml":
            from ._yaml import DuplicateKey, load_strict

            try:
                return load_strict(text)
            except DuplicateKey as dup:
                raise _DuplicateKey(dup.key, dup.line) from None
        if kind == "toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_json_pairs)
    except _DuplicateKey as dup:
        at = f" (line {dup.line})" if dup.line else ""
        raise PolicyError(f"config file {str(p)!r}: duplicate key {dup.key!r}{at}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"config file {str(p)!r}: not valid {kind}: {exc}") from None
    except Exception as exc:  # yaml's errors: importing yaml only to name them would cost every import
        from ._yaml import describe_error

        described = describe_error(exc)
        if described is None:
            raise
        raise PolicyError(f"config file {str(p)!r}: not valid yaml: {described}") from None


def _no_unknown(data: Mapping[Any, Any], known: set[str] | frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            at = f" at '{prefix}{key}'" if prefix else ""
            raise PolicyError(f"config: unknown key {key!r}{at} (known: {', '.join(sorted(known))})")


def _expect(value: object, typ: type | tuple[type, ...], key: str) -> None:
    if not isinstance(value, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise PolicyError(f"config key {key!r}: expected {name}, got {_type_name(value)}")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _str_list(value: object, key: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"config key {key!r}: expected a list of strings")
    return list(value)

