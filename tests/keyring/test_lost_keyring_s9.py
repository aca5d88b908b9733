"""A home that had a keyring never gets a new one in its place (review s9-ops F2).

Someone who can write the home, without the KEK, moved ``keyring.db`` away and took it out of
``home.json``: the next ordinary command made a new, empty keyring under whatever policy the
edited record said — every key gone without an error, approvals thresholds down to 0, the
operators' setup window open again, or an ``operators.json`` of theirs imported — and
``xps providers`` routed what the recorded floor forbade. Real homes, real ``xps`` processes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .test_home_policy import keygen, ok, refused, xps

STRICT = "crypto:\n  approvals: {revoke: 2, destroy: 2, emergency_revoke: 1}\n  policy: {forbid: [aes128]}\n"
LOST = "missing, and not in home.json, though this home"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    keygen(tmp_path, "alice")
    keygen(tmp_path, "bob")
    (tmp_path / "strict.yaml").write_text(STRICT)
    h = tmp_path / "home"
    ok(xps(h, "init", "--operator", str(tmp_path / "alice.pub"), "--operator", str(tmp_path / "bob.pub"),
           config=tmp_path / "strict.yaml"))
    ok(xps(h, "key", "create", "payments"))
    return h


def _take_keyring_away(home: Path, stash: Path, *, drop: tuple[str, ...] = ("keyring",), loosen: bool = True) -> None:
    stash.mkdir()
    for f in home.glob("keyring.db*"):
        shutil.move(f, stash / f.name)
    record = json.loads((home / "home.json").read_text())
    for store in drop:
        record["stores"].pop(store, None)
    record.pop("sealed", None)
    if loosen:
        for k in ("approvals.revoke", "approvals.destroy", "approvals.emergency_revoke"):
            record["policy"][k] = 0
        record["policy"]["engine.policy.forbid"] = []
    (home / "home.json").write_text(json.dumps(record))


@pytest.mark.parametrize("drop", [("keyring",), ("keyring", "kek")], ids=["keyring", "keyring-and-kek"])
def test_a_keyring_moved_away_is_refused_not_recreated(tmp_path: Path, home: Path, drop: tuple[str, ...]) -> None:
    _take_keyring_away(home, tmp_path / "stash", drop=drop)
    for args in (("key", "list"), ("operator", "add", str(tmp_path / "bob.pub")), ("policy", "show"),
                 ("providers",), ("config", "show")):
        refused(xps(home, *args), "XPS_ERR_", LOST)
    assert not list(home.glob("keyring.db*"))  # nothing made in its place
    # Put back, everything is as it was (home.json's edit is still refused by the sealed copy).
    for f in (tmp_path / "stash").iterdir():
        shutil.move(f, home / f.name)
    refused(xps(home, "key", "list"), "XPS_ERR_")


def test_an_operators_file_dropped_beside_a_missing_keyring_is_never_imported(tmp_path: Path, home: Path) -> None:
    _take_keyring_away(home, tmp_path / "stash", loosen=False)
    mallory = keygen(tmp_path, "mallory")
    from xpscerpto.signing import load_public_key

    key = load_public_key(mallory)
    (home / "operators.json").write_text(json.dumps({"format": 1, "operators": [
        {"keyid": key.keyid, "public_key": key.public_key.hex(), "label": "mallory"}]}))
    refused(xps(home, "key", "list"), LOST)
    refused(xps(home, "operator", "list"), LOST)
    assert not list(home.glob("keyring.db*"))


def test_a_first_open_killed_before_its_keyring_was_recorded_still_finishes(tmp_path: Path) -> None:
    """The KEK is recorded only with the keyring: a first open that made kek.key (and maybe the
    database) and died before recording them is finished by the next command, not refused."""
    h = tmp_path / "fresh"
    ok(xps(h, "key", "list"))
    record = json.loads((h / "home.json").read_text())
    assert {"kek", "keyring"} <= set(record["stores"])
    for f in h.glob("keyring.db*"):
        f.unlink()
    for store in ("kek", "keyring"):
        record["stores"].pop(store)
    record.pop("sealed", None)
    (h / "home.json").write_text(json.dumps(record))
    for name in ("audit.log", "audit.pub", "audit.key"):  # the journal starts after the records
        (h / name).unlink(missing_ok=True)
    record["stores"].pop("audit", None)
    (h / "home.json").write_text(json.dumps(record))
    ok(xps(h, "key", "create", "k"))  # kek.key reused, a keyring made and both recorded
    assert {"kek", "keyring"} <= set(json.loads((h / "home.json").read_text())["stores"])


# -- review s9-hsm F4: no KEK is made beside an existing keyring database ---------------------------


def test_adopting_a_home_whose_kek_is_gone_makes_no_new_kek(tmp_path: Path) -> None:
    h = tmp_path / "h"
    ok(xps(h, "key", "create", "k"))
    (h / "kek.key").unlink()  # the KEK lost (a token's key object deleted, here its file)
    (h / "home.json").unlink()  # and the record
    refused(xps(h, "init", "--adopt"), "XPS_ERR_KEY", "no KEK file")
    assert not (h / "kek.key").exists()  # before: a new one was made, then the database refused it


# -- review s9-hsm F1: a committed rotation is reported as done, whatever happens after -----------


def test_a_rotation_committed_before_the_database_went_away_is_reported_done(tmp_path: Path) -> None:
    from xpscerpto.keyring import Keyring

    from tests.db.test_postgres import _node
    from tests.pg_server import PgServer, require_server_bin

    server = PgServer(require_server_bin())
    try:
        from xpscerpto.db import Database, migrate

        dsn = server.create_database("keys")
        db = Database(dsn)
        migrate(db)
        db.close()
        ring = _node(tmp_path, "n0", dsn)
        ring.create("orders")
        retention = ring.enforce_retention

        def database_gone_after_the_commit() -> None:
            server.stop("immediate")  # the real server, at the moment the review stopped it
            retention()

        ring.enforce_retention = database_gone_after_the_commit  # type: ignore[method-assign]
        assert ring.rotate("orders") == 2  # before: InternalError "the change did not happen — retry"
        ring.enforce_retention = retention  # type: ignore[method-assign]
        server.start()
        ring.close()
        again = Keyring(tmp_path / "n0", config=ring.config)
        try:
            assert again.describe("orders").versions[-1].version == 2
            assert again.audit.mentions("KEY_ROTATE")
        finally:
            again.close()
    finally:
        server.close()
