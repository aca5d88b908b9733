"""The keyring's configuration sections: ``keyring:`` (with ``keyring.kek:``) and ``approvals:``.

In an Appendix C document (``crypto:`` root) the keyring section is spelled as the seed spells
it — ``rotation_days``, ``dual_window_days``, ``destroy_after_days`` — beside the richer keys
(``database``, ``usage_block``, ``max_encryptions``, ``kek``); new keys use ``aead.default``.
The pre-Appendix C layout (``keyring.dual_window``, ``keyring.default_policy`` …) still loads.

``keyring.max_encryptions`` defaults: 2^32 for AES-128-GCM, AES-256-GCM and CHACHA20-POLY1305
(NIST SP 800-38D bound for random 96-bit nonces), 2^48 for AES-256-GCM-SIV, 2^64-1 for
XCHACHA20-POLY1305 and AEGIS-256. Entries given in the file override these per algorithm;
the others keep their default. ``docs/CONFIGURATION.md`` documents every key.

Example:
    >>> KeyringConfig.from_mapping({"dual_window": "7d"}).dual_window_seconds
    604800.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from xpscerpto._config_fields import (
    Field,
    build_section,
    count,
    days_as_seconds,
    days_out,
    dump_section,
    env_name,
    expect,
    optional_text,
    parse_aead_name,
    parse_days,
    positive,
    seconds_out,
    show,
    text,
    timer_duration,
    to_str,
)
from xpscerpto.algorithms import AEAD
from xpscerpto.errors import PolicyError

from .usage import parse_policy

__all__ = ["ApprovalsConfig", "KekConfig", "KeyringConfig", "safe_max_encryptions"]

KekProvider = Literal["file", "pkcs11"]


def _default_max_encryptions() -> Mapping[str, int]:
    two32, two48, two64 = 2**32, 2**48, 2**64 - 1
    return MappingProxyType({
        AEAD.AES_128_GCM.value: two32, AEAD.AES_256_GCM.value: two32, AEAD.CHACHA20_POLY1305.value: two32,
        AEAD.AES_256_GCM_SIV.value: two48, AEAD.XCHACHA20_POLY1305.value: two64, AEAD.AEGIS_256.value: two64,
    })


def safe_max_encryptions(algorithm: str) -> int:
    """The most encryptions one key may safely make with ``algorithm`` (random nonces).

    2^32 for 96-bit random nonces (AES-GCM, ChaCha20-Poly1305: NIST SP 800-38D 8.3), 2^48 for
    AES-GCM-SIV (nonce-misuse resistant), unbounded for 192/256-bit nonces.
    """
    return _default_max_encryptions()[algorithm]


def _kek_provider(value: object, key: str) -> str:
    if isinstance(value, str) and value in {"file", "pkcs11"}:
        return value
    raise PolicyError(f"config key {key!r}: expected 'file' or 'pkcs11', got {show(value)}")


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

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "keyring.kek.") -> KekConfig:
        """Validate and build; a PKCS#11 KEK needs its module path."""
        kek = build_section(cls, _KEK_FIELDS, data, prefix)
        if kek.provider == "pkcs11" and kek.module is None:
            raise PolicyError(f"config key '{prefix}module': required when {prefix}provider is 'pkcs11' "
                              "(the path of the PKCS#11 module)")
        return kek

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _KEK_FIELDS)


_KEK_FIELDS = (
    Field("provider", "provider", _kek_provider),
    Field("path", "path", text),
    Field("module", "module", optional_text),
    Field("token_label", "token_label", text),
    Field("pin_env", "pin_env", env_name),
    Field("key_label", "key_label", text),
)


