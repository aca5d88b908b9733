"""Autotune: buckets, measurement, the two-way split and the on-disk cache."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from xpscerpto import _autotune as at
from xpscerpto.interfaces import Aead, Buffer, Provider
from xpscerpto.plugins.openssl import ChaCha20Poly1305Impl

# -- buckets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "bucket"), [
    (0, 0), (1, 0), (255, 0), (256, 0), (257, 1), (4096, 1), (4097, 2), (65536, 2), (65537, 3),
    (1 << 20, 3), ((1 << 38) * 64, 3),
])
def test_bucket_of_matches_the_inclusive_bounds(size: int, bucket: int) -> None:
    assert at.BUCKET_OF[(size - 1).bit_length()] == bucket


def test_bucket_table_agrees_with_bounds_everywhere() -> None:
    for size in range(0, 70000, 7):
        expected = next((i for i, bound in enumerate(at.BUCKET_BOUNDS) if size <= bound), len(at.BUCKET_BOUNDS))
        assert at.BUCKET_OF[(size - 1).bit_length()] == expected, size
    assert len(at.SAMPLE_SIZES) == len(at.BUCKET_NAMES) == len(at.BUCKET_BOUNDS) + 1
    for i, size in enumerate(at.SAMPLE_SIZES):
        assert at.BUCKET_OF[(size - 1).bit_length()] == i


# -- measurement ------------------------------------------------------------------------------------


class _Slowed(Aead):
    """The real OpenSSL ChaCha20-Poly1305, made slower by repeating each call: an honest loser."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16

    def __init__(self, repeat: int) -> None:
        self._repeat = repeat

    def cipher(self, key: Buffer) -> _SlowCipher:
        return _SlowCipher(ChaCha20Poly1305Impl.cipher(key), self._repeat)


class _SlowCipher:
    def __init__(self, inner: object, repeat: int) -> None:
        self._inner, self._repeat = inner, repeat

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        for _ in range(self._repeat - 1):
            self._inner.encrypt(nonce, data, aad)  # type: ignore[attr-defined]
        return self._inner.encrypt(nonce, data, aad)  # type: ignore[attr-defined,no-any-return]

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        for _ in range(self._repeat - 1):
            self._inner.decrypt(nonce, data, aad)  # type: ignore[attr-defined]
        return self._inner.decrypt(nonce, data, aad)  # type: ignore[attr-defined,no-any-return]


def test_tune_picks_the_clearly_faster_implementation_in_every_bucket_and_shape() -> None:
    seen: list[tuple[int, int]] = []
    result = at.tune({"aead.chacha20poly1305": {"fast": ChaCha20Poly1305Impl(), "slow": _Slowed(40)}},
                     fp="fp", budget=0.002, rounds=3, progress=lambda done, total: seen.append((done, total)))
    for shape in at.SHAPES:
        assert result.winners["aead.chacha20poly1305"][shape] == ("fast",) * 4
        for bucket in range(4):
            assert result.winner("aead.chacha20poly1305", shape, bucket) == "fast"
            runner = result.runner_up("aead.chacha20poly1305", shape, bucket)
            assert runner is not None and runner.provider == "slow"
    assert seen == [(i, 8) for i in range(1, 9)]
    assert len(result.measurements) == 2 * 2 * 4
    assert all(m.seconds > 0 for m in result.measurements)


def test_an_operation_with_one_candidate_is_not_measured() -> None:
    result = at.tune({"aead.chacha20poly1305": {"only": ChaCha20Poly1305Impl()}}, fp="fp", budget=0.001)
    assert result.measurements == ()
    assert result.winners["aead.chacha20poly1305"] == {"stateless": ("only",) * 4, "keyed": ("only",) * 4}
    assert result.winner("aead.aes256gcm", "keyed", 0) is None


# -- the split ---------------------------------------------------------------------------------------


def _result(winners: tuple[str, ...], seconds: dict[str, tuple[float, ...]] | None = None) -> at.TuneResult:
    ms = tuple(at.Measurement("aead.x", p, "stateless", b, s)
               for p, per in (seconds or {}).items() for b, s in enumerate(per))
    return at.TuneResult("fp", {"aead.x": {"stateless": winners, "keyed": winners}}, ms)


