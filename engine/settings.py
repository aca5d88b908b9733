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

__all__ = ["AUTOTUNE_ENV", "AeadDefaults", "EngineConfig", "NonceMode", "Policy", "autotune_enabled"]

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
        forbid = tuple(str_list(policy_data.get("forbid", []), f"{policy_at}forbid"))
        constant_time = policy_data.get("require_constant_time", True)
        expect(constant_time, bool, f"{policy_at}require_constant_time")
        if nonce not in ("auto", "app"):
            raise PolicyError(f"config key '{nonce_at}': expected 'auto' or 'app', got {show(nonce)}")
        prefer = data.get("prefer", {})
        expect(prefer, Mapping, f"{at}prefer")
        for k, v in prefer.items():
            expect(k, str, f"{at}prefer (key)")
            expect(v, str, f"{at}prefer.{k}")
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
        return cls(Policy(allow, forbid, constant_time), nonce, MappingProxyType(dict(prefer)), providers,
                   autoload, mask, autotune)

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


def _mask_tokens(value: object) -> tuple[str, ...]:
    """``EngineConfig.isa_mask`` as given in code: tokens, each with or without its ``-``."""
    from .isa_mask import _TOKEN

    if not isinstance(value, tuple | list):
        raise PolicyError(f"isa_mask: expected a tuple of mask tokens (such as ('jit',)), got {type(value).__name__}")
    if not all(isinstance(t, str) for t in value):
        raise PolicyError("isa_mask: each token must be a str (such as 'jit')")
    tokens = {(t[1:] if t.startswith("-") else t).lower() for t in value}
    if not all(_TOKEN.fullmatch(t) for t in tokens):
        raise PolicyError("isa_mask: a token may hold only a-z, 0-9, '_', '.' and '-' (1 to 64)")
    return tuple(sorted(tokens))


def _parse_mask(value: object, at: str) -> tuple[str, ...]:
    """``isa_mask``: a string (``"-jit, -avx512"``) or a list of ``-token`` strings."""
    from .isa_mask import parse

    if isinstance(value, str):
        text = value
    else:
        text = ",".join(str_list(value, at))
        if any(not entry.startswith("-") for entry in str_list(value, at)):
            raise PolicyError(f"config key '{at}': each entry is '-token' (the mask only removes)")
    try:
        return tuple(sorted(parse(text)))
    except PolicyError:
        raise PolicyError(f"config key '{at}': a token may hold only a-z, 0-9, '_', '.' and '-'") from None


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
