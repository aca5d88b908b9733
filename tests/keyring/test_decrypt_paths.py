"""Keyring.decrypt's two paths: the one-lookup path for loaded versions and the full one.

A ``bytes`` blob whose header prefix names a loaded, current handle opens through a dict lookup
on that prefix; everything else (other buffer types, a handle due for a re-check, an unknown
prefix) takes the path that unpacks and checks each field. Both must give the same answers and
the same opaque error, and the lookup index must never outlive what it indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from xpscerpto.errors import AuthError, KeyError_
from xpscerpto.keyring import Keyring, VersionState
from xpscerpto.keyring.envelope import HEADER
from xpscerpto.keyring.keyring import RECHECK_SECONDS

from .test_keyring import Clock, _keyring_config

BLOB_TYPES: dict[str, Callable[[bytes], object]] = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring(tmp_path: Path, clock: Clock) -> Iterator[Keyring]:
    r = Keyring(tmp_path / "home", clock=clock, config=_keyring_config(dual_window="30d"))
    yield r
    r.close()


@pytest.mark.parametrize("kind", BLOB_TYPES)
@pytest.mark.parametrize("size", [0, 64, 5000])  # 5000: the ciphertext is read in place, not sliced
def test_every_blob_type_opens_hot_and_cold(ring: Keyring, kind: str, size: int) -> None:
    ring.create("k")
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    blob = ring.encrypt("k", message, b"ctx")
    assert ring.decrypt(BLOB_TYPES[kind](blob), b"ctx") == message  # type: ignore[arg-type]
    ring.close()
    reopened = Keyring(ring.home, clock=ring.clock, config=_keyring_config(dual_window="30d"))
    try:  # a fresh keyring has nothing loaded: the first decrypt goes the long way
        assert reopened.decrypt(BLOB_TYPES[kind](blob), b"ctx") == message  # type: ignore[arg-type]
        assert reopened.decrypt(BLOB_TYPES[kind](blob), bytearray(b"ctx")) == message  # type: ignore[arg-type]
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", BLOB_TYPES)
def test_a_change_to_any_byte_is_refused_by_either_path(ring: Keyring, kind: str) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m" * 64, b"ctx")
    assert ring.decrypt(blob, b"ctx") == b"m" * 64  # the version is loaded: the lookup path is live
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(AuthError, match=r"^XPS_ERR_AUTH: keyring: decryption failed$") as ei:
                ring.decrypt(BLOB_TYPES[kind](bytes(bad)), b"ctx")  # type: ignore[arg-type]
            assert ei.value.__context__ is None and ei.value.__cause__ is None
    for cut in (0, 1, HEADER.size - 1, HEADER.size, HEADER.size + 11, len(blob) - 1):
        with pytest.raises(AuthError):
            ring.decrypt(BLOB_TYPES[kind](blob[:cut]), b"ctx")  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        ring.decrypt(BLOB_TYPES[kind](blob), b"other")  # type: ignore[arg-type]
    assert ring.decrypt(blob, b"ctx") == b"m" * 64


def test_failures_on_the_lookup_path_are_counted_and_audited_like_the_others(ring: Keyring) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m", b"ctx")
    assert ring.decrypt(blob, b"ctx") == b"m"
    for aad in (b"x", b"y"):
        with pytest.raises(AuthError):
            ring.decrypt(blob, aad)
    with pytest.raises(AuthError):  # the full path: a bytearray blob
        ring.decrypt(bytearray(blob), b"z")
    assert ring.decrypt_counts("k", 1) == (1, 3)
    events = [e for e in ring.audit.tail(50) if e["event"] == "CRYPTO_FAIL_AUTH"]
    assert events and events[0]["key_id"] == blob[1:9].hex() and events[0]["version"] == 1


def test_a_revoked_key_stops_opening_at_once_even_when_loaded(ring: Keyring) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m")
    assert ring.decrypt(blob) == b"m"
    ring.revoke("k", "compromised")
    with pytest.raises(AuthError):
        ring.decrypt(blob)
    assert not ring._by_prefix  # the index went with the handles


def test_a_retired_version_stops_at_the_end_of_its_window(ring: Keyring, clock: Clock) -> None:
    ring.create("k")
    old = ring.encrypt("k", b"old")
    assert ring.decrypt(old) == b"old"
    ring.rotate("k")
    clock.advance(29 * 86400.0)
    assert ring.decrypt(old) == b"old"
    clock.advance(2 * 86400.0)
    with pytest.raises(AuthError):
        ring.decrypt(old)
    assert ring.decrypt(ring.encrypt("k", b"new")) == b"new"


@pytest.fixture
def other(tmp_path: Path, clock: Clock, ring: Keyring) -> Iterator[Keyring]:
    """A second keyring on ``ring``'s home (another process, as far as the database can tell)."""
    r = Keyring(tmp_path / "home", clock=clock, config=_keyring_config(dual_window="30d"))
    yield r
    r.close()


def test_another_keyring_s_revocation_takes_effect_within_the_recheck_interval(
        ring: Keyring, other: Keyring, clock: Clock) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m")
    assert ring.decrypt(blob) == b"m" and other.decrypt(blob) == b"m"
    ring.revoke("k", "compromised")
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(AuthError):
        other.decrypt(blob)
    assert other.describe("k").versions[0].state is VersionState.REVOKED


