"""The updater end to end in-process: swaps under load, drain, persistence, automatic rollback.

Every test runs twice: with the routing state in ``HOME/state.json`` and in PostgreSQL
(``xps_capsule_state``, one row per node, ``hotpatch.state_database``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.exceptions import InvalidTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto.capsules.build import build_capsule
from xpscerpto.capsules.isolate import Gates
from xpscerpto.capsules.state_store import FileStateStore, StateStore
from xpscerpto.capsules.store import RoutingState
from xpscerpto.capsules.updater import StagePlan, Updater, rollback_offline
from xpscerpto.home import Home
from xpscerpto.interfaces import Aead, Provider
from xpscerpto.plugins.sodium import XChaCha20Poly1305Impl
from xpscerpto.signing import TrustStore, generate_keypair, load_private_key

from tests.fakes.providers import ProviderPlugin

from .conftest import close_updaters, closed_at_teardown, restored

DEMO = Path(__file__).resolve().parents[2] / "capsules" / "demo-capsule"
OP, ALGO = "aead.xchacha20poly1305", "XCHACHA20-POLY1305"
FAST_GATES = Gates(timeout_s=60, bench_seconds=0.05, diff_samples=11)
NO_TRIAL = StagePlan(canary_seconds=0, dual_run_seconds=0, drain_timeout=10)


class Publisher:
    """Builds signed demo capsules at any version, with a trust store pinned in a home."""

    #: Where the routing state of ``home`` lives in this test: "file" or "postgresql" (``dsn``).
    backend = "file"
    dsn: str | None = None

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        generate_keypair(tmp / "pub")
        self.signer = load_private_key(tmp / "pub.key")
        self.home = Home.resolve(tmp / "home")
        TrustStore().add(self.signer[0], ["aead.*"]).save(self.home.trust)

    def capsule(self, version: str, *, module_patch: tuple[str, str] | None = None) -> bytes:
        src = self.tmp / f"src-{version}"
        if not src.exists():
            shutil.copytree(DEMO, src, ignore=shutil.ignore_patterns("__pycache__"))
            toml = src / "capsule.toml"
            toml.write_text(re.sub(r'version = "[^"]+"', f'version = "{version}"', toml.read_text()))
            if module_patch is not None:
                mod = src / "xchacha.py"
                mod.write_text(mod.read_text().replace(*module_patch))
        return build_capsule(src, [self.signer])


#: a test's folder -> the PostgreSQL database of its routing states (None: state.json files).
#: Every home under that folder (other nodes too) uses it, the home's folder name as node.
_BACKENDS: dict[Path, str | None] = {}
_OPEN: list[StateStore] = []


@pytest.fixture(params=["file", "postgresql"])
def publisher(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Publisher]:
    pub = Publisher(tmp_path)
    if request.param == "postgresql":

        pub.backend, pub.dsn = "postgresql", request.getfixturevalue("pg_dsn")
    _BACKENDS[tmp_path] = pub.dsn
    yield pub
    del _BACKENDS[tmp_path]
    close_updaters()  # before the stores they use
    while _OPEN:
        _OPEN.pop().close()


def _states(home: Home) -> StateStore:
    from xpscerpto.db.capsule_state import PgStateStore

    dsn = next((dsn for folder, dsn in _BACKENDS.items() if home.root.is_relative_to(folder)), None)
    store: StateStore = FileStateStore(home) if dsn is None else PgStateStore(dsn, node=home.root.name, home=home)
    _OPEN.append(store)
    return store


def _state(home: Home) -> RoutingState:
    return _states(home).load()


def _updater(engine: xps.Engine, home: Home, plan: StagePlan = NO_TRIAL, gates: Gates = FAST_GATES) -> Updater:
    """A restored updater, closed at the end of the test."""
    return restored(closed_at_teardown(Updater(engine, home, gates=gates, plan=plan, state_store=_states(home))))


def _events(up: Updater) -> list[str]:
    return [e["event"] for e in up.audit.tail(200)]


def test_apply_routes_the_capsule_and_rollback_restores_the_builtin(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    assert eng.table.provider_for(OP) == "sodium"
    cap = up.apply(publisher.capsule("1.0.0"))
    assert eng.table.provider_for(OP) == "xchacha20-openssl" == cap.name
    key = bytes(range(32))
    assert eng.aead.open(ALGO, key, eng.aead.encrypt(ALGO, key, b"m")) == b"m"
    up.rollback(OP)
    assert eng.table.provider_for(OP) == "sodium"
    events = _events(up)
    for name in ("PATCH_LOAD", "PATCH_VERIFY", "PATCH_KAT", "PATCH_STAGE", "PATCH_ENABLE", "PATCH_ROLLBACK"):
        assert name in events
    enable = next(e for e in up.audit.tail(50) if e["event"] == "PATCH_ENABLE")
    assert enable["publisher"] == [publisher.signer[0].keyid] and enable["operator"] == "local"


def test_four_threads_see_zero_failed_calls_across_100_swaps_and_rollbacks(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0"))
    up.apply(publisher.capsule("1.0.1"))  # 1.0.1 replaces 1.0.0; both now stored and verified
    stop = threading.Event()
    failures: list[str] = []
    sealed: list[tuple[bytes, xps.Sealed, bytes]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        key = bytes([i]) * 32
        n = 0
        while not stop.is_set():
            msg = f"{i}:{n}".encode() * (1 + n % 50)
            try:
                s = eng.aead.encrypt(ALGO, key, msg, b"aad")
                if eng.aead.decrypt(ALGO, key, s.nonce, s.ciphertext, s.tag, b"aad") != msg:
                    failures.append("wrong plaintext")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            if n % 25 == 0:
                with lock:
                    sealed.append((key, s, msg))
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    providers_seen = set()
    try:
        for k in range(100):
            if k % 4 == 3:
                up.rollback(OP)  # back to the built-in (libsodium) ...
                providers_seen.add(eng.table.provider_for(OP))
                up.apply(publisher.capsule(f"1.1.{k}"))  # ... and a newer capsule again
            else:
                up.rollback("xchacha20-openssl", to=("1.0.0" if k % 2 == 0 else "1.0.1"))
            providers_seen.add(eng.table.provider_for(OP))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert providers_seen == {"sodium", "xchacha20-openssl"}
    assert len(sealed) > 100
    # Every ciphertext made by whichever implementation was routed decrypts now.
    for key, s, msg in sealed:
        assert eng.aead.open(ALGO, key, s, b"aad") == msg


class _Gate:
    """Blocks inside the provider while a test holds it closed (to keep calls in flight)."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()


