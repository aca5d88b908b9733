"""Differential checks: the same inputs through a candidate and the current implementation.

``make_inputs`` draws random inputs per operation kind; ``compute`` runs one implementation
over them and returns JSON-able observations. The child computes the candidate's, the parent
the current one's, and ``compare`` names the first disagreement. Tampered AEAD ciphertexts
must be rejected by the candidate (``rejects_tamper``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from .refusal import Refusal

__all__ = ["bench_aead", "compare", "compute", "make_inputs"]

_AEAD_SIZES = (0, 1, 15, 16, 17, 63, 64, 255, 1000, 4096, 65536)


def _h(b: bytes | bytearray | memoryview) -> str:
    return bytes(b).hex()


def make_inputs(kind: str, operation: str, impl: Any, samples: int) -> list[dict[str, str]]:
    """Random inputs for ``kind``; sizes come from the reference implementation ``impl``."""
    out: list[dict[str, str]] = []
    for i in range(samples):
        if kind == "aead":
            size = _AEAD_SIZES[i % len(_AEAD_SIZES)]
            out.append({"key": _h(os.urandom(max(impl.key_sizes))), "nonce": _h(os.urandom(impl.nonce_size)),
                        "pt": _h(os.urandom(size)), "aad": _h(os.urandom(i % 40))})
        elif kind == "sig":
            out.append({"sk": _h(os.urandom(impl.secret_key_size)), "msg": _h(os.urandom(i * 7 % 300))})
        elif kind == "kex":
            peer_pk, _ = impl.generate()
            out.append({"sk": _h(os.urandom(impl.secret_key_size)), "pk": _h(peer_pk)})
        elif kind == "kem":
            seed = os.urandom(impl.secret_key_size)
            ct, _ = impl.encapsulate(impl.public_key(seed))
            out.append({"sk": _h(seed), "ct": _h(ct)})
        elif kind == "kdf":
            out.append({"salt": _h(os.urandom(i % 33)), "ikm": _h(os.urandom(16 + i)),
                        "info": _h(os.urandom(i % 20)), "length": str(1 + (i * 37) % 200)})
    return out


def compute(kind: str, operation: str, impl: Any, inputs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Observations of ``impl`` on ``inputs`` (hex strings and booleans)."""
    results: list[dict[str, Any]] = []
    for x in inputs:
        b = {k: bytes.fromhex(v) for k, v in x.items() if k != "length"}
        if kind == "aead":
            cipher = impl.cipher(b["key"])
            ct = cipher.encrypt(b["nonce"], b["pt"], b["aad"])
            roundtrip = bytes(impl.cipher(b["key"]).decrypt(b["nonce"], ct, b["aad"])) == b["pt"]
            results.append({"ct": _h(ct), "roundtrip": roundtrip,
                            "rejects_tamper": _rejects_tamper(impl, b, ct)})
        elif kind == "sig":
            pk = impl.public_key(b["sk"])
            sig = impl.sign(b["sk"], b["msg"], b"")
            results.append({"pk": _h(pk), "sig": _h(sig)})
        elif kind == "kex":
            results.append({"shared": _h(impl.exchange(b["sk"], b["pk"]))})
        elif kind == "kem":
            results.append({"ek": _h(impl.public_key(b["sk"])), "ss": _h(impl.decapsulate(b["sk"], b["ct"]))})
        elif kind == "kdf":
            prk = impl.extract(b["salt"], b["ikm"])
            results.append({"okm": _h(impl.expand(prk, b["info"], int(x["length"])))})
    return results


def _rejects_tamper(impl: Any, b: dict[str, bytes], ct: bytes) -> bool:
    """Every single-bit flip we try (first byte, last byte) must fail authentication."""
    for pos in {0, len(ct) - 1}:
        bad = bytearray(ct)
        bad[pos] ^= 0x01
        try:
            impl.cipher(b["key"]).decrypt(b["nonce"], bytes(bad), b["aad"])
        except Exception:  # noqa: S112 - any refusal counts; accepting is the failure
            continue
        return False
    return True


def compare(kind: str, operation: str, reference: Any, inputs: list[dict[str, str]],
            candidate: list[dict[str, Any]], expected: list[dict[str, Any]]) -> tuple[Refusal, str] | None:
    """The first disagreement between candidate and reference (its code and detail), or None."""
    mismatch = Refusal.DIFFERENTIAL_MISMATCH
    if len(candidate) != len(expected):
        return mismatch, f"returned {len(candidate)} results for {len(expected)} inputs"
    for i, (got, want) in enumerate(zip(candidate, expected, strict=True)):
        if kind == "aead":
            if not got.get("rejects_tamper"):
                return Refusal.TAMPER_ACCEPTED, f"input {i}: accepted a tampered ciphertext"
            if not got.get("roundtrip"):
                return mismatch, f"input {i}: does not decrypt its own ciphertext"
        if kind == "sig" and operation == "sig.mldsa65":
            # Hedged signatures differ run to run: the reference must accept the candidate's.
            if got.get("pk") != want["pk"]:
                return mismatch, f"input {i}: public key differs"
            x = inputs[i]
            try:
                reference.verify(bytes.fromhex(got["pk"]), bytes.fromhex(x["msg"]),
                                 bytes.fromhex(got["sig"]), b"")
            except Exception:
                return mismatch, f"input {i}: the current implementation rejects the candidate's signature"
            continue
        for key, value in want.items():
            if got.get(key) != value:
                return mismatch, f"input {i}: {key} differs from the current implementation"
    return None


def bench_aead(impl: Any, size: int, seconds: float = 0.2) -> float:
    """Seconds per encryption of ``size`` bytes (best of three timed runs)."""
    key, nonce, pt = os.urandom(max(impl.key_sizes)), os.urandom(impl.nonce_size), os.urandom(size)
    best = float("inf")
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            impl.cipher(key).encrypt(nonce, pt, b"")
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = min(best, elapsed / n)
    return best
