"""The hot-patch configuration section (``hotpatch:``): validation gates, staging, inbox.

The seed's three switches are here as it spells them: ``require_signature``,
``run_selftests`` and ``rollback_on_error`` (all true by default). Turning either of the first
two off removes a gate that keeps unreviewed code out of the engine, so it is refused unless
``development: true`` is set as well; the home records them (a later file that differs is refused).

Example:
    >>> HotpatchConfig.from_mapping({"canary_seconds": "30s"}).canary_seconds
    30.0
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._config_fields import (
    Field,
    build_section,
    count,
    dump_section,
    flag,
    number,
    optional_text,
    parse_size,
    positive,
    seconds_out,
    timer_duration,
)
from xpscerpto.errors import PolicyError

if TYPE_CHECKING:
    from xpscerpto.home import Home

    from .state_store import StateStore

__all__ = ["HotpatchConfig"]


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
    #: After cutover, 1 call in ``sample_every`` is also computed by the replaced implementation
    #: for ``sample_seconds``; a difference rolls the capsule back (0 seconds: off).
    sample_every: int = 64
    sample_seconds: float = 30.0
    require_signature: bool = True
    run_selftests: bool = True
    rollback_on_error: bool = True
    #: Explicitly allows switching signature checks or self-tests off (development only).
    development: bool = False
    #: ``postgresql://…``: keep this node's routing state in the database (row ``node``)
    #: instead of ``HOME/state.json``; ``None``: the file.
    state_database: str | None = None
    #: This node's name in ``state_database`` (required with it).
    node: str | None = None
    #: The pinned publisher keys (``trust.json``): an absolute path outside the home; ``None``:
    #: ``HOME/trust.json``. Outside the home, read-only to the engine's user, it keeps whoever
    #: can write the home from pinning their own key (and so running their code). The home
    #: records it, so an engine started without the configuration refuses to start.
    trust_store: str | None = None

    @classmethod
    def from_mapping(cls, data: object, prefix: str = "hotpatch.") -> HotpatchConfig:
        """Validate and build; raises PolicyError naming the bad key."""
        cfg = build_section(cls, _FIELDS, data, prefix)
        if cfg.state_database is not None and cfg.node is None:
            raise PolicyError(f"config key '{prefix}node': required with '{prefix}state_database' (the row of this "
                              "node's routing state)")
        if cfg.trust_store is not None and (not os.path.isabs(cfg.trust_store) or ".." in Path(cfg.trust_store).parts):
            raise PolicyError(f"config key '{prefix}trust_store': expected an absolute path without '..' (the trust "
                              "store belongs outside the home, where whoever can write the home cannot write it)")
        for name in ("require_signature", "run_selftests"):
            if not getattr(cfg, name) and not cfg.development:
                raise PolicyError(f"config key '{prefix}{name}': false removes a gate that keeps unreviewed code out "
                                  f"of the engine; it needs '{prefix}development: true' as well (never in production)")
        return cfg

    @staticmethod
    def tightens(key: str, old: Any, new: Any) -> bool:
        """A gate switched on, or development mode switched off, is stricter."""
        if key in ("require_signature", "run_selftests", "rollback_on_error"):
            return new is True
        return key == "development" and new is False

    def to_mapping(self) -> dict[str, Any]:
        """Every key as plain data (durations in seconds, sizes in bytes)."""
        return dump_section(self, _FIELDS)

    def trust_path(self, home: Home) -> Path:
        """Where ``home``'s pinned publisher keys are read (and ``xps trust`` writes them).

        A trust store outside the home is recorded in ``home.json`` once it exists, so an engine
        started without the configuration (or naming another store) is refused rather than
        reading ``HOME/trust.json`` — which whoever can write the home could have filled.

        Raises:
            PolicyError: the store is inside the home (through a symlink too), or the home
                records another trust store, or records this one and it is missing.
        """
        if self.trust_store is None:
            home.check_store("trust")
            return home.trust
        path = Path(self.trust_store)
        try:
            root, real = home.root.resolve(), path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop is a RuntimeError before Python 3.13
            raise PolicyError(f"config key 'hotpatch.trust_store': {str(path)!r} cannot be resolved "
                              f"({type(exc).__name__}; a symlink loop?)") from None
        if real == root or root in real.parents:
            raise PolicyError(f"config key 'hotpatch.trust_store': {str(path)!r} is inside the home {str(root)!r}; "
                              "keep the trust store where whoever can write the home cannot write it")
        if home.check_store("trust", str(path)) and os.path.isfile(path) and home.record_path.exists():
            home.register_store("trust", str(path))
        return path

    def state_store(self, home: Home) -> StateStore:
        """Where ``home``'s routing state lives under this configuration (file or database row)."""
        if self.state_database is None:
            from .state_store import FileStateStore

            return FileStateStore(home)
        from xpscerpto.db.capsule_state import PgStateStore

        assert self.node is not None  # from_mapping requires it
        return PgStateStore(self.state_database, node=self.node, home=home)


def _database(value: object, key: str) -> str | None:
    if value is None:
        return None
    from xpscerpto.db.postgres import check_dsn

    return check_dsn(value, key)


def _node(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise PolicyError(f"config key '{key}': expected a printable node name of 1 to 200 characters")
    return value


_FIELDS = (
    Field("require_signature", "require_signature", flag),
    Field("run_selftests", "run_selftests", flag),
    Field("rollback_on_error", "rollback_on_error", flag),
    Field("development", "development", flag),
    Field("canary_share", "canary_share", number(0.0, 1.0)),
    Field("canary_seconds", "canary_seconds", timer_duration, seconds_out),
    Field("dual_run_seconds", "dual_run_seconds", timer_duration, seconds_out),
    Field("timeout", "timeout_seconds", positive(timer_duration), seconds_out),
    Field("memory", "memory_bytes", positive(parse_size)),
    Field("max_slowdown", "max_slowdown", number(1.0)),
    Field("bench_bytes", "bench_bytes", parse_size),
    Field("settle", "settle_seconds", timer_duration, seconds_out),
    Field("drain_timeout", "drain_timeout_seconds", timer_duration, seconds_out),
    Field("sample_every", "sample_every", count(1)),
    Field("sample", "sample_seconds", timer_duration, seconds_out),
    Field("state_database", "state_database", _database),
    Field("node", "node", _node),
    Field("trust_store", "trust_store", optional_text),
)
