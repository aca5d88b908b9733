"""Auto nonces come from batches of os.urandom output: never the same nonce twice, across
threads, refills and fork, and a failing CSPRNG is an error that loses nothing."""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any

import pytest
import xpscerpto as xps
from hypothesis import given, settings
from hypothesis import strategies as st
from xpscerpto import _nonce_source as ns
from xpscerpto.errors import XpsError

from tests.forked import in_forked_child


def fresh_batch(size: int) -> None:
    """Leave a whole batch (less one nonce) buffered in this process."""
    ns.NONCES[size] = iter(())
    draw(size)


def draw(size: int) -> bytes:
    # The hot path's own expression (engine.py, keyring.py).
    return next(ns.NONCES[size], None) or ns.refill(size)


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


def test_without_a_gil_every_draw_is_its_own_urandom_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ns, "_BATCHING", False)
    monkeypatch.setitem(ns.NONCES, 12, iter(()))
    got = {draw(12) for _ in range(100)}
    assert len(got) == 100
    assert next(ns.NONCES[12], None) is None  # nothing was buffered


@given(size=st.integers(min_value=0, max_value=3 * ns.BATCH_BYTES))
@settings(max_examples=200, deadline=None)
def test_any_size_a_provider_may_declare_gets_that_many_fresh_bytes(size: int) -> None:
    first, second = draw(size), draw(size)
    assert type(first) is bytes and len(first) == len(second) == size
    if size >= 8:
        assert first != second
    assert all(0 < k <= ns.BATCH_BYTES for k in ns.NONCES)
