"""A throwaway PostgreSQL server (tests, ``xps demo``): initdb in a temp dir, 127.0.0.1, a free port.

Never for production data: fsync is off and the folder is deleted at :meth:`ThrowawayServer.close`.
Runs as the ``postgres`` (or ``nobody``) user when started as root (the server refuses root).
Needs the server binaries (Debian: ``postgresql``) and psycopg.

Example:
    >>> server = ThrowawayServer(server_bin())                        # doctest: +SKIP
    >>> dsn = server.create_database("demo"); server.close()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from xpscerpto.errors import InternalError

__all__ = ["ThrowawayServer", "server_bin"]


def server_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayServer:
    """One server process; ``dsn(db)`` names a database on it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="xps-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                break
            entry = pwd.getpwnam(self.user or "nobody")
            os.chmod(self.root, 0o711)  # noqa: S103 - the server's user must reach its data folder (traverse only)
            self.data.mkdir()
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "xps", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                       "fsync = off\nmax_connections = 200\nshared_buffers = 32MB\n"
                       # A killed client's backend aborts (and frees its locks) within 0.5 s.
                       "client_connection_check_interval = 500\n")
        self.start()

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,  # noqa: S603 - our own binaries
                              user=self.user, cwd=str(self.root))
        if proc.returncode != 0:
            raise InternalError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"),
                   "-w", "-t", "30", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it crashed)."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def dsn(self, database: str) -> str:
        """The DSN of ``database`` on this server."""
        return f"postgresql://xps@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create ``name`` (from ``template``) and return its DSN."""
        import psycopg

        for attempt in range(50):
            try:
                with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                    suffix = f" TEMPLATE {template}" if template else ""
                    conn.execute(f"CREATE DATABASE {name}{suffix}")
                break
            except psycopg.errors.ObjectInUse:  # the template is briefly in use by another session
                if attempt == 49:
                    raise
                time.sleep(0.1)
        return self.dsn(name)

    def close(self) -> None:
        """Stop the server and remove its files."""
        with contextlib.suppress(InternalError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
