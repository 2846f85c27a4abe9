from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import MOSQUITTO, Mosquitto


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
