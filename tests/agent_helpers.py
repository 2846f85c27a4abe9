from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.model import Measurement
from edge.agent import Agent
from edge.config import AgentConfig, parse_config


class CountingDriver:
    """A sensor that reads 1, 2, 3, ...: every value is distinct and checkable."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.n = 0

    def read(self) -> list[Measurement]:
        self.n += 1
        return [Measurement("count", float(self.n), "")]

    def close(self) -> None:
        pass


def agent_config(
    tmp: Path,
    url: str,
    *,
    device: str = "dev-1",
    interval_s: float = 0.05,
    sensors: int = 1,
    outbox: Mapping[str, Any] | None = None,
    publish: Mapping[str, Any] | None = None,
) -> AgentConfig:
    data: dict[str, Any] = {
        "device": {"id": device},
        "broker": {"url": url, "keepalive_s": 5},
        "outbox": {"path": str(tmp / f"{device}.db"), "min_free_disk_bytes": 0, **(outbox or {})},
        "publish": {
            "linger_s": 0.05,
            "ack_timeout_s": 2.0,
            "reconnect_base_s": 0.1,
            "reconnect_max_s": 1.0,
            "heartbeat_s": 1.0,
            **(publish or {}),
        },
        "sensors": [
            {"name": f"s{i}", "driver": "counting", "interval_s": interval_s} for i in range(sensors)
        ],
    }
    return parse_config(data)


class RunningAgent:
    """An Agent on a background thread with counting sensors."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config, drivers={s.name: CountingDriver() for s in config.sensors})
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,), daemon=True)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self.agent

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "agent did not stop"

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


def outbox_seqs(path: Path) -> set[int]:
    """The seqs still in an outbox (unconfirmed): with what the cloud received, they must make up
    every seq sampled. Read directly, since they need not be the newest ones."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {seq for (seq,) in conn.execute("SELECT seq FROM outbox")}
    finally:
        conn.close()
