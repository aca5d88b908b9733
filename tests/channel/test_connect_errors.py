"""connect() (asyncio and blocking) turns a failed TCP connection into a typed XpsError.

A refused port, a name that does not resolve, a host the resolver cannot encode and a deadline
passed (in the TCP connect or in the handshake) are each met for real on 127.0.0.1: the error is
typed, names the host (repr, so control characters forge no line) and the port, chains the
OSError, and leaves no socket open. ``xps channel connect`` prints it without a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import xpscerpto as xps
from xpscerpto.channel import ChannelConfig, aio, blocking
from xpscerpto.channel._failures import FailureLog

from .conftest import Pki

SHORT = ChannelConfig(handshake_timeout_seconds=0.3)
Connect = Callable[..., object]


def _aio_connect(*args: Any, **kwargs: Any) -> object:
    async def go() -> object:
        ch = await aio.connect(*args, **kwargs)
        await ch.close()
        return ch

    return asyncio.run(go())


def _blocking_connect(*args: Any, **kwargs: Any) -> object:
    ch = blocking.connect(*args, **kwargs)
    ch.close()
    return ch


CONNECTS = pytest.mark.parametrize("connect", [_aio_connect, _blocking_connect], ids=["aio", "blocking"])


def _closed_port() -> int:
    """A port on 127.0.0.1 that was just bound and released: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fds() -> set[str]:
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def _no_fd_left() -> Iterator[None]:
    before = _fds()
    yield
    assert _fds() <= before, "connect() left a descriptor open"


def _fail(connect: Connect, host: str, port: int, pki: Pki, **kwargs: object) -> BaseException:
    with _no_fd_left(), pytest.raises(BaseException) as info:
        connect(host, port, pki.client, pki.trust, expected_name="server.test", config=SHORT, **kwargs)
    return info.value


@CONNECTS
def test_refused_port_is_a_typed_error_naming_host_and_port(pki: Pki, connect: Connect) -> None:
    port = _closed_port()
    exc = _fail(connect, "127.0.0.1", port, pki)
    assert isinstance(exc, aio.ConnectError), repr(exc)
    assert exc.code == xps.ErrorCode.AUTH and exc.reason == "eof"
    assert f"'127.0.0.1' port {port}" in str(exc) and "Connection refused" in str(exc), str(exc)
    assert isinstance(exc.__cause__, ConnectionRefusedError)
    assert isinstance(exc, ConnectionError)  # code written for the old bare OSError still catches it


@CONNECTS
def test_unresolvable_name_is_a_typed_error(pki: Pki, connect: Connect) -> None:
    exc = _fail(connect, "no-such-host.invalid", 7, pki)
    assert isinstance(exc, aio.ConnectError), repr(exc)
    assert exc.code == xps.ErrorCode.AUTH and exc.reason == "eof"
    assert "'no-such-host.invalid' port 7" in str(exc), str(exc)
    assert isinstance(exc.__cause__, OSError)


@CONNECTS
def test_control_characters_in_the_host_forge_no_line(pki: Pki, connect: Connect) -> None:
    host = "evil.invalid\nXPS_OK: connected\r\x1b[2K\u2028"
    exc = _fail(connect, host, 7, pki)
    assert isinstance(exc, xps.XpsError), repr(exc)
    text = str(exc)
    assert repr(host) in text, text
    assert not any(c in text for c in "\n\r\x1b\u2028"), text


@CONNECTS
@pytest.mark.parametrize("host", ["a" * 64 + ".invalid", "\udcff.invalid", "x" * 5000])
def test_host_the_resolver_cannot_encode_is_a_policy_error(pki: Pki, connect: Connect, host: str) -> None:
    exc = _fail(connect, host, 7, pki)
    assert isinstance(exc, xps.XpsError) and exc.code != xps.ErrorCode.INTERNAL, repr(exc)
    assert "host" in str(exc)
    assert len(str(exc)) < 400  # a huge host is described, not quoted
    assert exc.__cause__ is not None


@CONNECTS
def test_a_listener_that_never_answers_times_out_typed_and_the_client_socket_is_closed(
        pki: Pki, connect: Connect) -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        exc = _fail(connect, "127.0.0.1", port, pki)
        assert isinstance(exc, aio.ConnectTimeout), repr(exc)
        assert exc.code == xps.ErrorCode.AUTH and exc.reason == "timeout"
        assert isinstance(exc, TimeoutError)  # as documented before
        assert f"'127.0.0.1' port {port} within 0.3 s" in str(exc), str(exc)
        assert isinstance(exc.__cause__, TimeoutError)
        conn, _ = mute.accept()  # the connection the kernel completed for the client
        with conn:
            conn.settimeout(5)
            try:
                got = conn.recv(65536)
                while got:  # the client's first handshake message, then its close
                    got = conn.recv(65536)
            except ConnectionResetError:
                pass  # aborted: closed as well


@CONNECTS
def test_tcp_connect_timeout_on_a_full_backlog_is_typed(pki: Pki, connect: Connect) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full, socket.socket() as filler:
        port = full.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # fills the accept queue: later SYNs go unanswered
        exc = _fail(connect, "127.0.0.1", port, pki)
        assert isinstance(exc, aio.ConnectTimeout), repr(exc)
        assert exc.reason == "timeout" and f"port {port}" in str(exc)
        assert isinstance(exc.__cause__, TimeoutError)


@CONNECTS
def test_failures_are_counted_under_the_channel_reasons(pki: Pki, connect: Connect) -> None:
    log = FailureLog()
    _fail(connect, "127.0.0.1", _closed_port(), pki, failures=log)
    _fail(connect, "no-such-host.invalid", 7, pki, failures=log)
    with socket.create_server(("127.0.0.1", 0)) as mute:
        _fail(connect, "127.0.0.1", mute.getsockname()[1], pki, failures=log)
    assert dict(log.failures) == {"eof": 2, "timeout": 1}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xpscerpto", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def cadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("connect-cli")
    assert _cli(folder, "pki", "init-ca", "ca", "--name", "Root").returncode == 0
    issued = _cli(folder, "pki", "issue", "--ca", "ca", "--name", "cli", "--dns", "cli.test", "--out", "cli")
    assert issued.returncode == 0, issued.stderr
    return folder


@pytest.mark.parametrize("where", ["refused", "mute", "control-chars"])
def test_cli_connect_prints_a_typed_error_without_traceback(cadir: Path, where: str) -> None:
    if where == "mute":
        mute = socket.create_server(("127.0.0.1", 0))
        host, port = "127.0.0.1", mute.getsockname()[1]
    else:
        mute = None
        host, port = ("127.0.0.1", _closed_port()) if where == "refused" else ("evil.invalid\nXPS_OK: fake", 7)
    try:
        res = _cli(cadir, "--home", str(cadir / "home"), "channel", "connect", "--cert", "cli.crt", "--key", "cli.key",
                   "--ca", "ca/ca.crt", "--host", host, "--port", str(port), "--expect-name", "svc.test",
                   "--handshake-timeout", "0.3")
    finally:
        if mute is not None:
            mute.close()
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "XPS_ERR_" in lines[0] and "XPS_ERR_INTERNAL" not in lines[0], res.stderr
    if where != "control-chars":
        assert f"127.0.0.1:{port}" in lines[0], lines[0]
