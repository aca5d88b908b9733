"""The routing state's version memory cannot be lost by an edit or a damaged byte unnoticed.

``highest`` and ``op_highest`` are what refuse a downgrade to an older, vulnerable capsule. A
``state.json`` (or database row) whose memory is below what the same document says was
enabled has lost it; reading it as "nothing remembered" would let that downgrade through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from xpscerpto import UpdateError
from xpscerpto.capsules.store import ActiveCapsule, RoutingState, _digest

SHA1, SHA2, SHA3 = "a" * 64, "b" * 64, "c" * 64


def _state() -> RoutingState:
    state = RoutingState()
    state = state.enable(ActiveCapsule("fast-aes", "1.0.0", SHA1, ("aead.aes256gcm",)), operator="t")
    state = state.enable(ActiveCapsule("fast-aes", "1.2.0", SHA2, ("aead.aes256gcm",)), operator="t")
    state = state.enable(ActiveCapsule("xchacha", "2.0.0", SHA3, ("aead.xchacha20poly1305",)), operator="t")
    return state.disable(state.active[-1], operator="t")  # rolled back: memory stays


def _edit(change: Callable[[dict[str, Any]], None], *, redigest: bool = True) -> bytes:
    """The document changed by ``change``; by default as a deliberate edit that also recomputes
    the digest (the digest catches damage, the consistency checks an edit)."""
    doc = json.loads(_state().to_bytes())
    change(doc)
    if redigest and "digest" in doc:
        doc["digest"] = _digest({k: v for k, v in doc.items() if k != "digest"})
    return json.dumps(doc).encode()


LOST: dict[str, Callable[[dict[str, Any]], None]] = {
    "highest emptied": lambda d: d.update(highest={}),
    "highest entry removed": lambda d: d["highest"].pop("xchacha"),
    "highest lowered": lambda d: d["highest"].update({"fast-aes": "1.1.9"}),
    "highest lowered for a rolled-back capsule": lambda d: d["highest"].update({"xchacha": "1.0.0"}),
    "op_highest emptied": lambda d: d.update(op_highest={}),
    "op_highest lowered": lambda d: d["op_highest"].update({"aead.aes256gcm": "1.0.0"}),
    # One flipped bit: "1.2.0" -> "1.0.0" ('2' ^ 0x02 == '0').
    "a damaged digit": lambda d: d["highest"].update({"fast-aes": "1.0.0"}),
}


def test_the_untouched_document_reads_back_with_its_memory() -> None:
    state = RoutingState.from_bytes(_state().to_bytes(), "state.json")
    assert state.highest == {"fast-aes": "1.2.0", "xchacha": "2.0.0"}
    assert state.op_highest == {"aead.aes256gcm": "1.2.0", "aead.xchacha20poly1305": "2.0.0"}


@pytest.mark.parametrize("edit", sorted(LOST))
def test_a_document_that_lost_version_memory_is_refused(edit: str) -> None:
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(_edit(LOST[edit]), "state.json")
    assert ei.value.reason == "state"
    assert "version memory lost or damaged" in str(ei.value)


@pytest.mark.parametrize("edit", sorted(LOST))
def test_an_edit_that_leaves_the_digest_is_refused_as_damage(edit: str) -> None:
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(_edit(LOST[edit], redigest=False), "state.json")
    assert ei.value.reason == "state"
    assert "digest: does not match the document" in str(ei.value)


def test_raising_the_memory_is_not_a_loss() -> None:
    """A higher remembered version only refuses more (no silent downgrade path)."""
    raw = _edit(lambda d: d["highest"].update({"fast-aes": "9.0.0"}))
    assert RoutingState.from_bytes(raw, "state.json").highest["fast-aes"] == "9.0.0"


def test_an_enabled_version_that_is_no_version_is_refused() -> None:
    raw = _edit(lambda d: d["enabled"]["fast-aes"].update({"latest": SHA1}))
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(raw, "state.json")
    assert ei.value.reason == "state"


@pytest.mark.parametrize("field", ["enabled", "op_highest", "highest", "history", "active", "digest"])
def test_a_current_document_missing_a_field_is_refused_not_derived(field: str) -> None:
    raw = _edit(lambda d: d.pop(field))
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(raw, "state.json")
    assert ei.value.reason == "state"


@pytest.mark.parametrize("fmt", [0, 3, True, "2", None])
def test_an_unknown_format_is_refused(fmt: object) -> None:
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(_edit(lambda d: d.update(format=fmt)), "state.json")
    assert ei.value.reason == "state"


def test_a_format_1_document_without_the_later_fields_still_reads() -> None:
    """Written before ``enabled``/``op_highest`` existed: derived from history and active."""
    doc = json.loads(_state().to_bytes())
    legacy = {"format": 1, "active": doc["active"], "highest": doc["highest"], "history": doc["history"]}
    state = RoutingState.from_bytes(json.dumps(legacy).encode(), "state.json")
    assert state.enabled["fast-aes"] == {"1.0.0": SHA1, "1.2.0": SHA2}
    assert state.op_highest == {"aead.aes256gcm": "1.2.0"}


DAMAGED_ACTIVE: dict[str, Callable[[dict[str, Any]], None]] = {
    # Each is one flipped bit in a real state.json (review F4): read as another capsule, restore
    # un-routed the patch ("not newer than the highest") or dropped it without an audit record.
    "name": lambda d: d["active"][0].update(name="fast-aeq"),
    "version": lambda d: d["active"][0].update(version="1.2.1"),
    "sha256": lambda d: d["active"][0].update(sha256="b" * 63 + "c"),
}


@pytest.mark.parametrize("field", sorted(DAMAGED_ACTIVE))
def test_an_active_entry_that_disagrees_with_enabled_is_refused(field: str) -> None:
    with pytest.raises(UpdateError) as ei:
        RoutingState.from_bytes(_edit(DAMAGED_ACTIVE[field]), "state.json")
    assert ei.value.reason == "state"
    assert "edited or damaged" in str(ei.value)


def test_every_flipped_bit_of_the_document_is_refused() -> None:
    """One bit at every byte, three bits each: a typed refusal, or (whitespace) the same state."""
    raw = _state().to_bytes()
    base = RoutingState.from_bytes(raw, "state.json")
    accepted = []
    for i in range(len(raw)):
        for bit in (0, 1, 5):
            damaged = bytearray(raw)
            damaged[i] ^= 1 << bit
            try:
                state = RoutingState.from_bytes(bytes(damaged), "state.json")
            except UpdateError as exc:
                assert exc.reason == "state"
                continue
            assert state == base, (i, bit)
            accepted.append(i)
    assert set(accepted) <= {len(raw) - 1}  # only the final newline can change into other whitespace


def test_a_rollback_that_restores_a_version_keeps_the_memory_covering_it() -> None:
    """Review: rolling back *to* a version (offline `--to`, or a restore serving another
    operation) saved a document the next load refused, since memory did not cover it."""
    state = _state()
    current = state.active[0]  # fast-aes 1.2.0, which replaced 1.0.0
    restore = ActiveCapsule("fast-aes", "1.0.0", SHA1, ("aead.aes256gcm", "aead.aes128gcm"))
    after = state.disable(current, operator="t", restore=restore)
    reloaded = RoutingState.from_bytes(after.to_bytes(), "state.json")
    assert reloaded.active == after.active
    assert reloaded.op_highest["aead.aes128gcm"] == "1.0.0" and reloaded.highest["fast-aes"] == "1.2.0"
