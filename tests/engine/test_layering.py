"""The structure the layout promises: one way down, typed dispatch, one publisher."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import xpscerpto as xps
from xpscerpto._routes import KdfRoute, KemRoute, KexRoute, SignatureRoute
from xpscerpto.settings import EngineConfig, Policy

ROOT = Path(__file__).resolve().parents[2]
SUBSYSTEMS = ("capsules", "keyring", "audit", "channel", "cli", "signing", "plugins")
#: The loader composes the subsystems' config sections; `python -m xpscerpto` is the CLI.
COMPOSERS = {"config.py": ("capsules.config", "keyring.config", "audit.config", "channel.config"),
             "__main__.py": ("cli",)}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "engine").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_subsystem(path: Path) -> None:
    allowed = COMPOSERS.get(path.name, ())
    for name in _imports(path):
        for sub in SUBSYSTEMS:
            if name == f"xpscerpto.{sub}" or name.startswith(f"xpscerpto.{sub}."):
                assert name.removeprefix("xpscerpto.") in allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("name", ["engine/engine.py", "engine/_namespaces.py", "engine/_routes.py",
                                  "engine/_routing.py", "capsules/_canary.py"])
def test_dispatch_carries_no_type_ignore(name: str) -> None:
    assert "type: ignore" not in (ROOT / name).read_text()


def test_using_the_api_imports_no_capsule_keyring_or_cli_code() -> None:
    code = ("import sys, xpscerpto as xps; k = bytes(32); "
            "xps.aead.open('AES-256-GCM', k, xps.aead.encrypt('AES-256-GCM', k, b'm')); "
            "pk, sk = xps.ed25519.generate_keypair(); xps.ed25519.verify(pk, b'm', xps.ed25519.sign(sk, b'm')); "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['xpscerpto', 'capsules'], ['xpscerpto', 'keyring'], ['xpscerpto', 'cli'], ['xpscerpto', 'audit'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("api", "route"), [
    ("ed25519", SignatureRoute), ("x25519", KexRoute), ("mlkem768", KemRoute), ("hkdf", KdfRoute)])
def test_namespace_methods_are_the_routes_methods_forwarded(api: str, route: type) -> None:
    namespace = getattr(xps, api)
    for name, method in inspect.getmembers(route, inspect.isfunction):
        if name.startswith("_"):
            continue
        forwarded = getattr(type(namespace), name)
        assert forwarded.__doc__ == method.__doc__ and forwarded.__name__ == name
        assert getattr(namespace, name).__self__ is namespace


def test_engine_config_changes_only_with_a_published_table() -> None:
    eng = xps.Engine()
    with pytest.raises(AttributeError):
        eng.config = EngineConfig()  # type: ignore[misc]
    forbid = EngineConfig(policy=Policy(forbid=("aes128",)))
    eng.publish(eng.build_table(config=forbid), config=forbid)
    assert eng.config is forbid and "aead.aes128gcm" in eng.table.unrouted


def test_an_unrouted_operation_names_its_reason_on_every_kind() -> None:
    eng = xps.Engine(EngineConfig(policy=Policy(forbid=("ed25519", "x25519", "mlkem", "hkdf"))))
    for call in (eng.ed25519.generate_keypair, eng.x25519.generate_keypair,
                 eng.mlkem768.generate_keypair, lambda: eng.hkdf.derive(b"k" * 32, 32)):
        with pytest.raises(xps.PolicyError, match=r"not available \(forbidden by policy"):
            call()
