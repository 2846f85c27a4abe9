"""Many simulated devices in one process, each running the real agent code.

Every device is an `edge.agent.Agent` with its own SQLite outbox and MQTT connection, sampling a
`SimulatedDriver` on a virtual clock (`speed` virtual seconds per real second). Agents are
stepped round-robin on one thread with inline sampling, so a thousand devices need no thousand
threads. Link outages cut a device's connection abruptly for a while; its outbox fills and
drains as a real one would. Faults are written to a label file; the summary says, per device,
exactly which seqs were sampled and how many the overflow policy dropped, so anyone can check
the store against it.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.agent import Agent
from edge.config import parse_config
from simulators.driver import SimulatedDriver
from simulators.faults import FAULT_KINDS, Fault, Label, labels_for, schedule_faults, write_labels

log = logging.getLogger("edgewatch.simulate")

# What each device measures, by position in the fleet (a varied fleet, reproducibly).
PROFILES: tuple[tuple[str, ...], ...] = (
    ("temperature", "humidity"),
    ("vibration", "power"),
    ("cpu_temp", "temperature"),
)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    broker_url: str
    devices: int = 10
    rate_hz: float = 1.0
    duration_s: float = 60.0
    speed: float = 1.0
    seed: int = 0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    faults_per_day: float = 2.0
    fault_min_gap_s: float = 3 * 3600.0
    first_fault_after_s: float = 0.0  # virtual seconds of clean warm-up before any fault
    link_outages: float = 0.0  # outages per device over the run, on average
    outage_s: tuple[float, float] = (2.0, 8.0)  # real seconds an outage lasts
    outbox_dir: Path | None = None
    outbox_max_bytes: int = 64 * 1024 * 1024
    ack_timeout_s: float = 30.0
    drain_timeout_s: float = 60.0
    device_prefix: str = "sim"
    username: str | None = None
    # Virtual time of the first sample; fixes readings and labels. Default: so far back that the
    # run ends at the wall clock (the clock never runs ahead of it).
    start_ts: float | None = None
    labels_path: Path | None = None  # each fault is appended here (JSON lines) once it has begun


@dataclass(slots=True)
class DeviceSummary:
    device: str
    epoch: str
    first_seq: int  # the first seq sampled in this run
    last_seq: int  # the last seq sampled in this run
    dropped: int  # removed by the overflow policy before the broker had them
    dropped_unconfirmed: int  # removed after a PUBACK but before confirmation
    backlog: int  # still in the outbox, unconfirmed, when the run ended
    sensor_failures: int  # reads that gave no value at all (dropouts)
    outages: int


@dataclass(slots=True)
class FleetSummary:
    devices: list[DeviceSummary]
    seed: int
    speed: float
    started_at: float  # virtual time of the first sample
    ended_at: float
    labels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sampled(self) -> int:
        return sum(d.last_seq - d.first_seq + 1 for d in self.devices)

    def to_json(self) -> str:
        data = asdict(self)
        data["sampled"] = self.sampled
        return json.dumps(data, indent=2)


class VirtualClock:
    """Time that runs `speed` times faster from `start`, but never ahead of the wall clock: once
    it has caught up it runs in real time, so no simulated reading is stamped in the future.

    >>> clock = VirtualClock(60.0, start=time.time() - 600)
    >>> clock() <= time.time()
    True
    """

    def __init__(self, speed: float, start: float | None = None) -> None:
        self.speed = speed
        self.start = time.time() if start is None else start
        self._m0 = time.monotonic()

    def __call__(self) -> float:
        return min(time.time(), self.start + (time.monotonic() - self._m0) * self.speed)


class Fleet:
    def __init__(self, spec: FleetSpec, *, clock: Callable[[], float] | None = None) -> None:
        self.spec = spec
        self.clock = clock or VirtualClock(spec.speed, start=spec.start_ts)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if spec.outbox_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgewatch-sim-")
            self.outbox_dir = Path(self._tmp.name)
        else:
            self.outbox_dir = spec.outbox_dir
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(spec.seed)
        self.labels: list[Label] = []
        self._labels_written = 0
        self.agents: list[Agent] = []
        self.first_seq: dict[str, int] = {}
        self.outages: dict[str, int] = {}
        start = spec.start_ts if spec.start_ts is not None else self.clock()
        # The clock stops running fast at the wall clock: faults are scheduled up to where it ends.
        end = min(start + spec.duration_s * spec.speed, max(start, time.time()) + spec.duration_s)
        span = end - start
        period = 1.0 / spec.rate_hz
        for i in range(spec.devices):
            device = f"{spec.device_prefix}-{i:04d}"
            kinds = PROFILES[i % len(PROFILES)]
            faults: dict[str, Sequence[Fault]] = {}
            for kind in kinds:
                if spec.fault_kinds and spec.faults_per_day > 0:
                    faults[kind] = schedule_faults(
                        self.rng.randrange(2**31),
                        start + spec.first_fault_after_s,
                        start + span,
                        period=period,
                        kinds=spec.fault_kinds,
                        per_day=spec.faults_per_day,
                        min_gap=spec.fault_min_gap_s,
                    )
                else:
                    faults[kind] = []
                self.labels.extend(labels_for(device, kind, faults[kind]))
            driver = SimulatedDriver(
                {"kinds": list(kinds), "seed": spec.seed * 100_003 + i}, clock=self.clock, faults=faults
            )
            self.agents.append(
                Agent(
                    self._config(device, period),
                    drivers={"sim": driver},
                    clock=self.clock,
                    threaded_sensors=False,
                )
            )
            self.first_seq[device] = self.agents[-1].outbox.next_seq
            self.outages[device] = 0
        self.labels.sort(key=lambda label: (label.start, label.device, label.metric))
        self.started_at = start
        if spec.labels_path is not None:
            spec.labels_path.write_text("")

    def _config(self, device: str, period: float) -> Any:
        url = self.spec.broker_url
        broker: dict[str, Any] = {"url": url, "keepalive_s": 10}
        if self.spec.username:
            broker["username"] = self.spec.username  # amqtt keeps sessions only for named clients
        return parse_config(
            {
                "device": {"id": device},
                "broker": broker,
                "outbox": {
                    "path": str(self.outbox_dir / f"{device}.db"),
                    "max_bytes": self.spec.outbox_max_bytes,
                    "min_free_disk_bytes": 0,
                },
                "publish": {
                    "ack_timeout_s": self.spec.ack_timeout_s,
                    "linger_s": 0.2,
                    "heartbeat_s": 5.0,
                    "reconnect_base_s": 0.2,
                    "reconnect_max_s": 2.0,
                },
                "sensors": [{"name": "sim", "driver": "simulated", "interval_s": period}],
            }
        )

    def _outage_plan(self) -> list[tuple[float, Agent, float]]:
        """(real offset, agent, duration) for each link outage, reproducibly."""
        spec = self.spec
        plan = []
        for agent in self.agents:
            n = int(spec.link_outages) + (self.rng.random() < spec.link_outages % 1)
            for _ in range(n):
                at = self.rng.uniform(0.1, 0.8) * spec.duration_s
                plan.append((at, agent, self.rng.uniform(*spec.outage_s)))
        plan.sort(key=lambda p: p[0])
        return plan

    def run(
        self, stop: threading.Event | None = None, on_round: Callable[[], None] | None = None
    ) -> FleetSummary:
        stop = stop or threading.Event()
        spec = self.spec
        plan = self._outage_plan()
        t0 = time.monotonic()
        try:
            while not stop.is_set() and time.monotonic() - t0 < spec.duration_s:
                elapsed = time.monotonic() - t0
                while plan and plan[0][0] <= elapsed:
                    _, agent, seconds = plan.pop(0)
                    self.outages[agent.device] += 1
                    agent.cut_link(seconds)
                self._round()
                self._write_due_labels()
                if on_round:
                    on_round()
            # Drain: no more sampling; wait for the aggregator to confirm what is left.
            for agent in self.agents:
                agent.sampling = False
            deadline = time.monotonic() + spec.drain_timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                if all(a.outbox.backlog == 0 for a in self.agents):
                    break
                self._round()
            self._write_due_labels()
            return self._summary()
        finally:
            self.close()

    def _write_due_labels(self) -> None:
        """Append the faults that have begun by now: a label file never holds the future, so
        `edgewatch evaluate` on it scores only what the store can have seen."""
        path = self.spec.labels_path
        if path is None:
            return
        now = self.clock()
        due = self._labels_written
        while due < len(self.labels) and self.labels[due].start <= now:
            due += 1
        if due > self._labels_written:
            write_labels(path, self.labels[self._labels_written : due], append=True)
            self._labels_written = due

    def _round(self) -> None:
        for agent in self.agents:
            agent.step(timeout=0)
        time.sleep(0.005)

    def _summary(self) -> FleetSummary:
        devices = []
        for agent in self.agents:
            c = agent.outbox.counters()
            devices.append(
                DeviceSummary(
                    device=agent.device,
                    epoch=agent.outbox.epoch,
                    first_seq=self.first_seq[agent.device],
                    last_seq=c["next_seq"] - 1,
                    dropped=c["dropped"],
                    dropped_unconfirmed=c["dropped_unconfirmed"],
                    backlog=agent.outbox.backlog,
                    sensor_failures=sum(s.health.failures for s in agent.sensors),
                    outages=self.outages[agent.device],
                )
            )
        labels = self._labels_written if self.spec.labels_path is not None else len(self.labels)
        spec = self.spec
        return FleetSummary(devices, spec.seed, spec.speed, self.started_at, self.clock(), labels=labels)

    def write_labels(self, path: Path) -> int:
        return write_labels(path, self.labels)

    def close(self) -> None:
        for agent in self.agents:
            try:
                agent.close()
            except Exception:
                log.exception("closing %s failed", agent.device)
        self.agents = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
