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
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from xpscerpto.errors import ErrorCode, PolicyError, XpsError

from .engine_lock import engine_lock_path, take_engine_lock
from .updater import Updater

__all__ = ["ControlServer", "NoEngineRunning", "request", "result"]

_log = logging.getLogger(__name__)

_MAX_REQUEST = 64 * 1024
_MAX_ANSWER = 64 * 1024 * 1024


class NoEngineRunning(Exception):
    """Nothing listens on the control socket (the caller falls back to offline mode)."""


class ControlServer:
    """Serves status and rollback requests for one updater.

    One accepting thread, and one short-lived thread per connection (each with a 5 s
    timeout), so a client that connects and stays silent cannot hold up the others.
    Changes (rollback, emergency) still run one at a time.

    While serving (from :meth:`claim` on), the server holds an exclusive lock on
    ``<socket>.lock`` (:mod:`.engine_lock`): a second engine on the same home fails to start
    with an XpsError instead of taking the socket over, and an offline rollback is refused.
    """

    #: Seconds a connection may take to send its request and read the answer.
    connection_timeout = 5.0

    def __init__(self, updater: Updater, path: str | Path, service: Any = None) -> None:
        self.updater = updater
        self.service = service
        self.path = Path(path)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._change_lock = threading.Lock()

    @property
    def lock_path(self) -> Path:
        """The lock file held while serving (next to the socket)."""
        return engine_lock_path(self.path)

    def claim(self) -> None:
        """Take the home's engine lock now (a service does, before it restores the state)."""
        if self._lock_fd is None:
            self._lock_fd = take_engine_lock(self.path, f"control socket {str(self.path)!r}")

    def start(self) -> None:
        """Bind (replacing a stale socket file) and serve until :meth:`stop`."""
        where = f"control socket {str(self.path)!r}"
        self.claim()
        try:
            self._remove_stale(where)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self.path))
                os.chmod(self.path, 0o600)
                sock.listen(16)
            except OSError as exc:
                sock.close()
                raise XpsError(f"{where}: cannot listen ({exc.strerror or exc})") from None
        except BaseException:
            self._release_lock()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="xps-control", daemon=True)
        self._thread.start()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _remove_stale(self, where: str) -> None:
        """Remove a socket file left by an engine that died (we hold the lock, so none of ours runs)."""
        if not os.path.lexists(self.path):
            return
        try:
            request(self.path, {"cmd": "ping"}, timeout=1.0)
        except NoEngineRunning:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise XpsError(f"{where}: cannot remove the stale socket file ({exc.strerror})") from None
            return
        except XpsError:
            raise XpsError(f"{where}: in use by a process that does not answer; stop it or remove the file") \
                from None
        raise XpsError(f"{where}: another engine is already running here")

    def stop(self) -> None:
        """Stop serving, remove the socket file, release the lock."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._release_lock()

    def _serve(self, sock: socket.socket) -> None:
        while self._sock is sock:
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._sock is sock:  # e.g. EMFILE: do not spin, do not die
                    time.sleep(0.05)
                    continue
                return
            threading.Thread(target=self._connection, args=(conn,), name="xps-control-conn", daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.connection_timeout)
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
        data = _read_line(conn, _MAX_REQUEST)
        if data is None:
            conn.sendall(_line({"ok": False, "error": "request too large"}))
            return
        try:
            req = json.loads(data)
            cmd = req["cmd"]
        except (ValueError, KeyError, TypeError):
            conn.sendall(_line({"ok": False, "error": "malformed request"}))
            return
        try:
            if cmd in ("ping", "status"):
                result = self._dispatch(cmd, req)
            else:
                with self._change_lock:
                    result = self._dispatch(cmd, req)
        except XpsError as exc:
            conn.sendall(_line({"ok": False, "error": str(exc), "code": str(exc.code), "reason": exc.reason}))
            return
        except Exception as exc:
            # A bug of ours, never the caller's fault: answered (a client must not see its
            # connection dropped unanswered) and logged by type only (no request data in logs).
            _log.error("control socket: %s failed: %s", cmd if _printable_name(cmd) else "a request",
                       type(exc).__name__)
            conn.sendall(_line({"ok": False, "error": f"{ErrorCode.INTERNAL}: internal error (see the engine's log)",
                                "code": str(ErrorCode.INTERNAL)}))
            return
        conn.sendall(_line({"ok": True, "result": result}))

    def _dispatch(self, cmd: str, req: dict[str, Any]) -> Any:
        if cmd == "ping":
            return "pong"
        if cmd == "status":
            return self.updater.status()
        if cmd == "rollback":
            # As sent: the updater checks what a rollback names (a list is refused, not str()-ed).
            cap = self.updater.rollback(_required(req, "target"), to=req.get("to"),
                                        operator=str(req.get("operator") or "control-socket"))
            return {"rolled_back": {"name": cap.name, "version": cap.version, "sha256": cap.sha256},
                    "routes": self.updater.status(events=0)["routes"]}
        if cmd == "emergency" and self.service is not None:
            key = str(_required(req, "key"))
            new = self.service.emergency_change(key, req.get("value"),
                                                operator=str(req.get("operator") or ""),
                                                reason=str(req.get("reason") or ""))
            return {"key": key, "value": new.get(key),
                    "routes": self.updater.status(events=0)["routes"]}
        raise XpsError(f"cmd: unknown command {cmd!r}" if _printable_name(cmd) else "cmd: unknown command")


def _required(req: dict[str, Any], field: str) -> Any:
    if field not in req:
        raise PolicyError(f"malformed request: field {field!r} missing")
    return req[field]


def _printable_name(value: object) -> bool:
    """Short printable text: safe to repeat in an answer (anything else is not echoed)."""
    return type(value) is str and 0 < len(value) <= 64 and value.isprintable()


def _line(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode() + b"\n"


def _read_line(sock: socket.socket, limit: int) -> bytes | None:
    """Bytes up to and including a newline (or until the peer closes); None past ``limit``."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            return None
    return data


