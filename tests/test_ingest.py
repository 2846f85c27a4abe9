"""The ingest core with a fake clock: decoding, de-duplication, confirmations, detection, replay.

Real SQLite files in tmp_path, no broker. `ThresholdDetector` is registered for these tests only
(monkeypatched into the registry) so the expected verdicts do not depend on the default detector.
"""

from __future__ import annotations

import json
import math
import pickle
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import cloud.detect
from cloud.alerts.episodes import EpisodePolicy, SilencePolicy
from cloud.detect.base import Verdict
from cloud.errors import StoreError, StoreFull
from cloud.ingest.pipeline import (
    AckCoalescer,
    DeadLetter,
    Inbound,
    Pipeline,
    PipelineSettings,
    ReadingsItem,
    StatusItem,
    decode_inbound,
)
from cloud.store.sqlite.store import SqliteStore as Store
from devices import wire
from devices.model import Ack, AlertState, Status, StatusEvent

T0 = 1_750_000_000.0
DEV = "pi-1"
TELEMETRY = wire.device_topic(DEV, "telemetry")
BACKFILL = wire.device_topic(DEV, "backfill")
STATUS = wire.device_topic(DEV, "status")


class ThresholdDetector:
    """Anomalous above 100 (a spike, saying so in `{unit}`); counts what it learned; raises on
    666 (a detector bug)."""

    name = "threshold"

    def __init__(self, *, seed: int = 0) -> None:
        self.n = 0

    def score_one(self, ts: float, value: float) -> float:
        if value == 666:
            raise RuntimeError("detector bug")
        return 0.9 if value > 100 else 0.1

    def learn_one(self, ts: float, value: float) -> None:
        self.n += 1

    def process(self, ts: float, value: float) -> Verdict:
        score = self.score_one(ts, value)
        if score < 0.5:
            self.learn_one(ts, value)
            return Verdict(score, False, 0.0, 100.0)
        return Verdict(score, True, 0.0, 100.0, "spike", f"value {value:g} {{unit}}, above 100 {{unit}}")

    def to_bytes(self) -> bytes:
        return pickle.dumps(self)


@pytest.fixture
def threshold(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(cloud.detect.DETECTORS, "threshold", "tests.test_ingest:ThresholdDetector")
    return "threshold"


SETTINGS = PipelineSettings(
    detector="threshold",
    episodes=EpisodePolicy(close_after=3, close_after_seconds=0),
    silence=SilencePolicy(silent_after=60, factor=3),
    ack_interval=1.0,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "cloud.db") as s:
        yield s


@pytest.fixture
def pipeline(store: Store, threshold: str) -> Pipeline:
    return Pipeline(store, SETTINGS, now=T0)


def msg(
    seqs: list[int] | range,
    *,
    topic: str = TELEMETRY,
    device: str = DEV,
    epoch: str = "e1",
    value: float | None = None,
    values: dict[int, float] | None = None,
    metric: str = "temp",
    at: float = T0,
) -> Inbound:
    rows = [
        (s, T0 + s, "sys", metric, (values or {}).get(s, value if value is not None else 20.0), "C")
        for s in seqs
    ]
    return Inbound(topic, wire.encode_readings(device, epoch, rows, sent_at=T0, msg_id=f"m{seqs[0]}"), at)


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def envelope(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": "1.0",
        "kind": "readings",
        "msg_id": "x1",
        "device": DEV,
        "epoch": "e1",
        "sent_at": T0,
        "readings": [{"seq": 1, "ts": T0, "sensor": "s", "metric": "m", "value": 1.0, "unit": ""}],
    }
    base.update(changes)
    return base


# ---------------------------------------------------------------------------------------------
# decode_inbound: never raises, always a reason


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TELEMETRY, b"{not json", "malformed_json"),
        (TELEMETRY, b"", "malformed_json"),
        (TELEMETRY, b"\xff\xfe", "malformed_json"),
        (TELEMETRY, b"[1, 2]", "not_an_object"),
        (TELEMETRY, raw(envelope(v="2.0")), "unsupported_version"),
        (TELEMETRY, raw(envelope(v=None)), "missing_version"),
        (TELEMETRY, raw(envelope(kind="ack")), "wrong_kind"),
        (TELEMETRY, raw(envelope(device="pi-2")), "device_mismatch"),
        (TELEMETRY, raw(envelope(epoch=5)), "bad_epoch"),
        (TELEMETRY, raw(envelope(readings={"a": 1})), "bad_readings"),
        (TELEMETRY, raw(envelope(sent_at="yesterday")), "bad_sent_at"),
        (TELEMETRY, b"[" * 300_000, "oversized"),
        ("edgewatch/v1/alerts/telemetry", raw(envelope()), "bad_topic"),
        ("edgewatch/v1/bad device/telemetry", raw(envelope()), "bad_topic"),
        (STATUS, raw({"v": "1.0", "kind": "status", "device": DEV, "event": "??", "ts": T0}), "bad_event"),
        (STATUS, wire.encode_status(Status("pi-2", StatusEvent.BIRTH, T0)), "device_mismatch"),
    ],
)
def test_malformed_messages_become_dead_letters_with_a_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    item = decode_inbound(Inbound(topic, payload, T0))
    assert isinstance(item, DeadLetter)
    assert item.reason == reason
    assert item.payload == payload and item.topic == topic and item.received_at == T0


