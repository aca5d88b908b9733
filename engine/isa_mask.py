"""The incident mask: take backends or CPU features out of routing at once.

During an incident (a CVE in one library's AVX-512 path, a miscompiling JIT) an operator
removes what is affected without a release: ``XPS_SIMD_ISA_MASK=-avx512,-jit`` in the
environment, or ``crypto.engine.isa_mask`` in the configuration (an emergency key, so
``XpsConfig.emergency_change`` republishes the routing table with it). Both apply; their
union is the mask. A token names:

* a backend: a provider name (``-sodium``, ``-jit``) or a library a provider declares it uses
  (``-openssl`` also removes ``jit-openssl``, which runs OpenSSL's ChaCha20-Poly1305);
* a CPU feature family, matched as a prefix of ``/proc/cpuinfo`` flag names
  (``-avx512`` removes every implementation that needs any ``avx512*`` flag).

Implementations the mask removes are skipped when a table is built (``xps providers`` says
why); a call never reads the mask. ``-avx512`` also demotes OpenSSL's own AVX-512 code paths,
through ``OPENSSL_ia32cap``, which OpenSSL reads once when it loads: :func:`demote_openssl`
sets it when ``xpscerpto`` is imported before ``cryptography`` is (the ``xps`` command always
is), and :func:`openssl_demotion` reports whether it took effect in this process.

Example:
    >>> sorted(parse("-jit, -AVX512 +sse2"))
    ['avx512', 'jit']
    >>> masked_by(("jit", "openssl"), frozenset({"avx512f"}), frozenset({"openssl"}))
    '-openssl'
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from .errors import PolicyError

__all__ = [
    "MASK_ENV",
    "OPENSSL_AVX512_OFF",
    "cpu_flags",
    "demote_openssl",
    "effective",
    "masked_by",
    "openssl_demotion",
    "parse",
]

MASK_ENV = "XPS_SIMD_ISA_MASK"
#: ``OPENSSL_ia32cap`` value that clears AVX512F, DQ, IFMA, BW and VL in the CPUID(7).EBX word
#: OpenSSL consults, so it takes its AVX2 paths instead (see OpenSSL's ``OPENSSL_ia32cap(3)``).
OPENSSL_AVX512_OFF = ":~0xC0230000"
_TOKEN = re.compile(r"^[a-z0-9_.-]{1,64}$")


def parse(text: str, *, strict: bool = True) -> frozenset[str]:
    """The removed tokens of a mask string (``-token`` entries, comma or space separated).

    ``+token`` entries and anything without a sign are ignored: the mask only removes. With
    ``strict=False`` a malformed token is dropped instead of refused: plugin discovery uses
    that, so an odd mask never breaks loading, while the engine (:func:`effective`) refuses it
    when it builds a table and the operator learns of it there.

    Raises:
        PolicyError: ``text`` is not a string, or (strict) a token has characters outside
            ``a-z0-9_.-``.
    """
    if not isinstance(text, str):
        raise PolicyError(f"mask: expected a string, got {type(text).__name__}")
    out = set()
    for entry in re.split(r"[\s,]+", text.strip()):
        if entry.startswith("-") and len(entry) > 1:
            token = entry[1:].lower()
            if not _TOKEN.match(token):
                if not strict:
                    continue
                raise PolicyError("mask: a token may hold only a-z, 0-9, '_', '.' and '-' (at most 64)")
            out.add(token)
    return frozenset(out)


def effective(configured: Iterable[str] = ()) -> frozenset[str]:
    """The mask in force: ``$XPS_SIMD_ISA_MASK`` together with the configuration's tokens.

    Raises:
        PolicyError: the environment variable holds a malformed token.
    """
    try:
        from_env = parse(os.environ.get(MASK_ENV, ""))
    except PolicyError:
        raise PolicyError(f"{MASK_ENV}: a token may hold only a-z, 0-9, '_', '.' and '-'") from None
    return from_env | frozenset(configured)


def masked_by(backends: Iterable[str], cpu_features: Iterable[str], tokens: frozenset[str]) -> str | None:
    """The first token (``-name``) that removes an implementation, or None."""
    for backend in backends:
        if backend.lower() in tokens:
            return f"-{backend.lower()}"
    features = [f.lower() for f in cpu_features]
    for token in sorted(tokens):
        if any(f.startswith(token) for f in features):
            return f"-{token}"
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (``/proc/cpuinfo``), lower-case; empty if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].lower().split())
    return frozenset()


def demote_openssl(environ: dict[str, str] | None = None) -> bool:
    """Set ``OPENSSL_ia32cap`` so OpenSSL avoids AVX-512, if the mask asks and it is not too late.

    Returns whether the variable is set now. Does nothing if the operator set
    ``OPENSSL_ia32cap`` themselves, or if OpenSSL was already loaded in this process (the
    value is read once; :func:`openssl_demotion` then says so).
    """
    env = os.environ if environ is None else environ
    try:
        tokens = parse(env.get(MASK_ENV, ""))
    except PolicyError:
        return False
    if "avx512" not in tokens:
        return False
    if "OPENSSL_ia32cap" in env:
        return True
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        return False
    env["OPENSSL_ia32cap"] = OPENSSL_AVX512_OFF
    return True


def openssl_demotion(configured: Iterable[str] = ()) -> str:
    """In words: whether OpenSSL's AVX-512 paths are off in this process, for ``xps providers``."""
    try:
        tokens = effective(configured)
    except PolicyError as exc:
        return str(exc)
    if "avx512" not in tokens:
        return "not requested"
    value = _loaded_ia32cap.get("value")
    if value is not None:
        return f"OPENSSL_ia32cap={value} (set before OpenSSL loaded)"
    return ("requested, but OpenSSL was loaded before the mask was set: restart the process with "
            f"{MASK_ENV} in its environment")


# What OPENSSL_ia32cap was when this module was imported (OpenSSL loads after it, when
# cryptography is first imported, so this is the value OpenSSL read, unless it was set later).
_loaded_ia32cap: dict[str, str | None] = {}


def _record_at_import() -> None:
    demote_openssl()
    _loaded_ia32cap["value"] = os.environ.get("OPENSSL_ia32cap")  # noqa: SIM112 (OpenSSL spells it so)


_record_at_import()
