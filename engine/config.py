"""Configuration (seed Appendix C): the file loader only.

It reads one YAML (or TOML/JSON) file, validates it, and composes the sections the subsystems
own, each a frozen dataclass beside its code. The file is the specification's Appendix C
document, rooted at ``crypto:``, with the seed's section and key names (``aead.default``,
``aead.nonce``, ``keyring.rotation_days``, ``policy.forbid``, ``hotpatch.require_signature``,
``tls.rekey_messages`` …) and the engine's richer keys beside them; ``docs/CONFIGURATION.md``
is its reference. The earlier layout (top-level ``engine:``, ``keyring:`` … sections) still
loads, with a :class:`DeprecationWarning`; :meth:`XpsConfig.to_mapping` keeps that
per-section shape, :meth:`XpsConfig.to_document` gives the Appendix C one.

The Python object has one frozen section per owner: ``engine`` and ``aead``
(:mod:`xpscerpto.settings`, the core), ``keyring`` and ``approvals``
(:mod:`xpscerpto.keyring.config`), ``hotpatch`` (:mod:`xpscerpto.capsules.config`),
``channel`` (:mod:`xpscerpto.channel.config`, the document's ``tls:``) and ``audit``
(:mod:`xpscerpto.audit.config`).

Every key is optional and has the default below. An unknown key (at any depth) or a value of
the wrong type or range is a :class:`~xpscerpto.errors.PolicyError` whose message names the
full dotted key (``config key 'crypto.keyring.kek.provider': expected 'file' or 'pkcs11', got
'hsm'``). ``bool`` is never accepted as a number. Days and minutes are numbers; other
durations are seconds (int or float) or strings ``"250ms"``, ``"45s"``, ``"90m"``, ``"12h"``,
``"30d"``, ``"2w"``; sizes are bytes (int) or strings ``"512B"``, ``"64KiB"``, ``"1MiB"``,
``"2GiB"``, ``"1TiB"``. None may be negative.

=========================================  ==================  =========================================================
key                                        default             meaning
=========================================  ==================  =========================================================
``crypto.aead.default``                    ``AES-256-GCM``     the AEAD used wherever none is named (keys created ...
``crypto.aead.nonce``                      ``auto``            auto: draw a nonce from the CSPRNG when none is given
``crypto.keyring.rotation_days``           ``365``             new keys rotate after this many days (never: no ...
``crypto.keyring.dual_window_days``        ``30``              how long a retired version still decrypts
``crypto.keyring.destroy_after_days``      ``180``             a retired version is destroyed this long after its ...
``crypto.keyring.database``                ``keyring.db``      key store: a file in the home, or a postgresql:// URL
``crypto.keyring.usage_block``             ``16384``           encryptions reserved per database write (>= 1)
``crypto.keyring.max_encryptions.<AEAD>``  ``see below``       rotate before reaching it (>= 1)
``crypto.keyring.kek.provider``            ``file``            where the key-encryption key lives: file or pkcs11
``crypto.keyring.kek.path``                ``kek.key``         file provider: KEK file, relative to the engine home
``crypto.keyring.kek.module``              ``null``            pkcs11 provider: path of the PKCS#11 module (required ...
``crypto.keyring.kek.token_label``         ``xps``             pkcs11 provider: token label
``crypto.keyring.kek.pin_env``             ``XPS_PKCS11_PIN``  name of the environment variable holding the PIN ...
``crypto.keyring.kek.key_label``           ``xps-kek``         pkcs11 provider: label of the KEK object
``crypto.policy.allow``                    ``null``            list of operation globs that may be routed
``crypto.policy.forbid``                   ``[]``              algorithm tokens (sha1, aes128) or operation globs ...
``crypto.policy.require_constant_time``    ``true``            route only implementations declared constant-time
``crypto.hotpatch.require_signature``      ``true``            capsules must carry enough trusted signatures
``crypto.hotpatch.run_selftests``          ``true``            capsules are validated (contract, KATs, differential, ...
``crypto.hotpatch.rollback_on_error``      ``true``            a provider fault after cutover rolls the capsule back ...
``crypto.hotpatch.development``            ``false``           allows the two switches above to be false (never in ...
``crypto.hotpatch.canary_share``           ``0.1``             fraction of calls routed to a new capsule during the ...
``crypto.hotpatch.canary_seconds``         ``0``               canary phase duration (0 skips it)
``crypto.hotpatch.dual_run_seconds``       ``0``               dual-run (shadow compare) phase duration (0 skips it)
``crypto.hotpatch.timeout``                ``60s``             wall-clock limit of the isolated validation child (> 0)
``crypto.hotpatch.memory``                 ``2GiB``            address-space limit of the validation child (> 0)
``crypto.hotpatch.max_slowdown``           ``2.0``             refuse a candidate slower than this multiple of the ...
``crypto.hotpatch.bench_bytes``            ``64KiB``           AEAD micro-benchmark message size (0 disables the gate)
``crypto.hotpatch.settle``                 ``0.5s``            how long a capsule in the inbox must be unchanged ...
``crypto.hotpatch.drain_timeout``          ``30s``             how long to wait for calls on a replaced routing table
``crypto.hotpatch.sample_every``           ``64``              after cutover, 1 call in this many is also checked ...
``crypto.hotpatch.sample``                 ``30s``             ... against the replaced implementation, this long
``crypto.hotpatch.state_database``         ``null``            ``postgresql://…``: routing state in a row per node
``crypto.hotpatch.node``                   ``null``            this node's row (required with ``state_database``)
``crypto.hotpatch.trust_store``            ``null``            the pinned publisher keys (null: HOME/trust.json)
``crypto.tls.rekey_messages``              ``1048576``         a secure channel rekeys after this many messages (>= 1)
``crypto.tls.rekey_minutes``               ``60``              ... or after this many minutes (> 0)
``crypto.tls.protocol``                    ``null``            the Noise protocol an initiator offers (null: XX)
``crypto.tls.accept``                      ``["Noise_*"]``     protocol globs a responder accepts
``crypto.tls.require_pq``                  ``false``           only hybrid post-quantum (hfs) protocols
``crypto.tls.max_frame``                   ``65535``           largest record on the wire (64..65535 bytes)
``crypto.tls.max_message``                 ``16MiB``           largest message recv reassembles
``crypto.tls.handshake_timeout``           ``10s``             a handshake not finished by then is dropped
``crypto.tls.idle_timeout``                ``null``            recv() cuts a channel whose peer is quiet this long
``crypto.tls.max_pending_handshakes``      ``64``              handshakes in progress a responder allows
``crypto.tls.max_pending_per_source``      ``null``            ... from one IP address (null: no cap per address)
``crypto.tls.rekey_bytes``                 ``1GiB``            ... or this many bytes, whichever comes first
``crypto.engine.autoload_plugins``         ``null``            load third-party entry-point plugins
``crypto.engine.providers``                ``null``            list of provider names to restrict routing to
``crypto.engine.prefer``                   ``{}``              operation -> provider name that wins over priority
``crypto.engine.isa_mask``                 ``[]``              incident mask (-avx512, -jit ...) on top of the env var
``crypto.engine.autotune``                 ``null``            route each operation and size bucket by measurement
``crypto.approvals.revoke``                ``0``               distinct operator approvals required to revoke a key
``crypto.approvals.destroy``               ``0``               distinct operator approvals required to destroy a key
``crypto.approvals.emergency_revoke``      ``0``               approvals for an emergency revoke
``crypto.approvals.request_ttl``           ``1d``              how long an approval request stays open (> 0)
``crypto.audit.checkpoint_every``          ``100``             journal records per signed checkpoint (>= 1)
``crypto.audit.auth_fail_per_minute``      ``10``              CRYPTO_FAIL_AUTH records kept per minute and source
``crypto.audit.signing_key``               ``null``            the journal's signing key (null: audit.key by the log)
``crypto.audit.database``                  ``null``            postgresql:// URL: the nodes' shared journal (null: file)
=========================================  ==================  =========================================================

``crypto.keyring.max_encryptions`` defaults: 2^32 for AES-128-GCM, AES-256-GCM and
CHACHA20-POLY1305 (NIST SP 800-38D bound for random 96-bit nonces), 2^48 for AES-256-GCM-SIV,
2^64-1 for XCHACHA20-POLY1305 and AEGIS-256. ``docs/CONFIGURATION.md`` has the same table, an
example, and the earlier layout's names.

Example:
    >>> cfg = XpsConfig.from_mapping({"crypto": {"policy": {"forbid": ["aes128"]},
    ...                                          "keyring": {"dual_window_days": 7}}})
    >>> cfg.engine.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm"))
    False
    >>> cfg.keyring.dual_window_seconds
    604800.0
    >>> try:
    ...     XpsConfig.from_mapping({"crypto": {"keyring": {"kek": {"provider": "hsm"}}}})
    ... except PolicyError as e:
    ...     print(e)
    XPS_ERR_POLICY: config key 'crypto.keyring.kek.provider': expected 'file' or 'pkcs11', got 'hsm'
"""

