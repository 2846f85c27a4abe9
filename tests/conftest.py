from __future__ import annotations

import shutil
from collections.abc import Iterator
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