def test_bad_readings_are_rejected_alone_with_their_seq() -> None:
    readings = [
        {"seq": 1, "ts": T0, "sensor": "s", "metric": "m", "value": 1.0},
        {"seq": 2, "ts": T0, "sensor": "s", "metric": "m", "value": math.nan},
        {"seq": 3, "ts": T0, "sensor": "s", "metric": "m", "value": math.inf},
        {"seq": 4, "ts": 1e13, "sensor": "s", "metric": "m", "value": 1.0},
        {"seq": 5, "ts": T0 + 3 * 86400, "sensor": "s", "metric": "m", "value": 1.0},
        {"seq": 6, "ts": T0, "sensor": "s", "metric": "m", "value": "hot"},
        {"seq": "7", "ts": T0, "sensor": "s", "metric": "m", "value": 1.0},
        {"seq": 8, "ts": T0 + 60, "sensor": "s", "metric": "m", "value": 2.0},
    ]
    payload = json.dumps(envelope(readings=readings)).encode()  # json writes NaN/Infinity literals
    item = decode_inbound(Inbound(TELEMETRY, payload, T0))
    assert isinstance(item, ReadingsItem)
    assert [r.seq for r in item.accepted] == [1, 8]
    assert [(d.seq, d.reason) for d in item.dead] == [
        (2, "non_finite_value"),
        (3, "non_finite_value"),
        (4, "bad_ts"),
        (6, "bad_value"),
        (None, "bad_seq"),
        (5, "future_ts"),
    ]
    assert all(d.msg_id == "x1" and d.device == DEV for d in item.dead)


def test_status_decodes_with_retained_flag() -> None:
    status = Status(DEV, StatusEvent.HEARTBEAT, T0, "e1", "0.1", {"backlog": 3})
    item = decode_inbound(Inbound(STATUS, wire.encode_status(status), T0, retained=True))
    assert isinstance(item, StatusItem) and item.retained and item.status == status


# ---------------------------------------------------------------------------------------------
# confirmations


def test_ack_coalescer_confirms_exactly_the_seqs_received() -> None:
    """Never a seq that did not arrive: [1, 1, 3] spans three slots but 2 is missing."""
    acks = AckCoalescer(interval=1.0)
    acks.add(DEV, "e1", [1, 1, 3])
    acks.add(DEV, "e1", [9, 7, 8])
    acks.add(DEV, "e1", [4, 5])
    acks.add(DEV, "e2", [2])
    acks.requeue(Ack(DEV, "e1", ((20, 22),)))
    assert acks.due(T0) == [Ack(DEV, "e1", ((1, 1), (3, 5), (7, 9), (20, 22))), Ack(DEV, "e2", ((2, 2),))]
    assert acks.due(T0 + 5) == []


def test_ack_coalescer_releases_once_per_interval_per_device() -> None:
    c = AckCoalescer(interval=1.0)
    c.add("a", "e1", [3, 1, 2])
    c.add("a", "e2", [9])
    c.add("b", "e1", [5])
    first = c.due(10.0)
    assert sorted((a.device, a.epoch, a.ranges) for a in first) == [
        ("a", "e1", ((1, 3),)),
        ("a", "e2", ((9, 9),)),
        ("b", "e1", ((5, 5),)),
    ]
    c.add("a", "e1", [4])
    assert c.due(10.5) == []
    c.requeue(Ack("a", "e1", ((7, 8),)))
    assert c.due(11.0) == [Ack("a", "e1", ((4, 4), (7, 8)))]
    c.add("b", "e1", [6])
    assert c.drain(11.1) == [Ack("b", "e1", ((6, 6),))]
    assert len(c) == 0


