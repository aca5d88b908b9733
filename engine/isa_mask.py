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

Every entry is an ASCII ``-`` and a well-formed token. An entry that would remove nothing for
its spelling (``jit`` without its sign, ``+jit``, ``--jit``, ``\u2212jit`` with a Unicode minus)
is refused: an emergency control must not fail silently. A well-formed token that names no
built-in backend (:data:`BUILTIN_BACKENDS`), no CPU feature (:data:`CPU_FEATURES`, or a flag of
this machine) and no loaded provider (a typo such as ``-jti``, or a capsule not loaded yet) is
kept, since it may name a capsule's or a plugin's provider, and reported once as a warning on
the ``xpscerpto`` logger when a table is built (:func:`report_unmatched`).

Implementations the mask removes are skipped when a table is built (``xps providers`` says
why); a call never reads the mask. ``-avx512`` also demotes OpenSSL's own AVX-512 code paths,
through ``OPENSSL_ia32cap``, which OpenSSL reads once when it loads: :func:`demote_openssl`
sets it when ``xpscerpto`` is imported before ``cryptography`` is (the ``xps`` command always
is), and :func:`openssl_demotion` reports whether it took effect in this process.

Example:
    >>> sorted(parse("-jit, -AVX512"))
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
    "BUILTIN_BACKENDS",
    "CPU_FEATURES",
    "MASK_ENV",
    "OPENSSL_AVX512_OFF",
    "cpu_flags",
    "demote_openssl",
    "effective",
    "masked_by",
    "openssl_demotion",
    "parse",
    "report_unmatched",
    "unmatched",
]

MASK_ENV = "XPS_SIMD_ISA_MASK"
#: ``OPENSSL_ia32cap`` value that clears AVX512F, DQ, IFMA, BW and VL in the CPUID(7).EBX word
#: OpenSSL consults, so it takes its AVX2 paths instead (see OpenSSL's ``OPENSSL_ia32cap(3)``).
OPENSSL_AVX512_OFF = ":~0xC0230000"
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CHARS = "a token may hold only a-z, 0-9, '_', '.' and '-' (at most 64)"
#: The built-in providers' names and the libraries they declare (``-openssl`` also removes
#: ``jit-openssl``). Other providers' names are known only to the program that registers them.
BUILTIN_BACKENDS = frozenset({"openssl", "sodium", "jit", "jit-openssl"})
#: CPU-feature tokens known on every machine, spelled as ``/proc/cpuinfo`` spells them: a
#: fleet-wide incident mask names features some machines lack (``-avx512`` on an AMD Zen 2,
#: ``-sha2`` on x86), and must not stop those machines. Families first (a token removes every
#: flag it is a prefix of), then the flags of the ISA extensions crypto code uses, x86-64 and
#: arm64. A flag this machine reports is known as well (:func:`cpu_flags`).
CPU_FEATURES = frozenset({
    "avx512", "avx", "sse", "sse4", "bmi", "fma", "sha", "sve", "sm",
    "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "sse4a", "avx2", "avx512f", "avx512dq", "avx512cd",
    "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
    "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16", "avx_vnni", "avx_ifma", "fma4", "xop", "f16c",
    "bmi1", "bmi2", "adx", "aes", "vaes", "pclmulqdq", "vpclmulqdq", "sha_ni", "gfni", "rdrand",
    "rdseed", "movbe", "popcnt", "asimd", "neon", "pmull", "sha1", "sha2", "sha3", "sha512", "sm3",
    "sm4", "crc32", "sve2",
})