def test_split_small_then_large() -> None:
    r = _result(("a", "a", "b", "b"), {"a": (1, 2, 9, 90), "b": (2, 3, 5, 50)})
    assert at.split(r, "aead.x", "stateless") == at.Split("a", 4096, "b")


def test_split_one_provider_everywhere_has_no_limit() -> None:
    r = _result(("a",) * 4, {"a": (1, 1, 1, 1), "b": (2, 2, 2, 2)})
    assert at.split(r, "aead.x", "stateless") == at.Split("a", at.NO_LIMIT, "a")


def test_split_ignores_a_noisy_middle_winner_when_it_gains_little() -> None:
    # "b" wins bucket 1 by a hair; two switches are impossible, so "a" everywhere loses least.
    r = _result(("a", "b", "a", "a"), {"a": (1, 1.01, 1, 1), "b": (3, 1.0, 3, 3)})
    assert at.split(r, "aead.x", "stateless") == at.Split("a", at.NO_LIMIT, "a")


def test_split_with_three_winners_keeps_the_two_that_matter() -> None:
    r = _result(("a", "c", "b", "b"), {"a": (1, 5, 9, 9), "b": (4, 4.2, 1, 1), "c": (9, 4, 9, 9)})
    assert at.split(r, "aead.x", "stateless") == at.Split("a", 256, "b")


def test_split_without_figures_uses_the_winners() -> None:
    assert at.split(_result(("a", "b", "b", "b")), "aead.x", "keyed") == at.Split("a", 256, "b")
    assert at.split(_result(("a", "b", "a", "b")), "aead.x", "keyed") == at.Split("b", at.NO_LIMIT, "b")
    assert at.split(_result(("a",) * 4), "aead.y", "keyed") is None


# -- fingerprint and cache --------------------------------------------------------------------------


def _provider(version: str = "1.0") -> Provider:
    return Provider("p", "lib 1", version, {"aead.chacha20poly1305": ChaCha20Poly1305Impl()})


def test_fingerprint_changes_with_provider_version_and_mask() -> None:
    base = at.fingerprint([_provider()], "")
    assert base == at.fingerprint([_provider()], "")
    assert base != at.fingerprint([_provider("1.1")], "")
    assert base != at.fingerprint([_provider()], "-jit")
    assert base != at.fingerprint([], "")


def _tuned() -> at.TuneResult:
    return at.tune({"aead.chacha20poly1305": {"fast": ChaCha20Poly1305Impl(), "slow": _Slowed(8)}},
                   fp="fp1", budget=0.001, rounds=1)


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "autotune.json"
    result = _tuned()
    at.save_cache(path, result)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = at.load_cache(path, "fp1")
    assert loaded is not None
    assert loaded.winners == result.winners
    assert loaded.measurements == result.measurements
    assert loaded.created == result.created


def test_cache_of_another_fingerprint_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "autotune.json"
    at.save_cache(path, _tuned())
    assert at.load_cache(path, "fp2") is None


