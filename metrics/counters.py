"""Process-wide counters for Prometheus: operations per provider, auth failures, rotations, swaps.

Counting stays off the call path except where it cannot: an engine built with
``Engine(count=metrics.operation_counter)`` wraps each AEAD provider factory in a function that
advances an ``itertools.count`` (one C call, atomic under the GIL, no lock) — and only then.
Everything else is counted where it is already slow: the engine's auth-failure listener (error
path) and the records this process journals (swaps, rollbacks, rotations).

Example:
    >>> m = Metrics()
    >>> tick = m.operation_counter("aead.aes256gcm", "openssl")
    >>> _ = tick(); _ = tick()
    >>> m.snapshot()["xps_operations_total"][(("operation", "aead.aes256gcm"), ("provider", "openssl"))]
    2
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from xpscerpto.errors import PolicyError

__all__ = ["COUNTERS", "Metrics"]

#: name -> help text of every counter this module exports.
COUNTERS = {
    "xps_operations_total": "AEAD calls (and keyed objects made) per operation and provider",
    "xps_auth_failures_total": "authentication failures per operation and provider (all, not rate-limited)",
    "xps_rotations_total": "key rotations journaled by this process, per reason",
    "xps_swaps_total": "capsules enabled (routing table swaps to a new provider)",
    "xps_rollbacks_total": "capsule rollbacks (automatic and operator)",
    "xps_keyring_decryptions_total": "keyring decryptions per key, version and result (what a suite "
                                     "migration's canary decision reads)",
    "xps_channel_handshakes_total": "secure-channel handshakes per kind (pq: hybrid post-quantum or not) and "
                                    "result (ok or the failure reason; what a PQ rollout's canary reads)",
}

Labels = tuple[tuple[str, str], ...]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def clean_value(value: str) -> str:
    """``value`` as UTF-8 can carry it (a lone surrogate becomes ``\\udcff``)."""
    # argv and file names decode invalid bytes to lone surrogates; one such label value made
    # every later scrape fail to encode (found by a review), so it is escaped once, here.
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean(labels: Mapping[str, object]) -> Labels:
    pairs = []
    for key, value in labels.items():
        if not _LABEL_NAME.fullmatch(key) or not isinstance(value, str):
            raise PolicyError("labels: expected names of letters, digits and '_' with str values")
        pairs.append((key, clean_value(value)))
    return tuple(sorted(pairs))


class Metrics:
    """Counters of one process (thread-safe); read with :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, Labels], itertools.count[int]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._sources: list[Callable[[], dict[str, dict[Labels, float]]]] = []

    def _counter(self, name: str, labels: Labels) -> itertools.count[int]:
        key = (name, labels)
        found = self._counts.get(key)
        if found is None:
            with self._lock:
                found = self._counts.setdefault(key, itertools.count(1))
        return found

    def inc(self, name: str, **labels: str) -> None:
        """Add one to counter ``name`` with ``labels`` (off the call path).

        Raises:
            PolicyError: ``name`` is not in :data:`COUNTERS`, or a label is not name=str.
        """
        if not isinstance(name, str) or name not in COUNTERS:
            raise PolicyError("name: not one of the counters in COUNTERS")
        next(self._counter(name, _clean(labels)))

    def operation_counter(self, operation: str, provider: str) -> Callable[[], int]:
        """The tick of (operation, provider): pass this method as ``Engine(count=…)``."""
        labels = _clean({"operation": str(operation), "provider": str(provider)})
        return self._counter("xps_operations_total", labels).__next__

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A value read at scrape time (e.g. the routing table's version).

        Raises:
            PolicyError: ``name`` is not a Prometheus metric name.
        """
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise PolicyError("name: expected a metric name of letters, digits, '_' and ':'")
        self._gauges[name] = read

    def count(self, name: str, **labels: str) -> int:
        """The current value of one counter (0 if never incremented)."""
        counter = self._counts.get((name, _clean(labels)))
        return 0 if counter is None else _value(counter)

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        """Every counter and gauge: name -> {labels: value}."""
        out: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
        with self._lock:
            items = list(self._counts.items())
        for (name, labels), counter in items:
            out[name][labels] = _value(counter)
        for name, read in self._gauges.items():
            with contextlib.suppress(Exception):  # a gauge that cannot be read is left out of the scrape
                out[name] = {(): float(read())}
        for source in self._sources:
            with contextlib.suppress(Exception):
                for name, series in source().items():
                    into = out.setdefault(name, {})
                    for labels, value in series.items():  # two channel endpoints add up
                        into[labels] = into.get(labels, 0) + value
        return out

    # -- sources -----------------------------------------------------------------------------

    def watch_engine(self, engine: Any) -> None:
        """Count the engine's authentication failures; expose its routing table version."""
        engine.add_auth_failure_listener(lambda provider, operation, _call: self.inc(
            "xps_auth_failures_total", operation=str(operation), provider=str(provider)))
        self.gauge("xps_routing_table_version", lambda: engine.table.version)

    def watch_journal(self, journal: Any) -> None:
        """Count what this process journals (rotations the keyring delivers, among others)."""
        journal.add_listener(self.on_event)

    def watch_keyring(self, ring: Any) -> None:
        """Export the keyring's per-version decrypt counts (read at scrape time, nothing per call)."""

        def read() -> dict[str, dict[Labels, float]]:
            series: dict[Labels, float] = {}
            for (name, version), (ok, failed) in ring.loaded_decrypt_counts().items():
                base = (("key", name), ("version", str(version)))
                series[(*base, ("result", "ok"))] = ok
                series[(*base, ("result", "auth_failure"))] = failed
            return {"xps_keyring_decryptions_total": series}

        self._sources.append(read)

    def watch_channel(self, failures: Any) -> None:
        """Export a channel endpoint's handshake outcomes (its ``FailureLog``; several may be watched)."""

        def read() -> dict[str, dict[Labels, float]]:
            return {"xps_channel_handshakes_total": {
                (("pq", "true" if pq else "false"), ("result", result)): n
                for (pq, result), n in failures.outcome_counts().items()}}

        self._sources.append(read)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """One journaled event (the journal's listener)."""
        if event == "PATCH_ENABLE":
            self.inc("xps_swaps_total")
        elif event == "PATCH_ROLLBACK" and fields.get("active") is not False:
            # ``active: false``: a predecessor forgotten after another node's rollback, no swap.
            self.inc("xps_rollbacks_total")
        elif event == "KEY_ROTATE":
            self.inc("xps_rotations_total", reason=str(fields.get("reason", "")).split(":")[0][:40])


def _value(counter: itertools.count[int]) -> int:
    # count(1) after n increments reads "count(n + 1)": the next value is one past the total.
    # repr is the one read-only view an itertools.count offers (no pickling since 3.14).
    return int(repr(counter)[6:-1]) - 1
