"""Issue 10 over the keyring, the configuration loader, the home and the journal: every public
function given anything returns a correct result or raises an XpsError with a valid code, and
no message carries the caller's bytes (beyond a type and a length)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpscerpto.audit import AuditLog
from xpscerpto.config import XpsConfig
from xpscerpto.errors import ErrorCode, XpsError
from xpscerpto.home import Home
from xpscerpto.keyring import Keyring

SECRET = bytes(range(200, 232))  # 32 recognisable bytes; must never appear in a message

WEIRD: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.binary(max_size=64), st.text(max_size=40),
    st.just(SECRET), st.just(bytearray(SECRET)), st.just(SECRET.hex()),
    st.just(memoryview(SECRET)[::2]), st.lists(st.integers(0, 300), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.just(object()),
)

SEEN: Counter[str] = Counter()


def _checked(call: Any) -> None:
    try:
        call()
    except XpsError as exc:
        assert exc.code in set(ErrorCode), exc
        message = str(exc)
        for needle in (SECRET.hex(), repr(SECRET)[2:40], SECRET.decode("latin-1")[:8]):
            assert needle not in message, message
        SEEN[type(exc).__name__] += 1
    except Exception as exc:  # anything else is a defect
        raise AssertionError(f"untyped {type(exc).__name__}: {exc}") from exc


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    r = Keyring(tmp_path_factory.mktemp("fuzz") / "home")
    r.create("real")
    yield r
    r.close()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(name=WEIRD, data=WEIRD, aad=WEIRD)
def test_encrypt_decrypt_and_lookups_take_anything(ring: Keyring, name: Any, data: Any, aad: Any) -> None:
    _checked(lambda: ring.encrypt(name, data, aad))
    _checked(lambda: ring.decrypt(data, aad))
    _checked(lambda: ring.decrypt(data))
    _checked(lambda: ring.describe(name))
    _checked(lambda: ring.get(name, version=data))
    _checked(lambda: ring.unused_for(name, data))
    _checked(lambda: ring.rewrap(data, aad))
    _checked(lambda: ring.rewrap_revoked(data, aad))


@FUZZ
@given(name=WEIRD, algo=WEIRD, policy=WEIRD, version=WEIRD, flag=WEIRD)
def test_lifecycle_calls_take_anything(ring: Keyring, name: Any, algo: Any, policy: Any, version: Any,
                                       flag: Any) -> None:
    _checked(lambda: ring.create(name, algo, policy))
    _checked(lambda: ring.rotate(name, expected_version=version, algorithm=algo))
    _checked(lambda: ring.rotate("real", expected_version=version))
    _checked(lambda: ring.revoke(name, policy, emergency=flag))
    _checked(lambda: ring.destroy(name, version=version, emergency=flag))
    _checked(lambda: ring.grant_rewrap(name, algo, reason=policy))
    _checked(lambda: ring.remove_operator(name))
    # A file path is echoed in its error (which file, is the point); a path is never key material.
    path = None if isinstance(name, str) and name == SECRET.hex() else name
    _checked(lambda: ring.register_operator(path, label=policy))
    _checked(lambda: ring.apply_policy(name, reason=policy))


def test_a_real_key_still_works_after_the_fuzzing(ring: Keyring) -> None:
    assert ring.decrypt(ring.encrypt("real", b"m")) == b"m"


@settings(max_examples=100, deadline=None)
@given(home=WEIRD, config=WEIRD, approvals=WEIRD, clock=WEIRD, operator=WEIRD)
def test_keyring_constructor_takes_anything(tmp_path_factory: pytest.TempPathFactory, home: Any, config: Any,
                                            approvals: Any, clock: Any, operator: Any) -> None:
    def build() -> None:
        root = home if isinstance(home, str | Path) and home and "\x00" not in home else None
        where = tmp_path_factory.mktemp("ctor") / (str(root).replace("/", "_")[:20] or "h") if root else home
        Keyring(where, config=config, approvals=approvals, clock=clock, operator=operator).close()

    _checked(build)


@settings(max_examples=300, deadline=None)
@given(doc=st.recursive(WEIRD, lambda kids: st.dictionaries(
    st.sampled_from(["crypto", "aead", "keyring", "policy", "hotpatch", "tls", "engine", "approvals", "audit",
                     "default", "nonce", "rotation_days", "dual_window_days", "forbid", "kek", "provider",
                     "require_signature", "rekey_messages", "revoke", "max_encryptions", "AES-256-GCM"]), kids,
    max_size=4), max_leaves=12))
def test_configuration_documents_take_anything(doc: Any) -> None:
    _checked(lambda: XpsConfig.from_mapping(doc))
    _checked(lambda: XpsConfig.from_mapping({"crypto": doc}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=WEIRD, value=WEIRD, anchor=WEIRD, n=WEIRD)
def test_journal_calls_take_anything(tmp_path: Path, event: Any, value: Any, anchor: Any, n: Any) -> None:
    log = AuditLog(tmp_path / "audit.log")
    _checked(lambda: log.record(event, field=value))
    _checked(lambda: log.record("X", field=value))
    _checked(lambda: log.record_once("X", value, since=n))
    _checked(lambda: log.verify(anchor=anchor))
    _checked(lambda: log.tail(n) if isinstance(n, int) and n < 10**6 else None)


@settings(max_examples=100, deadline=None)
@given(path=WEIRD)
def test_home_resolve_takes_anything(path: Any) -> None:
    _checked(lambda: Home.resolve(path, create=False))


def test_report_what_the_fuzzing_saw() -> None:
    # Printed for the closing note (pytest -s); the typed errors above are the assertion.
    print("typed errors seen:", dict(SEEN))
    assert SEEN, "the fuzz tests above ran no failing call at all"
    assert not any(re.search(r"(?i)overflow|buffer|index", name) for name in SEEN)