def _max_encryptions(data: object, key: str) -> Mapping[str, int]:
    expect(data, Mapping, key)
    merged = dict(_default_max_encryptions())
    limit_of = count(1)
    seen: dict[AEAD, str] = {}
    for name, limit in cast("Mapping[Any, Any]", data).items():
        # The name is the file's: a long or odd one is described, not repeated.
        at = f"{key}.{name}" if isinstance(name, str) and show(name) == repr(name) else key
        algo = parse_aead_name(name, at)
        if algo in seen:
            # AES-256-GCM and AES_GCM are one algorithm: the later line silently replaced the
            # operator's limit, a duplicate key that the file parser cannot see (found by a review).
            raise PolicyError(f"config key {at!r}: {algo.value} is already limited as {seen[algo]!r} in "
                              "this section; give each algorithm once")
        seen[algo] = name
        value = limit_of(limit, at)
        # Lower is allowed (rotate sooner); higher would let random nonces repeat.
        if value > safe_max_encryptions(algo.value):
            raise PolicyError(f"config key {at!r}: {show(value)} exceeds the safe bound "
                              f"{safe_max_encryptions(algo.value)} for random nonces")
        merged[algo.value] = value
    return MappingProxyType(merged)


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
    #: A retired version is destroyed once its dual-key window and then this much more have passed.
    destroy_after_seconds: float = 180 * 86400.0

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "keyring.") -> KeyringConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        expect(data, Mapping, prefix.rstrip("."))
        data = cast("Mapping[Any, Any]", data)
        nested: dict[str, Any] = {}
        if "max_encryptions" in data:
            nested["max_encryptions"] = _max_encryptions(data["max_encryptions"], f"{prefix}max_encryptions")
        if "kek" in data:
            nested["kek"] = KekConfig.from_mapping(data["kek"], f"{prefix}kek.")
        return build_section(cls, _KEYRING_FIELDS, data, prefix, frozenset(("max_encryptions", "kek")), **nested)

    @classmethod
    def from_document(cls, data: object, default_algorithm: AEAD, prefix: str = "crypto.keyring.") -> KeyringConfig:
        """From an Appendix C ``keyring:`` section; new keys use ``default_algorithm`` (``aead.default``)."""
        expect(data, Mapping, prefix.rstrip("."))
        data = cast("Mapping[Any, Any]", data)
        nested: dict[str, Any] = {"default_algorithm": default_algorithm}
        if "max_encryptions" in data:
            nested["max_encryptions"] = _max_encryptions(data["max_encryptions"], f"{prefix}max_encryptions")
        if "kek" in data:
            nested["kek"] = KekConfig.from_mapping(data["kek"], f"{prefix}kek.")
        return build_section(cls, _KEYRING_DOC_FIELDS, data, prefix, frozenset(("max_encryptions", "kek")),
                             **nested)

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data (durations in seconds)."""
        out = dump_section(self, _KEYRING_FIELDS)
        out["max_encryptions"] = dict(self.max_encryptions)
        out["kek"] = self.kek.to_mapping()
        return out

    @staticmethod
    def tightens(key: str, old: Any, new: Any) -> bool:
        """Whether changing recorded security key ``key`` from ``old`` to ``new`` is stricter.

        Rotating sooner and fewer encryptions per version are; anything else (the KEK above
        all) is not. A shorter dual-key window or retention is not: it makes retired versions
        destroyable sooner, so one operator could destroy versions that a destroy needs
        approvals for (found by a review). Either way it needs the approvals a loosening does.
        """
        if key in ("dual_window", "destroy_after"):
            return False
        if key == "max_encryptions":
            return set(new) == set(old) and all(new[a] <= old[a] for a in old)
        if key == "default_policy":
            (r_old, m_old), (r_new, m_new) = parse_policy(old), parse_policy(new)
            sooner = r_new is not None and (r_old is None or r_new <= r_old)
            return sooner and (m_old is None or (m_new is not None and m_new <= m_old))
        return False

    def to_document(self) -> dict[str, Any]:
        """The Appendix C spelling (durations in days)."""
        out = dump_section(self, _KEYRING_DOC_FIELDS)
        out["max_encryptions"] = dict(self.max_encryptions)
        out["kek"] = self.kek.to_mapping()
        return out


def _usage_policy(value: object, key: str) -> str:
    """A key usage policy string, checked now rather than at the first ``key create``."""
    policy = text(value, key)
    try:
        parse_policy(policy)
    except PolicyError as exc:
        raise PolicyError(f"config key {key!r}: {exc.args[0]}") from None
    return policy


def _rotation_days(value: object, key: str) -> str:
    """``rotation_days`` (a positive number, or ``never``) as the usage policy it means."""
    if value == "never":
        return "rotate=never"
    days = positive(parse_days)(value, key)
    policy = f"rotate={_number_text(days)}d"
    try:  # what the keyring will parse: a period too short or too long to write is refused here
        parse_policy(policy)
    except PolicyError:
        raise PolicyError(f"config key {key!r}: a rotation period of {show(value)} days is out of range") from None
    return policy


def _rotation_days_out(policy: str) -> int | float | str:
    rotate, _ = parse_policy(policy)
    return "never" if rotate is None else days_out(rotate)


def _number_text(value: float) -> str:
    # Never in exponent form ('1e-07'), which a usage policy does not parse.
    return str(int(value)) if float(value).is_integer() else format(float(value), ".12f").rstrip("0").rstrip(".")


_KEYRING_FIELDS = (
    Field("database", "database", text),
    Field("default_algorithm", "default_algorithm", parse_aead_name, to_str),
    Field("default_policy", "default_policy", _usage_policy),
    Field("dual_window", "dual_window_seconds", timer_duration, seconds_out),
    Field("destroy_after", "destroy_after_seconds", timer_duration, seconds_out),
    Field("usage_block", "usage_block", count(1)),
)
_KEYRING_DOC_FIELDS = (
    Field("rotation_days", "default_policy", _rotation_days, _rotation_days_out),
    Field("dual_window_days", "dual_window_seconds", days_as_seconds, days_out),
    Field("destroy_after_days", "destroy_after_seconds", days_as_seconds, days_out),
    Field("database", "database", text),
    Field("usage_block", "usage_block", count(1)),
)


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    """``approvals:`` -- distinct operator approvals required for dangerous key operations."""

    revoke: int = 0
    destroy: int = 0
    emergency_revoke: int = 0
    request_ttl_seconds: float = 86400.0

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "approvals.") -> ApprovalsConfig:
        """Validate and build; an emergency may need fewer approvals than a revoke, not more."""
        cfg = build_section(cls, _APPROVALS_FIELDS, data, prefix)
        if cfg.emergency_revoke > cfg.revoke:
            raise PolicyError(f"config key '{prefix}emergency_revoke': must be <= {prefix}revoke "
                              f"({show(cfg.revoke)}); an emergency may need fewer approvals, not more, "
                              f"got {show(cfg.emergency_revoke)}")
        return cfg

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data."""
        return dump_section(self, _APPROVALS_FIELDS)

    @staticmethod
    def tightens(key: str, old: Any, new: Any) -> bool:
        """More approvals, or a shorter-lived request, is stricter."""
        if key in ("revoke", "destroy", "emergency_revoke"):
            return bool(new > old)
        if key == "request_ttl":
            return bool(new < old)
        return False


# No home has anywhere near this many operators; a larger threshold (10**29 was accepted) can
# never be met, and would lock whatever it gates for good.
MAX_APPROVALS = 1000


def _threshold(value: object, key: str) -> int:
    """An approval count in ``0..MAX_APPROVALS``."""
    got = count()(value, key)
    if got > MAX_APPROVALS:
        raise PolicyError(f"config key {key!r}: must be <= {MAX_APPROVALS}, got {show(got)}")
    return got


_APPROVALS_FIELDS = (
    Field("revoke", "revoke", _threshold),
    Field("destroy", "destroy", _threshold),
    Field("emergency_revoke", "emergency_revoke", _threshold),
    # Bounded like a timer: a request's expiry becomes a date (1e300 loaded, then every
    # request was refused without naming this key).
    Field("request_ttl", "request_ttl_seconds", positive(timer_duration), seconds_out),
)
