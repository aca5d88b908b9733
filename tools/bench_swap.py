#!/usr/bin/env python3
"""Hot-patch benchmark: drop-to-serving time, call latency during swaps, drain-tracking cost.

    python tools/bench_swap.py [--quick]

Prints, in one run:
1. capsule drop -> serving: wall time from writing the demo capsule into a watched folder
   until the engine routes it, with the pipeline's own step times from the audit log;
2. call latency (p50/p99) of XChaCha20-Poly1305 64 B encrypt on 2 threads, in steady state
   vs. while the table is swapped back and forth (rollback/re-enable, 50 swaps), and vs. while
   a full capsule pipeline (child-process validation) runs; target p99 ratio <= 2x;
3. hot-path cost of drain tracking: calls hold the table they loaded in a local; compared
   against the same API without that local, and an engine with an updater attached vs one
   without. Ratios, not absolute pass/fail numbers;
4. the sampled differential check after cutover: cost per call while it runs, and the time
   from a provider turning bad to its rollback.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import xpscerpto as xps  # noqa: E402
from xpscerpto.capsules import watch_folder  # noqa: E402
from xpscerpto.capsules.build import build_capsule  # noqa: E402
from xpscerpto.capsules.isolate import Gates  # noqa: E402
from xpscerpto.capsules.updater import StagePlan, Updater  # noqa: E402
from xpscerpto.engine import SignatureAPI  # noqa: E402
from xpscerpto.home import Home  # noqa: E402
from xpscerpto.signing import TrustStore, generate_keypair, load_private_key  # noqa: E402

OP, ALGO = "aead.xchacha20poly1305", "XCHACHA20-POLY1305"


def _capsule(tmp: Path, signer: tuple, version: str, patch: tuple[str, str] | None = None) -> bytes:
    src = tmp / f"src-{version}"
    shutil.copytree(ROOT / "capsules" / "demo-capsule", src, ignore=shutil.ignore_patterns("__pycache__"))
    toml = src / "capsule.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    if patch is not None:
        module = src / "xchacha.py"
        module.write_text(module.read_text().replace(*patch))
    return build_capsule(src, [signer])


def _setup(tmp: Path) -> tuple[Home, tuple]:
    tmp.mkdir(parents=True, exist_ok=True)
    generate_keypair(tmp / "pub")
    signer = load_private_key(tmp / "pub.key")
    home = Home.resolve(tmp / "home")
    TrustStore().add(signer[0], ["aead.*"]).save(home.trust)
    return home, signer


def drop_to_serving(tmp: Path, quick: bool) -> None:
    home, signer = _setup(tmp / "drop")
    eng = xps.Engine()
    inbox = tmp / "drop" / "inbox"
    svc = watch_folder(eng, inbox, home=home, plan=StagePlan(canary_seconds=0, dual_run_seconds=0),
                    gates=Gates(bench_seconds=0.1))
    times = []
    try:
        for i in range(1 if quick else 3):
            raw = _capsule(tmp / "drop", signer, f"1.0.{i}")
            staged = inbox / f"demo-1.0.{i}.capsule.part"
            staged.write_bytes(raw)
            t0 = time.perf_counter()
            os.replace(staged, inbox / f"demo-1.0.{i}.capsule")
            while eng.table.routes[OP].provider_version != f"1.0.{i}":
                time.sleep(0.002)
            times.append(time.perf_counter() - t0)
        events = svc.updater.audit.tail(30)
    finally:
        svc.stop()
    print("1. drop -> serving (watched folder, settle 0.5 s, no canary/dual-run):")
    print(f"   median {statistics.median(times):.3f} s over {len(times)} drops "
          f"(min {min(times):.3f}, max {max(times):.3f})")
    kat = [e for e in events if e["event"] == "PATCH_KAT"][-1]
    print(f"   of which isolated validation child ran {kat['child_seconds']:.3f} s "
          f"(KATs, {len(kat['differential'])} differential op(s), benchmark gate slowdown "
          f"{', '.join(f'{k} {v:.2f}x' for k, v in kat['slowdown'].items())})")


def _latencies(eng: xps.Engine, stop: threading.Event, out: list[int]) -> None:
    key, msg = bytes(32), b"x" * 64
    enc = eng.aead.encrypt
    perf = time.perf_counter_ns
    while not stop.is_set():
        t0 = perf()
        enc(ALGO, key, msg)
        out.append(perf() - t0)


def _run_window(eng: xps.Engine, seconds: float, action=None) -> list[int]:
    stop = threading.Event()
    samples: list[list[int]] = [[], []]
    threads = [threading.Thread(target=_latencies, args=(eng, stop, s)) for s in samples]
    for t in threads:
        t.start()
    if action is None:
        time.sleep(seconds)
    else:
        action()
    stop.set()
    for t in threads:
        t.join()
    return samples[0] + samples[1]


def _pct(xs: list[int], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] / 1000


def latency_during_swaps(tmp: Path, quick: bool) -> None:
    home, signer = _setup(tmp / "lat")
    eng = xps.Engine()
    up = Updater(eng, home, gates=Gates(bench_seconds=0.1), plan=StagePlan(canary_seconds=0, dual_run_seconds=0))
    up.restore()
    up.apply(_capsule(tmp / "lat", signer, "1.0.0"))
    up.apply(_capsule(tmp / "lat", signer, "1.0.1"))
    swaps = 10 if quick else 50
    steady = _run_window(eng, 1.0 if quick else 3.0)

    def swapping() -> None:
        for k in range(swaps):
            up.rollback("xchacha20-openssl", to="1.0.0" if k % 2 == 0 else "1.0.1")

    during = _run_window(eng, 0, swapping)
    pipeline = _run_window(eng, 0, lambda: up.apply(_capsule(tmp / "lat", signer, "1.1.0")))
    print("2. XChaCha20-Poly1305 64 B encrypt latency on 2 threads (us):")
    s50, s99 = _pct(steady, 0.5), _pct(steady, 0.99)
    for label, xs in (("steady state", steady), (f"{swaps} table swaps", during),
                      ("full capsule pipeline", pipeline)):
        p50, p99 = _pct(xs, 0.5), _pct(xs, 0.99)
        print(f"   {label:<22} n={len(xs):>7}  p50 {p50:7.2f}  p99 {p99:7.2f}  "
              f"p50 ratio {p50 / s50:4.2f}x  p99 ratio {p99 / s99:4.2f}x (target <= 2x)")


def drain_tracking_cost(quick: bool) -> None:
    class NoLocalSignatureAPI(SignatureAPI):
        """The API method as it would be without keeping the loaded table in a local."""

        __slots__ = ()

        def sign(self, secret_key, message, context=b""):  # type: ignore[no-untyped-def]
            return self._engine._table.signature[self._op].sign(secret_key, message, context)

    plain = xps.Engine()
    watched = xps.Engine()
    tmp = Path(tempfile.mkdtemp())
    Updater(watched, Home.resolve(tmp / "h")).restore()
    _, sk = plain.ed25519.generate_keypair()
    with_local = plain.ed25519
    without_local = NoLocalSignatureAPI(plain, "sig.ed25519")
    key, msg = bytes(32), b"x" * 64
    rounds, n = (5, 20_000) if quick else (15, 100_000)
    res: dict[str, list[float]] = {k: [] for k in ("local", "nolocal", "plain", "watched")}
    for _ in range(rounds):
        for name, fn in (("local", lambda: with_local.sign(sk, msg)),
                         ("nolocal", lambda: without_local.sign(sk, msg))):
            t0 = time.perf_counter()
            for _ in range(n // 10):
                fn()
            res[name].append((time.perf_counter() - t0) / (n // 10) * 1e6)
        for name, eng in (("plain", plain), ("watched", watched)):
            enc = eng.aead.encrypt
            t0 = time.perf_counter()
            for _ in range(n):
                enc(ALGO, key, msg)
            res[name].append((time.perf_counter() - t0) / n * 1e6)
    med = {k: statistics.median(v) for k, v in res.items()}
    print("3. drain tracking on the hot path (median of interleaved rounds):")
    print(f"   Ed25519 sign: table held in a local {med['local']:.3f} us vs without {med['nolocal']:.3f} us "
          f"-> ratio {med['local'] / med['nolocal']:.3f}")
    print(f"   XChaCha 64 B encrypt: engine with updater {med['watched']:.3f} us vs plain engine "
          f"{med['plain']:.3f} us -> ratio {med['watched'] / med['plain']:.3f}")
    shutil.rmtree(tmp, ignore_errors=True)


# Serves a fixed key in the engine process once a switch file exists (the child never sees it).
_WRONG_KEY = ("    def cipher(self, key: Buffer) -> _Keyed:\n        return _Keyed(key)",
              "    def cipher(self, key: Buffer) -> _Keyed:\n"
              "        import os\n"
              "        return _Keyed(bytes(32) if os.path.exists(os.environ.get('XPS_BENCH_SWITCH', '/nonexistent'))"
              " else key)")


def sampled_check(tmp: Path, quick: bool) -> None:
    """4. The sampled differential check after cutover: its cost per call, and how soon it
    rolls back a provider that starts serving wrong results."""
    home, signer = _setup(tmp / "sampled")
    every = 64
    eng = xps.Engine()
    up = Updater(eng, home, gates=Gates(bench_seconds=0.1, max_slowdown=10),
                 plan=StagePlan(canary_seconds=0, dual_run_seconds=0, sample_every=every, sample_seconds=3600))
    up.restore()
    up.apply(_capsule(tmp / "sampled", signer, "1.0.0"))
    key, msg = bytes(range(32)), b"m" * 64  # not the fixed key the bad provider uses
    n, rounds = (2000, 3) if quick else (20000, 7)

    def per_call() -> float:
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n):
                eng.aead.encrypt(ALGO, key, msg)
            best = min(best, (time.perf_counter() - t) / n)
        return best

    sampled_table = eng.table.version
    sampling = per_call()
    up._end_sampling(sampled_table)  # the window ends: the plain table is published
    plain = per_call()
    print(f"4. sampled check (1 call in {every}, XChaCha20-Poly1305 64 B encrypt, best of {rounds}x{n}): "
          f"{sampling * 1e6:.2f} us/call while sampling vs {plain * 1e6:.2f} us/call after "
          f"({sampling / plain:.2f}x; +{(sampling - plain) * 1e6:.2f} us/call)")
    # Time to roll back a provider that turns bad: 1.0.1 serves a fixed key once the switch exists.
    switch = tmp / "sampled" / "switch"
    os.environ["XPS_BENCH_SWITCH"] = str(switch)
    up.apply(_capsule(tmp / "sampled", signer, "1.0.1", _WRONG_KEY))
    switch.touch()
    started, calls = time.perf_counter(), 0
    while up.status()["active"][0]["version"] != "1.0.0" and time.perf_counter() - started < 30:
        for _ in range(100):
            eng.aead.encrypt(ALGO, key, msg)
        calls += 100
    took = time.perf_counter() - started
    print(f"   a provider turning bad is rolled back after {took * 1e3:.1f} ms ({calls} calls at full speed, "
          f"i.e. about {every} calls to the first sampled one, then the rollback)")
    up.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"XPScerpto hot-patch benchmark; CPython {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        drop_to_serving(tmp, args.quick)
        latency_during_swaps(tmp, args.quick)
        drain_tracking_cost(args.quick)
        sampled_check(tmp, args.quick)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