# ---------------------------------------------------------------------------------------------
# the pipeline over a real SQLite file


def test_duplicates_are_stored_once_counted_and_acked_again(pipeline: Pipeline, store: Store) -> None:
    report = pipeline.ingest([msg(range(1, 11)), msg(range(6, 16))], T0)
    assert (report.stored, report.duplicates) == (15, 5)
    assert pipeline.acks_due(T0) == [Ack(DEV, "e1", ((1, 15),))]
    report = pipeline.ingest([msg(range(1, 11), topic=BACKFILL)], T0 + 2)
    assert (report.stored, report.duplicates) == (0, 10)
    # The agent resent because it missed the ack: it gets one again.
    assert pipeline.acks_due(T0 + 2) == [Ack(DEV, "e1", ((1, 10),))]
    assert store.count_readings() == 15
    detector = pipeline.detector(DEV, "sys", "temp")
    assert isinstance(detector, ThresholdDetector) and detector.n == 15  # duplicates not learned twice


def test_each_message_records_exactly_the_rows_it_stored(pipeline: Pipeline, store: Store) -> None:
    """One batch, one multi-row insert: each message still owns exactly its own new readings,
    duplicates of earlier messages in the same batch included."""
    batch = [msg(range(1, 11)), msg(range(6, 16)), msg(range(3, 8)), msg([16, 16, 17])]
    report = pipeline.ingest(batch, T0)
    assert (report.stored, report.duplicates) == (17, 11)
    ids = [wire.decode_readings(m.payload).msg_id for m in batch]
    receipts = [store.message(i) for i in ids]
    counts = [[(m.stored, m.duplicates) for m in r] for r in receipts]
    assert counts == [[(10, 0)], [(5, 5)], [(0, 5)], [(2, 1)]]
    owner = {r.seq: r.msg_id for r in store.readings(DEV, "temp")}
    assert owner == {s: ids[0] if s <= 10 else ids[1] if s <= 15 else ids[3] for s in range(1, 18)}


def test_partial_resend_feeds_only_new_readings_even_with_a_seq_twice(pipeline: Pipeline) -> None:
    pipeline.ingest([msg([1, 2, 3])], T0)
    report = pipeline.ingest([msg([2, 3, 4, 4, 5])], T0)
    assert (report.stored, report.duplicates) == (2, 3)
    detector = pipeline.detector(DEV, "sys", "temp")
    assert isinstance(detector, ThresholdDetector) and detector.n == 5


def test_rejected_readings_are_dead_lettered_once_and_acked(pipeline: Pipeline, store: Store) -> None:
    readings = [
        {"seq": 1, "ts": T0, "sensor": "s", "metric": "m", "value": 1.0},
        {"seq": 2, "ts": T0, "sensor": "s", "metric": "m", "value": math.nan},
    ]
    payload = json.dumps(envelope(readings=readings)).encode()
    for _ in range(2):  # a resend of the same bad reading is not a second dead letter
        report = pipeline.ingest([Inbound(TELEMETRY, payload, T0)], T0)
        assert report.dead == {"non_finite_value": 1}
    assert [(d.reason, d.seq) for d in store.dead_letters()] == [("non_finite_value", 2)]
    assert pipeline.acks_due(T0) == [Ack(DEV, "e1", ((1, 2),))]
    (epoch,) = store.device(DEV).epochs
    assert (epoch.received, epoch.rejected, epoch.missing, epoch.gaps) == (1, 1, 0, ())


def test_envelope_errors_are_stored_raw_and_never_acked(pipeline: Pipeline, store: Store) -> None:
    bad = [Inbound(TELEMETRY, b"{oops", T0), Inbound(TELEMETRY, raw(envelope(device="other")), T0)]
    report = pipeline.ingest([*bad, msg([1])], T0)
    assert report.dead == {"malformed_json": 1, "device_mismatch": 1} and report.stored == 1
    letters = store.dead_letters()
    assert {d.reason: d.payload for d in letters} == {
        "malformed_json": b"{oops",
        "device_mismatch": bad[1].payload,
    }
    assert pipeline.acks_due(T0) == [Ack(DEV, "e1", ((1, 1),))]


