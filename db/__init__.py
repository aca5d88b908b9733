"""PostgreSQL for several nodes: connections, versioned migrations, the keyring's shared store.

Select it with ``keyring.database: postgresql://HOST/DATABASE`` (no password in the URL) after
``xps db migrate --database postgresql://HOST/DATABASE``. Needs the ``postgresql`` extra.

Example:
    >>> from xpscerpto.db import Database, migrate                 # doctest: +SKIP
    >>> migrate(Database("postgresql://localhost/xps"))
    [1, 2]
"""

from __future__ import annotations

from .migrations import MIGRATIONS, Migration, applied, head, migrate, require
from .postgres import Database, check_dsn, is_dsn

__all__ = ["MIGRATIONS", "Database", "Migration", "applied", "check_dsn", "head", "is_dsn", "migrate", "require"]
