"""The exporter under hostile or broken input (review findings): real sockets, real scrapes."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.audit import AuditLog
from xpscerpto.errors import InternalError, PolicyError
from xpscerpto.metrics import Metrics, prometheus
from xpscerpto.metrics.prometheus import serve


@pytest.fixture
def exporter() -> Iterator[Any]:
    server, thread = serve(Metrics(), "127.0.0.1:0")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _scrape(port: int, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionError:
        return True


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_trickling_connections_cannot_starve_a_scrape(exporter: Any) -> None:
    # Found by a review: 16 connections sending a byte every 2 s held every slot (the timeout
    # was per read), and every scrape was refused for as long as they trickled.
    port = exporter.server_port
    stop = threading.Event()
    reconnects = [0]

    def trickle() -> None:  # keeps MAX_CONNECTIONS + 4 trickling, reconnecting any that is closed
        socks: list[socket.socket] = []
        try:
            while not stop.is_set():
                while len(socks) < prometheus.MAX_CONNECTIONS + 4:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                    socks[-1].sendall(b"G")
                for s in list(socks):
                    try:
                        s.sendall(b"E")
                    except OSError:
                        socks.remove(s)
                        s.close()
                        reconnects[0] += 1
                stop.wait(0.2)
        finally:
            for s in socks:
                s.close()

    attacker = threading.Thread(target=trickle)
    attacker.start()
    try:
        deadline = time.monotonic() + 15  # connects queue behind the listen backlog: wait for every slot taken
        while _handler_threads() < prometheus.MAX_CONNECTIONS:
            assert time.monotonic() < deadline, "the trickling connections never filled the exporter"
            time.sleep(0.1)
        for _ in range(3):
            assert _scrape(port, timeout=3)[0] == 200
            time.sleep(0.5)
        assert attacker.is_alive()  # the scrapes were answered while the trickle went on
    finally:
        stop.set()
        attacker.join(10)


def test_a_connection_is_closed_at_its_deadline_however_slowly_it_trickles(
        exporter: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus._Handler, "deadline", 1.0, raising=False)
    sock = socket.create_connection(("127.0.0.1", exporter.server_port), timeout=5)
    with sock:
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 4.0:  # a byte each 0.2 s: far inside the idle timeout
            try:
                sock.sendall(b"G")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed or _closed_by_server(sock)
        assert time.monotonic() - started < 3.0


def test_a_request_whose_headers_pass_the_cap_is_closed_unanswered(exporter: Any) -> None:
    header = b"X-Pad: " + b"a" * 4000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", exporter.server_port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close while the headers are still sent
            sock.sendall(b"GET /metrics HTTP/1.0\r\n" + header * 4 + b"\r\n")
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                reply += chunk
    assert b"200 OK" not in reply
    with socket.create_connection(("127.0.0.1", exporter.server_port), timeout=5) as sock:  # below the cap
        sock.sendall(b"GET /metrics HTTP/1.0\r\n" + header + b"\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.0 200")


def test_reset_connections_leave_no_traceback_on_the_services_stderr(
        exporter: Any, capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", exporter.server_port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.close()  # RST
    time.sleep(1.0)
    assert _scrape(exporter.server_port)[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_an_unexpected_request_error_is_one_line_naming_only_its_type(
        exporter: Any, capfd: pytest.CaptureFixture[str]) -> None:
    try:
        raise RuntimeError("caller bytes \x00 secret")
    except RuntimeError:
        exporter.handle_error(None, ("127.0.0.1", 1))
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError" in err and "secret" not in err


def test_a_label_utf8_cannot_carry_is_escaped_and_scrapes_go_on(tmp_path: Path) -> None:
    # Found by a review: one rotation reason holding a lone surrogate (what invalid UTF-8 in
    # argv decodes to) failed every later scrape until the service restarted.
    m = Metrics()
    log = AuditLog(tmp_path / "audit.log")
    m.watch_journal(log)
    log.record("KEY_ROTATE", name="k", reason="manual\udcff")
    server, thread = serve(m, "127.0.0.1:0")
    try:
        for _ in range(2):
            status, body = _scrape(server.server_port)
            assert status == 200
            assert 'xps_rotations_total{reason="manual\\\\udcff"} 1.0' in body.decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _BrokenRing:
    """A keyring whose key name is not text: the text format cannot render the series."""

    def loaded_decrypt_counts(self) -> dict[tuple[object, int], tuple[int, int]]:
        return {(3, 1): (1, 0)}


def test_a_series_that_cannot_be_rendered_answers_500_not_a_dropped_connection() -> None:
    m = Metrics()
    m.watch_keyring(_BrokenRing())
    server, thread = serve(m, "127.0.0.1:0")
    try:
        assert _scrape(server.server_port)[0] == 500
        assert _scrape(server.server_port)[0] == 500  # and the next scrape is answered too
        assert thread.is_alive()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("host", ["a" * 70, "a..b", ".", "\udcff"])
def test_a_host_name_idna_refuses_is_a_policy_error_naming_the_option(host: str) -> None:
    with pytest.raises(PolicyError, match="--metrics") as info:
        serve(Metrics(), f"{host}:0")
    assert host not in str(info.value)


def test_a_host_that_cannot_be_bound_is_shown_bounded_and_on_one_line() -> None:
    host = "a.\n." * 20 + "invalid"
    with pytest.raises((InternalError, PolicyError), match="--metrics") as info:
        serve(Metrics(), f"{host}:0")
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_counters_refuse_bad_names_and_labels_typed_without_echoing_them() -> None:
    m = Metrics()
    with pytest.raises(PolicyError, match="name") as info:
        m.inc("bogus_sk_live_4111")
    assert "4111" not in str(info.value)
    with pytest.raises(PolicyError, match="labels"):
        m.inc("xps_rotations_total", reason=3)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="labels"):
        m.inc("xps_rotations_total", **{"bad name": "x"})
    with pytest.raises(PolicyError, match="name"):
        m.gauge("not a metric", lambda: 1.0)
    m.inc("xps_rotations_total", reason="manual\udcff")
    assert m.count("xps_rotations_total", reason="manual\udcff") == 1
