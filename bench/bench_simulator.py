"""Devices per core the simulator sustains at 1 Hz through the real agent path.

Run by hand:  .venv/bin/python bench/bench_simulator.py [--devices 200 400] [--seconds 30]

Each simulated device is a real `edge.agent.Agent` (its own SQLite outbox and MQTT connection)
stepped round-robin in one process; a confirming subscriber in another process acks every reading
so outboxes stay small, as with a live aggregator. For each fleet size the script reports the
fleet process's CPU and whether it kept up (every reading sampled on schedule, the outboxes
drained), then devices per core = devices / (CPU fraction of one core).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.fleet import Fleet, FleetSpec  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

CONFIRMER = (
    "import sys, time; sys.path.insert(0, '{root}');"
    "from tests.confirmer import Confirmer; Confirmer('127.0.0.1', {port}, client_id='bench-sim').start();"
    "time.sleep(0.5); print('ready', flush=True); time.sleep(3600)"
)


def run(broker: Mosquitto, tmp: Path, devices: int, seconds: float) -> tuple[float, int, int, int]:
    spec = FleetSpec(
        broker.url, devices=devices, rate_hz=1.0, duration_s=seconds, speed=1.0, seed=1,
        faults_per_day=0, outbox_dir=tmp / f"fleet-{devices}", drain_timeout_s=30.0,
    )  # fmt: skip
    fleet = Fleet(spec)
    me = psutil.Process()
    result: list[object] = []
    cpu0 = me.cpu_times()
    t0 = time.monotonic()
    runner = threading.Thread(target=lambda: result.append(fleet.run()))
    runner.start()
    runner.join()
    elapsed = time.monotonic() - t0
    cpu1 = me.cpu_times()
    summary = result[0]
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed
    sampled = summary.sampled  # type: ignore[attr-defined]
    backlog = sum(d.backlog for d in summary.devices)  # type: ignore[attr-defined]
    expected = devices * 2 * int(seconds)  # 2 metrics per device, 1 Hz
    return cpu, sampled, expected, backlog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        confirmer = subprocess.Popen(
            [sys.executable, "-c", CONFIRMER.format(root=ROOT, port=broker.port)], stdout=subprocess.PIPE
        )
        assert confirmer.stdout is not None
        confirmer.stdout.readline()
        try:
            for n in args.devices:
                cpu, sampled, expected, backlog = run(broker, tmp, n, args.seconds)
                kept_up = sampled >= 0.98 * expected and backlog == 0
                print(
                    f"{n} devices x 1 Hz for {args.seconds:.0f}s: fleet process CPU {cpu:.0%} of a core, "
                    f"{sampled}/{expected} readings sampled, backlog at end {backlog} -> "
                    f"{'kept up' if kept_up else 'FELL BEHIND'}, {n / max(cpu, 1e-9):,.0f} devices per core"
                )
        finally:
            confirmer.kill()
            broker.stop()


if __name__ == "__main__":
    main()