GATE = _Gate()


class _BlockingKeyed:
    def __init__(self, key: Any) -> None:
        self._inner = XChaCha20Poly1305Impl.cipher(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if bytes(data).startswith(b"BLOCK"):
            GATE.entered.release()
            GATE.release.wait(30)
        return self._inner.encrypt(nonce, data, aad)  # type: ignore[no-any-return]

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._inner.decrypt(nonce, data, aad)  # type: ignore[no-any-return]


class BlockingXChaCha(Aead):
    key_sizes = (32,)
    nonce_size = 24
    tag_size = 16
    auth_errors = (*XChaCha20Poly1305Impl.auth_errors, InvalidTag)
    cipher: Any = _BlockingKeyed


def test_cutover_waits_for_in_flight_calls_and_audits_the_drain(publisher: Publisher) -> None:
    slow = Provider(name="slowsodium", backend="test", version="1",
                    implementations={OP: BlockingXChaCha()}, priority=1000)
    GATE.__init__()  # closed again: the test runs once per state backend
    eng = xps.Engine(plugins=[ProviderPlugin((slow,))])
    up = _updater(eng, publisher.home)
    assert eng.table.provider_for(OP) == "slowsodium"
    key = bytes(32)
    results: list[bytes] = []
    calls = [threading.Thread(target=lambda: results.append(
        eng.aead.open(ALGO, key, eng.aead.encrypt(ALGO, key, b"BLOCK me")))) for _ in range(3)]
    for t in calls:
        t.start()
    for _ in calls:
        assert GATE.entered.acquire(timeout=10)  # three calls are inside the old implementation
    up.apply(publisher.capsule("1.0.0"))
    assert eng.table.provider_for(OP) == "xchacha20-openssl"  # new calls go to the capsule ...
    drain = up.last_drain
    assert drain is not None
    assert not drain.wait(0.3)  # ... while the old table still has calls inside it
    assert "PATCH_DRAINED" not in [e["event"] for e in up.audit.tail(3)]
    GATE.release.set()
    for t in calls:
        t.join(10)
    assert results == [b"BLOCK me"] * 3
    assert drain.wait(5)
    deadline = threading.Event()
    for _ in range(50):
        if any(e["event"] == "PATCH_DRAINED" and e["table_version"] == drain.table_version
               for e in up.audit.tail(10)):
            break
        deadline.wait(0.1)
    else:
        pytest.fail("PATCH_DRAINED was not audited")


def test_committed_state_survives_restart_and_offline_rollback(publisher: Publisher) -> None:
    eng = xps.Engine()
    _updater(eng, publisher.home).apply(publisher.capsule("1.0.0"))
    # A new process (new engine, same home) routes the capsule after re-verifying it.
    eng2 = xps.Engine()
    up2 = _updater(eng2, publisher.home)
    assert eng2.table.provider_for(OP) == "xchacha20-openssl"
    assert any(e["event"] == "PATCH_DRAINED" for e in up2.audit.tail(5))
    # No engine running: rollback edits the committed state.
    rollback_offline(publisher.home, OP, operator="ops", state_store=_states(publisher.home))
    assert _state(publisher.home).active == ()
    eng3 = xps.Engine()
    _updater(eng3, publisher.home)
    assert eng3.table.provider_for(OP) == "sodium"
    # The version memory survived all of it.
    with pytest.raises(xps.UpdateError) as ei:
        _updater(xps.Engine(), publisher.home).apply(publisher.capsule("1.0.0"))
    assert ei.value.reason == "rollback"


# A process holding the home's engine lock, as a service does from before its restore on.
HOLD_ENGINE_LOCK = """
import sys, time
from xpscerpto.capsules.engine_lock import take_engine_lock
take_engine_lock(sys.argv[1], "test")
print("held", flush=True)
time.sleep(600)
"""


def test_an_offline_rollback_is_refused_while_an_engine_holds_the_home(publisher: Publisher) -> None:
    eng = xps.Engine()
    _updater(eng, publisher.home).apply(publisher.capsule("1.0.0"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ENGINE_LOCK, str(publisher.home.socket)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(xps.UpdateError) as ei:
            rollback_offline(publisher.home, OP, operator="ops", state_store=_states(publisher.home))
        assert ei.value.reason == "engine-running"
        assert [a.version for a in _state(publisher.home).active] == ["1.0.0"]
        assert not [e for e in _updater(xps.Engine(), publisher.home).audit.tail(5) if e.get("mode") == "offline"]
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    # Killed (kill -9): the kernel released its lock, and the offline rollback goes through.
    assert rollback_offline(publisher.home, OP, operator="ops", state_store=_states(publisher.home)).version == "1.0.0"
    assert _state(publisher.home).active == ()


def test_restart_drops_a_capsule_whose_key_was_unpinned(publisher: Publisher) -> None:
    _updater(xps.Engine(), publisher.home).apply(publisher.capsule("1.0.0"))
    TrustStore.load(publisher.home.trust).remove(publisher.signer[0].keyid).save(publisher.home.trust)
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    assert eng.table.provider_for(OP) == "sodium"
    assert _state(publisher.home).active == ()
    reject = [e for e in up.audit.tail(10) if e["event"] == "PATCH_REJECT"][-1]
    assert reject["phase"] == "restore" and reject["reason"] == "untrusted-key"


def test_restart_refuses_a_stored_capsule_modified_on_disk(publisher: Publisher) -> None:
    cap = _updater(xps.Engine(), publisher.home).apply(publisher.capsule("1.0.0"))
    path = publisher.home.capsules / f"{cap.sha256}.capsule"
    path.write_bytes(path.read_bytes() + b"x")
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    assert eng.table.provider_for(OP) == "sodium"
    assert [e for e in up.audit.tail(10) if e["event"] == "PATCH_REJECT"][-1]["reason"] == "digest-mismatch"


def _wait_for_route(eng: xps.Engine, provider: str) -> None:
    """Up to 5 s for the watcher's rollback to route OP to ``provider`` (the caller asserts it)."""
    for _ in range(100):
        if eng.table.provider_for(OP) == provider:
            return
        threading.Event().wait(0.05)


# A capsule that passes every validation gate but faults on a rare input once live.
FAULTY_PATCH = ("        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))\n"
                "        return sub.encrypt(",
                "        if bytes(data) == b'TRIGGER-FAULT':\n"
                "            raise RuntimeError('latent bug')\n"
                "        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))\n"
                "        return sub.encrypt(")


def test_a_provider_fault_after_enable_rolls_back_automatically(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    assert eng.table.provider_for(OP) == "xchacha20-openssl"
    with pytest.raises(xps.ProviderError):
        eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
    _wait_for_route(eng, "sodium")
    assert eng.table.provider_for(OP) == "sodium"
    rb = [e for e in up.audit.tail(10) if e["event"] == "PATCH_ROLLBACK"][-1]
    assert rb["operator"] == "auto" and "RuntimeError" in rb["reason"]
    assert "latent bug" not in rb["reason"]  # a provider's message never reaches the journal
    assert eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")  # served by libsodium now


def test_an_operator_rollback_by_sha_after_the_automatic_one_takes_out_nothing_more(publisher: Publisher) -> None:
    """By name, a rollback arriving just after the automatic one takes out the version that one
    restored; by sha256 it names one version and is refused once that version is gone."""
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0"))
    faulty = up.apply(publisher.capsule("1.1.0", module_patch=FAULTY_PATCH))
    with pytest.raises(xps.ProviderError):
        eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
    for _ in range(100):
        if [a.version for a in up.state.active] == ["1.0.0"]:
            break
        threading.Event().wait(0.05)
    assert [a.version for a in up.state.active] == ["1.0.0"]  # the automatic rollback restored 1.0.0
    with pytest.raises(xps.UpdateError) as ei:
        up.rollback(faulty.sha256[:12], operator="ops")
    assert ei.value.reason == "not-found"
    assert [a.version for a in _state(publisher.home).active] == ["1.0.0"]
    assert eng.table.provider_for(OP) == "xchacha20-openssl"


_ANY = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=64), st.text(max_size=300),
                 st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                           max_size=2))


def test_a_malformed_rollback_request_is_a_typed_refusal_that_changes_nothing(publisher: Publisher) -> None:
    """Adversarial pass: None, numbers, bytes or lists as target or version raised TypeError out
    of the updater (through the control socket: a connection closed without an answer), and a
    100 kB target came back in the refusal."""
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0"))
    before = _state(publisher.home)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(target=_ANY, to=_ANY)
    def check(target: Any, to: Any) -> None:
        for rollback in (up.rollback, lambda t, to: rollback_offline(publisher.home, t, to=to,
                                                                     state_store=_states(publisher.home))):
            with pytest.raises(xps.XpsError) as ei:
                rollback(target, to=to)
            for name, value, optional in (("target", target, False), ("to", to, True)):
                if not ((value is None and optional) or
                        (isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable())):
                    # a fixed text: nothing of the caller's value comes back
                    assert ei.value.reason == "not-found" and str(ei.value) == (
                        f"XPS_ERR_UPDATE: rollback: {name} must be text of 1 to 200 printable characters "
                        f"(a capsule name, operation, sha256 or version)")
                    break

    try:
        check()
    finally:
        up.close()
    assert _state(publisher.home).active == before.active
    assert eng.table.provider_for(OP) == "xchacha20-openssl"


def _no_thread_for(monkeypatch: pytest.MonkeyPatch, refused: Callable[[str], bool]) -> None:
    """Threads whose name ``refused`` picks fail to start, as when the process has none to spare."""
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        if refused(self.name):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", no_thread)


def test_a_fault_rolls_back_even_when_no_thread_can_be_started(publisher: Publisher,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CI showed the fault watcher die on "can't start new thread" (a long test process): after
    that no fault rolled anything back. Thread exhaustion cannot be caused here without starving
    the test process itself, so only the rollback thread's start fails."""
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    _no_thread_for(monkeypatch, lambda name: name == "xps-auto-rollback")
    with pytest.raises(xps.ProviderError):
        eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
    _wait_for_route(eng, "sodium")
    assert eng.table.provider_for(OP) == "sodium"  # rolled back on the watcher's own thread
    assert [e for e in up.audit.tail(10) if e["event"] == "PATCH_ROLLBACK"][-1]["operator"] == "auto"


def test_a_rollback_with_no_thread_for_its_drain_report_is_still_a_rollback(publisher: Publisher,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain report's thread failing to start turned a committed, serving rollback into a
    bare RuntimeError (operator) or a PATCH_ROLLBACK_FAILED after PATCH_ROLLBACK (automatic)."""
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    _no_thread_for(monkeypatch, lambda name: name.startswith("xps-drain-") or name == "xps-auto-rollback")
    with pytest.raises(xps.ProviderError):
        eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
    _wait_for_route(eng, "sodium")
    assert eng.table.provider_for(OP) == "sodium"
    up.apply(publisher.capsule("1.0.1"))  # a new version, then an operator rollback
    assert eng.table.provider_for(OP) == "xchacha20-openssl"
    assert up.rollback("xchacha20-openssl").version == "1.0.1"
    assert eng.table.provider_for(OP) == "sodium"
    events = [e["event"] for e in up.audit.tail(50)]
    assert events.count("PATCH_ROLLBACK") == 2 and "PATCH_ROLLBACK_FAILED" not in events
    assert _state(publisher.home).active == ()


def _started_since(before: set[threading.Thread]) -> list[str]:
    """Names of the threads alive now that were not alive in ``before``."""
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())


def test_a_fault_storm_starts_one_rollback_thread_per_capsule(publisher: Publisher) -> None:
    """A faulty capsule under traffic faults on every call, and every fault started a rollback
    thread of its own: each waited for the update lock, then found the capsule gone. One test
    module left ~2000 of them behind, and CI saw "can't start new thread"."""
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    with up.state_store.lock():  # the lock a rollback takes: held, so its threads stay alive here
        for _ in range(50):
            with pytest.raises(xps.ProviderError):
                eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
        for _ in range(600):  # up to 30 s for the watcher to take every fault off its queue
            if up._faults.empty():
                break
            threading.Event().wait(0.05)
        assert up._faults.empty()
        rollbacks = [name for name in _started_since(before) if name == "xps-auto-rollback"]
    assert rollbacks == ["xps-auto-rollback"]
    _wait_for_route(eng, "sodium")
    assert eng.table.provider_for(OP) == "sodium"
    assert [e["version"] for e in up.audit.tail(200) if e["event"] == "PATCH_ROLLBACK"] == ["1.0.0"]
    up.close()
    assert _started_since(before) == []


def test_close_ends_every_thread_the_updater_started(publisher: Publisher) -> None:
    """close() only asked the fault watcher to stop: the watcher, a sampled check's timer and a
    drain report still waiting for calls outlived it (the last two for up to a minute here)."""
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_seconds=0, dual_run_seconds=0, drain_timeout=60,
                                                 sample_seconds=60))
    in_flight = eng.table  # as a call running on it would: its drain is not over until released
    up.apply(publisher.capsule("1.0.0"))
    alive = _started_since(before)
    assert "xps-fault-watch" in alive
    assert any(name.startswith("xps-sampling-") for name in alive), alive
    assert any(name.startswith("xps-drain-") for name in alive), alive
    up.close()
    assert _started_since(before) == []
    assert eng.table.provider_for(OP) == "xchacha20-openssl"  # routing stays as it is
    up.close()  # a second close does nothing
    del in_flight


def test_a_closed_updater_refuses_every_change(publisher: Publisher) -> None:
    """apply() after close() enabled the capsule with no fault watcher left to roll it back, and
    started a sampling thread that no second close() ended."""
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_seconds=0, dual_run_seconds=0, sample_seconds=60))
    up.apply(publisher.capsule("1.0.0"))
    up.close()
    journal = up.audit.tail(200)
    calls: list[Callable[[], object]] = [
        lambda: up.apply(publisher.capsule("1.0.1")),
        lambda: up.rollback("xchacha20-openssl"),
        lambda: up.reconfigure(eng.config),
    ]
    for call in calls:
        with pytest.raises(xps.UpdateError) as ei:
            call()
        assert ei.value.reason == "closed"
    assert up.audit.tail(200) == journal  # nothing journaled, not even PATCH_LOAD
    assert eng.table.provider_for(OP) == "xchacha20-openssl"  # routing stays as close() left it
    assert _state(publisher.home).active[0].version == "1.0.0"
    assert _started_since(before) == []
    unrestored = Updater(xps.Engine(), publisher.home, state_store=_states(publisher.home))
    unrestored.close()
    with pytest.raises(xps.UpdateError, match="restore: this updater was closed"):
        unrestored.restore()


def _apply_in_background(up: Updater, raw: bytes) -> tuple[threading.Thread, list[object]]:
    """Start ``up.apply(raw)`` on a thread; return it once the canary runs, and where its outcome goes."""
    outcome: list[object] = []

    def apply() -> None:
        try:
            outcome.append(up.apply(raw))
        except BaseException as exc:  # the test asserts what it was
            outcome.append(exc)

    applier = threading.Thread(target=apply)
    applier.start()
    for _ in range(500):
        if up._staging is not None or outcome:
            break
        time.sleep(0.01)
    assert up._staging is not None, f"the canary did not start: {outcome}"
    return applier, outcome


def test_close_during_a_canary_waits_for_the_update_and_ends_what_it_started(publisher: Publisher) -> None:
    """close() returned while an apply() was in its canary: the apply went on to enable the
    capsule with the fault watcher gone, and its sampling thread outlived close()."""
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_seconds=1, dual_run_seconds=0, sample_seconds=60))
    applier, outcome = _apply_in_background(up, publisher.capsule("1.0.0"))
    up.close()
    assert outcome and not isinstance(outcome[0], BaseException), outcome  # close() waited for it
    applier.join()
    assert eng.table.provider_for(OP) == "xchacha20-openssl"
    assert _started_since(before) == []  # the fault watcher, the sampling timer, the drain report


def test_close_racing_an_operator_rollback_either_refuses_it_or_lets_it_finish(publisher: Publisher) -> None:
    raw = publisher.capsule("1.0.0")
    for _ in range(5):
        before = set(threading.enumerate())
        eng = xps.Engine()
        up = _updater(eng, publisher.home)
        if not up.state.active:
            up.apply(raw)
        go = threading.Barrier(2)
        outcome: list[object] = []

        def rollback(up: Updater = up, go: threading.Barrier = go, outcome: list[object] = outcome) -> None:
            go.wait()
            try:
                outcome.append(up.rollback("xchacha20-openssl"))
            except xps.XpsError as exc:
                outcome.append(exc)

        t = threading.Thread(target=rollback)
        t.start()
        go.wait()
        up.close()
        t.join()
        (result,) = outcome
        committed = _state(publisher.home).active
        if isinstance(result, xps.XpsError):
            assert isinstance(result, xps.UpdateError) and result.reason == "closed"
            assert [a.version for a in committed] == ["1.0.0"]
            assert eng.table.provider_for(OP) == "xchacha20-openssl"
        else:
            assert committed == () and eng.table.provider_for(OP) == "sodium"
        assert _started_since(before) == []


def test_close_that_stops_waiting_for_a_long_canary_leaves_the_capsule_out(publisher: Publisher) -> None:
    """With a canary longer than close()'s timeout, the apply went on to enable the capsule after
    close() had returned, with no fault watcher left (review of the updater races)."""
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_seconds=2, dual_run_seconds=0, sample_seconds=60))
    applier, outcome = _apply_in_background(up, publisher.capsule("1.0.0"))
    up.close(timeout=0.3)
    applier.join()
    (result,) = outcome
    assert isinstance(result, xps.UpdateError) and result.reason == "closed"
    assert eng.table.provider_for(OP) == "sodium"  # the canary's table is gone again
    assert _state(publisher.home).active == ()
    assert "PATCH_ENABLE" not in _events(up)
    for _ in range(100):  # the drain report of the table put back ends with the closed updater
        if not _started_since(before):
            break
        time.sleep(0.05)
    assert _started_since(before) == []


def test_close_during_a_faulty_canary_lets_the_canary_roll_back(publisher: Publisher) -> None:
    before = set(threading.enumerate())
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_share=1.0, canary_seconds=3, dual_run_seconds=0))
    applier, outcome = _apply_in_background(up, publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")

    t = threading.Thread(target=traffic)
    t.start()
    try:
        up.close()
    finally:
        stop.set()
        t.join()
        applier.join()
    (result,) = outcome
    assert isinstance(result, xps.UpdateError) and result.reason == "canary-fault"
    assert eng.table.provider_for(OP) == "sodium"
    assert _state(publisher.home).active == ()
    assert _started_since(before) == []


def test_canary_fault_rolls_back_before_enable_and_no_call_fails(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_share=1.0, canary_seconds=5, dual_run_seconds=0))
    errors: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
            except Exception as exc:
                errors.append(exc)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        with pytest.raises(xps.UpdateError) as ei:
            up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    finally:
        stop.set()
        t.join()
    assert ei.value.reason == "canary-fault"
    assert errors == []  # the canary answered faulty calls with the current implementation
    assert eng.table.provider_for(OP) == "sodium"
    assert _state(publisher.home).active == ()


def test_a_fault_of_the_serving_version_during_its_replacements_canary_is_not_the_canarys(
        publisher: Publisher) -> None:
    """A fault of 1.0.0 (the same provider name) while 1.1.0 was in canary failed the canary and
    kept the faulty 1.0.0 serving (review of the updater races)."""
    eng = xps.Engine()
    first = _updater(eng, publisher.home)
    first.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    first.close()
    up = _updater(eng, publisher.home, StagePlan(canary_share=1.0, canary_seconds=1, dual_run_seconds=0))
    applier, outcome = _apply_in_background(up, publisher.capsule("1.1.0"))
    with pytest.raises(xps.ProviderError):  # 1.0.0 still answers, and faults
        eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")
    applier.join()
    (result,) = outcome
    assert not isinstance(result, BaseException), result
    assert [a.version for a in _state(publisher.home).active] == ["1.1.0"]
    assert eng.table.provider_for(OP) == "xchacha20-openssl"
    assert eng.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT")  # 1.1.0 serves it
    assert "PATCH_ROLLBACK" not in _events(up) and up._tainted is None


class _TrafficAtEnable:
    """A state store that makes one call through ``engine`` before it saves an enable."""

    def __init__(self, inner: StateStore, engine: xps.Engine) -> None:
        self.inner, self.engine = inner, engine
        self.answered: list[bytes] = []
        self.where, self.load, self.lock, self.close = inner.where, inner.load, inner.lock, inner.close

    def save(self, state: RoutingState) -> None:
        if state.active:  # the enable: a call on the canary's table first
            self.answered.append(self.engine.aead.encrypt(ALGO, bytes(32), b"TRIGGER-FAULT"))
        self.inner.save(state)


def test_a_canary_fault_reported_while_the_enable_is_saved_rolls_the_capsule_back(publisher: Publisher) -> None:
    """The canary's table serves until the enable is published; a fault it reported after the
    window closed was dropped and the faulty capsule enabled (review of the updater races). The
    traffic runs inside the state store's save, the one moment that cannot be hit by timing."""
    eng = xps.Engine()
    store = _TrafficAtEnable(_states(publisher.home), eng)
    up = restored(closed_at_teardown(Updater(
        eng, publisher.home, gates=FAST_GATES, state_store=store,
        plan=StagePlan(canary_share=1.0, canary_seconds=0.2, dual_run_seconds=0))))
    with pytest.raises(xps.UpdateError) as ei:
        up.apply(publisher.capsule("1.0.0", module_patch=FAULTY_PATCH))
    assert ei.value.reason == "canary-fault" and "at cutover" in str(ei.value)
    assert store.answered and store.answered[0]  # the current implementation answered the call
    assert _state(publisher.home).active == ()
    assert eng.table.provider_for(OP) == "sodium"
    rb = [e for e in up.audit.tail(20) if e["event"] == "PATCH_ROLLBACK"][-1]
    assert rb["version"] == "1.0.0" and "at cutover" in rb["reason"] and rb["to"] == "built-in"


DIVERGENT_PATCH = ("        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))\n"
                   "        return sub.encrypt(b\"\\x00\\x00\\x00\\x00\" + nonce[16:], data, aad)",
                   "        sub = ChaCha20Poly1305(hchacha20(self._key, nonce[:16]))\n"
                   "        if bytes(aad) == b'DIVERGE':\n"
                   "            aad = b'other'\n"
                   "        return sub.encrypt(b\"\\x00\\x00\\x00\\x00\" + nonce[16:], data, aad)")


def test_dual_run_mismatch_rolls_back(publisher: Publisher) -> None:
    eng = xps.Engine()
    up = _updater(eng, publisher.home, StagePlan(canary_seconds=0, dual_run_seconds=5))
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            eng.aead.encrypt(ALGO, bytes(32), b"m", b"DIVERGE")

    t = threading.Thread(target=traffic)
    t.start()
    try:
        with pytest.raises(xps.UpdateError) as ei:
            up.apply(publisher.capsule("1.0.0", module_patch=DIVERGENT_PATCH))
    finally:
        stop.set()
        t.join()
    assert ei.value.reason == "dual-run-fault"
    assert eng.table.provider_for(OP) == "sodium"


def test_rollback_still_finds_its_target_after_the_history_passed_its_cap(publisher: Publisher) -> None:
    from xpscerpto.capsules.store import ActiveCapsule

    eng = xps.Engine()
    up = _updater(eng, publisher.home)
    up.apply(publisher.capsule("1.0.0"))
    up.apply(publisher.capsule("1.0.1"))
    up.close()
    # 250 enable/rollback pairs of another capsule push both enables out of the 200-event
    # history (rollback offline used to end in a bare StopIteration then).
    state = _state(publisher.home)
    for i in range(250):
        other = ActiveCapsule("other", f"1.0.{i}", f"{i:064x}", ("aead.aes256gcm",))
        state = state.enable(other, operator="t")
        state = state.disable(state.find("other"), operator="t")  # type: ignore[arg-type]
    _states(publisher.home).save(state)
    assert not any(e.get("name") == "xchacha20-openssl" for e in _state(publisher.home).history)

    def active() -> list[str]:
        return [a.version for a in _state(publisher.home).active]

    assert rollback_offline(publisher.home, "xchacha20-openssl", state_store=_states(publisher.home)).version == "1.0.1"
    assert active() == ["1.0.0"]  # what 1.0.1 replaced
    assert rollback_offline(publisher.home, "xchacha20-openssl", to="1.0.1",
                            state_store=_states(publisher.home)).version == "1.0.0"
    assert active() == ["1.0.1"]
    live = _updater(xps.Engine(), publisher.home)
    live.rollback("xchacha20-openssl", to="1.0.0")
    assert active() == ["1.0.0"]
    assert live.engine.table.provider_for(OP) == "xchacha20-openssl"
    live.close()
