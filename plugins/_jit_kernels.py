"""numba kernels: HChaCha20, ChaCha20, Poly1305 and whole-message (X)ChaCha20-Poly1305.

Specs: RFC 8439 (ChaCha20, Poly1305, the AEAD construction) and draft-irtf-cfrg-xchacha-03
(HChaCha20, XChaCha20-Poly1305).

**Importing this module compiles.** Every kernel is declared with explicit signatures, so numba
compiles it (or loads it from its on-disk cache) when the module is imported and then refuses
any other argument types instead of compiling again. Only
:func:`xpscerpto.plugins.jit.warm_up` imports it, off the call path, after choosing the cache
directory; nothing else in the package may.

Constant time, by construction:

* ChaCha20/HChaCha20 are add-rotate-xor on 32-bit words (held in uint64 and masked, or
  truncated to uint32, since numba widens unsigned arithmetic to 64 bits): no table, no
  secret-dependent branch or index.
* Poly1305 uses five 26-bit limbs (poly1305-donna-32): every product of two limbs (< 2^26 and
  < 5 * 2^26) fits a uint64 with room for the five-term sums, carries are shifts and masks,
  and the final conditional subtraction of p = 2^130 - 5 is a mask select, not a branch.
* The tag check ORs the XOR of all four tag words together and branches once, on the result.
  An AEAD open verifies the tag before it writes any plaintext.
* The wide paths (16 ChaCha20 blocks, or 8 Poly1305 lanes with powers of r, side by side in
  arrays) and the two-block Poly1305 step do the same arithmetic in another order: no new
  operation, and their loop bounds and array indexes are lengths and lane numbers.
* Branches and indexes depend only on lengths (public). The only division instructions in the
  compiled code are numba's array-view shape computations (on lengths); block counts are shifts.

All integer constants are uint64 globals: numba types ``uint64 + <int literal>`` as int64 and
``uint64 op int64`` as float64, which would be wrong *and* not constant time; a test checks the
compiled code has no floating-point instruction.

Every entry point checks the lengths it relies on and returns a negative code instead of reading
or writing out of bounds (numba does no bounds checks); the caller turns codes into errors.
"""

# numba compiles these functions from their Python source and infers every type itself; Python
# annotations would be ignored, so mypy is told not to ask for them.
# mypy: disable-error-code="no-untyped-def, no-untyped-call"

from __future__ import annotations

import sys

import numpy as np
from numba import njit, types

if sys.byteorder != "little":  # the wide paths read words through little-endian array views
    raise ImportError("xpscerpto.plugins._jit_kernels: needs a little-endian CPU")

__all__ = [
    "BAD_LENGTH",
    "KERNELS",
    "chacha20_xor",
    "chacha20poly1305_open",
    "chacha20poly1305_seal",
    "hchacha20",
    "poly1305_mac",
    "xchacha20poly1305_open",
    "xchacha20poly1305_seal",
]

#: Returned by every entry point when a buffer has the wrong length (nothing was written).
BAD_LENGTH = -1

_M32 = np.uint64(0xFFFFFFFF)
_M26 = np.uint64(0x3FFFFFF)
_M8 = np.uint64(0xFF)
_ONE = np.uint64(1)
_FIVE = np.uint64(5)
_HIBIT = np.uint64(1 << 24)  # 2^128 in the top 26-bit limb
_ZERO = np.uint64(0)
_P4 = np.uint64(1 << 26)
# "expand 32-byte k", little-endian words.
_C0 = np.uint64(0x61707865)
_C1 = np.uint64(0x3320646E)
_C2 = np.uint64(0x79622D32)
_C3 = np.uint64(0x6B206574)
# Poly1305 r clamp, per 26-bit limb after the shifts below (RFC 8439 2.5.1).
_R1 = np.uint64(0x3FFFF03)
_R2 = np.uint64(0x3FFC0FF)
_R3 = np.uint64(0x3F03FFF)
_R4 = np.uint64(0x00FFFFF)
_U = np.uint64
_U32 = np.uint32
# Wide paths: LANES ChaCha20 blocks, or PLANES Poly1305 blocks, side by side in arrays whose
# per-lane loops LLVM vectorises (AVX-512 on this machine's CPU, SSE2 at least on any x86-64).
# Below the thresholds the one-block-at-a-time code is faster than setting the lanes up.
_LANES = 16
_WIDE_MIN = 2 * 64  # more than this many message bytes left: a wide ChaCha20 batch
_PLANES = 8
_POLY_MIN = 8  # lane groups (8 * 128 B = 1 KiB) before the wide Poly1305 pays for its set-up
_POLY_CHUNK = 64  # lane groups per chunk of the wide Poly1305 (bounds its scratch to 28 KiB)
# The ChaCha20 block counter is 32 bits, so one nonce covers at most 2^32 blocks (RFC 8439 2.4).
_MAX_BLOCKS = 1 << 32

_IN = types.Bytes(types.uint8, 1, "C", readonly=True)  # bytes (bytearray is passed through entry points)
_OUT = types.ByteArray(types.uint8, 1, "C")


# -- words ----------------------------------------------------------------------------------------


@njit(inline="always")
def _ld32(b, i):
    return (np.uint64(b[i]) | (np.uint64(b[i + 1]) << 8) | (np.uint64(b[i + 2]) << 16)
            | (np.uint64(b[i + 3]) << 24))


