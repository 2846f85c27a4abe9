"""Aggregator members as real processes (`edgewatch cloud run --nats`), for the cluster tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.nats import NatsCluster


class MemberProcess:
    """One `edgewatch cloud run --nats ... --member <name>`; its log in `<workdir>/<name>.log`."""

    def __init__(
        self, workdir: Path, name: str, cluster: NatsCluster, db_url: str, *, lease_ttl: float
    ) -> None:
        self.name = name
        self.log_path = workdir / f"member-{name}.log"
        self.config_path = workdir / f"member-{name}.toml"
        self.config_path.write_text(
            "[aggregator]\n"
            f"partitions = {cluster.partitions}\n"
            f"lease_ttl = {lease_ttl}\n"
            "tick_interval = 0.5\n"
            "ack_interval = 0.1\n"
            "checkpoint_interval = 2.0\n"
        )
        self.argv = [
            sys.executable, "-m", "edgewatch", "cloud", "run", "--nats", ",".join(cluster.nats_urls()),
            "--db", db_url, "--member", name, "--config", str(self.config_path), "--log-level", "info",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        log.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