from __future__ import annotations

import json
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from xpscerpto.audit.config import AuditConfig
from xpscerpto.capsules.config import HotpatchConfig
from xpscerpto.channel.config import ChannelConfig
from xpscerpto.keyring.config import ApprovalsConfig, KekConfig, KeyringConfig, safe_max_encryptions

from ._config_fields import expect, no_unknown, parse_duration, parse_size, show
from ._stored_file import read_stored
from .errors import PolicyError
from .settings import AeadDefaults, EngineConfig, Policy

__all__ = [
    "DOCUMENT_KEYS",
    "EMERGENCY_KEYS",
    "ROUTING_KEYS",
    "SECURITY_KEYS",
    "AeadDefaults",
    "ApprovalsConfig",
    "AuditConfig",
    "AuditSink",
    "ChannelConfig",
    "EmergencyChange",
    "EngineConfig",
    "HotpatchConfig",
    "KekConfig",
    "KeyringConfig",
    "Policy",
    "PolicyChange",
    "XpsConfig",
    "canonical_key",
    "parse_duration",
    "parse_size",
    "policy_changes",
    "read_file",
    "safe_max_encryptions",
]

#: Keys that :meth:`XpsConfig.emergency_change` may change at runtime (everything else is fixed
#: for the life of the process), in the per-section spelling; :data:`DOCUMENT_KEYS` maps the
#: Appendix C spellings (``crypto.policy.forbid`` …) onto them.
EMERGENCY_KEYS: frozenset[str] = frozenset({
    "engine.policy.forbid", "engine.policy.allow", "engine.isa_mask",
    "hotpatch.max_slowdown", "hotpatch.canary_share",
})