@njit(inline="always")
def _st32(out, i, w):
    out[i] = np.uint8(w & _M8)
    out[i + 1] = np.uint8((w >> 8) & _M8)
    out[i + 2] = np.uint8((w >> 16) & _M8)
    out[i + 3] = np.uint8((w >> 24) & _M8)


@njit(inline="always")
def _ld32_tail(b, i, end):
    """The little-endian word at ``b[i:i+4]`` with bytes at or past ``end`` read as zero."""
    w = _ZERO
    for j in range(4):
        if i + j < end:  # public: ``end`` is a length
            w |= np.uint64(b[i + j]) << np.uint64(8 * j)
    return w


# -- ChaCha20 -------------------------------------------------------------------------------------


@njit(inline="always")
def _qr(a, b, c, d):
    """One quarter round on uint32 words: LLVM sees the 32-bit rotates and emits ``rol``.

    numba widens uint32 arithmetic to uint64, so each sum and rotate is truncated back
    (a truncation, as the masks of the uint64 form would be, but one LLVM folds into 32-bit ops).
    """
    a = _U32(a + b)
    d ^= a
    d = _U32((d << 16) | (d >> 16))
    c = _U32(c + d)
    b ^= c
    b = _U32((b << 12) | (b >> 20))
    a = _U32(a + b)
    d ^= a
    d = _U32((d << 8) | (d >> 24))
    c = _U32(c + d)
    b ^= c
    b = _U32((b << 7) | (b >> 25))
    return a, b, c, d


@njit
def _rounds(x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15):
    """The 20 ChaCha rounds (10 column + diagonal double rounds), without the final addition.

    Takes and returns uint64 words below 2^32 (the rest of the code's representation); the
    rounds themselves run on uint32.
    """
    x0, x1, x2, x3, x4, x5, x6, x7 = _U32(x0), _U32(x1), _U32(x2), _U32(x3), _U32(x4), _U32(x5), _U32(x6), _U32(x7)
    x8, x9, x10, x11 = _U32(x8), _U32(x9), _U32(x10), _U32(x11)
    x12, x13, x14, x15 = _U32(x12), _U32(x13), _U32(x14), _U32(x15)
    for _ in range(10):
        x0, x4, x8, x12 = _qr(x0, x4, x8, x12)
        x1, x5, x9, x13 = _qr(x1, x5, x9, x13)
        x2, x6, x10, x14 = _qr(x2, x6, x10, x14)
        x3, x7, x11, x15 = _qr(x3, x7, x11, x15)
        x0, x5, x10, x15 = _qr(x0, x5, x10, x15)
        x1, x6, x11, x12 = _qr(x1, x6, x11, x12)
        x2, x7, x8, x13 = _qr(x2, x7, x8, x13)
        x3, x4, x9, x14 = _qr(x3, x4, x9, x14)
    return (_U(x0), _U(x1), _U(x2), _U(x3), _U(x4), _U(x5), _U(x6), _U(x7), _U(x8), _U(x9), _U(x10), _U(x11),
            _U(x12), _U(x13), _U(x14), _U(x15))


@njit
def _key_words(key, off):
    return (_ld32(key, off), _ld32(key, off + 4), _ld32(key, off + 8), _ld32(key, off + 12),
            _ld32(key, off + 16), _ld32(key, off + 20), _ld32(key, off + 24), _ld32(key, off + 28))


@njit
def _hchacha(k, n0, n1, n2, n3):
    """HChaCha20: words 0-3 and 12-15 of the rounds over (constants, key, 16-byte input)."""
    x = _rounds(_C0, _C1, _C2, _C3, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], n0, n1, n2, n3)
    return x[0], x[1], x[2], x[3], x[12], x[13], x[14], x[15]


@njit
def _block(k, ctr, n0, n1, n2):
    """One ChaCha20 keystream block (16 words): the rounds plus the input state."""
    x = _rounds(_C0, _C1, _C2, _C3, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], ctr, n0, n1, n2)
    return ((x[0] + _C0) & _M32, (x[1] + _C1) & _M32, (x[2] + _C2) & _M32, (x[3] + _C3) & _M32,
            (x[4] + k[0]) & _M32, (x[5] + k[1]) & _M32, (x[6] + k[2]) & _M32, (x[7] + k[3]) & _M32,
            (x[8] + k[4]) & _M32, (x[9] + k[5]) & _M32, (x[10] + k[6]) & _M32, (x[11] + k[7]) & _M32,
            (x[12] + ctr) & _M32, (x[13] + n0) & _M32, (x[14] + n1) & _M32, (x[15] + n2) & _M32)


@njit(inline="always")
def _xor_word(src, dst, i, end, w):
    if i + 4 <= end:
        _st32(dst, i, _ld32(src, i) ^ w)
    else:
        for j in range(4):
            if i + j < end:  # public: the tail of the message
                dst[i + j] = np.uint8((np.uint64(src[i + j]) ^ (w >> np.uint64(8 * j))) & _M8)


