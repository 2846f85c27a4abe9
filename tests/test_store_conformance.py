"""Every store backend against the same tests: SQLite files and a private PostgreSQL.

Each test gets a fresh, empty store per backend (`store_url` in conftest: a tmp file, or a new
database on the session's own PostgreSQL server, never the shared one). The tests speak only
the store interface (cloud.store.api) and the pipeline; none reads a backend's schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

import cloud.detect
from cloud.alerts.episodes import EpisodePolicy, SilencePolicy
from cloud.errors import NotFound, StoreError
from cloud.ingest.pipeline import DeadLetter, Inbound, Pipeline, PipelineSettings, decode_inbound
from cloud.store.api import AlertRecord, ReadingsItem, ReplayedAlert, Store, open_store
from cloud.store.sqlite.store import SqliteStore
from devices import wire
from devices.model import Ack, Status, StatusEvent

T0 = 1_750_000_000.0
DAY = 86_400.0


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url, readonly=False, create=True) as s:
        yield s


@pytest.fixture
def threshold(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(cloud.detect.DETECTORS, "threshold", "tests.test_ingest:ThresholdDetector")
    return "threshold"


SETTINGS = PipelineSettings(
    detector="threshold",
    episodes=EpisodePolicy(close_after=3, close_after_seconds=0),
    silence=SilencePolicy(silent_after=60, factor=3),
)


def readings(
    device: str,
    seqs: list[int] | range,
    *,
    epoch: str = "e1",
    metric: str = "temp",
    t0: float = T0,
    value: float | None = None,
    spike: int | None = None,
    late: bool = False,
) -> Inbound:
    rows = [
        (
            s,
            t0 + s,
            "sys",
            metric,
            500.0 if s == spike else (value if value is not None else 20.0 + s % 3),
            "C",
        )
        for s in seqs
    ]
    msg_id = f"{device}-{seqs[0]}" + ("" if epoch == "e1" else f"-{epoch}") + ("-late" if late else "")
    payload = wire.encode_readings(device, epoch, rows, sent_at=t0, msg_id=msg_id)
    return Inbound(wire.device_topic(device, "backfill" if late else "telemetry"), payload, t0 + 1)


def item(inbound: Inbound) -> ReadingsItem:
    decoded = decode_inbound(inbound)
    assert isinstance(decoded, ReadingsItem)
    return decoded


def alert(
    alert_id: str, device: str, *, start: float, state: str = "open", kind: str = "anomaly"
) -> AlertRecord:
    return AlertRecord(
        alert_id=alert_id, device=device, sensor="sys", metric="temp", kind=kind, state=state,
        start=start, end=None, peak_score=0.9, value=50.0, expected_low=1.0, expected_high=2.0,
        severity="warning", late=False, detector="default", msg_id="m1", opened_at=start,
        closed_at=None, acked_at=None, acked_by="", note="",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the write path


def test_a_batch_mixing_new_and_duplicate_readings_reports_exactly_the_new_ones(store: Store) -> None:
    with store.transaction():
        store.store_messages([item(readings("pi-1", range(1, 6)))])
    batch = [
        item(readings("pi-1", range(4, 9))),  # 4, 5 stored before; 6..8 new
        item(readings("pi-1", range(7, 11))),  # 7, 8 new in the message before it; 9, 10 new
        item(readings("pi-1", [11, 11, 12])),  # a seq twice in one message: stored once
        item(readings("pi-2", range(1, 4))),  # another device, all new
    ]
    with store.transaction():
        done = store.store_messages(batch)
    assert [[int(ts - T0) for _, ts, _ in m.new] for m in done] == [[6, 7, 8], [9, 10], [11, 12], [1, 2, 3]]
    assert [m.duplicates for m in done] == [2, 2, 1, 0]
    assert len({m.message_id for m in done}) == 4
    assert store.count_readings("pi-1") == 12 and store.count_readings() == 15
    totals = store.message_totals()
    assert (totals.messages, totals.stored, totals.duplicates) == (5, 15, 5)
    owner = {r.seq: r.msg_id for r in store.readings("pi-1", "temp")}
    assert [owner[s] for s in (6, 9, 11)] == [m.item.batch.msg_id for m in done[:3]]


def test_overlapping_resends_through_the_pipeline_are_stored_once(store: Store, threshold: str) -> None:
    pipeline = Pipeline(store, SETTINGS, now=T0)
    sent = [readings("pi-1", range(lo, min(lo + 10, 101))) for lo in range(1, 101, 10)]
    resent = [readings("pi-1", range(lo, min(lo + 7, 101)), late=True) for lo in range(40, 101, 7)]
    first = pipeline.ingest(sent[:5] + resent[:3], T0 + 1)
    second = pipeline.ingest(sent[5:] + resent[3:] + sent[:2], T0 + 2)
    assert first.stored + second.stored == 100
    assert (first.stored, first.duplicates, second.stored, second.duplicates) == (60, 11, 40, 70)
    assert sorted(r.seq for r in store.readings("pi-1", "temp")) == list(range(1, 101))
    (epoch,) = store.device("pi-1").epochs
    assert (epoch.received, epoch.missing, epoch.gaps) == (100, 0, ())
    detector = pipeline.detector("pi-1", "sys", "temp")
    # 51..60 arrived first on the backfill topic (scored, not learned); no duplicate was learned
    assert detector is not None and detector.n == 90  # type: ignore[attr-defined]


def test_a_failed_batch_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.store_messages([item(readings("pi-1", range(1, 6)))])
        raise RuntimeError("the detector blew up before the commit")
    assert store.count_readings() == 0 and store.message_totals().messages == 0
    with store.transaction():
        (done,) = store.store_messages([item(readings("pi-1", range(1, 6)))])
    assert len(done.new) == 5  # the same readings, new again: the rollback took them all


def test_dead_letters_keep_raw_bytes_capped_and_counted_by_reason(store: Store) -> None:
    pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
    big = b"x" * 300_000
    topic = wire.device_topic("pi-1", "telemetry")
    pipeline.ingest_items(
        [
            DeadLetter(T0, topic, "oversized", "300000 bytes", big, "pi-1"),
            DeadLetter(T0, topic, "malformed_json", "?", b"{", "pi-1"),
            DeadLetter(T0, topic, "malformed_json", "?", b"{", "pi-1"),
        ],
        T0,
    )
    assert store.dead_letter_counts() == {"malformed_json": 2, "oversized": 1}
    (oversized,) = store.dead_letters(reason="oversized")
    assert oversized.payload is not None and 0 < len(oversized.payload) < len(big)
    assert len(store.dead_letters(device="pi-1", limit=2)) == 2
    with store.transaction():  # a rejected reading's identity is dead-lettered once
        letter = DeadLetter(T0, topic, "non_finite_value", "nan", None, "pi-1", "e1", 7, "m")
        assert store.insert_dead_letters([letter]) == 1
        assert store.insert_dead_letters([letter]) == 0
    assert store.dead_letter_counts()["non_finite_value"] == 1


# ---------------------------------------------------------------------------------------------
# checkpoints and recovery


def test_checkpoint_and_recovery_replay_only_what_is_past_it_and_never_re_alert(
    store_url: str, threshold: str
) -> None:
    with open_store(store_url, readonly=False, create=True) as store:
        pipeline = Pipeline(store, SETTINGS, now=T0)
        report = pipeline.ingest([readings("pi-1", range(1, 21), spike=10)], T0 + 1)
        assert report.alerts_opened == 1
        pipeline.checkpoint(T0 + 2)
        after = pipeline.ingest(
            [readings("pi-1", range(21, 41), spike=30), readings("pi-2", range(1, 6))], T0 + 3
        )
        assert after.alerts_opened == 1
        pipeline.published([p.outbox_id for p in report.publications + after.publications])
        learned = pipeline.detector("pi-1", "sys", "temp").n  # type: ignore[union-attr]
        alerts = sorted((a.alert_id, a.state) for a in store.list_alerts())
    # a crash here: the second batch is past the checkpoint
    with open_store(store_url, readonly=False, create=True) as store:
        resumed = Pipeline(store, SETTINGS, now=T0 + 10)
        assert resumed.replayed == 25  # the readings past the checkpoint, not the 20 before it
        assert resumed.pending_publications() == []  # nothing published again
        assert sorted((a.alert_id, a.state) for a in store.list_alerts()) == alerts
        assert resumed.detector("pi-1", "sys", "temp").n == learned  # type: ignore[union-attr]
        resumed.checkpoint(T0 + 11)
    with open_store(store_url, readonly=False, create=True) as store:
        assert Pipeline(store, SETTINGS, now=T0 + 20).replayed == 0


def test_without_a_checkpoint_everything_replays_and_nothing_re_alerts(
    store_url: str, threshold: str
) -> None:
    with open_store(store_url, readonly=False, create=True) as store:
        pipeline = Pipeline(store, SETTINGS, now=T0)
        report = pipeline.ingest([readings("pi-1", range(1, 21), spike=10)], T0 + 1)
        pipeline.published([p.outbox_id for p in report.publications])
    with open_store(store_url, readonly=False, create=True) as store:
        resumed = Pipeline(store, SETTINGS, now=T0 + 5)
        assert resumed.replayed == 20
        assert resumed.pending_publications() == []
        assert len(store.list_alerts()) == 1


# ---------------------------------------------------------------------------------------------
# retention


def test_retention_drops_only_history_older_than_the_setting(store: Store, threshold: str) -> None:
    pipeline = Pipeline(store, SETTINGS, now=T0)
    old, new = T0 - 10 * DAY, T0
    pipeline.ingest(
        [readings("pi-1", range(1, 11), t0=old), readings("pi-1", range(11, 21), t0=new - 11)], T0
    )
    with store.transaction():
        store.insert_alert(alert("old-open", "pi-1", start=old))
        store.insert_alert(alert("old-closed", "pi-1", start=old, state="closed"))
        store.insert_alert(alert("new-closed", "pi-1", start=new, state="closed"))
        store.insert_dead_letters([DeadLetter(old, "t", "malformed_json", "?", b"{", "pi-1")])
    counts = pipeline.prune(now=T0, retention_s=5 * DAY)
    assert counts == {"readings": 10, "messages": 1, "dead_letter": 1, "alerts": 1}
    assert [r.seq for r in store.readings("pi-1", "temp")] == list(range(11, 21))
    assert sorted(a.alert_id for a in store.list_alerts()) == ["new-closed", "old-open"]
    (epoch,) = store.device("pi-1").epochs
    assert epoch.gaps == () and epoch.missing == 0  # pruned history is not reported as loss
    assert pipeline.prune(now=T0, retention_s=5 * DAY) == {
        "readings": 0,
        "messages": 0,
        "dead_letter": 0,
        "alerts": 0,
    }


# ---------------------------------------------------------------------------------------------
# the operator's read model


def test_alert_queries_filter_get_by_prefix_and_ack(store: Store) -> None:
    with store.transaction():
        assert store.insert_alert(alert("aaaaaa111111", "pi-1", start=T0))
        assert store.insert_alert(alert("aaaaaa222222", "pi-2", start=T0 + 10, kind="silent"))
        assert store.insert_alert(alert("bbbbbb333333", "pi-1", start=T0 + 20))
        assert not store.insert_alert(alert("bbbbbb333333", "pi-1", start=T0 + 20))  # replay: ignored
        assert store.close_alert(
            "bbbbbb333333",
            end=T0 + 30,
            closed_at=T0 + 31,
            peak_score=0.95,
            value=60.0,
            expected_low=None,
            expected_high=None,
            evidence="value 60 C, above the expected 1..2 C",
            peak_ts=T0 + 25,
        )
        assert not store.close_alert(
            "bbbbbb333333",
            end=T0 + 30,
            closed_at=T0 + 31,
            peak_score=0.95,
            value=60.0,
            expected_low=None,
            expected_high=None,
            evidence="value 60 C, above the expected 1..2 C",
            peak_ts=T0 + 25,
        )
    assert [a.alert_id for a in store.list_alerts()] == ["bbbbbb333333", "aaaaaa222222", "aaaaaa111111"]
    assert [a.alert_id for a in store.list_alerts(device="pi-1", state="open")] == ["aaaaaa111111"]
    assert [a.alert_id for a in store.list_alerts(kind="silent")] == ["aaaaaa222222"]
    assert [a.alert_id for a in store.list_alerts(since=T0 + 5, until=T0 + 15)] == ["aaaaaa222222"]
    assert len(store.list_alerts(limit=1)) == 1
    assert store.get_alert("bbbbbb").end == T0 + 30
    with pytest.raises(NotFound, match="ambiguous"):
        store.get_alert("aaaaaa")
    with pytest.raises(NotFound, match="does not exist"):
        store.get_alert("zzzzzzzz")
    acked = store.ack_alert("aaaaaa111111", now=T0 + 100, by="ops", note="known")
    assert (acked.acked_at, acked.acked_by, acked.note) == (T0 + 100, "ops", "known")
    again = store.ack_alert("aaaaaa111111", now=T0 + 200, by="ops")
    assert again.acked_at == T0 + 100 and again.note == "known"  # idempotent
    assert [a.alert_id for a in store.list_alerts(acked=False)] == ["bbbbbb333333", "aaaaaa222222"]


def test_an_alert_keeps_its_kind_and_reasons_and_the_close_updates_the_peaks(store: Store) -> None:
    opening = "value 50 C, 30 typical steps above the level 1.5 C"
    explained = dataclasses.replace(
        alert("cccccc444444", "pi-1", start=T0),
        anomaly_kind="spike", evidence=opening, opening_evidence=opening, peak_ts=T0,
    )  # fmt: skip
    with store.transaction():
        assert store.insert_alert(explained)
    assert store.get_alert("cccccc444444") == explained
    peak = "value 80 C, 52 typical steps above the level 1.5 C"
    with store.transaction():
        assert store.close_alert(
            "cccccc444444", end=T0 + 20, closed_at=T0 + 21, peak_score=0.99, value=80.0,
            expected_low=1.0, expected_high=2.0, evidence=peak, peak_ts=T0 + 12,
        )  # fmt: skip
    (closed,) = store.list_alerts()
    assert (closed.state, closed.value, closed.evidence, closed.peak_ts) == ("closed", 80.0, peak, T0 + 12)
    assert (closed.anomaly_kind, closed.opening_evidence) == ("spike", opening)  # as it opened
    assert store.find_alerts(kind="anomaly") == [closed]


def test_devices_show_completeness_and_gaps(store: Store) -> None:
    pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
    pipeline.ingest(
        [
            readings("pi-1", range(1, 11)),
            readings("pi-1", range(15, 21)),  # 11..14 lost
            readings("pi-1", [25]),  # 21..24 lost
            readings("pi-1", range(3, 6), epoch="e2"),  # a wiped device: new epoch, 1..2 lost
            readings("pi-2", range(1, 4)),
        ],
        T0 + 1,
    )
    status = Status("pi-1", StatusEvent.HEARTBEAT, T0 + 2, "e1", "0.1.0", {"backlog": 4, "dropped": 2})
    pipeline.ingest(
        [Inbound(wire.device_topic("pi-1", "status"), wire.encode_status(status), T0 + 2)], T0 + 2
    )
    listed = {d.device: d for d in store.list_devices()}
    assert set(listed) == {"pi-1", "pi-2"}
    one = listed["pi-1"]
    assert (one.readings, one.online, one.agent_version, one.counters["backlog"]) == (20, True, "0.1.0", 4.0)
    assert {e.epoch: (e.received, e.missing) for e in one.epochs} == {"e1": (17, 8), "e2": (3, 2)}
    assert one.missing == 10
    assert listed["pi-2"].missing == 0 and listed["pi-2"].epochs[0].completeness == 1.0
    shown = store.device("pi-1")
    assert {e.epoch: e.gaps for e in shown.epochs} == {"e1": ((11, 14), (21, 24)), "e2": ((1, 2),)}
    assert store.gaps("pi-1", "e1", limit=1) == ((11, 14),)
    with pytest.raises(NotFound):
        store.device("nobody")


def test_readings_of_a_metric_in_a_window_carry_their_msg_id(store: Store) -> None:
    pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
    pipeline.ingest([readings("pi-1", range(1, 11)), readings("pi-1", range(11, 21), metric="load")], T0)
    got = store.readings("pi-1", "temp", since=T0 + 3, until=T0 + 6)
    assert [(r.seq, r.ts, r.msg_id, r.epoch, r.unit) for r in got] == [
        (3, T0 + 3, "pi-1-1", "e1", "C"),
        (4, T0 + 4, "pi-1-1", "e1", "C"),
        (5, T0 + 5, "pi-1-1", "e1", "C"),
    ]
    assert len(store.readings("pi-1", "load")) == 10
    assert store.readings("pi-1", "temp", sensor="other") == []
    assert [m.stored for m in store.message("pi-1-1")] == [10]


def test_operator_queries_beside_the_writer(store_url: str) -> None:
    with open_store(store_url, readonly=False, create=True) as store:
        pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
        pipeline.ingest([readings("pi-1", range(1, 6)), readings("pi-10", range(1, 4), metric="load")], T0)
        with store.transaction():
            store.insert_alert(alert("aaaaaa111111", "pi-1", start=T0))
            closed = alert("bbbbbb222222", "pi-10", start=T0 + 10, state="closed")
            store.insert_alert(closed)
        with open_store(store_url, readonly=True) as reader:
            assert [a.alert_id for a in reader.find_alerts(state="open")] == ["aaaaaa111111"]
            assert [a.alert_id for a in reader.find_alerts(since=T0 + 20)] == ["aaaaaa111111"]
            assert reader.alert_ids_starting("bbb") == ["bbbbbb222222"]
            assert reader.devices_starting("pi-1") == ["pi-1", "pi-10"]
            assert [(s.sensor, s.metric, s.unit) for s in reader.device_series("pi-10")] == [
                ("sys", "load", "C")
            ]
            assert reader.last_reading_ts("pi-1") == T0 + 5 and reader.last_reading_ts("nobody") is None
            assert reader.message_totals("pi-10").stored == 3
            with pytest.raises(StoreError):
                reader.ack_alert("aaaaaa111111", now=T0)
            with pytest.raises(StoreError):
                _write_in(reader)
    missing = store_url.rsplit("/", 1)[0] + "/missing" + ("" if "://" in store_url else ".db")
    with pytest.raises(StoreError):
        open_store(missing, readonly=True)


def _write_in(store: Store) -> None:
    with store.transaction():
        store.insert_alert(alert("cccccc333333", "pi-1", start=T0))


def test_one_owner_at_a_time(store_url: str) -> None:
    with open_store(store_url, readonly=False, create=True) as first:
        first.acquire_ownership()
        with (
            open_store(store_url, readonly=False, create=True) as second,
            pytest.raises(StoreError, match="another aggregator"),
        ):
            second.acquire_ownership()
    with open_store(store_url, readonly=False, create=True) as third:
        third.acquire_ownership()  # the first one's close released it


def test_replay_sets_keep_runs_apart(store: Store) -> None:
    assert store.replay_runs() == []
    episode = ReplayedAlert("r1", "a1", "pi-1", "sys", "temp", "hst", T0, None, 0.9, 50.0, None, None)
    with store.transaction():
        assert store.save_replayed([episode], T0) == 1
        assert store.save_replayed([episode], T0) == 0  # never doubled
    assert store.replayed_alerts("r1") == [episode]
    assert store.replayed_alerts("r2") == [] and store.replay_runs() == ["r1"]


def test_status_and_presence(store: Store) -> None:
    pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
    status = Status("pi-1", StatusEvent.SHUTDOWN, T0 + 2, "e1", "0.1.0", {"backlog": 4})
    pipeline.ingest(
        [Inbound(wire.device_topic("pi-1", "status"), wire.encode_status(status), T0 + 2)], T0 + 2
    )
    (p,) = store.presence()
    assert (p.device, p.online, p.status_event) == ("pi-1", False, "shutdown")
    assert store.status_times() == {"pi-1": T0 + 2}
    with pytest.raises(NotFound):
        store.get_alert("nothing-here")


def test_a_message_spanning_days_is_stored_whole(store: Store) -> None:
    """Readings of one message on three days (a backlog, or a clock fixed mid-message)."""
    rows = [
        (1, T0 + 2 * DAY, "sys", "temp", 1.0, "C"),
        (2, T0, "sys", "temp", 2.0, "C"),
        (3, T0 + DAY, "sys", "temp", 3.0, "C"),
    ]
    payload = wire.encode_readings("pi-1", "e1", rows, sent_at=T0 + 2 * DAY, msg_id="span")
    with store.transaction():
        (done,) = store.store_messages(
            [item(Inbound(wire.device_topic("pi-1", "backfill"), payload, T0 + 2 * DAY))]
        )
    assert len(done.new) == 3
    assert [r.seq for r in store.readings("pi-1", "temp")] == [2, 3, 1]


def test_a_dropped_database_session_costs_one_batch_not_the_aggregator(
    store_url: str, threshold: str
) -> None:
    """PostgreSQL restarts, fails over, or kills our backend: the batch in flight fails (nothing
    confirmed, so it is resent), the next one finds a new session, ownership taken again."""
    if "://" not in store_url:
        pytest.skip("a SQLite file has no session to lose")
    import psycopg

    with open_store(store_url, readonly=False, create=True) as store:
        store.acquire_ownership()
        pipeline = Pipeline(store, SETTINGS, now=T0)
        assert pipeline.ingest([readings("pi-1", range(1, 11))], T0).stored == 10
        with psycopg.connect(store_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreError):
            pipeline.ingest([readings("pi-1", range(11, 21))], T0 + 1)
        assert pipeline.acks_due(T0 + 10) == [
            Ack("pi-1", "e1", ((1, 10),))
        ]  # the failed batch: not confirmed
        report = pipeline.ingest([readings("pi-1", range(11, 21))], T0 + 2)  # the agent's resend
        assert report.stored == 10 and store.count_readings() == 20
        with (
            open_store(store_url, readonly=False, create=True) as rival,
            pytest.raises(StoreError, match="another"),
        ):
            rival.acquire_ownership()  # the new session holds the lock again


def test_retention_across_a_message_that_spans_the_cut_reports_no_loss(store: Store, threshold: str) -> None:
    """SQLite keeps such a message whole; PostgreSQL drops the day before the cut's: either way
    what is left is newer than the setting and nothing pruned shows up as missing."""
    pipeline = Pipeline(store, SETTINGS, now=T0)
    midnight = (T0 // DAY) * DAY
    rows = [(1, midnight - 60, "sys", "temp", 1.0, "C"), (2, midnight + 60, "sys", "temp", 2.0, "C")]
    payload = wire.encode_readings("pi-1", "e1", rows, sent_at=midnight + 60, msg_id="midnight")
    pipeline.ingest([Inbound(wire.device_topic("pi-1", "telemetry"), payload, midnight + 61)], midnight + 61)
    pipeline.ingest([readings("pi-1", range(3, 6), t0=midnight + 100)], midnight + 200)
    pipeline.prune(now=midnight + 10 + 5 * DAY, retention_s=5 * DAY)  # the cut: 10 s past midnight
    kept = [r.seq for r in store.readings("pi-1", "temp")]
    by_message = isinstance(store, SqliteStore)  # SQLite prunes by message, PostgreSQL by day
    assert kept == ([1, 2, 3, 4, 5] if by_message else [2, 3, 4, 5])
    (epoch,) = store.device("pi-1").epochs
    assert epoch.gaps == () and epoch.missing == 0
