"""Non-UTF-8 text from the environment or argv is refused by name, never echoed (review round 2, F4).

Python hands over non-UTF-8 bytes of the environment and argv as lone surrogates. A PKCS#11 PIN
holding one raised a bare UnicodeEncodeError whose ``.object`` was the whole PIN, and ``xps``
given such bytes as a key name, reason or AAD printed ``XPS_ERR_INTERNAL: UnicodeEncodeError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from xpscerpto.cli import run_command
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import Keyring
from xpscerpto.keyring.kek import Pkcs11Kek

PIN_ENV = "XPS_TEST_PKCS11_PIN"
SECRET = "SECRET-PIN-"


def _pkcs11_config(module: str, token: str) -> XpsConfig:
    return XpsConfig.from_mapping({"keyring": {"kek": {
        "provider": "pkcs11", "module": module, "token_label": token, "pin_env": PIN_ENV}}})


def _exceptions(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _frames(tb: TracebackType | None) -> Iterator[dict[str, object]]:
    while tb is not None:
        yield dict(tb.tb_frame.f_locals)
        tb = tb.tb_next


def _assert_pin_not_held(exc: BaseException, pin_part: str, *, frames: bool = True) -> None:
    """Nothing an error reporter records from ``exc`` holds the PIN: message, args, attributes,
    chained exceptions, or (``frames``) the locals of the frames it passed through."""
    chain = list(_exceptions(exc))
    assert chain == [exc], f"chained exceptions: {[type(e).__name__ for e in chain]}"
    assert exc.__cause__ is None and exc.__context__ is None
    for text in (str(exc), repr(exc), *map(repr, exc.args), *map(repr, vars(exc).values())):
        assert pin_part not in text and "udcff" not in text and "\udcff" not in text
    for local in _frames(exc.__traceback__ if frames else None):
        for name, value in local.items():
            assert not (isinstance(value, str) and pin_part in value), f"PIN held in local {name!r}"


def _xps(home: Path, *args: bytes, stdin: bytes = b"",
         config: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [os.fsencode(sys.executable), b"-m", b"xpscerpto", b"--home", os.fsencode(home)]
    if config is not None:
        cmd += [b"--config", os.fsencode(config)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=120, check=False)


# -- the PIN (kek.py) ------------------------------------------------------------------------------


@pytest.mark.parametrize("existing_home", [False, True])
def test_non_utf8_pin_in_the_environment_is_a_policy_error_naming_the_variable(
        softhsm_token: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        existing_home: bool) -> None:
    module, token, pin = softhsm_token
    cfg = _pkcs11_config(module, token)
    home = tmp_path / "home"
    if existing_home:
        monkeypatch.setenv(PIN_ENV, pin)
        with Keyring(home, config=cfg.keyring) as ring:
            ring.create("k")
    monkeypatch.setenv(PIN_ENV, f"1234-{SECRET}\udcff")  # how Python hands over the byte 0xff
    assert os.environb[PIN_ENV.encode()].endswith(b"\xff")
    with pytest.raises(PolicyError) as ei:
        Keyring(home, config=cfg.keyring)
    e = ei.value
    assert type(e) is PolicyError and e.code == "XPS_ERR_POLICY"
    assert PIN_ENV in str(e) and "UTF-8" in str(e)
    _assert_pin_not_held(e, SECRET)


def test_non_utf8_pin_given_directly_is_a_policy_error_without_the_pin(softhsm_token: tuple[str, str, str]) -> None:
    module, token, _ = softhsm_token
    with pytest.raises(PolicyError) as ei:
        Pkcs11Kek(module, token, f"1234-{SECRET}\udcff")
    assert str(ei.value).startswith("XPS_ERR_POLICY: pin: not valid UTF-8")
    # Not the frames: the caller passed the PIN in and holds it anyway.
    _assert_pin_not_held(ei.value, SECRET, frames=False)


def test_xps_with_a_non_utf8_pin_prints_a_typed_line_without_the_pin(
        softhsm_token: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, token, pin = softhsm_token
    cfg = tmp_path / "hsm.yaml"
    cfg.write_text(f"crypto:\n  keyring:\n    kek:\n      provider: pkcs11\n      module: {module}\n"
                   f"      token_label: {token}\n      pin_env: {PIN_ENV}\n")
    home = tmp_path / "home"
    monkeypatch.setenv(PIN_ENV, pin)
    assert _xps(home, b"key", b"create", b"k", config=cfg).returncode == 0
    monkeypatch.setenv(PIN_ENV, f"1234-{SECRET}\udcff")  # the byte 0xff in the environment
    for args in ([b"key", b"list"], [b"key", b"describe", b"k"]):
        out = _xps(home, *args, config=cfg)
        err = out.stderr.decode("utf-8", "backslashreplace")
        assert out.returncode == 2
        assert err == (f"xps: error: XPS_ERR_POLICY: pin_env: environment variable {PIN_ENV} does not hold "
                       "valid UTF-8 (non-UTF-8 bytes in the PIN)\n")


# -- argv (keyring/cli.py) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ring_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A home with key ``k`` (version 1) and a blob of it; the tests below must change nothing."""
    home = tmp_path_factory.mktemp("argv") / "home"
    assert _xps(home, b"key", b"create", b"k").returncode == 0
    blob = _xps(home, b"key", b"encrypt", b"k", stdin=b"hello").stdout
    assert _xps(home, b"key", b"create", b"k2").returncode == 0
    return home, blob


