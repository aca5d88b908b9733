"""Routing table construction: selection order, policy, KAT gating."""

from __future__ import annotations

import itertools

import pytest
import xpscerpto as xps
from xpscerpto._routing import build_table
from xpscerpto.config import EngineConfig, Policy
from xpscerpto.interfaces import OPERATIONS
from xpscerpto.plugins import openssl, sodium

from tests.fakes.providers import ProviderPlugin, WrongAesGcm256, aes_provider


@pytest.fixture(scope="module")
def builtins() -> tuple:
    return (openssl.make_provider(), sodium.make_provider())


def test_every_operation_has_an_entry_and_every_alias_maps_to_the_same_adapter(builtins: tuple) -> None:
    table = build_table(builtins, EngineConfig(), version=1)
    for op, spec in OPERATIONS.items():
        assert op in table.entries
        for alias in spec.aliases:
            assert table.entries[alias] is table.entries[op]
    assert set(table.routes) | set(table.unrouted) == set(OPERATIONS)


def test_higher_priority_wins_and_losers_are_listed_with_the_reason(builtins: tuple) -> None:
    table = build_table(builtins, EngineConfig(), version=1)
    route = table.routes["aead.chacha20poly1305"]
    assert route.provider == "openssl"  # priority 100 over sodium's 90
    assert [(c.provider, c.excluded) for c in route.candidates] == [
        ("openssl", None), ("sodium", "lower preference")]


def test_equal_priority_ties_break_by_name_whatever_the_registration_order() -> None:
    providers = [aes_provider(n, priority=5) for n in ("zeta", "alpha", "mid")]
    chosen = {build_table(perm, EngineConfig(), version=1).provider_for("aead.aes256gcm")
              for perm in itertools.permutations(providers)}
    assert chosen == {"alpha"}


def test_prefer_overrides_priority(builtins: tuple) -> None:
    cfg = EngineConfig(prefer={"aead.chacha20poly1305": "sodium"})
    assert build_table(builtins, cfg, version=1).provider_for("aead.chacha20poly1305") == "sodium"


def test_providers_restriction_pins_the_table(builtins: tuple) -> None:
    table = build_table(builtins, EngineConfig(providers=("sodium",)), version=1)
    assert {r.provider for r in table.routes.values()} == {"sodium"}
    assert "aead.aes256gcm" in table.unrouted
    assert "not in config.providers" in table.unrouted["aead.aes256gcm"]


@pytest.mark.parametrize(("forbid", "blocked"), [
    (("aes128",), {"aead.aes128gcm"}),
    (("AES128",), {"aead.aes128gcm"}),  # tokens are case-insensitive
    (("chacha20",), {"aead.chacha20poly1305", "aead.xchacha20poly1305"}),
    (("aead.aes*",), {"aead.aes128gcm", "aead.aes256gcm", "aead.aes256gcmsiv"}),
    (("pq",), {"sig.mldsa65", "kem.mlkem768"}),
    (("sha1", "des"), set()),  # nothing routed uses them; nothing blocked
], ids=["token", "token-case", "family", "glob", "post-quantum", "absent-algorithms"])
def test_forbid_list_blocks_exactly_the_matching_operations(
        builtins: tuple, forbid: tuple, blocked: set) -> None:
    table = build_table(builtins, EngineConfig(policy=Policy(forbid=forbid)), version=1)
    assert set(table.unrouted) == blocked
    for op in blocked:
        assert "forbidden by policy" in table.unrouted[op]


def test_allow_list_routes_only_what_it_names(builtins: tuple) -> None:
    table = build_table(builtins, EngineConfig(policy=Policy(allow=("aead.*", "sig.ed25519"))), version=1)
    assert set(table.routes) == {op for op in OPERATIONS if op.startswith("aead.")} | {"sig.ed25519"}
    assert table.unrouted["kex.x25519"] == "not in the policy allow-list"


def test_forbidden_algorithm_call_raises_policy_error_naming_the_rule() -> None:
    eng = xps.Engine(EngineConfig(policy=Policy(forbid=("aes128",))))
    with pytest.raises(xps.PolicyError) as ei:
        eng.aead.encrypt(xps.AEAD.AES_128_GCM, bytes(16), b"x")
    assert ei.value.code == "XPS_ERR_POLICY"
    assert "AES-128-GCM" in str(ei.value) and "aes128" in str(ei.value)
    # Allowed algorithms keep working on the same engine.
    key = bytes(32)
    assert eng.aead.open("AES-256-GCM", key, eng.aead.encrypt("AES-256-GCM", key, b"ok")) == b"ok"


def test_forbidden_signature_scheme_raises_policy_error() -> None:
    eng = xps.Engine(EngineConfig(policy=Policy(forbid=("ed25519",))))
    with pytest.raises(xps.PolicyError, match=r"sig\.ed25519: not available \(forbidden by policy"):
        eng.ed25519.generate_keypair()


def test_provider_failing_its_kat_is_never_routed_and_the_failure_is_reported() -> None:
    bad = aes_provider("broken", WrongAesGcm256(), priority=1000)
    eng = xps.Engine(plugins=[ProviderPlugin((bad,))])
    result = next(r for r in eng.state.selftests if r.provider == "broken")
    assert not result.passed and "encrypt output differs" in (result.failure or "")
    route = eng.table.routes["aead.aes256gcm"]
    assert route.provider == "openssl"
    excluded = [(c.provider, c.excluded) for c in route.candidates]
    assert ("broken", "self-test failed: " + result.failure) in excluded


def test_sole_provider_failing_its_kat_leaves_the_operation_unrouted() -> None:
    bad = aes_provider("broken", WrongAesGcm256())
    eng = xps.Engine(EngineConfig(providers=("broken",)), plugins=[ProviderPlugin((bad,))])
    assert "self-test failed" in eng.table.unrouted["aead.aes256gcm"]
    with pytest.raises(xps.PolicyError, match="self-test failed"):
        eng.aead.encrypt("AES-256-GCM", bytes(32), b"x")
