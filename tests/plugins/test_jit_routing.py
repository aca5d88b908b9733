"""The numba kernels in the engine: routed by autotune per size, never compiling on a call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.plugins import jit
from xpscerpto.settings import EngineConfig

OP = "aead.xchacha20poly1305"
PROVIDERS = ("sodium", "jit", "jit-openssl")


def _compiled() -> dict[str, tuple[int, int]]:
    from xpscerpto.plugins import _jit_kernels as k

    return {name: (len(d.signatures), sum(d.stats.cache_misses.values())) for name, d in k.KERNELS.items()}


def test_a_tuned_engine_routes_xchacha_to_the_kernels_and_no_call_compiles(
        jit_ready: jit.JitStatus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPS_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    eng = xps.Engine(EngineConfig(autotune=True, providers=PROVIDERS))
    assert eng.wait_tuned(300)
    route = eng.table.routes[OP]
    assert route.chosen_by == "autotune"
    assert set(route.providers) <= set(PROVIDERS)
    assert {m.provider for m in eng.tuned.measurements if m.operation == OP} == set(PROVIDERS)  # type: ignore[union-attr]
    before = _compiled()
    key = os.urandom(32)
    keyed = eng.aead.keyed("XCHACHA20-POLY1305", key)
    sodium = xps.Engine(EngineConfig(autotune=False, providers=("sodium",)))
    for size in (0, 1, 255, 256, 257, 4096, 4097, 65536, 65537, 300_000):
        msg = os.urandom(size)
        for as_type in (bytes, bytearray, memoryview):
            m: Any = as_type(msg)
            s = eng.aead.encrypt("XCHACHA20-POLY1305", key, m, as_type(b"aad"))
            # libsodium alone opens what the routed kernels sealed, and the other way round.
            assert sodium.aead.open("XCHACHA20-POLY1305", key, s, b"aad") == msg
            t = sodium.aead.encrypt("XCHACHA20-POLY1305", key, m, b"aad")
            assert eng.aead.decrypt("XCHACHA20-POLY1305", key, t.nonce, t.ciphertext, t.tag, b"aad") == msg
            k = keyed.encrypt(m, b"aad")
            assert keyed.decrypt(k.nonce, k.ciphertext_and_tag, b"aad") == msg
            forged = bytearray(k.ciphertext_and_tag)
            forged[-1] ^= 1
            with pytest.raises(xps.AuthError):
                keyed.decrypt(k.nonce, bytes(forged), b"aad")
    assert _compiled() == before  # every signature was compiled at warm-up, none since


def test_masking_jit_takes_the_kernels_out_of_the_tuned_table(jit_ready: jit.JitStatus, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPS_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    eng = xps.Engine(EngineConfig(autotune=True, providers=PROVIDERS))
    assert eng.wait_tuned(300)
    masked = eng.build_table(config=EngineConfig(autotune=True, providers=PROVIDERS, isa_mask=("jit",)))
    eng.publish(masked)
    route = eng.table.routes[OP]
    assert route.providers == ("sodium",)
    reasons = {c.provider: c.excluded for c in route.candidates}
    assert reasons["jit"].startswith("masked (-jit") and reasons["jit-openssl"].startswith("masked (-jit")


def _deferring(calls: list[str], *sources: dict[str, Any]) -> type:
    """A plugin registering one deferred source per entry (``provides``, ``backends``), each
    appending "prepared" to ``calls`` when run, or raising if ``fails``."""

    def source(fails: bool) -> Any:
        return (lambda: 1 / 0) if fails else (lambda: calls.append("prepared") or ())

    class Plugin:
        @staticmethod
        @xps.hookspecs.hookimpl
        def xps_register_providers(registry: Any) -> None:
            for spec in sources:
                registry.add_later(source(spec.get("fails", False)), provides=spec["provides"],
                                   backends=spec.get("backends", ()))

    return Plugin


def test_deferred_kernels_are_not_prepared_for_an_engine_that_cannot_route_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    Plugin = _deferring(calls, {"provides": ("later",)}, {"provides": ("broken",), "fails": True})
    monkeypatch.setenv("XPS_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    eng = xps.Engine(EngineConfig(autotune=True, providers=("openssl", "sodium")), plugins=[Plugin])
    assert eng.wait_tuned(120) and calls == []
    eng2 = xps.Engine(EngineConfig(autotune=True, isa_mask=("later", "jit")), plugins=[Plugin])
    assert eng2.wait_tuned(120) and calls == []
    eng3 = xps.Engine(EngineConfig(autotune=True, providers=("openssl", "later", "broken")), plugins=[Plugin])
    assert eng3.wait_tuned(120) and calls == ["prepared"]  # the broken one failed quietly, the engine runs
    assert eng3.aead.open("AES-256-GCM", bytes(32), eng3.aead.encrypt("AES-256-GCM", bytes(32), b"m")) == b"m"


def test_a_backend_masked_in_the_configuration_keeps_its_deferred_source_from_running(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Found by a review: with crypto.engine.isa_mask [-jit] the engine still imported numba and
    # ran the kernels (nothing was routed to them, but the suspect code executed): "jit-openssl"
    # is not named by "-jit", only its backends are.
    calls: list[str] = []
    Plugin = _deferring(calls, {"provides": ("k", "k-openssl"), "backends": ("jit",)})
    monkeypatch.setenv("XPS_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    eng = xps.Engine(EngineConfig(autotune=True, isa_mask=("jit",), providers=("sodium", "k")), plugins=[Plugin])
    assert eng.wait_tuned(120) and calls == []
    # The real kernels left out (providers): only the source under test may run here.
    eng2 = xps.Engine(EngineConfig(autotune=True, isa_mask=("openssl",), providers=("sodium", "k")), plugins=[Plugin])
    assert eng2.wait_tuned(120) and calls == ["prepared"]  # "k" is still wanted, its backend is not masked


def test_the_configured_jit_mask_does_not_import_numba(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys, xpscerpto
        eng = xpscerpto.Engine(xpscerpto.EngineConfig(autotune=True, isa_mask=("-jit",)))
        assert eng.wait_tuned(120)
        print("numba" in sys.modules, "xpscerpto.plugins._jit_kernels" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XPS_"))}
    env["XPS_AUTOTUNE_CACHE"] = str(tmp_path / "autotune.json")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env,
                         check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