def test_nothing_is_acked_or_learned_when_the_commit_fails(
    pipeline: Pipeline, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.ingest([msg([1, 2])], T0)
    pipeline.acks_due(T0)

    write = store.store_messages

    def broken(items: Sequence[ReadingsItem]) -> object:
        write(items)  # the readings are written, then the disk fails before the commit
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "store_messages", broken)
    with pytest.raises(StoreError, match="disk I/O error"):
        pipeline.ingest([msg([3, 4])], T0 + 5)
    assert pipeline.acks_due(T0 + 5) == []
    assert store.count_readings() == 2
    detector = pipeline.detector(DEV, "sys", "temp")
    assert isinstance(detector, ThresholdDetector) and detector.n == 2  # rebuilt from the store
    monkeypatch.undo()
    monkeypatch.setitem(cloud.detect.DETECTORS, "threshold", "tests.test_ingest:ThresholdDetector")
    pipeline.ingest([msg([3, 4])], T0 + 6)  # the agent's resend then succeeds
    assert pipeline.acks_due(T0 + 6) == [Ack(DEV, "e1", ((3, 4),))]


def test_a_full_store_confirms_nothing_and_resumes(pipeline: Pipeline, store: Store) -> None:
    """Fault injection that runs anywhere: SQLite says SQLITE_FULL past max_page_count."""
    pipeline.ingest([msg(range(1, 11))], T0)
    pipeline.acks_due(T0)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StoreFull):
        pipeline.ingest([msg(range(11, 2011))], T0 + 5)
    assert pipeline.acks_due(T0 + 10) == []
    assert store.count_readings() == 10  # what was confirmed is still there
    store.db.execute("PRAGMA max_page_count=1073741823")  # space returns
    pipeline.ingest([msg(range(11, 2011))], T0 + 11)  # the agent's resend
    assert pipeline.acks_due(T0 + 12) == [Ack(DEV, "e1", ((11, 2010),))]
    assert store.count_readings() == 2010


def test_a_spike_opens_and_closes_one_episode_published_once(pipeline: Pipeline, store: Store) -> None:
    report = pipeline.ingest([msg(range(1, 11), values={5: 500.0, 6: 400.0})], T0)
    assert (report.alerts_opened, report.alerts_closed) == (1, 1)
    events = [wire.decode_alert(p.payload) for p in report.publications]
    assert [(e.state, e.start, e.end, e.peak_score, e.value) for e in events] == [
        (AlertState.OPEN, T0 + 5, None, 0.9, 500.0),
        (AlertState.CLOSED, T0 + 5, T0 + 7, 0.9, 500.0),
    ]
    # Why, in the series' unit, on both messages and in the store.
    why = ("spike", "value 500 C, above 100 C", "value 500 C, above 100 C", T0 + 5)
    assert [(e.anomaly_kind, e.evidence, e.opening_evidence, e.peak_ts) for e in events] == [why, why]
    assert {p.topic for p in report.publications} == {wire.alert_topic(DEV)}
    (alert,) = store.list_alerts()
    assert (alert.state, alert.metric, alert.sensor, alert.msg_id, alert.late) == (
        "closed",
        "temp",
        "sys",
        "m1",
        False,
    )
    assert (alert.anomaly_kind, alert.evidence, alert.opening_evidence, alert.peak_ts) == why
    assert len(pipeline.pending_publications()) == 2
    pipeline.published([p.outbox_id for p in report.publications])
    assert pipeline.pending_publications() == []


def test_backfilled_readings_are_scored_not_learned_and_alert_late(pipeline: Pipeline, store: Store) -> None:
    pipeline.ingest([msg(range(100, 110))], T0)
    detector = pipeline.detector(DEV, "sys", "temp")
    assert isinstance(detector, ThresholdDetector) and detector.n == 10
    report = pipeline.ingest([msg(range(1, 10), topic=BACKFILL, values={3: 900.0})], T0)
    assert detector.n == 10  # the live stream's state is untouched by the backlog
    assert report.alerts_opened == 1 and report.late_alerts == 1
    (alert,) = store.list_alerts(late=True)
    assert alert.state == "closed" and alert.value == 900.0
    assert store.list_alerts(late=False) == []
    # A late alert says why too: what the live detector says of that reading, range included.
    assert (alert.anomaly_kind, alert.peak_ts) == ("spike", T0 + 3)
    assert alert.evidence == "value 900 C, above 100 C"
    assert (alert.expected_low, alert.expected_high) == (0.0, 100.0)