@njit(inline="always")
def _qr_lanes(x, a, b, c, d):
    """One quarter round on every lane; rows a..d start at those offsets of ``x``.

    Unsigned indexes: numba adds a negative-index fix-up to signed ones, which turns the
    contiguous lane accesses into gathers.
    """
    for li in range(_LANES):
        i = _U(li)
        xa = _U32(x[a + i] + x[b + i])
        xd = x[d + i] ^ xa
        xd = _U32((xd << 16) | (xd >> 16))
        xc = _U32(x[c + i] + xd)
        xb = x[b + i] ^ xc
        xb = _U32((xb << 12) | (xb >> 20))
        xa = _U32(xa + xb)
        xd = xd ^ xa
        xd = _U32((xd << 8) | (xd >> 24))
        xc = _U32(xc + xd)
        xb = xb ^ xc
        xb = _U32((xb << 7) | (xb >> 25))
        x[a + i] = xa
        x[b + i] = xb
        x[c + i] = xc
        x[d + i] = xd


@njit
def _xor_stream_wide(k, ctr, n0, n1, n2, src, dst, end):
    """XOR batches of ``_LANES`` blocks while more than ``_WIDE_MIN`` bytes are left.

    Returns the offset and block counter where the one-block code takes over. The last batch
    may compute blocks past the message; they are never used.
    """
    scratch = np.empty(48 * _LANES, np.uint32)  # one allocation for the three arrays
    x = scratch[:16 * _LANES]  # word-major: x[w * _LANES + lane]
    x0 = scratch[16 * _LANES:32 * _LANES]  # the input states of the batch, same layout
    ks = scratch[32 * _LANES:]
    kb = ks.view(np.uint8)  # little-endian words: the keystream's byte order
    L = _U(_LANES)
    for li in range(_LANES):  # one store per row and lane (a loop over a tuple would index it)
        i = _U(li)
        x0[i] = _U32(_C0)
        x0[L + i] = _U32(_C1)
        x0[2 * L + i] = _U32(_C2)
        x0[3 * L + i] = _U32(_C3)
        x0[4 * L + i] = _U32(k[0])
        x0[5 * L + i] = _U32(k[1])
        x0[6 * L + i] = _U32(k[2])
        x0[7 * L + i] = _U32(k[3])
        x0[8 * L + i] = _U32(k[4])
        x0[9 * L + i] = _U32(k[5])
        x0[10 * L + i] = _U32(k[6])
        x0[11 * L + i] = _U32(k[7])
        x0[13 * L + i] = _U32(n0)
        x0[14 * L + i] = _U32(n1)
        x0[15 * L + i] = _U32(n2)
    off = 0
    while end - off > _WIDE_MIN:
        for li in range(_LANES):  # row 12: each lane's block counter
            x0[12 * L + _U(li)] = _U32(ctr + _U(li))
        for q in range(16 * _LANES):  # flat loops over whole arrays: plain vector code
            x[_U(q)] = x0[_U(q)]
        for _ in range(10):
            _qr_lanes(x, _U(0), 4 * L, 8 * L, 12 * L)
            _qr_lanes(x, L, 5 * L, 9 * L, 13 * L)
            _qr_lanes(x, 2 * L, 6 * L, 10 * L, 14 * L)
            _qr_lanes(x, 3 * L, 7 * L, 11 * L, 15 * L)
            _qr_lanes(x, _U(0), 5 * L, 10 * L, 15 * L)
            _qr_lanes(x, L, 6 * L, 11 * L, 12 * L)
            _qr_lanes(x, 2 * L, 7 * L, 8 * L, 13 * L)
            _qr_lanes(x, 3 * L, 4 * L, 9 * L, 14 * L)
        for q in range(16 * _LANES):
            x[_U(q)] = _U32(x[_U(q)] + x0[_U(q)])
        for li in range(_LANES):  # transpose to block-major: the keystream in byte order
            for w in range(16):
                ks[_U(li) * 16 + _U(w)] = x[_U(w) * L + _U(li)]
        n = min(64 * _LANES, end - off)
        base = _U(off)
        for j in range(n):
            dst[base + _U(j)] = src[base + _U(j)] ^ kb[_U(j)]
        off += n
        ctr = (ctr + L) & _M32
    return off, ctr


@njit
def _xor_stream(k, ctr, n0, n1, n2, src, dst, end):
    """``dst[:end] = src[:end] XOR keystream`` from block counter ``ctr`` (uint64, < 2^32)."""
    off = 0
    if end > _WIDE_MIN:
        off, ctr = _xor_stream_wide(k, ctr, n0, n1, n2, src, dst, end)
    while off < end:
        x = _block(k, ctr, n0, n1, n2)
        _xor_word(src, dst, off, end, x[0])
        _xor_word(src, dst, off + 4, end, x[1])
        _xor_word(src, dst, off + 8, end, x[2])
        _xor_word(src, dst, off + 12, end, x[3])
        _xor_word(src, dst, off + 16, end, x[4])
        _xor_word(src, dst, off + 20, end, x[5])
        _xor_word(src, dst, off + 24, end, x[6])
        _xor_word(src, dst, off + 28, end, x[7])
        _xor_word(src, dst, off + 32, end, x[8])
        _xor_word(src, dst, off + 36, end, x[9])
        _xor_word(src, dst, off + 40, end, x[10])
        _xor_word(src, dst, off + 44, end, x[11])
        _xor_word(src, dst, off + 48, end, x[12])
        _xor_word(src, dst, off + 52, end, x[13])
        _xor_word(src, dst, off + 56, end, x[14])
        _xor_word(src, dst, off + 60, end, x[15])
        ctr = (ctr + _ONE) & _M32
        off += 64


# -- Poly1305 -------------------------------------------------------------------------------------


