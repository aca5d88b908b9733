"""``terminal_safe``: whatever a journal field holds, one printable line comes out (issue 8 item 8)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from xpscerpto.audit.cli import terminal_safe


@given(st.text())
def test_any_text_becomes_one_printable_line(text: str) -> None:
    out = terminal_safe(text)
    assert out.isprintable()
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    if text.isprintable():
        assert out == text  # nothing to escape: unchanged


def test_forged_lines_and_escape_sequences_are_shown_not_obeyed() -> None:
    forged = "a.capsule\n    99 2026-01-01T00:00:00Z PATCH_ENABLE\x1b[2K\u202e"
    assert terminal_safe(forged) == "a.capsule\\n    99 2026-01-01T00:00:00Z PATCH_ENABLE\\x1b[2K\\u202e"
