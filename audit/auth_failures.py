"""``CRYPTO_FAIL_AUTH`` for the raw API: journal an engine's authentication failures.

The engine has no journal; it calls auth-failure listeners on the error path of every call
that fails with XPS_ERR_AUTH (an AEAD decrypt or open, a signature verify, a keyed decrypt)
and never on success. :func:`journal_auth_failures` attaches one that writes the event to an
:class:`~xpscerpto.audit.AuditLog`, rate-limited per operation exactly like the keyring's
(``crypto.audit.auth_fail_per_minute``): a flood of forgeries is counted, not journaled one
by one. A record holds the provider, the operation and the API call, never a key, nonce,
ciphertext or message.

Example:
    >>> import tempfile, pathlib, xpscerpto as xps
    >>> from xpscerpto.audit import AuditLog
    >>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.log")
    >>> eng = xps.Engine()
    >>> detach = journal_auth_failures(eng, log)
    >>> try:
    ...     eng.ed25519.verify(bytes(32), b"m", bytes(64))
    ... except xps.AuthError:
    ...     pass
    >>> [(r["event"], r["operation"], r["call"]) for r in log.tail(1)]
    [('CRYPTO_FAIL_AUTH', 'sig.ed25519', 'verify')]
    >>> detach()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from xpscerpto.errors import PolicyError, XpsError

if TYPE_CHECKING:
    from xpscerpto.engine import Engine

    from .journal import AuditLog

__all__ = ["EVENT", "journal_auth_failures"]

EVENT = "CRYPTO_FAIL_AUTH"


def journal_auth_failures(engine: Engine, log: AuditLog, *, per_minute: int = 10) -> Callable[[], None]:
    """Journal ``engine``'s raw-API authentication failures in ``log``; returns a detach function.

    Records go to bucket ``api:<operation>`` with ``source="api"``, ``operation``,
    ``provider`` and ``call``. A journal that cannot be written never changes what the
    failing caller sees (its AuthError).

    Raises:
        PolicyError: ``per_minute`` is not an int >= 1.
    """
    if type(per_minute) is not int or per_minute < 1:
        raise PolicyError("per_minute: expected an int >= 1")

    def listener(provider: str, operation: str, call: str) -> None:
        with contextlib.suppress(XpsError, OSError):
            log.record_rate_limited(EVENT, f"api:{operation}", per_minute, source="api", operation=operation,
                                    provider=provider, call=call)

    engine.add_auth_failure_listener(listener)
    return lambda: engine.remove_auth_failure_listener(listener)
