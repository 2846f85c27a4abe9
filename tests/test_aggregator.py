"""The aggregator through a real mosquitto and real SQLite files.

The aggregator runs in-process on its own event loop thread; publishers are plain paho clients
sending the wire format directly (`FakeAgent` behaves like the edge agent: it forgets a reading
only when the aggregator confirms it, and resends the rest). Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest

from cloud.errors import StoreError
from cloud.service.aggregator import Aggregator
from cloud.service.config import AggregatorConfig
from cloud.store.api import MessageTotals, Store, open_store
from devices import wire
from devices.model import AlertEvent, AlertKind, AlertState
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.broker
T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fast_config(broker: Mosquitto, db: Path, **changes: Any) -> AggregatorConfig:
    return AggregatorConfig(
        broker=broker.url,
        db=str(db),
        ack_interval=0.05,
        tick_interval=0.1,
        batch_linger=0.005,
        reconnect_base=1.5,
        reconnect_cap=1,
    ).replace(**changes)


@contextmanager
def running(config: AggregatorConfig) -> Iterator[Aggregator]:
    """The aggregator on its own loop thread; stopped (SIGTERM path) on exit."""
    holder: dict[str, Any] = {}
    errors: list[BaseException] = []
    loop = asyncio.new_event_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))

    async def main() -> None:
        stop = asyncio.Event()
        aggregator = Aggregator(config)
        holder["stop"], holder["agg"] = stop, aggregator
        try:
            await aggregator.open()
            await aggregator.run(stop)
        finally:
            await aggregator.close()

    def thread_main() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    wait_for(lambda: ("agg" in holder and holder["agg"].connected.is_set()) or bool(errors), what="connect")
    if errors:
        raise errors[0]
    try:
        yield holder["agg"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "aggregator did not stop"
        assert not errors, errors
        assert not unretrieved, f"asyncio reported: {unretrieved}"


class FakeAgent:
    """Publishes readings like the edge agent and tracks the aggregator's confirmations."""

    def __init__(self, broker: Mosquitto, client_id: str, *, verify_db: Path | None = None) -> None:
        self.acked: dict[tuple[str, str], set[int]] = {}
        self.sent: dict[tuple[str, str, int], tuple[float, tuple[Any, ...]]] = {}
        self.verify_db = verify_db
        self.premature: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_ack
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{wire.PREFIX}/+/{wire.ACK}", qos=1)
        self.client.loop_start()

    def _on_ack(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = wire.decode_ack(message.payload)
        if self.verify_db is not None:  # an ack must never precede the commit
            with open_store(self.verify_db, readonly=True) as store:
                (epoch,) = [
                    e for e in store.device(ack.device, max_gaps=1 << 20).epochs if e.epoch == ack.epoch
                ]
                for lo, hi in ack.ranges:
                    # every seq of [lo, hi] is in the store: within the epoch's range, in no gap
                    within = (
                        epoch.first_seq is not None and epoch.first_seq <= lo and hi <= (epoch.last_seq or 0)
                    )
                    if not within or any(g_lo <= hi and lo <= g_hi for g_lo, g_hi in epoch.gaps):
                        self.premature.append((ack.device, lo, hi))
        with self.lock:
            seqs = self.acked.setdefault((ack.device, ack.epoch), set())
            for lo, hi in ack.ranges:
                seqs.update(range(lo, hi + 1))
                for s in range(lo, hi + 1):
                    self.sent.pop((ack.device, ack.epoch, s), None)

    def publish(self, device: str, epoch: str, rows: list[tuple[Any, ...]], kind: str = "telemetry") -> None:
        payload = wire.encode_readings(device, epoch, rows, sent_at=time.time())
        with self.lock:
            for row in rows:
                self.sent[(device, epoch, row[0])] = (time.monotonic(), row)
        info = self.client.publish(wire.device_topic(device, kind), payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS

    def publish_raw(self, topic: str, payload: bytes) -> None:
        assert self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def resend_unacked(self, older_than: float, batch: int = 10) -> int:
        """Resend on the backfill topic, as the agent drains what was never confirmed."""
        now = time.monotonic()
        with self.lock:
            due = sorted((*k, v[1]) for k, v in self.sent.items() if now - v[0] >= older_than)
        groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for device, epoch, _seq, row in due:
            groups.setdefault((device, epoch), []).append(row)
        for (device, epoch), rows in groups.items():
            for i in range(0, len(rows), batch):
                self.publish(device, epoch, rows[i : i + batch], kind="backfill")
        return len(due)

    def acked_count(self, device: str, epoch: str) -> int:
        with self.lock:
            return len(self.acked.get((device, epoch), ()))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rows_for(seqs: range | list[int], t0: float, value: Callable[[int], float] = lambda s: 20.0) -> list[Any]:
    return [(s, t0 + s, "sys", "temp", value(s), "C") for s in seqs]


def totals(db: Path) -> MessageTotals:
    with open_store(db, readonly=True) as store:
        return store.message_totals()


def stored(db: Path | str, what: Callable[[Store], T], default: T) -> T:
    """A read-model query on the store (read-only, beside the aggregator); `default` while the
    aggregator has not created the store yet."""
    try:
        with open_store(db, readonly=True) as store:
            return what(store)
    except StoreError:
        return default


def readings_in(db: Path | str) -> int:
    return stored(db, lambda s: s.count_readings(), 0)


def alerts_in(db: Path | str, **filters: Any) -> int:
    return stored(db, lambda s: len(s.list_alerts(**filters)), 0)


# ---------------------------------------------------------------------------------------------


def test_overlapping_resends_from_two_publishers_are_stored_once_and_all_acked(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    t0 = time.time() - 3600
    with running(fast_config(broker, db)):
        one = FakeAgent(broker, "pub-1", verify_db=db)
        two = FakeAgent(broker, "pub-2")
        sent = 0
        for lo in range(1, 1501, 10):
            one.publish("pi-1", "e1", rows_for(range(lo, min(lo + 10, 1501)), t0))
            sent += min(10, 1501 - lo)
        for lo in range(500, 1501, 7):  # overlapping, differently cut, on the backfill topic
            two.publish("pi-1", "e1", rows_for(range(lo, min(lo + 7, 1501)), t0), kind="backfill")
            sent += min(7, 1501 - lo)
        for lo in range(1, 301, 25):  # and plain duplicates of the start
            two.publish("pi-1", "e1", rows_for(range(lo, lo + 25), t0))
            sent += 25
        wait_for(lambda: one.acked_count("pi-1", "e1") == 1500, what="acks for every seq")
        wait_for(lambda: totals(db).readings == sent, what="all msgs")
        one.close()
        two.close()
    assert one.premature == []
    assert two.acked_count("pi-1", "e1") == 1500
    with open_store(db, readonly=True) as store:
        assert store.count_readings() == 1500
        done = store.message_totals()
        assert (done.stored, done.duplicates) == (1500, sent - 1500)
        # Each reading once in the time-window read, which goes message -> its own readings.
        assert sorted(r.seq for r in store.readings("pi-1", "temp")) == list(range(1, 1501))
        (epoch,) = store.device("pi-1").epochs
        assert (epoch.received, epoch.missing, epoch.gaps) == (1500, 0, ())


def _malformed(t0: float) -> tuple[list[tuple[str, bytes]], int, int]:
    """Every kind of bad message, interleaved with valid ones: (messages, dead rows, readings)."""
    dev = "pi-bad"
    topic = wire.device_topic(dev, "telemetry")
    ok = {"sensor": "s", "metric": "m", "unit": ""}

    def env(seq_values: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "v": "1.0",
            "kind": "readings",
            "msg_id": "x",
            "device": dev,
            "epoch": "e1",
            "sent_at": t0,
            "readings": seq_values,
        }
        obj.update(changes)
        return obj

    seq = iter(range(1, 1_000_000))
    valid = lambda: {"seq": next(seq), "ts": t0, "value": 1.5, **ok}  # noqa: E731
    envelope_bad: list[Callable[[], tuple[str, bytes]]] = [
        lambda: (topic, b"{not json"),
        lambda: (topic, b""),
        lambda: (topic, b"\xff\xfe\x00garbage"),
        lambda: (topic, b"[1, 2, 3]"),
        lambda: (topic, json.dumps(env([valid()], v="2.0")).encode()),
        lambda: (topic, json.dumps(env([valid()], v=None)).encode()),
        lambda: (topic, json.dumps(env([valid()], kind="status")).encode()),
        lambda: (topic, json.dumps(env([valid()], device="someone-else")).encode()),
        lambda: (topic, json.dumps(env([valid()], epoch=5)).encode()),
        lambda: (topic, json.dumps(env("not a list", epoch="e1")).encode()),  # type: ignore[arg-type]
        lambda: (topic, json.dumps(env([valid()], sent_at="noon")).encode()),
        lambda: (wire.device_topic(dev, "status"), b'{"v": "1.0", "kind": "status"}'),
        lambda: ("edgewatch/v1/alerts/telemetry", json.dumps(env([valid()])).encode()),
        # A broker role posing as a device (an ACL that lets `viewer` publish): never a device.
        lambda: ("edgewatch/v1/viewer/telemetry", json.dumps(env([valid()], device="viewer")).encode()),
        lambda: ("edgewatch/v1/aggregator/status", json.dumps(env([valid()], device="aggregator")).encode()),
    ]
    reading_bad: list[Callable[[], dict[str, Any]]] = [
        lambda: {"seq": next(seq), "ts": t0, "value": math.nan, **ok},
        lambda: {"seq": next(seq), "ts": t0, "value": math.inf, **ok},
        lambda: {"seq": next(seq), "ts": t0, "value": -math.inf, **ok},
        lambda: {"seq": next(seq), "ts": 1e13, "value": 1.0, **ok},
        lambda: {"seq": next(seq), "ts": t0 + 30 * 86400, "value": 1.0, **ok},
        lambda: {"seq": next(seq), "ts": t0, "value": "hot", **ok},
        lambda: {"seq": next(seq), "ts": t0, "value": 1.0, "sensor": "", "metric": "m"},
        lambda: {"seq": next(seq), "ts": t0, "value": None, **ok},
    ]
    rng = random.Random(7)
    out: list[tuple[str, bytes]] = []
    dead = readings = 0
    for i in range(260):
        if i % 2 == 0:
            out.append(envelope_bad[(i // 2) % len(envelope_bad)]())
            dead += 1
        else:
            bad = reading_bad[(i // 2) % len(reading_bad)]()
            good = [valid() for _ in range(rng.randint(0, 3))]
            out.append((topic, json.dumps(env([*good, bad])).encode()))
            dead += 1
            readings += len(good)
        if i % 5 == 0:
            batch = [valid() for _ in range(5)]
            out.append((topic, json.dumps(env(batch)).encode()))
            readings += 5
    for _ in range(4):
        out.append((topic, b"[" * (wire.MAX_MESSAGE_BYTES + 10)))
        dead += 1
    rng.shuffle(out)
    return out, dead, readings


def test_malformed_flood_keeps_the_aggregator_up_and_dead_letters_every_bad_one(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    t0 = time.time()
    messages, dead, readings = _malformed(t0)
    assert dead >= 250
    with running(fast_config(broker, db)) as aggregator:
        agent = FakeAgent(broker, "flood")
        for topic, payload in messages:
            agent.publish_raw(topic, payload)
        dead_letters = lambda s: sum(s.dead_letter_counts().values())  # noqa: E731
        wait_for(lambda: stored(db, dead_letters, 0) == dead, what="every dead letter")
        wait_for(lambda: readings_in(db) == readings, what="every valid reading")
        assert aggregator.connected.is_set()
        # Still serving: a valid message afterwards is stored and confirmed.
        agent.publish("pi-after", "e1", rows_for([1, 2, 3], t0))
        wait_for(lambda: agent.acked_count("pi-after", "e1") == 3, what="ack after the flood")
        agent.close()
    with open_store(db, readonly=True) as store:
        reasons = store.dead_letter_counts()
        letters = store.dead_letters(limit=10_000)
    assert all(d.reason and d.topic for d in letters)
    assert {
        "malformed_json",
        "not_an_object",
        "unsupported_version",
        "missing_version",
        "wrong_kind",
        "device_mismatch",
        "bad_epoch",
        "bad_readings",
        "bad_sent_at",
        "bad_topic",
        "oversized",
        "non_finite_value",
        "bad_ts",
        "future_ts",
        "bad_value",
        "bad_sensor",
        "reserved_device",
    } <= set(reasons)
    as_roles = [t for t, _ in messages if t.split("/")[2] in ("viewer", "aggregator")]
    assert as_roles and reasons["reserved_device"] == len(as_roles)
    assert (
        stored(db, lambda s: {d.device for d in s.list_devices()} & {"viewer", "aggregator"}, None) == set()
    )
    envelope_rows = [d for d in letters if d.seq is None]
    assert all(d.payload for d in envelope_rows if d.reason not in ("malformed_json",))


def test_an_injected_spike_raises_exactly_one_episode_in_the_table_and_on_the_topic(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    events: list[AlertEvent] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-watcher")
    watcher.on_message = lambda c, u, m: events.append(wire.decode_alert(m.payload))
    watcher.connect(broker.host, broker.port)
    watcher.subscribe(wire.SUB_ALERTS, qos=1)
    watcher.loop_start()
    rng = random.Random(3)
    n, spike_at = 400, 300
    t0 = time.time() - n - 10

    def value(metric: str, i: int) -> float:
        base = 20.0 + 0.5 * math.sin(i / 15) + rng.gauss(0, 0.05)
        return base + (15.0 if metric == "temp" and i == spike_at else 0.0)

    with running(fast_config(broker, db)):
        agent = FakeAgent(broker, "spiky")
        seq = 0
        for lo in range(0, n, 10):
            rows = []
            for i in range(lo, lo + 10):
                for metric in ("temp", "load"):
                    seq += 1
                    rows.append((seq, t0 + i, "sys", metric, value(metric, i), ""))
            agent.publish("pi-spike", "e1", rows)
        wait_for(lambda: agent.acked_count("pi-spike", "e1") == 2 * n, what="all readings confirmed")
        wait_for(lambda: alerts_in(db, state="closed") >= 1, what="episode closed")
        wait_for(lambda: len(events) >= 2, what="open and close on the alerts topic")
        agent.close()
    time.sleep(0.2)
    watcher.loop_stop()
    watcher.disconnect()
    with open_store(db, readonly=True) as store:
        alerts = store.list_alerts(kind="anomaly")
    assert len(alerts) == 1, alerts
    (alert,) = alerts
    assert (alert.device, alert.metric, alert.state, alert.late) == ("pi-spike", "temp", "closed", False)
    assert alert.start == t0 + spike_at
    assert alert.value is not None and 33 < alert.value < 37  # the spike itself is the peak
    assert alert.expected_low is not None and alert.expected_high is not None
    assert alert.expected_low < 25 < alert.value and alert.msg_id
    assert [(e.alert_id, e.state) for e in events] == [
        (alert.alert_id, AlertState.OPEN),
        (alert.alert_id, AlertState.CLOSED),
    ]
    assert events[1].kind is AlertKind.ANOMALY and events[1].end is not None


def test_silent_device_and_last_will_raise_silent_alerts_that_close_on_return(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    t0 = time.time()
    with running(fast_config(broker, db, silent_after=0.6)):
        agent = FakeAgent(broker, "quiet")
        agent.publish("pi-quiet", "e1", rows_for([1], t0))
        wait_for(
            lambda: alerts_in(db, kind="silent", device="pi-quiet", state="open") == 1, what="silent alert"
        )
        agent.publish("pi-quiet", "e1", rows_for([2], t0))
        wait_for(
            lambda: alerts_in(db, kind="silent", device="pi-quiet", state="closed") == 1,
            what="silent alert closed",
        )
        # A connection that dies without DISCONNECT: the broker publishes its last will.
        from devices.model import Status, StatusEvent

        dying = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-will")
        will = wire.encode_status(Status("pi-will", StatusEvent.WILL, t0, "e1", "0.1"))
        dying.will_set(wire.device_topic("pi-will", "status"), will, qos=1, retain=True)
        dying.connect(broker.host, broker.port)
        birth = wire.encode_status(Status("pi-will", StatusEvent.BIRTH, t0, "e1", "0.1"))
        dying.publish(wire.device_topic("pi-will", "status"), birth, qos=1, retain=True)
        dying.loop(timeout=0.5)
        wait_for(
            lambda: stored(db, lambda s: "pi-will" in {d.device for d in s.list_devices()}, False),
            what="birth",
        )
        sock = dying.socket()
        assert sock is not None
        sock.close()  # no DISCONNECT packet
        wait_for(
            lambda: alerts_in(db, kind="silent", device="pi-will", state="open") == 1,
            what="silent alert from the will",
        )
        agent.close()
    with open_store(db, readonly=True) as store:
        device = store.device("pi-will")
        assert device.online is False and device.status_event == "will"


def test_mosquitto_default_queue_limit_silently_drops_qos1_for_a_busy_subscriber(tmp_path: Path) -> None:
    """Why deploy/mosquitto/dev.conf sets max_queued_messages 0: measured, not assumed."""
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed")
    dev_conf = (REPO / "deploy" / "mosquitto" / "dev.conf").read_text()
    assert "\nmax_queued_messages 0\n" in dev_conf

    def received(extra: str, name: str, n: int = 1500) -> tuple[int, str]:
        mq = Mosquitto(tmp_path / name, extra_config=extra)
        mq.start()
        try:
            got: list[bytes] = []
            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="busy", clean_session=False)
            sub.on_message = lambda c, u, m: got.append(m.payload)
            sub.connect(mq.host, mq.port)
            sub.subscribe("q/#", qos=1)
            sub.loop(timeout=0.5)
            sub.disconnect()  # the session persists: the broker queues for it
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
            pub.connect(mq.host, mq.port)
            pub.loop_start()
            infos = [pub.publish("q/x", str(i).encode(), qos=1) for i in range(n)]
            for info in infos:
                info.wait_for_publish(10)  # every PUBACK arrived: the publisher thinks all is well
            pub.loop_stop()
            pub.disconnect()
            sub.reconnect()
            sub.loop_start()
            deadline = time.monotonic() + 10
            settled = 0
            while time.monotonic() < deadline and len(got) < n:  # stop once nothing more arrives
                before = len(got)
                time.sleep(0.3)
                settled = settled + 1 if len(got) == before else 0
                if settled >= 3:
                    break
            sub.loop_stop()
            return len(got), mq.log_text()
        finally:
            mq.stop()

    dropped_config, log = received("max_queued_messages 1000\n", "default")
    assert dropped_config == 1000  # 500 of 1500 confirmed messages never delivered
    assert "dropped" in log
    kept, _ = received("", "fixed")  # tests/mosquitto.py and deploy/ use max_queued_messages 0
    assert kept == 1500


def test_after_a_broker_outage_readings_are_stored_and_confirmed_within_seconds(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The broker is down long enough for an uncapped back-off to grow past a minute (issue 11:
    the aggregator stayed away 59 s after a 60 s outage). With the defaults, the aggregator is
    back within its 5 s cap, and an agent (cap 4 s here) is stored and confirmed soon after."""
    from tests.agent_helpers import RunningAgent, agent_config

    db = tmp_path / "cloud.db"
    defaults = AggregatorConfig()
    config = fast_config(
        broker, db, reconnect_base=defaults.reconnect_base, reconnect_cap=defaults.reconnect_cap
    )
    agent_cfg = agent_config(
        tmp_path, broker.url, interval_s=0.1, publish={"reconnect_base_s": 0.5, "reconnect_max_s": 4.0}
    )
    with running(config) as aggregator, RunningAgent(agent_cfg) as agent:
        wait_for(lambda: agent.outbox.counters()["confirmed"] >= 10, what="first confirmations")
        broker.stop()
        wait_for(lambda: not aggregator.connected.is_set(), what="the aggregator to notice")
        time.sleep(15)
        stored_before = readings_in(db)
        confirmed_before = agent.outbox.counters()["confirmed"]
        broker.start()
        back = time.monotonic()
        wait_for(aggregator.connected.is_set, 30, "the aggregator to reconnect")
        reconnected = time.monotonic() - back
        wait_for(lambda: readings_in(db) > stored_before, 30, "a stored reading")
        stored_after = time.monotonic() - back
        wait_for(lambda: agent.outbox.counters()["confirmed"] > confirmed_before, 30, "a confirmation")
        confirmed = time.monotonic() - back
    assert reconnected <= defaults.reconnect_cap + 2.0, reconnected
    assert stored_after <= 4.0 + defaults.reconnect_cap + 2.0, stored_after
    assert confirmed <= stored_after + defaults.ack_interval + 2.0, (stored_after, confirmed)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem refuses (ENOSPC); returns it (delete it to free space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    # Unbuffered: a buffered file keeps the bytes a full disk refused and raises again on close.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
    return filler


def test_a_full_disk_under_the_store_confirms_nothing_unstored_and_resumes(
    broker: Mosquitto,
    tmp_path: Path,
    small_filesystem: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store on a real 8 MiB filesystem that fills up: no ack precedes its commit (checked
    against the database on every ack), what was confirmed stays, and once space is back the
    agents' resends are stored and confirmed, each reading once."""
    where = small_filesystem(8 * 1024 * 1024)
    db = where / "cloud.db"
    caplog.set_level("WARNING", logger="edgewatch.cloud.service")
    t0 = time.time() - 3600
    with running(fast_config(broker, db)) as aggregator:
        agent = FakeAgent(broker, "full-disk", verify_db=db)
        agent.publish("pi-full", "e1", rows_for(range(1, 101), t0))
        wait_for(lambda: agent.acked_count("pi-full", "e1") == 100, what="acks before the disk fills")
        filler = _fill(where)
        for start in range(101, 2101, 100):
            agent.publish("pi-full", "e1", rows_for(range(start, start + 100), t0))
        reported = lambda: any("confirming nothing" in r.getMessage() for r in caplog.records)  # noqa: E731
        wait_for(reported, what="the report")
        time.sleep(2.0)
        assert aggregator.connected.is_set()
        stuck = agent.acked_count("pi-full", "e1")
        assert stuck < 2100  # not everything could be stored, so not everything was confirmed
        filler.unlink()  # space returns
        deadline = time.monotonic() + 60
        while agent.acked_count("pi-full", "e1") < 2100 and time.monotonic() < deadline:
            agent.resend_unacked(older_than=1.0, batch=100)
            time.sleep(1.0)
        assert agent.acked_count("pi-full", "e1") == 2100
        assert agent.premature == []  # never an ack for a reading not committed
        agent.close()
    assert readings_in(db) == 2100
    messages = [r.getMessage() for r in caplog.records]
    assert sum("confirming nothing" in m for m in messages) == 1
    assert any("writable again" in m for m in messages)
