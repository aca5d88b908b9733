"""Keyring test fixtures: a real SoftHSM2 token, fresh for every test.

``softhsm_token`` gives each test its own token folder (SoftHSM2 reads ``SOFTHSM2_CONF`` when the
module is initialised, and :class:`~xpscerpto.keyring.kek.Pkcs11Kek` finalises the module when
the last provider closes, so the next test starts clean). SoftHSM2 is a test dependency
(tools/test.sh installs the Debian package ``softhsm2``): when it is missing the tests fail,
they are not skipped.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SOFTHSM_TOKEN_LABEL = "xps-test"
SOFTHSM_PIN = "1234"
SOFTHSM_SO_PIN = "5678"

# Where distributions put the module: Debian's stable path first, then multiarch and /usr/local.
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def softhsm_module() -> str:
    """Path of the SoftHSM2 PKCS#11 module; fails the test when SoftHSM2 is not installed."""
    for candidate in _MODULE_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    pytest.fail("SoftHSM2 module libsofthsm2.so not found: install the softhsm2 package (tools/test.sh does)")


def softhsm_init_token(label: str, pin: str = SOFTHSM_PIN, so_pin: str = SOFTHSM_SO_PIN) -> None:
    """Initialise one more token in the current SOFTHSM2_CONF's token folder.

    Do it before opening any provider in the test: SoftHSM2 only sees tokens that existed when
    the module was initialised.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.fail("softhsm2-util not found: install the softhsm2 package (tools/test.sh does)")
    proc = subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                          capture_output=True, text=True, check=False, env=os.environ.copy())
    if proc.returncode != 0:
        pytest.fail(f"softhsm2-util --init-token failed ({proc.returncode}): {proc.stderr.strip()}")


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """A freshly initialised SoftHSM2 token: yields ``(module_path, token_label, pin)``.

    At teardown every :class:`~xpscerpto.keyring.kek.Pkcs11Kek` on the module must be closed;
    one left open fails the test (and is cleared so it cannot leak into the next test's token).
    """
    module = softhsm_module()
    tokens = tmp_path / "softhsm-tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\n"
                    "objectstore.backend = file\n"
                    "log.level = ERROR\n"
                    "slots.removable = false\n"
                    "slots.mechanisms = ALL\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    softhsm_init_token(SOFTHSM_TOKEN_LABEL)
    yield module, SOFTHSM_TOKEN_LABEL, SOFTHSM_PIN
    _assert_module_released(module)


def _assert_module_released(module: str) -> None:
    from xpscerpto.keyring import kek

    gc.collect()  # providers dropped without close() release through their finalizer
    real = os.path.realpath(module)
    with kek._REGISTRY_LOCK:
        ref = kek._MODULES.pop(real, None)
        if ref is None:
            return
        # Forget the leaked registration and finalise the module so the next test's
        # SOFTHSM2_CONF is read afresh; leaked providers then release a dead registration.
        for key in [k for k in kek._TOKENS if k[0] == real]:
            del kek._TOKENS[key]
        ref.lib.finalize()
    pytest.fail(f"{ref.refs} Pkcs11Kek provider(s) on {module} left open: close() every provider")
