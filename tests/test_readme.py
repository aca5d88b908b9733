"""README promises that CI runs its test command verbatim; keep them in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_one_demo_and_one_test_command() -> None:
    demo, test = _commands()[:2]
    assert demo.endswith("xps demo")
    assert test == "bash tools/test.sh"
    assert "pytest" in (ROOT / "tools" / "test.sh").read_text()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test = _commands()[1]
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quick_start_runs() -> None:
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md quick start", "exec"), namespace)
    exec(compile(blocks[1], "README.md engine example", "exec"), namespace)
    assert namespace["plain"] == b"data"
