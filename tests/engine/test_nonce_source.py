"""Auto nonces come from batches of os.urandom output: never the same nonce twice, across
threads, refills and every kind of fork (Python's, C's, one in the middle of a refill), and a
failing CSPRNG is a typed error that loses nothing."""

from __future__ import annotations

import enum
import multiprocessing
import os
import threading
from typing import Any

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto import _nonce_source as ns
from xpscerpto.errors import InternalError, XpsError

from tests.forked import c_fork, in_forked_child


def fresh_batch(size: int) -> None:
    """Leave a whole batch (less one nonce) buffered in this process."""
    ns.NONCES[size] = iter(())
    draw(size)


def draw(size: int) -> bytes:
    # The hot path's own expression (engine.py, keyring.py).
    return (ns.GUARD[0] and next(ns.NONCES[size], None)) or ns.refill(size)


def test_this_machine_has_the_fork_guard_page() -> None:
    # Linux >= 4.14: without the page nothing is batched (correct, but not what we measure).
    assert not isinstance(ns.GUARD, bytes)
    draw(12)
    assert ns.GUARD[0] == 1


@pytest.mark.parametrize("size", [12, 24, 32])
def test_draws_are_fresh_nonces_of_the_size_across_refills(size: int) -> None:
    per_batch = ns.BATCH_BYTES // size
    got = [draw(size) for _ in range(per_batch * 5 + 3)]
    assert {type(n) for n in got} == {bytes}
    assert {len(n) for n in got} == {size}
    assert len(set(got)) == len(got)


def test_an_odd_or_oversized_size_is_served_without_a_batch() -> None:
    assert len(draw(7)) == 7
    big = ns.BATCH_BYTES + 1
    assert len(draw(big)) == big
    assert big not in ns.NONCES  # never batched: each draw is one os.urandom call
    assert draw(big) != draw(big)


def test_threads_racing_draws_and_refills_never_share_a_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small batches: refills race all the time.
    monkeypatch.setattr(ns, "BATCH_BYTES", 12 * 3)
    monkeypatch.setattr(ns, "_SPLITTERS", {})
    per_thread, threads = 5000, 8
    out: list[list[bytes]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        mine = out[i]
        for _ in range(per_thread):
            mine.append(draw(12))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [n for part in out for n in part]
    assert len(flat) == per_thread * threads
    assert len(set(flat)) == len(flat)


def _child_draws(conn: Any, n: int) -> None:
    conn.send([draw(12) for _ in range(n)])
    conn.close()


def test_a_forked_child_never_hands_out_the_parents_buffered_nonces() -> None:
    fresh_batch(12)
    n = ns.BATCH_BYTES // 12
    child = in_forked_child(lambda: b"".join(draw(12) for _ in range(n)))
    theirs = {child[i:i + 12] for i in range(0, len(child), 12)}
    ours = {draw(12) for _ in range(n)}
    assert len(theirs) == n
    assert not theirs & ours


def test_multiprocessing_fork_children_draw_apart_from_the_parent_and_each_other() -> None:
    fresh_batch(12)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for _ in range(3):
        a, b = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child_draws, args=(b, 200))
        p.start()
        pipes.append(a)
        procs.append(p)
    seen = [set(a.recv()) for a in pipes]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    seen.append({draw(12) for _ in range(200)})
    union = set().union(*seen)
    assert len(union) == sum(len(s) for s in seen) == 800


def test_sealed_nonces_from_the_api_are_distinct_after_fork() -> None:
    eng = xps.default_engine()
    key = os.urandom(32)
    keyed = eng.aead.keyed("AES-256-GCM", key)
    fresh_batch(12)
    child = in_forked_child(lambda: b"".join(keyed.encrypt(b"x").nonce for _ in range(100)))
    ours = {keyed.encrypt(b"x").nonce for _ in range(100)}
    theirs = {child[i:i + 12] for i in range(0, len(child), 12)}
    assert len(theirs) == 100 and not ours & theirs
    for nonce in ours:  # and each still opens
        assert len(nonce) == 12


