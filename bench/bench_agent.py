"""Agent figures: import time, RSS/CPU at 10 sensors x 1 Hz, and outbox drain rate.

Run by hand (not a test):  .venv/bin/python bench/bench_agent.py [--seconds 60] [--backlog 100000]

The drain rate is printed next to the raw paho ceiling measured in the same run: the same
batches published at QoS 1 with the same in-flight window, with no outbox behind them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices import wire  # noqa: E402
from edge.agent import Agent  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.outbox import Outbox, Sample, read_stats  # noqa: E402
from tests.confirmer import Confirmer, wait_for  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402


def import_time(runs: int = 7) -> float:
    code = "import edgewatch.cli, edge.runner"  # what `edgewatch agent run` imports
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    base = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.perf_counter() - t0)
    return statistics.median(times) - statistics.median(base)


def rss_cpu(tmp: Path, broker: Mosquitto, seconds: float) -> tuple[float, float, int]:
    sensors = "\n".join(
        f'[[sensors]]\nname = "s{i}"\ndriver = "system"\ninterval_s = 1.0\n'
        'params = { metrics = ["load1"] }\n'
        for i in range(10)
    )
    config = tmp / "agent.toml"
    config.write_text(
        f'[device]\nid = "bench"\n[broker]\nurl = "{broker.url}"\n'
        f'[outbox]\npath = "{tmp / "rss.db"}"\n{sensors}'
    )
    confirmer = Confirmer(broker.host, broker.port, client_id="bench-rss").start()
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
    cpu0 = ps.cpu_times()
    t0 = time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        peak = max(peak, ps.memory_info().rss)
    cpu1 = ps.cpu_times()
    elapsed = time.monotonic() - t0
    proc.terminate()
    proc.wait(10)
    confirmer.stop()
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed
    stats = read_stats(tmp / "rss.db", 1)
    return peak / 1e6, cpu * 100, stats.last_seq


def prefill(path: Path, n: int) -> None:
    ob = Outbox(path, max_bytes=10**10)
    batch = [
        Sample(1.7e9 + i * 0.001, "sensor", "temperature", 20.0 + (i % 100) / 10, "C") for i in range(1000)
    ]
    for _ in range(n // 1000):
        ob.append(batch)
    ob.close()


def drain(tmp: Path, broker: Mosquitto, n: int, batch: int, window: int) -> tuple[float, float]:
    path = tmp / "drain.db"
    prefill(path, n)
    cfg = parse_config(
        {
            "device": {"id": "drain"},
            "broker": {"url": broker.url},
            "outbox": {"path": str(path), "max_bytes": 10**10, "min_free_disk_bytes": 0},
            "publish": {"batch_max_readings": batch, "max_inflight": window, "heartbeat_s": 1.0},
        }
    )
    # The confirmer runs in its own process: it must not share this one's GIL with the agent.
    confirmer = subprocess.Popen(
        [sys.executable, "-c", CONFIRMER.format(root=ROOT, port=broker.port)], stdout=subprocess.PIPE
    )
    assert confirmer.stdout is not None
    confirmer.stdout.readline()
    agent = Agent(cfg, drivers={})
    stop = threading.Event()
    t0 = time.perf_counter()
    th = threading.Thread(target=agent.run, args=(stop,))
    th.start()
    wait_for(lambda: agent.outbox.counters()["published"] >= n, 600, "publish")
    t_pub = time.perf_counter() - t0
    wait_for(lambda: agent.outbox.backlog == 0, 600, "confirm")
    t_conf = time.perf_counter() - t0
    stop.set()
    th.join()
    confirmer.kill()
    confirmer.wait()
    return n / t_pub, n / t_conf


CONFIRMER = (
    "import sys, time; sys.path.insert(0, '{root}');"
    "from tests.confirmer import Confirmer; Confirmer('127.0.0.1', {port}, client_id='bench-drain').start();"
    "time.sleep(0.5); print('ready', flush=True); time.sleep(3600)"
)


def raw_paho(broker: Mosquitto, n: int, batch: int, window: int) -> float:
    """The ceiling: the same payloads, QoS 1, the same window, no outbox."""
    rows = [(i + 1, 1.7e9 + i * 0.001, "sensor", "temperature", 20.0 + (i % 100) / 10, "C") for i in range(n)]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    inflight = 0
    lock = threading.Condition()

    def on_publish(*_: object) -> None:
        nonlocal inflight
        with lock:
            inflight -= 1
            lock.notify()

    client.on_publish = on_publish
    client.max_inflight_messages_set(window + 8)
    client.connect(broker.host, broker.port)
    client.loop_start()
    topic = wire.device_topic("raw", wire.BACKFILL)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        payload = wire.encode_readings("raw", "e1", rows[i : i + batch], sent_at=time.time())
        with lock:
            while inflight >= window:
                lock.wait()
            inflight += 1
        client.publish(topic, payload, qos=1)
    with lock:
        while inflight > 0:
            lock.wait()
    elapsed = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--window", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            imp = import_time()
            print(f"import of `edgewatch agent run`: {imp * 1000:.0f} ms (over bare interpreter start)")
            ceiling = raw_paho(broker, args.backlog, args.batch, args.window)
            print(
                f"raw paho QoS 1 ceiling ({args.batch}/msg, window {args.window}): {ceiling:,.0f} readings/s"
            )
            published, confirmed = drain(tmp, broker, args.backlog, args.batch, args.window)
            print(
                f"outbox drain of {args.backlog:,}: {published:,.0f} readings/s published (PUBACK), "
                f"{confirmed:,.0f} readings/s confirmed end to end ({published / ceiling:.0%} of ceiling)"
            )
            rss, cpu, sampled = rss_cpu(tmp, broker, args.seconds)
            print(
                f"10 sensors x 1 Hz for {args.seconds:.0f}s: peak RSS {rss:.1f} MB, CPU {cpu:.2f}% of a core "
                f"({sampled} readings sampled)"
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
