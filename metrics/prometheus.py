"""Serve :class:`~.counters.Metrics` in Prometheus' text format over HTTP (``--metrics ADDR``).

Needs the optional extra ``metrics`` (``prometheus-client``). The server runs in a daemon
thread; each scrape reads the counters once (no work between scrapes).

Example:
    >>> server = serve(metrics, "127.0.0.1:9464")                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xpscerpto.errors import PolicyError

from .counters import COUNTERS, Metrics

__all__ = ["parse_address", "serve"]


def parse_address(text: object) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` means 127.0.0.1) -> (host, port).

    Raises:
        PolicyError: anything else (the message names ``--metrics``).
    """
    if not isinstance(text, str) or ":" not in text:
        raise PolicyError("--metrics: expected HOST:PORT")
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PolicyError("--metrics: expected a port number 0..65535")
    return host or "127.0.0.1", int(port)


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


def serve(metrics: Metrics, address: str) -> tuple[Any, Any]:
    """Start the HTTP exporter at ``address``; returns (server, thread) — ``server.shutdown()`` stops it.

    Raises:
        PolicyError: prometheus-client is not installed, or a bad address.
        InternalError: the address cannot be bound.
    """
    host, port = parse_address(address)
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise PolicyError("--metrics: needs prometheus-client (pip install 'xpscerpto[metrics]')") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        from xpscerpto.errors import InternalError

        raise InternalError(f"--metrics: cannot listen on {host}:{port} ({exc.strerror})") from None
    return server, thread