@pytest.mark.parametrize("step_back", [0.5, 3600.0, 400 * 86400.0])
def test_another_keyring_s_revocation_takes_effect_when_the_clock_steps_back(
        ring: Keyring, other: Keyring, clock: Clock, step_back: float) -> None:
    # A clock stepped back (NTP, a VM restored) must not stretch the re-check interval by the
    # size of the step: the cached versions are re-read at once.
    ring.create("k")
    blob = ring.encrypt("k", b"m")
    assert other.decrypt(blob) == b"m" and other.decrypt(other.encrypt("k", b"n")) == b"n"  # both paths loaded
    ring.revoke("k", "compromised")
    clock.advance(-step_back)
    with pytest.raises(AuthError):
        other.decrypt(blob)
    with pytest.raises(AuthError):
        other.decrypt(bytearray(blob))
    with pytest.raises(KeyError_):
        other.encrypt("k", b"m")


def test_a_version_rotated_in_elsewhere_is_found_when_the_clock_steps_back(
        ring: Keyring, other: Keyring, clock: Clock) -> None:
    # The one-second memory of an unknown version must not last as long as the step back.
    ring.create("k")
    blob = ring.encrypt("k", b"m")
    ahead = bytearray(blob)
    ahead[9:13] = (2).to_bytes(4, "big")  # names version 2, which does not exist yet
    with pytest.raises(AuthError):
        other.decrypt(bytes(ahead))  # other remembers the miss of (k, 2)
    ring.rotate("k")
    clock.advance(-3600.0)
    assert other.decrypt(ring.encrypt("k", b"v2")) == b"v2"


def test_close_empties_the_lookup_index(ring: Keyring) -> None:
    ring.create("k")
    ring.decrypt(ring.encrypt("k", b"m"))
    assert ring._by_prefix
    ring.close()
    assert not ring._by_prefix and not ring._handles


class _RaddRaises(bytes):
    def __radd__(self, other: object) -> bytes:
        raise RuntimeError("from aad.__radd__")


class _RaddSwaps(bytes):
    def __radd__(self, other: object) -> bytes:
        return bytes(other) + b"ctx"  # type: ignore[call-overload]  # as if the aad were b"ctx"


class _GetitemRaises(bytes):
    def __getitem__(self, key: object) -> bytes:
        raise RuntimeError("from blob.__getitem__")


@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
def test_aad_is_authenticated_as_the_bytes_it_holds_whatever_its_type_says(ring: Keyring, kind: str) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m", b"ctx")
    arg = BLOB_TYPES[kind](blob)
    assert ring.decrypt(arg, _RaddRaises(b"ctx")) == b"m"  # type: ignore[arg-type]
    with pytest.raises(AuthError, match=r"^XPS_ERR_AUTH: keyring: decryption failed$"):
        ring.decrypt(arg, _RaddSwaps(b"other"))  # type: ignore[arg-type]


def test_a_blob_of_a_bytes_subclass_is_read_through_its_buffer(ring: Keyring) -> None:
    ring.create("k")
    blob = ring.encrypt("k", b"m", b"ctx")
    assert ring.decrypt(_GetitemRaises(blob), b"ctx") == b"m"
    with pytest.raises(AuthError, match=r"^XPS_ERR_AUTH: keyring: decryption failed$"):
        ring.decrypt(_GetitemRaises(blob[:-1] + bytes([blob[-1] ^ 1])), b"ctx")


def test_revoke_drops_a_lookup_entry_that_outlived_its_handle(ring: Keyring) -> None:
    # The state a race between two index updates could leave (found by review): an entry in the
    # prefix index whose handle _handles no longer holds. A transition must still clear it.
    ring.create("k")
    blob = ring.encrypt("k", b"m")
    assert ring.decrypt(blob) == b"m"
    (ref, h), = ring._handles.items()
    del ring._handles[ref]
    assert ring._by_prefix[h.prefix] is h
    ring.revoke("k", "compromised")
    assert not ring._by_prefix
    with pytest.raises(AuthError):
        ring.decrypt(blob)


def test_decrypt_counts_survive_a_rotation_that_drops_the_loaded_version(ring: Keyring) -> None:
    # A suite migration's canary reads these counts: a rotation during its watch drops the
    # version's handle, and the counts must not restart (or vanish) with it.
    ring.create("k")
    blob = ring.encrypt("k", b"m", b"ctx")
    for _ in range(5):
        assert ring.decrypt(blob, b"ctx") == b"m"
    for _ in range(3):
        with pytest.raises(AuthError):
            ring.decrypt(blob, b"other")
    ring.rotate("k")
    assert ring.decrypt_counts("k", 1) == (5, 3)
    assert ring.loaded_decrypt_counts()[("k", 1)] == (5, 3)
    assert ring.decrypt(blob, b"ctx") == b"m"  # reloaded within its dual-key window: counted on top
    assert ring.decrypt_counts("k", 1) == (6, 3)
    ring.rotate("k")
    assert ring.loaded_decrypt_counts()[("k", 1)] == (6, 3)
