#!/usr/bin/env python3
"""What metrics cost on the call path: ``Engine(count=Metrics().operation_counter)`` vs ``Engine()``.

Both engines in one process, interleaved rounds (order alternating), AES-256-GCM stateless
``encrypt`` and ``decrypt(nonce, ct, tag)`` at 64 B and 1 MiB. Baselines: ``cryptography``'s
``AESGCM(key).encrypt(...)`` per call (``raw``: the same shape, a key per call) and with a
prebuilt object (``prebuilt``: what the keyed API competes with). Prints per-call medians and
the ratios counted/plain and plain/raw. A report, not a test: exits 0.

Usage: ``python tools/bench_metrics.py [--rounds 9] [--budget 0.05]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("XPS_AUTOTUNE", "0")  # both engines route statically: only the wrapper differs

import xpscerpto as xps
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto.metrics import Metrics


def _time(fn: Callable[[], object], budget: float) -> float:
    n = 1
    while True:
        gc.disable()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        gc.enable()
        if took >= budget:
            return took / n
        n *= 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--budget", type=float, default=0.05)
    args = p.parse_args()
    plain, counted = xps.Engine(), xps.Engine(count=Metrics().operation_counter)
    key = os.urandom(32)
    raw = AESGCM(key)
    for size in (64, 1 << 20):
        pt = os.urandom(size)
        sealed = plain.aead.encrypt("AES-256-GCM", key, pt)
        nonce, ct, tag = bytes(sealed.nonce), bytes(sealed.ciphertext), bytes(sealed.tag)
        joined = ct + tag
        cells: dict[str, dict[str, Callable[[], object]]] = {
            "encrypt": {"plain": lambda pt=pt: plain.aead.encrypt("AES-256-GCM", key, pt),
                        "counted": lambda pt=pt: counted.aead.encrypt("AES-256-GCM", key, pt),
                        "raw": lambda pt=pt: AESGCM(key).encrypt(os.urandom(12), pt, b""),
                        "prebuilt": lambda pt=pt: raw.encrypt(os.urandom(12), pt, b"")},
            "decrypt(nonce, ct, tag)": {
                "plain": lambda n=nonce, c=ct, t=tag: plain.aead.decrypt("AES-256-GCM", key, n, c, t),
                "counted": lambda n=nonce, c=ct, t=tag: counted.aead.decrypt("AES-256-GCM", key, n, c, t),
                "raw": lambda n=nonce, j=joined: AESGCM(key).decrypt(n, j, b""),
                "prebuilt": lambda n=nonce, j=joined: raw.decrypt(n, j, b"")},
        }
        for op, peers in cells.items():
            times: dict[str, list[float]] = {k: [] for k in peers}
            for i in range(args.rounds):
                order = list(peers) if i % 2 == 0 else list(reversed(peers))
                for name in order:
                    times[name].append(_time(peers[name], args.budget))
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = statistics.median(c / q for c, q in zip(times["counted"], times["plain"], strict=True))
            print(f"{op:24s} {size:>8d} B: counted/plain {ratio:.3f}x, plain/raw {med['plain'] / med['raw']:.2f}x "
                  f"(plain {med['plain'] * 1e6:.2f} us, counted {med['counted'] * 1e6:.2f} us, "
                  f"raw {med['raw'] * 1e6:.2f} us, prebuilt {med['prebuilt'] * 1e6:.2f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
