"""``python -m xpscerpto`` is the ``xps`` command."""

import sys

from .cli import main

sys.exit(main())
