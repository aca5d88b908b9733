"""Engine lifecycle, atomic publication, and the thinness of the call path."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import xpscerpto as xps
from xpscerpto.config import EngineConfig
from xpscerpto.interfaces import OPERATIONS

ALL_NAMES = {name for op, spec in OPERATIONS.items() for name in (op, *spec.aliases)}


def test_lazy_engine_starts_on_first_call_and_publishes_version_1() -> None:
    eng = xps.Engine(lazy=True)
    assert eng._table.version == 0 and eng._state is None
    key = bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, b"first call")
    assert eng._table.version == 1
    assert eng.aead.open("AES-256-GCM", key, sealed) == b"first call"


def test_lazy_engine_first_call_to_signature_api_starts_it() -> None:
    eng = xps.Engine(lazy=True)
    pk, sk = eng.ed25519.generate_keypair()
    eng.ed25519.verify(pk, b"m", eng.ed25519.sign(sk, b"m"))
    assert eng._table.version == 1


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


def test_module_level_api_uses_the_default_engine() -> None:
    assert xps.aead._engine is xps.default_engine()
    assert xps.ed25519.provider == xps.default_engine().table.provider_for("sig.ed25519")
