"""Review s9 F3: a first roster smaller than an approval threshold locks the home for good.

``policy apply`` and ``operator remove`` refuse that lock-out; the set-up that ``xps init``
does (``Keyring.register_operators`` on a home with no operator and no key) must too, and
thresholds must have an upper bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xpscerpto.config import XpsConfig
from xpscerpto.errors import PolicyError
from xpscerpto.keyring import Keyring
from xpscerpto.keyring.config import ApprovalsConfig
from xpscerpto.signing import generate_keypair


def _approvals(**thresholds: int) -> ApprovalsConfig:
    return XpsConfig.from_mapping({"approvals": thresholds}).approvals


def test_first_roster_below_threshold_is_refused_and_nothing_registered(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "op1")
    with Keyring(tmp_path / "home", approvals=_approvals(revoke=2, destroy=2)) as ring:
        with pytest.raises(PolicyError, match=r"approvals\.revoke: 2 approvals would be more than the 1"):
            ring.register_operators([tmp_path / "op1.pub"])
        # Refused in the same transaction: the set-up window is still open for a right roster.
        assert len(ring.operators().keys) == 0
        generate_keypair(tmp_path / "op2")
        ids = ring.register_operators([tmp_path / "op1.pub", tmp_path / "op2.pub"])
        assert len(ring.operators().keys) == len(ids) == 2


def test_first_roster_meeting_thresholds_is_accepted(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "op1")
    with Keyring(tmp_path / "home", approvals=_approvals(revoke=1, destroy=1, emergency_revoke=1)) as ring:
        ring.register_operators([tmp_path / "op1.pub"])
        assert len(ring.operators().keys) == 1


@pytest.mark.parametrize("key", ["revoke", "destroy"])
def test_threshold_has_an_upper_bound(key: str) -> None:
    with pytest.raises(PolicyError, match=rf"approvals\.{key}'?: must be <= 1000"):
        _approvals(**{key: 10**29})
