"""The closed set of refusal codes, and the type that lets capsule code run."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from xpscerpto.capsules._verifier import VerifiedCapsule, is_verified, verify_capsule
from xpscerpto.capsules.loader import load_provider
from xpscerpto.capsules.refusal import Refusal, refuse
from xpscerpto.errors import InternalError, PolicyError, UpdateError

from .conftest import CapsuleFactory, assert_never_ran

FORMAT_MD = Path(__file__).resolve().parents[2] / "capsules" / "FORMAT.md"
CAPSULE_CODE = Path(__file__).resolve().parents[2] / "capsules"


def test_format_md_documents_exactly_the_refusal_codes() -> None:
    table = FORMAT_MD.read_text().split("A refusal carries one `reason` code")[1].split("\n\n")[1]
    documented = set(re.findall(r"`([a-z-]+)`", table))
    assert documented == {r.value for r in Refusal}


def test_no_capsule_module_passes_a_free_text_reason() -> None:
    for path in sorted(CAPSULE_CODE.glob("*.py")):
        text = path.read_text()
        assert not re.search(r'reason="[a-z-]+"', text), path.name
        assert not re.search(r'_reject\([^)]*, "[a-z-]+"\)', text), path.name


def test_refuse_types_the_error_by_code() -> None:
    assert type(refuse(Refusal.ROLLBACK, "version: x")) is UpdateError
    policy = refuse(Refusal.POLICY, "operations.aead.aes128gcm: forbidden")
    assert type(policy) is PolicyError and policy.reason is Refusal.POLICY


def _verified(factory: CapsuleFactory) -> VerifiedCapsule:
    cap = factory.build(factory.source())
    return verify_capsule(cap.raw, trust=factory.trust(), highest={}, now=datetime.now(UTC))


def test_only_the_verifier_makes_a_verified_capsule(factory: CapsuleFactory) -> None:
    verified = _verified(factory)
    fields = {f.name: getattr(verified, f.name) for f in dataclasses.fields(verified) if f.name != "_mint"}
    with pytest.raises(InternalError, match="only verify_capsule"):
        VerifiedCapsule(**fields)
    # replace() copies the construction token: the copy is refused where code would run.
    forged = dataclasses.replace(verified, files={"evil.py": b"raise SystemExit"})
    assert not is_verified(forged) and is_verified(verified)
    with pytest.raises(InternalError, match="expected a VerifiedCapsule"):
        load_provider(forged)


def test_the_loader_runs_nothing_but_a_verified_capsule(factory: CapsuleFactory) -> None:
    source = factory.source()
    cap = factory.build(source)
    look_alike = type("Fake", (), {"manifest": None, "sha256": cap.sha256, "files": source.files})()
    with pytest.raises(InternalError, match="expected a VerifiedCapsule"):
        load_provider(look_alike)  # type: ignore[arg-type]
    assert_never_ran(cap)
