"""The local control channel of a running engine: a Unix socket only its owner can use.

The socket lives in the engine home (a 0700 directory), is chmod 0600, and every connection's
peer credentials (SO_PEERCRED) must match this process's uid. Requests and answers are one
JSON line each::

    {"cmd": "status"}                                   -> {"ok": true, "result": {...}}
    {"cmd": "rollback", "target": "aead.x", "to": null} -> {"ok": true, "result": {...}}
    {"cmd": "emergency", "key": "engine.policy.forbid", "value": [...], "operator": "...", "reason": "..."}
    errors                                              -> {"ok": false, "error": "...", "code": "...", "reason": "..."}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from xpscerpto.errors import XpsError

from .updater import Updater

__all__ = ["ControlServer", "NoEngineRunning", "request"]

_MAX_REQUEST = 64 * 1024


class NoEngineRunning(Exception):
    """Nothing listens on the control socket (the caller falls back to offline mode)."""


class ControlServer:
    """Serves status and rollback requests for one updater on a background thread."""

    def __init__(self, updater: Updater, path: str | Path, service: Any = None) -> None:
        self.updater = updater
        self.service = service
        self.path = Path(path)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (replacing a stale socket file) and serve until :meth:`stop`."""
        if self.path.exists():
            try:
                request(self.path, {"cmd": "ping"}, timeout=1.0)
            except NoEngineRunning:
                self.path.unlink()
            else:
                raise XpsError(f"control socket {str(self.path)!r}: another engine is already running here")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="xps-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket file."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except Exception as exc:  # a bad client must not stop the server
                    with contextlib.suppress(OSError):
                        conn.sendall(_line({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))

    def _handle(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.sendall(_line({"ok": False, "error": "permission denied: not the engine's owner"}))
            return
        conn.settimeout(5.0)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > _MAX_REQUEST:
                conn.sendall(_line({"ok": False, "error": "request too large"}))
                return
        try:
            req = json.loads(data)
            cmd = req["cmd"]
        except (ValueError, KeyError, TypeError):
            conn.sendall(_line({"ok": False, "error": "malformed request"}))
            return
        try:
            result = self._dispatch(cmd, req)
        except XpsError as exc:
            conn.sendall(_line({"ok": False, "error": str(exc), "code": str(exc.code), "reason": exc.reason}))
            return
        conn.sendall(_line({"ok": True, "result": result}))

    def _dispatch(self, cmd: str, req: dict[str, Any]) -> Any:
        if cmd == "ping":
            return "pong"
        if cmd == "status":
            return self.updater.status()
        if cmd == "rollback":
            cap = self.updater.rollback(str(req["target"]), to=req.get("to"),
                                        operator=str(req.get("operator") or "control-socket"))
            return {"rolled_back": {"name": cap.name, "version": cap.version, "sha256": cap.sha256},
                    "routes": self.updater.status(events=0)["routes"]}
        if cmd == "emergency" and self.service is not None:
            new = self.service.emergency_change(str(req["key"]), req.get("value"),
                                                operator=str(req.get("operator") or ""),
                                                reason=str(req.get("reason") or ""))
            return {"key": req["key"], "value": new.get(str(req["key"])),
                    "routes": self.updater.status(events=0)["routes"]}
        raise XpsError(f"cmd: unknown command {cmd!r}")


def _line(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode() + b"\n"


def request(path: str | Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running engine; raise NoEngineRunning if none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoEngineRunning(str(exc)) from None
        sock.sendall(_line(payload))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise XpsError("control socket: unreadable answer") from None
    return answer