def test_restart_without_checkpoint_replays_and_never_re_alerts(store: Store, threshold: str) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    opened = first.ingest([msg(range(1, 21), values={10: 500.0})], T0)
    assert (opened.alerts_opened, opened.alerts_closed) == (1, 1)
    # A crash here: no checkpoint was ever written. The next process replays everything.
    second = Pipeline(store, SETTINGS, now=T0 + 10)
    assert second.replayed == 20
    replayed = second.detector(DEV, "sys", "temp")
    assert isinstance(replayed, ThresholdDetector) and replayed.n == 19  # the spike is not learned
    assert len(store.list_alerts()) == 1
    assert len(second.pending_publications()) == 2  # the crash left open+close unpublished
    # Reading the same messages again (the agent resends) changes nothing.
    again = second.ingest([msg(range(1, 21), values={10: 500.0})], T0 + 11)
    assert (again.stored, again.alerts_opened, again.alerts_closed) == (0, 0, 0)


def test_checkpoint_then_replay_only_past_the_watermark(store: Store, threshold: str) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    first.ingest([msg(range(1, 11))], T0)
    assert first.checkpoint(T0) == 1
    first.ingest([msg(range(11, 16), values={13: 500.0})], T0 + 1)  # episode open at the "crash"
    second = Pipeline(store, SETTINGS, now=T0 + 5)
    assert second.replayed == 5
    detector = second.detector(DEV, "sys", "temp")
    assert isinstance(detector, ThresholdDetector) and detector.n == 14
    closing = second.ingest([msg(range(16, 20))], T0 + 6)  # the episode continues where it was
    assert (closing.alerts_opened, closing.alerts_closed) == (0, 1)
    (alert,) = store.list_alerts()
    assert alert.state == "closed" and alert.start == T0 + 13


def test_a_detector_bug_dead_letters_only_its_message(pipeline: Pipeline, store: Store) -> None:
    report = pipeline.ingest([msg([1, 2]), msg([3], value=666.0), msg([4, 5])], T0)
    assert report.stored == 4 and report.dead == {"internal_error": 1}
    assert [d.reason for d in store.dead_letters()] == ["internal_error"]
    assert pipeline.acks_due(T0) == [Ack(DEV, "e1", ((1, 2), (4, 5)))]  # 3 stays unconfirmed


def test_status_updates_the_registry_and_retained_repeats_are_ignored(
    pipeline: Pipeline, store: Store
) -> None:
    birth = Status(DEV, StatusEvent.BIRTH, T0, "e1", "0.1.0", {"backlog": 7, "dropped": 1, "extra": 2})
    pipeline.ingest([Inbound(STATUS, wire.encode_status(birth), T0 + 1)], T0 + 1)
    device = store.device(DEV)
    assert (device.online, device.agent_version, device.epoch, device.status_event) == (
        True,
        "0.1.0",
        "e1",
        "birth",
    )
    assert device.counters == {"backlog": 7.0, "dropped": 1.0, "extra": 2.0}
    report = pipeline.ingest([Inbound(STATUS, wire.encode_status(birth), T0 + 50, retained=True)], T0 + 50)
    assert report.statuses == 0  # the broker re-sent the retained birth on resubscribe
    will = Status(DEV, StatusEvent.WILL, T0 + 60, "e1", "0.1.0")
    report = pipeline.ingest([Inbound(STATUS, wire.encode_status(will), T0 + 61)], T0 + 61)
    assert report.alerts_opened == 1
    assert store.device(DEV).online is False
    (silent,) = store.list_alerts(kind="silent")
    assert (silent.state, silent.severity, silent.start) == ("open", "critical", T0 + 61)
    back = pipeline.ingest([msg([1])], T0 + 70)
    assert back.alerts_closed == 1
    assert store.list_alerts(kind="silent")[0].state == "closed"


def test_silence_is_detected_by_tick_and_survives_a_restart(store: Store, threshold: str) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    first.ingest([msg([1], at=T0)], T0)
    assert first.tick(T0 + 30).alerts_opened == 0
    assert first.tick(T0 + 61).alerts_opened == 1
    second = Pipeline(store, SETTINGS, now=T0 + 100)  # restarted: the episode is still open
    assert second.tick(T0 + 1000).alerts_opened == 0
    assert second.ingest([msg([2], at=T0 + 1001)], T0 + 1001).alerts_closed == 1
    assert [a.state for a in store.list_alerts(kind="silent")] == ["closed"]


