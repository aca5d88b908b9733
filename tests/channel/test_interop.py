"""Byte-for-byte interop with the ``noiseprotocol`` package over real TCP sockets on 127.0.0.1.

Our HandshakeState/CipherState against ``noise.connection.NoiseConnection`` for XX, IK, NK, KK x
ChaChaPoly/AESGCM x SHA256/BLAKE2b, both ways round: each side frames messages with the
channel's 2-byte length prefix; both must agree on every handshake payload, the handshake
hash, transport messages in both directions, and the transport after Noise Rekey().
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest
import xpscerpto as xps
from cryptography.hazmat.primitives.asymmetric import x25519
from noise.connection import Keypair, NoiseConnection
from xpscerpto.channel._noise import HandshakeState

PATTERNS = ("XX", "IK", "NK", "KK")
SUITES = [(c, h) for c in ("ChaChaPoly", "AESGCM") for h in ("SHA256", "BLAKE2b")]
CASES = [f"Noise_{p}_25519_{c}_{h}" for p in PATTERNS for c, h in SUITES]
PROLOGUE = b"xps interop"
_U16 = struct.Struct(">H")


def _send(sock: socket.socket, msg: bytes) -> None:
    sock.sendall(_U16.pack(len(msg)) + msg)


def _recv(sock: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    return exact(_U16.unpack(exact(2))[0])


def _key() -> tuple[bytes, bytes]:
    sk = x25519.X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    server.settimeout(10)
    return client, server


def _theirs(name: str, initiator: bool, s: bytes, rs: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(name.encode())
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    pattern = name.split("_")[1]
    has_static = pattern in ("XX", "IK", "KK") or not initiator
    knows_peer = pattern in ("IK", "NK", "KK") if initiator else pattern == "KK"
    if has_static:
        conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    if knows_peer:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    conn.start_handshake()
    return conn


def _ours(name: str, initiator: bool, s: bytes, rs: bytes, engine: xps.Engine) -> HandshakeState:
    pattern = name.split("_")[1]
    knows_peer = pattern in ("IK", "NK", "KK") if initiator else pattern == "KK"
    has_static = pattern in ("XX", "IK", "KK") or not initiator
    return HandshakeState(name, initiator=initiator, engine=engine, prologue=PROLOGUE,
                          s=s if has_static else None, rs=rs if knows_peer else None)


def _run_theirs(conn: NoiseConnection, sock: socket.socket, out: dict[str, Any]) -> None:
    try:
        i = 0
        while not conn.handshake_finished:
            writing = (i % 2 == 0) == conn.noise_protocol.initiator
            if writing:
                _send(sock, bytes(conn.write_message(f"theirs {i}".encode())))
            else:
                out.setdefault("payloads", []).append(bytes(conn.read_message(_recv(sock))))
            i += 1
        out["h"] = conn.get_handshake_hash()
        for round_ in range(2):
            for k in range(3):
                _send(sock, conn.encrypt(f"from theirs {round_}.{k}".encode()))
                out.setdefault("transport", []).append(conn.decrypt(_recv(sock)))
            conn.rekey_outbound_cipher()
            conn.rekey_inbound_cipher()
    except Exception as exc:  # reported to the test thread, which fails on it
        out["error"] = exc


@pytest.mark.parametrize("ours_initiates", [True, False], ids=["ours-initiator", "theirs-initiator"])
@pytest.mark.parametrize("name", CASES)
def test_interop(name: str, ours_initiates: bool, engine: xps.Engine) -> None:
    (i_sk, i_pk), (r_sk, r_pk) = _key(), _key()
    our_sock, their_sock = _pair()
    ours = _ours(name, ours_initiates, i_sk if ours_initiates else r_sk, r_pk if ours_initiates else i_pk, engine)
    theirs = _theirs(name, not ours_initiates, r_sk if ours_initiates else i_sk, i_pk if ours_initiates else r_pk)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=_run_theirs, args=(theirs, their_sock, result))
    thread.start()
    try:
        payloads = []
        while not ours.finished:
            i = ours.message_index
            if ours.is_my_turn():
                _send(our_sock, ours.write_message(f"ours {i}".encode()))
            else:
                payloads.append(ours.read_message(_recv(our_sock)))
        h = ours.handshake_hash
        send, recv = ours.split()
        received = []
        for round_ in range(2):
            for k in range(3):
                received.append(recv.decrypt_with_ad(b"", _recv(our_sock)))
                _send(our_sock, send.encrypt_with_ad(b"", f"from ours {round_}.{k}".encode()))
            send.rekey()
            recv.rekey()
    finally:
        thread.join(10)
        our_sock.close()
        their_sock.close()
    assert "error" not in result, result.get("error")
    n = len(ours.protocol.pattern.messages)
    mine = [i for i in range(n) if (i % 2 == 0) == ours_initiates]
    theirs_idx = [i for i in range(n) if i not in mine]
    assert payloads == [f"theirs {i}".encode() for i in theirs_idx]
    assert result["payloads"] == [f"ours {i}".encode() for i in mine]
    assert result["h"] == h
    assert received == [f"from theirs {r}.{k}".encode() for r in range(2) for k in range(3)]
    assert result["transport"] == [f"from ours {r}.{k}".encode() for r in range(2) for k in range(3)]


def test_an_altered_message_from_noiseprotocol_is_refused(engine: xps.Engine) -> None:
    name = "Noise_XX_25519_ChaChaPoly_SHA256"
    (i_sk, _), (r_sk, _) = _key(), _key()
    theirs = _theirs(name, True, i_sk, b"")
    ours = _ours(name, False, r_sk, b"", engine)
    ours.read_message(bytes(theirs.write_message(b"")))
    theirs.read_message(ours.write_message(b""))
    msg3 = bytearray(theirs.write_message(b"hello"))
    msg3[5] ^= 0x40
    with pytest.raises(xps.AuthError):
        ours.read_message(bytes(msg3))


