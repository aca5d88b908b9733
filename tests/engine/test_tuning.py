"""Routing by measurement: size splits on the hot path, eligibility, the background tuner."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from xpscerpto import _autotune as at
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Buffer, ImplementationInfo, Provider
from xpscerpto.plugins import jit
from xpscerpto.plugins.openssl import ChaCha20Poly1305Impl
from xpscerpto.settings import EngineConfig, Policy

OP = "aead.chacha20poly1305"


class _Counting(Aead):
    """OpenSSL's ChaCha20-Poly1305, counting the calls it serves (to see which provider did)."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"encrypt": 0, "decrypt": 0}

    def cipher(self, key: Buffer) -> Any:
        outer, inner = self, ChaCha20Poly1305(bytes(key))

        class C:
            def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
                outer.calls["encrypt"] += 1
                return inner.encrypt(nonce, bytes(data), bytes(aad))

            def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
                outer.calls["decrypt"] += 1
                return inner.decrypt(nonce, bytes(data), bytes(aad))

        return C()


class _Plugin:
    def __init__(self, **extra: Any) -> None:
        self.small, self.large = _Counting(), _Counting()
        self.extra = extra

    @hookimpl
    def xps_register_providers(self, registry: Any) -> None:
        registry.add(Provider("small", "test", "1", {OP: self.small}, priority=1000, **self.extra))
        registry.add(Provider("large", "test", "1", {OP: self.large}, priority=1000))


def _result(stateless: tuple[str, ...], keyed: tuple[str, ...]) -> at.TuneResult:
    return at.TuneResult("fp", {OP: {"stateless": stateless, "keyed": keyed}})


def _engine(plugin: _Plugin, **config: Any) -> xps.Engine:
    return xps.Engine(EngineConfig(providers=("small", "large", "openssl"), autotune=False, **config),
                      plugins=[plugin])


def test_each_call_shape_is_served_by_the_provider_of_its_size() -> None:
    plugin = _Plugin()
    eng = _engine(plugin)
    eng.use_tuning(_result(("small", "large", "large", "large"), ("small", "small", "large", "large")))
    route = eng.table.routes[OP]
    assert (route.provider, route.limit, route.large_provider) == ("small", 256, "large")
    assert (route.keyed_provider, route.keyed_limit, route.keyed_large_provider) == ("small", 4096, "large")
    key = os.urandom(32)
    reference = ChaCha20Poly1305(key)
    keyed = eng.aead.keyed(OP, key)
    for size, stateless_by, keyed_by in ((0, "small", "small"), (256, "small", "small"), (257, "large", "small"),
                                         (4096, "large", "small"), (4097, "large", "large"), (70000, "large", "large")):
        msg = os.urandom(size)
        for impl in (plugin.small, plugin.large):
            impl.calls = {"encrypt": 0, "decrypt": 0}
        s = eng.aead.encrypt(OP, key, msg, b"a")
        assert reference.decrypt(s.nonce, s.ciphertext_and_tag, b"a") == msg
        assert eng.aead.decrypt(OP, key, s.nonce, s.ciphertext, s.tag, b"a") == msg
        assert eng.aead.open(OP, key, s, b"a") == msg
        served = plugin.small if stateless_by == "small" else plugin.large
        assert served.calls == {"encrypt": 1, "decrypt": 2}, (size, stateless_by)
        for impl in (plugin.small, plugin.large):
            impl.calls = {"encrypt": 0, "decrypt": 0}
        k = keyed.encrypt(msg, b"a")
        assert keyed.open(k, b"a") == msg and reference.decrypt(k.nonce, k.ciphertext_and_tag, b"a") == msg
        served = plugin.small if keyed_by == "small" else plugin.large
        assert served.calls == {"encrypt": 1, "decrypt": 1}, (size, keyed_by)


class _SmallTagError(Exception):
    """The small provider's own authentication failure (as the jit kernels raise AuthError)."""


class _Faulty(_Counting):
    """A provider that faults on demand (aad ``boom``); with ``own_error``, its auth failures
    are its own class (as the jit kernels raise AuthError), not cryptography's InvalidTag."""

    def __init__(self, own_error: type[Exception] | None = None) -> None:
        super().__init__()
        self.own_error = own_error
        if own_error is not None:
            self.auth_errors = (own_error,)  # type: ignore[assignment,misc]

    def cipher(self, key: Buffer) -> Any:
        inner, own_error = super().cipher(key), self.own_error

        class C:
            def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
                return inner.encrypt(nonce, data, aad)  # type: ignore[no-any-return]

            def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
                if bytes(aad) == b"boom":
                    raise RuntimeError("provider bug")
                try:
                    return inner.decrypt(nonce, data, aad)  # type: ignore[no-any-return]
                except InvalidTag:
                    if own_error is None:
                        raise
                    raise own_error from None

        return C()


