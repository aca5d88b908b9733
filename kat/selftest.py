"""Power-on self-tests: every provider passes its operations' KATs before it is routed.

As FIPS 140-3 asks of a module before first use, each (provider, operation) pair runs a
handful of known answers — correct outputs *and* a rejected forgery — against the provider's
raw implementation. A pair that fails is never routed; the reason is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from xpscerpto._stored_file import read_stored
from xpscerpto.errors import AuthError, PolicyError
from xpscerpto.interfaces import Aead

__all__ = ["KatResult", "parse_vectors", "run_selftest", "selftest_vectors"]

_DIR = Path(__file__).with_name("selftest")
#: A self-test file holds a handful of vectors (a few kilobytes); a capsule's, a few more.
MAX_KAT_FILE = 4 << 20
#: Fields that are text, not hex byte strings.
_TEXT = frozenset({"result", "source"})


@dataclass(frozen=True, slots=True)
class KatResult:
    """Outcome of one provider x operation self-test."""

    provider: str
    operation: str
    passed: bool
    vectors: int
    seconds: float
    failure: str | None = None

    def __bool__(self) -> bool:
        return self.passed


class KatFailure(Exception):
    """A known answer did not match (internal to this module)."""


def json_document(raw: bytes | str, name: str) -> Any:
    """``raw`` parsed as JSON, or a PolicyError naming ``name`` (never a JSON or recursion error)."""
    try:
        return json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        raise PolicyError(f"{name}: not JSON") from None
    except RecursionError:
        raise PolicyError(f"{name}: not JSON (nested too deeply)") from None


def parse_vectors(raw: bytes | str, name: str = "KAT file") -> tuple[dict[str, Any], ...]:
    """Parse a self-test vector file (``{"vectors": [...]}``, hex strings) into dicts of bytes.

    Raises:
        PolicyError: naming ``name`` and the vector and field, never their content: not JSON,
            not that shape, a hex field that is not hex (a vector must not pass or fail for
            a reason other than its known answer), or larger than :data:`MAX_KAT_FILE`.
    """
    if not isinstance(raw, bytes | str):
        raise PolicyError(f"{name}: expected bytes or str, got {type(raw).__name__}")
    if len(raw) > MAX_KAT_FILE:
        raise PolicyError(f"{name}: larger than {MAX_KAT_FILE} bytes")
    doc = json_document(raw, name)
    vectors = doc.get("vectors") if isinstance(doc, dict) else None
    if not isinstance(vectors, list):
        raise PolicyError(f"{name}: expected an object with a 'vectors' list")
    out = []
    for i, v in enumerate(vectors):
        if not isinstance(v, dict):
            raise PolicyError(f"{name}: vectors[{i}]: expected an object")
        parsed: dict[str, Any] = {}
        for k, x in v.items():
            parsed[k] = x
            if isinstance(x, str) and k not in _TEXT:
                try:
                    parsed[k] = bytes.fromhex(x)
                except ValueError:
                    raise PolicyError(f"{name}: vectors[{i}].{_field(k)}: expected hex digits") from None
        out.append(parsed)
    return tuple(out)


def _field(key: str) -> str:
    # A field name from the file, shown only if it looks like one (the file may be anyone's).
    return key if len(key) <= 32 and key.isascii() and key.isidentifier() else "a field"


@cache
def _load(path: Path) -> tuple[dict[str, Any], ...]:
    name = f"KAT file {str(path)!r}"
    try:
        raw = read_stored(path, MAX_KAT_FILE)  # never a FIFO, /dev/zero or a huge file
    except OSError as exc:
        raise PolicyError(f"{name}: unreadable ({exc.strerror})") from None
    return parse_vectors(raw, name)


def selftest_vectors(operation: str, extra_files: Iterable[str | Path] = ()) -> tuple[dict[str, Any], ...]:
    """The engine's self-test vectors for ``operation`` plus a provider's own files."""
    vectors = list(_load(_DIR / f"{operation}.json"))
    for f in extra_files:
        vectors.extend(_load(Path(f)))
    return tuple(vectors)


def _expect(cond: bool, what: str, v: dict[str, Any]) -> None:
    if not cond:
        raise KatFailure(f"{what} (vector {v.get('source', '?')})")


def _rejects(fn: Callable[[], object], errors: tuple[type[BaseException], ...] = ()) -> bool:
    try:
        fn()
    except BaseException as exc:
        if isinstance(exc, (AuthError, *errors)):
            return True
        raise
    return False


def _aead(impl: Any, v: dict[str, Any]) -> None:
    key, nonce, aad, msg = v["key"], v["nonce"], v["aad"], v["msg"]
    wire = v["ct"] + v["tag"]
    errors = tuple(impl.auth_errors)

    def seal() -> bytes:
        return impl.cipher(key).encrypt(nonce, msg, aad)  # type: ignore[no-any-return]

    def open_(data: bytes) -> bytes:
        return impl.cipher(key).decrypt(nonce, data, aad)  # type: ignore[no-any-return]

    # A provider's tag-separate decrypt answers to the same vectors as its decrypt.
    ts = impl.tag_size
    openers = [open_]
    if type(impl).decrypt_detached is not Aead.decrypt_detached:
        openers.append(lambda data: impl.decrypt_detached(key, nonce, data[:-ts], data[-ts:], aad))

    if len(v["tag"]) != impl.tag_size:
        # A vector made for another tag length (Wycheproof's AEGIS-256 uses 128-bit tags):
        # the ciphertext is still a known answer; the tag is checked by round trip only.
        _expect(v["result"] == "valid", "invalid vector with a foreign tag size", v)
        out = seal()
        _expect(out[: len(v["ct"])] == v["ct"], "encrypt output differs", v)
        for opener in openers:
            _expect(opener(out) == msg, "round trip differs", v)
        return
    if v["result"] == "valid":
        _expect(seal() == wire, "encrypt output differs", v)
        bad = bytearray(wire)
        bad[-1] ^= 1
        for opener in openers:
            _expect(opener(wire) == msg, "decrypt output differs", v)
            _expect(_rejects(lambda: opener(bytes(bad)), errors), "accepted a flipped tag bit", v)  # noqa: B023
    else:
        for opener in openers:
            _expect(_rejects(lambda: opener(wire), errors), "accepted an invalid tag", v)  # noqa: B023


def _sig(impl: Any, v: dict[str, Any]) -> None:
    ctx = v.get("ctx", b"")
    pk, msg, sig = v["pk"], v["msg"], v["sig"]
    if "sk" in v:
        _expect(impl.public_key(v["sk"]) == pk, "public key derivation differs", v)
        if v.get("deterministic"):
            _expect(impl.sign(v["sk"], msg, ctx) == sig, "signature differs", v)
        else:  # hedged schemes (ML-DSA) sign with fresh randomness: check it verifies
            impl.verify(pk, msg, impl.sign(v["sk"], msg, ctx), ctx)
    if v["result"] == "valid":
        impl.verify(pk, msg, sig, ctx)
        forged = bytearray(sig)
        forged[0] ^= 1
        _expect(_rejects(lambda: impl.verify(pk, msg, bytes(forged), ctx)), "accepted a forgery", v)
    else:
        _expect(_rejects(lambda: impl.verify(pk, msg, sig, ctx)), "accepted an invalid signature", v)


def _kex(impl: Any, v: dict[str, Any]) -> None:
    _expect(bytes(impl.exchange(v["private"], v["public"])) == v["shared"], "shared secret differs", v)


def _kem(impl: Any, v: dict[str, Any]) -> None:
    _expect(impl.public_key(v["seed"]) == v["ek"], "encapsulation key derivation differs", v)
    _expect(bytes(impl.decapsulate(v["seed"], v["c"])) == v["K"], "decapsulated secret differs", v)
    ct, ss = impl.encapsulate(v["ek"])
    _expect(bytes(impl.decapsulate(v["seed"], ct)) == bytes(ss), "encapsulate/decapsulate disagree", v)


def _kdf(impl: Any, v: dict[str, Any]) -> None:
    prk = impl.extract(v["salt"], v["ikm"])
    _expect(bytes(impl.expand(prk, v["info"], v["size"])) == v["okm"], "okm differs", v)


_CHECKS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "aead": _aead, "sig": _sig, "kex": _kex, "kem": _kem, "kdf": _kdf,
}


def run_selftest(provider: str, operation: str, kind: str, impl: object,
                 extra_files: Iterable[str | Path] = (),
                 extra_vectors: Iterable[dict[str, Any]] = ()) -> KatResult:
    """Run the self-test for one provider implementation; never raises.

    Args:
        provider: provider name (for the result).
        operation: operation name, e.g. ``"aead.aes256gcm"``.
        kind: the operation's kind (``"aead"``, ``"sig"``…).
        impl: the provider's raw implementation.
        extra_files: the provider's own KAT files for this operation.
        extra_vectors: more vectors already parsed (a capsule's in-memory KAT files).
    """
    start = time.perf_counter()
    n = 0
    try:
        vectors = (*selftest_vectors(operation, extra_files), *extra_vectors)
        check = _CHECKS[kind]
        for v in vectors:
            check(impl, v)
            n += 1
        if not vectors:
            raise KatFailure("no vectors")
    except Exception as exc:  # any fault in a provider under test is a failed KAT
        reason = str(exc) if isinstance(exc, KatFailure) else f"{type(exc).__name__}: {exc}"
        return KatResult(provider, operation, False, n, time.perf_counter() - start, reason)
    return KatResult(provider, operation, True, n, time.perf_counter() - start)
