"""A refused AEAD call keeps none of the caller's buffers alive once it has raised (review API-1).

The engine used to keep the error it raised in a local of its own frame (``err = ...; raise err
from err.__cause__``): the error's traceback points back at that frame, so error and frame made
a reference cycle. It held the caller's buffers (the engine frame's arguments) and, through the
error's context, the provider's frame, until a later garbage collection. When that provider had
a cffi pointer on a caller's memoryview (sodium took one on the plaintext before refusing the
aad), the collector cleared the exported view first and CPython crashed (SIGSEGV) releasing
the pointer.

Every test here runs with the cyclic collector off: what is still alive after the ``except``
block is held by a cycle (or by the error the caller still holds), and a bytearray cannot be
resized while any view of it is alive.
"""

from __future__ import annotations

import array
import gc
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import xpscerpto as xps
from cffi import FFI
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto import Engine, EngineConfig, XpsError
from xpscerpto.interfaces import Aead, Provider

from tests.fakes.providers import ProviderPlugin

ROOT = Path(__file__).resolve().parents[2]
_FFI = FFI()

# Algorithm -> nonce size; AES-256-GCM is served by openssl, the other two by sodium.
NONCE = {"AES-256-GCM": 12, "XCHACHA20-POLY1305": 24, "AEGIS-256": 32}
TAG = {"AES-256-GCM": 16, "XCHACHA20-POLY1305": 16, "AEGIS-256": 32}


@pytest.fixture(autouse=True)
def no_cyclic_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _released() -> memoryview:
    view = memoryview(b"aad")
    view.release()
    return view


def _strided() -> memoryview:
    return memoryview(b"aadaad")[::2]


def _resizable(buf: bytearray) -> bool:
    try:
        buf.extend(b"!")
    except BufferError:
        return False
    del buf[-1]
    return True


def _refused(call: Callable[[], object]) -> XpsError:
    try:
        call()
    except XpsError as e:
        return e
    raise AssertionError("the call was not refused")


# Each case: (name, call(aead_api, keyed_aead, buf, algorithm)) where ``buf`` is a bytearray the
# call sees only through a memoryview it makes (the caller keeps no view of its own).
Call = Callable[[Any, Any, bytearray, str], object]
CASES: list[tuple[str, Call]] = [
    ("encrypt/plaintext-view+strided-aad",
     lambda a, k, buf, algo: a.encrypt(algo, bytes(32), memoryview(buf), _strided())),
    ("encrypt/aad-view-strided",
     lambda a, k, buf, algo: a.encrypt(algo, bytes(32), b"m", memoryview(buf)[::2])),
    ("encrypt/plaintext-view+array-I-aad",
     lambda a, k, buf, algo: a.encrypt(algo, bytes(32), memoryview(buf), array.array("I", [1, 2]))),
    ("encrypt/key-view-wrong-size",
     lambda a, k, buf, algo: a.encrypt(algo, memoryview(buf)[:31], b"m")),
    ("encrypt/nonce-view-wrong-size",
     lambda a, k, buf, algo: a.encrypt(algo, bytes(32), b"m", nonce=memoryview(buf)[:5])),
    ("decrypt/ciphertext-view+released-aad",
     lambda a, k, buf, algo: a.decrypt(algo, bytes(32), bytes(NONCE[algo]), memoryview(buf), bytes(TAG[algo]),
                                       _released())),
    ("decrypt/aad-view-strided",
     lambda a, k, buf, algo: a.decrypt(algo, bytes(32), bytes(NONCE[algo]), b"c", bytes(TAG[algo]),
                                       memoryview(buf)[::2])),
    ("open/aad-view-strided",
     lambda a, k, buf, algo: a.open(algo, bytes(32), a.encrypt(algo, bytes(32), b"m"), memoryview(buf)[::2])),
    ("keyed.encrypt/plaintext-view+strided-aad",
     lambda a, k, buf, algo: k.encrypt(memoryview(buf), _strided())),
    ("keyed.encrypt/aad-view-strided",
     lambda a, k, buf, algo: k.encrypt(b"m", memoryview(buf)[::2])),
    ("keyed.encrypt-nonce/plaintext-view+released-aad",
     lambda a, k, buf, algo: k.encrypt(memoryview(buf), _released(), nonce=os.urandom(NONCE[algo]))),
    ("keyed.encrypt_wire/plaintext-view+released-aad",
     lambda a, k, buf, algo: k.encrypt_wire(os.urandom(NONCE[algo]), memoryview(buf), _released())),
    ("keyed.encrypt_wire/nonce-view-wrong-size",
     lambda a, k, buf, algo: k.encrypt_wire(memoryview(buf)[:5], b"m")),
    ("keyed.decrypt/aad-view-strided",
     lambda a, k, buf, algo: k.decrypt(bytes(NONCE[algo]), bytes(48), memoryview(buf)[::2])),
    ("keyed.decrypt/nonce-view-wrong-size",
     lambda a, k, buf, algo: k.decrypt(memoryview(buf)[:5], bytes(48))),
]


@pytest.mark.parametrize("algo", list(NONCE))
@pytest.mark.parametrize(("name", "call"), CASES, ids=[c[0] for c in CASES])
def test_a_refused_call_keeps_no_view_of_the_callers_buffer_alive(algo: str, name: str, call: Any) -> None:
    keyed = xps.aead.keyed(algo, bytes(32), nonce_reuse="caller")
    buf = bytearray(b"p" * 64)
    err = _refused(lambda: call(xps.aead, keyed, buf, algo))
    assert err.code in ("XPS_ERR_POLICY", "XPS_ERR_KEY", "XPS_ERR_NONCE", "XPS_ERR_AUTH"), err
    del err
    # Nothing but a reference cycle could still hold the view the call was given.
    assert _resizable(buf), f"{name}: a view of the caller's buffer outlived the refused call"


