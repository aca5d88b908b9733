"""The core's configuration sections: ``engine:`` (routing policy) and ``aead:`` (AEAD defaults).

Every subsystem owns its section beside its code (``xpscerpto.keyring.config``,
``xpscerpto.capsules.config`` …); :mod:`xpscerpto.config` only reads the file and composes them.

Example:
    >>> cfg = EngineConfig.from_mapping({"policy": {"forbid": ["aes128"]}, "nonce": "app"})
    >>> cfg.policy.permits("aead.aes128gcm", ("aes", "aes128", "gcm")), cfg.nonce
    (False, 'app')
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from ._config_fields import (
    Field,
    build_section,
    dump_section,
    expect,
    no_unknown,
    parse_aead_name,
    show,
    str_list,
    to_str,
)
from .algorithms import AEAD
from .errors import PolicyError

__all__ = ["AUTOTUNE_ENV", "FOREIGN_TOKENS", "AeadDefaults", "EngineConfig", "NonceMode", "Policy", "autotune_enabled",
           "forbid_entries", "prefer_entries", "resolve_forbid", "resolve_operation"]

AUTOTUNE_ENV = "XPS_AUTOTUNE"

NonceMode = Literal["auto", "app"]

_ENGINE_KEYS = frozenset({"policy", "nonce", "prefer", "providers", "autoload_plugins", "isa_mask", "autotune"})
_POLICY_KEYS = frozenset({"allow", "forbid", "require_constant_time"})


@dataclass(frozen=True, slots=True)
class Policy:
    """Which operations may be routed.

    Args:
        allow: glob patterns of operation names that may be routed (``None``: all).
        forbid: algorithm tokens or operation globs that must never be routed, e.g.
            ``("sha1", "des", "aes128")`` or ``("aead.aes128*",)``.
        require_constant_time: route only implementations that declare themselves
            constant-time (every built-in one does); a provider that does not is skipped.
    """

    allow: tuple[str, ...] | None = None
    forbid: tuple[str, ...] = ()
    require_constant_time: bool = True

    def __post_init__(self) -> None:
        # Built in code too: forbid="aes128" forbade nothing (a str is not a tuple of entries),
        # forbid=42 failed later as a TypeError, and a caller's list could be changed after
        # the fact without an audited change (found by a review).
        object.__setattr__(self, "forbid", forbid_entries(self.forbid, "policy.forbid"))
        if self.allow is not None:
            object.__setattr__(self, "allow", _str_tuple(self.allow, "policy.allow"))
        if not isinstance(self.require_constant_time, bool):
            raise PolicyError(f"config key 'policy.require_constant_time': expected true or false, "
                              f"got {show(self.require_constant_time)}")

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
        isa_mask: incident-mask tokens (without their ``-``) taken out of routing, on top of
            ``$XPS_SIMD_ISA_MASK`` (see :mod:`xpscerpto.isa_mask`).
        autotune: measure the eligible implementations in the background after start and
            route each operation (and AEAD size bucket) to the fastest; ``False`` keeps the
            static choice (preference, then priority); ``None``: on unless ``XPS_AUTOTUNE=0``.
    """

    policy: Policy = field(default_factory=Policy)
    nonce: NonceMode = "auto"
    prefer: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    providers: tuple[str, ...] | None = None
    autoload_plugins: bool | None = None
    isa_mask: tuple[str, ...] = ()
    autotune: bool | None = None

    def __post_init__(self) -> None:
        # Built in code, not only parsed from a file: ("-jit",), ("JIT",) or "-jit" once masked
        # nothing at all, silently (found by a review) — an incident control must not do that.
        object.__setattr__(self, "isa_mask", _mask_tokens(self.isa_mask))
        if not isinstance(self.policy, Policy):
            raise PolicyError(f"config key 'policy': expected a Policy, got {type(self.policy).__name__}")
        if self.nonce not in ("auto", "app"):
            raise PolicyError(f"config key 'nonce': expected 'auto' or 'app', got {show(self.nonce)}")
        object.__setattr__(self, "prefer", prefer_entries(self.prefer, "prefer"))
        if self.providers is not None:
            object.__setattr__(self, "providers", _str_tuple(self.providers, "providers"))
        for name in ("autoload_plugins", "autotune"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise PolicyError(f"config key {name!r}: expected true, false or null, got {show(getattr(self, name))}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "") -> EngineConfig:
        """Validate and build from plain data; raises PolicyError naming the bad key.

        ``prefix`` is where the section sits in a legacy file (``"engine."``), for messages.
        """
        expect(data, Mapping, prefix.rstrip(".") or "config")
        no_unknown(data, _ENGINE_KEYS, prefix)
        policy = data.get("policy", {})
        expect(policy, Mapping, f"{prefix}policy")
        return cls._build(policy, f"{prefix}policy.", data.get("nonce", "auto"), f"{prefix}nonce", data, prefix)

    @classmethod
    def from_document(cls, aead: Mapping[str, Any], policy: Mapping[str, Any], engine: Mapping[str, Any],
                      prefix: str = "crypto.") -> EngineConfig:
        """Build from an Appendix C document: ``aead.nonce``, ``policy:`` and the ``engine:`` extras.

        The caller has checked ``aead``'s keys (it also holds ``default``).
        """
        for name, section in (("policy", policy), ("engine", engine)):
            expect(section, Mapping, f"{prefix}{name}")
        no_unknown(engine, _ENGINE_KEYS - {"policy", "nonce"}, f"{prefix}engine.")
        return cls._build(policy, f"{prefix}policy.", aead.get("nonce", "auto"), f"{prefix}aead.nonce",
                          engine, f"{prefix}engine.")

    @classmethod
    def _build(cls, policy_data: Mapping[str, Any], policy_at: str, nonce: object, nonce_at: str,
               data: Mapping[str, Any], at: str) -> EngineConfig:
        no_unknown(policy_data, _POLICY_KEYS, policy_at)
        allow = policy_data.get("allow")
        if allow is not None:
            allow = tuple(str_list(allow, f"{policy_at}allow"))
        forbid = forbid_entries(str_list(policy_data.get("forbid", []), f"{policy_at}forbid"), f"{policy_at}forbid")
        constant_time = policy_data.get("require_constant_time", True)
        expect(constant_time, bool, f"{policy_at}require_constant_time")
        if nonce not in ("auto", "app"):
            raise PolicyError(f"config key '{nonce_at}': expected 'auto' or 'app', got {show(nonce)}")
        prefer = prefer_entries(data.get("prefer", {}), f"{at}prefer")
        providers = data.get("providers")
        if providers is not None:
            providers = tuple(str_list(providers, f"{at}providers"))
        autoload = data.get("autoload_plugins")
        if autoload is not None:
            expect(autoload, bool, f"{at}autoload_plugins")
        mask = _parse_mask(data.get("isa_mask", ()), f"{at}isa_mask")
        autotune = data.get("autotune")
        if autotune is not None:
            expect(autotune, bool, f"{at}autotune")
        return cls(Policy(allow, forbid, constant_time), nonce, prefer, providers, autoload, mask, autotune)

    @classmethod
    def from_file(cls, path: str | Path) -> EngineConfig:
        """Load the engine settings from a file.

        ``.toml`` and ``.json`` (any other suffix is read as JSON) hold the engine keys at
        their root, as ``xps --config`` always accepted; ``.yaml``/``.yml`` is the whole
        Appendix C file (:meth:`xpscerpto.config.XpsConfig.load`), of which the ``engine:``
        section is returned.
        """
        from .config import XpsConfig, read_file

        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            return XpsConfig.load(p).engine
        data = read_file(p, "toml" if p.suffix == ".toml" else "json")
        expect(data, Mapping, "config")
        return cls.from_mapping(cast("Mapping[str, Any]", data))

    @staticmethod
    def tightens(key: str, old: Any, new: Any) -> bool:
        """Whether a routing-policy value is at least as strict as the one it replaces.

        Stricter: every old ``forbid`` entry kept (more may be added); an allow-list that
        only drops patterns (or one set where all was allowed); constant time required. A
        value a record never held (``None``) is the loosest. Entries are compared as
        written: ``aead.aes128*`` in place of ``aes128`` counts as a loosening.
        """
        if key == "policy.forbid":
            return set(new or ()) >= set(old or ())
        if key == "policy.allow":
            return new is not None and (old is None or set(new) <= set(old))
        if key == "policy.require_constant_time":
            return new is True or old is not True
        return False

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (lists, dicts) that :meth:`from_mapping` turns back into an equal config."""
        return {
            "nonce": self.nonce,
            "autoload_plugins": self.autoload_plugins,
            "providers": None if self.providers is None else list(self.providers),
            "prefer": dict(self.prefer),
            "isa_mask": ["-" + t for t in self.isa_mask],
            "autotune": self.autotune,
            "policy": {"allow": None if self.policy.allow is None else list(self.policy.allow),
                       "forbid": list(self.policy.forbid),
                       "require_constant_time": self.policy.require_constant_time},
        }

    def to_document(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``(aead, policy, engine)`` parts of an Appendix C document (``aead`` holds ``nonce``)."""
        data = self.to_mapping()
        policy = data.pop("policy")
        nonce = data.pop("nonce")
        return {"nonce": nonce}, policy, data

    @staticmethod
    def is_engine_keys(data: Mapping[str, Any]) -> bool:
        """Whether ``data``'s keys are all ``engine:`` keys (the pre-Appendix C file layout)."""
        return bool(data) and set(data) <= _ENGINE_KEYS


#: Algorithms xpscerpto does not offer, named by the seed's example (``forbid: [sha1, des]``)
#: and by operators' policies elsewhere: forbidding one is valid and forbids nothing routable.
FOREIGN_TOKENS = frozenset({"sha1", "md5", "md4", "des", "3des", "tdes", "rc4", "rc2"})


def _squash(name: str) -> str:
    # Documented names differ only in case and in '-' versus '_' (AES-128-GCM, AES_128_GCM).
    return name.strip().lower().replace("-", "").replace("_", "")


@functools.cache
def _operation_names() -> dict[str, str]:
    from .interfaces import OPERATIONS

    return {_squash(name): op for op, spec in OPERATIONS.items() for name in (op, *spec.aliases)}


def resolve_operation(name: str) -> str | None:
    """The operation a public name means (``"AES-128-GCM"``, ``"aes_gcm"``, ``"aead.aes128gcm"``), or None."""
    return _operation_names().get(_squash(name))


def resolve_forbid(entry: str, key: str) -> str:
    """What one ``forbid`` entry forbids, in the form :meth:`Policy.reason` matches.

    An algorithm name in any documented spelling becomes its operation name; a token
    (``aes128``, ``sha-1``) its lower-case form; a glob stays a glob. Before, the documented
    names (``AES-128-GCM``) matched nothing and forbade nothing, silently (found by a review).

    Raises:
        PolicyError: naming ``key``, when the entry matches no operation, alias, token or glob.
    """
    from .interfaces import OPERATIONS

    op = resolve_operation(entry)
    if op is not None:
        return op
    token = _squash(entry)
    if token in FOREIGN_TOKENS or any(token in spec.tokens for spec in OPERATIONS.values()):
        return token
    glob = entry.strip().lower()
    if any(c in glob for c in "*?[") and any(fnmatch.fnmatchcase(op, glob) for op in OPERATIONS):
        return glob
    raise PolicyError(f"config key {key!r}: {show(entry)} names no algorithm, token or operation glob xpscerpto "
                      "knows (such as 'AES-128-GCM', 'aes128', 'aead.aes128*' or 'sha1'); it would forbid nothing")


def forbid_entries(value: object, key: str) -> tuple[str, ...]:
    """``forbid`` as given in a file or in code: each entry resolved by :func:`resolve_forbid`."""
    return tuple(resolve_forbid(entry, key) for entry in _str_tuple(value, key))


def prefer_entries(value: object, key: str) -> Mapping[str, str]:
    """``prefer`` with each key resolved to its operation (unknown names refused); read-only.

    A provider name is kept as given: a capsule may install that provider later.
    """
    if not isinstance(value, Mapping):
        raise PolicyError(f"config key {key!r}: expected a mapping of operation -> provider, "
                          f"got {type(value).__name__}")
    out: dict[str, str] = {}
    for name, provider in value.items():
        expect(name, str, f"{key} (key)")
        # The name is the caller's: a long or odd one is described, not repeated.
        at = f"{key}.{name}" if show(name) == repr(name) else key
        expect(provider, str, at)
        op = resolve_operation(name)
        if op is None:
            raise PolicyError(f"config key {key!r}: {show(name)} is not an operation (such as "
                              "'aead.chacha20poly1305' or 'CHACHA20-POLY1305')")
        if not provider.strip():
            raise PolicyError(f"config key {at!r}: expected a provider name, got {show(provider)}")
        if op in out and out[op] != provider:
            raise PolicyError(f"config key {key!r}: {op!r} is given twice (under two of its names)")
        out[op] = provider
    return MappingProxyType(out)


def _str_tuple(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise PolicyError(f"config key {key!r}: expected a list of strings, got one string "
                          f"({show(value)}); write a one-entry list")
    if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"config key {key!r}: expected a list of strings")
    return tuple(value)


def _mask_tokens(value: object) -> tuple[str, ...]:
    """``EngineConfig.isa_mask`` as given in code: tokens, each with or without its ``-``.

    Any well-formed name is kept (a program may mask a provider it registers itself); an odd
    spelling that would remove nothing (``--jit``, ``+jit``, a Unicode minus) is refused.
    """
    from .isa_mask import _TOKEN

    if not isinstance(value, tuple | list):
        raise PolicyError(f"isa_mask: expected a tuple of mask tokens (such as ('jit',)), got {type(value).__name__}")
    if not all(isinstance(t, str) for t in value):
        raise PolicyError("isa_mask: each token must be a str (such as 'jit')")
    tokens = {(t[1:] if t.startswith("-") else t).lower() for t in value}
    # isascii() of what was given, not of its lower(): the Kelvin sign lower-cases to a 'k'.
    if not all(t.isascii() for t in value) or not all(_TOKEN.fullmatch(t) for t in tokens):
        raise PolicyError("isa_mask: a token is an ASCII letter or digit, then a-z, 0-9, '_', '.' or '-' "
                          "(1 to 64), with at most one '-' before it")
    return tuple(sorted(tokens))


def _parse_mask(value: object, at: str) -> tuple[str, ...]:
    """``isa_mask``: a string (``"-jit, -avx512"``) or a list of ``-token`` strings, each a known
    backend or CPU feature (see :mod:`xpscerpto.isa_mask`)."""
    from .isa_mask import parse

    if isinstance(value, str):
        text = value
    else:
        entries = str_list(value, at)
        if any(not entry.startswith("-") for entry in entries):
            raise PolicyError(f"config key '{at}': each entry is '-token' (the mask only removes)")
        text = ",".join(entries)
    return tuple(sorted(parse(text, field=f"config key '{at}'")))


@dataclass(frozen=True, slots=True)
class AeadDefaults:
    """``aead:`` -- defaults of the raw AEAD layer."""

    default_algorithm: AEAD = AEAD.AES_256_GCM

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "aead.") -> AeadDefaults:
        """Validate and build; raises PolicyError naming the bad key."""
        return build_section(cls, _AEAD_FIELDS, data, prefix)

    @classmethod
    def from_document(cls, data: Mapping[str, Any], prefix: str = "crypto.aead.") -> AeadDefaults:
        """From an Appendix C ``aead:`` section (``default``; ``nonce`` is the engine's)."""
        return build_section(cls, _AEAD_DOC_FIELDS, {k: v for k, v in data.items() if k != "nonce"}, prefix)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _AEAD_FIELDS)

    def to_document(self) -> dict[str, Any]:
        """The Appendix C spelling."""
        return dump_section(self, _AEAD_DOC_FIELDS)


_AEAD_FIELDS = (Field("default_algorithm", "default_algorithm", parse_aead_name, to_str),)
_AEAD_DOC_FIELDS = (Field("default", "default_algorithm", parse_aead_name, to_str),)


def autotune_enabled(config: EngineConfig) -> bool:
    """Whether the engine tunes itself: the configuration, else ``$XPS_AUTOTUNE`` (default on).

    Here rather than with the tuner, so that starting an engine need not import the
    measuring code to learn it will not run.
    """
    if config.autotune is not None:
        return config.autotune
    return os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
