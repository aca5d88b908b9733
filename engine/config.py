"""Configuration (seed Appendix C): the file loader only.

It reads one YAML (or TOML/JSON) file, validates it, and composes the sections the subsystems
own, each a frozen dataclass beside its code:

=============  ===========================================  ==========================
section        class                                        owner
=============  ===========================================  ==========================
``engine:``    :class:`~xpscerpto.settings.EngineConfig`    routing (core)
``aead:``      :class:`~xpscerpto.settings.AeadDefaults`    raw AEAD API (core)
``keyring:``   :class:`~xpscerpto.keyring.config.KeyringConfig`  keyring
``approvals:`` :class:`~xpscerpto.keyring.config.ApprovalsConfig`  keyring
``hotpatch:``  :class:`~xpscerpto.capsules.config.HotpatchConfig`  capsules
``channel:``   :class:`~xpscerpto.channel.config.ChannelConfig`  secure channel
``audit:``     :class:`~xpscerpto.audit.config.AuditConfig`  audit journal
=============  ===========================================  ==========================

Every key is optional and has the default below (``docs/CONFIGURATION.md`` has the same
table and an example). An unknown key (at any depth) or a value of the wrong type or range is
a :class:`~xpscerpto.errors.PolicyError` whose message names the full dotted key
(``config key 'keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'``). ``bool`` is
never accepted as a number. Durations are seconds (int or float) or strings ``"250ms"``,
``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``, ``"2w"``; sizes are bytes (int) or strings
``"512B"``, ``"64KiB"``, ``"1MiB"``, ``"2GiB"``, ``"1TiB"``. Neither may be negative.

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

A configuration never changes in place. :meth:`XpsConfig.emergency_change` returns a *new*
object with one whitelisted key changed (:data:`EMERGENCY_KEYS`), after validating it exactly
like loading does and recording ``CONFIG_EMERGENCY_CHANGE`` in the audit journal.

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

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xpscerpto.audit.config import AuditConfig
from xpscerpto.capsules.config import HotpatchConfig
from xpscerpto.channel.config import ChannelConfig
from xpscerpto.keyring.config import ApprovalsConfig, KekConfig, KeyringConfig, safe_max_encryptions

from ._config_fields import expect, no_unknown, parse_duration, parse_size, show
from .errors import PolicyError
from .settings import AeadDefaults, EngineConfig, Policy

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
    "read_file",
    "safe_max_encryptions",
]

#: Keys that :meth:`XpsConfig.emergency_change` may change at runtime (everything else is fixed
#: for the life of the process).
EMERGENCY_KEYS: frozenset[str] = frozenset({
    "engine.policy.forbid", "engine.policy.allow",
    "hotpatch.max_slowdown", "hotpatch.canary_share",
})


class AuditSink(Protocol):
    """What :meth:`XpsConfig.emergency_change` records to (e.g. :class:`~xpscerpto.audit.AuditLog`)."""

    def record(self, event: str, **fields: Any) -> object:
        """Append one event."""
        ...


class _Section(Protocol):
    def to_mapping(self) -> dict[str, Any]: ...


#: Root key -> the section class that reads it (``from_mapping(data, prefix)``), in file order.
_SECTIONS: dict[str, Any] = {
    "engine": EngineConfig,
    "aead": AeadDefaults,
    "keyring": KeyringConfig,
    "approvals": ApprovalsConfig,
    "hotpatch": HotpatchConfig,
    "channel": ChannelConfig,
    "audit": AuditConfig,
}


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
        expect(data, Mapping, "config")
        no_unknown(data, frozenset(_SECTIONS), "")
        return cls(**{name: section.from_mapping(data[name], f"{name}.")
                      for name, section in _SECTIONS.items() if name in data})

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
        data = read_file(p, kind)
        if data is None and kind == "yaml":
            data = {}
        if not isinstance(data, Mapping):
            raise PolicyError(f"config file {str(p)!r}: expected a mapping of sections at the top level, "
                              f"got {show(data)}")
        if kind != "yaml" and EngineConfig.is_engine_keys(data):
            data = {"engine": data}
        return cls.from_mapping(data)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data (durations in seconds, sizes in bytes, lists, dicts).

        ``XpsConfig.from_mapping(cfg.to_mapping()) == cfg``; the result can be written with
        ``yaml.safe_dump`` or ``json.dumps``.
        """
        sections: dict[str, _Section] = {name: getattr(self, name) for name in _SECTIONS}
        return {name: section.to_mapping() for name, section in sections.items()}

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


# --------------------------------------------------------------------------- files


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


def read_file(p: Path, kind: str) -> object:
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