@pytest.mark.parametrize("algo", list(NONCE))
def test_the_refused_error_keeps_its_cause_and_suppresses_the_providers_context(algo: str) -> None:
    # What `raise err from err.__cause__` gave callers stays as it was.
    err = _refused(lambda: xps.aead.encrypt(algo, bytes(32), b"m", _strided()))
    assert err.__suppress_context__ is True
    assert "aad" in str(err)


# -- a provider that pins the caller's buffer before it refuses another one --------------------


class _PinningCipher:
    """AES-256-GCM that takes a cffi pointer on ``data`` before it checks ``associated_data``:
    what sodium did when API-1 was found (a provider may legitimately work that way)."""

    def __init__(self, key: Any) -> None:
        self._aes = AESGCM(bytes(_check(key)))

    def encrypt(self, nonce: bytes, data: Any, associated_data: Any) -> bytes:
        pinned = _FFI.from_buffer(_check(data))
        aad = _check(b"" if associated_data is None else associated_data)
        return self._aes.encrypt(nonce, _FFI.buffer(pinned)[:], aad)

    def decrypt(self, nonce: bytes, data: Any, associated_data: Any) -> bytes:
        pinned = _FFI.from_buffer(_check(data))
        aad = _check(b"" if associated_data is None else associated_data)
        return self._aes.decrypt(nonce, _FFI.buffer(pinned)[:], aad)


def _check(buf: Any) -> Any:
    """Refuse what pyca refuses (checks_buffers): not one C-contiguous run of bytes, or released."""
    with memoryview(buf) as view:
        if view.itemsize != 1 or view.format not in ("B", "b", "c") or not view.c_contiguous:
            raise TypeError("not a contiguous byte buffer")
    return buf


class PinningAesGcm(Aead):
    key_sizes: ClassVar[tuple[int, ...]] = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)
    checks_buffers = True

    def cipher(self, key: Any) -> _PinningCipher:
        return _PinningCipher(key)


def pinning_engine() -> Engine:
    provider = Provider(name="pinning", backend="test", version="1",
                        implementations={"aead.aes256gcm": PinningAesGcm()}, priority=10_000)
    return Engine(EngineConfig(prefer={"aead.aes256gcm": "pinning"}, autotune=False),
                  plugins=[ProviderPlugin((provider,))])


@pytest.fixture(scope="module")
def pinning() -> Engine:
    eng = pinning_engine()
    assert eng.aead.info("AES-256-GCM")["provider"] == "pinning"
    return eng


@pytest.mark.parametrize("shape", ["encrypt", "keyed.encrypt", "keyed.encrypt_wire", "keyed.decrypt"])
def test_a_caller_can_release_its_view_while_it_holds_the_refusal(pinning: Engine, shape: str) -> None:
    # The provider's frame (and its pointer on the caller's view) is not reachable from the
    # error the caller holds: a caller that releases its views in its error handler can.
    keyed = pinning.aead.keyed("AES-256-GCM", bytes(32), nonce_reuse="caller")
    # A read-only view of bytes reaches a decrypting provider as it is (nothing can change it).
    view = memoryview(bytes(64)) if shape == "keyed.decrypt" else memoryview(bytearray(64))
    calls: dict[str, Callable[[], object]] = {
        "encrypt": lambda: pinning.aead.encrypt("AES-256-GCM", bytes(32), view, _strided()),
        "keyed.encrypt": lambda: keyed.encrypt(view, _released()),
        "keyed.encrypt_wire": lambda: keyed.encrypt_wire(bytes(12), view, _strided()),
        "keyed.decrypt": lambda: keyed.decrypt(bytes(12), view, _strided()),
    }
    try:
        calls[shape]()
    except XpsError as e:
        assert e.code == "XPS_ERR_POLICY"
        view.release()  # BufferError if the provider's pointer were still alive
    else:
        raise AssertionError("the call was not refused")


_LOOP = """
import gc, sys
import xpscerpto as xps
{setup}
for i in range(6000):
    view = memoryview({data})
    aad = memoryview(b"aadaad")[::2]
    try:
        {call}
    except xps.XpsError:
        pass
    del view, aad
    if i % 500 == 499:
        gc.collect()
print("survived")
"""

LOOPS = {
    "pinning-provider-encrypt": (
        "from tests.engine.test_review_api_frames import pinning_engine\neng = pinning_engine()",
        "eng.aead.encrypt('AES-256-GCM', bytes(32), view, aad)"),
    "pinning-provider-keyed-decrypt": (
        "from tests.engine.test_review_api_frames import pinning_engine\n"
        "k = pinning_engine().aead.keyed('AES-256-GCM', bytes(32))",
        "k.decrypt(bytes(12), view, aad)"),
    "sodium-xchacha-encrypt": ("", "xps.aead.encrypt('XCHACHA20-POLY1305', bytes(32), view, aad)"),
    "sodium-aegis-keyed-encrypt_wire": (
        "k = xps.aead.keyed('AEGIS-256', bytes(32), nonce_reuse='caller')", "k.encrypt_wire(bytes(32), view, aad)"),
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_refused_calls_with_views_survive_garbage_collection(loop: str) -> None:
    setup, call = LOOPS[loop]
    # A decryption copies a writable view before a provider sees it; a view of bytes goes as it is.
    data = 'b"p" * 64' if "decrypt" in loop else 'bytearray(b"p" * 64)'
    env = {**os.environ, "XPS_AUTOTUNE": "0"}
    code = _LOOP.format(setup=setup, call=call, data=data)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and "survived" in out.stdout, (out.returncode, out.stderr[-2000:])
    assert "exported buffer" not in out.stderr