def test_clean_shutdown_is_not_silence(pipeline: Pipeline) -> None:
    bye = Status(DEV, StatusEvent.SHUTDOWN, T0 + 1, "e1", "0.1.0")
    pipeline.ingest([msg([1]), Inbound(STATUS, wire.encode_status(bye), T0 + 1)], T0 + 1)
    assert pipeline.tick(T0 + 10_000).alerts_opened == 0


def test_a_checkpoint_written_before_explanations_resumes_its_open_episode(
    store: Store, threshold: str
) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    first.ingest([msg(range(1, 11), values={9: 500.0})], T0)  # an episode is open at the checkpoint
    first.checkpoint(T0)
    # Rewrite the checkpoint as an older release wrote it: a "last" verdict, no reason slots.
    (blob,) = store.db.execute("SELECT tracker FROM detector_state").fetchone()
    state = json.loads(blob)
    for tracker in (state["live"], state["late"]):
        for name in ("kind", "evidence", "opening_evidence", "peak_ts"):
            del tracker[name]
    state["last"] = {"score": 0.1, "anomalous": False, "expected_low": 0.0, "expected_high": 100.0}
    with store.transaction():
        store.db.execute("UPDATE detector_state SET tracker = ?", (json.dumps(state),))
    second = Pipeline(store, SETTINGS, now=T0 + 5)
    assert second.replayed == 0
    closing = second.ingest([msg(range(11, 14))], T0 + 6)
    assert (closing.alerts_opened, closing.alerts_closed) == (0, 1)
    (alert,) = store.list_alerts()
    # Opened with its reason before the checkpoint; the close keeps what it knows (the peak).
    assert (alert.state, alert.start, alert.value, alert.anomaly_kind) == ("closed", T0 + 9, 500.0, "spike")
    assert alert.opening_evidence == "value 500 C, above 100 C"


@pytest.mark.parametrize(
    ("blob", "tracker", "reason"),
    [
        (b"\x80\x05 not a pickle at all", None, "unreadable checkpoint"),
        (b"edgewatch-checkpoint/99\n...", None, "format 99 is newer"),
        (None, '{"live": {"phase": "half-open"}}', "unreadable episode state"),
        (None, "{not json", "unreadable episode state"),
    ],
)
def test_an_unreadable_checkpoint_starts_that_stream_fresh_and_keeps_it_aside(  # noqa: PLR0917
    store: Store,
    threshold: str,
    caplog: pytest.LogCaptureFixture,
    blob: bytes | None,
    tracker: str | None,
    reason: str,
) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    first.ingest([msg(range(1, 11)), msg(range(1, 11), metric="hum", epoch="e2")], T0)
    assert first.checkpoint(T0) == 2
    bad = store.find_series(DEV, "sys", "hum")
    with store.transaction():  # what a corrupt row, a renamed class or a newer version leaves
        if blob is not None:
            store.db.execute("UPDATE detector_state SET blob = ? WHERE series_id = ?", (blob, bad))
        if tracker is not None:
            store.db.execute("UPDATE detector_state SET tracker = ? WHERE series_id = ?", (tracker, bad))
    caplog.set_level("WARNING", logger="edgewatch.cloud.ingest")
    second = Pipeline(store, SETTINGS, now=T0 + 5)  # no exception: the aggregator starts
    assert any(f"{DEV}/sys/hum" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert second.detector(DEV, "sys", "hum") is None  # fresh: a warm-up from its next reading
    resumed = second.detector(DEV, "sys", "temp")
    assert isinstance(resumed, ThresholdDetector) and resumed.n == 10  # the other one resumed
    ((series_id, _detector, why, _at),) = store.rejected_checkpoints()
    assert series_id == bad and reason in why
    second.ingest([msg(range(11, 14), metric="hum", epoch="e2")], T0 + 6)
    fresh = second.detector(DEV, "sys", "hum")
    assert isinstance(fresh, ThresholdDetector) and fresh.n == 3
    assert second.checkpoint(T0 + 7) == 1  # the fresh stream is checkpointed again, readable
    assert Pipeline(store, SETTINGS, now=T0 + 8).detector(DEV, "sys", "hum") is not None


def test_checkpoints_carry_a_format_version(store: Store, threshold: str) -> None:
    first = Pipeline(store, SETTINGS, now=T0)
    first.ingest([msg(range(1, 5))], T0)
    first.checkpoint(T0)
    _, (cp,) = store.load_checkpoint()
    assert cp.blob.startswith(b"edgewatch-checkpoint/1\n")
