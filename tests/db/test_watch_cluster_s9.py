"""``xps watch --cluster`` processes, review s9: one node name belongs to one home."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.capsules.test_cli_service import Watcher, published, watchers, xps

__all__ = ["published", "watchers"]


def test_a_second_watcher_under_the_default_node_name_is_refused_at_start(
        published: tuple[Path, Path, Path], watchers: list[Watcher], pg_dsn: str, tmp_path: Path) -> None:
    # Review s9 F4: two watchers without --node both ran as `local`; each skipped the other's
    # announcements as its own, so nothing ever crossed, and nothing said so.
    _, pub, home_a = published
    home_b = tmp_path / "home-b"
    xps(home_b, "trust", "add", str(pub), "--ops", "aead.*")
    inbox_a, inbox_b = tmp_path / "inbox-a", tmp_path / "inbox-b"
    inbox_a.mkdir()
    inbox_b.mkdir()
    watchers.append(Watcher(home_a, inbox_a, "--polling", "--cluster", pg_dsn))
    second = subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(home_b), "watch", str(inbox_b),
                               "--polling", "--cluster", pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        out, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:  # it started: stop it (the assertions below then fail)
            second.kill()
            out, err = second.communicate()
    assert second.returncode != 0 and not out.startswith("watching")
    assert "XPS_ERR_POLICY" in err and "'local'" in err and "--node" in err and "Traceback" not in err
    # Under a name of its own it starts (its refused start wrote no announce.json).
    watchers.append(Watcher(home_b, inbox_b, "--polling", "--cluster", pg_dsn, "--node", "b"))
