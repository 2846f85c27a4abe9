"""The store on real SQLite files: schema and migrations, errors, and the operator's queries."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from cloud.errors import NotFound, SchemaTooNew, StoreError
from cloud.ingest.pipeline import DeadLetter, Inbound, Pipeline, PipelineSettings
from cloud.store.sqlite.store import MIGRATIONS, SCHEMA_VERSION, AlertRecord, Store, _v3_alert_reasons
from devices import wire
from devices.model import Status, StatusEvent

T0 = 1_750_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "cloud.db") as s:
        yield s


def readings(device: str, seqs: list[int] | range, *, epoch: str = "e1", metric: str = "temp") -> Inbound:
    rows = [(s, T0 + s, "sys", metric, 20.0 + s % 3, "C") for s in seqs]
    payload = wire.encode_readings(device, epoch, rows, sent_at=T0, msg_id=f"{device}-{seqs[0]}")
    return Inbound(wire.device_topic(device, "telemetry"), payload, T0 + 1)


def alert(
    alert_id: str, device: str, *, start: float, state: str = "open", kind: str = "anomaly"
) -> AlertRecord:
    return AlertRecord(
        alert_id=alert_id,
        device=device,
        sensor="sys",
        metric="temp",
        kind=kind,
        state=state,
        start=start,
        end=None,
        peak_score=0.9,
        value=50.0,
        expected_low=1.0,
        expected_high=2.0,
        severity="warning",
        late=False,
        detector="default",
        msg_id="m1",
        opened_at=start,
        closed_at=None,
        acked_at=None,
        acked_by="",
        note="",
    )


def test_new_database_is_at_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "cloud.db"  # parent directories are created
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"readings", "dead_letter", "devices", "alerts", "sources", "series", "messages"} <= tables
    conn.close()
    Store(path).close()  # reopening does not migrate again


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=r"knows up to"):
        Store(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_is_a_store_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(StoreError):
        Store(locked / "cloud.db")


@pytest.mark.parametrize("bad", ["/proc/edgewatch/cloud.db", "/dev/null/cloud.db"])
def test_impossible_paths_are_store_errors(bad: str) -> None:
    with pytest.raises(StoreError):
        Store(bad)


def test_someone_elses_sqlite_database_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE mine (x)")
    conn.close()
    with pytest.raises(StoreError, match="not an edgewatch store"):
        Store(other)
    conn = sqlite3.connect(other)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not even WAL
    conn.close()


def test_a_directory_or_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(garbage)


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
            evidence="",
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
            evidence="",
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
    assert [m["stored"] for m in store.message("pi-1-1")] == [10]


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


def test_retention_deletes_old_history_but_not_open_alerts(store: Store) -> None:
    pipeline = Pipeline(store, PipelineSettings(detector="ewma"), now=T0)
    pipeline.ingest([readings("pi-1", range(lo, lo + 10)) for lo in range(1, 101, 10)], T0)
    with store.transaction():
        store.insert_alert(alert("old-open", "pi-1", start=T0))
        store.insert_alert(alert("old-closed", "pi-1", start=T0, state="closed"))
    counts = pipeline.prune(now=T0 + 55 + 86400, retention_s=86400)
    assert counts == {"readings": 50, "messages": 5, "dead_letter": 0, "alerts": 1}
    assert store.count_readings() == 50
    assert [r.seq for r in store.readings("pi-1", "temp")] == list(range(51, 101))
    assert [a.alert_id for a in store.list_alerts()] == ["old-open"]
    (epoch,) = store.device("pi-1").epochs
    assert epoch.gaps == () and epoch.missing == 0  # pruned history is not reported as loss


def test_readonly_store_answers_queries_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    with Store(path) as store:
        Pipeline(store, PipelineSettings(detector="ewma"), now=T0).ingest([readings("pi-1", range(1, 6))], T0)
        with store.transaction():
            store.insert_alert(alert("a1", "pi-1", start=T0))
    path.parent.chmod(0o555)  # not even the -shm file could be created by a writer here
    try:
        with Store(path, readonly=True) as store:
            assert store.count_readings() == 5
            assert [d.device for d in store.list_devices()] == ["pi-1"]
            with pytest.raises(StoreError):
                store.ack_alert("a1", now=T0)
    finally:
        path.parent.chmod(0o755)
    with pytest.raises(StoreError, match="no database"):
        Store(tmp_path / "missing.db", readonly=True)


def test_a_store_from_before_alert_reasons_migrates_and_its_alerts_read_without_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    before = MIGRATIONS.index(_v3_alert_reasons)
    for migration in MIGRATIONS[:before]:
        migration(sqlite_utils.Database(conn))
    old = alert("old1", "pi-1", start=T0)
    conn.execute(
        "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (old.alert_id, old.device, old.sensor, old.metric, old.kind, old.state, old.start, old.end,
         old.peak_score, old.value, old.expected_low, old.expected_high, old.severity, 0,
         old.detector, old.msg_id, old.opened_at, None, None, "", ""),
    )  # fmt: skip
    conn.execute(f"PRAGMA user_version = {before}")
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.get_alert("old1") == old  # '' and None: the dataclass defaults
        explained = dataclasses.replace(
            alert("new1", "pi-1", start=T0 + 10),
            anomaly_kind="spike",
            evidence="value 50 C, 30 typical steps above the level 1.5 C",
            opening_evidence="value 50 C, 30 typical steps above the level 1.5 C",
            peak_ts=T0 + 10,
        )
        with store.transaction():
            assert store.insert_alert(explained)
        assert store.get_alert("new1") == explained
        with store.transaction():
            assert store.close_alert(
                "new1", end=T0 + 20, closed_at=T0 + 21, peak_score=0.99, value=80.0, expected_low=1.0,
                expected_high=2.0, evidence="value 80 C, 52 typical steps above the level 1.5 C",
                peak_ts=T0 + 12,
            )  # fmt: skip
        closed = store.get_alert("new1")
        assert (closed.anomaly_kind, closed.opening_evidence) == ("spike", explained.opening_evidence)
        assert (closed.value, closed.peak_ts) == (80.0, T0 + 12)
        assert closed.evidence == "value 80 C, 52 typical steps above the level 1.5 C"
        assert [a.alert_id for a in store.list_alerts()] == ["new1", "old1"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
