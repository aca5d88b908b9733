#!/usr/bin/env python3
"""Publisher tool: generate keys, build, co-sign, inspect and verify capsules.

    python tools/make_capsule.py keygen --out alice
    python tools/make_capsule.py build capsules/demo-capsule --key alice.key --out xchacha20-openssl-1.0.0.capsule
    python tools/make_capsule.py inspect xchacha20-openssl-1.0.0.capsule
    python tools/make_capsule.py verify xchacha20-openssl-1.0.0.capsule --trust alice.pub

The same commands are ``xps capsule …``. See capsules/FORMAT.md for the file format.
"""

import sys

from xpscerpto.capsules.cli import main

if __name__ == "__main__":
    sys.exit(main())
