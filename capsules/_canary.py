"""Transitional implementations used while a capsule is staged: canary and dual-run.

Faults are reported by the exception's type only: a candidate's exception message could carry
anything (secrets included) and it goes into the audit journal.

Each wraps the *current* implementation (``old``) and the candidate (``new``) behind the same
provider contract, so the routing table and the API need no special case; they exist only in
tables published during staging, never in the steady-state one.

- Canary: a share of calls goes to ``new``; if ``new`` raises (or, on decrypt, refuses what
  ``old`` accepts) the call is answered by ``old`` and the fault reported. No call fails.
- Dual-run: every call is answered by ``old`` and shadowed through ``new``; a difference
  (output, or accept/refuse) is reported.
- Sampled (after cutover, for a while): ``new`` answers every call; one call in N is also
  computed by ``old`` and compared. On a difference the caller gets ``old``'s answer and the
  fault is reported (the updater rolls back). This is what catches a provider that behaves in
  the validation child and in KATs and serves wrong results under real traffic.

Canary calls are compared with ``old`` too, for the same reason: a canary that answers with a
wrong ciphertext (a fixed key, say) is reported and its answer replaced by ``old``'s.

AEAD is wrapped at the keyed-cipher level; other kinds per method.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from xpscerpto.interfaces import OPERATIONS, AeadCipher, Buffer

__all__ = ["Fault", "transitional"]

Fault = Callable[[str], None]

# Methods whose output is a function of the input, hence comparable in dual-run.
_DETERMINISTIC = {
    "sig": ("public_key", "verify"), "kex": ("public_key", "exchange"),
    "kem": ("public_key", "decapsulate"), "kdf": ("extract", "expand"),
}


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, exc


class _Raised:
    """What a shadowed call raised (so a result and a failure never share one variable)."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _attempt(fn: Callable[[bytes, Buffer, Buffer], bytes], nonce: bytes, data: Buffer,
             aad: Buffer) -> bytes | _Raised:
    try:
        return fn(nonce, data, aad)
    except Exception as exc:
        return _Raised(exc)


def _differs(a: bytes | _Raised, b: bytes | _Raised) -> bool:
    """Two outcomes disagree: one raised and the other did not, or they returned other bytes."""
    if isinstance(a, _Raised) or isinstance(b, _Raised):
        return isinstance(a, _Raised) != isinstance(b, _Raised)
    return bytes(a) != bytes(b)


def _what(label: str, method: str, new: object) -> str:
    if isinstance(new, _Raised):
        return f"{label} {method} raised {type(new.exc).__name__} where the current implementation did not"
    return f"{label} {method} differs from the current implementation"


class _CheckedKeyed:
    """Canary and sampled calls: ``new`` answers, checked against ``old``.

    On any difference (output, an exception, or accept/refuse) the fault is reported and the
    caller gets ``old``'s answer, so a wrong or failing candidate never reaches it.
    """

    __slots__ = ("_fault", "_label", "_new", "_old")

    def __init__(self, old: AeadCipher, new: AeadCipher, fault: Fault, label: str) -> None:
        self._old, self._new, self._fault, self._label = old, new, fault, label

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        out = _attempt(self._new.encrypt, nonce, data, aad)
        ref = self._old.encrypt(nonce, data, aad)
        if isinstance(out, _Raised) or bytes(out) != bytes(ref):
            self._fault(_what(self._label, "encrypt", out))
            return ref
        return out

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        out = _attempt(self._new.decrypt, nonce, data, aad)
        ref = _attempt(self._old.decrypt, nonce, data, aad)
        if _differs(out, ref):
            self._fault(_what(self._label, "decrypt", out))
        if isinstance(ref, _Raised):
            raise ref.exc
        return ref


