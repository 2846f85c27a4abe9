"""A private PostgreSQL server for tests and benches: initdb + pg_ctl in a tmp dir, loopback only.

Never the machine's shared server on 5432: a free port, its own data directory and its own unix
socket directory, trust authentication (it listens on 127.0.0.1 only and lives as long as the
test session). As root the server runs as the `postgres` user (PostgreSQL refuses to run as
root), in a directory that user owns. `fsync=off` by default: a test server that loses its data
on a power cut loses nothing of value, and the suite stays fast; the bench keeps fsync on.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.mosquitto import free_port, wait_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def pg_bin() -> Path | None:
    """The newest installed server's bin directory (initdb, pg_ctl), or None."""
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class Postgres:
    """One server; `url(db)` names a database on it, `create_database()` makes a fresh one."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: run scripts/test.sh (it installs it as root)")
        self.bindir = bindir
        self.fsync = fsync
        self.workdir = Path(tempfile.mkdtemp(prefix="ew-pg-"))
        self.data = self.workdir / "data"
        self.socket_dir = self.workdir / "sock"
        self.socket_dir.mkdir()
        self.log = self.workdir / "server.log"
        self.port = free_port()
        self.user = "postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as_user, *argv], check=True, capture_output=True, cwd=self.workdir)

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=50 "
            "-c shared_buffers=128MB -c max_wal_size=2GB"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )
        wait_port(self.port)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)
