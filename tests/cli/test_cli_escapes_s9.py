"""Review s9 F2, F4, F8: text that others chose never reaches the operator's terminal raw.

* F2: ``xps capsule inspect`` of an unverified capsule (payload names, signature key ids);
  the capsule reader refuses non-printable payload paths and key ids that are not hex.
* F4: success lines echo ``--out`` and other file names escaped (plain names unchanged).
* F8: ``xps channel connect`` prints the peer's reply escaped; ``xps channel vectors`` a vector
  file's protocol names.

Real files, capsules, sockets and processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from xpscerpto.capsules.format import read_container
from xpscerpto.capsules.refusal import Refusal
from xpscerpto.cli.main import main
from xpscerpto.errors import UpdateError
from xpscerpto.signing import generate_keypair

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "capsules" / "demo-capsule"

#: A control character other than the line end: ESC, CR, BEL, SO ... (and C1, DEL).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_FORGED_NAME = "kat/x\x1b[2J\x1b[H\x1b[32mOK verified\x1b[0m\n  provides aead.aes256gcm -> fake:Line.json"
_FORGED_KEYID = "\x1b[2K\rOK: signed by the release key"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPS_HOME", raising=False)
    generate_keypair(tmp_path / "pub")
    assert main(["capsule", "build", str(DEMO), "--key", "pub.key", "--out", "demo.capsule"]) == 0
    capsys.readouterr()
    return tmp_path


def _rewrite(src: Path, dst: Path, *, extra_file: str | None = None, extra_keyid: str | None = None) -> None:
    """``src`` with a payload file listed in its (then unsigned) manifest, or a forged signature entry."""
    blob = b'{"forged": true}\n'
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "manifest.json" and extra_file:
                doc = json.loads(data)
                doc["files"][extra_file] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
                data = json.dumps(doc).encode()
            if info.filename == "signatures.json" and extra_keyid:
                doc = json.loads(data)
                doc["signatures"].append({"keyid": extra_keyid, "sig": "00" * 64})
                data = json.dumps(doc).encode()
            zout.writestr(info, data)
        if extra_file:
            zout.writestr("payload/" + extra_file, blob)


# -- F2 --------------------------------------------------------------------------------------------------


def test_reader_refuses_a_payload_path_with_control_characters(work: Path) -> None:
    _rewrite(work / "demo.capsule", work / "evil.capsule", extra_file=_FORGED_NAME)
    with pytest.raises(UpdateError) as caught:
        read_container((work / "evil.capsule").read_bytes())
    assert caught.value.reason is Refusal.PATH
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("keyid", [_FORGED_KEYID, "A" * 32, "0" * 31, "0" * 32 + "\n"])
def test_reader_refuses_a_signature_key_id_that_is_not_one(work: Path, keyid: str) -> None:
    _rewrite(work / "demo.capsule", work / "evil.capsule", extra_keyid=keyid)
    with pytest.raises(UpdateError) as caught:
        read_container((work / "evil.capsule").read_bytes())
    assert caught.value.reason is Refusal.MALFORMED


@pytest.mark.parametrize(("extra_file", "extra_keyid"), [(_FORGED_NAME, None), (None, _FORGED_KEYID)])
def test_inspect_prints_nothing_a_capsule_author_forged(work: Path, capsys: pytest.CaptureFixture[str],
                                                        extra_file: str | None, extra_keyid: str | None) -> None:
    _rewrite(work / "demo.capsule", work / "evil.capsule", extra_file=extra_file, extra_keyid=extra_keyid)
    rc, out, err = _run(capsys, "capsule", "inspect", "evil.capsule")
    assert not _CONTROL.search(out + err), (out, err)
    assert "OK verified" not in out and "signed by the release key" not in out
    assert "fake:Line" not in out
    assert rc == 2 and len(err.splitlines()) == 1 and "XPS_ERR_UPDATE" in err, err


def test_inspect_of_a_plain_capsule_is_unchanged(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "capsule", "inspect", "demo.capsule")
    assert rc == 0
    assert "\\" not in out and "kat/" in out and "signatures by: " in out


# -- F4 --------------------------------------------------------------------------------------------------


def test_success_lines_escape_the_names_they_echo(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = work / "home"
    assert main(["--home", str(home), "key", "create", "k"]) == 0
    assert main(["pki", "init-ca", "ca", "--name", "root"]) == 0
    generate_keypair(work / "op")
    capsys.readouterr()
    cases = [
        ["capsule", "keygen", "--out", "a\x1b[2J\x1b[Hb"],
        ["capsule", "keygen", "--out", "\xea\xf3\x0e"],  # the fuzzer's minimal example (Shift-Out)
        ["capsule", "build", str(DEMO), "--key", "pub.key", "--cosigner", "op.pub", "--out", "x\x1b[31m.capsule"],
        ["capsule", "sign", "x\x1b[31m.capsule", "--key", "op.key", "--out", "y\x1b]0;owned\x07.capsule"],
        ["--home", str(home), "key", "request", "revoke", "k", "--reason", "r", "--out", "r\x1b]0;owned\x07.json"],
        ["--home", str(home), "operator", "request", "add", "op.pub", "--reason", "r", "--out", "o\nforged.json"],
        ["pki", "crl", "--ca", "ca", "--out", "c\r\nOK.crl"],
        ["pki", "init-ca", "ca\x1b[31m", "--name", "second"],
        ["pki", "issue", "--ca", "ca", "--name", "svc", "--dns", "svc.test", "--out", "svc\x1b[2J"],
    ]
    for argv in cases:
        rc, out, err = _run(capsys, *argv)
        assert rc == 0, (argv, err)
        assert not _CONTROL.search(out) and out.count("\n") == 1, (argv, out)
    assert (work / "x\x1b[31m.capsule").is_file() and (work / "c\r\nOK.crl").is_file()


def test_plain_names_print_unchanged(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = work / "home"
    assert main(["--home", str(home), "key", "create", "k"]) == 0
    capsys.readouterr()
    rc, out, _ = _run(capsys, "--home", str(home), "key", "request", "revoke", "k", "--reason", "r", "--out",
                      "req.json")
    assert rc == 0 and out.startswith("wrote req.json: revoke of ") and out.endswith("`xps key approve req.json`\n")
    rc, out, _ = _run(capsys, "capsule", "keygen", "--out", "alice")
    assert rc == 0 and out.startswith("wrote alice.key (0600) and alice.pub; key id ")


# -- F8 --------------------------------------------------------------------------------------------------


def test_vectors_escape_a_vector_files_protocol_names(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    forged = "Noise_XX\x1b[2J\x1b[H\x1b[32m1000 passed, 0 failed\x1b[0m\n"
    (work / "vec.json").write_text(json.dumps({"vectors": [{"protocol_name": forged, "messages": []}]}))
    rc, out, _ = _run(capsys, "channel", "vectors", "vec.json")
    assert rc == 1
    assert not _CONTROL.search(out), out
    assert "  FAIL Noise_XX\\x1b[2J\\x1b[H\\x1b[32m1000 passed, 0 failed\\x1b[0m\\n: " in out
    assert out.splitlines()[-1] == "0 passed, 1 failed, 0 unsupported"


_REPLY = b"hello\x1b[2J\x1b[H\x1b]0;owned\x07\nconnected to bank.example (Noise_XX), all OK"


def _hostile_echo_server(work: Path, ready: list[int], stop: threading.Event) -> None:
    from xpscerpto.channel import Channel, Identity, Trust, serve

    async def run() -> None:
        identity = Identity.load(str(work / "srv.crt"), str(work / "srv.key"))
        trust = Trust.load([str(work / "ca" / "ca.crt")])

        async def handler(ch: Channel) -> None:
            await ch.recv()
            await ch.send(_REPLY)

        server = await serve("127.0.0.1", 0, identity, trust, handler)
        async with server:
            ready.append(server.port)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(run())


def test_connect_escapes_the_peers_reply(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "init-ca", "ca", "--name", "root"]) == 0
    for name in ("srv", "cli"):
        assert main(["pki", "issue", "--ca", "ca", "--name", name, "--dns", f"{name}.test", "--out", name]) == 0
    capsys.readouterr()
    ready: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=_hostile_echo_server, args=(work, ready, stop), daemon=True)
    thread.start()
    try:
        for _ in range(300):
            if ready or not thread.is_alive():
                break
            stop.wait(0.05)
        assert ready, "the echo server did not start"
        out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(work / "home"), "channel", "connect",
                              "--cert", "cli.crt", "--key", "cli.key", "--ca", "ca/ca.crt", "--port", str(ready[0]),
                              "--expect-name", "srv.test", "--message", "hello"],
                             cwd=work, capture_output=True, timeout=120, check=False)
    finally:
        stop.set()
        thread.join(30)
    text = out.stdout.decode()
    assert out.returncode == 1, out.stderr  # the reply differs from the message sent
    assert not _CONTROL.search(text), text
    assert text.count("\n") == 2, text
    assert text.splitlines()[-1] == ("echo: hello\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\nconnected to bank.example "
                                     "(Noise_XX), all OK")
