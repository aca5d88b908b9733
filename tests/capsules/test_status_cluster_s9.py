"""Review s9, F5 (status part): ``xps status`` of an engine running with ``--cluster`` shows the
announcer's state (its last error, this node's changes waiting to be announced), in text and JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from xpscerpto.capsules.control import ControlServer

from tests.capsules.test_cli_service import NAME, OP, Watcher, published, status, wait_for, watchers, xps

__all__ = ["published", "watchers"]


def _cluster(home: Path) -> dict[str, Any] | None:
    got = status(home).get("cluster")
    return None if got is None else dict(got)


#: What the status of a node that announced everything it changed shows.
CLEAN = {"node": "node-a", "last_error": None, "waiting": 0, "not_announced": 0}


def test_status_shows_a_database_outage_and_the_change_waiting_for_it_then_the_recovery(
        published: tuple[Path, Path, Path], watchers: list[Watcher], pg_dsn: str, pg_server: object,
        tmp_path: Path) -> None:
    capsule, _pub, home = published
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watchers.append(Watcher(home, inbox, "--polling", "--cluster", pg_dsn, "--node", "node-a"))
    assert _cluster(home) == CLEAN
    assert "cluster node node-a: announcing and following, nothing waiting" in xps(home, "status").stdout
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        shutil.copy2(capsule, inbox / NAME)
        wait_for(lambda: status(home)["routes"].get(OP) == "xchacha20-openssl", "the capsule enabled")

        def stuck() -> bool:
            got = _cluster(home)
            return got is not None and got["waiting"] == 1 and bool(got["last_error"])

        wait_for(stuck, "the enable waiting for the database, and the announcer's error")
        got = _cluster(home)
        assert got is not None and str(got["last_error"]).startswith("XPS_ERR_INTERNAL: database ")
        text = xps(home, "status").stdout
        line = next(x for x in text.splitlines() if x.startswith("cluster"))
        assert line.startswith("cluster node node-a: 1 change waiting to be announced; last error: "
                               "XPS_ERR_INTERNAL: database "), line
    finally:
        pg_server.start()  # type: ignore[attr-defined]
    wait_for(lambda: _cluster(home) == CLEAN,
             "the change announced once the database is back")


def test_status_of_an_engine_without_cluster_has_no_cluster_part(
        published: tuple[Path, Path, Path], watchers: list[Watcher], tmp_path: Path) -> None:
    _capsule, _pub, home = published
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watchers.append(Watcher(home, inbox, "--polling"))
    assert "cluster" not in status(home)
    assert "cluster" not in xps(home, "status").stdout


class _Updater:
    def status(self, events: int = 20) -> dict[str, Any]:
        return {"running": True, "table_version": 7, "routes": {}, "active": [], "staging": None,
                "retired": [], "highest": {}, "events": []}


class _Service:
    """A service whose announcer reports control characters (none of its own messages has them)."""

    def cluster_status(self) -> dict[str, Any]:
        return {"node": "n", "last_error": "XPS_ERR_INTERNAL: bad\n\x1b[2Jforged line", "waiting": 2,
                "not_announced": 1}


def test_the_announcer_state_is_printed_terminal_safe(short_root: Path) -> None:
    home = short_root / "home"
    home.mkdir(mode=0o700)
    server = ControlServer(_Updater(), home / "control.sock", service=_Service())  # type: ignore[arg-type]
    server.start()
    try:
        text = xps(home, "status").stdout
        doc = json.loads(xps(home, "status", "--json").stdout)
    finally:
        server.stop()
    assert "cluster node n: 2 changes waiting to be announced; last error: XPS_ERR_INTERNAL: bad\\n\\x1b[2Jforged " \
           "line" in text
    assert "; 1 change never announced since the start (journaled as PATCH_REJECT not-announced)" in text
    assert "\x1b" not in text and "\nforged" not in text
    assert doc["cluster"] == {"node": "n", "last_error": "XPS_ERR_INTERNAL: bad\n\x1b[2Jforged line", "waiting": 2,
                              "not_announced": 1}


def test_status_shows_a_change_dropped_unannounced(
        published: tuple[Path, Path, Path], watchers: list[Watcher], pg_dsn: str, pg_server: object,
        tmp_path: Path) -> None:
    # The review's repro: enabled while the database is away, and the stored copy lost before it
    # is back; the enable can never be announced, and the fleet diverges.
    capsule, _pub, home = published
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watchers.append(Watcher(home, inbox, "--polling", "--cluster", pg_dsn, "--node", "node-a"))
    pg_server.stop("immediate")  # type: ignore[attr-defined]
    try:
        shutil.copy2(capsule, inbox / NAME)
        wait_for(lambda: (_cluster(home) or {}).get("waiting") == 1, "the enable waiting for the database")
        sha = status(home)["active"][0]["sha256"]
        (home / "capsules" / f"{sha}.capsule").unlink()
    finally:
        pg_server.start()  # type: ignore[attr-defined]
    wait_for(lambda: (_cluster(home) or {}).get("not_announced") == 1, "the dropped enable counted")
    got = _cluster(home)
    assert got is not None and got["waiting"] == 0
    line = next(x for x in xps(home, "status").stdout.splitlines() if x.startswith("cluster"))
    assert "nothing waiting" in line and "; 1 change never announced since the start" in line, line
