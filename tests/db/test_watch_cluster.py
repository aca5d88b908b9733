"""Two ``xps watch --cluster`` processes on one PostgreSQL: a capsule dropped on one node reaches the other."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.capsules.test_cli_service import NAME, OP, Watcher, published, status, wait_for, watchers, xps

__all__ = ["published", "watchers"]


def test_a_capsule_dropped_on_one_node_is_verified_and_enabled_on_the_other(
        published: tuple[Path, Path, Path], watchers: list[Watcher], pg_dsn: str, tmp_path: Path) -> None:
    capsule, pub, home_a = published
    home_b = tmp_path / "home-b"
    xps(home_b, "trust", "add", str(pub), "--ops", "aead.*")
    inbox_a, inbox_b = tmp_path / "inbox-a", tmp_path / "inbox-b"
    inbox_a.mkdir()
    inbox_b.mkdir()
    # Separate journal keys: each node pins the other's, so it follows the other's rollbacks.
    watchers.append(Watcher(home_a, inbox_a, "--polling", "--cluster", pg_dsn, "--node", "a",
                            "--peer-key", str(home_b / "audit.pub")))
    watchers.append(Watcher(home_b, inbox_b, "--polling", "--cluster", pg_dsn, "--node", "b",
                            "--peer-key", str(home_a / "audit.pub")))
    shutil.copy2(capsule, inbox_a / NAME)
    wait_for(lambda: status(home_b)["routes"].get(OP) == "xchacha20-openssl",
             "node b to serve the capsule dropped on node a")
    assert not list(inbox_b.glob("*.capsule"))  # b did not need a file: it verified the announced bytes
    # An operator's rollback on b reaches a.
    xps(home_b, "rollback", OP)
    wait_for(lambda: status(home_a)["routes"].get(OP) == "sodium", "node a to roll back")
