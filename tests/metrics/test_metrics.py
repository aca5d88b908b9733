"""Counters and the Prometheus exporter: real engine calls, real journal records, real HTTP scrapes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto.audit import AuditLog
from xpscerpto.errors import PolicyError
from xpscerpto.metrics import Metrics
from xpscerpto.metrics.prometheus import parse_address, serve

ALGO, OP = "AES-256-GCM", "aead.aes256gcm"


def _ops(m: Metrics, provider: str) -> int:
    return m.count("xps_operations_total", operation=OP, provider=provider)


def test_every_aead_call_counts_once_per_provider_whatever_the_call_shape() -> None:
    m = Metrics()
    eng = xps.Engine(count=m.operation_counter)
    provider = eng.table.provider_for(OP)
    assert provider is not None
    key = bytes(32)
    sealed = eng.aead.encrypt(ALGO, key, b"m" * 100)
    assert eng.aead.open(ALGO, key, sealed) == b"m" * 100
    assert eng.aead.decrypt(ALGO, key, sealed.nonce, sealed.ciphertext, sealed.tag) == b"m" * 100
    big = eng.aead.encrypt(ALGO, key, b"m" * (1 << 20))  # large enough for the tag-separate path
    assert eng.aead.decrypt(ALGO, key, big.nonce, big.ciphertext, big.tag) == b"m" * (1 << 20)
    keyed = eng.aead.keyed(ALGO, key)
    for _ in range(5):
        keyed.encrypt(b"x")  # a keyed object counts once, when it is made
    assert _ops(m, provider) == 6


def test_without_metrics_the_call_path_has_no_wrapper() -> None:
    eng = xps.Engine()
    route = eng.table.aead[ALGO]
    assert getattr(route.cipher, "__name__", "") != "counted"
    counted = xps.Engine(count=Metrics().operation_counter).table.aead[ALGO]
    assert counted.cipher.__name__ == "counted"


def test_auth_failures_and_journaled_events_are_counted(tmp_path: Path) -> None:
    m = Metrics()
    eng = xps.Engine(count=m.operation_counter)
    m.watch_engine(eng)
    sealed = eng.aead.encrypt(ALGO, bytes(32), b"m")
    with pytest.raises(xps.AuthError):
        eng.aead.open(ALGO, bytes(range(32)), sealed)
    assert m.count("xps_auth_failures_total", operation=OP, provider=eng.table.provider_for(OP) or "") == 1
    log = AuditLog(tmp_path / "audit.log")
    m.watch_journal(log)
    log.record("PATCH_ENABLE", name="c", version="1.0.0")
    log.record("PATCH_ROLLBACK", name="c", version="1.0.0")
    # A predecessor forgotten after another node's rollback changes no routing: not counted.
    log.record("PATCH_ROLLBACK", name="c", version="0.9.0", active=False)
    log.record("KEY_ROTATE", key_id="ab", version=2, reason="scheduled (monthly)")
    assert (m.count("xps_swaps_total"), m.count("xps_rollbacks_total")) == (1, 1)
    assert m.count("xps_rotations_total", reason="scheduled (monthly)") == 1
    assert m.snapshot()["xps_routing_table_version"] == {(): float(eng.table.version)}


def test_counters_are_exact_under_racing_threads() -> None:
    import threading

    m = Metrics()
    tick = m.operation_counter("aead.x", "p")
    threads = [threading.Thread(target=lambda: [tick() for _ in range(20000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.count("xps_operations_total", operation="aead.x", provider="p") == 80000


@pytest.mark.parametrize("address", [None, 9464, "9464", "host:", "host:port", "h:70000"])
def test_a_bad_metrics_address_is_refused_naming_the_option(address: object) -> None:
    with pytest.raises(PolicyError, match="--metrics"):
        parse_address(address)


def test_the_exporter_serves_prometheus_text() -> None:
    m = Metrics()
    eng = xps.Engine(count=m.operation_counter)
    m.watch_engine(eng)
    eng.aead.encrypt(ALGO, bytes(32), b"m")
    server, _ = serve(m, "127.0.0.1:0")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    provider = eng.table.provider_for(OP)
    assert f'xps_operations_total{{operation="{OP}",provider="{provider}"}} 1.0' in body
    assert f"xps_routing_table_version {float(eng.table.version)}" in body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_xps_watch_serves_metrics(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "inbox").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path / "home"), "watch",
                             str(tmp_path / "inbox"), "--polling", "--metrics", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("watching")
        body = ""
        deadline = time.monotonic() + 20
        while "xps_routing_table_version" not in body and time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.1)
        assert "xps_routing_table_version" in body
        assert re.search(r"^# TYPE xps_swaps(_total)? counter$", body, re.M)  # the name varies by client version
    finally:
        proc.terminate()
        proc.wait(20)
    bad = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path / "home"), "watch",
                          str(tmp_path / "inbox"), "--metrics", "nowhere"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "XPS_ERR_POLICY: --metrics" in bad.stderr and bad.stderr.count("\n") == 1


def test_keyring_decrypt_counts_are_exported_as_the_canary_reads_them(tmp_path: Path) -> None:
    from xpscerpto.keyring import Keyring

    with Keyring(tmp_path / "home") as ring:
        ring.create("orders")
        m = Metrics()
        m.watch_keyring(ring)
        blob = ring.encrypt("orders", b"x")
        ring.decrypt(blob)
        bad = bytearray(blob)
        bad[-1] ^= 1
        with pytest.raises(xps.AuthError):
            ring.decrypt(bytes(bad))
        series = m.snapshot()["xps_keyring_decryptions_total"]
        ok = (("key", "orders"), ("version", "1"), ("result", "ok"))
        failed = (("key", "orders"), ("version", "1"), ("result", "auth_failure"))
        assert (series[ok], series[failed]) == ring.decrypt_counts("orders", 1) == (1, 1)


@pytest.mark.parametrize("address", ["h:\u00b2", "h:\u0661\u0662", ":+80", ": 80", "h:080000"])
def test_a_port_that_is_not_ascii_digits_is_refused_typed(address: str) -> None:
    with pytest.raises(PolicyError, match="--metrics"):  # not int()'s ValueError
        parse_address(address)


def test_idle_connections_cannot_exhaust_the_service_that_embeds_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a review: the client library's server kept a thread and a descriptor per idle
    # connection forever; 1,023 of them ran `xps watch` out of descriptors.
    import threading

    from xpscerpto.metrics import prometheus

    monkeypatch.setattr(prometheus._Handler, "timeout", 0.5)
    server, _ = serve(Metrics(), "127.0.0.1:0")
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", server.server_port), timeout=5))
        time.sleep(0.2)
        assert threading.active_count() <= before + prometheus.MAX_CONNECTIONS
        time.sleep(1.0)  # past the read timeout: the idle ones were closed by the server
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as reply:
            assert reply.status == 200  # scraped while the 100 idle sockets are still open
        assert threading.active_count() <= before + 1
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


def test_the_exporter_answers_only_its_paths() -> None:
    server, _ = serve(Metrics(), "127.0.0.1:0")
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/admin", timeout=5)
        assert info.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
