"""`edgewatch demo`: a broker, the aggregator, a faulty fleet and a live view of alerts.

Everything runs as children of this process, with its logs in the data directory. The children
have their own session, so a terminal's Ctrl-C reaches only this process, which then stops them
in the order a planned stop needs: the fleet first (each agent says goodbye: "offline", not
"silent"), then the aggregator (last batch, confirmations, checkpoint), the broker last. With a
mosquitto on PATH the demo starts one on a free loopback port; without, it falls back to amqtt in
Python.

Time: the fleet starts a day in the past and runs 60 times faster until it has caught up with
the wall clock, then in real time, so alerts appear within a minute, a demo can run for days,
and no reading is ever stamped ahead of the wall clock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devices.broker import parse_broker_url

DEMO_FAULTS = "spike,dip,level_shift,stuck,noise_burst"
DEMO_HISTORY_S = 86_400.0  # virtual time the fleet starts in the past, and catches up at --speed
STOP_GRACE_S = 1.2  # each child's time to stop cleanly before it is killed (three in a row)


class DemoError(RuntimeError):
    """The demo cannot start: the message says what is missing and how to get it."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgewatch" / "demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


@dataclass
class DemoProcesses:
    """The children, started in order and stopped in reverse."""

    data_dir: Path
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.data_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is ours to handle, in order
        )
        log.close()
        self.children.append((name, proc))
        return proc

    def check(self) -> str | None:
        """The name of a child that died on its own, if any."""
        for name, proc in self.children:
            if proc.poll() is not None:
                return name
        return None

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """Stop the children newest first (fleet, aggregator, broker), each within `timeout`."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_broker(procs: DemoProcesses, prefer: str = "auto") -> str:
    """Start a private broker; returns its URL."""
    port = free_port()
    mosquitto = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if mosquitto:
        data = procs.data_dir / "broker"
        data.mkdir(exist_ok=True)
        conf = procs.data_dir / "mosquitto.conf"
        run_as = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{run_as}listener {port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {data}/\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n"
        )
        procs.spawn("broker", [mosquitto, "-c", str(conf)])
    else:
        try:
            import amqtt  # noqa: F401, PLC0415 - only to say clearly what is missing
        except ImportError:
            raise DemoError(
                "no MQTT broker: install mosquitto (apt-get install mosquitto) or the demo extra "
                "(pip install 'edgewatch[demo]'), or pass --broker mqtt://host:port"
            ) from None
        procs.spawn("broker", [sys.executable, "-m", "simulators.embedded_broker", "--port", str(port)])
    if not wait_port(port, 15):
        raise DemoError(f"the broker did not start; see {procs.data_dir / 'broker.log'}")
    return f"mqtt://127.0.0.1:{port}"


def run_demo(
    *,
    broker_url: str | None,
    data_dir: Path,
    devices: int,
    speed: float,
    seed: int,
    emit: Callable[[str], None],
    stop: threading.Event,
    broker_kind: str = "auto",
    max_seconds: float | None = None,
) -> int:
    """Run until `stop` (Ctrl-C) or `max_seconds`; returns how many alert events were shown."""
    from cloud.ops.follow import follow  # noqa: PLC0415 - the cloud extra is needed only here
    from cloud.store.api import open_store  # noqa: PLC0415

    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "demo.db"
    for stale in (db, db.with_name("demo.db-wal"), db.with_name("demo.db-shm"), data_dir / "labels.jsonl"):
        stale.unlink(missing_ok=True)
    # A new demo, a new fleet: no outbox, and no retained status or queued message of the last one.
    shutil.rmtree(data_dir / "outboxes", ignore_errors=True)
    shutil.rmtree(data_dir / "broker", ignore_errors=True)
    procs = DemoProcesses(data_dir)
    edgewatch = [sys.executable, "-m", "edgewatch"]
    try:
        url = broker_url or start_broker(procs, broker_kind)
        emit(f"[bold]edgewatch demo[/]: broker {parse_broker_url(url).redacted()}, data in {data_dir}")
        procs.spawn(
            "aggregator",
            [*edgewatch, "cloud", "run", "--broker", url, "--db", str(db), "--metrics-port", "0"],
        )
        procs.spawn(
            "fleet",
            [
                *edgewatch, "simulate", "--broker", url, "--devices", str(devices), "--rate", "1",
                "--speed", str(speed), "--duration", str(max_seconds or 7 * 86400), "--seed", str(seed),
                "--faults", DEMO_FAULTS, "--faults-per-day", "48", "--first-fault-after", "600",
                "--fault-min-gap", "1800", "--labels", str(data_dir / "labels.jsonl"),
                "--outbox-dir", str(data_dir / "outboxes"), "--summary", str(data_dir / "summary.json"),
                "--start", f"{time.time() - DEMO_HISTORY_S:.3f}",
            ],
        )  # fmt: skip
        catch_up = DEMO_HISTORY_S / max(speed - 1.0, 1e-9)
        emit(
            f"{devices} simulated devices replay the last day at {speed:g}x speed (caught up with "
            f"the clock after {catch_up / 60:.0f} min, then live), faults injected from minute 10 "
            f"of that day; alerts appear below. Ctrl-C stops everything."
        )
        started = time.monotonic()
        last_status = [started]

        def idle() -> None:
            dead = procs.check()
            if dead:
                emit(f"[red]{dead} exited[/]; see {data_dir / (dead + '.log')}")
                stop.set()
            now = time.monotonic()
            if max_seconds is not None and now - started > max_seconds:
                stop.set()
            if now - last_status[0] >= 15 and db.exists():
                last_status[0] = now
                with contextlib.suppress(Exception):
                    with open_store(db, readonly=True) as store:
                        stored, fleet = store.count_readings(), len(store.list_devices())
                    emit(f"[dim]{stored} readings stored from {fleet} devices[/]")

        return follow(parse_broker_url(url), emit=emit, stop=stop, idle=idle)
    finally:
        procs.stop()
