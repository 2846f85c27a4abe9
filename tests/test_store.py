"""The store on real SQLite files: schema and migrations, errors, and the operator's queries."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.errors import SchemaTooNew, StoreError
from cloud.ingest.pipeline import Inbound, Pipeline, PipelineSettings
from cloud.store.api import AlertRecord
from cloud.store.sqlite.store import SCHEMA_VERSION
from cloud.store.sqlite.store import SqliteStore as Store
from devices import wire

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


def test_a_version_1_store_migrates_keeping_history_windows_and_the_checkpoint(tmp_path: Path) -> None:
    """v1 joined messages to readings by a rowid range and kept a global reading-id watermark;
    v2 keys both by message: an old file keeps answering and resumes where it was."""
    path = tmp_path / "cloud.db"
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    from cloud.store.sqlite.store import MIGRATIONS

    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO sources(id, device, epoch, received) VALUES (1, 'pi-1', 'e1', 4)")
    conn.execute(
        "INSERT INTO series(id, device, sensor, metric, unit) VALUES (1, 'pi-1', 'sys', 'temp', 'C')"
    )
    conn.execute("INSERT INTO devices(device, messages, readings) VALUES ('pi-1', 2, 4)")
    for mid, lo, msg in ((1, 1, "m-1"), (2, 3, "m-2")):  # two messages of two readings each
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, 'pi-1', 'e1', 'telemetry', ?, ?, 2, 2, 0, 0, ?, ?, ?, ?)",
            (mid, msg, T0, T0, lo, lo + 1, T0 + lo, T0 + lo + 1),
        )
        for seq in (lo, lo + 1):
            conn.execute("INSERT INTO readings VALUES (?, 1, ?, 1, ?, 20.0, ?, 0)", (seq, seq, T0 + seq, mid))
    conn.execute("INSERT INTO detector_state VALUES (1, 'ewma', x'00', '{}', ?)", (T0,))
    conn.execute("INSERT INTO checkpoint VALUES ('watermark', 2)")  # processed through reading 2
    conn.close()
    with Store(path) as store:
        got = store.readings("pi-1", "temp")
        assert [(r.seq, r.msg_id) for r in got] == [(1, "m-1"), (2, "m-1"), (3, "m-2"), (4, "m-2")]
        watermark, (state,) = store.load_checkpoint()
        assert (watermark, state.watermark) == (1, 1)  # message 1 was processed, message 2 was not
        assert [(r.message_id, r.ts) for r in store.readings_after(watermark)] == [(2, T0 + 3), (2, T0 + 4)]
        assert store.message_totals().stored == 4


def test_a_sqlite_url_names_the_same_file_as_its_path(tmp_path: Path) -> None:
    from cloud.store.api import open_store

    path = tmp_path / "cloud.db"
    with open_store(f"sqlite:///{path}", readonly=False, create=True) as store, store.transaction():
        store.insert_alert(alert("a1", "pi-1", start=T0))  # sqlite:////abs/path
    with open_store(path, readonly=True) as store:
        assert [a.alert_id for a in store.list_alerts()] == ["a1"]


def test_an_unreachable_postgresql_is_a_store_error_that_shows_no_password() -> None:
    from cloud.store.api import open_store
    from tests.mosquitto import free_port

    url = f"postgresql://edgewatch:s3cret@127.0.0.1:{free_port()}/edgewatch"  # nothing listens there
    with pytest.raises(StoreError) as caught:
        open_store(url, readonly=True)
    assert "s3cret" not in str(caught.value) and "edgewatch@127.0.0.1" in str(caught.value)


def test_a_store_from_before_alert_reasons_migrates_and_its_alerts_read_without_them(tmp_path: Path) -> None:
    import sqlite_utils

    from cloud.store.sqlite.store import MIGRATIONS, _v4_alert_reasons

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    before = MIGRATIONS.index(_v4_alert_reasons)
    for migration in MIGRATIONS[:before]:
        migration(sqlite_utils.Database(conn))
    conn.execute(f"PRAGMA user_version = {before}")
    old = alert("old1", "pi-1", start=T0)
    conn.execute(
        "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (old.alert_id, old.device, old.sensor, old.metric, old.kind, old.state, old.start, old.end,
         old.peak_score, old.value, old.expected_low, old.expected_high, old.severity, 0,
         old.detector, old.msg_id, old.opened_at, None, None, "", ""),
    )  # fmt: skip
    conn.close()
    with Store(path) as store:
        assert store.get_alert("old1") == old  # '' and None: the record's defaults
        assert (store.get_alert("old1").anomaly_kind, store.get_alert("old1").peak_ts) == ("", None)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == before + 1
    conn.close()
