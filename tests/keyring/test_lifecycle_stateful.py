"""A hypothesis state machine drives the keyring against a model of Appendix A.

Hundreds of random steps (create, rotate, revoke, destroy a key or a version, encrypt,
decrypt, let time pass) per run; after every step the store must agree with the model and
every stored ciphertext must decrypt exactly when Appendix A says it may.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from xpscerpto.config import XpsConfig
from xpscerpto.errors import AuthError, KeyError_, PolicyError
from xpscerpto.keyring import Keyring, KeyState, VersionState

WINDOW = 10 * 86400.0
DESTROY_AFTER = 20 * 86400.0  # retention after the window; then the keyring destroys the version itself
NAMES = st.sampled_from(["alpha", "beta", "gamma"])


@dataclass
class ModelKey:
    state: KeyState = KeyState.ACTIVE
    versions: dict[int, VersionState] = field(default_factory=lambda: {1: VersionState.ACTIVE})
    retired_at: dict[int, float] = field(default_factory=dict)

    @property
    def active(self) -> int | None:
        return next((v for v, s in self.versions.items() if s is VersionState.ACTIVE), None)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class KeyringLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="xps-lifecycle-"))
        self.clock = Clock()
        config = XpsConfig.from_mapping({"keyring": {"dual_window": int(WINDOW), "usage_block": 3,
                                                     "destroy_after": int(DESTROY_AFTER)}}).keyring
        self.ring = Keyring(self.tmp / "home", clock=self.clock, config=config)
        self.model: dict[str, ModelKey] = {}
        self.blobs: list[tuple[str, int, bytes, bytes]] = []

    def teardown(self) -> None:
        self.ring.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _may_decrypt(self, name: str, version: int) -> bool:
        key = self.model[name]
        state = key.versions.get(version)
        if key.state is not KeyState.ACTIVE:
            return False
        if state is VersionState.ACTIVE:
            return True
        return state is VersionState.RETIRED and self.clock.now < key.retired_at[version] + WINDOW

    def _retention_over(self, key: ModelKey, version: int) -> bool:
        return (key.versions[version] is VersionState.RETIRED
                and self.clock.now >= key.retired_at[version] + WINDOW + DESTROY_AFTER)

    def _sync_retention(self) -> None:
        """Follow the keyring's own retention sweeps: it destroys retired versions once their
        retention is over (when it opens, after a rotation, at most once a minute on a call)."""
        for name, key in self.model.items():
            states = {v.version: v.state for v in self.ring.describe(name).versions}
            for v in key.versions:
                if self._retention_over(key, v) and states[v] is VersionState.DESTROYED:
                    key.versions[v] = VersionState.DESTROYED

    @rule(name=NAMES)
    def create(self, name: str) -> None:
        self._sync_retention()
        key = self.model.get(name)
        if key is not None and key.state is not KeyState.ACTIVE:
            # A revoked or destroyed key's name is not handed out again (nor its dead id).
            with pytest.raises(PolicyError, match="names are not reused"):
                self.ring.create(name, "AES-256-GCM", "rotate=never")
            return
        self.ring.create(name, "AES-256-GCM", "rotate=never")
        self.model.setdefault(name, ModelKey())

    @rule(name=NAMES)
    def rotate(self, name: str) -> None:
        self._sync_retention()
        key = self.model.get(name)
        if key is None:
            try:
                self.ring.rotate(name)
            except KeyError_:
                return
            raise AssertionError("rotated an unknown key")
        if key.state is not KeyState.ACTIVE:
            try:
                self.ring.rotate(name)
            except PolicyError:
                return
            raise AssertionError(f"rotated a {key.state} key")
        old = key.active
        assert old is not None
        assert self.ring.rotate(name) == old + 1
        key.versions[old] = VersionState.RETIRED
        key.retired_at[old] = self.clock.now
        key.versions[old + 1] = VersionState.ACTIVE

    @rule(name=NAMES)
    def revoke(self, name: str) -> None:
        self._sync_retention()
        key = self.model.get(name)
        if key is None or key.state is KeyState.DESTROYED:
            try:
                self.ring.revoke(name, "test")
            except (KeyError_, PolicyError):
                return
            raise AssertionError("revoked an unknown or destroyed key")
        self.ring.revoke(name, "test")
        if key.state is KeyState.ACTIVE:
            key.state = KeyState.REVOKED
            for v, s in key.versions.items():
                if s in (VersionState.ACTIVE, VersionState.RETIRED):
                    key.versions[v] = VersionState.REVOKED

    @rule(name=NAMES)
    def destroy_key(self, name: str) -> None:
        key = self.model.get(name)
        if key is None or key.state is KeyState.ACTIVE:
            try:
                self.ring.destroy(name)
            except (KeyError_, PolicyError):
                return
            raise AssertionError("destroyed an unknown or active key")
        self.ring.destroy(name)
        key.state = KeyState.DESTROYED
        key.versions = {v: VersionState.DESTROYED for v in key.versions}

    @rule(name=NAMES, pick=st.integers(1, 6))
    def destroy_version(self, name: str, pick: int) -> None:
        key = self.model.get(name)
        if key is None or pick not in key.versions:
            try:
                self.ring.destroy(name, version=pick)
            except KeyError_:
                return
            raise AssertionError("destroyed a version that does not exist")
        self._sync_retention()
        state = key.versions[pick]
        if state is VersionState.ACTIVE:
            try:
                self.ring.destroy(name, version=pick)
            except PolicyError:
                return
            raise AssertionError("destroyed the active version")
        if state is VersionState.RETIRED and not self._retention_over(key, pick):
            with pytest.raises(PolicyError, match="retention"):
                self.ring.destroy(name, version=pick)
            self.ring.destroy(name, version=pick, emergency=True)  # approvals.destroy is 0 here
        else:
            self.ring.destroy(name, version=pick)
        key.versions[pick] = VersionState.DESTROYED

    @rule(name=NAMES, data=st.binary(max_size=64))
    def encrypt(self, name: str, data: bytes) -> None:
        key = self.model.get(name)
        if key is None or key.state is not KeyState.ACTIVE:
            try:
                self.ring.encrypt(name, data)
            except KeyError_:
                return
            raise AssertionError("encrypted with an unknown or unusable key")
        blob = self.ring.encrypt(name, data, b"aad")
        assert key.active is not None
        self.blobs.append((name, key.active, blob, data))

    @rule(days=st.integers(0, 15))
    def time_passes(self, days: int) -> None:
        self.clock.now += days * 86400.0

    @invariant()
    def store_matches_model(self) -> None:
        self._sync_retention()
        for name, key in self.model.items():
            info = self.ring.describe(name)
            assert info.state is key.state
            states = {v.version: v.state for v in info.versions}
            for v, s in key.versions.items():  # a version past retention may still wait for the sweep
                assert states[v] is s or (self._retention_over(key, v) and states[v] is VersionState.DESTROYED)
            rows = self.ring.store.versions(info.key_id)
            assert all((r.wrapped is None) == (r.state is VersionState.DESTROYED) for r in rows)
            assert sum(s is VersionState.ACTIVE for s in key.versions.values()) == (key.state is KeyState.ACTIVE)

    @invariant()
    def ciphertexts_open_exactly_when_allowed(self) -> None:
        for name, version, blob, data in self.blobs[-12:]:
            if self._may_decrypt(name, version):
                assert self.ring.decrypt(blob, b"aad") == data
            else:
                try:
                    self.ring.decrypt(blob, b"aad")
                except AuthError:
                    continue
                raise AssertionError(f"{name} v{version} decrypted against Appendix A")


KeyringLifecycle.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestKeyringLifecycle = KeyringLifecycle.TestCase