#: Appendix C spelling -> per-section spelling, for the keys whose spelling differs and that
#: :meth:`XpsConfig.get` and :meth:`XpsConfig.emergency_change` accept either way.
DOCUMENT_KEYS: dict[str, str] = {
    "crypto.policy.forbid": "engine.policy.forbid", "crypto.policy.allow": "engine.policy.allow",
    "crypto.aead.nonce": "engine.nonce", "crypto.aead.default": "aead.default_algorithm",
    "crypto.hotpatch.max_slowdown": "hotpatch.max_slowdown", "crypto.hotpatch.canary_share": "hotpatch.canary_share",
    "crypto.policy.require_constant_time": "engine.policy.require_constant_time",
    "crypto.engine.isa_mask": "engine.isa_mask",
}

#: The security policy a home records when it is initialised (per-section spelling). Every
#: later invocation uses the recorded values; a configuration that differs in one of these is
#: refused unless the change is applied explicitly (``xps policy apply``).
SECURITY_KEYS: tuple[str, ...] = (
    "approvals.revoke", "approvals.destroy", "approvals.emergency_revoke", "approvals.request_ttl",
    "keyring.kek", "keyring.dual_window", "keyring.destroy_after", "keyring.default_policy",
    "keyring.max_encryptions",
    "hotpatch.require_signature", "hotpatch.run_selftests", "hotpatch.rollback_on_error", "hotpatch.development",
    "engine.policy.forbid", "engine.policy.allow", "engine.policy.require_constant_time",
)

