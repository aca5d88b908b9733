"""``xps demo``: the main job end to end, narrated. Grows with each capability."""

from __future__ import annotations

from .engine import Engine
from .errors import AuthError, KeyError_

__all__ = ["run_demo"]


def _step(title: str) -> None:
    print(f"\n== {title}")


def run_demo(eng: Engine) -> int:
    """Self-tests, routing table, AEAD, signatures, key exchange, a rejected tamper."""
    _step("1. power-on self-tests (every provider x operation, before first use)")
    results = eng.state.selftests
    for r in results:
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.provider:<8} {r.operation}")
    failed = [r for r in results if not r.passed]
    print(f"  {len(results) - len(failed)}/{len(results)} passed")

    _step("2. routing table (operation -> provider)")
    table = eng.table
    for op, route in table.routes.items():
        print(f"  {op:<24} -> {route.provider:<8} ({route.backend})")
    for op, reason in table.unrouted.items():
        print(f"  {op:<24} -> not routed: {reason}")

    _step("3. AEAD: encrypt and decrypt with every routed algorithm")
    message, aad = b"attack at dawn", b"header:v1"
    from .engine import random_bytes

    for algo in sorted(table.aead):
        if not algo.isupper():  # show each algorithm once, by its public name
            continue
        info = eng.aead.info(algo)
        key = random_bytes(info["key_size"])
        sealed = eng.aead.encrypt(algo, key, message, aad)
        plain = eng.aead.decrypt(algo, key, sealed.nonce, sealed.ciphertext, sealed.tag, aad)
        assert plain == message
        print(f"  {algo:<20} via {info['provider']:<8} nonce {len(sealed.nonce):>2} B, "
              f"tag {len(sealed.tag)} B -> round trip ok")

    _step("4. a tampered ciphertext is rejected, and no plaintext comes out")
    key = random_bytes(32)
    sealed = eng.aead.encrypt("AES-256-GCM", key, message, aad)
    forged = bytearray(sealed.ciphertext)
    forged[0] ^= 0x01
    try:
        eng.aead.decrypt("AES-256-GCM", key, sealed.nonce, bytes(forged), sealed.tag, aad)
    except AuthError as exc:
        print(f"  rejected: {exc}")
    else:
        print("  ERROR: tampered ciphertext was accepted")
        return 1

    _step("5. signatures: Ed25519 and ML-DSA-65")
    pk, sk = eng.ed25519.generate_keypair()
    sig = eng.ed25519.sign(sk, message)
    eng.ed25519.verify(pk, message, sig)
    print(f"  Ed25519   via {eng.ed25519.provider}: 64-byte signature verifies; "
          f"altered message verifies: {eng.ed25519.is_valid(pk, message + b'!', sig)}")
    mpk, msk = eng.mldsa65.generate_keypair()
    msig = eng.mldsa65.sign(msk, message, context=b"demo")
    eng.mldsa65.verify(mpk, message, msig, context=b"demo")
    print(f"  ML-DSA-65 via {eng.mldsa65.provider}: {len(msig)}-byte signature verifies")
    sk.wipe()
    msk.wipe()

    _step("6. key exchange: X25519 + HKDF-SHA256, and ML-KEM-768")
    c_pk, c_sk = eng.x25519.generate_keypair()
    s_pk, s_sk = eng.x25519.generate_keypair()
    with eng.x25519.derive_shared(c_sk, s_pk) as c_shared, eng.x25519.derive_shared(s_sk, c_pk) as s_shared:
        assert c_shared == s_shared
        transcript = c_pk + s_pk
        with eng.hkdf.derive(c_shared, 64, salt=b"xps-demo", info=transcript) as okm:
            print(f"  X25519 shared secrets agree; HKDF derived {len(okm)} bytes of session keys")
    try:
        eng.x25519.derive_shared(c_sk, bytes(32))
    except KeyError_ as exc:
        print(f"  low-order peer key rejected: {exc}")
    ek, dk = eng.mlkem768.generate_keypair()
    ct, ss = eng.mlkem768.encapsulate(ek)
    assert eng.mlkem768.decapsulate(dk, ct) == ss
    print(f"  ML-KEM-768: {len(ct)}-byte ciphertext, both sides hold the same 32-byte secret")

    print("\ndemo complete" if not failed else "\ndemo complete, but some self-tests FAILED")
    return 0 if not failed else 1
