"""A forged journal record cannot reach the operator's terminal through ``xps audit verify``'s
refusal: the journal quotes no record-chosen text, and the CLI escapes every error line
(review-orch O4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from xpscerpto.audit import AuditLog
from xpscerpto.audit.journal import AuditTampered, _canonical, record_hash
from xpscerpto.cli import main, run_command
from xpscerpto.errors import PolicyError

ESC = "\x1b]0;PWNED\x07\x1b[2J\x1b[1;32m"
FAKE_OK = "\x1b[2K\x1b[1G\x1b[0maudit journal OK: 202 records, 2 signed checkpoints, last seq 202\x1b[8m"
#: C0, DEL, C1 (CSI, NEL), line and paragraph separators, bidi overrides and isolates.
HOSTILE = "\x00\x07\x1b[2J\x7f\x9b31m\x85\u2028\u2029\u202e\u2066\x1c"


def _forge(log: Path, fields: dict[str, Any], *, drop_last: bool = False) -> None:
    """Append a correctly chained (hash-valid, unsigned) record, as anyone who can write the file can."""
    lines = log.read_bytes().rstrip(b"\n").split(b"\n")
    if drop_last:
        lines.pop()
    last = json.loads(lines[-1])
    rec = {"seq": last["seq"] + 1, "time": last["time"], "prev": last["hash"], **fields}
    rec["hash"] = record_hash(rec)
    log.write_bytes(b"\n".join(lines) + b"\n" + _canonical(rec) + b"\n")


def _journal(path: Path, every: int, records: int) -> None:
    log = AuditLog(path, checkpoint_every=every)
    for i in range(records):
        log.record("TEST_EVENT", i=i)
    log.close()


def _checkpoint(key: object) -> dict[str, Any]:
    return {"event": "CHECKPOINT", "key": key, "sig": "00" * 64, "signed_seq": 2, "signed_hash": "x", "every": 5}


def _assert_safe(text: str, *, limit: int = 2000) -> None:
    assert text.isprintable() and "\x1b" not in text and "PWNED" not in text and "A" * 65 not in text, text
    assert len(text) < limit, len(text)


def _refusal(path: Path, every: int) -> AuditTampered:
    with pytest.raises(AuditTampered) as info:
        AuditLog(path, checkpoint_every=every).verify()
    return info.value


# -- the journal's refusal ------------------------------------------------------------------------

@pytest.mark.parametrize("key", [ESC, ESC * 1000, "\u202e" + "a" * 63, "A" * 64, "ab" * 8 + "\x9b" + "a" * 47])
def test_a_forged_checkpoint_key_is_not_quoted(tmp_path: Path, key: str) -> None:
    path = tmp_path / "audit.log"
    _journal(path, 5, 2)
    _forge(path, _checkpoint(key))
    err = _refusal(path, 5)
    assert err.reason == "bad checkpoint signature" and "not 64 lowercase hex digits" in str(err)
    _assert_safe(str(err))


def test_a_wrong_but_well_formed_checkpoint_key_is_still_shown(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _journal(path, 5, 2)
    _forge(path, _checkpoint("ab" * 32))
    assert "signed by key abababababababab…" in str(_refusal(path, 5))


@pytest.mark.parametrize("event", [FAKE_OK + "A" * 60000, ESC, "lower_case", "\u202eEVIL", "X" * 65])
def test_a_forged_event_where_a_checkpoint_is_due_is_not_quoted(tmp_path: Path, event: str) -> None:
    path = tmp_path / "audit.log"
    _journal(path, 5, 5)  # seq 6 is the checkpoint; a forged record takes its place
    _forge(path, {"event": event}, drop_last=True)
    err = _refusal(path, 5)
    assert err.reason == "missing checkpoint" and "an event name that is not UPPER_SNAKE_CASE" in str(err)
    _assert_safe(str(err))
    assert "audit journal OK" not in str(err)


def test_a_well_formed_event_where_a_checkpoint_is_due_is_still_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _journal(path, 5, 5)
    _forge(path, {"event": "KEY_ROTATE"}, drop_last=True)
    assert "but it holds KEY_ROTATE:" in str(_refusal(path, 5))


# -- the CLI's last line of defence -------------------------------------------------------------

def _stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    line = err[:-1]
    assert line.isprintable() and "\x1b" not in line, repr(line)
    return line


@pytest.mark.parametrize("exc", [PolicyError(f"field: bad {HOSTILE} end"), ValueError(f"bad {HOSTILE} end"),
                                 KeyError(f"bad {HOSTILE} end"), OSError(f"bad {HOSTILE} end")])
def test_every_error_line_escapes_control_and_format_characters(
        exc: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise exc

    assert run_command("xps", fail) == 2
    line = _stderr_line(capsys)
    for escaped in ("\\x00", "\\x07", "\\x1b[2J", "\\x7f", "\\x9b31m", "\\x85", "\\u2028", "\\u2029", "\\u202e",
                    "\\u2066", "\\x1c"):
        assert escaped in line, (escaped, line)
    assert line.startswith("xps: error: XPS_ERR_") and line.endswith("end" + ("'" if isinstance(exc, KeyError)
                                                                              else ""))


def test_an_error_spread_over_lines_is_still_joined_into_one(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise PolicyError("field: first\n   second\r\n\tthird ")

    assert run_command("xps", fail) == 2
    assert _stderr_line(capsys) == "xps: error: XPS_ERR_POLICY: field: first second third"


def test_a_usage_error_quoting_an_argument_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["version", f"--bogus{ESC}\u202e"])
    assert info.value.code == 2
    line = _stderr_line(capsys)
    assert "XPS_ERR_POLICY" in line and "\\x1b]0;PWNED\\x07" in line and "\\u202e" in line


# -- `xps audit verify`, end to end -----------------------------------------------------------------

def _xps(home: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "xpscerpto", "--home", str(home)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], capture_output=True, timeout=120, check=False)


def _assert_one_safe_line(out: subprocess.CompletedProcess[bytes]) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr[:500])
    assert not out.stdout and out.stderr.startswith(b"xps: error: XPS_ERR_INTERNAL: audit journal ")
    assert out.stderr.endswith(b"\n") and out.stderr.count(b"\n") == 1
    assert b"\x1b" not in out.stderr and b"\x07" not in out.stderr
    line = out.stderr[:-1].decode()
    _assert_safe(line)
    return line


def test_verify_of_a_home_journal_prints_no_forged_escape_sequence(tmp_path: Path) -> None:
    home = tmp_path / "h1"
    assert _xps(home, "init").returncode == 0
    _forge(home / "audit.log", {**_checkpoint(ESC), "every": 100})
    assert "bad checkpoint signature" in _assert_one_safe_line(_xps(home, "audit", "verify"))

    home = tmp_path / "h2"
    assert _xps(home, "init").returncode == 0
    log = AuditLog(home / "audit.log")  # the home's journal: checkpoint_every 100, due at seq 202
    while json.loads((home / "audit.log").read_bytes().rstrip(b"\n").split(b"\n")[-1])["seq"] < 201:
        log.record("TEST_EVENT")
    log.close()
    _forge(home / "audit.log", {"event": FAKE_OK + "A" * 60000}, drop_last=True)
    line = _assert_one_safe_line(_xps(home, "audit", "verify"))
    assert "missing checkpoint" in line and "audit journal OK" not in line


def test_verify_of_the_shared_journal_prints_no_escape_sequence_a_database_writer_inserted(
        pg_dsn: str, tmp_path: Path) -> None:
    from xpscerpto.db import Database

    config = tmp_path / "node.yaml"
    config.write_text(f"crypto:\n  audit:\n    database: {pg_dsn}\n")
    home = tmp_path / "h"
    assert _xps(home, "init", config=config).returncode == 0
    assert _xps(home, "audit", "verify", config=config).returncode == 0
    db = Database(pg_dsn)  # a database writer: no signing key, one INSERT
    try:
        seq, line = db.execute("SELECT seq, line FROM xps_audit ORDER BY seq DESC LIMIT 1").fetchone()
        last = json.loads(line)
        rec = {"seq": seq + 1, "time": last["time"], "prev": last["hash"], "event": "CHECKPOINT",
               "key": "\x1b[2K\x1b[1G\x1b[8m" + ESC, "sig": "00" * 64, "signed_seq": seq,
               "signed_hash": last["hash"], "every": 100}
        rec["hash"] = record_hash(rec)
        db.execute("INSERT INTO xps_audit (seq, time, line) VALUES (?, ?, ?)",
                   (seq + 1, last["time"], _canonical(rec).decode()))
    finally:
        db.close()
    assert "bad checkpoint signature" in _assert_one_safe_line(_xps(home, "audit", "verify", config=config))