#: The routing policy among :data:`SECURITY_KEYS`. Unlike the other keys, a file may tighten
#: these without ``xps policy apply`` (forbidding one more algorithm during an incident must
#: not wait for a policy change); what the home recorded is a floor that only ``xps policy
#: apply`` lowers. See :meth:`XpsConfig.under_recorded_routing`.
ROUTING_KEYS: tuple[str, ...] = ("engine.policy.forbid", "engine.policy.allow", "engine.policy.require_constant_time")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One security-policy key that differs between the recorded policy and another."""

    key: str
    old: Any
    new: Any
    loosens: bool  # True unless the new value is strictly at least as strict in every respect


def policy_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[PolicyChange]:
    """The keys of :data:`SECURITY_KEYS` whose values differ, each judged tighter or looser.

    Tighter: more approvals, shorter request lifetime, rotating sooner, fewer encryptions per
    version, a hot-patch gate switched on, development mode switched off. Anything else (the
    KEK above all) counts as loosening: so does any change of the dual-key window or of the
    retention, since a shorter one lets retired versions be destroyed sooner, which only the
    approvals a destroy needs may allow.
    """
    out = []
    for key in SECURITY_KEYS:
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(PolicyChange(key, a, b, not _tightens(key, a, b)))
    return out


def _loosening(change: PolicyChange) -> str:
    """What a routing change gives up, in the record's own (already validated) values."""
    if change.key == "engine.policy.forbid":
        dropped = sorted(set(change.old or ()) - set(change.new or ()))
        return f"drops {', '.join(show(e) for e in dropped[:8])}{' …' if len(dropped) > 8 else ''} from"
    if change.key == "engine.policy.allow":
        return "allows more than"
    return "no longer requires constant time, unlike"


def _tightens(key: str, old: Any, new: Any) -> bool:
    # Each section knows what "stricter" means for its own keys.
    section, _, leaf = key.partition(".")
    try:
        return bool(_SECTIONS[section].tightens(leaf, old, new))
    except (TypeError, PolicyError, KeyError, AttributeError):
        return False


