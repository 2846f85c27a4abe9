"""End to end through the `edgewatch cloud run` command: SIGKILL and restart, clean errors."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud.store.api import open_store
from tests.mosquitto import Mosquitto, free_port
from tests.test_aggregator import FakeAgent, wait_for

pytestmark = pytest.mark.broker


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgewatch", "cloud", "run", *args], stdout=out, stderr=subprocess.STDOUT
        )


def test_sigkill_mid_stream_then_restart_loses_nothing_doubles_nothing_and_never_re_alerts(
    broker: Mosquitto, tmp_path: Path, store_url: str
) -> None:
    """On each store backend (a SQLite file, the session's private PostgreSQL)."""
    db = store_url
    config = tmp_path / "aggregator.toml"
    # No periodic checkpoint before the kill: the restart must replay everything it had stored
    # through the detectors, and the spike's alert must not come back a second time.
    config.write_text(
        "[aggregator]\n"
        "ack_interval = 0.1\n"
        "tick_interval = 0.2\n"
        "checkpoint_interval = 3600.0\n"
        "batch_linger = 0.005\n"
        "reconnect_base = 1.5\n"
        "reconnect_cap = 1\n"
    )
    args = ["--broker", broker.url, "--db", db, "--config", str(config)]
    log = tmp_path / "aggregator.log"
    devices, per_device, spike_at = ["k-0", "k-1", "k-2"], 600, 450
    rng = random.Random(11)
    t0 = time.time() - per_device - 60
    series = {
        d: [20 + 0.5 * math.sin(i / 20) + rng.gauss(0, 0.05) for i in range(per_device + 1)] for d in devices
    }
    series["k-0"][spike_at] += 20.0
    first = start(args, log)
    agent = FakeAgent(broker, "k-agent")
    try:
        published = 0

        def publish_up_to(n: int) -> None:
            nonlocal published
            while published < n:
                lo = published + 1
                for d in devices:
                    rows = [(s, t0 + s, "sys", "temp", series[d][s], "C") for s in range(lo, lo + 10)]
                    agent.publish(d, "e1", rows)
                published += 10

        publish_up_to(10)  # possibly before it subscribed: then only the resends get through
        wait_for(
            lambda: agent.resend_unacked(older_than=0.5) >= 0 and agent.acked_count("k-0", "e1") > 0,
            what="first run up",
        )
        publish_up_to(500)  # the spike is in here
        wait_for(lambda: agent.acked_count("k-0", "e1") >= 460, what="spike stored and confirmed")
        publish_up_to(530)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        publish_up_to(per_device)  # while it is dead: the broker queues for its session
        agent.resend_unacked(older_than=0.0)
        second = start(args, log)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                agent.acked_count(d, "e1") < per_device for d in devices
            ):
                agent.resend_unacked(older_than=1.0)
                time.sleep(0.2)
            assert all(agent.acked_count(d, "e1") == per_device for d in devices), agent.acked
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        agent.close()
        if first.poll() is None:
            first.kill()
    text = log.read_text()
    assert "replayed" in text, text[-2000:]
    assert "Traceback" not in text
    with open_store(db, readonly=True) as store:
        assert store.count_readings() == len(devices) * per_device
        for d in devices:
            assert [r.seq for r in store.readings(d, "temp")] == list(range(1, per_device + 1))  # each once
            (epoch,) = store.device(d).epochs
            assert (epoch.received, epoch.missing) == (per_device, 0)
        alerts = store.list_alerts(kind="anomaly")
    assert [(a.device, a.start) for a in alerts] == [("k-0", t0 + spike_at)], alerts


def test_unwritable_db_is_a_clear_error_with_nonzero_exit(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "edgewatch", "cloud", "run", "--db", str(blocker / "cloud.db")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "error:" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[aggregator]\nack_interval = 'soon'\n")
    result = subprocess.run(
        [sys.executable, "-m", "edgewatch", "cloud", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "aggregator.ack_interval" in result.stderr and "Traceback" not in result.stderr


def test_missing_broker_is_retried_with_a_clear_message_and_sigterm_stops(tmp_path: Path) -> None:
    log = tmp_path / "aggregator.log"
    port = free_port()  # nothing listens here
    proc = start(["--broker", f"mqtt://127.0.0.1:{port}", "--db", str(tmp_path / "c.db")], log)
    try:
        wait_for(lambda: log.read_text().count("retrying in") >= 2, timeout=30, what="two retries")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"broker mqtt://127.0.0.1:{port}" in text and "Traceback" not in text
