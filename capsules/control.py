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

    One accepting thread, and one short-lived thread per connection, so a client that
    connects and stays silent cannot hold up the others. Each connection has 5 s in all to
    send its request (and again to read the answer), however it trickles its bytes; at most
    :attr:`max_connections` are handled at once, and a connection beyond them is answered
    "busy" and closed. Changes (rollback, emergency) still run one at a time.

    While serving (from :meth:`claim` on), the server holds an exclusive lock on
    ``<socket>.lock`` (:mod:`.engine_lock`): a second engine on the same home fails to start
    with an XpsError instead of taking the socket over, and an offline rollback is refused.
    """

    #: Seconds a connection may take to send its whole request, and again to read the answer.
    connection_timeout = 5.0
    #: Connections handled at once (each holds a thread).
    max_connections = 16

    def __init__(self, updater: Updater, path: str | Path, service: Any = None) -> None:
        self.updater = updater
        self.service = service
        self.path = Path(path)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._change_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_connections)
        #: Connections closed unanswered because no thread could be started for them.
        self.start_failures = 0

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
            try:
                self._dispatch_connection(conn)
            except Exception as exc:  # e.g. MemoryError: this client is lost, the server is not
                _log.error("control socket: a connection could not be handled: %s", type(exc).__name__)
                with contextlib.suppress(OSError):
                    conn.close()
                time.sleep(0.05)

    def _dispatch_connection(self, conn: socket.socket) -> None:
        if not self._slots.acquire(blocking=False):
            # Every handler is busy (maybe with silent clients): answer at once rather than
            # start threads without bound.
            _refuse_connection(conn, "busy: too many control connections; try again")
            return
        try:
            threading.Thread(target=self._connection, args=(conn,), name="xps-control-conn", daemon=True).start()
        except BaseException as exc:
            self._slots.release()
            if not isinstance(exc, RuntimeError):
                raise
            # No thread to spare (memory, a thread limit): this client is turned away, the
            # server keeps accepting (this thread once died here for good).
            self.start_failures += 1
            _refuse_connection(conn, "busy: the engine cannot start a handler now; try again")
            time.sleep(0.05)

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                try:
                    conn.settimeout(self.connection_timeout)
                    self._handle(conn)
                except Exception as exc:  # a bad client must not stop the server
                    with contextlib.suppress(OSError):
                        conn.settimeout(self.connection_timeout)
                        conn.sendall(_line({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        finally:
            self._slots.release()

    def _handle(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.sendall(_line({"ok": False, "error": "permission denied: not the engine's owner"}))
            return
        data = _read_line(conn, _MAX_REQUEST, deadline=time.monotonic() + self.connection_timeout)
        conn.settimeout(self.connection_timeout)  # sendall: the whole answer within this time
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
            status = self.updater.status()
            cluster = self.service.cluster_status() if self.service is not None else None
            if cluster is not None:
                status["cluster"] = cluster
            return status
        if cmd == "rollback":
            # As sent: the updater checks what a rollback names (a list is refused, not str()-ed).
            cap = self.updater.rollback(_required(req, "target"), to=req.get("to"),
                                        operator=_text(req, "rollback", "operator", _MAX_OPERATOR) or "control-socket")
            return {"rolled_back": {"name": cap.name, "version": cap.version, "sha256": cap.sha256},
                    "routes": self.updater.status(events=0)["routes"]}
        if cmd == "emergency" and self.service is not None:
            key = _required(req, "key")
            # Checked here: the configuration's refusal of an unknown key repeats it, and this
            # answer goes to whoever can reach the socket (a 40 KB key came back whole).
            if not _printable_name(key):
                raise PolicyError(f"emergency: key must be text of 1 to {_MAX_NAME} printable characters "
                                  "(a configuration key such as engine.policy.forbid)")
            new = self.service.emergency_change(key, req.get("value"),
                                                operator=_text(req, "emergency", "operator", _MAX_OPERATOR),
                                                reason=_text(req, "emergency", "reason", _MAX_REASON))
            return {"key": key, "value": new.get(key),
                    "routes": self.updater.status(events=0)["routes"]}
        # A request the caller got wrong, like any other malformed field: a policy refusal.
        raise PolicyError(f"cmd: unknown command {cmd!r}" if _printable_name(cmd) else "cmd: unknown command")


def _required(req: dict[str, Any], field: str) -> Any:
    if field not in req:
        raise PolicyError(f"malformed request: field {field!r} missing")
    return req[field]


_MAX_NAME = 64
_MAX_OPERATOR = 200
_MAX_REASON = 1000


def _text(req: dict[str, Any], cmd: str, field: str, limit: int) -> str:
    """An optional text field (missing or null: ""), journaled as sent: so str, printable, bounded."""
    value = req.get(field)
    if value is None:
        return ""
    if type(value) is not str or len(value) > limit or not value.isprintable():
        raise PolicyError(f"{cmd}: {field} must be text of at most {limit} printable characters")
    return value


def _printable_name(value: object) -> bool:
    """Short printable text: safe to repeat in an answer (anything else is not echoed)."""
    return type(value) is str and 0 < len(value) <= _MAX_NAME and value.isprintable()


def _refuse_connection(conn: socket.socket, message: str) -> None:
    """Answer one line without waiting (the accepting thread must not block) and close."""
    with conn, contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(_line({"ok": False, "error": message, "code": str(ErrorCode.INTERNAL)}))


def _line(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode() + b"\n"


def _read_line(sock: socket.socket, limit: int, deadline: float | None = None) -> bytes | None:
    """Bytes up to and including a newline (or until the peer closes); None past ``limit``.

    With ``deadline`` (``time.monotonic()``), TimeoutError once it passes, however the peer
    paces its bytes: a per-recv timeout let a client sending one byte every 4 s hold its
    handler for good.
    """
    data = b""
    while not data.endswith(b"\n"):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
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