def test_forgeries_are_auth_errors_and_faults_are_charged_to_the_provider_that_served() -> None:
    # Found by the adversarial pass: the route's auth error classes were only its first
    # provider's, so a forgery opened by the other provider of a split was XPS_ERR_INTERNAL,
    # and both that and a real fault were charged to the first provider.
    plugin = _Plugin()
    plugin.small, plugin.large = _Faulty(_SmallTagError), _Faulty()
    eng = _engine(plugin)
    faults: list[str] = []
    eng.add_fault_listener(lambda provider, op, exc: faults.append(provider))
    eng.use_tuning(_result(("small", "large", "large", "large"), ("small", "small", "large", "large")))
    key = os.urandom(32)
    keyed = eng.aead.keyed(OP, key)
    for size, stateless_by, keyed_by in ((10, "small", "small"), (1000, "large", "small"), (9000, "large", "large")):
        s = eng.aead.encrypt(OP, key, os.urandom(size), b"a")
        bad_tag = bytes(16)
        k = keyed.encrypt(os.urandom(size), b"a")
        forged: list[tuple[Any, tuple[Any, ...]]] = [
            (eng.aead.decrypt, (OP, key, s.nonce, s.ciphertext, bad_tag, b"a")),
            (eng.aead.open, (OP, key, s, b"x")),
            (keyed.decrypt, (k.nonce, k.ciphertext_and_tag, b"x")),
            (keyed.open, (k, b"x"))]
        for call, args in forged:
            with pytest.raises(xps.AuthError):
                call(*args)
        assert faults == [], size
        faulty: list[tuple[Any, tuple[Any, ...], str]] = [
            (eng.aead.decrypt, (OP, key, s.nonce, s.ciphertext, s.tag, b"boom"), stateless_by),
            (eng.aead.open, (OP, key, s, b"boom"), stateless_by),
            (keyed.decrypt, (k.nonce, k.ciphertext_and_tag, b"boom"), keyed_by)]
        for call, args, by in faulty:
            with pytest.raises(xps.ProviderError, match=repr(by)):
                call(*args)
            assert faults.pop() == by, size
        assert faults == []


def test_a_preference_wins_over_measurement_and_none_rolls_back() -> None:
    plugin = _Plugin()
    eng = _engine(plugin, prefer={OP: "large"})
    eng.use_tuning(_result(("small",) * 4, ("small",) * 4))
    assert eng.table.routes[OP].provider == "large" and eng.table.routes[OP].chosen_by == "preference"
    eng2 = _engine(_Plugin())
    eng2.use_tuning(_result(("large",) * 4, ("large",) * 4))
    assert eng2.table.routes[OP].provider == "large" and eng2.table.routes[OP].chosen_by == "autotune"
    candidates = {c.provider: c.excluded for c in eng2.table.routes[OP].candidates}
    # The jit kernels are candidates too once an earlier test warmed them in this process.
    warm_jit = {p.name: "not in config.providers" for p in jit.make_providers() if OP in p.implementations}
    assert candidates == {"large": None, "small": "measured slower", "openssl": "measured slower",
                          "sodium": "not in config.providers", **warm_jit}
    eng2.use_tuning(None)
    route = eng2.table.routes[OP]
    assert route.provider == "large" and route.chosen_by == "priority" and route.limit == at.NO_LIMIT
    with pytest.raises(xps.PolicyError):
        eng2.use_tuning({"winners": {}})  # type: ignore[arg-type]


def test_a_measured_provider_that_is_no_longer_eligible_is_not_routed() -> None:
    plugin = _Plugin()
    eng = _engine(plugin, isa_mask=("large",))
    eng.use_tuning(_result(("small", "large", "large", "large"), ("large",) * 4))
    route = eng.table.routes[OP]
    assert route.large_provider is None and route.keyed_large_provider is None
    assert route.provider == "small" and route.chosen_by == "priority"
    assert ({c.provider: c.excluded for c in route.candidates}["large"] or "").startswith("masked (-large")


def test_mask_from_the_environment_and_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPS_SIMD_ISA_MASK", "-sodium")
    eng = xps.Engine(EngineConfig(autotune=False, isa_mask=("openssl",)))
    assert "aead.aegis256" in eng.table.unrouted and "masked" in eng.table.unrouted["aead.aegis256"]
    assert "aead.aes256gcm" in eng.table.unrouted  # only OpenSSL implements it
    monkeypatch.setenv("XPS_SIMD_ISA_MASK", "-sodium;x")
    with pytest.raises(xps.PolicyError, match="XPS_SIMD_ISA_MASK"):
        xps.Engine(EngineConfig(autotune=False))


