"""Count the user-space instructions of one 64-byte round trip: secure channel, TLS 1.3, plain socket.

Timing a few microseconds of per-record work on a shared VM drowns in noise (a round trip over
loopback there takes either ~27 us or 80-120 us depending on vCPU wake-ups). Instructions are
repeatable: this runs both ends of each stack in one process over a socketpair, under
``valgrind --tool=callgrind``, once with a few round trips and once with many, and prints the
difference per round trip. Kernel work (the syscalls) is not counted; the channel makes one
``recv`` per record where TLS makes two ``read`` calls.

    python tools/count_roundtrip.py [--calls 1000] [--stacks channel,tls,plain]

``--native`` runs the loops without valgrind and prints microseconds instead (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

STACKS = ("channel", "tls", "plain")


def _channel() -> Callable[[], None]:
    import xpscerpto as xps
    from xpscerpto.channel import ChannelConfig, blocking
    from xpscerpto.channel._noise import CipherState

    eng = xps.default_engine()

    def cs(key: bytes) -> CipherState:
        c = CipherState(eng, "ChaChaPoly")
        c.initialize_key(key)
        return c

    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = socket.socketpair()
    cfg = ChannelConfig()
    end_a = blocking.BlockingChannel(a, blocking._Reader(a), types.SimpleNamespace(  # type: ignore[arg-type]
        send=cs(k1), recv=cs(k2), peer=None, protocol="count", handshake_hash=b""), cfg)
    end_b = blocking.BlockingChannel(b, blocking._Reader(b), types.SimpleNamespace(  # type: ignore[arg-type]
        send=cs(k2), recv=cs(k1), peer=None, protocol="count", handshake_hash=b""), cfg)
    msg = os.urandom(64)

    def rt() -> None:
        end_a.send(msg)
        end_b.send(end_b.recv())
        end_a.recv()

    return rt


def _tls() -> Callable[[], None]:
    import ssl

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_channel

    pki = bench_channel.make_pki(Path(tempfile.mkdtemp(prefix="xps-count-")))
    c, s = socket.socketpair()
    server = bench_channel.tls_context(pki, True).wrap_socket(s, server_side=True, do_handshake_on_connect=False)
    client = bench_channel.tls_context(pki, False).wrap_socket(c, server_hostname="server.bench",
                                                              do_handshake_on_connect=False)
    t = threading.Thread(target=server.do_handshake)
    t.start()
    client.do_handshake()
    t.join()
    assert isinstance(client, ssl.SSLSocket)
    msg = os.urandom(64)
    exact = bench_channel._exact

    def rt() -> None:
        client.sendall(msg)
        server.sendall(exact(server.recv, 64))
        exact(client.recv, 64)

    return rt


def _plain() -> Callable[[], None]:
    a, b = socket.socketpair()
    msg = os.urandom(64)

    def rt() -> None:
        a.sendall(msg)
        b.sendall(b.recv(64))
        a.recv(64)

    return rt


def _run(stack: str, calls: int) -> None:
    """The child: build the stack, warm it, run ``calls`` round trips."""
    os.environ.setdefault("XPS_AUTOTUNE", "0")  # the static table: no background thread to count
    rt = {"channel": _channel, "tls": _tls, "plain": _plain}[stack]()
    for _ in range(50):
        rt()
    for _ in range(calls):
        rt()


def _instructions(stack: str, calls: int) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          __file__, "--child", stack, str(calls)], capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"callgrind printed no total for {stack}: {out.stderr[-500:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--child":
        _run(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--native", action="store_true", help="no valgrind: microseconds per round trip (smoke run)")
    args = ap.parse_args(argv)
    stacks = [s for s in args.stacks.split(",") if s]
    if any(s not in STACKS for s in stacks):
        ap.error(f"--stacks: choose from {', '.join(STACKS)}")
    if args.native:
        for stack in stacks:
            os.environ.setdefault("XPS_AUTOTUNE", "0")
            rt = {"channel": _channel, "tls": _tls, "plain": _plain}[stack]()
            for _ in range(50):
                rt()
            t = time.perf_counter()
            for _ in range(args.calls):
                rt()
            print(f"{stack:<8} {(time.perf_counter() - t) / args.calls * 1e6:8.2f} us per round trip (native)")
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    counts = {}
    for stack in stacks:
        few, many = _instructions(stack, 0), _instructions(stack, args.calls)
        counts[stack] = (many - few) / args.calls
        print(f"{stack:<8} {counts[stack]:10.0f} instructions per 64-byte round trip (user space, both ends)")
    if "channel" in counts and "tls" in counts:
        print(f"channel / tls: {counts['channel'] / counts['tls']:.2f}x the instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
