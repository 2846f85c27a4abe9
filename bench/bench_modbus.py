"""Modbus figures: readings/s one agent sustains from a Modbus TCP device with 100 registers, and
the agent's RSS with the modbus extra loaded.

Run by hand (not a test):  .venv/bin/python bench/bench_modbus.py [--seconds 20] [--rss-seconds 30]

The device is pymodbus' own server in a separate process on loopback, 100 holding registers
(uint16, one metric each, so one read is one 100-register request and 100 readings). Printed:
- the ceiling: raw pymodbus client reads of the same block, back to back (no decoding);
- the driver alone: ModbusDriver.read() back to back (plan, request, decode, scale);
- the agent: the same sensor at interval 1 ms in a real Agent publishing to a loopback mosquitto
  and confirmed from a separate process; sampled and confirmed readings/s, and the backlog at
  the start and end of the window; then again paced at 80% of that confirmed rate, where the
  backlog must stay flat if the agent sustains it;
- `edgewatch agent run` as a subprocess with that sensor at 1 Hz: peak RSS, next to the same
  agent with the `system` driver instead (what the agent costs without pymodbus).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from bench_agent import CONFIRMER
from pymodbus.client import ModbusTcpClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices.drivers.modbus import ModbusDriver  # noqa: E402
from edge.agent import Agent  # noqa: E402
from edge.config import parse_config  # noqa: E402
from tests.confirmer import wait_for  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

REGISTERS = 100
SERVER = (
    "import sys, time; sys.path.insert(0, '{root}');"
    "from tests.modbus_server import ModbusServer, RegisterMap;"
    "srv = ModbusServer(RegisterMap(holding={{0: list(range(1000, 1000 + {n}))}})).start();"
    "print(srv.port, flush=True); time.sleep(3600)"
)


def register_map() -> list[dict[str, object]]:
    return [{"address": a, "metric": f"r{a:03d}", "scale": 0.1, "unit": "V"} for a in range(REGISTERS)]


def modbus_params(port: int) -> dict[str, object]:
    return {"transport": "tcp", "host": "127.0.0.1", "port": port, "registers": register_map()}


def raw_ceiling(port: int, seconds: float) -> float:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    assert client.connect()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        response = client.read_holding_registers(0, count=REGISTERS, device_id=1)
        assert not response.isError() and len(response.registers) == REGISTERS
        n += 1
    elapsed = time.perf_counter() - t0
    client.close()
    return n * REGISTERS / elapsed


def driver_alone(port: int, seconds: float) -> float:
    driver = ModbusDriver(modbus_params(port))
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(driver.read())
    elapsed = time.perf_counter() - t0
    driver.close()
    return n / elapsed


def agent_rate(
    tmp: Path, broker: Mosquitto, port: int, seconds: float, *, interval_s: float
) -> tuple[float, float, tuple[int, int]]:
    """Sampled and confirmed readings/s over `seconds` after the first confirmation, and the
    backlog (pending + awaiting confirmation) at the start and the end of that window."""
    tmp.mkdir()
    cfg = parse_config(
        {
            "device": {"id": "bench-modbus"},
            "broker": {"url": broker.url},
            "outbox": {"path": str(tmp / "modbus.db"), "max_bytes": 10**10, "min_free_disk_bytes": 0},
            "sensors": [
                {"name": "meter", "driver": "modbus", "interval_s": interval_s, "params": modbus_params(port)}
            ],
        }
    )
    confirmer = subprocess.Popen(
        [sys.executable, "-c", CONFIRMER.format(root=ROOT, port=broker.port)], stdout=subprocess.PIPE
    )
    assert confirmer.stdout is not None
    confirmer.stdout.readline()
    agent = Agent(cfg)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    wait_for(lambda: agent.outbox.counters()["confirmed"] > 0, 30, "first confirmation")
    c0 = agent.counters()
    t0 = time.perf_counter()
    time.sleep(seconds)
    c1 = agent.counters()
    elapsed = time.perf_counter() - t0
    backlog = (int(c0["backlog"]), int(c1["backlog"]))
    stop.set()
    thread.join()
    confirmer.kill()
    confirmer.wait()
    failures = int(c1["sensor_failures"])
    assert failures == 0, f"{failures} failed reads"
    return (c1["sampled"] - c0["sampled"]) / elapsed, (c1["confirmed"] - c0["confirmed"]) / elapsed, backlog


def agent_rss(tmp: Path, broker: Mosquitto, sensor: str, seconds: float) -> float:
    config = tmp / "rss.toml"
    config.write_text(
        f'[device]\nid = "bench-rss"\n[broker]\nurl = "{broker.url}"\n'
        f'[outbox]\npath = "{tmp / "rss.db"}"\nmin_free_disk_bytes = 0\n{sensor}'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgewatch",
            "agent",
            "run",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    ps = psutil.Process(proc.pid)
    time.sleep(3)  # start-up is not the steady state
    peak = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        peak = max(peak, ps.memory_info().rss)
    proc.terminate()
    proc.wait(10)
    return peak / 1e6


def modbus_sensor_toml(port: int) -> str:
    regs = ",\n".join(
        f'  {{ address = {a}, metric = "r{a:03d}", scale = 0.1, unit = "V" }}' for a in range(REGISTERS)
    )
    return (
        f'[[sensors]]\nname = "meter"\ndriver = "modbus"\ninterval_s = 1.0\n[sensors.params]\n'
        f'transport = "tcp"\nhost = "127.0.0.1"\nport = {port}\nregisters = [\n{regs},\n]\n'
    )


SYSTEM_SENSOR = (
    '[[sensors]]\nname = "host"\ndriver = "system"\ninterval_s = 1.0\nparams = { metrics = ["load1"] }\n'
)


def agent_line(ceiling: float, result: tuple[float, float, tuple[int, int]]) -> str:
    sampled, confirmed, (start, end) = result
    return (
        f"{sampled:,.0f} readings/s sampled, {confirmed:,.0f} confirmed end to end "
        f"({confirmed / ceiling:.0%} of ceiling), backlog {start:,} -> {end:,}"
    )


def run(tmp: Path, broker: Mosquitto, port: int, args: argparse.Namespace) -> None:
    ceiling = raw_ceiling(port, args.seconds)
    print(f"ceiling: raw pymodbus reads of {REGISTERS} registers back to back: {ceiling:,.0f} values/s")
    alone = driver_alone(port, args.seconds)
    print(f"modbus driver alone (request, decode, scale): {alone:,.0f} readings/s ({alone / ceiling:.0%})")
    result = agent_rate(tmp / "flat-out", broker, port, args.seconds, interval_s=0.001)
    print(
        f"agent, 1 sensor of {REGISTERS} registers, flat out (interval 1 ms): {agent_line(ceiling, result)}"
    )
    # Paced at 80% of what was confirmed flat out: the backlog must stay small if it sustains it.
    interval = REGISTERS / (0.8 * result[1])
    result = agent_rate(tmp / "paced", broker, port, args.seconds, interval_s=interval)
    print(f"agent, paced (interval {interval * 1000:.2f} ms): {agent_line(ceiling, result)}")
    rss = agent_rss(tmp, broker, modbus_sensor_toml(port), args.rss_seconds)
    base = agent_rss(tmp, broker, SYSTEM_SENSOR, args.rss_seconds)
    print(
        f"`edgewatch agent run`, {REGISTERS} modbus registers at 1 Hz for {args.rss_seconds:.0f}s: peak RSS "
        f"{rss:.1f} MB (budget 30 MB); the same agent with 1 system sensor instead: {base:.1f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="each throughput phase")
    ap.add_argument("--rss-seconds", type=float, default=30.0)
    args = ap.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(root=ROOT, n=REGISTERS)], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            broker = Mosquitto(tmp / "broker")
            broker.start()
            try:
                run(tmp, broker, port, args)
            finally:
                broker.stop()
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
