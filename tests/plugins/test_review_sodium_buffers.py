"""Review API-1: a refused AEAD input must leave no buffer export behind in the sodium provider.

The adapter once took a cffi pointer (a buffer export) on the caller's plaintext view before it
checked the aad. The refused call's frames, kept alive by the error's traceback, then held that
export in a reference cycle with the view, and a later garbage collection crashed the process
(SIGSEGV, rc=139). The crash needs a real process: each case runs in a subprocess. The script
keeps each error the way a caller may (in a frame its traceback reaches), so what is tested is
the adapter's own release of its pointers, whatever the engine does with its frames.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.errors import PolicyError
from xpscerpto.plugins.sodium import XChaCha20Poly1305Impl, _AegisKeyed, _ChaChaKeyed, _XChaChaKeyed

# One refused call per round (the plaintext, ciphertext or key as a view; the aad refused), with
# a collection every few hundred rounds: the old adapter died within the first thousand.
_SCRIPT = textwrap.dedent("""
    import array, gc, sys
    import xpscerpto as xps
    from xpscerpto.plugins.sodium import XChaCha20Poly1305Impl, _AegisKeyed, _XChaChaKeyed

    case, mode = sys.argv[1], sys.argv[2]
    key = bytes(32)
    eng = xps.Engine(xps.EngineConfig.from_mapping({"prefer": {"aead.chacha20poly1305": "sodium"}}))
    keyed = {a: eng.aead.keyed(a, key, nonce_reuse="caller")
             for a in ("XCHACHA20-POLY1305", "AEGIS-256", "CHACHA20-POLY1305")}
    assert {eng.aead.info(a)["provider"] for a in keyed} == {"sodium"}, "not served by sodium"
    sealed = {a: eng.aead.encrypt(a, key, b"p" * 64, b"hdr") for a in keyed}
    packet = {a: b"H" * 8 + bytes(s[1]) for a, s in sealed.items()}

    def released():
        m = memoryview(b"hdr")
        m.release()
        return m

    def strided():
        return memoryview(b"hdrhdr")[::2]

    def call(view):
        if case == "xchacha-encrypt-strided-aad":
            eng.aead.encrypt("XCHACHA20-POLY1305", key, view, strided())
        elif case == "aegis-encrypt-released-aad":
            eng.aead.encrypt("AEGIS-256", key, view, released())
        elif case == "aegis-encrypt-array-I-aad":
            eng.aead.encrypt("AEGIS-256", key, view, array.array("I", [1, 2]))
        elif case == "chacha-sodium-encrypt-strided-aad":
            eng.aead.encrypt("CHACHA20-POLY1305", key, view, strided())
        elif case == "xchacha-encrypt-view-key-strided-aad":
            eng.aead.encrypt("XCHACHA20-POLY1305", memoryview(bytearray(32)), b"p" * 64, strided())
        elif case == "xchacha-encrypt-strided-plaintext-view-aad":
            eng.aead.encrypt("XCHACHA20-POLY1305", key, memoryview(bytes(128))[::2], view)
        elif case == "xchacha-decrypt-released-aad":
            s = sealed["XCHACHA20-POLY1305"]
            eng.aead.decrypt("XCHACHA20-POLY1305", key, s[0], view[:-16], view[-16:], released())
        elif case == "aegis-open-released-aad":
            s = sealed["AEGIS-256"]
            eng.aead.open("AEGIS-256", key, xps.Sealed.of(s[0], view, 32), released())
        elif case == "keyed-xchacha-encrypt-strided-aad":
            keyed["XCHACHA20-POLY1305"].encrypt(view, strided())
        elif case == "keyed-aegis-encrypt-wire-released-aad":
            keyed["AEGIS-256"].encrypt_wire(bytes(32), view, released())
        elif case == "keyed-chacha-sodium-encrypt-wire-array-I-aad":
            keyed["CHACHA20-POLY1305"].encrypt_wire(bytes(12), view, array.array("I", [1, 2]))
        elif case == "keyed-xchacha-decrypt-released-aad":
            keyed["XCHACHA20-POLY1305"].decrypt(sealed["XCHACHA20-POLY1305"][0], view, released())
        elif case == "provider-xchacha-encrypt-strided-aad":  # the adapter alone, no engine around it
            _XChaChaKeyed(memoryview(bytearray(32))).encrypt(bytes(24), view, strided())
        elif case == "provider-aegis-decrypt-released-aad":
            _AegisKeyed(key).decrypt(sealed["AEGIS-256"][0], view, released())
        elif case == "provider-xchacha-decrypt-detached-ints-aad":
            XChaCha20Poly1305Impl().decrypt_detached(key, sealed["XCHACHA20-POLY1305"][0], view[:-16], view[-16:],
                                                     array.array("I", [1, 2]))
        else:
            raise SystemExit("unknown case " + case)

    def attempt(view):
        try:
            call(view)
        except (xps.PolicyError, BufferError, TypeError, ValueError) as e:
            # A caller keeping its error (to log it later, say): the error's traceback reaches
            # this frame, which holds the error: a cycle only the collector frees, whatever the
            # engine does with its own frames.
            err = e
            if case.startswith("provider-"):  # the adapter's own refusal, typed by the engine
                return isinstance(err, (BufferError, TypeError, ValueError))
            return isinstance(err, xps.PolicyError) and ("aad" in str(err) or "plaintext" in str(err))
        return False

    refused = 0
    for i in range(3000):
        if "decrypt" in case or case.startswith("aegis-open"):
            algo = "AEGIS-256" if "aegis" in case else "XCHACHA20-POLY1305"
            view = memoryview(packet[algo])[8:]   # a zero-copy slice of a received datagram
        else:
            view = memoryview(bytearray(b"p" * 64))  # a slice of a receive buffer, say
        refused += attempt(view)
        if mode == "release":
            view.release()  # BufferError if the provider still held an export of it
        del view
        if i % 300 == 299:
            gc.collect()  # once a crash: a view cleared before the pointer exporting it
    print("refused", refused)
