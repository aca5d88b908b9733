"""A first-class fake publisher for the capsule security suite: real keys, real files, real zips.

``CapsuleFactory`` (fixture ``factory``) plays the publisher — and the attacker:

* ``signer(name)``: an Ed25519 publisher key pair written with :func:`generate_keypair` and read
  back with :func:`load_private_key` (so the key files themselves are exercised);
* ``source(body)`` / ``demo_source()``: a capsule source directory (``capsule.toml`` + provider
  module + KAT files), either a custom provider module or a copy of ``capsules/demo-capsule``;
* ``build(source)``: the real :func:`build_capsule`;
* ``manifest_for`` / ``assemble`` / ``zip``: the low-level path for malicious containers —
  a manifest re-signed correctly over a tampered payload, a zip with symlink or duplicate
  members, hostile paths, compression bombs — built with ``zipfile``, ``write_container``,
  ``canonical_json`` and ``sign`` directly.

Every payload module made here first appends the importing process's pid to a *marker file*
(its path is embedded in the module source). A test can therefore prove that a rejected
capsule's code never ran — in this process (``sys.modules``, the marker's pids) or in any
child (the marker does not exist).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import time
import tomllib
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import Engine, EngineConfig, Policy
from xpscerpto.capsules.build import SOURCE_FILE, build_capsule, collect_payload, manifest_document
from xpscerpto.capsules.format import Limits, canonical_json, write_container
from xpscerpto.capsules.isolate import Gates
from xpscerpto.capsules.loader import _PayloadFinder, package_name
from xpscerpto.capsules.updater import StagePlan, Updater
from xpscerpto.home import Home
from xpscerpto.interfaces import OPERATIONS
from xpscerpto.secret import SecretBytes
from xpscerpto.signing import PublisherKey, TrustStore, generate_keypair, load_private_key, sign

DEMO_SOURCE = Path(__file__).resolve().parents[2] / "capsules" / "demo-capsule"
DEMO_OP = "aead.xchacha20poly1305"

#: The operation custom test capsules provide (served by the built-in ``openssl`` provider,
#: so isolation tests get a differential and benchmark reference).
OP = "aead.aes256gcm"
ENTRY = "hotfix:Impl"

#: Gates for Updater tests: short, but with room for a busy CI box on the benchmark.
GATES = Gates(timeout_s=20, bench_seconds=0.05, max_slowdown=10)
PLAN = StagePlan(canary_seconds=0, dual_run_seconds=0)

#: A correct AES-256-GCM provider (pyca/cryptography underneath), the shape every variant starts from.
GOOD_AEAD = '''
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto.interfaces import Aead


class Impl(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)

    def cipher(self, key):
        return AESGCM(bytes(key))
'''

_MARKER_CODE = (
    "import os as _xps_marker_os\n"
    "with open({path!r}, 'a') as _xps_marker_file:\n"
    "    _xps_marker_file.write(str(_xps_marker_os.getpid()) + '\\n')\n"
)


def marker_code(path: Path) -> str:
    """Module-level code that records the importing pid in ``path``."""
    return _MARKER_CODE.format(path=str(path))


def marker_pids(path: Path) -> list[int]:
    """The pids that imported a payload module with this marker (empty: never imported)."""
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class Signer:
    """A publisher key pair read back from its files."""

    name: str
    public: PublisherKey
    seed: SecretBytes

    @property
    def keyid(self) -> str:
        return self.public.keyid

    @property
    def pair(self) -> tuple[PublisherKey, SecretBytes]:
        """What :func:`build_capsule` takes."""
        return self.public, self.seed


@dataclass(frozen=True)
class Source:
    """A capsule source directory and the marker its modules write when imported."""

    path: Path
    marker: Path

    @property
    def files(self) -> dict[str, bytes]:
        """The payload as the publisher tool collects it."""
        return collect_payload(self.path)

    @property
    def toml(self) -> dict[str, Any]:
        return tomllib.loads((self.path / SOURCE_FILE).read_text())


@dataclass(frozen=True)
class Capsule:
    """Capsule bytes plus the marker of the code inside them."""

    raw: bytes
    marker: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def package(self) -> str:
        """The synthetic package its modules would be imported under."""
        return package_name(self.sha256)


def loaded_modules(capsule: Capsule) -> list[str]:
    """Modules of this capsule present in this process."""
    return sorted(m for m in sys.modules if m.startswith(capsule.package))


def assert_never_ran(capsule: Capsule) -> None:
    """Nothing of ``capsule`` was imported anywhere: not here, not in a child."""
    assert not capsule.marker.exists(), f"capsule code ran in pid(s) {marker_pids(capsule.marker)}"
    assert_not_in_this_process(capsule)


def assert_not_in_this_process(capsule: Capsule) -> None:
    """This process never imported ``capsule`` (it may have run in a throw-away child)."""
    assert os.getpid() not in marker_pids(capsule.marker)
    assert loaded_modules(capsule) == []
    assert not any(m.startswith("_xps_capsule_" + capsule.sha256[:16]) for m in sys.modules)
    assert not any(isinstance(f, _PayloadFinder) and f.package == capsule.package for f in sys.meta_path)


def aes_vector(key: bytes, nonce: bytes, msg: bytes, aad: bytes, source: str) -> dict[str, str]:
    """A correct AES-256-GCM KAT vector in the self-test file format."""
    wire = AESGCM(key).encrypt(nonce, msg, aad)
    return {"source": source, "result": "valid", "key": key.hex(), "nonce": nonce.hex(), "aad": aad.hex(),
            "msg": msg.hex(), "ct": wire[:-16].hex(), "tag": wire[-16:].hex()}


def kat_file(*vectors: Mapping[str, str]) -> bytes:
    return json.dumps({"operation": OP, "vectors": list(vectors)}, indent=1).encode()


class CapsuleFactory:
    """Makes publisher keys, capsule sources, honest capsules and malicious containers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._signers: dict[str, Signer] = {}
        self._count = 0
        for d in ("keys", "src", "markers"):
            (root / d).mkdir(parents=True, exist_ok=True)

    # -- keys and trust ---------------------------------------------------------------------

    def signer(self, name: str = "alice") -> Signer:
        """The publisher key pair ``name`` (created once, then read from its files)."""
        if name not in self._signers:
            stem = self.root / "keys" / name
            generate_keypair(stem)
            public, seed = load_private_key(stem.with_name(name + ".key"))
            self._signers[name] = Signer(name, public, seed)
        return self._signers[name]

    def trust(self, *signers: Signer, ops: Iterable[str] = ("aead.*",), threshold: int = 1) -> TrustStore:
        """A trust store pinning ``signers`` (default: alice) for ``ops``."""
        store = TrustStore()
        for s in signers or (self.signer(),):
            store = store.add(s.public, tuple(ops), label=s.name)
        return store.with_threshold(threshold)

    def pin(self, home: Path, *signers: Signer, ops: Iterable[str] = ("aead.*",), threshold: int = 1) -> Home:
        """Save the trust store into ``home`` (created); returns the Home."""
        h = Home.resolve(home)
        self.trust(*signers, ops=ops, threshold=threshold).save(h.trust)
        return h

    # -- sources ----------------------------------------------------------------------------

    def _new_dir(self, label: str) -> tuple[Path, Path]:
        self._count += 1
        tag = f"{self._count:03d}-{label}"
        d = self.root / "src" / tag
        d.mkdir()
        return d, self.root / "markers" / f"{tag}.imported"

    def source(self, body: str = GOOD_AEAD, *, name: str = "hotfix-aesgcm", version: str = "1.0.0",
               operations: Mapping[str, str] | None = None, kat: Mapping[str, bytes] | None = None,
               extra_files: Mapping[str, bytes] | None = None, requires: Mapping[str, str] | None = None,
               expires_days: int | None = None, module: str = "hotfix.py", label: str = "custom",
               constant_time: bool | None = True) -> Source:
        """A source dir with one provider module (``body`` after the marker code).

        Args:
            kat: payload KAT files (path -> bytes), all declared for ``operations``' first op.
            constant_time: the manifest's claim (None: not stated); the test bodies wrap OpenSSL.
        """
        d, marker = self._new_dir(label)
        operations = dict(operations or {OP: ENTRY})
        (d / module).write_text(marker_code(marker) + body)
        for rel, blob in {**(kat or {}), **(extra_files or {})}.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(blob)
        lines = [f"name = {json.dumps(name)}", f"version = {json.dumps(version)}"]
        if expires_days is not None:
            lines.append(f"expires_days = {expires_days}")
        if constant_time is not None:
            lines.append(f"constant_time = {json.dumps(constant_time)}")
        if requires is not None:
            lines.append("[requires]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in requires.items()]
        lines.append("[operations]")
        lines += [f"{json.dumps(op)} = {json.dumps(entry)}" for op, entry in operations.items()]
        if kat:
            lines.append("[kat]")
            lines.append(f"{json.dumps(next(iter(operations)))} = {json.dumps(sorted(kat))}")
        (d / SOURCE_FILE).write_text("\n".join(lines) + "\n")
        return Source(d, marker)

    def demo_source(self, *, version: str = "1.0.0", name: str | None = None) -> Source:
        """A copy of ``capsules/demo-capsule`` (marker added to ``xchacha.py``), re-versioned."""
        d, marker = self._new_dir("demo")
        shutil.copytree(DEMO_SOURCE, d, dirs_exist_ok=True)
        mod = d / "xchacha.py"
        text = mod.read_text()
        future = "from __future__ import annotations\n"
        assert future in text
        mod.write_text(text.replace(future, future + marker_code(marker), 1))
        toml = (d / SOURCE_FILE).read_text()
        toml = toml.replace('version = "1.0.0"', f"version = {json.dumps(version)}", 1)
        if name is not None:
            toml = toml.replace('name = "xchacha20-openssl"', f"name = {json.dumps(name)}", 1)
        (d / SOURCE_FILE).write_text(toml)
        return Source(d, marker)

    # -- honest building --------------------------------------------------------------------

    def build(self, source: Source, signers: Iterable[Signer] | None = None, *,
              now: datetime | None = None) -> Capsule:
        """:func:`build_capsule` signed by ``signers`` (default: alice)."""
        signers = list(signers) if signers is not None else [self.signer()]
        return Capsule(build_capsule(source.path, [s.pair for s in signers], now=now), source.marker)

    # -- low level: crafting containers -----------------------------------------------------

    def manifest_for(self, source: Source, signers: Iterable[Signer] | None = None, *,
                     now: datetime | None = None, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """The manifest document ``build_capsule`` would sign for ``source`` (a fresh dict to mutate)."""
        signers = list(signers) if signers is not None else [self.signer()]
        when = (now or datetime.now(UTC)).replace(microsecond=0)
        return manifest_document(source.toml, source.files if files is None else files,
                                 [s.public for s in signers], when)

    def assemble(self, manifest: Mapping[str, Any] | bytes, files: Mapping[str, bytes],
                 signers: Iterable[Signer] | None = None, *,
                 signatures: Mapping[str, bytes] | None = None) -> bytes:
        """``write_container`` over ``manifest`` (canonical JSON unless bytes), correctly signed by
        ``signers`` (default alice); ``signatures`` adds or overrides raw entries."""
        mbytes = manifest if isinstance(manifest, bytes) else canonical_json(manifest)
        sigs = {s.keyid: sign(s.seed, mbytes) for s in (signers if signers is not None else [self.signer()])}
        sigs.update(signatures or {})
        return write_container(mbytes, sigs, files)

    @staticmethod
    def members(raw: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
        """Every member of a zip, in order (to re-zip with modifications)."""
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return [(info, zf.read(info)) for info in zf.infolist()]

    @staticmethod
    def zip(entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
            compression: int = zipfile.ZIP_DEFLATED) -> bytes:
        """A raw zip with exactly ``entries`` — duplicates, symlinks and hostile names included."""
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns on duplicate names; that is the point
            with zipfile.ZipFile(buf, "w", compression=compression) as zf:
                for entry, blob in entries:
                    zf.writestr(regular(entry) if isinstance(entry, str) else entry, blob)
        return buf.getvalue()


def regular(name: str, mode: int = stat.S_IFREG | 0o644,
            compression: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    """A ZipInfo for ``name`` with the given Unix mode (symlink: ``stat.S_IFLNK | 0o777``)."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = compression
    info.create_system = 3  # Unix, so external_attr carries the mode
    info.external_attr = mode << 16
    return info


@pytest.fixture
def factory(tmp_path: Path) -> CapsuleFactory:
    """A capsule publisher (and attacker) working under this test's tmp dir."""
    return CapsuleFactory(tmp_path / "factory")


def aead_alias(op: str) -> str:
    """The public API name of an AEAD operation (``"AES-256-GCM"``)."""
    return OPERATIONS[op].aliases[0]


def round_trip(engine: Engine, op: str) -> None:
    """The engine serves ``op`` correctly through its public API."""
    key, msg, aad = os.urandom(32), os.urandom(100), b"still serving"
    sealed = engine.aead.encrypt(aead_alias(op), key, msg, aad)
    assert engine.aead.open(aead_alias(op), key, sealed, aad) == msg


def rejections(updater: Updater) -> list[dict[str, Any]]:
    """PATCH_REJECT events in the updater's audit journal."""
    return [e for e in updater.audit.tail(200) if e["event"] == "PATCH_REJECT"]


#: Updaters made during the running test (each owns threads): closed when it ends, pass or fail.
_UPDATERS: list[Updater] = []


def closed_at_teardown(up: Updater) -> Updater:
    """``up``, closed at the end of the running test (its fault watcher, drain and rollback threads)."""
    _UPDATERS.append(up)
    return up


def close_updaters() -> None:
    """Close every updater made so far in this test (the fixture ``publisher`` does it before its stores)."""
    while _UPDATERS:
        _UPDATERS.pop().close()


@pytest.fixture(autouse=True)
def _updaters_closed() -> Iterator[None]:
    yield
    close_updaters()


def restored(up: Updater) -> Updater:
    """``up.restore()`` (as a service does at start); an updater whose restore raised is closed."""
    try:
        up.restore()
    except BaseException:
        up.close()
        raise
    return up


@dataclass
class UpdaterMaker:
    """Builds ``Updater`` objects over fresh engines and a home under the test's tmp dir."""

    tmp_path: Path

    def __call__(self, home: Path | None = None, *, gates: Gates = GATES, limits: Limits = Limits(),
                 policy: Policy | None = None, clock: Callable[[], datetime] | None = None,
                 engine: Engine | None = None, restore: bool = True, plan: StagePlan = PLAN) -> Updater:
        engine = engine or Engine(EngineConfig(policy=policy) if policy is not None else None)
        kwargs: dict[str, Any] = {"gates": gates, "plan": plan, "limits": limits}
        if clock is not None:
            kwargs["clock"] = clock
        up = closed_at_teardown(Updater(engine, home=home or self.tmp_path / "home", **kwargs))
        # tests of the un-restored path pass restore=False
        return restored(up) if restore else up


def wait_until(done: Callable[[], Any], seconds: float = 20.0) -> Any:
    """Poll ``done()`` (a background rollback, a journal record) until it is truthy or time is up;
    returns its last value, so the caller asserts on what it found."""
    deadline = time.monotonic() + seconds
    while not (found := done()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.fixture
def make_updater(tmp_path: Path) -> UpdaterMaker:
    """``make_updater(home=None, gates=GATES, limits=..., policy=..., clock=..., engine=..., restore=True, plan=PLAN)``
    -> a restored Updater over a fresh ``Engine()`` and ``tmp_path / "home"``, closed after the test."""
    return UpdaterMaker(tmp_path)


@pytest.fixture
def no_core_dumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Children that crash dump no core, and any that would lands in tmp, not the repo."""
    import resource

    monkeypatch.chdir(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
