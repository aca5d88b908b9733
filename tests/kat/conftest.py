"""Plumbing for the Wycheproof conformance suite.

* ``engine_for(provider)``: one :class:`~xpscerpto.Engine` pinned to one provider, built once
  per session (engine start runs the power-on self-tests, so never once per vector).
* ``tally``: each vector test records what kind of check it made; ``pytest_terminal_summary``
  prints how many vectors ran per (file, provider) and how many of those failed.

Outcomes (one per vector and provider):

* ``ran-valid``: a valid vector ran through the API and gave exactly the expected output.
* ``ran-invalid``: an invalid vector ran through the API and raised the expected typed error.
* ``acceptable``: an ``acceptable`` vector gave either the exact value or the typed rejection.
* ``rejected-by-API``: the API cannot express the vector (a nonce, tag or key size it does not
  take, an expanded private key); the call was made and checked to raise the typed error.
* ``not-expressible``: the API has no way to run the vector (fixed encapsulation randomness,
  external mu); what the API can do with its inputs was still checked.
* ``partial``: a valid vector of which only part of the expected output can be checked through
  the API (an ML-KEM expanded ``dk`` it does not expose, a hedged ML-DSA signature).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import pytest
from xpscerpto import Engine, EngineConfig

OUTCOMES = ("ran-valid", "ran-invalid", "acceptable", "rejected-by-API", "not-expressible", "partial")


@dataclass
class Tally:
    """Outcome counts per (file, provider), and which recorded tests failed."""

    counts: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def record(self, nodeid: str, file: str, provider: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r} (known: {', '.join(OUTCOMES)})")
        if nodeid in self.nodes:
            raise ValueError(f"{nodeid}: outcome recorded twice")
        self.nodes[nodeid] = (file, provider)
        self.counts.setdefault((file, provider), Counter())[outcome] += 1

    def failures(self, key: tuple[str, str]) -> int:
        return sum(1 for node in self.failed if self.nodes.get(node) == key)


_TALLY = pytest.StashKey[Tally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TALLY] = Tally()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.config.stash[_TALLY].failed.add(item.nodeid)
    return report


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Callable[[str, str, str], None]:
    """``tally(file, provider, outcome)``: record this test's outcome (once per test)."""
    store = request.config.stash[_TALLY]
    nodeid = request.node.nodeid

    def record(file: str, provider: str, outcome: str) -> None:
        store.record(nodeid, file, provider, outcome)

    return record


@pytest.fixture(scope="session")
def engine_for() -> Callable[[str], Engine]:
    """``engine_for(name)``: an engine whose only provider is ``name`` (cached per session)."""
    built: dict[str, Engine] = {}

    def get(provider: str) -> Engine:
        if provider not in built:
            built[provider] = Engine(EngineConfig(providers=(provider,), autoload_plugins=False))
        return built[provider]

    return get


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    store = config.stash.get(_TALLY, None)
    if store is None or not store.counts:
        return
    header = ("file", "provider", *OUTCOMES, "total", "failed")
    rows: list[tuple[str, ...]] = []
    totals: Counter[str] = Counter()
    failed_total = 0
    for key in sorted(store.counts):
        c = store.counts[key]
        failed = store.failures(key)
        failed_total += failed
        totals.update(c)
        rows.append((*key, *(str(c[o]) for o in OUTCOMES), str(sum(c.values())), str(failed)))
    rows.append(("TOTAL", "", *(str(totals[o]) for o in OUTCOMES), str(sum(totals.values())),
                 str(failed_total)))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths,
                                                                                          strict=True)))

    tr = terminalreporter
    tr.write_sep("=", "Wycheproof vectors per file and provider (through the public API)")
    tr.write_line(line(header))
    tr.write_line("  ".join("-" * w for w in widths))
    for r in rows[:-1]:
        tr.write_line(line(r))
    tr.write_line("  ".join("-" * w for w in widths))
    tr.write_line(line(rows[-1]))
