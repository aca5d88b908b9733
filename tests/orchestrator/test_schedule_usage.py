"""``usage=N`` takes ASCII digits only, up to 2^64: anything else is a typed refusal that names the
field and does not quote the caller's text (review-orch O7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from xpscerpto.errors import ErrorCode, PolicyError
from xpscerpto.orchestrator import Plan, Schedule

BAD = [
    "usage=\u00b2",  # SUPERSCRIPT TWO: isdigit(), but int() raises a ValueError quoting it
    "usage=1\u00b2",
    "usage=\u0661\u0660",  # ARABIC-INDIC "10": int() reads it, the policy stored it as written
    "usage=\uff15",  # FULLWIDTH FIVE
    "usage=" + "9" * 5000,  # past int()'s 4300-digit limit: a ValueError
    "usage=" + "9" * 21,
    "usage=0" + "9" * 20,  # 21 digits, even though its value is small enough
    "usage=+5", "usage= 5", "usage=5 ", "usage=1_000", "usage=0x10",
]


@pytest.mark.parametrize("policy", BAD)
def test_a_usage_count_that_is_not_ascii_digits_is_a_typed_refusal_without_echo(policy: str) -> None:
    for parse in (Schedule.parse, lambda p: Plan("p", key="k", policy=p)):
        with pytest.raises(PolicyError, match="usage") as info:
            parse(policy)
        message = str(info.value)
        assert message.startswith(f"{ErrorCode.POLICY}: policy: usage=N ")
        assert policy[len("usage="):] not in message and len(message) < 200


@pytest.mark.parametrize("policy, count", [("usage=1", 1), ("usage=007", 7), (f"usage={2**64}", 2**64),
                                           ("usage=0" + "0" * 18 + "9", 9)])
def test_ascii_counts_up_to_2_64_are_accepted(policy: str, count: int) -> None:
    assert Schedule.parse(policy).usage == count


@pytest.mark.parametrize("policy", ["usage=\u00b2", "usage=" + "9" * 5000])
def test_the_cli_refuses_a_bad_usage_count_as_a_policy_error_without_echo(policy: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "xpscerpto", "--home", str(tmp_path / "home"), "orch", "plan", "p",
                          "--key", "k", "--policy", policy], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("xps: error: XPS_ERR_POLICY: ") and out.stderr.count("\n") == 1, out.stderr
    assert "usage" in out.stderr and "Traceback" not in out.stderr
    assert "\u00b2" not in out.stderr and "9" * 30 not in out.stderr and len(out.stderr) < 300
