"""Adversarial inputs to every public constructor and parser of issue 14: only XpsError, no echo.

Values carry a marker substring; no refusal may repeat it (a DSN's password, a caller's text)."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from xpscerpto.audit.config import AuditConfig
from xpscerpto.db.postgres import check_dsn
from xpscerpto.errors import XpsError
from xpscerpto.metrics.prometheus import parse_address
from xpscerpto.orchestrator import Lease, Plan, Schedule, SuiteMigration
from xpscerpto.orchestrator.schedule import parse_seconds

MARK = "s3cr3tMARK"

anything = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40).map(lambda t: t + MARK),
    st.binary(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                  max_size=2),
    st.just(memoryview(b"abc")[::2]), st.just(float("nan")),
    st.sampled_from([f"postgresql://u:{MARK}@h/db", f"postgresql://h/db?password={MARK}", "postgresql://h/" + MARK,
                     f"every={MARK}", f"usage={MARK}", "monthly", "every=5d", "usage=7", "127.0.0.1:9", "AES-256-GCM",
                     "XCHACHA20-POLY1305"]),
)


def _only_typed(call: Any, *args: Any, **kw: Any) -> None:
    try:
        call(*args, **kw)
    except XpsError as exc:
        assert MARK not in str(exc), str(exc)
        assert "s3cr3t" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(anything)
def test_dsn_duration_schedule_address_parsers(value: object) -> None:
    _only_typed(check_dsn, value)
    _only_typed(parse_seconds, value, "grace")
    _only_typed(Schedule.parse, value)
    _only_typed(parse_address, value)
    _only_typed(AuditConfig.from_mapping, {"database": value})


@settings(max_examples=300, deadline=None)
@given(anything, anything, anything, anything, anything, anything)
@example("m" + MARK, {}, None, None, None, None)  # found by CI: an unhashable key reached set()
def test_plan_and_suite_migration_constructors(a: object, b: object, c: object, d: object, e: object,
                                               f: object) -> None:
    _only_typed(Plan, a, key=b, policy=c, grace=d, suite=e, kek=f)  # type: ignore[arg-type]
    keys = (b,) if not isinstance(b, list) else tuple(b)
    _only_typed(SuiteMigration, a, keys=keys, target=c, canary=d, watch=e, max_failure_rate=f)  # type: ignore[arg-type]
    _only_typed(SuiteMigration, "m", keys=("k",), target="AES-256-GCM", canary=d, watch=e,  # type: ignore[arg-type]
                max_failure_rate=f)


@settings(max_examples=200, deadline=None)
@given(anything, anything, anything)
def test_lease_arguments(name: object, holder: object, ttl: object) -> None:
    _only_typed(Lease, None, name, holder=holder, ttl=ttl)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(anything, anything, anything, anything, anything, anything)
def test_pq_rollout_constructor_posture_and_channel_config(a: object, b: object, c: object, d: object, e: object,
                                                           f: object) -> None:
    from xpscerpto.channel import ChannelConfig
    from xpscerpto.orchestrator import PqRollout, channel_config

    nodes = tuple(b) if isinstance(b, list) else (b,)
    _only_typed(PqRollout, a, nodes=nodes, protocol=c, canary=d, watch=e, max_failure_rate=f)  # type: ignore[arg-type]
    _only_typed(PqRollout, "r", nodes=("n",), protocol=c)  # type: ignore[arg-type]
    _only_typed(PqRollout("r", nodes=("n",)).posture, a, "n")  # type: ignore[arg-type]
    _only_typed(channel_config, a, ChannelConfig(), "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256")  # type: ignore[arg-type]
    _only_typed(channel_config, "accept", b, "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256")  # type: ignore[arg-type]
    for posture in ("accept", "offer", "require"):
        _only_typed(channel_config, posture, ChannelConfig(), c)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(anything)
def test_handshake_outcomes_take_any_protocol_name(value: object) -> None:
    from xpscerpto.channel._failures import FailureLog, is_pq
    from xpscerpto.metrics import Metrics

    assert is_pq(value) in (True, False)  # type: ignore[arg-type]
    log = FailureLog()
    log.success(value)  # type: ignore[arg-type]
    m = Metrics()
    m.watch_channel(log)
    assert sum(m.snapshot()["xps_channel_handshakes_total"].values()) == 1


@settings(max_examples=300, deadline=None)
@given(anything, anything)
def test_routing_state_location_keys(database: object, node: object) -> None:
    from xpscerpto.capsules.config import HotpatchConfig

    _only_typed(HotpatchConfig.from_mapping, {"state_database": database, "node": node})
    _only_typed(HotpatchConfig.from_mapping, {"node": node})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=12).map(lambda d: __import__("json").dumps(d).encode())))
def test_a_damaged_routing_state_document_is_an_update_refusal(raw: bytes) -> None:
    from xpscerpto.capsules.store import RoutingState
    from xpscerpto.errors import UpdateError

    try:
        RoutingState.from_bytes(raw, "row")
    except UpdateError as exc:
        assert exc.reason == "state"


@settings(max_examples=300, deadline=None)
@given(anything, anything, anything)
def test_a_counter_series_of_any_shape_is_rows_or_a_policy_refusal(name: object, labels: object,
                                                                   value: object) -> None:
    from xpscerpto.db.counter_store import series_rows

    _only_typed(series_rows, name)
    _only_typed(series_rows, {"n": labels})
    candidates: list[object] = [{"n": {(("k", "v"),): value}}]
    with contextlib.suppress(TypeError):  # an unhashable key: no such mapping exists to pass
        candidates.append({name: {(("k", "v"),): value}})
    with contextlib.suppress(TypeError):
        candidates.append({"n": {labels: value}})
    for series in candidates:
        try:
            rows = series_rows(series)
        except XpsError as exc:
            assert MARK not in str(exc)
            continue
        assert all(isinstance(v, float) for _, _, v in rows)
