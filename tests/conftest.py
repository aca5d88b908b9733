"""Settings for the whole test suite."""

from __future__ import annotations

import os
import tempfile

# Engines made by tests route statically unless a test asks for autotune itself
# (EngineConfig(autotune=True)): measuring in the background of every Engine() would load the
# machine and make each test's routing depend on timing. tests/engine/test_tuning.py and the
# CLI tests of `xps tune` turn it on explicitly.
os.environ.setdefault("XPS_AUTOTUNE", "0")
# Measurements made by tests never land in (or come from) the user's cache.
os.environ.setdefault("XPS_AUTOTUNE_CACHE", os.path.join(tempfile.mkdtemp(prefix="xps-test-tune-"), "autotune.json"))