def test_constant_time_and_cpu_features_decide_eligibility() -> None:
    plugin = _Plugin(constant_time=False)
    eng = _engine(plugin)
    excluded = {c.provider: c.excluded for c in eng.table.routes[OP].candidates}
    assert excluded["small"] == "not constant-time (policy require_constant_time)"
    assert eng.table.routes[OP].provider == "large"
    relaxed = _engine(_Plugin(constant_time=False), policy=Policy(require_constant_time=False))
    assert relaxed.table.routes[OP].provider in ("small", "large")
    needs = _Plugin(info={OP: ImplementationInfo(cpu_features=frozenset({"no_such_cpu_flag"}))})
    eng3 = _engine(needs)
    excluded = {c.provider: c.excluded for c in eng3.table.routes[OP].candidates}
    assert excluded["small"] == "needs CPU features this machine lacks: no_such_cpu_flag"
    weighted = _Plugin(info={OP: ImplementationInfo(weight=5000)})
    assert _engine(weighted).table.routes[OP].provider == "small"


def test_keyed_aeads_rebind_to_a_new_split_while_in_use() -> None:
    plugin = _Plugin()
    eng = _engine(plugin)
    key = os.urandom(32)
    keyed = eng.aead.keyed(OP, key)
    stop = threading.Event()
    errors: list[BaseException] = []

    def use() -> None:
        while not stop.is_set():
            try:
                for size in (10, 5000):
                    msg = os.urandom(size)
                    assert keyed.open(keyed.encrypt(msg), b"") == msg
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for shape in [("small",) * 4, ("large",) * 4, ("small", "large", "large", "large"), None] * 5:
        eng.use_tuning(None if shape is None else _result(shape, shape))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert repr(keyed).startswith("<KeyedAead")


def test_the_background_tuner_measures_caches_and_the_next_engine_reuses_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "autotune.json"
    monkeypatch.setenv("XPS_AUTOTUNE_CACHE", str(cache))
    cfg = EngineConfig(autotune=True, providers=("openssl", "sodium"))
    eng = xps.Engine(cfg)
    assert eng.wait_tuned(300)
    tuned = eng.tuned
    assert tuned is not None and cache.exists()
    for op in ("aead.chacha20poly1305", "sig.ed25519", "kex.x25519"):  # two candidates each: measured
        assert eng.table.routes[op].chosen_by == "autotune"
        assert {m.provider for m in tuned.measurements if m.operation == op} == {"openssl", "sodium"}
    assert eng.table.routes["aead.aes256gcm"].chosen_by == "autotune"  # one candidate: nothing to measure
    again = xps.Engine(cfg)
    assert again.wait_tuned(60)
    assert again.tuned is not None and again.tuned.created == tuned.created  # loaded, not re-measured
    key = os.urandom(32)
    for size in (1, 300, 5000, 70000, 300000):
        msg = os.urandom(size)
        s = again.aead.encrypt("CHACHA20-POLY1305", key, msg)
        assert ChaCha20Poly1305(key).decrypt(s.nonce, s.ciphertext_and_tag, b"") == msg


def test_without_autotune_nothing_runs_in_the_background() -> None:
    eng = xps.Engine(EngineConfig(autotune=False))
    assert eng.wait_tuned(0) and eng.tuned is None
    assert all(r.chosen_by != "autotune" for r in eng.table.routes.values())


def test_tune_measures_keyed_signing_and_exchange_shapes() -> None:
    from xpscerpto.plugins.openssl import Ed25519Impl, X25519Impl
    from xpscerpto.plugins.sodium import Ed25519Impl as SodiumEd25519
    from xpscerpto.plugins.sodium import X25519Impl as SodiumX25519

    result = at.tune({"sig.ed25519": {"openssl": Ed25519Impl(), "sodium": SodiumEd25519()},
                      "kex.x25519": {"openssl": X25519Impl(), "sodium": SodiumX25519()},
                      OP: {"only": ChaCha20Poly1305Impl()}}, fp="x", budget=0.002, rounds=1)
    for op in ("sig.ed25519", "kex.x25519"):
        w = result.winners[op]
        assert len(set(w["stateless"])) == 1 and w["stateless"] == w["keyed"]
        assert {m.provider for m in result.measurements if m.operation == op} == {"openssl", "sodium"}
    assert result.winners[OP]["keyed"] == ("only",) * 4
