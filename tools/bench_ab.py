#!/usr/bin/env python3
"""A/B benchmark: the same call shapes through two installs of xpscerpto, in one run.

Compares two Python interpreters (e.g. a venv with the previous commit installed and one with
the current tree) on the public API's per-call cost. Each round runs one short measuring
process per install, alternating A B B A … so drift on a shared machine cancels; inside every
process each engine call is timed interleaved with the raw provider call of the same shape,
so each install also reports its own overhead over raw. Figures are medians over rounds; read
the ratios, never a bare number.

Usage:
    python tools/bench_ab.py --a /tmp/venv-before/bin/python --b .venv/bin/python [--rounds 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Runs inside each interpreter; prints {case: [engine_us, raw_us]}.
_PROBE = r'''
import gc, json, os, statistics, sys, time
import xpscerpto as xps
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes

N = int(sys.argv[1])
key, msg, aad, ur = bytes(range(32)), b"m" * 64, b"a" * 16, os.urandom
A = xps.aead
s = A.encrypt("AES-256-GCM", key, msg, aad)
nonce, ct, tag = s.nonce, bytes(s.ciphertext), s.tag
wire = s.ciphertext_and_tag
keyed = A.keyed("AES-256-GCM", key)
gcm = AESGCM(key)
pk, sk = xps.ed25519.generate_keypair()
sig = xps.ed25519.sign(sk, msg)
seed = bytes(sk.view()) if hasattr(sk, "view") else bytes(sk)
raw_pk = Ed25519PublicKey.from_public_bytes(pk)
xpk, xsk = xps.x25519.generate_keypair()
peer_pk, peer_sk = xps.x25519.generate_keypair()
xseed = bytes(xsk.view()) if hasattr(xsk, "view") else bytes(xsk)
skey = xps.SecretBytes(key)
fixed = os.urandom(12)  # one caller nonce for one message: a retry, which reuse checks allow
import nacl.bindings as nb
xkey, xnonce = os.urandom(32), os.urandom(24)
xs = A.encrypt("XCHACHA20-POLY1305", xkey, msg, aad)
xct, xtag, xwire = bytes(xs.ciphertext), xs.tag, xs.ciphertext_and_tag

cases = {
    "aead.encrypt AES-256-GCM 64B": (lambda: A.encrypt("AES-256-GCM", key, msg, aad),
                                      lambda: AESGCM(key).encrypt(ur(12), msg, aad)),
    "aead.decrypt AES-256-GCM 64B": (lambda: A.decrypt("AES-256-GCM", key, nonce, ct, tag, aad),
                                      lambda: AESGCM(key).decrypt(nonce, ct + tag, aad)),
    "aead.open AES-256-GCM 64B": (lambda: A.open("AES-256-GCM", key, s, aad),
                                   lambda: AESGCM(key).decrypt(nonce, wire, aad)),
    "keyed.encrypt AES-256-GCM 64B": (lambda: keyed.encrypt(msg, aad),
                                       lambda: gcm.encrypt(ur(12), msg, aad)),
    "aead.encrypt nonce= AES-GCM 64B": (lambda: A.encrypt("AES-256-GCM", key, msg, aad, nonce=fixed),
                                        lambda: AESGCM(key).encrypt(fixed, msg, aad)),
    "aead.encrypt SecretBytes 64B": (lambda: A.encrypt("AES-256-GCM", skey, msg, aad),
                                     lambda: AESGCM(key).encrypt(ur(12), msg, aad)),
    "keyed.encrypt nonce= 64B": (lambda: keyed.encrypt(msg, aad, fixed),
                                 lambda: gcm.encrypt(fixed, msg, aad)),
    "keyed.decrypt AES-256-GCM 64B": (lambda: keyed.decrypt(nonce, wire, aad),
                                      lambda: gcm.decrypt(nonce, wire, aad)),
    "aead.decrypt XCHACHA20 64B": (lambda: A.decrypt("XCHACHA20-POLY1305", xkey, xs.nonce, xct, xtag, aad),
                                   lambda: nb.crypto_aead_xchacha20poly1305_ietf_decrypt(xwire, aad, xs.nonce, xkey)),
    "ed25519.sign 64B": (lambda: xps.ed25519.sign(sk, msg),
                          lambda: Ed25519PrivateKey.from_private_bytes(seed).sign(msg)),
    "ed25519.verify 64B": (lambda: xps.ed25519.verify(pk, msg, sig),
                            lambda: Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)),
    "x25519.derive_shared": (lambda: xps.x25519.derive_shared(xsk, peer_pk),
                              lambda: X25519PrivateKey.from_private_bytes(xseed).exchange(
                                  X25519PublicKey.from_public_bytes(peer_pk))),
    "hkdf.derive 32B": (lambda: xps.hkdf.derive(key, 32, salt=b"s", info=b"i"),
                         lambda: HKDF(hashes.SHA256(), 32, b"s", b"i").derive(key)),
}
out = {}
for name, (eng, raw) in cases.items():
    for f in (eng, raw):
        for _ in range(200):
            f()
    best = {"eng": [], "raw": []}
    gc.disable()
    for _ in range(5):
        for label, f in (("eng", eng), ("raw", raw)):
            t = time.perf_counter_ns()
            for _ in range(N):
                f()
            best[label].append((time.perf_counter_ns() - t) / N / 1000)
    gc.enable()
    out[name] = [statistics.median(best["eng"]), statistics.median(best["raw"])]
print(json.dumps(out))
'''


def _probe(python: str, n: int) -> dict[str, list[float]]:
    done = subprocess.run([python, "-c", _PROBE, str(n)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="interpreter of install A (the baseline)")
    ap.add_argument("--b", required=True, help="interpreter of install B")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=4000, help="calls per timed sample")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, list[float]]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for which in (("a", "b") if r % 2 == 0 else ("b", "a")):
            runs[which].append(_probe(getattr(args, which), args.calls))
    print(f"A = {args.a}\nB = {args.b}\n{args.rounds} rounds, medians in us per call; "
          "overhead = engine - raw in the same process")
    print(f"{'case':<32} {'A eng':>8} {'A +raw':>8} {'B eng':>8} {'B +raw':>8} {'B/A eng':>8} {'B/A (eng/raw)':>14}")
    for case in runs["a"][0]:
        med = {w: [statistics.median(x[case][i] for x in runs[w]) for i in (0, 1)] for w in "ab"}
        rel = {w: statistics.median(x[case][0] / x[case][1] for x in runs[w]) for w in "ab"}
        print(f"{case:<32} {med['a'][0]:8.3f} {med['a'][0] - med['a'][1]:+8.3f} {med['b'][0]:8.3f} "
              f"{med['b'][0] - med['b'][1]:+8.3f} {med['b'][0] / med['a'][0]:8.3f} {rel['b'] / rel['a']:14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