def _damages(doc: bytes) -> list[tuple[str, bytes | None]]:
    parsed = json.loads(doc)
    wrong_shape = dict(parsed, winners={"aead.chacha20poly1305": {"stateless": ["fast"]}})
    bad_bucket = dict(parsed, measurements=[dict(parsed["measurements"][0], bucket="x")])
    return [("deleted", None), ("emptied", b""), ("truncated", doc[: len(doc) // 2]),
            ("corrupted", doc.replace(b"{", b"[", 1)), ("not an object", b"[1, 2]"),
            ("wrong format", json.dumps(dict(parsed, format=99)).encode()),
            ("wrong shape", json.dumps(wrong_shape).encode()),
            ("bad bucket", json.dumps(bad_bucket).encode()),
            ("binary", os.urandom(64))]


@pytest.mark.parametrize("case", range(9))
def test_damaged_cache_is_measured_again_never_trusted(tmp_path: Path, case: int) -> None:
    path = tmp_path / "autotune.json"
    at.save_cache(path, _tuned())
    name, content = _damages(path.read_bytes())[case]
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    assert at.load_cache(path, "fp1") is None, name


def test_unwritable_cache_location_costs_only_a_re_measure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a file where the cache directory should be: mkdir fails, even as root
    at.save_cache(blocker / "autotune.json", _tuned())
    assert blocker.read_bytes() == b"x"


def test_cache_path_that_is_a_directory_is_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "autotune.json"
    path.mkdir()
    at.save_cache(path, _tuned())
    assert at.load_cache(path, "fp1") is None


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo", "nested json", "oversized"])
def test_a_hostile_cache_file_costs_only_a_re_measure(tmp_path: Path, kind: str) -> None:
    # The cache is shared by every install on the machine: none of these may hang, exhaust
    # memory or raise (found by a review: /dev/zero read until MemoryError, a FIFO blocked).
    path = tmp_path / "autotune.json"
    if kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "nested json":
        path.write_bytes(b"[" * 100_000)
    else:
        good = tmp_path / "good.json"
        at.save_cache(good, _tuned())
        path.write_bytes(good.read_bytes().rstrip() + b" " * at.MAX_CACHE_BYTES)
    assert at.load_cache(path, "fp1") is None
    at.save_cache(path, _tuned())  # replaced by a regular file: usable again
    assert stat.S_ISREG(os.lstat(path).st_mode) and at.load_cache(path, "fp1") is not None


def _edited(doc: bytes, **measurement: object) -> bytes:
    parsed = json.loads(doc)
    parsed["measurements"][0].update(measurement)
    return json.dumps(parsed).replace('"__inf__"', "1e400").encode()


@pytest.mark.parametrize("edit", [
    {"seconds": 0.0}, {"seconds": -0.0}, {"seconds": -1.0}, {"seconds": "__inf__"}, {"seconds": "1"},
    {"bucket": "__inf__"}, {"bucket": 7}, {"bucket": -1}, {"bucket": True}, {"bucket": 1.0},
    {"shape": "sideways"}, {"provider": 3}, {"operation": None},
])
def test_a_cache_whose_figures_a_build_cannot_use_is_measured_again(tmp_path: Path, edit: dict[str, object]) -> None:
    # Found by a review: one "seconds": 0.0 passed the shape checks and then divided by zero in
    # every table build — the incident mask's included; "bucket": 1e400 raised OverflowError.
    path = tmp_path / "autotune.json"
    at.save_cache(path, _tuned())
    path.write_bytes(_edited(path.read_bytes(), **edit))
    assert at.load_cache(path, "fp1") is None


@pytest.mark.parametrize("winners", [
    {"aead.x": {"stateless": ("a",) * 4}}, {"aead.x": {"stateless": ("a",) * 3, "keyed": ("a",) * 4}},
    {"aead.x": {"stateless": ("a",) * 4, "keyed": (1, 2, 3, 4)}}, {7: {}}, ["aead.x"],
])
def test_a_tune_result_that_routes_cannot_use_is_refused_typed(winners: object) -> None:
    from xpscerpto.errors import PolicyError

    with pytest.raises(PolicyError, match=r"^XPS_ERR_POLICY: winners: "):
        at.TuneResult("fp", winners)  # type: ignore[arg-type]


def test_a_build_that_fails_leaves_the_tuning_in_force_so_a_mask_change_still_applies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from xpscerpto import _routing, engine
    from xpscerpto.settings import EngineConfig

    cfg = replace(EngineConfig(), autotune=False)
    eng = engine.Engine(cfg)
    before = eng.tuned
    real = _routing.build_table
    calls = {"n": 0}

    def failing_once(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError  # a fault in a build we cannot cause any more through a result
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "build_table", failing_once)
    with pytest.raises(ZeroDivisionError):
        eng.use_tuning(_tuned())
    assert eng.tuned is before  # not the result whose build failed
    served = eng.table.routes["sig.ed25519"].provider
    eng.rebuild()  # later builds work: the next table is built without it
    masked = replace(cfg, isa_mask=(served,))
    from xpscerpto.capsules.updater import Updater

    up = Updater(eng, tmp_path / "home")
    try:
        up.reconfigure(masked)  # the incident's mask: applied
    finally:
        up.close()
    assert eng.table.routes["sig.ed25519"].provider != served
