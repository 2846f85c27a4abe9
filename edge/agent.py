"""The agent: sensors -> outbox -> MQTT, in one loop that owns the outbox and the link.

Sensors are read on their own threads (a 1-wire conversion takes 750 ms, a command may hang), or
inline for simulated devices. Samples go through a queue into the outbox in one transaction per
loop turn, and only the outbox decides what is published: live readings (sampled since this
connection came up) on `telemetry` after a short linger, the backlog on `backfill` as fast as the
in-flight window allows. A reading leaves the outbox only on the aggregator's confirmation.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from devices import wire
from devices.backoff import Backoff
from devices.drivers import SensorDriver
from devices.errors import SensorReadError, WireError
from devices.model import Status, StatusEvent
from edge.config import AgentConfig, build_drivers
from edge.outbox import Outbox, Sample
from edge.publisher import Link, LinkError
from edge.sampling import SensorSchedule
from edgewatch import __version__

log = logging.getLogger("edgewatch.agent")

Clock = Callable[[], float]


@dataclass(slots=True)
class SensorHealth:
    reads: int = 0
    failures: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Sensor:
    name: str
    driver: SensorDriver
    schedule: SensorSchedule
    health: SensorHealth = field(default_factory=SensorHealth)


def read_sensor(name: str, driver: SensorDriver, now: float) -> list[Sample]:
    """One read of one sensor as samples; any failure, NaN included, is a SensorReadError."""
    try:
        measurements = driver.read()
    except SensorReadError:
        raise
    except Exception as exc:  # a driver bug must not stop the other sensors
        raise SensorReadError(f"{type(exc).__name__}: {exc}") from exc
    samples = []
    for m in measurements:
        if not isinstance(m.value, int | float) or not math.isfinite(m.value):
            raise SensorReadError(f"metric {m.metric!r} gave a non-finite value {m.value!r}")
        samples.append(Sample(now, name, m.metric, float(m.value), m.unit))
    return samples


class Agent:
    """One device's agent. `run()` for a real device; `step()` for many simulated ones."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        drivers: Mapping[str, SensorDriver] | None = None,
        clock: Clock = time.time,
        threaded_sensors: bool = True,
        version: str = __version__,
    ) -> None:
        self.config = config
        self.device = config.device_id
        self.clock = clock
        self.version = version
        self.threaded = threaded_sensors
        pc = config.publish
        oc = config.outbox
        self.outbox = Outbox(
            oc.path,
            max_bytes=oc.max_bytes,
            min_free_disk_bytes=oc.min_free_disk_bytes,
            reserve_bytes=oc.reserve_bytes,
            overflow=oc.overflow,
            synchronous=oc.synchronous,
            ack_timeout_s=pc.ack_timeout_s,
            ack_timeout_max_s=pc.ack_timeout_max_s,
        )
        try:
            built = dict(drivers) if drivers is not None else build_drivers(config)
        except BaseException:
            self.outbox.close()
            raise
        start = clock()
        self.sensors = [
            _Sensor(s.name, built[s.name], SensorSchedule(s.interval_s, start, s.retries))
            for s in config.sensors
        ]
        self._samples: queue.SimpleQueue[list[Sample]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.link: Link | None = None
        self._backoff = Backoff(pc.reconnect_base_s, pc.reconnect_max_s)
        self._reconnect_at = 0.0
        self._inflight: dict[int, tuple[int, int]] = {}
        self._live_from = 0
        self._live_pending = 0
        self._live_since: float | None = None
        self._last_requeue = 0.0
        self._last_heartbeat = 0.0
        self._rate_mark = (time.monotonic(), self.outbox.counters()["confirmed"])
        self.confirm_rate = 0.0
        self.connects = 0
        self.acks_ignored = 0
        self.sampling = True  # a simulated fleet turns this off to drain before it stops
        self._link_down_until = 0.0

    # -- sensors --------------------------------------------------------------------------

    def start(self) -> None:
        if self.threaded:
            for sensor in self.sensors:
                t = threading.Thread(target=self._sensor_thread, args=(sensor,), name=f"sensor-{sensor.name}")
                t.daemon = True
                t.start()
                self._threads.append(t)

    def _read_into(self, sensor: _Sensor, now: float) -> list[Sample]:
        try:
            samples = read_sensor(sensor.name, sensor.driver, now)
        except SensorReadError as exc:
            sensor.schedule.on_failure(now)
            sensor.health.failures += 1
            if sensor.health.last_error != str(exc) or sensor.schedule.consecutive_failures == 1:
                log.warning("sensor %s: read failed: %s", sensor.name, exc)
            sensor.health.last_error = str(exc)
            return []
        sensor.schedule.on_success(now)
        sensor.health.reads += 1
        return samples

    def _sensor_thread(self, sensor: _Sensor) -> None:
        while not self._stop.is_set():
            wait = sensor.schedule.next_due - self.clock()
            if wait > 0 and self._stop.wait(min(wait, 1.0)):
                break
            now = self.clock()
            if not sensor.schedule.due(now):
                continue
            samples = self._read_into(sensor, now)
            if samples:
                self._samples.put(samples)

    def sample_due(self) -> None:
        """Read every due sensor inline (simulated devices; no threads)."""
        now = self.clock()
        for sensor in self.sensors:
            if sensor.schedule.due(now):
                samples = self._read_into(sensor, now)
                if samples:
                    self._samples.put(samples)

    def flush_samples(self) -> int:
        """Move queued samples into the outbox in one transaction."""
        batch: list[Sample] = []
        while True:
            try:
                batch.extend(self._samples.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return 0
        seqs = self.outbox.append(batch)
        if self.link is not None and seqs:
            self._live_pending += len(seqs)
            if self._live_since is None:
                self._live_since = time.monotonic()
        return len(batch)

    # -- link -----------------------------------------------------------------------------

    def _status(self, event: StatusEvent) -> bytes:
        return wire.encode_status(
            Status(self.device, event, time.time(), self.outbox.epoch, self.version, self.counters())
        )

    def _connect(self) -> None:
        pc = self.config.publish
        link = Link(
            self.config.broker,
            self.device,
            will=self._status(StatusEvent.WILL),
            on_message=self._on_message,
            max_inflight=pc.max_inflight,
        )
        try:
            link.connect(timeout_s=10.0, idle=self._idle_while_connecting)
        except LinkError as exc:
            delay = self._backoff.next_delay()
            self._reconnect_at = time.monotonic() + delay
            log.warning("%s; retrying in %.1fs", exc, delay)
            return
        self.link = link
        self.connects += 1
        self._backoff.reset()
        self._live_from = self.outbox.next_seq
        self._live_pending = 0
        self._live_since = None
        log.info(
            "connected to %s (backlog %d, session %s)",
            self.config.broker.url.redacted(),
            self.outbox.backlog,
            "resumed" if link.session_present else "new",
        )
        link.publish(
            wire.device_topic(self.device, wire.STATUS), self._status(StatusEvent.BIRTH), retain=True
        )

    def _idle_while_connecting(self) -> None:
        if not self.threaded:
            self.sample_due()
        self.flush_samples()

    def _on_link_lost(self) -> None:
        assert self.link is not None
        log.warning(
            "connection lost (%s); %d messages were in flight", self.link.lost_reason, len(self._inflight)
        )
        self.link.close()
        self.link = None
        self._inflight.clear()
        self.outbox.release_inflight()
        delay = self._backoff.next_delay()
        self._reconnect_at = time.monotonic() + delay

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            ack = wire.decode_ack(payload)
        except WireError as exc:
            self.acks_ignored += 1
            log.warning("ignored a bad ack on %s: %s", topic, exc)
            return
        if ack.device != self.device or ack.epoch != self.outbox.epoch:
            # An ack for a previous epoch (a wiped outbox) or another device: nothing of ours.
            self.acks_ignored += 1
            return
        self.outbox.confirm(ack.ranges)

    def _publish_rows(self, topic: str, *, min_seq: int, max_seq: int | None) -> bool:
        pc = self.config.publish
        assert self.link is not None
        rows = self.outbox.claim(
            min_seq=min_seq, max_seq=max_seq, limit=pc.batch_max_readings, max_bytes=pc.batch_max_bytes
        )
        if not rows:
            return False
        payload = wire.encode_readings(
            self.device,
            self.outbox.epoch,
            ((r.seq, r.ts, r.sensor, r.metric, r.value, r.unit) for r in rows),
            sent_at=time.time(),
        )
        mid = self.link.publish(topic, payload)
        if mid is None:
            self.outbox.release(rows[0].seq, rows[-1].seq)
            return False
        self._inflight[mid] = (rows[0].seq, rows[-1].seq)
        return True

    def _pump(self) -> None:
        """Fill the in-flight window: live readings first (after linger), then the backlog."""
        pc = self.config.publish
        live_topic = wire.device_topic(self.device, wire.TELEMETRY)
        backfill_topic = wire.device_topic(self.device, wire.BACKFILL)
        now = time.monotonic()
        live_due = self._live_since is not None and (
            now - self._live_since >= pc.linger_s or self._live_pending >= pc.batch_max_readings
        )
        if live_due:
            while len(self._inflight) < pc.max_inflight:
                if not self._publish_rows(live_topic, min_seq=self._live_from, max_seq=None):
                    break
            if len(self._inflight) < pc.max_inflight:
                self._live_since = None
                self._live_pending = 0
        while len(self._inflight) < pc.max_inflight:
            if not self._publish_rows(backfill_topic, min_seq=0, max_seq=self._live_from):
                break

    def _settle_pubacks(self) -> None:
        assert self.link is not None
        ranges = [self._inflight.pop(mid) for mid in self.link.take_acked() if mid in self._inflight]
        if ranges:
            self.outbox.mark_sent(ranges)

    def counters(self) -> dict[str, float]:
        c = self.outbox.counters()
        return {
            "sampled": c["next_seq"] - 1,
            "published": c["published"],
            "confirmed": c["confirmed"],
            "dropped": c["dropped"],
            "dropped_unconfirmed": c["dropped_unconfirmed"],
            "backlog": self.outbox.backlog,
            "sensor_failures": sum(s.health.failures for s in self.sensors),
            "outbox_full": 1.0 if self.outbox.full else 0.0,  # the disk is full: policy drops apply
            # Per sensor, so a heartbeat says which device stopped answering and since how many
            # reads (0 once it answers again).
            **{f"sensor_failures.{s.name}": s.health.failures for s in self.sensors},
            **{f"sensor_failing.{s.name}": s.schedule.consecutive_failures for s in self.sensors},
        }

    def _heartbeat(self) -> None:
        now = time.monotonic()
        mark_t, mark_n = self._rate_mark
        confirmed = self.outbox.counters()["confirmed"]
        if now > mark_t:
            self.confirm_rate = (confirmed - mark_n) / (now - mark_t)
        self._rate_mark = (now, confirmed)
        self.outbox.set_meta({"confirm_rate": self.confirm_rate, "rate_updated_at": time.time()})
        if self.link is not None:
            stats = self.outbox.stats()
            payload = self._status(StatusEvent.HEARTBEAT)
            if stats.oldest_unsent_age_s is not None:
                log.debug("oldest unsent reading is %.1fs old", stats.oldest_unsent_age_s)
            self.link.publish(wire.device_topic(self.device, wire.STATUS), payload)

    # -- the loop -------------------------------------------------------------------------

    IDLE_WAKEUP_S = 0.2

    def _wait_budget(self) -> float:
        """How long the next socket wait may block: until the live batch's linger runs out."""
        if self._live_since is None:
            return self.IDLE_WAKEUP_S
        remaining = self._live_since + self.config.publish.linger_s - time.monotonic()
        return max(0.0, min(self.IDLE_WAKEUP_S, remaining))

    def cut_link(self, seconds: float) -> None:
        """Simulate a network outage: drop the connection abruptly (the broker sends our last
        will) and do not reconnect for `seconds`. Sampling goes on into the outbox."""
        self._link_down_until = time.monotonic() + seconds
        if self.link is not None:
            self.link.abort()
            self.link.lost_reason = "link cut"
            self._on_link_lost()

    def step(self, timeout: float | None = None) -> None:
        """One turn: sample (inline mode), store samples, keep the link, publish, settle acks.

        Blocks in the socket wait (a PUBACK or an ack wakes it) for at most `timeout`, by
        default until the next thing due, so an idle agent wakes a few times a second.
        """
        if not self.threaded and self.sampling:
            self.sample_due()
        self.flush_samples()
        now = time.monotonic()
        if self.link is None:
            if now >= self._reconnect_at and now >= self._link_down_until:
                self._connect()
            if self.link is None:
                budget = self.IDLE_WAKEUP_S if timeout is None else timeout
                self._stop.wait(min(budget, max(0.0, self._reconnect_at - now)))
                return
        link = self.link
        assert link is not None
        if not link.loop(self._wait_budget() if timeout is None else timeout):
            self._on_link_lost()
            return
        self._settle_pubacks()
        if now - self._last_requeue >= 1.0:
            self._last_requeue = now
            if self.outbox.requeue_overdue():
                log.info("confirmations overdue: re-sending")
        self._pump()
        if now - self._last_heartbeat >= self.config.publish.heartbeat_s:
            self._last_heartbeat = now
            self._heartbeat()

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set, then shut down cleanly (every sample in the outbox)."""
        self.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        try:
            self.flush_samples()
            if self.link is not None:
                self._settle_pubacks()
                self.link.close(
                    last_words=(
                        wire.device_topic(self.device, wire.STATUS),
                        self._status(StatusEvent.SHUTDOWN),
                    )
                )
                self.link = None
                self.outbox.release_inflight()
        finally:
            for sensor in self.sensors:
                try:
                    sensor.driver.close()
                except Exception:
                    log.exception("closing sensor %s failed", sensor.name)
            self.outbox.close()