#: Sections of the Appendix C document, in the order ``to_document`` writes them.
_DOCUMENT_SECTIONS = ("aead", "keyring", "policy", "hotpatch", "tls", "engine", "approvals", "audit")


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
        """Validate plain data (the parsed file) and build; raises PolicyError naming the bad key.

        ``{"crypto": {...}}`` is the Appendix C document; top-level sections (``engine``,
        ``keyring`` …) are the earlier layout, still accepted with a DeprecationWarning.
        """
        expect(data, Mapping, "config")
        if "crypto" in data:
            no_unknown(data, frozenset({"crypto"}), "")
            return cls._from_document(data["crypto"])
        if data:
            warnings.warn("configuration: top-level sections (engine:, keyring: …) are the pre-Appendix C "
                          "layout; put them under 'crypto:' with the seed's names (docs/CONFIGURATION.md)",
                          DeprecationWarning, stacklevel=2)
        return cls._from_sections(data)

    @classmethod
    def _from_sections(cls, data: Mapping[str, Any]) -> XpsConfig:
        no_unknown(data, frozenset(_SECTIONS) | {"crypto"}, "")
        return cls(**{name: section.from_mapping(data[name], f"{name}.")
                      for name, section in _SECTIONS.items() if name in data})

    @classmethod
    def _from_document(cls, crypto: object) -> XpsConfig:
        expect(crypto, Mapping, "crypto")
        doc = cast("Mapping[str, Any]", crypto)
        no_unknown(doc, frozenset(_DOCUMENT_SECTIONS), "crypto.")
        part = {name: doc.get(name, {}) for name in _DOCUMENT_SECTIONS}
        expect(part["aead"], Mapping, "crypto.aead")
        no_unknown(part["aead"], frozenset({"default", "nonce"}), "crypto.aead.")
        aead = AeadDefaults.from_document(part["aead"])
        return cls(
            engine=EngineConfig.from_document(part["aead"], part["policy"], part["engine"]),
            aead=aead,
            keyring=KeyringConfig.from_document(part["keyring"], aead.default_algorithm),
            approvals=ApprovalsConfig.from_mapping(part["approvals"], "crypto.approvals."),
            hotpatch=HotpatchConfig.from_mapping(part["hotpatch"], "crypto.hotpatch."),
            channel=ChannelConfig.from_document(part["tls"]),
            audit=AuditConfig.from_mapping(part["audit"], "crypto.audit."),
        )

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
        """Every key as plain data, per section (durations in seconds, sizes in bytes, lists, dicts).

        ``XpsConfig.from_mapping(cfg.to_mapping()) == cfg`` (through the deprecated layout);
        :meth:`to_document` is the Appendix C file.
        """
        sections: dict[str, _Section] = {name: getattr(self, name) for name in _SECTIONS}
        return {name: section.to_mapping() for name, section in sections.items()}

    def to_document(self) -> dict[str, Any]:
        """The effective configuration as an Appendix C document (``{"crypto": {...}}``).

        What ``xps config show`` prints; ``XpsConfig.from_mapping(cfg.to_document()) == cfg``
        except a legacy ``keyring.default_policy`` with more than ``rotate=`` in it, which
        Appendix C has no spelling for.
        """
        aead_part, policy, engine = self.engine.to_document()
        doc = {
            "aead": {**self.aead.to_document(), **aead_part},
            "keyring": self.keyring.to_document(),
            "policy": policy,
            "hotpatch": self.hotpatch.to_mapping(),
            "tls": self.channel.to_document(),
            "engine": engine,
            "approvals": self.approvals.to_mapping(),
            "audit": self.audit.to_mapping(),
        }
        return {"crypto": {name: doc[name] for name in _DOCUMENT_SECTIONS}}

    def security_policy(self) -> dict[str, Any]:
        """The values of :data:`SECURITY_KEYS` as plain data (what a home records)."""
        return {key: self.get(key) for key in SECURITY_KEYS}

    def with_security_policy(self, policy: Mapping[str, Any]) -> XpsConfig:
        """A new configuration with ``policy``'s values (a home's record) in place of its own.

        The routing keys (:data:`ROUTING_KEYS`) are left to :meth:`under_recorded_routing`:
        a file may be stricter than the record there.

        Raises:
            PolicyError: a recorded value no longer validates (the record was edited).
        """
        return self._with_values({k: policy[k] for k in SECURITY_KEYS if k in policy and k not in ROUTING_KEYS})

    def under_recorded_routing(self, policy: Mapping[str, Any], *, given: bool) -> XpsConfig:
        """This configuration's routing policy bound by the one a home recorded (``policy``).

        ``given``: the configuration is a file the operator passed. A file may forbid more
        than the record (it is used as it is) but not less: a routing key that loosens the
        record is refused, so a later file cannot drop a recorded ``forbid`` silently. Without
        a file the record's routing policy replaces the defaults. A record from before these
        keys were recorded binds nothing.

        Raises:
            PolicyError: ``given`` and a routing key loosens the record (naming the key), or a
                recorded value no longer validates.
        """
        recorded = {k: policy[k] for k in ROUTING_KEYS if k in policy}
        if not given:
            return self._with_values(recorded)
        for change in policy_changes(recorded, self.security_policy()):
            if change.key in recorded and change.loosens:
                raise PolicyError(f"config key 'crypto.{change.key.removeprefix('engine.')}': {_loosening(change)} "
                                  "the routing policy this home recorded; a file may only tighten it; "
                                  "`xps policy apply` loosens it, audited, with approvals")
        return self

    def raised_to_recorded_routing(self, policy: Mapping[str, Any]) -> tuple[XpsConfig, tuple[str, ...]]:
        """This configuration with its routing policy raised to the floor a home recorded.

        Where a routing key is looser than ``policy``'s: ``forbid`` gains the recorded entries
        it lacks, ``allow`` keeps only what the record allows too, constant time is required.
        For what may be older than the record (an emergency override stored before a stricter
        ``xps policy apply``): it stays in force where it is stricter, the record where it is not.
        Returns the new configuration and the keys raised (empty: ``self`` as it was).
        """
        recorded = {k: policy[k] for k in ROUTING_KEYS if k in policy}
        mine = self.security_policy()
        raised: dict[str, Any] = {}
        for change in policy_changes(recorded, mine):
            if change.key not in recorded or not change.loosens:
                continue
            old, new = change.old, change.new
            if change.key == "engine.policy.forbid":
                raised[change.key] = [*(old or ()), *(e for e in new or () if e not in (old or ()))]
            elif change.key == "engine.policy.allow":
                raised[change.key] = list(old) if new is None else [p for p in new if p in old]
            else:
                raised[change.key] = True
        return (self._with_values(raised), tuple(raised)) if raised else (self, ())

    def _with_values(self, values: Mapping[str, Any]) -> XpsConfig:
        data = self.to_mapping()
        for key, value in values.items():
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return XpsConfig._from_sections(data)

    def get(self, key: str) -> Any:
        """The plain value of a dotted key (``"approvals.destroy"``, ``"crypto.keyring.rotation_days"``).

        Per-section keys read :meth:`to_mapping`, ``crypto.`` keys read :meth:`to_document`.
        """
        node: Any = self.to_document() if key.startswith("crypto.") else self.to_mapping()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PolicyError(f"config key {show(key)}: no such key")
            node = node[part]
        return node

    def emergency_change(self, key: str, value: Any, *, operator: str, reason: str,
                         audit: AuditSink) -> XpsConfig:
        """An audited runtime change of one whitelisted key; returns a NEW configuration.

        Only :data:`EMERGENCY_KEYS` may change. The value is validated exactly as loading
        would (including cross-key rules), then ``CONFIG_EMERGENCY_CHANGE`` is recorded with
        ``key``, ``old``, ``new``, ``operator`` and ``reason``; if recording fails, nothing
        changes. ``self`` is never modified. A caller that must persist or apply the change
        before it is journaled uses :meth:`plan_emergency_change`.

        Raises:
            PolicyError: the key is not changeable at runtime, the value is invalid, or the
                operator/reason is missing.
        """
        change = self.plan_emergency_change(key, value, operator=operator, reason=reason)
        change.record(audit)
        return change.config

    def plan_emergency_change(self, key: str, value: Any, *, operator: str, reason: str) -> EmergencyChange:
        """Validate an emergency change as :meth:`emergency_change` does, recording nothing.

        The caller applies :attr:`EmergencyChange.config`, then calls
        :meth:`EmergencyChange.record`: the journal must not claim a change that a later step
        (writing ``overrides.json``, reconfiguring the engine) failed to make.

        Raises:
            PolicyError: as :meth:`emergency_change`.
        """
        key = canonical_key(key)
        if not isinstance(key, str) or key not in EMERGENCY_KEYS:
            raise PolicyError(f"config key {show(key)}: not changeable at runtime "
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
        new_cfg = XpsConfig._from_sections(data)
        return EmergencyChange(key, old, new_cfg.get(key), operator, reason, new_cfg)


def canonical_key(key: str) -> str:
    """The per-section spelling of a key (``crypto.policy.forbid`` -> ``engine.policy.forbid``)."""
    return DOCUMENT_KEYS.get(key, key) if isinstance(key, str) else key


@dataclass(frozen=True, slots=True)
class EmergencyChange:
    """A validated, not yet journaled emergency change (see :meth:`XpsConfig.plan_emergency_change`)."""

    key: str  # per-section spelling
    old: Any
    new: Any
    operator: str
    reason: str
    config: XpsConfig

    def record(self, audit: AuditSink) -> None:
        """Journal ``CONFIG_EMERGENCY_CHANGE``: call once the change is in force."""
        audit.record("CONFIG_EMERGENCY_CHANGE", key=self.key, old=self.old, new=self.new, operator=self.operator,
                     reason=self.reason)


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


#: A configuration file is a few kilobytes; anything past this is refused unread.
MAX_CONFIG_BYTES = 1 << 20


def read_file(p: Path, kind: str) -> object:
    """Parse ``p`` as ``kind`` (yaml/toml/json); every failure is a PolicyError naming the file."""
    try:  # a regular file of bounded size: a FIFO would block for ever, /dev/zero never end
        raw = read_stored(p, MAX_CONFIG_BYTES)
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
    except RecursionError:
        raise PolicyError(f"config file {str(p)!r}: not valid {kind}: nested too deeply") from None
    except Exception as exc:  # yaml's errors: importing yaml only to name them would cost every import
        from ._yaml import describe_error

        described = describe_error(exc)
        if described is None:
            raise
        raise PolicyError(f"config file {str(p)!r}: not valid yaml: {described}") from None
