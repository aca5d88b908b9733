"""A fault is reported with the version of the table whose route raised it (issue 8 item 1)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from xpscerpto import Engine, EngineConfig, PolicyError, ProviderError
from xpscerpto.interfaces import Aead, Provider


class _Blocking(Aead):
    """Waits inside encrypt until released, then raises: a call in flight across a swap."""

    key_sizes = (32,)
    nonce_size = 12
    tag_size = 16

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def cipher(self, key: Any) -> Any:
        outer = self

        class _C:
            def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
                outer.entered.set()
                outer.release.wait(10)
                raise RuntimeError("fault")

            def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
                raise RuntimeError("fault")
        return _C()


def test_a_call_in_flight_across_a_swap_reports_the_table_it_used() -> None:
    eng = Engine(EngineConfig(providers=("openssl",)))
    impl = _Blocking()
    faulty = Provider(name="faulty", backend="test", version="1", implementations={"aead.aes256gcm": impl})
    old = eng.build_table([*eng.state.providers, faulty], EngineConfig(providers=("openssl", "faulty"),
                                                                        prefer={"aead.aes256gcm": "faulty"}))
    eng.publish(old)
    seen: list[tuple[str, str, int]] = []
    plain: list[str] = []
    eng.add_table_fault_listener(lambda p, o, e, v: seen.append((p, o, v)))
    eng.add_fault_listener(lambda p, o, e: plain.append(p))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            eng.aead.encrypt("AES-256-GCM", bytes(32), b"m")
        except ProviderError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    assert impl.entered.wait(10)
    new = eng.build_table()  # the built-in provider again; the faulting call still holds `old`
    eng.publish(new)
    impl.release.set()
    t.join(10)
    assert len(errors) == 1
    assert seen == [("faulty", "aead.aes256gcm", old.version)] and old.version < new.version
    assert plain == ["faulty"]  # the three-argument listeners see the same fault


def test_a_table_fault_listener_must_be_callable_and_can_be_removed() -> None:
    eng = Engine(lazy=True)
    with pytest.raises(PolicyError):
        eng.add_table_fault_listener(5)  # type: ignore[arg-type]

    def listener(p: str, o: str, e: BaseException, v: int) -> None: ...
    eng.add_table_fault_listener(listener)
    eng.remove_fault_listener(listener)
    assert eng._table_fault_listeners == ()
