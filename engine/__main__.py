"""``python -m xpscerpto`` is the ``xps`` command."""

import sys

from xpscerpto.cli import main

sys.exit(main())