""")

CASES = [
    "xchacha-encrypt-strided-aad",
    "aegis-encrypt-released-aad",
    "aegis-encrypt-array-I-aad",
    "chacha-sodium-encrypt-strided-aad",
    "xchacha-encrypt-view-key-strided-aad",
    "xchacha-encrypt-strided-plaintext-view-aad",
    "xchacha-decrypt-released-aad",
    "aegis-open-released-aad",
    "keyed-xchacha-encrypt-strided-aad",
    "keyed-aegis-encrypt-wire-released-aad",
    "keyed-chacha-sodium-encrypt-wire-array-I-aad",
    "keyed-xchacha-decrypt-released-aad",
    "provider-xchacha-encrypt-strided-aad",
    "provider-aegis-decrypt-released-aad",
    "provider-xchacha-decrypt-detached-ints-aad",
]


@pytest.mark.parametrize("mode", ["release", "gc"])
@pytest.mark.parametrize("case", CASES)
def test_refused_inputs_never_crash_the_process_at_a_later_collection(case: str, mode: str) -> None:
    """``release``: the caller's view can be released right after the refusal (no export left);
    ``gc``: left to the collector, which once crashed the process (rc=139)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPS_", "NUMBA_"))}
    out = subprocess.run([sys.executable, "-c", _SCRIPT, case, mode], capture_output=True, text=True,
                         timeout=240, env=env, check=False)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["refused", "3000"], out.stderr[-2000:]
    assert "exported buffer" not in out.stderr


def _views() -> dict[str, Callable[[], Any]]:
    def released() -> memoryview:
        m = memoryview(b"hdr")
        m.release()
        return m
    return {"strided": lambda: memoryview(b"hdrhdr")[::2], "released": released,
            "ints": lambda: array.array("I", [1, 2])}


@pytest.mark.parametrize("cls", [_ChaChaKeyed, _XChaChaKeyed, _AegisKeyed])
def test_the_adapter_holds_no_export_of_any_buffer_after_a_refusal(cls: Any) -> None:
    """Checked before any pointer is taken, released on every path: the caller's views can go."""
    npub = {_ChaChaKeyed: 12, _XChaChaKeyed: 24, _AegisKeyed: 32}[cls]
    good_wire = cls(bytes(32)).encrypt(bytes(npub), b"p" * 64, b"")
    for bad in _views().values():
        for op in ("encrypt", "decrypt"):
            key = memoryview(bytearray(32))
            data = memoryview(bytearray(b"p" * 64) if op == "encrypt" else bytearray(good_wire))
            cipher = cls(key)
            with pytest.raises((TypeError, BufferError, ValueError)):
                getattr(cipher, op)(bytes(npub), data, bad())
            data.release()  # raises BufferError while an export of it is held
            del cipher
            key.release()
            # and the other way round: a refused data buffer after a good aad view
            aad = memoryview(bytearray(b"hdr"))
            with pytest.raises((TypeError, BufferError, ValueError)):
                getattr(cls(bytes(32)), op)(bytes(npub), bad(), aad)
            aad.release()


def test_a_view_key_is_not_pinned_by_a_cipher_between_calls() -> None:
    """A key given as a view is read in place for each call, not pinned by the cipher."""
    key = memoryview(bytearray(range(32)))
    cipher = _XChaChaKeyed(key)
    wire = cipher.encrypt(bytes(24), b"m", b"")
    key.release()  # no export of the caller's view outlives the call
    with pytest.raises(ValueError):
        cipher.encrypt(bytes(24), b"m", b"")  # the released key is refused, not read
    assert _XChaChaKeyed(bytes(range(32))).decrypt(bytes(24), wire, b"") == b"m"


def test_detached_decrypt_releases_its_pointers_after_a_refusal() -> None:
    sodium = XChaCha20Poly1305Impl()
    wire = _XChaChaKeyed(bytes(32)).encrypt(bytes(24), b"p" * 64, b"")
    for bad in _views().values():
        ct = memoryview(bytearray(wire[:-16]))
        tag = memoryview(bytearray(wire[-16:]))
        with pytest.raises((TypeError, BufferError, ValueError)):
            sodium.decrypt_detached(bytes(32), bytes(24), ct, tag, bad())
        ct.release()
        tag.release()
    ct = memoryview(bytearray(wire[:-16]))
    assert sodium.decrypt_detached(bytearray(32), bytes(24), ct, wire[-16:], b"") == b"p" * 64
    ct.release()


def test_a_refused_aad_is_a_policy_error_in_process_too() -> None:
    view = memoryview(bytearray(64))
    with pytest.raises(PolicyError, match="aad"):
        xps.aead.encrypt("XCHACHA20-POLY1305", bytes(32), view, memoryview(b"hdrhdr")[::2])
    view.release()
