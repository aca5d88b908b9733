"""Serve :class:`~.counters.Metrics` in Prometheus' text format over HTTP (``--metrics ADDR``).

Needs the optional extra ``metrics`` (``prometheus-client``, for the text format). The server
runs in a daemon thread; each scrape reads the counters once (no work between scrapes).

It runs inside the service it measures, so it must not be a way to take that service down. The
client library's own server started a thread per connection and kept an idle one forever: a
thousand connections that sent nothing used up the service's file descriptors (found by a
review). Here a connection that sends nothing for :data:`READ_TIMEOUT` seconds is closed, and
beyond :data:`MAX_CONNECTIONS` at once new ones are closed at accept (a scraper retries).

Example:
    >>> server = serve(metrics, "127.0.0.1:9464")                  # doctest: +SKIP
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from xpscerpto.errors import InternalError, PolicyError

from .counters import COUNTERS, Metrics

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "parse_address", "serve"]

#: Connections served at once; more are closed as they are accepted.
MAX_CONNECTIONS = 16
#: Seconds a connection may send nothing before it is closed.
READ_TIMEOUT = 5.0
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
                    family.add_metric([as_dict.get(label, "") for label in labels], value)
            else:
                family = GaugeMetricFamily(name, name.replace("_", " "))
                for value in series.values():
                    family.add_metric([], value)
            yield family


class _Handler(BaseHTTPRequestHandler):
    timeout = READ_TIMEOUT  # each read of the request: a silent client is dropped, not kept
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.server.registry)
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
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed now; the scraper's next try gets in
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(metrics: Metrics, address: str) -> tuple[Any, Any]:
    """Start the HTTP exporter at ``address``; returns (server, thread) — ``server.shutdown()`` stops it.

    Serves ``GET /metrics`` (and ``/``) with at most :data:`MAX_CONNECTIONS` connections at
    once, each closed after :data:`READ_TIMEOUT` seconds without a byte.

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
    except OSError as exc:
        raise InternalError(f"--metrics: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    thread = threading.Thread(target=server.serve_forever, name="xps-metrics", daemon=True)
    thread.start()
    return server, thread