@njit
def _poly_key(w0, w1, w2, w3):
    """Clamped r as 26-bit limbs, and the 5x multiples used by the modular reduction."""
    r0 = w0 & _M26
    r1 = ((w0 >> 26) | (w1 << 6)) & _R1
    r2 = ((w1 >> 20) | (w2 << 12)) & _R2
    r3 = ((w2 >> 14) | (w3 << 18)) & _R3
    r4 = (w3 >> 8) & _R4
    return r0, r1, r2, r3, r4, r1 * _FIVE, r2 * _FIVE, r3 * _FIVE, r4 * _FIVE


@njit(inline="always")
def _poly_block(h, r, t0, t1, t2, t3, hibit):
    """h = (h + block) * r mod 2^130 - 5, partially reduced (limbs < 2^26 + small)."""
    h0 = h[0] + (t0 & _M26)
    h1 = h[1] + (((t0 >> 26) | (t1 << 6)) & _M26)
    h2 = h[2] + (((t1 >> 20) | (t2 << 12)) & _M26)
    h3 = h[3] + (((t2 >> 14) | (t3 << 18)) & _M26)
    h4 = h[4] + ((t3 >> 8) | hibit)
    r0, r1, r2, r3, r4, s1, s2, s3, s4 = r
    d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1
    d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2
    d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3
    d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4
    d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0
    c = d0 >> 26
    h0 = d0 & _M26
    d1 += c
    c = d1 >> 26
    h1 = d1 & _M26
    d2 += c
    c = d2 >> 26
    h2 = d2 & _M26
    d3 += c
    c = d3 >> 26
    h3 = d3 & _M26
    d4 += c
    c = d4 >> 26
    h4 = d4 & _M26
    h0 += c * _FIVE
    c = h0 >> 26
    h0 &= _M26
    h1 += c
    return h0, h1, h2, h3, h4


@njit
def _poly_absorb(h, r, buf, start, end):
    """Absorb ``buf[start:end]`` as the AEAD does: zero-padded to 16 bytes, every block full.

    Pairs of blocks go through :func:`_poly_pair` (two independent products per step instead of
    one long dependency chain); the odd block and the padded tail one at a time.
    """
    i = start
    if end - start >= 64:
        q = _mul(r[0], r[1], r[2], r[3], r[4], r[0], r[1], r[2], r[3], r[4])
        q = _carry(q[0], q[1], q[2], q[3], q[4])
        r2 = (q[0], q[1], q[2], q[3], q[4], q[1] * _FIVE, q[2] * _FIVE, q[3] * _FIVE, q[4] * _FIVE)
        while i + 32 <= end:
            h = _poly_pair(h, r, r2, buf, i)
            i += 32
    while i + 16 <= end:
        h = _poly_block(h, r, _ld32(buf, i), _ld32(buf, i + 4), _ld32(buf, i + 8), _ld32(buf, i + 12), _HIBIT)
        i += 16
    if i < end:  # public: the padded tail block
        h = _poly_block(h, r, _ld32_tail(buf, i, end), _ld32_tail(buf, i + 4, end),
                        _ld32_tail(buf, i + 8, end), _ld32_tail(buf, i + 12, end), _HIBIT)
    return h


@njit(inline="always")
def _poly_pair(h, r, r2, buf, i):
    """h = ((h + m1) * r + m2) * r = (h + m1) * r^2 + m2 * r for the blocks at ``buf[i:i+32]``.

    The two products are independent, so they overlap in the CPU; their unreduced sums (below
    2^58 each: limbs < 2^27.1 times 5 * limbs < 2^28.4, five terms) add without overflow before
    one carry chain.
    """
    t0 = _ld32(buf, i)
    t1 = _ld32(buf, i + 4)
    t2 = _ld32(buf, i + 8)
    t3 = _ld32(buf, i + 12)
    u0 = _ld32(buf, i + 16)
    u1 = _ld32(buf, i + 20)
    u2 = _ld32(buf, i + 24)
    u3 = _ld32(buf, i + 28)
    a0 = h[0] + (t0 & _M26)
    a1 = h[1] + (((t0 >> 26) | (t1 << 6)) & _M26)
    a2 = h[2] + (((t1 >> 20) | (t2 << 12)) & _M26)
    a3 = h[3] + (((t2 >> 14) | (t3 << 18)) & _M26)
    a4 = h[4] + ((t3 >> 8) | _HIBIT)
    b0 = u0 & _M26
    b1 = ((u0 >> 26) | (u1 << 6)) & _M26
    b2 = ((u1 >> 20) | (u2 << 12)) & _M26
    b3 = ((u2 >> 14) | (u3 << 18)) & _M26
    b4 = (u3 >> 8) | _HIBIT
    p0, p1, p2, p3, p4, q1, q2, q3, q4 = r2
    r0, r1, r2_, r3, r4, s1, s2, s3, s4 = r
    d0 = a0 * p0 + a1 * q4 + a2 * q3 + a3 * q2 + a4 * q1 + b0 * r0 + b1 * s4 + b2 * s3 + b3 * s2 + b4 * s1
    d1 = a0 * p1 + a1 * p0 + a2 * q4 + a3 * q3 + a4 * q2 + b0 * r1 + b1 * r0 + b2 * s4 + b3 * s3 + b4 * s2
    d2 = a0 * p2 + a1 * p1 + a2 * p0 + a3 * q4 + a4 * q3 + b0 * r2_ + b1 * r1 + b2 * r0 + b3 * s4 + b4 * s3
    d3 = a0 * p3 + a1 * p2 + a2 * p1 + a3 * p0 + a4 * q4 + b0 * r3 + b1 * r2_ + b2 * r1 + b3 * r0 + b4 * s4
    d4 = a0 * p4 + a1 * p3 + a2 * p2 + a3 * p1 + a4 * p0 + b0 * r4 + b1 * r3 + b2 * r2_ + b3 * r1 + b4 * r0
    c = d0 >> 26
    h0 = d0 & _M26
    d1 += c
    c = d1 >> 26
    h1 = d1 & _M26
    d2 += c
    c = d2 >> 26
    h2 = d2 & _M26
    d3 += c
    c = d3 >> 26
    h3 = d3 & _M26
    d4 += c
    c = d4 >> 26
    h4 = d4 & _M26
    h0 += c * _FIVE
    c = h0 >> 26
    h0 &= _M26
    h1 += c
    return h0, h1, h2, h3, h4


