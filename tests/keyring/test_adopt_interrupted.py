"""``xps init --adopt`` interrupted or refused (found by the kill -9 review).

An adoption killed after its database commit was journaled as ``adopted: false`` or not at all,
and one killed before it set ``operators.json`` aside wedged every command; a refused adoption
left its ``home.json`` behind. Real processes, killed by strace at each fsync in turn.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.strace_kill import strace

from .test_home_policy import events, ok, refused, xps
from .test_upgrade import DATA


def _old_home(path: Path) -> Path:
    shutil.copytree(DATA / "v1-home", path)
    path.chmod(0o700)
    for secret in ("kek.key", "audit.key", "keyring.db", "audit.log", "operators.json"):
        (path / secret).chmod(0o600)
    return path


def _adopt_killed_at(home: Path, n: int) -> int:
    cmd = [strace(), "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
           "-e", f"inject=fsync,fdatasync:signal=KILL:when={n}",
           sys.executable, "-m", "xpscerpto", "--home", str(home), "init", "--adopt"]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False).returncode


def _syncs(tmp: Path) -> int:
    home = _old_home(tmp / "count")
    out = subprocess.run([strace(), "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", str(tmp / "c.txt"),
                          sys.executable, "-m", "xpscerpto", "--home", str(home), "init", "--adopt"],
                         capture_output=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)", (tmp / "c.txt").read_text(),
                                                      re.M))


def test_an_adoption_killed_at_any_sync_is_journaled_as_an_adoption_once_it_committed(tmp_path: Path) -> None:
    total = _syncs(tmp_path)
    assert total >= 3
    committed = 0
    for n in range(1, total + 1):
        home = _old_home(tmp_path / f"h{n}")
        if _adopt_killed_at(home, n) == 0:
            continue  # ran past its last sync
        # The operator's next steps: the same adoption again, or (refused: already adopted) any
        # command; every command works, and the journal says the home was adopted.
        again = xps(home, "init", "--adopt")
        if again.returncode != 0:
            refused(again, "sealed keyring already")
        ok(xps(home, "key", "list"))
        names = [e["event"] for e in events(home)]
        if "KEYRING_SEALED" in names:
            committed += 1
            inits = [e for e in events(home) if e["event"] == "HOME_INIT"]
            assert inits and all(e.get("adopted") is True for e in inits), (n, inits)
        assert not (home / "operators.json").exists()
    assert committed  # the scan did cover kills after the commit


def test_an_imported_operators_file_not_yet_set_aside_is_retired_not_refused(tmp_path: Path) -> None:
    # What an adoption killed between its commit and the rename leaves.
    home = _old_home(tmp_path / "home")
    ok(xps(home, "init", "--adopt"))
    (home / "operators.json.imported").rename(home / "operators.json")
    ok(xps(home, "key", "list"))
    assert not (home / "operators.json").exists() and (home / "operators.json.imported").exists()


def test_an_operators_file_with_an_operator_the_database_lacks_is_still_refused(tmp_path: Path) -> None:
    home = _old_home(tmp_path / "home")
    ok(xps(home, "init", "--adopt"))
    (home / "operators.json.imported").rename(home / "operators.json")
    text = (home / "operators.json").read_text()
    keyid = re.search(r'"([0-9a-f]{16,})"', text)
    assert keyid is not None
    (home / "operators.json").write_text(text.replace(keyid.group(1), "f" * len(keyid.group(1))))
    refused(xps(home, "key", "list"), "operators are kept in the keyring database")


def test_a_refused_adoption_leaves_no_home_json_and_the_corrected_retry_works(tmp_path: Path) -> None:
    home, strict = tmp_path / "home", tmp_path / "strict.yaml"
    strict.write_text("crypto:\n  policy:\n    forbid: [aes128, sha1, des]\n")
    ok(xps(home, "init", config=strict))
    ok(xps(home, "key", "list"))
    (home / "home.json").unlink()  # lost; the operator follows the README and adopts the home
    refused(xps(home, "init", "--adopt"), "differs from the one this keyring sealed")
    assert not (home / "home.json").exists()
    refused(xps(home, "key", "list"), "no home.json")
    ok(xps(home, "init", "--adopt", config=strict))
    assert "aes128" in ok(xps(home, "policy", "show"))


def test_an_uninterrupted_adoption_is_journaled_once(tmp_path: Path) -> None:
    home = _old_home(tmp_path / "home")
    ok(xps(home, "init", "--adopt"))
    ok(xps(home, "init"))
    assert [e.get("adopted") for e in events(home) if e["event"] == "HOME_INIT"] == [True]
