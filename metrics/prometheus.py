"""Serve :class:`~.counters.Metrics` in Prometheus' text format over HTTP (``--metrics ADDR``).

Needs the optional extra ``metrics`` (``prometheus-client``, for the text format). The server
runs in a daemon thread; each scrape reads the counters once (no work between scrapes).

It runs inside the service it measures, so it must not be a way to take that service down. The
client library's own server started a thread per connection and kept an idle one forever: a
thousand connections that sent nothing used up the service's file descriptors (found by a
review). Here a connection that sends nothing for :data:`READ_TIMEOUT` seconds is closed, and
so is one still open :data:`CONNECTION_DEADLINE` seconds after it was accepted, however slowly
it trickles bytes, or whose request line and headers pass :data:`MAX_REQUEST_BYTES`. At most
:data:`MAX_CONNECTIONS` are served at once; one more closes the oldest of them: a scraper sends
its request as soon as it connects and is answered in milliseconds, so connections that trickle
(another review held every slot that way, refusing every scrape) are the ones that go.

Example:
    >>> server = serve(metrics, "127.0.0.1:9464")                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from xpscerpto.errors import InternalError, PolicyError

from .counters import COUNTERS, Metrics, clean_value

__all__ = ["CONNECTION_DEADLINE", "MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "READ_TIMEOUT", "parse_address", "serve"]

#: Connections served at once; one more closes the oldest.
MAX_CONNECTIONS = 16
#: Seconds a connection may send nothing before it is closed.
READ_TIMEOUT = 5.0
#: Seconds from accept after which a connection is closed, whatever it is doing.
CONNECTION_DEADLINE = 10.0
#: Bytes a request (line and headers; a GET has no body) may take; beyond, it is closed.
MAX_REQUEST_BYTES = 8192
_PORT = re.compile(r"[0-9]{1,5}")


def parse_address(text: object) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` means 127.0.0.1) -> (host, port).

    Raises:
        PolicyError: anything else (the message names ``--metrics``).
    """
    if not isinstance(text, str) or ":" not in text:
        raise PolicyError("--metrics: expected HOST:PORT")
    host, _, port = text.rpartition(":")
    # ASCII digits only: str.isdigit() is true for '²', which int() then refuses (a ValueError).
    if not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        raise PolicyError("--metrics: expected a port number 0..65535")
    return host.removeprefix("[").removesuffix("]") or "127.0.0.1", int(port)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, series in self.metrics.snapshot().items():
            if name in COUNTERS:
                labels = sorted({k for key in series for k, _ in key})
                family: Any = CounterMetricFamily(name.removesuffix("_total"), COUNTERS[name], labels=labels)
                for key, value in sorted(series.items()):
                    as_dict = dict(key)
                    # Sources (keyring, channels) bypass Metrics.inc's cleaning: one odd key
                    # name must not make the whole scrape unencodable.
                    family.add_metric([clean_value(as_dict.get(label, "")) for label in labels], value)
            else:
                family = GaugeMetricFamily(name, name.replace("_", " "))
                for value in series.values():
                    family.add_metric([], value)
            yield family


class _TooLarge(ConnectionAbortedError):
    """The request passed MAX_REQUEST_BYTES (a ConnectionError: closed without a word)."""


class _Reader(io.RawIOBase):
    """The connection's bytes, each read bounded by the idle timeout and the connection's deadline."""

    def __init__(self, sock: socket.socket, deadline: float, idle: float | None, limit: int) -> None:
        self._sock, self._deadline, self._idle, self._left = sock, deadline, idle, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # A per-read timeout alone let a client sending a byte every few seconds keep its
        # connection (and one of MAX_CONNECTIONS threads) forever.
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection deadline")
        if self._left <= 0:
            raise _TooLarge("request too large")
        self._sock.settimeout(left if self._idle is None else min(left, self._idle))
        n = self._sock.recv_into(buffer, min(len(buffer), self._left))
        self._left -= n
        return n


class _Handler(BaseHTTPRequestHandler):
    timeout = READ_TIMEOUT  # each read of the request: a silent client is dropped, not kept
    deadline = CONNECTION_DEADLINE
    max_request = MAX_REQUEST_BYTES
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader: its reads have no overall deadline
        self._deadline = self.server.accepted_at(self.connection) + self.deadline
        self.rfile = io.BufferedReader(_Reader(self.connection, self._deadline, self.timeout, self.max_request))

    def parse_request(self) -> bool:
        ok = super().parse_request()
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection deadline")
        self.connection.settimeout(left)  # the reply's writes count against the deadline too
        return ok

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            body = generate_latest(self.server.registry)
        except Exception:  # an unreadable counter must not cost the scraper its answer (nor later ones)
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape on the service's stderr."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, registry: Any) -> None:
        self.registry = registry
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        #: socket -> monotonic time of accept, of every connection served now (oldest first).
        self._open: dict[Any, float] = {}
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((host, port), _Handler)

    def accepted_at(self, request: Any) -> float:
        with self._lock:
            return self._open.get(request, time.monotonic())

    def process_request(self, request: Any, client_address: Any) -> None:
        # Full: the oldest goes rather than the newcomer, else whoever holds every slot (by
        # trickling bytes) refuses every scrape; its thread ends at once, freeing a slot.
        if not self._slots.acquire(blocking=False):
            self._close_oldest()
            if not self._slots.acquire(timeout=1.0):
                self.shutdown_request(request)
                return
        with self._lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # socketserver closes the request
            raise

    def _close_oldest(self) -> None:
        # The lock is held until shutdown() returns: the socket cannot be closed meanwhile (its
        # number reused by a newer connection), shutdown_request takes it out under this lock.
        with self._lock:
            if not self._open:
                return
            oldest = next(iter(self._open))
            del self._open[oldest]
            with contextlib.suppress(OSError):
                oldest.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line on stderr, none for a client that went away (not socketserver's traceback)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        with contextlib.suppress(Exception):  # the service's stderr closed: nothing more to do
            print(f"xps-metrics: request failed ({type(exc).__name__})", file=sys.stderr)


def serve(metrics: Metrics, address: str) -> tuple[Any, Any]:
    """Start the HTTP exporter at ``address``; returns (server, thread) — ``server.shutdown()`` stops it.

    Serves ``GET /metrics`` (and ``/``) with at most :data:`MAX_CONNECTIONS` connections at
    once (one more closes the oldest), each closed after :data:`READ_TIMEOUT` seconds without a
    byte, :data:`CONNECTION_DEADLINE` seconds after accept, or past :data:`MAX_REQUEST_BYTES`.

    Raises:
        PolicyError: prometheus-client is not installed, or a bad address.
        InternalError: the address cannot be bound.
    """
    host, port = parse_address(address)
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise PolicyError("--metrics: needs prometheus-client (pip install 'xpscerpto[metrics]')") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    try:
        server = _Server(host, port, registry)
    except ValueError:  # UnicodeError: a name IDNA cannot encode ('a..b', a 64-letter label)
        raise PolicyError("--metrics: expected a host name or IP address") from None
    except OSError as exc:
        # Bounded and escaped: the host is the operator's text, which may hold a newline or a
        # surrogate that would break the one-line message (or printing it at all).
        shown = repr(host[:64])[1:-1] + ("..." if len(host) > 64 else "")
        raise InternalError(f"--metrics: cannot listen on {shown}:{port} ({exc.strerror or exc})") from None
    thread = threading.Thread(target=server.serve_forever, name="xps-metrics", daemon=True)
    thread.start()
    return server, thread
