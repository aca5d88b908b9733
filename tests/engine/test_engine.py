"""Engine lifecycle, atomic publication, and the thinness of the call path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import xpscerpto as xps
from xpscerpto.config import EngineConfig
from xpscerpto.interfaces import OPERATIONS

ALL_NAMES = {name for op, spec in OPERATIONS.items() for name in (op, *spec.aliases)}


def test_lazy_engine_starts_on_first_call_and_self_tests_only_that_operation() -> None:
    eng = xps.Engine(lazy=True)
    assert eng._table.version == 0 and eng._state is None
    key = bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, b"first call")
    # Version 1: started, nothing self-tested yet; version 2: AES-256-GCM tested and routed.
    assert eng._table.version == 2
    assert eng._state is not None and {r.operation for r in eng._state.selftests} == {"aead.aes256gcm"}
    assert "AES-256-GCM" not in eng._table.pending and "CHACHA20-POLY1305" in eng._table.pending
    assert eng.aead.open("AES-256-GCM", key, sealed) == b"first call"
    assert eng._table.version == 2  # no more publishing once the operation is tested
    assert all(r.passed for r in eng.state.selftests)  # introspection runs the rest
    assert eng._table.pending == frozenset() and len({r.operation for r in eng._state.selftests}) > 5


def test_lazy_engine_first_call_to_signature_api_starts_it() -> None:
    eng = xps.Engine(lazy=True)
    pk, sk = eng.ed25519.generate_keypair()
    eng.ed25519.verify(pk, b"m", eng.ed25519.sign(sk, b"m"))
    assert eng._table.version == 2
    assert eng._state is not None and {r.operation for r in eng._state.selftests} == {"sig.ed25519"}


def test_publish_refuses_out_of_order_versions() -> None:
    eng = xps.Engine()
    stale = eng.build_table()
    eng.publish(stale)
    with pytest.raises(xps.InternalError, match=r"table\.version: expected 3, got 2"):
        eng.publish(stale)


def test_publish_returns_the_replaced_table_and_in_flight_references_stay_valid() -> None:
    eng = xps.Engine()
    before = eng._table
    old = eng.publish(eng.build_table(config=EngineConfig(prefer={"aead.chacha20poly1305": "sodium"})))
    assert old is before
    assert before.provider_for("aead.chacha20poly1305") == "openssl"
    assert eng.table.provider_for("aead.chacha20poly1305") == "sodium"
    # A ciphertext made under the old route opens under the new provider.
    key = bytes(range(32))
    sealed = before.aead["CHACHA20-POLY1305"].cipher(key).encrypt(b"\x01" * 12, b"m", b"")
    assert eng.aead.decrypt("CHACHA20-POLY1305", key, b"\x01" * 12, sealed[:-16], sealed[-16:]) == b"m"


def _table_is_complete(table: xps.engine.RoutingTable) -> bool:
    if set(table.entries) != ALL_NAMES:
        return False
    for op, route in table.routes.items():
        adapter = table.entries[op]
        if adapter.provider != route.provider or adapter.operation != op:
            return False
        if any(table.entries[a] is not adapter for a in OPERATIONS[op].aliases):
            return False
    return all(table.aead[k] is table.entries[k] for k in table.aead)


def test_readers_on_several_threads_see_only_complete_tables_during_1000_publishes() -> None:
    eng = xps.Engine()
    configs = [EngineConfig(prefer={op: "sodium" for op in ("aead.chacha20poly1305", "sig.ed25519",
                                                              "kex.x25519")}), EngineConfig()]
    stop = threading.Event()
    problems: list[str] = []
    reads = [0] * 4
    key = bytes(range(32))

    def reader(i: int) -> None:
        last = 0
        while not stop.is_set():
            table = eng._table  # exactly what the API does: one load, then only the local
            if table.version < last:
                problems.append(f"version went back {last} -> {table.version}")
            last = table.version
            if not _table_is_complete(table):
                problems.append(f"incomplete table v{table.version}")
            sealed = eng.aead.encrypt("CHACHA20-POLY1305", key, b"payload")
            if eng.aead.open("CHACHA20-POLY1305", key, sealed) != b"payload":
                problems.append("round trip failed")
            reads[i] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(1000):
            eng.publish(eng.build_table(config=configs[n % 2]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert eng._table.version == 1001
    assert all(r > 0 for r in reads)


def _python_frames_during(fn: object) -> list[str]:
    """Names of every Python function that runs while ``fn()`` runs (profiler hook)."""
    seen: list[str] = []

    def prof(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            seen.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_code.co_name}")

    sys.setprofile(prof)
    try:
        fn()  # type: ignore[operator]
    finally:
        sys.setprofile(None)
    return [s for s in seen if not s.endswith(":_python_frames_during")]


@pytest.mark.parametrize("call", ["encrypt", "open", "decrypt"])
def test_aead_hot_path_runs_one_python_frame_and_no_hook_lock_or_logging(call: str) -> None:
    eng = xps.Engine()
    key = bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, b"x" * 64)
    nonce, ct, tag = sealed
    calls = {
        "encrypt": lambda: eng.aead.encrypt("AES-256-GCM", key, b"x" * 64, b"aad"),
        "open": lambda: eng.aead.open("AES-256-GCM", key, sealed),
        "decrypt": lambda: eng.aead.decrypt("AES-256-GCM", key, nonce, ct, tag),
    }
    frames = _python_frames_during(calls[call])
    # The lambda, then the API method; cryptography's AESGCM is native, so nothing else.
    assert frames == ["test_engine.py:<lambda>", f"engine.py:{call}"]


def test_import_is_lazy_about_numba_watchdog_pluggy_and_the_providers() -> None:
    code = ("import sys, xpscerpto; "
            "print(sorted(m for m in ('numba', 'watchdog', 'pluggy', 'cryptography', 'nacl', 'yaml', 'pkcs11') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_first_call_loads_only_what_it_needs_and_the_warm_up_waits() -> None:
    # Issue 13's "import plus one AEAD call": the first call starts the engine but leaves the
    # jit kernels' module, numba, the tuner, package-metadata parsing (importlib_metadata: the
    # engine reads entry_points.txt itself) and logging for later, and the background warm-up
    # has not begun (a short-lived process exits without paying for it).
    code = ("import sys, xpscerpto as x; x.aead.encrypt('AES-256-GCM', bytes(32), b'm'); "
            "e = x.default_engine(); "
            "print(sorted(m for m in ('numba', 'xpscerpto.plugins.jit', 'xpscerpto._tuner', 'email.parser', "
            "'importlib_metadata', 'importlib.metadata', 'logging') if m in sys.modules)); "
            "print(e._background is not None and e._background.ident is not None, "
            "e._background is not None and e._hurry.is_set()); "
            "print([d.provides for d in e.state.deferred])")
    env = {k: v for k, v in os.environ.items() if k != "XPS_AUTOTUNE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded, started, deferred = out.stdout.strip().splitlines()
    assert loaded == "[]"
    assert started == "True False"  # started after the first self-test, but still waiting
    assert deferred == "[('jit', 'jit-openssl')]"


def test_a_first_call_when_no_thread_can_start_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.12+ refuses new threads at interpreter shutdown (this 3.11 does not, so the
    # refusal is simulated): the call that would start the warm-up must still be served.
    eng = xps.Engine(xps.EngineConfig(autotune=True), lazy=True)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    key = bytes(32)
    assert eng.aead.open("AES-256-GCM", key, eng.aead.encrypt("AES-256-GCM", key, b"m")) == b"m"
    assert eng.wait_tuned(0) is True  # nothing left to wait for


def test_module_level_api_uses_the_default_engine() -> None:
    assert xps.aead._engine is xps.default_engine()
    assert xps.ed25519.provider == xps.default_engine().table.provider_for("sig.ed25519")


# -- authentication failures on the raw API (CRYPTO_FAIL_AUTH) ------------------------------------


@pytest.fixture(scope="module")
def auth_engine() -> tuple[xps.Engine, list[tuple[str, str, str]]]:
    eng = xps.Engine()
    events: list[tuple[str, str, str]] = []
    eng.add_auth_failure_listener(lambda *event: events.append(event))
    return eng, events


SECRET_MARK = b"SECRET-CALLER-BYTES-9d2f"


def _auth_failures(eng: xps.Engine) -> dict[str, tuple[tuple[str, str, str], object]]:
    key = SECRET_MARK + bytes(8)
    s = eng.aead.encrypt("AES-256-GCM", key, SECRET_MARK, SECRET_MARK)
    xs = eng.aead.encrypt("XCHACHA20-POLY1305", key, SECRET_MARK)
    keyed = eng.aead.keyed("AES-256-GCM", key)
    pk, _sk = eng.ed25519.generate_keypair()
    mpk, _msk = eng.mldsa65.generate_keypair()
    _ek, dk = eng.mlkem768.generate_keypair()
    return {
        "decrypt, bad tag": (("openssl", "aead.aes256gcm", "decrypt"),
                             lambda: eng.aead.decrypt("AES-256-GCM", key, s.nonce, s.ciphertext, bytes(16))),
        "decrypt, short tag": (("openssl", "aead.aes256gcm", "decrypt"),
                               lambda: eng.aead.decrypt("AES-256-GCM", key, s.nonce, s.ciphertext, b"t")),
        "decrypt, large": (("sodium", "aead.xchacha20poly1305", "decrypt"),
                           lambda: eng.aead.decrypt("XCHACHA20-POLY1305", key, xs.nonce, bytes(1 << 18), xs.tag)),
        "open, wrong aad": (("openssl", "aead.aes256gcm", "open"),
                            lambda: eng.aead.open("AES-256-GCM", key, s, b"other")),
        "open, truncated": (("sodium", "aead.xchacha20poly1305", "open"),
                            lambda: eng.aead.open("XCHACHA20-POLY1305", key, xps.Sealed.of(xs.nonce, b"x", 16))),
        "keyed decrypt": (("openssl", "aead.aes256gcm", "keyed.decrypt"),
                          lambda: keyed.decrypt(s.nonce, s.ciphertext_and_tag, b"wrong")),
        "keyed open": (("openssl", "aead.aes256gcm", "keyed.decrypt"), lambda: keyed.open(s)),
        "ed25519 verify": (("openssl", "sig.ed25519", "verify"),
                           lambda: eng.ed25519.verify(pk, SECRET_MARK, bytes(64))),
        "ed25519 short signature": (("openssl", "sig.ed25519", "verify"),
                                    lambda: eng.ed25519.verify(pk, SECRET_MARK, SECRET_MARK)),
        "mldsa65 verify": (("openssl", "sig.mldsa65", "verify"),
                           lambda: eng.mldsa65.verify(mpk, SECRET_MARK, bytes(3309))),
        "mlkem768 bad ciphertext size": (("openssl", "kem.mlkem768", "decapsulate"),
                                         lambda: eng.mlkem768.decapsulate(dk, SECRET_MARK)),
    }


FAILURE_NAMES = list(_auth_failures(xps.Engine()))


@pytest.mark.parametrize("name", FAILURE_NAMES)
def test_every_auth_failure_reaches_the_listener_with_only_provider_operation_and_call(
        auth_engine: tuple[xps.Engine, list[tuple[str, str, str]]], name: str) -> None:
    eng, events = auth_engine
    expected, call = _auth_failures(eng)[name]
    events.clear()
    with pytest.raises(xps.AuthError):
        call()  # type: ignore[operator]
    assert events == [expected]
    assert all(type(x) is str for x in events[0])
    assert SECRET_MARK.decode() not in repr(events)


def test_is_valid_saying_false_is_reported_as_an_auth_failure(
        auth_engine: tuple[xps.Engine, list[tuple[str, str, str]]]) -> None:
    eng, events = auth_engine
    events.clear()
    pk, _sk = eng.ed25519.generate_keypair()
    assert eng.ed25519.is_valid(pk, SECRET_MARK, bytes(64)) is False
    assert events == [("openssl", "sig.ed25519", "verify")]


def test_other_errors_and_successes_do_not_reach_the_auth_listener(
        auth_engine: tuple[xps.Engine, list[tuple[str, str, str]]]) -> None:
    eng, events = auth_engine
    events.clear()
    key = bytes(32)
    s = eng.aead.encrypt("AES-256-GCM", key, b"m")
    eng.aead.open("AES-256-GCM", key, s)
    eng.aead.decrypt("AES-256-GCM", key, s.nonce, s.ciphertext, s.tag)
    pk, sk = eng.ed25519.generate_keypair()
    assert eng.ed25519.is_valid(pk, b"m", eng.ed25519.sign(sk, b"m"))
    for bad in (lambda: eng.aead.open("AES-256-GCM", bytes(16), s), lambda: eng.aead.open("NOPE", key, s),
                lambda: eng.aead.decrypt("AES-256-GCM", key, bytes(3), s.ciphertext, s.tag)):
        with pytest.raises(xps.XpsError) as ei:
            bad()
        assert ei.value.code != "XPS_ERR_AUTH"
    assert events == []


def test_a_failing_auth_listener_does_not_mask_the_auth_error() -> None:
    eng = xps.Engine()

    def broken(*event: str) -> None:
        raise RuntimeError("journal full")

    eng.add_auth_failure_listener(broken)
    with pytest.raises(xps.AuthError):
        eng.ed25519.verify(bytes(32), b"m", bytes(64))
    eng.remove_auth_failure_listener(broken)


def test_auth_failures_are_not_provider_faults() -> None:
    eng = xps.Engine()
    faults: list[str] = []
    eng.add_fault_listener(lambda p, o, e: faults.append(o))
    for call in _auth_failures(eng).values():
        with pytest.raises(xps.AuthError):
            call[1]()  # type: ignore[operator]
    assert faults == []


@pytest.mark.parametrize("call", ["open", "decrypt", "keyed.decrypt"])
def test_the_success_path_runs_no_frame_for_the_auth_listener(call: str) -> None:
    eng = xps.Engine()
    eng.add_auth_failure_listener(lambda *event: None)
    eng.add_fault_listener(lambda *event: None)
    key = bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, b"x" * 64)
    nonce, ct, tag = sealed
    keyed = eng.aead.keyed("AES-256-GCM", key)
    calls = {
        "open": lambda: eng.aead.open("AES-256-GCM", key, sealed),
        "decrypt": lambda: eng.aead.decrypt("AES-256-GCM", key, nonce, ct, tag),
        "keyed.decrypt": lambda: keyed.decrypt(nonce, sealed.ciphertext_and_tag),
    }
    frames = _python_frames_during(calls[call])
    assert frames == ["test_engine.py:<lambda>", f"engine.py:{call.rsplit('.', 1)[-1]}"]


def test_a_verify_success_runs_no_frame_of_the_reporting_path() -> None:
    eng = xps.Engine()
    eng.add_auth_failure_listener(lambda *event: None)
    pk, sk = eng.ed25519.generate_keypair()
    sig = eng.ed25519.sign(sk, b"m")
    frames = _python_frames_during(lambda: eng.ed25519.verify(pk, b"m", sig))
    assert frames[:3] == ["test_engine.py:<lambda>", "_namespaces.py:call", "_routes.py:verify"]
    assert not any("_auth" in f or "_report" in f or f.endswith("<lambda>") for f in frames[1:])


def test_the_keyed_encrypt_hot_path_runs_one_engine_frame() -> None:
    keyed = xps.aead.keyed("AES-256-GCM", bytes(32))
    frames = _python_frames_during(lambda: keyed.encrypt(b"x" * 64))
    assert frames == ["test_engine.py:<lambda>", "engine.py:encrypt"]


def test_the_keyed_encrypt_wire_hot_path_runs_one_engine_frame() -> None:
    keyed = xps.aead.keyed("CHACHA20-POLY1305", bytes(32), nonce_reuse="caller")
    frames = _python_frames_during(lambda: keyed.encrypt_wire(bytes(12), b"x" * 64))
    assert frames == ["test_engine.py:<lambda>", "engine.py:encrypt_wire"]


class _WrongAesGcm:
    """A provider whose AES-256-GCM gives wrong ciphertexts: its self-test must fail."""

    @staticmethod
    @xps.hookspecs.hookimpl
    def xps_register_providers(registry: object) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from xpscerpto.interfaces import Aead, Provider

        class Wrong(Aead):
            key_sizes = (32,)
            nonce_size = 12
            tag_size = 16

            def cipher(self, key: object) -> object:
                inner = AESGCM(bytes(32))  # ignores the key

                class C:
                    def encrypt(self, n: bytes, d: bytes, a: bytes) -> bytes:
                        return inner.encrypt(n, d, a)

                    def decrypt(self, n: bytes, d: bytes, a: bytes) -> bytes:
                        return inner.decrypt(n, d, a)
                return C()

        registry.add(Provider("wrong", "test", "1", {"aead.aes256gcm": Wrong()}, priority=1000))  # type: ignore[attr-defined]


def test_a_lazy_engine_never_routes_an_implementation_whose_first_use_self_test_fails() -> None:
    eng = xps.Engine(EngineConfig(autotune=False), plugins=[_WrongAesGcm], lazy=True)
    key = bytes(range(32))
    s = eng.aead.encrypt("AES-256-GCM", key, b"m")  # 'wrong' has the higher priority, but failed its test
    assert eng._table.routes["aead.aes256gcm"].provider == "openssl"
    reasons = {c.provider: c.excluded for c in eng._table.routes["aead.aes256gcm"].candidates}
    assert reasons["wrong"].startswith("self-test failed")
    assert eng.aead.open("AES-256-GCM", key, s) == b"m"
    only = xps.Engine(EngineConfig(autotune=False, providers=("wrong",)), plugins=[_WrongAesGcm], lazy=True)
    with pytest.raises(xps.PolicyError, match="self-test failed"):
        only.aead.encrypt("AES-256-GCM", key, b"m")


def test_threads_racing_the_first_use_of_a_lazy_engine_all_succeed_and_test_once() -> None:
    eng = xps.Engine(EngineConfig(autotune=False), lazy=True)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use(i: int) -> None:
        start.wait()
        try:
            key = bytes([i]) * 32
            algo = ("AES-256-GCM", "CHACHA20-POLY1305")[i % 2]
            assert eng.aead.open(algo, key, eng.aead.encrypt(algo, key, b"m")) == b"m"
            pk, sk = eng.ed25519.generate_keypair()
            eng.ed25519.verify(pk, b"m", eng.ed25519.keyed(sk).sign(b"m"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    tested = [(r.provider, r.operation) for r in eng._state.selftests]  # type: ignore[union-attr]
    assert len(tested) == len(set(tested))  # each implementation tested once
    assert {op for _, op in tested} == {"aead.aes256gcm", "aead.chacha20poly1305", "sig.ed25519"}
