"""The PostgreSQL store: DSN checks, migrations, typed errors, cross-node invalidation, outages."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.db import Database, applied, head, migrate
from xpscerpto.db.postgres import check_dsn
from xpscerpto.errors import AuthError, InternalError, KeyError_, PolicyError, XpsError
from xpscerpto.home import Home
from xpscerpto.keyring import Keyring

from tests.pg_server import PgServer


def _config(dsn: str) -> object:
    return XpsConfig.from_mapping({"keyring": {"database": dsn}}).keyring


def _node(root: Path, name: str, dsn: str, like: Path | None = None) -> Keyring:
    """A keyring node with its own home on the shared database (the KEK copied from ``like``)."""
    home = root / name
    if like is not None:  # joining the fleet: the operator copies the KEK and adopts the home
        home.mkdir(mode=0o700)
        shutil.copy2(like / "kek.key", home / "kek.key")
        policy = XpsConfig.from_mapping({"keyring": {"database": dsn}}).security_policy()
        Home.resolve(home).initialise(policy=policy, adopt=True)
    return Keyring(home, config=_config(dsn))


@pytest.mark.parametrize("dsn", [
    None, 42, b"postgresql://h/db", "sqlite:///x.db", "postgresql://h", "postgresql://h/",
    "postgresql://u:hunter2@h/db", "postgresql://u@h/db?password=hunter2", "postgresql://h:99999/db",
    "postgresql://h/db\x00", "postgresql://h/" + "d" * 1100])
def test_a_bad_or_secret_bearing_dsn_is_refused_without_echoing_it(dsn: object) -> None:
    with pytest.raises(PolicyError) as info:
        check_dsn(dsn)
    assert "hunter2" not in str(info.value) and "keyring.database" in str(info.value)


def test_a_keyring_configured_with_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Keyring(tmp_path / "h", config=_config("postgresql://xps:hunter2@127.0.0.1:1/db"))
    assert "hunter2" not in str(info.value)


def test_migrations_apply_once_even_when_two_nodes_race(pg_server: PgServer) -> None:
    dsn = pg_server.create_database("xps_fresh_race")
    dbs = [Database(dsn) for _ in range(3)]
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda d=d: results.append(migrate(d))) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=len) == [[], [], list(range(1, head() + 1))]
    assert applied(dbs[0]) == head() and migrate(dbs[0]) == []
    rows = dbs[0].execute("SELECT version FROM xps_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, head() + 1))
    for d in dbs:
        d.close()


def test_a_keyring_on_an_unmigrated_database_names_the_command(pg_server: PgServer, tmp_path: Path) -> None:
    dsn = pg_server.create_database("xps_fresh_unmigrated")
    with pytest.raises(PolicyError, match="xps db migrate"):
        Keyring(tmp_path / "h", config=_config(dsn))
    # Nothing was created behind the refusal: the database is still empty.
    db = Database(dsn)
    assert applied(db) == 0
    db.close()


def test_an_unreachable_server_is_an_internal_error_naming_the_database(tmp_path: Path) -> None:
    with pytest.raises(InternalError) as info:
        Database("postgresql://xps@127.0.0.1:1/nowhere", timeout=1).execute("SELECT 1")
    assert "127.0.0.1:1/nowhere" in str(info.value) and info.value.reason == "database"


def test_nodes_share_keys_and_a_revocation_reaches_another_node_within_the_bound(
        pg_dsn: str, tmp_path: Path) -> None:
    a = _node(tmp_path, "a", pg_dsn)
    b = _node(tmp_path, "b", pg_dsn, like=tmp_path / "a")
    try:
        a.create("orders", "AES-256-GCM")
        blob = a.encrypt("orders", b"card", aad=b"o:1")
        assert b.decrypt(blob, aad=b"o:1") == b"card"  # another node, another home: same key
        b.encrypt("orders", b"warm")  # b now caches an encrypting handle
        time.sleep(0.3)  # b's listener is connected
        a.revoke("orders", "compromised")
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # RECHECK_SECONDS: the bound even without NOTIFY
            try:
                b.encrypt("orders", b"after")
            except KeyError_:
                break
            time.sleep(0.005)
        else:
            pytest.fail("node b still encrypted under a key revoked on node a after 1 s")
        with pytest.raises(AuthError):
            b.decrypt(blob, aad=b"o:1")
    finally:
        a.close()
        b.close()


def test_the_database_going_away_gives_typed_errors_and_loses_nothing(pg_server: PgServer, pg_dsn: str,
                                                                       tmp_path: Path) -> None:
    ring = _node(tmp_path, "a", pg_dsn)
    try:
        ring.create("orders")
        blob = ring.encrypt("orders", b"kept")
        pg_server.stop("immediate")  # as if the server crashed
        try:
            with pytest.raises(InternalError) as info:
                ring.create("later")
            assert info.value.reason == "database"
            with pytest.raises(InternalError):
                ring.rotate("orders")
            time.sleep(1.1)  # past the cached handles' re-check
            with pytest.raises(XpsError):
                ring.encrypt("orders", b"x")
        finally:
            pg_server.start()
        # Back: nothing half done, nothing lost; the refused changes simply did not happen.
        deadline = time.monotonic() + 10
        while True:
            try:
                names = [k.name for k in ring.list()]
                break
            except InternalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert names == ["orders"]
        assert ring.describe("orders").active_version == 1
        assert ring.decrypt(blob) == b"kept"
        ring.create("later")
        assert [k.name for k in ring.list()] == ["later", "orders"]
    finally:
        ring.close()


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "30", None, 10**6])
def test_a_bad_idle_in_transaction_bound_is_refused(value: object) -> None:
    with pytest.raises(PolicyError, match="idle_in_transaction"):
        Database("postgresql://localhost/xps", idle_in_transaction=value)  # type: ignore[arg-type]


def test_a_transaction_left_idle_is_ended_by_the_server_and_frees_its_lock(pg_dsn: str) -> None:
    # Review finding: a process paused inside a keyring write held the advisory lock, and every
    # node's writes waited until it came back. The server now ends an idle transaction.
    paused, other = Database(pg_dsn, idle_in_transaction=0.5), Database(pg_dsn)
    got: list[float] = []

    def write() -> None:
        with other.transaction(lock=4242):
            got.append(time.monotonic())

    waiter = threading.Thread(target=write)
    try:
        with pytest.raises(InternalError, match="did not happen"), paused.transaction(lock=4242) as tx:
            tx.execute("CREATE TEMP TABLE idle_probe (x int)")
            waiter.start()
            time.sleep(2.0)  # "paused": no statement for longer than the bound
            woke = time.monotonic()
            tx.execute("SELECT 1")
        waiter.join(timeout=30)
        assert got and got[0] < woke  # the lock went to the other writer while this one slept
    finally:
        paused.close()
        other.close()
