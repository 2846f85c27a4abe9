"""`edgewatch alerts follow` as a real subprocess against a real broker.

The first test raises an alert the way production does (readings with a spike through the
aggregator) and waits for the follower to print its OPEN and CLOSED lines; the second feeds
it a hand-made alert payload and reads the JSON line back.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud.store.api import open_store
from devices import wire
from devices.model import AlertEvent, AlertKind, AlertState
from tests.mosquitto import Mosquitto
from tests.test_aggregator import FakeAgent, fast_config, running, wait_for

pytestmark = pytest.mark.broker


def start_follower(
    broker: Mosquitto, tmp_path: Path, *args: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgewatch", "alerts", "follow", "--broker", broker.url, *args],
            stdout=stdout,
            stderr=stderr,
        )
    return proc, out, err


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_follow_prints_the_alert_the_aggregator_raises(broker: Mosquitto, tmp_path: Path) -> None:
    follower, out, err = start_follower(broker, tmp_path, "--device", "f-live")
    db = tmp_path / "cloud.db"
    try:
        wait_for(lambda: "connected" in err.read_text() or follower.poll() is not None, what="follower up")
        assert follower.poll() is None, err.read_text()
        rng = random.Random(5)
        t0 = time.time() - 400
        with running(fast_config(broker, db)):
            agent = FakeAgent(broker, "live-publisher")
            try:
                for device in ("f-live", "f-other"):  # the other one's alert must not be shown
                    rows = [
                        (i + 1, t0 + i, "sys", "temp", 20 + 0.5 * math.sin(i / 15) + rng.gauss(0, 0.05)
                         + (15.0 if i == 250 else 0.0), "C")
                        for i in range(300)
                    ]  # fmt: skip
                    for lo in range(0, 300, 20):
                        agent.publish(device, "e1", rows[lo : lo + 20])
                wait_for(lambda: "CLOSED" in out.read_text(), what="OPEN and CLOSED lines of f-live's alert")
            finally:
                agent.close()
        with open_store(db, readonly=True) as store:
            (live,) = store.list_alerts(device="f-live")
            alert_id, start = live.alert_id, live.start
            assert len(store.list_alerts(device="f-other")) == 1
        assert start == pytest.approx(t0 + 250)
        lines = out.read_text().splitlines()
        assert len(lines) == 2, lines
        opened, closed = lines
        # the aggregator's v1.1 alert names the sensor: "sys/temp"
        assert "OPEN" in opened and "f-live" in opened and "sys/temp" in opened and alert_id in opened
        assert "CLOSED" in closed and alert_id in closed
        assert time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) in opened
        assert stop(follower) == 0
    finally:
        stop(follower)
    assert "Traceback" not in err.read_text()


def test_follow_json_lines_and_count(broker: Mosquitto, tmp_path: Path) -> None:
    follower, out, err = start_follower(broker, tmp_path, "--json", "--count", "1")
    event = AlertEvent(
        alert_id="0123456789abcdef0123", device="pi-9", metric="temp", kind=AlertKind.ANOMALY,
        state=AlertState.OPEN, start=1_700_000_000.0, end=None, peak_score=0.9, value=41.5,
        expected_low=19.0, expected_high=23.0, severity="warning", detector="default",
    )  # fmt: skip
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-source")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        wait_for(lambda: "connected" in err.read_text() or follower.poll() is not None, what="follower up")
        deadline = time.monotonic() + 20
        while follower.poll() is None and time.monotonic() < deadline:  # until its SUBACK is in
            client.publish(wire.alert_topic("pi-9"), wire.encode_alert(event), qos=1)
            time.sleep(0.3)
        assert follower.wait(10) == 0, err.read_text()
    finally:
        client.loop_stop()
        client.disconnect()
        stop(follower)
    (line,) = out.read_text().splitlines()
    data = json.loads(line)
    assert (data["alert_id"], data["device"], data["state"], data["kind"], data["sensor"]) == (
        "0123456789abcdef0123", "pi-9", "open", "anomaly", "",
    )  # fmt: skip
    assert data["value"] == 41.5 and data["start_iso"] == "2023-11-14T22:13:20.000Z" and data["end"] is None
