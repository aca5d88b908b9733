"""Replay Noise test vectors in the cacophony JSON format through the handshake core and transport.

A file is ``{"vectors": [...]}``; each vector names a protocol, both sides' prologues, keys
(statics, fixed ephemerals, remote statics for pre-messages, PSKs) and a list of messages
``{payload, ciphertext}`` that alternate initiator -> responder -> … (one-way patterns: all
from the initiator), first the handshake, then transport messages. ``handshake_hash`` and
``fail`` are optional. Used by ``xps channel vectors FILE`` and the conformance tests.

Example:
    >>> import xpscerpto as xps
    >>> report = replay_file(VECTOR_FILE, xps.default_engine())
    >>> report.failed, report.passed > 0
    ([], True)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpscerpto._stored_file import read_stored
from xpscerpto.errors import PolicyError, XpsError

from ._noise import CipherState, HandshakeState
from ._patterns import UnsupportedProtocol, parse_protocol

if TYPE_CHECKING:
    from xpscerpto.engine import Engine

__all__ = ["VECTOR_FILE", "VectorFailure", "VectorReport", "load_vectors", "replay_file", "replay_vector"]

#: The cacophony vectors this project ships (the subset its core supports; kat/noise/SOURCE.md).
VECTOR_FILE = Path(__file__).resolve().parents[1] / "kat" / "noise" / "cacophony_supported.json"
#: A vector file larger than this is refused before it is read (bytes).
MAX_FILE = 256 * 1024 * 1024


class VectorFailure(Exception):
    """A vector's expected and observed bytes differ (internal to the runner)."""


@dataclass
class VectorReport:
    """What a replay found: counts per outcome, failures by protocol name with the reason."""

    passed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unsupported: Counter[str] = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {"passed": self.passed, "failed": [{"protocol": n, "reason": r} for n, r in self.failed],
                "unsupported": dict(sorted(self.unsupported.items()))}


def load_vectors(path: str | Path) -> list[dict[str, Any]]:
    """The vector list of a cacophony-format file.

    Raises:
        PolicyError: the file is missing, too large, not JSON, or has no ``vectors`` list.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE:
            raise PolicyError(f"vectors file {p.name}: {size} bytes, more than {MAX_FILE}")
        doc = json.loads(read_stored(p, MAX_FILE))  # a FIFO or a device: refused, never waited on
    except OSError as exc:
        raise PolicyError(f"vectors file {p.name}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError):
        raise PolicyError(f"vectors file {p.name}: not JSON") from None
    vectors = doc.get("vectors") if isinstance(doc, dict) else None
    if not isinstance(vectors, list) or not all(isinstance(v, dict) for v in vectors):
        raise PolicyError(f"vectors file {p.name}: expected an object with a 'vectors' list of objects")
    return vectors


def _hex(v: dict[str, Any], key: str, default: bytes | None = None) -> bytes | None:
    value = v.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise VectorFailure(f"malformed: {key} is not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VectorFailure(f"malformed: {key} is not hex") from None


def _psks(v: dict[str, Any], side: str) -> list[bytes]:
    many = v.get(f"{side}_psks")
    if many is not None:
        if not isinstance(many, list):
            raise VectorFailure(f"malformed: {side}_psks is not a list")
        return [_hex({"k": x}, "k") or b"" for x in many]
    one = _hex(v, f"{side}_psk")
    return [one] if one is not None else []


def _side(v: dict[str, Any], side: str, initiator: bool, engine: Engine) -> HandshakeState:
    return HandshakeState(
        v["protocol_name"], initiator=initiator, engine=engine,
        prologue=_hex(v, f"{side}_prologue", b"") or b"",
        s=_hex(v, f"{side}_static"), e=_hex(v, f"{side}_ephemeral"),
        rs=_hex(v, f"{side}_remote_static"), psks=_psks(v, side))


def replay_vector(v: dict[str, Any], engine: Engine) -> None:
    """Run one vector; returns if it passes.

    Raises:
        UnsupportedProtocol: the protocol is not built here (``.reason`` says why).
        VectorFailure: an output differs from the vector (or a ``fail`` vector passed).
        PolicyError: the protocol name is not a Noise name.
    """
    name = v.get("protocol_name")
    if not isinstance(name, str):
        raise VectorFailure("malformed: no protocol_name")
    parse_protocol(name)  # unsupported before any key is touched
    messages = v.get("messages")
    if not isinstance(messages, list) or not messages:
        raise VectorFailure("malformed: no messages")
    expect_fail = v.get("fail") is True
    try:
        _run(v, name, messages, engine)
    except (XpsError, VectorFailure) as exc:
        if isinstance(exc, UnsupportedProtocol) or not expect_fail:
            raise
        return
    if expect_fail:
        raise VectorFailure("a vector marked fail passed")


def _run(v: dict[str, Any], name: str, messages: list[Any], engine: Engine) -> None:
    init = _side(v, "init", True, engine)
    resp = _side(v, "resp", False, engine)
    pattern = init.protocol.pattern
    ciphers: dict[bool, tuple[CipherState, CipherState]] = {}
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise VectorFailure(f"malformed: message {i} is not an object")
        payload, expected = _hex(m, "payload", b""), _hex(m, "ciphertext", b"")
        assert payload is not None and expected is not None
        from_init = pattern.sender_is_initiator(i)
        sender, receiver = (init, resp) if from_init else (resp, init)
        if not init.finished:
            got = sender.write_message(payload)
            if got != expected:
                raise VectorFailure(f"message {i}: handshake ciphertext differs")
            if receiver.read_message(got) != payload:
                raise VectorFailure(f"message {i}: handshake payload differs")
            if sender.finished and receiver.finished:
                _check_hash(v, init, resp)
                ciphers = {True: init.split(), False: resp.split()}
            continue
        send = ciphers[from_init][0]
        recv = ciphers[not from_init][1]
        got = send.encrypt_with_ad(b"", payload)
        if got != expected:
            raise VectorFailure(f"message {i}: transport ciphertext differs")
        if recv.decrypt_with_ad(b"", got) != payload:
            raise VectorFailure(f"message {i}: transport payload differs")


def _check_hash(v: dict[str, Any], init: HandshakeState, resp: HandshakeState) -> None:
    expected = _hex(v, "handshake_hash")
    if init.handshake_hash != resp.handshake_hash:
        raise VectorFailure("handshake hashes of the two sides differ")
    if expected is not None and init.handshake_hash != expected:
        raise VectorFailure("handshake_hash differs")


def replay_file(path: str | Path, engine: Engine) -> VectorReport:
    """Replay every vector in ``path``; never raises for a single vector's outcome."""
    report = VectorReport()
    for idx, v in enumerate(load_vectors(path)):
        label = v.get("protocol_name") if isinstance(v.get("protocol_name"), str) else f"#{idx}"
        try:
            replay_vector(v, engine)
        except UnsupportedProtocol as exc:
            report.unsupported[exc.reason or "unsupported"] += 1
        except VectorFailure as exc:
            report.failed.append((str(label), str(exc)))
        except XpsError as exc:
            report.failed.append((str(label), f"{type(exc).__name__}: {exc}"))
        else:
            report.passed += 1
    return report