BAD = b"k\xff"


@pytest.mark.parametrize(("args", "field"), [
    ([b"key", b"create", BAD], "NAME"),
    ([b"key", b"describe", BAD], "NAME|ID"),
    ([b"key", b"rotate", BAD], "NAME|ID"),
    ([b"key", b"rotate", b"k", b"--algorithm", b"\xff"], "--algorithm"),
    ([b"key", b"create", b"new", b"--algo", b"\xff"], "--algo"),
    ([b"key", b"create", b"new", b"--policy", b"rotate=\xff"], "--policy"),
    ([b"key", b"encrypt", BAD], "NAME"),
    ([b"key", b"encrypt", b"k", b"--aad", b"\xff"], "--aad"),
    ([b"key", b"decrypt", b"--aad", b"a\xff"], "--aad"),
    ([b"key", b"revoke", BAD, b"--reason", b"r"], "NAME|ID"),
    ([b"key", b"revoke", b"k", b"--reason", b"\xff"], "--reason"),
    ([b"key", b"destroy", BAD], "NAME|ID"),
    ([b"key", b"request", b"revoke", BAD, b"--reason", b"r", b"--out", b"r.json"], "NAME|ID"),
    ([b"key", b"request", b"rewrap", b"k", b"--to", BAD, b"--reason", b"r", b"--out", b"r.json"], "--to"),
    ([b"key", b"request", b"revoke", b"k", b"--reason", b"r\xff", b"--out", b"r.json"], "--reason"),
    ([b"key", b"rewrap", b"f", b"--aad", b"\xff"], "--aad"),
    ([b"key", b"rewrap", b"--from-revoked", BAD, b"--to", b"k2", b"--reason", b"r", b"f"], "--from-revoked"),
    ([b"key", b"rewrap", b"--from-revoked", b"k", b"--to", b"k2", b"--reason", b"\xff", b"f"], "--reason"),
    ([b"operator", b"remove", b"ab\xff"], "KEYID"),
    ([b"operator", b"request", b"remove", b"ab\xff", b"--reason", b"r", b"--out", b"r.json"], "KEYID"),
    ([b"operator", b"request", b"remove", b"abcd", b"--reason", b"\xff", b"--out", b"r.json"], "--reason"),
])
def test_non_utf8_text_argument_is_refused_by_name(ring_home: tuple[Path, bytes], tmp_path: Path,
                                                   args: list[bytes], field: str) -> None:
    home, blob = ring_home
    before = sorted(p.name for p in home.iterdir())
    log = (home / "audit.log").read_bytes()
    out = subprocess.run([os.fsencode(sys.executable), b"-m", b"xpscerpto", b"--home", os.fsencode(home), *args],
                         input=blob, capture_output=True, timeout=120, check=False, cwd=tmp_path)
    err = out.stderr.decode("utf-8", "backslashreplace")
    assert out.returncode == 2 and out.stdout == b""
    assert err == (f"xps: error: XPS_ERR_POLICY: {field}: not valid UTF-8 (the command line held bytes that "
                   "are not UTF-8 text)\n")
    # Refused before anything was opened or written.
    assert sorted(p.name for p in home.iterdir()) == before
    assert (home / "audit.log").read_bytes() == log
    assert list(tmp_path.iterdir()) == []


def test_a_non_utf8_file_name_is_still_a_valid_rewrap_target(ring_home: tuple[Path, bytes], tmp_path: Path) -> None:
    # File names are paths, not text: any bytes work, and only text arguments are checked.
    home, blob = ring_home
    name = os.fsencode(tmp_path) + b"/caf\xe9.blob"
    with open(name, "wb") as f:
        f.write(blob)
    out = _xps(home, b"key", b"rewrap", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"rewrapped 0 of 1 file(s)\n"


# -- the last-resort boundary (cli/main.py) --------------------------------------------------------


def test_run_command_reports_a_surrogate_as_a_policy_error_without_the_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A command that does not check its text arguments by name still gets a typed line that
    # echoes neither the text nor the offending character.
    assert run_command("xps", lambda: len(f"token-{SECRET}\udcff".encode())) == 2
    err = capsys.readouterr().err
    assert err == ("xps: error: XPS_ERR_POLICY: an argument, environment variable or file name is not valid "
                   "UTF-8 (it holds bytes that are not UTF-8 text)\n")


def test_run_command_does_not_echo_the_bytes_of_other_unicode_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("xps", lambda: len(b"token-\xe9\xff".decode("utf-8"))) == 2
    assert capsys.readouterr().err == ("xps: error: XPS_ERR_INTERNAL: UnicodeDecodeError: utf-8 codec: "
                                       "invalid continuation byte\n")
    assert run_command("xps", lambda: len("caf\u00e9".encode("ascii"))) == 2
    assert capsys.readouterr().err == ("xps: error: XPS_ERR_INTERNAL: UnicodeEncodeError: ascii codec: "
                                       "ordinal not in range(128)\n")


def test_a_pin_env_that_is_unset_is_still_named(softhsm_token: tuple[str, str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    module, token, _ = softhsm_token
    monkeypatch.delenv(PIN_ENV, raising=False)
    with pytest.raises(PolicyError, match=f"{PIN_ENV} is not set"):
        Keyring(tmp_path / "home", config=_pkcs11_config(module, token).keyring)