def request(path: str | Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running engine and return its answer.

    Raises NoEngineRunning if nothing listens, XpsError if the engine does not answer within
    ``timeout`` seconds, drops the connection or answers something unreadable.
    """
    where = f"control socket {str(path)!r}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    data = b""
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoEngineRunning(str(exc)) from None
        except PermissionError:
            raise XpsError(f"{where}: permission denied (the engine belongs to another user)") from None
        sock.sendall(_line(payload))
        answer_line = _read_line(sock, _MAX_ANSWER)
        if answer_line is None:
            raise XpsError(f"{where}: the engine's answer is too large")
        data = answer_line
    except TimeoutError:  # socket.timeout
        raise XpsError(f"{where}: the engine did not answer within {timeout:g} s") from None
    except (ConnectionResetError, BrokenPipeError):
        raise XpsError(f"{where}: the engine closed the connection without answering") from None
    except OSError as exc:
        raise XpsError(f"{where}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not data:
        raise XpsError(f"{where}: the engine closed the connection without answering")
    try:
        answer = json.loads(data)
    except ValueError:
        raise XpsError(f"{where}: unreadable answer from the engine") from None
    if not isinstance(answer, dict):
        raise XpsError(f"{where}: unreadable answer from the engine")
    return answer


def result(answer: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` of an answer from :func:`request`, or its error raised as the engine typed it."""
    if not answer.get("ok"):
        code = answer.get("code")
        raise XpsError(str(answer.get("error")).removeprefix(f"{code}: "),
                       code=ErrorCode(code) if code in {c.value for c in ErrorCode} else None)
    out = answer.get("result")
    if not isinstance(out, dict):
        raise XpsError("control socket: the engine's answer has no result")
    return out