class _ShadowKeyed:
    __slots__ = ("_fault", "_new", "_old")

    def __init__(self, old: AeadCipher, new: AeadCipher, fault: Fault) -> None:
        self._old, self._new, self._fault = old, new, fault

    def encrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        out = self._old.encrypt(nonce, data, aad)
        if _differs(_attempt(self._new.encrypt, nonce, data, aad), out):
            self._fault("dual-run encrypt differs from the current implementation")
        return out

    def decrypt(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        out = _attempt(self._old.decrypt, nonce, data, aad)
        if _differs(_attempt(self._new.decrypt, nonce, data, aad), out):
            self._fault("dual-run decrypt differs from the current implementation")
        if isinstance(out, _Raised):
            raise out.exc
        return out


class _TransitionalAead:
    """Contract-compatible AEAD built per call from old and new keyed ciphers."""

    def __init__(self, old: Any, new: Any, mode: str, share: float, fault: Fault) -> None:
        self.key_sizes, self.nonce_size, self.tag_size = old.key_sizes, old.nonce_size, old.tag_size
        self.auth_errors = (*old.auth_errors, *new.auth_errors)
        self._old, self._new, self._mode, self._fault = old, new, mode, fault
        self._every = max(1, round(1 / share)) if share > 0 else 0
        self._n = itertools.count()

    def cipher(self, key: Any) -> Any:
        if self._mode == "dual-run" or (self._every and next(self._n) % self._every == 0):
            old = self._old.cipher(key)
            try:
                new = self._new.cipher(key)
            except Exception as exc:  # the candidate's fault, reported; the current one answers
                self._fault(f"{self._mode} cipher raised {type(exc).__name__} where the current "
                            f"implementation did not")
                return old
            if self._mode == "dual-run":
                return _ShadowKeyed(old, new, self._fault)
            return _CheckedKeyed(old, new, self._fault, self._mode)
        # Unchecked calls: the candidate serves after cutover (sampled), the current one before.
        return (self._new if self._mode == "sampled" else self._old).cipher(key)


class _TransitionalOther:
    """Per-method canary/dual-run for signature, key-agreement, KEM and KDF contracts."""

    def __init__(self, kind: str, old: Any, new: Any, mode: str, share: float, fault: Fault) -> None:
        for attr in ("public_key_size", "secret_key_size", "signature_size", "shared_size",
                     "ciphertext_size", "hash_size", "max_output"):
            if hasattr(old, attr):
                setattr(self, attr, getattr(old, attr))
        self._kind, self._old, self._new, self._mode, self._fault = kind, old, new, mode, fault
        self._every = max(1, round(1 / share)) if share > 0 else 0
        self._n = itertools.count()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        old_fn, new_fn = getattr(self._old, method), getattr(self._new, method)
        comparable = method in _DETERMINISTIC.get(self._kind, ())

        def call(*args: Any) -> Any:
            if self._mode == "dual-run":
                ok_old, out = _outcome(old_fn, *args)
                if comparable:
                    ok_new, shadow = _outcome(new_fn, *args)
                    if ok_old != ok_new or (ok_old and shadow != out):
                        self._fault(f"dual-run {method} differs from the current implementation")
                if not ok_old:
                    raise out
                return out
            sampled = self._every and next(self._n) % self._every == 0
            if self._mode == "sampled" and not sampled:
                return new_fn(*args)
            if sampled:
                ok, out = _outcome(new_fn, *args)
                if ok and not comparable:  # nothing to compare (a fresh key pair, say)
                    return out
                ok_old, ref = _outcome(old_fn, *args)
                if ok and ok_old and out == ref:
                    return out
                if ok_old:
                    what = f"raised {type(out).__name__}" if not ok else "differs from the current implementation"
                    self._fault(f"{self._mode} {method} {what}")
                    return ref
                if ok and comparable:
                    self._fault(f"{self._mode} {method} accepted what the current implementation refuses")
                raise ref
            return old_fn(*args)

        return call


def transitional(operation: str, old: Any, new: Any, *, mode: str, share: float, fault: Fault) -> Any:
    """The implementation to route while staging or just after cutover.

    ``mode``: ``"canary"``, ``"dual-run"`` or ``"sampled"`` (``share``: the fraction of calls
    sampled or sent to the canary).
    """
    kind = OPERATIONS[operation].kind
    if kind == "aead":
        obj: Any = _TransitionalAead(old, new, mode, share, fault)
    else:
        obj = _TransitionalOther(kind, old, new, mode, share, fault)
    # Present as an instance of the contract so provider validation accepts it.
    contract = OPERATIONS[operation].contract
    wrapper_cls = type(f"Transitional{contract.__name__}", (type(obj), contract), {})
    obj.__class__ = wrapper_cls
    return obj
