"""What every ``xps`` command reads from the global options: configuration, home, output mode.

Subsystems register their own subcommands (``xpscerpto.keyring.cli``, ``xpscerpto.capsules.cli``
…) and use these helpers, so ``--config``, ``--home`` and ``--json`` mean the same everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xpscerpto.config import XpsConfig
from xpscerpto.engine import Engine
from xpscerpto.errors import PolicyError, XpsError
from xpscerpto.home import Home

__all__ = ["check_out", "config", "effective_config", "emit", "engine", "home", "home_config", "recorded_policy"]


def config(args: argparse.Namespace) -> XpsConfig:
    """The configuration ``--config`` names, or every default."""
    return XpsConfig.load(args.config) if args.config else XpsConfig.defaults()


def effective_config(args: argparse.Namespace) -> XpsConfig:
    """What ``xps config show`` prints: the configuration ``--config`` names (else every default)
    under what the home imposes on it, as ``xps watch`` would start with it.

    The home's recorded security policy replaces the file's security keys, and the home's
    emergency overrides (``overrides.json``) are applied; a home with no record changes
    nothing (and is not created). A running engine's ``--canary-*`` flags are not known here.

    Raises:
        PolicyError: the file, the home's record or ``overrides.json`` is unreadable or invalid.
        KeyringTampered: the record's policy differs from the one the home's keyring sealed.
    """
    cfg = config(args)
    h = Home.resolve(args.home, create=False)
    if not h.record_path.exists():
        return cfg
    policy = recorded_policy(h, cfg)
    cfg = cfg.with_security_policy(policy).under_recorded_routing(policy, given=args.config is not None)
    from xpscerpto.capsules.service import read_overrides

    for key, value in read_overrides(h).items():
        cfg = cfg.plan_emergency_change(key, value, operator="config show", reason="overrides.json").config
    return cfg.raised_to_recorded_routing(policy)[0]  # as `xps watch` starts: never below the floor


def home_config(args: argparse.Namespace, *, verify: bool = True) -> XpsConfig:
    """The configuration of a command that runs against the home (``xps key``, ``xps watch`` …).

    ``--config`` (else every default) with its routing policy bound by the one the home
    recorded: without a file the record's ``forbid``/``allow``/``require_constant_time``
    apply; a file may add to them, and one that drops a recorded entry is refused. A home
    with no record binds nothing (and is not created here). ``verify=False`` reads the record
    without opening the keyring, for a caller that opens it next (the open checks the record).

    Raises:
        PolicyError: the file is invalid, or looser than the home's recorded routing policy.
        KeyringTampered: the record's policy differs from the one the home's keyring sealed.
    """
    cfg = config(args)
    h = Home.resolve(args.home, create=False)
    if not h.record_path.exists():
        return cfg
    policy = recorded_policy(h, cfg) if verify else h.record().policy
    return cfg.under_recorded_routing(policy, given=args.config is not None)


def recorded_policy(h: Home, cfg: XpsConfig) -> Mapping[str, Any]:
    """The policy ``h`` records, once checked against its keyring's sealed copy (if it has one).

    ``home.json`` alone is editable by whoever can write the home; a floor read from it
    unchecked let ``xps watch`` route what an incident forbade (found by a review). ``cfg``
    says where the keyring and journal are (a PostgreSQL keyring, say).

    Raises:
        KeyringTampered: the record's policy differs from the sealed one.
        XpsError: the home has a keyring that cannot be opened (a PKCS#11 PIN not set …).
    """
    from xpscerpto.capsules.service import check_sealed_policy

    check_sealed_policy(h, cfg, operator="cli")
    return h.record().policy  # re-read: the open finishes a `policy apply` killed before home.json


def engine(args: argparse.Namespace) -> Engine:
    """An engine under the configuration's ``engine:`` section."""
    return Engine(config(args).engine)


def home(args: argparse.Namespace) -> Home:
    """The engine home ``--home`` names (else ``$XPS_HOME`` or the XDG default), created 0700."""
    return Home.resolve(args.home)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], None]) -> None:
    """Print ``data`` as JSON under ``--json``, else call ``text()``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        text()


#: What ``check_out`` calls a file type it refuses to replace.
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def check_out(args: argparse.Namespace, path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a file an output option may write; PolicyError naming ``option`` if not.

    Output writers replace the target whole (temp file, rename). That is wanted for a file of
    the caller's (a CRL refreshed, a capsule rebuilt or signed in place), never for what the
    rename would destroy: a device node, FIFO, socket or directory, a symbolic link (replaced
    itself, while the caller meant its target), or a file of the engine home (``kek.key``
    replaced by a request loses every key for good). The home is the one ``--home`` /
    ``$XPS_HOME`` names, compared by resolved paths, with any file store its record places
    outside it, and any other folder that is a home (``home.json`` beside a KEK, keyring or
    journal; or its ``capsules/``); no home is created or opened. The message does not repeat
    the path.
    """
    target = Path(path)
    try:
        st = os.lstat(target)
    except OSError:
        st = None  # missing, or not reachable (a name too long, a parent that is a file): the write says which
    except ValueError:  # a NUL byte
        raise PolicyError(f"{option}: not a usable path") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise PolicyError(f"{option}: the path is {kind}; only a regular file is replaced")
    resolved = Path(os.path.realpath(target.parent)) / target.name
    found = [what for protected, what in _home_files(args) if resolved == protected or protected in resolved.parents]
    # Another home than the one named (``pki crl`` needs none): its folder, or its capsules/.
    found += ["inside an engine home" for folder in resolved.parents[:2] if _is_home(folder)]
    if found:
        raise PolicyError(f"{option}: the path is {found[0]}; the home's files are xps's own (write the output "
                          "elsewhere)")
    return target


#: Files that, next to a home.json, make a folder an engine home (a home.json alone may be anyone's).
_HOME_MARKS = ("kek.key", "keyring.db", "audit.log", "audit.key")


def _is_home(folder: Path) -> bool:
    try:
        return (folder / "home.json").is_file() and any(os.path.lexists(folder / m) for m in _HOME_MARKS)
    except OSError:
        return False


def _home_files(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The engine home's folder and the file stores its record keeps outside it, resolved."""
    try:
        h = Home.resolve(getattr(args, "home", None), create=False)
    except XpsError:
        return []  # no usable home: nothing of one to protect
    found = [(Path(os.path.realpath(h.root)), "inside the engine home")]
    try:
        record = h.record() if h.record_path.is_file() else None
    except (XpsError, OSError):
        record = None  # unreadable: whoever opens the home reports it
    for ref in record.stores.values() if record is not None else ():
        if not ref.startswith(("pkcs11:", "postgresql://")):
            found.append((Path(os.path.realpath(h.root / ref)), "a store file of the engine home"))
    return found