def test_a_failing_csprng_is_a_typed_error_and_the_next_call_works(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault we cannot cause for real: getrandom failing.
    eng = xps.default_engine()
    key = os.urandom(32)
    keyed = eng.aead.keyed("CHACHA20-POLY1305", key)
    ns.NONCES[12] = iter(())  # used up: the next draw refills
    real = ns._urandom
    calls = []

    def failing(n: int) -> bytes:
        calls.append(n)
        raise OSError("getrandom failed")

    monkeypatch.setattr(ns, "_urandom", failing)
    with pytest.raises(XpsError) as info:
        eng.aead.encrypt("CHACHA20-POLY1305", key, b"secret plaintext")
    assert "secret plaintext" not in str(info.value)
    with pytest.raises(XpsError):
        keyed.encrypt(b"more")
    assert calls
    monkeypatch.setattr(ns, "_urandom", real)
    sealed = keyed.encrypt(b"more")
    assert keyed.decrypt(sealed.nonce, sealed.ciphertext_and_tag) == b"more"
    sealed = eng.aead.encrypt("CHACHA20-POLY1305", key, b"again")
    assert eng.aead.open("CHACHA20-POLY1305", key, sealed) == b"again"


@pytest.mark.parametrize("switch", ["_gil_enabled", "_FREE_THREADED_BUILD"])
def test_without_a_gil_every_draw_is_its_own_urandom_call(monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    monkeypatch.setattr(ns, switch, (lambda: False) if switch == "_gil_enabled" else True)
    monkeypatch.setitem(ns.NONCES, 12, iter(()))
    got = {draw(12) for _ in range(100)}
    assert len(got) == 100
    assert next(ns.NONCES[12], None) is None  # nothing was buffered


def test_without_a_guard_page_every_draw_is_its_own_urandom_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ns, "GUARD", bytes(1))  # what _fork_guard() leaves where madvise fails
    monkeypatch.setitem(ns.NONCES, 12, iter(()))
    calls: list[int] = []
    real = ns._urandom
    monkeypatch.setattr(ns, "_urandom", lambda n: calls.append(n) or real(n))
    got = {draw(12) for _ in range(50)}
    assert len(got) == 50 and calls == [12] * 50
    assert next(ns.NONCES[12], None) is None


def test_a_c_level_fork_child_never_hands_out_the_parents_buffered_nonces() -> None:
    # uWSGI's prefork: fork() from C, no Python at-fork hook runs in the child.
    fresh_batch(12)
    n = ns.BATCH_BYTES // 12
    child = in_forked_child(lambda: b"".join(draw(12) for _ in range(n)), fork=c_fork)
    theirs = {child[i:i + 12] for i in range(0, len(child), 12)}
    ours = {draw(12) for _ in range(n)}
    assert len(theirs) == n
    assert not theirs & ours


def test_a_fork_in_the_middle_of_a_refill_is_caught_before_the_batch_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A signal handler or GC callback that forks after getrandom returned and before the batch
    # is stored: the child must not keep (and hand out) the bytes the parent keeps.
    real = ns._urandom
    parent = os.getpid()
    r, w = os.pipe()
    forked: list[int] = []

    def urandom_then_fork(n: int) -> bytes:
        data = real(n)
        if not forked:
            forked.append(os.fork())
        return data

    ns.NONCES[12] = iter(())
    monkeypatch.setattr(ns, "_urandom", urandom_then_fork)
    first = draw(12)  # the refill forks inside; both processes return from it
    monkeypatch.setattr(ns, "_urandom", real)
    n = ns.BATCH_BYTES // 12
    if os.getpid() != parent:  # pragma: no cover - the child
        status = 1
        try:
            os.close(r)
            os.write(w, first + b"".join(draw(12) for _ in range(n - 1)))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    ours = {first} | {draw(12) for _ in range(n - 1)}
    child = b""
    while chunk := os.read(r, 1 << 16):
        child += chunk
    os.close(r)
    assert os.waitpid(forked[0], 0)[1] == 0
    theirs = {child[i:i + 12] for i in range(0, len(child), 12)}
    assert len(theirs) == n
    assert not theirs & ours


@pytest.mark.parametrize("size", [True, enum.IntEnum("NonceSize", {"GCM": 12}).GCM])
def test_a_size_that_is_not_a_plain_int_is_served_as_os_urandom_would(size: int) -> None:
    assert len(draw(size)) == int(size)


def test_a_failing_csprng_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ns.NONCES[12] = iter(())

    def failing(n: int) -> bytes:
        raise OSError(5, "getrandom failed")

    monkeypatch.setattr(ns, "_urandom", failing)
    with pytest.raises(InternalError) as info:
        draw(12)
    assert info.value.code == "XPS_ERR_INTERNAL"


@given(size=st.integers(min_value=0, max_value=3 * ns.BATCH_BYTES))
@settings(max_examples=200, deadline=None)
def test_any_size_a_provider_may_declare_gets_that_many_fresh_bytes(size: int) -> None:
    first, second = draw(size), draw(size)
    assert type(first) is bytes and len(first) == len(second) == size
    if size >= 8:
        assert first != second
    assert all(0 < k <= ns.BATCH_BYTES for k in ns.NONCES)
