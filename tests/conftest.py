from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mosquitto import MOSQUITTO, Mosquitto
from tests.postgres import Postgres, pg_bin


def _require_mosquitto() -> None:
    if not shutil.which("mosquitto") and not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run scripts/test.sh (it installs it as root)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port, stopped after the test."""
    _require_mosquitto()
    mq = Mosquitto(tmp_path / "broker")
    mq.start()
    try:
        yield mq
    finally:
        mq.stop(kill=True)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`mount(size_bytes)` -> a directory on a real tmpfs of that size (root only), unmounted after."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (the fault-injection tests run anyway)")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"small-fs-{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One private PostgreSQL for the session (started on first use); never the shared 5432."""
    if pg_bin() is None:
        pytest.fail("PostgreSQL is not installed: run scripts/test.sh (it installs it as root)")
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


STORE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, empty store lives, once per backend: a SQLite path or a new database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "cloud.db")
    server: Postgres = request.getfixturevalue("postgres_server")
    return server.create_database()
