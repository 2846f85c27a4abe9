"""Simulated fleets: reproducible, and the no-loss promise end to end under outages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cloud.store.api import open_store
from simulators.driver import SimulatedDriver
from simulators.faults import read_labels
from simulators.fleet import Fleet, FleetSpec
from tests.confirmer import wait_for
from tests.mosquitto import Mosquitto

EDGEWATCH = [sys.executable, "-m", "edgewatch"]


def test_same_seed_same_readings_and_labels(tmp_path: Path) -> None:
    def values(seed: int) -> list[tuple[str, float]]:
        t = [1.767e9]
        driver = SimulatedDriver(
            {"kinds": ["temperature", "humidity"], "seed": seed, "faults": ["spike"], "faults_per_day": 200},
            clock=lambda: t[0],
        )
        out = []
        for _ in range(500):
            t[0] += 60
            out.extend((m.metric, m.value) for m in driver.read())
        return out

    assert values(7) == values(7)
    assert values(7) != values(8)

    def labels(seed: int, sub: str) -> list[object]:
        spec = FleetSpec(
            "mqtt://127.0.0.1:9",
            devices=6,
            duration_s=3600,
            speed=100,
            seed=seed,
            faults_per_day=24,
            fault_min_gap_s=600,
            outbox_dir=tmp_path / sub,
            start_ts=1.767e9,
        )
        fleet = Fleet(spec)
        fleet.write_labels(tmp_path / f"{sub}.jsonl")
        fleet.close()
        return list(read_labels(tmp_path / f"{sub}.jsonl"))

    first = labels(3, "a")
    assert first, "faults were scheduled"
    assert first == labels(3, "b")
    assert first != labels(4, "c")


def start_aggregator(broker: Mosquitto, db: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EDGEWATCH, "cloud", "run", "--broker", broker.url, "--db", db, "--metrics-port", "0",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )  # fmt: skip


def stored_seqs(db: str) -> dict[tuple[str, str], list[int]]:
    """Every stored reading's seq by (device, epoch), through the store's read model."""
    out: dict[tuple[str, str], list[int]] = {}
    with open_store(db, readonly=True) as store:
        for device in store.list_devices():
            for series in store.device_series(device.device):
                for r in store.readings(device.device, series.metric, sensor=series.sensor, limit=1 << 30):
                    out.setdefault((device.device, r.epoch), []).append(r.seq)
    return out


@pytest.mark.broker
@pytest.mark.slow
def test_soak_outages_broker_restart_and_aggregator_kill(
    tmp_path: Path, broker: Mosquitto, store_url: str
) -> None:
    """20 devices, random link outages, a broker restart, the aggregator SIGKILLed: the store
    holds exactly what was sampled minus what the overflow policy dropped, each reading once.
    On each store backend (a SQLite file, the session's private PostgreSQL).

    Bigger runs by hand: EDGEWATCH_SOAK_DEVICES=200 EDGEWATCH_SOAK_SECONDS=600 pytest -k soak
    """
    devices = int(os.environ.get("EDGEWATCH_SOAK_DEVICES", "20"))
    seconds = float(os.environ.get("EDGEWATCH_SOAK_SECONDS", "50"))
    db, log = store_url, tmp_path / "aggregator.log"
    aggregator = start_aggregator(broker, db, log)
    try:
        spec = FleetSpec(
            broker.url, devices=devices, rate_hz=2.0, duration_s=seconds, speed=1.0, seed=11,
            faults_per_day=0, link_outages=1.0, outage_s=(3.0, 12.0),
            outbox_dir=tmp_path / "outboxes", outbox_max_bytes=40 * 64,  # ~40 readings: outages drop
            ack_timeout_s=4.0, drain_timeout_s=90.0,
        )  # fmt: skip
        fleet = Fleet(spec)
        result: list[object] = []
        runner = threading.Thread(target=lambda: result.append(fleet.run()))
        runner.start()
        time.sleep(seconds * 0.3)
        broker.restart(downtime=2.0)
        time.sleep(seconds * 0.2)
        aggregator.send_signal(signal.SIGKILL)
        aggregator.wait(10)
        time.sleep(2.0)
        aggregator = start_aggregator(broker, db, log)
        runner.join(timeout=seconds + 150)
        assert not runner.is_alive()
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if aggregator.poll() is None:
            aggregator.kill()
            aggregator.wait()

    summary = result[0]
    stored = stored_seqs(db)
    total_dropped = 0
    for d in summary.devices:  # type: ignore[attr-defined]
        seqs = stored.get((d.device, d.epoch), [])
        assert len(seqs) == len(set(seqs)), f"{d.device}: a reading stored twice"
        assert d.backlog == 0, f"{d.device}: {d.backlog} readings never confirmed"
        sampled = set(range(d.first_seq, d.last_seq + 1))
        missing = sampled - set(seqs)
        # Readings dropped before the broker had them are certainly gone; those dropped after a
        # PUBACK (counted apart) may still have been stored.
        assert d.dropped <= len(missing) <= d.dropped + d.dropped_unconfirmed, d
        total_dropped += d.dropped
    assert total_dropped > 0, "the outages should have overflowed some outboxes"
    assert sum(len(v) for v in stored.values()) > devices * seconds  # it really ran


@pytest.mark.broker
def test_demo_shows_an_alert_within_a_minute_and_stops_cleanly(tmp_path: Path) -> None:
    """As a person runs it: alerts within a minute; Ctrl-C (SIGINT to the whole foreground
    process group, as a terminal sends it) stops every process within seconds, in an order that
    leaves no error line, no silent alert, no dead letter and no reading stamped in the future;
    and `edgewatch evaluate` on the demo's own files finds some of its faults."""
    data = tmp_path / "demo"
    demo = subprocess.Popen(
        [*EDGEWATCH, "demo", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"}, start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")), daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        wait_for(lambda: any(" OPEN " in line for line in lines), 60, "an alert on screen")
        first_alert_s = time.monotonic() - started
        labels = data / "labels.jsonl"
        wait_for(lambda: labels.exists() and len(labels.read_text().splitlines()) >= 3, 60, "faults begun")
        time.sleep(5)  # ... and time to see them
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3, [c.cmdline() for c in children]  # broker, aggregator, fleet
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # the terminal's Ctrl-C
        stopping = time.monotonic()
        code = demo.wait(60)
        stop_s = time.monotonic() - stopping
    assert code == 0, "".join(lines)[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert first_alert_s < 60
    assert stop_s < 4.0, stop_s  # three children in order, each given 1.2 s at most
    assert any("stopped;" in line for line in lines)
    logs = {p.name: p.read_text() for p in data.glob("*.log")}
    for name, text in logs.items():
        assert "ERROR" not in text and "Traceback" not in text, (name, text[-2000:])
    assert "stopped: final batch written" in logs["aggregator.log"]
    with open_store(data / "demo.db", readonly=True) as store:
        assert store.list_alerts(kind="silent") == []
        assert store.dead_letter_counts() == {}
        devices = store.list_devices()
        newest = max(ts for d in devices if (ts := store.last_reading_ts(d.device)) is not None)
        assert newest <= time.time()
        shutdowns = sum(1 for d in devices if d.status_event == "shutdown")
    assert shutdowns >= 1  # the agents said goodbye before the aggregator stopped
    evaluate = ["evaluate", "--labels", str(data / "labels.jsonl"), "--db", str(data / "demo.db"), "--json"]
    result = subprocess.run([*EDGEWATCH, *evaluate], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recall"] > 0
