"""An engine's state directory: trust store, capsule store, routing state, audit, control socket.

``--home DIR``, else ``$XPS_HOME``, else ``$XDG_STATE_HOME/xpscerpto`` (default
``~/.local/state/xpscerpto``). Created with mode 0700: it holds the trust pins and the socket
that can roll back the running engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Home"]


@dataclass(frozen=True, slots=True)
class Home:
    """Paths inside one engine home."""

    root: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None, *, create: bool = True) -> Home:
        """Pick the home directory (argument, env, XDG default) and create it 0700."""
        if home is None:
            home = os.environ.get("XPS_HOME") or Path(
                os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "xpscerpto"
        h = cls(Path(home).expanduser().resolve())
        if create:
            h.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            h.capsules.mkdir(mode=0o700, exist_ok=True)
        return h

    @property
    def trust(self) -> Path:
        """Pinned publisher keys."""
        return self.root / "trust.json"

    @property
    def capsules(self) -> Path:
        """Accepted capsules, content-addressed (``<sha256>.capsule``)."""
        return self.root / "capsules"

    @property
    def state(self) -> Path:
        """Committed routing state and its history."""
        return self.root / "state.json"

    @property
    def audit(self) -> Path:
        """The audit journal."""
        return self.root / "audit.log"

    @property
    def socket(self) -> Path:
        """The running engine's control socket."""
        return self.root / "control.sock"

    @property
    def lock(self) -> Path:
        """Serialises writers of ``state.json`` across processes."""
        return self.root / "state.lock"
