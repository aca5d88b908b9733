"""Where the committed routing state lives: ``state.json`` in the home, or a database row.

The updater reads, locks and commits its :class:`~.store.RoutingState` through this interface
only. :class:`FileStateStore` is ``HOME/state.json`` under the home's lock file (the default);
:class:`xpscerpto.db.capsule_state.PgStateStore` keeps the same document in PostgreSQL, one
row per node (``hotpatch.state_database`` and ``hotpatch.node``). Either way a commit is one
atomic replacement, so a crash leaves the previous or the next state; and each node keeps its
own state, because each node verifies and validates every capsule itself.

Example:
    >>> store = FileStateStore(Home.resolve(tmp))                    # doctest: +SKIP
    >>> with store.lock():
    ...     store.save(store.load())
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from xpscerpto.errors import PolicyError
from xpscerpto.home import Home

from .refusal import Refusal, refuse
from .store import RoutingState, state_lock

__all__ = ["FileStateStore", "StateStore"]


class StateStore(Protocol):
    """Load, lock (read-modify-write across processes) and commit the routing state."""

    @property
    def where(self) -> str:
        """The file or database row, as refusals name it."""

    def load(self) -> RoutingState:
        """The committed state (nothing committed yet: the empty state)."""

    def save(self, state: RoutingState) -> None:
        """Commit ``state`` atomically (raises an ``io`` refusal, keeping the old one, on failure)."""

    def lock(self) -> AbstractContextManager[None]:
        """Exclusive across processes sharing this state, for a load-modify-save."""

    def close(self) -> None:
        """Release connections (nothing for a file)."""


@dataclass(frozen=True, slots=True)
class FileStateStore:
    """``HOME/state.json``, replaced atomically, under ``HOME/.lock``."""

    home: Home

    @property
    def where(self) -> str:
        """The state file."""
        return str(self.home.state)

    def load(self) -> RoutingState:
        """Read ``state.json``; missing means nothing was enabled yet, unless the home recorded it.

        Raises:
            UpdateError: ``state`` -- the home's record lists the file and it is missing or
                empty (never read as "nothing enabled": that would silently drop every
                hot-patched provider), or the document is malformed.
        """
        try:
            self.home.check_store("routing")
        except PolicyError as exc:
            raise refuse(Refusal.STATE, str(exc).removeprefix(exc.code.value + ": ")) from None
        return RoutingState.load(self.home.state)

    def save(self, state: RoutingState) -> None:
        """Replace ``state.json`` atomically, and record it in the home (as every store is)."""
        state.save(self.home.state)
        if self.home.record_path.exists():
            self.home.register_store("routing")

    def lock(self) -> AbstractContextManager[None]:
        """The home's lock file (flock)."""
        return state_lock(self.home)

    def close(self) -> None:
        """Nothing to release."""
