"""Plugin discovery through real entry points (a dist-info on sys.path), and containment."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto._plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, load_providers, validate_provider
from xpscerpto.config import EngineConfig
from xpscerpto.interfaces import Aead, Provider

from tests.fakes.providers import ProviderPlugin, RealAesGcm256

GOOD_PLUGIN = '''
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto.hookspecs import hookimpl
from xpscerpto.interfaces import Aead, Provider

class Impl(Aead):
    key_sizes = (32,); nonce_size = 12; tag_size = 16
    auth_errors = (InvalidTag,)
    cipher = AESGCM

@hookimpl
def xps_register_providers(registry):
    registry.add(Provider(name="thirdparty", backend="test", version="1.0",
                          implementations={"aead.aes256gcm": Impl()}, priority=500))
'''

PLUGINS = {
    "good": GOOD_PLUGIN,
    "importfails": "raise ImportError('libfoo.so: cannot open shared object file')\n",
    "hookraises": ("from xpscerpto.hookspecs import hookimpl\n"
                   "@hookimpl\ndef xps_register_providers(registry):\n    raise RuntimeError('boom')\n"),
    "badprovider": ("from xpscerpto.hookspecs import hookimpl\nfrom xpscerpto.interfaces import Provider\n"
                    "@hookimpl\ndef xps_register_providers(registry):\n"
                    "    registry.add(Provider(name='odd', backend='x', version='0',"
                    " implementations={'aead.rot13': object()}))\n"),
    "wrongargs": ("from xpscerpto.hookspecs import hookimpl\n"
                  "@hookimpl\ndef xps_register_providers(registry, extra):\n    pass\n"),
}


def install_entry_point(site: Path, name: str) -> None:
    """Write a module and a dist-info declaring it in the providers entry-point group."""
    module = f"xps_test_plugin_{name}"
    (site / f"{module}.py").write_text(textwrap.dedent(PLUGINS[name]))
    dist = site / f"xps_test_plugin_{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: xps-test-plugin-{name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    return tmp_path


def _warm_jit() -> list[str]:
    """The jit providers, if an earlier test warmed the kernels in this process (they register
    as providers only once warm; until then as a deferred source)."""
    from xpscerpto.plugins import jit

    return [p.name for p in jit.make_providers()]


def test_builtins_load_first_and_both_register() -> None:
    registry = load_providers(autoload=False)
    warm = _warm_jit()
    assert list(registry.providers) == ["openssl", "sodium", *warm]
    assert [d.provides for d in registry.deferred] == ([] if warm else [("jit", "jit-openssl")])
    assert registry.failures == []


def test_third_party_provider_is_discovered_through_its_entry_point_and_routed(site: Path) -> None:
    install_entry_point(site, "good")
    eng = xps.Engine()
    assert "thirdparty" in {p.name for p in eng.state.providers}
    assert eng.table.provider_for("aead.aes256gcm") == "thirdparty"  # priority 500
    key = bytes(32)
    assert eng.aead.open("AES-256-GCM", key, eng.aead.encrypt("AES-256-GCM", key, b"m")) == b"m"


def test_env_var_disables_entry_point_autoload(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_point(site, "good")
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = load_providers()
    assert "thirdparty" not in registry.providers
    assert set(registry.providers) == {"openssl", "sodium", *_warm_jit()}


def test_config_can_disable_autoload(site: Path) -> None:
    install_entry_point(site, "good")
    eng = xps.Engine(EngineConfig(autoload_plugins=False))
    assert "thirdparty" not in {p.name for p in eng.state.providers}


@pytest.mark.parametrize(("plugin", "reason"), [
    ("importfails", "import failed: ImportError: libfoo.so"),
    ("hookraises", "xps_register_providers raised RuntimeError: boom"),
    ("badprovider", "provider 'odd': operation 'aead.rot13' is unknown"),
    ("wrongargs", "registration failed"),
], ids=["import-error", "hook-raises", "invalid-provider", "hook-signature"])
def test_a_broken_plugin_is_named_and_the_engine_still_serves(site: Path, plugin: str, reason: str) -> None:
    install_entry_point(site, plugin)
    eng = xps.Engine()
    failures = [(f.plugin, f.reason) for f in eng.state.failures]
    assert len(failures) == 1
    assert plugin in failures[0][0]
    assert reason in failures[0][1]
    assert set(eng.table.unrouted) == set()
    pk, sk = eng.ed25519.generate_keypair()
    eng.ed25519.verify(pk, b"still serving", eng.ed25519.sign(sk, b"still serving"))


class NotAnAead:
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16


class MissingSizes(Aead):
    def cipher(self, key: object) -> object:
        return None


class BadArity(RealAesGcm256):
    def cipher(self, key: object, extra: object) -> object:  # type: ignore[override]
        return None


def _prov(name: str = "p", impls: dict | None = None, **kw: object) -> Provider:
    return Provider(name=name, backend="b", version="1",
                    implementations=impls if impls is not None else {"aead.aes256gcm": RealAesGcm256()},
                    **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("provider", "problem"), [
    ("not a provider", "expected a Provider record, got str"),
    (_prov(name="has space"), "name 'has space' must be an identifier"),
    (_prov(impls={}), "implements no operation"),
    (_prov(impls={"aead.rot13": RealAesGcm256()}), "operation 'aead.rot13' is unknown"),
    (_prov(impls={"aead.aes256gcm": NotAnAead()}), "does not subclass Aead"),
    (_prov(impls={"aead.aes256gcm": MissingSizes()}), "missing attribute 'key_sizes'"),
    (_prov(impls={"aead.aes256gcm": BadArity()}), "cipher() takes 3 parameters, contract has 2"),
    (_prov(kat={"sig.ed25519": ("x.json",)}), "kat: names operation 'sig.ed25519'"),
], ids=["not-a-record", "bad-name", "empty", "unknown-op", "wrong-contract", "missing-sizes",
        "wrong-arity", "kat-for-missing-op"])
def test_validate_provider_names_the_problem(provider: object, problem: str) -> None:
    reason = validate_provider(provider)
    assert reason is not None and problem in reason


def test_duplicate_provider_name_is_rejected_and_the_first_kept() -> None:
    dup = Provider(name="openssl", backend="impostor", version="9",
                   implementations={"aead.aes256gcm": RealAesGcm256()}, priority=10_000)
    eng = xps.Engine(plugins=[ProviderPlugin((dup,))])
    assert any("already registered" in f.reason for f in eng.state.failures)
    assert eng.table.routes["aead.aes256gcm"].backend != "impostor"
