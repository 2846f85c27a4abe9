"""End to end: an agent with `modbus` sensors, a real mosquitto and the real aggregator.

One sensor reads an energy meter (pymodbus' server on loopback), another a unit that never
answers. Every reading the meter gave is stored once, with the scaled values, and the
heartbeat tells the aggregator's fleet registry which sensor is failing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("pymodbus", reason="the 'modbus' extra (pymodbus) is not installed")

from cloud.store.api import open_store
from edge.agent import Agent
from edge.config import load_config
from tests.agent_helpers import outbox_seqs
from tests.confirmer import wait_for
from tests.modbus_server import ModbusServer, RegisterMap, SilentTcpServer, words
from tests.mosquitto import Mosquitto
from tests.test_aggregator import fast_config, running

pytestmark = pytest.mark.broker

METER = RegisterMap(
    holding={0: [*words(1234.5, "float32", word_order="little"), 2315]},
    coils={0: [True]},
)


def status_event(db: Path) -> str:
    with open_store(db, readonly=True) as store:
        return store.device("plant-1").status_event if store.list_devices() else ""


def config_text(tmp: Path, broker: Mosquitto, meter_port: int, dead_port: int) -> str:
    return f"""
[device]
id = "plant-1"

[broker]
url = "{broker.url}"

[outbox]
path = "{tmp / "outbox.db"}"
min_free_disk_bytes = 0

[publish]
linger_s = 0.05
heartbeat_s = 0.5
ack_timeout_s = 2.0

[[sensors]]
name = "meter"
driver = "modbus"
interval_s = 0.1
[sensors.params]
transport = "tcp"
host = "127.0.0.1"
port = {meter_port}
unit_id = 1
registers = [
  {{ address = 0, type = "float32", word_order = "little", metric = "power", unit = "W" }},
  {{ address = 2, type = "uint16", scale = 0.1, metric = "voltage", unit = "V" }},
  {{ address = 0, function = "coil", metric = "breaker" }},
]

[[sensors]]
name = "dead"
driver = "modbus"
interval_s = 0.5
retries = 0
[sensors.params]
transport = "tcp"
host = "127.0.0.1"
port = {dead_port}
timeout_s = 0.2
registers = [{{ address = 0, metric = "x" }}]
"""


def test_modbus_readings_reach_the_store_and_a_dead_unit_shows_in_the_heartbeat(
    tmp_path: Path, broker: Mosquitto
) -> None:
    db = tmp_path / "cloud.db"
    config = tmp_path / "agent.toml"
    with ModbusServer(METER) as meter, SilentTcpServer() as dead, running(fast_config(broker, db)):
        config.write_text(config_text(tmp_path, broker, meter.port, dead.port))
        agent = Agent(load_config(config))
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: agent.outbox.counters()["confirmed"] >= 60, 20, "60 readings confirmed")
            wait_for(lambda: agent.counters()["sensor_failing.dead"] >= 2, 10, "the dead unit to fail")
        finally:
            stop.set()
            thread.join(15)
        assert not thread.is_alive()
        # The shutdown message carries the final counters; the aggregator records it.
        wait_for(lambda: status_event(db) == "shutdown", 10, "the shutdown status stored")

    sampled = int(agent.counters()["sampled"])
    unconfirmed = outbox_seqs(tmp_path / "outbox.db")
    with open_store(db, readonly=True) as store:
        power = store.readings("plant-1", "power")
        voltage = store.readings("plant-1", "voltage")
        breaker = store.readings("plant-1", "breaker")
        assert len(power) == len(voltage) == len(breaker) >= 20
        assert {(r.value, r.unit, r.sensor) for r in power} == {(1234.5, "W", "meter")}
        assert {(r.value, r.unit) for r in voltage} == {(231.5, "V")}
        assert {r.value for r in breaker} == {1.0}
        # Every sampled seq is stored exactly once or still waits in the outbox.
        seqs = [r.seq for r in power + voltage + breaker]
        assert len(seqs) == len(set(seqs)) == store.count_readings("plant-1")
        assert set(seqs) | unconfirmed == set(range(1, sampled + 1))
        counters = store.device("plant-1").counters
    assert counters["sensor_failures.meter"] == 0
    assert counters["sensor_failing.meter"] == 0
    assert counters["sensor_failures.dead"] >= 1
    assert counters["sensor_failing.dead"] >= 1
    assert counters["sensor_failures"] == counters["sensor_failures.dead"]
