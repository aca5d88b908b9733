"""Noise handshake patterns as data, and protocol names parsed into them.

The tables below are the Noise Protocol Framework's patterns (revision 34, sections 7.4-7.6):
the 3 one-way, 12 fundamental interactive and 23 deferred patterns. Modifiers are applied by
:func:`parse_protocol`, never spelled out per pattern: ``pskN`` (section 9.2) inserts a
``psk`` token, ``hfs`` (the Noise HFS extension) inserts ``e1`` after the first ``e`` and
``ekem1`` after the first ``ee``. So the handshake core in :mod:`._noise` knows tokens, not
patterns, and every pattern comes from the same code.

Example:
    >>> p = parse_protocol("Noise_XXpsk3_25519_ChaChaPoly_SHA256")
    >>> p.pattern.messages
    (('e',), ('e', 'ee', 's', 'es'), ('s', 'se', 'psk'))
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from xpscerpto.errors import PolicyError

__all__ = ["PATTERNS", "HandshakePattern", "NoiseProtocol", "UnsupportedProtocol", "parse_protocol"]

Tokens = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """Pre-messages and message token lists; message 0 is the initiator's, then they alternate
    (in a one-way pattern every message is the initiator's)."""

    name: str
    pre_initiator: Tokens
    pre_responder: Tokens
    messages: tuple[Tokens, ...]
    one_way: bool = False

    def sender_is_initiator(self, index: int) -> bool:
        """Whether message ``index`` (0-based, transport messages included) goes initiator -> responder."""
        return self.one_way or index % 2 == 0


def _p(name: str, pre_i: str, pre_r: str, *messages: str, one_way: bool = False) -> tuple[str, HandshakePattern]:
    def toks(s: str) -> Tokens:
        return tuple(t.strip() for t in s.split(",") if t.strip())

    return name, HandshakePattern(name, toks(pre_i), toks(pre_r), tuple(toks(m) for m in messages), one_way)


#: Base patterns by name (spec sections 7.4 one-way, 7.5 interactive, 7.6 deferred).
PATTERNS: dict[str, HandshakePattern] = dict([
    _p("N", "", "s", "e, es", one_way=True),
    _p("K", "s", "s", "e, es, ss", one_way=True),
    _p("X", "", "s", "e, es, s, ss", one_way=True),
    _p("NN", "", "", "e", "e, ee"),
    _p("NK", "", "s", "e, es", "e, ee"),
    _p("NX", "", "", "e", "e, ee, s, es"),
    _p("KN", "s", "", "e", "e, ee, se"),
    _p("KK", "s", "s", "e, es, ss", "e, ee, se"),
    _p("KX", "s", "", "e", "e, ee, se, s, es"),
    _p("XN", "", "", "e", "e, ee", "s, se"),
    _p("XK", "", "s", "e, es", "e, ee", "s, se"),
    _p("XX", "", "", "e", "e, ee, s, es", "s, se"),
    _p("IN", "", "", "e, s", "e, ee, se"),
    _p("IK", "", "s", "e, es, s, ss", "e, ee, se"),
    _p("IX", "", "", "e, s", "e, ee, se, s, es"),
    _p("NK1", "", "s", "e", "e, ee, es"),
    _p("NX1", "", "", "e", "e, ee, s", "es"),
    _p("X1N", "", "", "e", "e, ee", "s", "se"),
    _p("X1K", "", "s", "e, es", "e, ee", "s", "se"),
    _p("XK1", "", "s", "e", "e, ee, es", "s, se"),
    _p("X1K1", "", "s", "e", "e, ee, es", "s", "se"),
    _p("X1X", "", "", "e", "e, ee, s, es", "s", "se"),
    _p("XX1", "", "", "e", "e, ee, s", "es, s, se"),
    _p("X1X1", "", "", "e", "e, ee, s", "es, s", "se"),
    _p("K1N", "s", "", "e", "e, ee", "se"),
    _p("K1K", "s", "s", "e, es", "e, ee", "se"),
    _p("KK1", "s", "s", "e", "e, ee, se, es"),
    _p("K1K1", "s", "s", "e", "e, ee, es", "se"),
    _p("K1X", "s", "", "e", "e, ee, s, es", "se"),
    _p("KX1", "s", "", "e", "e, ee, se, s", "es"),
    _p("K1X1", "s", "", "e", "e, ee, s", "se, es"),
    _p("I1N", "", "", "e, s", "e, ee", "se"),
    _p("I1K", "", "s", "e, es, s", "e, ee", "se"),
    _p("IK1", "", "s", "e, s", "e, ee, se, es"),
    _p("I1K1", "", "s", "e, s", "e, ee, es", "se"),
    _p("I1X", "", "", "e, s", "e, ee, s, es", "se"),
    _p("IX1", "", "", "e, s", "e, ee, se, s", "es"),
    _p("I1X1", "", "", "e, s", "e, ee, s", "se, es"),
])

#: What each name part maps to; anything else is unsupported (with the reason).
DH_FUNCTIONS = ("25519",)
KEMS = ("MLKEM768",)
CIPHERS = ("ChaChaPoly", "AESGCM")
HASHES = ("SHA256", "BLAKE2b")

_NAME_RE = re.compile(r"Noise_([A-Za-z0-9]+?)((?:psk\d|hfs|fallback)(?:\+(?:psk\d|hfs|fallback))*)?"
                      r"_([A-Za-z0-9+]+)_([A-Za-z0-9]+)_([A-Za-z0-9]+)")
_MAX_NAME = 255


class UnsupportedProtocol(PolicyError):
    """A well-formed Noise protocol name this core does not implement; ``reason`` says which part."""


@dataclass(frozen=True, slots=True)
class NoiseProtocol:
    """A parsed protocol name: the pattern with its modifiers applied, and the functions."""

    name: str
    pattern: HandshakePattern
    dh: str
    kem: str | None
    cipher: str
    hash: str
    psk: bool
    hfs: bool

    @property
    def base_pattern(self) -> str:
        """The pattern's name without modifiers (``"XX"``)."""
        return self.pattern.name


def parse_protocol(name: str) -> NoiseProtocol:
    """Parse ``Noise_<pattern><modifiers>_<dh>_<cipher>_<hash>``.

    Raises:
        PolicyError: the name is not a Noise protocol name.
        UnsupportedProtocol: it is one, but names a pattern, modifier or function not built
            here; ``.reason`` is ``"dh 448"``, ``"hash SHA512"``, ``"pattern XXfallback"`` ….
    """
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise PolicyError("protocol: expected a Noise protocol name (str, at most 255 characters)")
    # An exact str for the cache: a subclass could answer == and hash() as it likes.
    return _parse(name if type(name) is str else str.__str__(name))


# Every handshake parses its protocol: cached (bounded; a name that fails is not cached).
@functools.lru_cache(maxsize=256)
def _parse(name: str) -> NoiseProtocol:
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise PolicyError("protocol: not a Noise protocol name (Noise_<pattern>_<dh>_<cipher>_<hash>)")
    base, mods, dh_part, cipher, hash_ = m.groups()
    modifiers = tuple(mods.split("+")) if mods else ()
    if base not in PATTERNS:
        raise UnsupportedProtocol(f"protocol: unknown handshake pattern {base!r}", reason=f"pattern {base}")
    dh, _, kem = dh_part.partition("+")
    if dh not in DH_FUNCTIONS:
        raise UnsupportedProtocol(f"protocol: DH {dh!r} not supported", reason=f"dh {dh}")
    if cipher not in CIPHERS:
        raise UnsupportedProtocol(f"protocol: cipher {cipher!r} not supported", reason=f"cipher {cipher}")
    if hash_ not in HASHES:
        raise UnsupportedProtocol(f"protocol: hash {hash_!r} not supported", reason=f"hash {hash_}")
    if "fallback" in modifiers:
        raise UnsupportedProtocol("protocol: the fallback modifier is not supported", reason="modifier fallback")
    if len(set(modifiers)) != len(modifiers):
        raise PolicyError("protocol: a modifier is repeated")
    hfs = "hfs" in modifiers
    if hfs != bool(kem):
        raise PolicyError("protocol: the hfs modifier and a KEM in the DH section (25519+MLKEM768) go together")
    if kem and kem not in KEMS:
        raise UnsupportedProtocol(f"protocol: KEM {kem!r} not supported", reason=f"kem {kem}")
    pattern = PATTERNS[base]
    psks = [int(mod[3:]) for mod in modifiers if mod.startswith("psk")]
    if hfs:
        pattern = _apply_hfs(pattern)
    for n in psks:
        pattern = _apply_psk(pattern, n)
    return NoiseProtocol(name, pattern, dh, kem or None, cipher, hash_, bool(psks), hfs)


def _apply_psk(p: HandshakePattern, n: int) -> HandshakePattern:
    """Section 9.2: ``psk0`` goes first in message 1, ``pskN`` (N >= 1) last in message N."""
    if n > len(p.messages):
        raise PolicyError(f"protocol: psk{n} names a message the pattern does not have")
    msgs = list(p.messages)
    if n == 0:
        msgs[0] = ("psk", *msgs[0])
    else:
        msgs[n - 1] = (*msgs[n - 1], "psk")
    return HandshakePattern(p.name, p.pre_initiator, p.pre_responder, tuple(msgs), p.one_way)


def _apply_hfs(p: HandshakePattern) -> HandshakePattern:
    """Noise HFS: ``e1`` right after the first ``e`` and ``ekem1`` right after the first ``ee``."""
    if p.one_way or "ee" not in (t for m in p.messages for t in m):
        raise PolicyError(f"protocol: the hfs modifier needs an interactive pattern with ee, not {p.name}")
    msgs: list[Tokens] = []
    seen_e = seen_ee = False
    for m in p.messages:
        out: list[str] = []
        for t in m:
            out.append(t)
            if t == "e" and not seen_e:
                seen_e = True
                out.append("e1")
            elif t == "ee" and not seen_ee:
                seen_ee = True
                out.append("ekem1")
        msgs.append(tuple(out))
    return HandshakePattern(p.name, p.pre_initiator, p.pre_responder, tuple(msgs), p.one_way)