@njit(inline="always")
def _mul(h0, h1, h2, h3, h4, r0, r1, r2, r3, r4):
    """(h * r) mod 2^130 - 5, partially carried; any r with limbs below 2^27 (a power of r)."""
    s1 = r1 * _FIVE
    s2 = r2 * _FIVE
    s3 = r3 * _FIVE
    s4 = r4 * _FIVE
    return _poly_block((h0, h1, h2, h3, h4), (r0, r1, r2, r3, r4, s1, s2, s3, s4),
                       _ZERO, _ZERO, _ZERO, _ZERO, _ZERO)


@njit(inline="always")
def _carry(h0, h1, h2, h3, h4):
    c = h0 >> 26
    h0 &= _M26
    h1 += c
    c = h1 >> 26
    h1 &= _M26
    h2 += c
    c = h2 >> 26
    h2 &= _M26
    h3 += c
    c = h3 >> 26
    h3 &= _M26
    h4 += c
    c = h4 >> 26
    h4 &= _M26
    h0 += c * _FIVE
    c = h0 >> 26
    h0 &= _M26
    h1 += c
    return h0, h1, h2, h3, h4


@njit(inline="always")
def _times(a, b):
    """a * b mod 2^130 - 5, carried: limbs below 2^26 except the second (below 2^26 + 2^10)."""
    q = _mul(a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
    return _carry(q[0], q[1], q[2], q[3], q[4])


@njit(inline="always")
def _put(p, k, q):
    P = _U(_PLANES)
    p[k] = q[0]
    p[P + k] = q[1]
    p[2 * P + k] = q[2]
    p[3 * P + k] = q[3]
    p[4 * P + k] = q[4]


@njit(inline="always")
def _powers(p, r):
    """``p[i * _PLANES + k - 1]`` = limb i of r^k, for k = 1 .. 8 (a product tree: depth 3)."""
    r1 = (r[0], r[1], r[2], r[3], r[4])
    r2 = _times(r1, r1)
    r3 = _times(r2, r1)
    r4 = _times(r2, r2)
    _put(p, _U(0), r1)
    _put(p, _U(1), r2)
    _put(p, _U(2), r3)
    _put(p, _U(3), r4)
    _put(p, _U(4), _times(r4, r1))
    _put(p, _U(5), _times(r4, r2))
    _put(p, _U(6), _times(r4, r3))
    _put(p, _U(7), _times(r4, r4))


@njit
def _lanes_times_r(a, m, p0, p1, p2, p3, p4, lanes, stride, base):
    """``a[lane] = (a[lane] + m[base + lane]) * P mod 2^130 - 5`` for every lane (limb-major).

    Limbs are below 2^27 and P's (times 5) below 2^30, so they are passed through uint32: LLVM
    then multiplies with 32x32->64-bit vector instructions. ``lanes`` is a run-time value, see
    :func:`_double_rounds_lanes`.
    """
    r0 = _U(_U32(p0))
    r1 = _U(_U32(p1))
    r2 = _U(_U32(p2))
    r3 = _U(_U32(p3))
    r4 = _U(_U32(p4))
    s1 = _U(_U32(r1 * _FIVE))
    s2 = _U(_U32(r2 * _FIVE))
    s3 = _U(_U32(r3 * _FIVE))
    s4 = _U(_U32(r4 * _FIVE))
    P = _U(_PLANES)
    for li in range(lanes):
        j = _U(li)
        h0 = _U(_U32(a[j] + m[base + j]))
        h1 = _U(_U32(a[P + j] + m[stride + base + j]))
        h2 = _U(_U32(a[2 * P + j] + m[2 * stride + base + j]))
        h3 = _U(_U32(a[3 * P + j] + m[3 * stride + base + j]))
        h4 = _U(_U32(a[4 * P + j] + m[4 * stride + base + j]))
        d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1
        d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2
        d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3
        d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4
        d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0
        c = d0 >> 26
        h0 = d0 & _M26
        d1 += c
        c = d1 >> 26
        h1 = d1 & _M26
        d2 += c
        c = d2 >> 26
        h2 = d2 & _M26
        d3 += c
        c = d3 >> 26
        h3 = d3 & _M26
        d4 += c
        c = d4 >> 26
        h4 = d4 & _M26
        h0 += c * _FIVE
        c = h0 >> 26
        h0 &= _M26
        h1 += c
        a[j] = h0
        a[P + j] = h1
        a[2 * P + j] = h2
        a[3 * P + j] = h3
        a[4 * P + j] = h4


@njit
def _lanes_times_own_power(a, m, rev, lanes, stride, base):
    """As :func:`_lanes_times_r`, with lane j's own multiplier ``rev[i * _PLANES + j]`` (limb i)."""
    P = _U(_PLANES)
    for li in range(lanes):
        j = _U(li)
        r0 = _U(_U32(rev[j]))
        r1 = _U(_U32(rev[P + j]))
        r2 = _U(_U32(rev[2 * P + j]))
        r3 = _U(_U32(rev[3 * P + j]))
        r4 = _U(_U32(rev[4 * P + j]))
        s1 = _U(_U32(r1 * _FIVE))
        s2 = _U(_U32(r2 * _FIVE))
        s3 = _U(_U32(r3 * _FIVE))
        s4 = _U(_U32(r4 * _FIVE))
        h0 = _U(_U32(a[j] + m[base + j]))
        h1 = _U(_U32(a[P + j] + m[stride + base + j]))
        h2 = _U(_U32(a[2 * P + j] + m[2 * stride + base + j]))
        h3 = _U(_U32(a[3 * P + j] + m[3 * stride + base + j]))
        h4 = _U(_U32(a[4 * P + j] + m[4 * stride + base + j]))
        d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1
        d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2
        d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3
        d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4
        d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0
        c = d0 >> 26
        h0 = d0 & _M26
        d1 += c
        c = d1 >> 26
        h1 = d1 & _M26
        d2 += c
        c = d2 >> 26
        h2 = d2 & _M26
        d3 += c
        c = d3 >> 26
        h3 = d3 & _M26
        d4 += c
        c = d4 >> 26
        h4 = d4 & _M26
        h0 += c * _FIVE
        c = h0 >> 26
        h0 &= _M26
        h1 += c
        a[j] = h0
        a[P + j] = h1
        a[2 * P + j] = h2
        a[3 * P + j] = h3
        a[4 * P + j] = h4


@njit
def _poly_absorb_wide(h, r, buf, start, end):
    """:func:`_poly_absorb`, with runs of ``_PLANES`` full blocks processed side by side.

    Lane j accumulates blocks j, j + P, j + 2P, ... (P = _PLANES) Horner-style with r^P; after
    the last group lane j is multiplied by r^(P - j) instead, so the lanes sum to exactly what
    one block at a time computes (h enters as part of lane 0's first block). Messages with fewer
    than ``_POLY_MIN`` groups, and the blocks after the last whole group, take the one-block path.
    """
    groups = ((end - start) >> 4) // _PLANES
    if groups < _POLY_MIN:
        return _poly_absorb(h, r, buf, start, end)
    P = _U(_PLANES)
    chunk = min(groups, _POLY_CHUNK) * _PLANES  # blocks per chunk
    # One allocation: powers, reversed powers, lane accumulators, limbs, raw bytes (2 words/block).
    scratch = np.empty(15 * _PLANES + 7 * chunk, np.uint64)
    p = scratch[:5 * _PLANES]
    rev = scratch[5 * _PLANES:10 * _PLANES]
    a = scratch[10 * _PLANES:15 * _PLANES]
    m = scratch[15 * _PLANES:15 * _PLANES + 5 * chunk]
    raw = scratch[15 * _PLANES + 5 * chunk:].view(np.uint8)
    words = raw.view(np.uint32)
    _powers(p, r)
    for q in range(5 * _PLANES):  # lane j of the last group is multiplied by r^(P - j)
        rev[_U(q)] = p[_U(q - q % _PLANES + _PLANES - 1 - q % _PLANES)]
    for q in range(5 * _PLANES):
        a[_U(q)] = _ZERO
    a[_U(0)] = h[0]
    a[P] = h[1]
    a[2 * P] = h[2]
    a[3 * P] = h[3]
    a[4 * P] = h[4]
    lanes = len(a) // 5  # not a literal: see _lanes_times_r
    done = 0
    while done < groups:
        here = min(_POLY_CHUNK, groups - done)
        nb = here * _PLANES
        stride = _U(nb)
        src = _U(start + done * _PLANES * 16)
        for q in range(nb * 16):  # a plain copy: then the words are one vector load each
            raw[_U(q)] = buf[src + _U(q)]
        for bi in range(nb):
            b = _U(bi)
            t0 = _U(words[4 * b])
            t1 = _U(words[4 * b + 1])
            t2 = _U(words[4 * b + 2])
            t3 = _U(words[4 * b + 3])
            m[b] = t0 & _M26
            m[stride + b] = ((t0 >> 26) | (t1 << 6)) & _M26
            m[2 * stride + b] = ((t1 >> 20) | (t2 << 12)) & _M26
            m[3 * stride + b] = ((t2 >> 14) | (t3 << 18)) & _M26
            m[4 * stride + b] = (t3 >> 8) | _HIBIT
        done += here
        last = done == groups
        for g in range(here - 1 if last else here):
            _lanes_times_r(a, m, p[P - 1], p[2 * P - 1], p[3 * P - 1], p[4 * P - 1], p[5 * P - 1],
                           lanes, stride, _U(g) * P)
        if last:
            _lanes_times_own_power(a, m, rev, lanes, stride, _U(here - 1) * P)
    s0 = _ZERO
    s1 = _ZERO
    s2 = _ZERO
    s3 = _ZERO
    s4 = _ZERO
    for li in range(_PLANES):
        j = _U(li)
        s0 += a[j]
        s1 += a[P + j]
        s2 += a[2 * P + j]
        s3 += a[3 * P + j]
        s4 += a[4 * P + j]
    h = _carry(s0, s1, s2, s3, s4)
    return _poly_absorb(h, r, buf, start + groups * _PLANES * 16, end)


@njit
def _poly_finish(h, p0, p1, p2, p3):
    """Fully reduce h mod 2^130 - 5 (mask select, no branch), add s, return the tag's words."""
    h0, h1, h2, h3, h4 = h
    c = h1 >> 26
    h1 &= _M26
    h2 += c
    c = h2 >> 26
    h2 &= _M26
    h3 += c
    c = h3 >> 26
    h3 &= _M26
    h4 += c
    c = h4 >> 26
    h4 &= _M26
    h0 += c * _FIVE
    c = h0 >> 26
    h0 &= _M26
    h1 += c
    # g = h + 5 - 2^130; if that did not borrow, h >= p and the result is g.
    g0 = h0 + _FIVE
    c = g0 >> 26
    g0 &= _M26
    g1 = h1 + c
    c = g1 >> 26
    g1 &= _M26
    g2 = h2 + c
    c = g2 >> 26
    g2 &= _M26
    g3 = h3 + c
    c = g3 >> 26
    g3 &= _M26
    g4 = h4 + c - _P4  # wraps modulo 2^64 on borrow
    keep_g = (g4 >> 63) - _ONE  # all ones when no borrow, zero when it borrowed
    keep_h = ~keep_g
    h0 = (h0 & keep_h) | (g0 & keep_g)
    h1 = (h1 & keep_h) | (g1 & keep_g)
    h2 = (h2 & keep_h) | (g2 & keep_g)
    h3 = (h3 & keep_h) | (g3 & keep_g)
    h4 = (h4 & keep_h) | (g4 & keep_g)
    w0 = (h0 | (h1 << 26)) & _M32
    w1 = ((h1 >> 6) | (h2 << 20)) & _M32
    w2 = ((h2 >> 12) | (h3 << 14)) & _M32
    w3 = ((h3 >> 18) | (h4 << 8)) & _M32
    f = w0 + p0
    w0 = f & _M32
    f = w1 + p1 + (f >> 32)
    w1 = f & _M32
    f = w2 + p2 + (f >> 32)
    w2 = f & _M32
    f = w3 + p3 + (f >> 32)
    w3 = f & _M32
    return w0, w1, w2, w3


# -- the AEAD construction (RFC 8439 2.8) ---------------------------------------------------------


@njit
def _aead_tag(k, n0, n1, n2, aad, ct, ct_len):
    """The tag over ``aad`` and ``ct[:ct_len]``, with the one-time key from block 0."""
    b = _block(k, _ZERO, n0, n1, n2)
    r = _poly_key(b[0], b[1], b[2], b[3])
    h = (_ZERO, _ZERO, _ZERO, _ZERO, _ZERO)
    h = _poly_absorb(h, r, aad, 0, len(aad))
    h = _poly_absorb_wide(h, r, ct, 0, ct_len)
    a_len = np.uint64(len(aad))
    c_len = np.uint64(ct_len)
    h = _poly_block(h, r, a_len & _M32, a_len >> 32, c_len & _M32, c_len >> 32, _HIBIT)
    return _poly_finish(h, b[4], b[5], b[6], b[7])


@njit
def _seal(k, n0, n1, n2, msg, aad, out):
    n = len(msg)
    _xor_stream(k, _ONE, n0, n1, n2, msg, out, n)
    t = _aead_tag(k, n0, n1, n2, aad, out, n)
    _st32(out, n, t[0])
    _st32(out, n + 4, t[1])
    _st32(out, n + 8, t[2])
    _st32(out, n + 12, t[3])


@njit
def _open(k, n0, n1, n2, data, aad, out):
    n = len(data) - 16
    t = _aead_tag(k, n0, n1, n2, aad, data, n)
    diff = ((t[0] ^ _ld32(data, n)) | (t[1] ^ _ld32(data, n + 4)) | (t[2] ^ _ld32(data, n + 8))
            | (t[3] ^ _ld32(data, n + 12)))
    if diff != _ZERO:  # the only branch on a secret-derived value: the public accept/reject
        return 0
    _xor_stream(k, _ONE, n0, n1, n2, data, out, n)
    return 1


@njit
def _fits(n_bytes):
    # Blocks 1 .. 2^32 - 1 carry the message (block 0 is the Poly1305 key).
    return (n_bytes + 63) >> 6 < _MAX_BLOCKS


# -- entry points ---------------------------------------------------------------------------------

# cache=True: numba's on-disk cache (directory chosen by xpscerpto.plugins._jit_cache before this
# module is imported). Explicit signatures: compiled now, and never again for other types.
def _jit(signature):
    return njit(signature, cache=True)


@_jit(types.int64(_IN, _IN, _OUT))
def hchacha20(key, nonce, out):
    """``out[:32] = HChaCha20(key, nonce[:16])``; ``nonce`` may be a whole 24-byte XChaCha nonce."""
    if len(key) != 32 or len(nonce) < 16 or len(out) < 32:
        return BAD_LENGTH
    s = _hchacha(_key_words(key, 0), _ld32(nonce, 0), _ld32(nonce, 4), _ld32(nonce, 8), _ld32(nonce, 12))
    for i in range(8):
        _st32(out, 4 * i, s[i])
    return 0


@_jit(types.int64(_IN, _IN, types.int64, _IN, _OUT))
def chacha20_xor(key, nonce, counter, data, out):
    """``out = data XOR ChaCha20(key, nonce, counter)`` (RFC 8439 2.4, 12-byte nonce)."""
    n = len(data)
    if (len(key) != 32 or len(nonce) != 12 or len(out) != n or counter < 0 or counter >= _MAX_BLOCKS
            or (n + 63) // 64 > _MAX_BLOCKS - counter):
        return BAD_LENGTH
    _xor_stream(_key_words(key, 0), np.uint64(counter), _ld32(nonce, 0), _ld32(nonce, 4), _ld32(nonce, 8),
                data, out, n)
    return 0


@_jit(types.int64(_IN, _IN, _OUT))
def poly1305_mac(key, msg, out):
    """``out[:16] = Poly1305(key, msg)`` (RFC 8439 2.5: a short last block gets a 0x01 byte)."""
    if len(key) != 32 or len(out) < 16:
        return BAD_LENGTH
    r = _poly_key(_ld32(key, 0), _ld32(key, 4), _ld32(key, 8), _ld32(key, 12))
    n = len(msg)
    full = n & ~15
    h = (_ZERO, _ZERO, _ZERO, _ZERO, _ZERO)
    h = _poly_absorb_wide(h, r, msg, 0, full)
    if full < n:  # public: append 0x01 after the tail, no 2^128 bit
        t = [_ZERO, _ZERO, _ZERO, _ZERO]
        for j in range(4):
            t[j] = _ld32_tail(msg, full + 4 * j, n)
        pos = n - full
        t[pos >> 2] |= _ONE << np.uint64(8 * (pos & 3))
        h = _poly_block(h, r, t[0], t[1], t[2], t[3], _ZERO)
    w = _poly_finish(h, _ld32(key, 16), _ld32(key, 20), _ld32(key, 24), _ld32(key, 28))
    for i in range(4):
        _st32(out, 4 * i, w[i])
    return 0


@_jit(types.int64(_IN, _IN, _IN, _IN, _OUT))
def chacha20poly1305_seal(key, nonce, msg, aad, out):
    """``out = ciphertext || tag`` (RFC 8439 2.8); ``len(out)`` must be ``len(msg) + 16``."""
    if len(key) != 32 or len(nonce) != 12 or len(out) != len(msg) + 16 or not _fits(len(msg)):
        return BAD_LENGTH
    _seal(_key_words(key, 0), _ld32(nonce, 0), _ld32(nonce, 4), _ld32(nonce, 8), msg, aad, out)
    return 0


@_jit(types.int64(_IN, _IN, _IN, _IN, _OUT))
def chacha20poly1305_open(key, nonce, data, aad, out):
    """Verify ``data = ciphertext || tag``, then decrypt into ``out``: 1, or 0 if the tag is wrong.

    On 0, ``out`` was not written. ``len(out)`` must be ``len(data) - 16``.
    """
    if len(key) != 32 or len(nonce) != 12 or len(data) < 16 or len(out) != len(data) - 16:
        return BAD_LENGTH
    return _open(_key_words(key, 0), _ld32(nonce, 0), _ld32(nonce, 4), _ld32(nonce, 8), data, aad, out)


@njit
def _xkey(key, nonce):
    return _hchacha(_key_words(key, 0), _ld32(nonce, 0), _ld32(nonce, 4), _ld32(nonce, 8), _ld32(nonce, 12))


@_jit(types.int64(_IN, _IN, _IN, _IN, _OUT))
def xchacha20poly1305_seal(key, nonce, msg, aad, out):
    """XChaCha20-Poly1305: the AEAD under HChaCha20(key, nonce[:16]) and nonce 0^4 || nonce[16:]."""
    if len(key) != 32 or len(nonce) != 24 or len(out) != len(msg) + 16 or not _fits(len(msg)):
        return BAD_LENGTH
    _seal(_xkey(key, nonce), _ZERO, _ld32(nonce, 16), _ld32(nonce, 20), msg, aad, out)
    return 0


@_jit(types.int64(_IN, _IN, _IN, _IN, _OUT))
def xchacha20poly1305_open(key, nonce, data, aad, out):
    """As :func:`chacha20poly1305_open`, for XChaCha20-Poly1305 (24-byte nonce)."""
    if len(key) != 32 or len(nonce) != 24 or len(data) < 16 or len(out) != len(data) - 16:
        return BAD_LENGTH
    return _open(_xkey(key, nonce), _ZERO, _ld32(nonce, 16), _ld32(nonce, 20), data, aad, out)


#: Every compiled entry point, by name (the plugin resolves their native entry points once).
KERNELS = {
    "hchacha20": hchacha20,
    "chacha20_xor": chacha20_xor,
    "poly1305_mac": poly1305_mac,
    "chacha20poly1305_seal": chacha20poly1305_seal,
    "chacha20poly1305_open": chacha20poly1305_open,
    "xchacha20poly1305_seal": xchacha20poly1305_seal,
    "xchacha20poly1305_open": xchacha20poly1305_open,
}
