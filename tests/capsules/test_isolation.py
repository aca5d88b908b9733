"""Isolated validation: a correctly signed capsule whose code misbehaves is rejected in a throw-away
child process, while the engine keeps serving on the routing it had.

Each faulty provider is a real module in a real, correctly signed capsule (built by the
``factory`` fixture) for ``aead.aes256gcm``, which the built-in ``openssl`` provider serves, so
the differential check and the benchmark have a reference. The module records the pid of
every process that imports it: each rejection must show the code ran in a child only.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from xpscerpto import Engine, EngineConfig, UpdateError
from xpscerpto.capsules._verifier import verify_capsule
from xpscerpto.capsules.isolate import Gates, validate_isolated
from xpscerpto.home import Home
from xpscerpto.interfaces import OPERATIONS

from .conftest import (
    DEMO_OP,
    ENTRY,
    GATES,
    GOOD_AEAD,
    OP,
    Capsule,
    CapsuleFactory,
    UpdaterMaker,
    aes_vector,
    assert_not_in_this_process,
    kat_file,
    loaded_modules,
    marker_pids,
    rejections,
    round_trip,
)

# A provider whose keyed cipher is ours, so each fault can live in encrypt or decrypt.
_WRAPPED = '''
import time
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher as _Ctr, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xpscerpto.interfaces import Aead


def _other(key):
    return bytes([key[0] ^ 1]) + key[1:]


class Keyed:
    def __init__(self, key):
        self.key = bytes(key)
        self.inner = AESGCM(self.key)

    def encrypt(self, nonce, data, aad):
{encrypt}

    def decrypt(self, nonce, data, aad):
{decrypt}


class Impl(Aead):
    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16
    auth_errors = (InvalidTag,)

    def cipher(self, key):
        return Keyed(key)
'''

_PLAIN_ENCRYPT = "return self.inner.encrypt(nonce, data, aad)"
_PLAIN_DECRYPT = "return self.inner.decrypt(nonce, data, aad)"


def wrapped(encrypt: str = _PLAIN_ENCRYPT, decrypt: str = _PLAIN_DECRYPT) -> str:
    """Provider source with the given bodies for ``Keyed.encrypt`` / ``Keyed.decrypt``."""
    ind = " " * 8
    return _WRAPPED.format(encrypt=textwrap.indent(textwrap.dedent(encrypt).strip(), ind),
                           decrypt=textwrap.indent(textwrap.dedent(decrypt).strip(), ind))


# A 3-byte message is in neither the engine's AES-256-GCM self-test vectors nor the differential
# sizes: only the capsule's own KAT file covers it.
_OWN_KAT = kat_file(aes_vector(bytes(range(32)), bytes(12), b"abc", b"", "capsule-own-kat#3-byte-message"))


@dataclass(frozen=True)
class Fault:
    """A misbehaving provider module and the gates it is judged under."""

    body: str
    gates: Gates = GATES
    entry: str = ENTRY
    kat: tuple[tuple[str, bytes], ...] = ()


FAULTS = [
    # -- faults of the process: hang, raise, exit, crash, memory ----------------------------------
    pytest.param(Fault(GOOD_AEAD + "\nwhile True:\n    pass\n", replace(GATES, timeout_s=2.5)),
                 "timeout", "no answer within 2.5 s (hang); child killed", id="import-hangs"),
    pytest.param(Fault(GOOD_AEAD + "\nraise RuntimeError('capsule import exploded')\n"),
                 "validation-failed", "validation (load): RuntimeError: capsule import exploded",
                 id="import-raises"),
    pytest.param(Fault(GOOD_AEAD + "\nimport os\nos._exit(3)\n"),
                 "crashed", "child exited with status 3 and no result", id="import-calls-os-exit"),
    pytest.param(Fault(GOOD_AEAD + "\nimport ctypes\nctypes.string_at(0)\n"),
                 "crashed", "child killed by SIGSEGV", id="import-segfaults"),
    pytest.param(Fault(wrapped(encrypt="import ctypes\nctypes.string_at(0)")),
                 "crashed", "child killed by SIGSEGV", id="encrypt-segfaults-during-kat"),
    pytest.param(Fault(GOOD_AEAD + "\nhog = []\nwhile True:\n    hog.append(bytearray(64 << 20))\n",
                       replace(GATES, memory_bytes=512 * 1024**2)),
                 "validation-failed", "MemoryError", id="import-eats-memory-beyond-512MiB"),
    pytest.param(Fault(GOOD_AEAD + "\nimport os, sys\nprint('{\"ok\": true, \"kat\": {}, \"diff\": {}}')\n"
                       "sys.stdout.flush()\nos._exit(0)\n"),
                 "crashed", "child exited with status 0 and no result", id="forges-success-on-stdout-and-exits"),
    # Review findings: a signal the enum does not name, and answers that are JSON but not the
    # shape of a result, escaped as bare exceptions with no PATCH_REJECT (at restart: no start).
    pytest.param(Fault(GOOD_AEAD + "\nimport os\nos.kill(os.getpid(), 40)\n"),
                 "crashed", "child killed by signal 40", id="import-dies-of-a-realtime-signal"),
    pytest.param(Fault(GOOD_AEAD + "\nimport os, sys\nos.write(int(sys.argv[-1]), b'[]')\nos._exit(0)\n"),
                 "crashed", "malformed result from the child", id="writes-a-list-as-its-result"),
    pytest.param(Fault(GOOD_AEAD + "\nimport os, sys\nos.write(int(sys.argv[-1]), "
                       "b'{\"ok\": true, \"kat\": {}, \"diff\": [1], \"bench\": {}}')\nos._exit(0)\n"),
                 "crashed", "malformed result from the child", id="writes-a-result-with-a-list-for-diff"),
    pytest.param(Fault(GOOD_AEAD + "\nimport os, sys\nos.write(int(sys.argv[-1]), "
                       "b'{\"ok\": true, \"kat\": {}, \"diff\": {\"aead.aes256gcm\": 7}, \"bench\": "
                       "{\"aead.aes256gcm\": \"fast\"}}')\nos._exit(0)\n"),
                 "crashed", "malformed result from the child", id="writes-a-result-with-wrong-types"),
    # -- the provider contract ---------------------------------------------------------------------
    pytest.param(Fault(GOOD_AEAD.replace("class Impl(Aead):", "class Impl:")),
                 "contract", "implementation does not subclass Aead", id="entry-not-an-aead"),
    pytest.param(Fault(GOOD_AEAD.replace("def cipher(self, key):\n        return AESGCM(bytes(key))",
                                         "def cipher(self):\n        return AESGCM(bytes(32))")),
                 "contract", "cipher() takes 1 parameters, contract has 2", id="cipher-with-wrong-signature"),
    pytest.param(Fault(GOOD_AEAD.replace("    nonce_size = 12\n", "")),
                 "contract", "missing attribute 'nonce_size'", id="missing-contract-attribute"),
    pytest.param(Fault(GOOD_AEAD, entry="hotfix:Missing"),
                 "validation-failed", "AttributeError", id="entry-attribute-missing"),
    # -- known answers ---------------------------------------------------------------------------
    pytest.param(Fault(wrapped(encrypt="""
                     out = bytearray(self.inner.encrypt(nonce, data, aad))
                     out[0] ^= 1
                     return bytes(out)""")),
                 "kat-failed", "validation (kat): aead.aes256gcm: encrypt output differs",
                 id="wrong-ciphertext-fails-engine-kat"),
    pytest.param(Fault(wrapped(decrypt="""
                     try:
                         return self.inner.decrypt(nonce, data, aad)
                     except InvalidTag:
                         ctr = _Ctr(algorithms.AES(self.key), modes.CTR(nonce + bytes(3) + b"\\x02"))
                         return ctr.decryptor().update(data[:-16])""")),
                 "kat-failed", "validation (kat): aead.aes256gcm: accepted a flipped tag bit",
                 id="decrypt-ignores-the-tag"),
    pytest.param(Fault(wrapped(encrypt="""
                     key = _other(self.key) if len(data) == 3 else self.key
                     return AESGCM(key).encrypt(nonce, data, aad)""", decrypt="""
                     key = _other(self.key) if len(data) - 16 == 3 else self.key
                     return AESGCM(key).decrypt(nonce, data, aad)"""),
                       kat=(("kat/own.json", _OWN_KAT),)),
                 "kat-failed",
                 "validation (kat): aead.aes256gcm: encrypt output differs (vector capsule-own-kat#3-byte-message)",
                 id="wrong-only-where-the-capsules-own-kat-looks"),
    # -- the differential check against the current implementation ---------------------------------
    pytest.param(Fault(wrapped(encrypt="""
                     key = _other(self.key) if len(data) >= 1000 else self.key
                     return AESGCM(key).encrypt(nonce, data, aad)""", decrypt="""
                     key = _other(self.key) if len(data) - 16 >= 1000 else self.key
                     return AESGCM(key).decrypt(nonce, data, aad)""")),
                 "differential-mismatch", "ct differs from the current implementation",
                 id="passes-kats-but-wrong-for-messages-of-1000-bytes-or-more"),
    pytest.param(Fault(wrapped(decrypt="""
                     try:
                         return self.inner.decrypt(nonce, data, aad)
                     except InvalidTag:
                         fixed = bytearray(data)
                         fixed[0] ^= 1
                         return self.inner.decrypt(nonce, bytes(fixed), aad)""")),
                 "tamper-accepted", "accepted a tampered ciphertext", id="decrypt-accepts-flipped-first-byte"),
    # -- the benchmark gate ------------------------------------------------------------------------
    pytest.param(Fault(wrapped(encrypt="""
                     if len(data) >= 65536:
                         time.sleep(0.005)
                     return self.inner.encrypt(nonce, data, aad)"""), replace(GATES, max_slowdown=2.0)),
                 "too-slow", "slower than the current implementation at 65536 bytes (gate 2.0x)",
                 id="too-slow-for-max-slowdown-2"),
]


def _faulty_capsule(factory: CapsuleFactory, fault: Fault) -> Capsule:
    src = factory.source(fault.body, operations={OP: fault.entry}, kat=dict(fault.kat), label="faulty")
    return factory.build(src)


def _routes(up_engine: object) -> dict[str, str | None]:
    table = up_engine.table  # type: ignore[attr-defined]
    return {op: table.provider_for(op) for op in OPERATIONS}


@pytest.mark.usefixtures("no_core_dumps")
@pytest.mark.parametrize(("fault", "reason", "says"), FAULTS)
def test_faulty_capsule_is_rejected_and_engine_keeps_serving(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path,
        fault: Fault, reason: str, says: str) -> None:
    home = factory.pin(tmp_path / "home")
    up = make_updater(gates=fault.gates)
    engine = up.engine
    table, routes = engine.table, _routes(engine)
    assert routes[OP] == "openssl"
    cap = _faulty_capsule(factory, fault)

    with pytest.raises(UpdateError) as info:
        up.apply(cap.raw)
    assert info.value.reason == reason, str(info.value)
    assert says in str(info.value)

    # the engine keeps serving on the routing it had
    assert engine.table is table
    assert _routes(engine) == routes
    round_trip(engine, OP)
    # audited: verified, then rejected by validation — never staged or enabled
    events = [e for e in up.audit.tail(50) if e.get("sha256") == cap.sha256]
    assert [e["event"] for e in events] == ["PATCH_LOAD", "PATCH_VERIFY", "PATCH_REJECT"]
    assert rejections(up)[-1]["reason"] == reason
    assert says in rejections(up)[-1]["detail"]
    # the code ran in a validation child (now gone), never here; nothing kept
    pids = marker_pids(cap.marker)
    assert pids, "the capsule's code never ran in a validation child"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert_not_in_this_process(cap)
    assert list(home.capsules.iterdir()) == []
    assert not home.state.exists()


# -- the control: a well-behaved capsule passes validation in a child, and is then applied ----------


def test_good_capsule_passes_isolated_validation_without_loading_here(factory: CapsuleFactory,
                                                                      make_updater: UpdaterMaker) -> None:
    up = make_updater()
    src = factory.source(GOOD_AEAD, kat={"kat/own.json": _OWN_KAT})
    cap = factory.build(src)
    verified = verify_capsule(cap.raw, trust=factory.trust(), highest={}, now=up._clock())
    reference = {OP: next(p for p in up.engine.state.providers if p.name == "openssl").implementations[OP]}
    report = validate_isolated(verified, reference, GATES)
    assert report.kat[OP]["passed"] is True
    assert report.kat[OP]["vectors"] == 6  # 5 engine vectors + the capsule's own
    assert report.diff_checked == (OP,)
    assert 0 < report.slowdown[OP] <= GATES.max_slowdown
    assert len(marker_pids(cap.marker)) == 1
    assert_not_in_this_process(cap)


def test_good_capsule_is_applied_after_faulty_ones_were_rejected(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    for body in (GOOD_AEAD + "\nimport os\nos._exit(3)\n", GOOD_AEAD + "\nimport ctypes\nctypes.string_at(0)\n"):
        with pytest.raises(UpdateError):
            up.apply(_faulty_capsule(factory, Fault(body)).raw)
    good = factory.build(factory.source(GOOD_AEAD))
    active = up.apply(good.raw)
    assert up.engine.table.provider_for(OP) == active.name == "hotfix-aesgcm"
    round_trip(up.engine, OP)
    assert os.getpid() in marker_pids(good.marker)
    assert loaded_modules(good) == [good.package, f"{good.package}.hotfix"]


def test_engine_serves_calls_while_a_validation_child_hangs(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater(gates=replace(GATES, timeout_s=2.0))
    cap = _faulty_capsule(factory, Fault(GOOD_AEAD + "\nimport time\ntime.sleep(3600)\n"))
    outcome: list[BaseException] = []

    def apply() -> None:
        try:
            up.apply(cap.raw)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=apply)
    worker.start()
    served = 0
    while worker.is_alive():
        round_trip(up.engine, OP)
        served += 1
    worker.join()
    assert [type(e) for e in outcome] == [UpdateError]
    assert outcome[0].reason == "timeout"  # type: ignore[attr-defined]
    assert served > 100  # calls kept flowing for the whole 2 s the child hung
    assert marker_pids(cap.marker)  # the child really was running the capsule
    assert up.engine.table.provider_for(OP) == "openssl"
    assert_not_in_this_process(cap)
    assert not Home.resolve(tmp_path / "home").state.exists()


def test_kat_failure_is_judged_in_the_child_even_without_a_current_route(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    """No built-in serves XChaCha20 here (only openssl is enabled), so there is no differential
    reference: the child's KAT verdict alone must reject a wrong implementation, before the
    engine process ever imports it."""
    home = factory.pin(tmp_path / "home")
    up = make_updater(engine=Engine(EngineConfig(providers=("openssl",))))
    assert up.engine.table.provider_for(DEMO_OP) is None
    src = factory.demo_source()
    module = src.path / "xchacha.py"
    text = module.read_text()
    honest = 'return sub.encrypt(b"\\x00\\x00\\x00\\x00" + nonce[16:], data, aad)'
    assert honest in text
    module.write_text(text.replace(honest, "out = bytearray(" + honest[len("return "):] + ")\n"
                                   "        out[0] ^= 1\n        return bytes(out)"))
    cap = factory.build(src)

    with pytest.raises(UpdateError) as info:
        up.apply(cap.raw)
    assert info.value.reason == "kat-failed"
    assert "validation (kat): aead.xchacha20poly1305: encrypt output differs" in str(info.value)
    assert len(marker_pids(cap.marker)) == 1  # the validation child
    assert_not_in_this_process(cap)
    assert up.engine.table.provider_for(DEMO_OP) is None
    assert list(home.capsules.iterdir()) == []


# -- nothing outlives validation (issue 8 item 5) ------------------------------------------------

_ESCAPE = '''
import os as _os, sys as _sys, time as _time
_spec = getattr(_sys.modules["__main__"], "__spec__", None)
if getattr(_spec, "name", "") == "xpscerpto.capsules._child":  # only in the validation child
    if _os.fork() == 0:
        _os.setsid()  # leave the child's session and process group
        if _os.fork() == 0:
            with open(PIDFILE + ".tmp", "w") as _f:
                _f.write(str(_os.getpid()))
            _os.replace(PIDFILE + ".tmp", PIDFILE)
            _time.sleep(300)
        _os._exit(0)
    _deadline = _time.monotonic() + 10
    while not _os.path.exists(PIDFILE) and _time.monotonic() < _deadline:
        _time.sleep(0.01)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


@pytest.mark.parametrize("body", [GOOD_AEAD, GOOD_AEAD + "\nraise SystemExit(3)\n"], ids=["accepted", "refused"])
def test_a_double_forked_setsid_daemon_does_not_outlive_validation(
        body: str, factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    pidfile = tmp_path / "daemon.pid"
    cap = factory.build(factory.source(f"PIDFILE = {str(pidfile)!r}\n" + _ESCAPE + body))
    if "SystemExit" in body:
        with pytest.raises(UpdateError):
            up.apply(cap.raw)
    else:
        assert up.apply(cap.raw).name == "hotfix-aesgcm"
    pid = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "a process the capsule started outlived validation"
    finally:
        if _alive(pid):
            os.kill(pid, 9)


# -- capsule code that changes the engine itself (issue 8 item 3) --------------------------------

# Wraps TrustStore.verify (harmless here: it calls the original) — the identity change is what a
# real attack (accept every signature) would also make.
_PATCH_TRUST = '''
import sys as _sys
import xpscerpto.signing.trust as _trust
_spec = getattr(_sys.modules["__main__"], "__spec__", None)
if ONLY_IN_ENGINE is False or getattr(_spec, "name", "") != "xpscerpto.capsules._child":
    _orig = _trust.TrustStore.verify
    def _verify(self, *args, **kwargs):
        return _orig(self, *args, **kwargs)
    _verify.__xps_original__ = _orig
    _trust.TrustStore.verify = _verify
'''


@pytest.fixture
def trust_verify() -> Iterator[None]:
    from xpscerpto.signing.trust import TrustStore
    original = TrustStore.verify
    yield
    TrustStore.verify = original  # type: ignore[method-assign]


def test_a_payload_that_patches_the_trust_store_is_refused_in_the_child(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, trust_verify: None) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    cap = factory.build(factory.source("ONLY_IN_ENGINE = False\n" + _PATCH_TRUST + GOOD_AEAD))
    with pytest.raises(UpdateError) as ei:
        up.apply(cap.raw)
    assert ei.value.reason == "engine-state"
    assert "xpscerpto.signing.trust.TrustStore.verify" in str(ei.value)
    assert_not_in_this_process(cap)
    assert up.status()["tainted"] is None  # nothing ran here: the next capsule is judged normally
    good = factory.build(factory.source(GOOD_AEAD, name="hotfix-two"))
    assert up.apply(good.raw).name == "hotfix-two"


def test_a_payload_that_patches_only_in_the_engine_taints_it_until_restart(
        factory: CapsuleFactory, make_updater: UpdaterMaker, tmp_path: Path, trust_verify: None) -> None:
    factory.pin(tmp_path / "home")
    up = make_updater()
    cap = factory.build(factory.source("ONLY_IN_ENGINE = True\n" + _PATCH_TRUST + GOOD_AEAD))
    with pytest.raises(UpdateError) as ei:
        up.apply(cap.raw)
    assert ei.value.reason == "engine-state"
    assert up.engine.table.provider_for(OP) == "openssl"
    assert "TrustStore.verify" in (up.status()["tainted"] or "")
    # Every later capsule is refused, honest or not, until the engine restarts.
    good = factory.build(factory.source(GOOD_AEAD, name="hotfix-two"))
    with pytest.raises(UpdateError) as later:
        up.apply(good.raw)
    assert later.value.reason == "tainted" and "restart the engine" in str(later.value)
    assert [e for e in rejections(up) if e.get("engine_tainted")]
    # A restarted engine (a new updater over the same home) is clean and applies it.
    fresh = make_updater()
    assert fresh.apply(good.raw).name == "hotfix-two"
