"""Known-answer tests: vector files, their loaders, and the power-on self-test runner.

``selftest/`` holds a few vectors per operation (drawn from Wycheproof and the RFCs, each
citing its source); the engine runs them against every provider before routing it.
``wycheproof/`` (in the source tree) holds the full upstream files for the conformance suite.
"""

from .selftest import KatResult, parse_vectors, run_selftest, selftest_vectors

__all__ = ["KatResult", "parse_vectors", "run_selftest", "selftest_vectors"]