def parse(text: str, *, strict: bool = True, field: str = "mask") -> frozenset[str]:
    """The removed tokens of a mask string (``-token`` entries, comma or space separated).

    With ``strict=False`` an entry that is not an ASCII ``-`` and a well-formed token is dropped
    instead of refused: plugin discovery uses that, so an odd mask never breaks loading, while
    the engine (:func:`effective`) refuses it when it builds a table and the operator learns
    of it there.

    Args:
        field: what the error names (``XPS_SIMD_ISA_MASK``, a configuration key).

    Raises:
        PolicyError: ``text`` is not a string, or (strict) an entry is not an ASCII ``-`` and a
            well-formed token (see the module docstring). The message describes the entry by
            its position, never repeating it.
    """
    if not isinstance(text, str):
        raise PolicyError(f"{field}: expected a string, got {type(text).__name__}")
    out = set()
    for n, entry in enumerate((e for e in re.split(r"[\s,]+", text.strip()) if e), start=1):
        token = entry[1:].lower()
        problem = _entry_problem(entry, token, n)
        if problem is not None:
            if not strict:
                continue
            raise PolicyError(f"{field}: {problem}")
        out.add(token)
    return frozenset(out)


#: Tokens already reported by :func:`report_unmatched` in this process.
_REPORTED: set[str] = set()


def unmatched(tokens: Iterable[str], providers: Iterable[tuple[str, Iterable[str]]]) -> frozenset[str]:
    """The tokens that name no built-in backend, no known CPU feature and none of ``providers``
    (``(name, backends)`` pairs): a typo such as ``-jti``, or a provider not loaded yet.

    A well-formed unknown token is not refused: it may name a capsule's or a plugin's provider
    (one that arrives later is masked when it does).
    """
    names = set(BUILTIN_BACKENDS)
    for name, backends in providers:
        names.add(name.lower())
        names.update(b.lower() for b in backends)
    features = CPU_FEATURES | cpu_flags()
    # As masked_by matches: names exactly (``-sodiu`` removes nothing), features by prefix.
    return frozenset(t for t in tokens if t not in names and not any(f.startswith(t) for f in features))


def report_unmatched(tokens: Iterable[str], providers: Iterable[tuple[str, Iterable[str]]]) -> frozenset[str]:
    """Warn (once per token and process, on the ``xpscerpto`` logger) about :func:`unmatched` tokens.

    Called when a routing table is built, never per operation. Returns the unmatched tokens.
    """
    found = unmatched(tokens, providers)
    new = sorted(found - _REPORTED)
    if new:
        _REPORTED.update(new)
        shown = ", ".join(f"-{t}" if len(t) <= 24 else f"(a {len(t)}-character token)" for t in new[:8])
        import logging  # only when there is something to say: `import xpscerpto` stays lean

        logging.getLogger("xpscerpto").warning(
            "incident mask: %s removes nothing: no provider, backend or CPU feature known here has that "
            "name (a typo, or a provider not loaded yet)", shown)
    return found


def _entry_problem(entry: str, token: str, n: int) -> str | None:
    """Why entry ``n`` removes nothing, in words that never repeat it (None if well-formed)."""
    first = entry[0]
    if not first.isascii():
        return f"entry {n} starts with U+{ord(first):04X}, not an ASCII '-'"
    if first == "+":
        return f"entry {n} starts with '+': the mask only removes (write '-token')"
    if first != "-":
        return f"entry {n} has no '-': the mask only removes (write '-token')"
    if not token:
        return f"entry {n} is a '-' without a token"
    if token.startswith("-"):
        return f"entry {n} starts with more than one '-'"
    if not entry.isascii():  # before lower(): the Kelvin sign lower-cases to an ASCII 'k'
        return f"entry {n} holds a non-ASCII character"
    if not _TOKEN.match(token):
        return f"{_CHARS} (entry {n})"
    return None


def effective(configured: Iterable[str] = ()) -> frozenset[str]:
    """The mask in force: ``$XPS_SIMD_ISA_MASK`` together with the configuration's tokens.

    The configuration's tokens were checked when it was built.

    Raises:
        PolicyError: the environment variable holds an entry that is not ``-`` and a well-formed token.
    """
    return parse(os.environ.get(MASK_ENV, ""), field=MASK_ENV) | frozenset(configured)


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
