"""Fixtures for the built-in providers' tests.

``jit_ready``: the numba kernels, compiled once per test session into a fresh cache directory
(``jit_cache``) and then shared by every test, in this process and in the subprocesses that
load them from that cache. numba is a declared dependency: if the kernels cannot be made ready
the tests fail with the reason, they are not skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xpscerpto.plugins import jit


@pytest.fixture(scope="session")
def jit_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory private to this session (compiled into once, by ``jit_ready``)."""
    return tmp_path_factory.mktemp("jit-cache")


@pytest.fixture(scope="session")
def jit_ready(jit_cache: Path) -> jit.JitStatus:
    """The jit kernels, warmed up for this process (compiles: about half a minute)."""
    status = jit.warm_up(jit_cache, mask="")
    assert status.state == "ready", status.reason
    assert status.loaded_from_cache is False  # a fresh directory: compiled, so inspectable
    return status
