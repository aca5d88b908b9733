"""``xps``: the command line, thin over the library (parse, call, print text or JSON).

:mod:`xpscerpto.cli.main` parses and dispatches; each subsystem registers its own
subcommands (keys, capsules, trust, audit); :mod:`xpscerpto.cli.demo` is ``xps demo``.
"""

from .main import OneLineParser, build_parser, main, run_command

__all__ = ["OneLineParser", "build_parser", "main", "run_command"]
