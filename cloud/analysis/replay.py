"""Rebuild detector state and alerts from stored history (the event-sourcing promise).

Every stored reading of the chosen streams goes, in timestamp order, through exactly the code
the aggregator uses: `make_detector(name).process` per reading and one `EpisodeTracker` per
stream, with the same deterministic alert ids. The result goes to a separate alert set (the
`replay_alerts` table, tagged with a run name) so a new detector can be compared with the live
one without touching it; `into_alerts=True` writes into the live `alerts` table instead, where
insert-or-ignore on the deterministic id means a replay never doubles an alert.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from cloud.alerts.episodes import EpisodePolicy, EpisodeTracker, Transition, alert_id
from cloud.detect import make_detector
from cloud.errors import StoreError
from cloud.store.sqlite.store import AlertRecord, Store
from devices.model import AlertKind, AlertState

REPLAY_TABLE: Final = "replay_alerts"


@dataclass(frozen=True, slots=True)
class ReplayedEpisode:
    alert_id: str
    device: str
    sensor: str
    metric: str
    start: float
    end: float | None
    peak_score: float
    value: float
    expected_low: float | None
    expected_high: float | None


@dataclass(slots=True)
class ReplayReport:
    run: str
    detector: str
    streams: int = 0
    readings: int = 0
    episodes: list[ReplayedEpisode] = field(default_factory=list)
    written: int = 0  # new rows in the target alert set (0 for a dry run)
    target: str = REPLAY_TABLE

    def to_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "detector": self.detector,
            "streams": self.streams,
            "readings": self.readings,
            "episodes": len(self.episodes),
            "written": self.written,
            "target": self.target,
            "alerts": [
                {"alert_id": e.alert_id, "device": e.device, "sensor": e.sensor, "metric": e.metric,
                 "start": e.start, "end": e.end, "peak_score": e.peak_score, "value": e.value}
                for e in self.episodes
            ],
        }  # fmt: skip


def _rows(
    store: Store, device: str | None, since: float | None
) -> Iterator[tuple[int, str, str, str, float, float, str]]:
    """(series_id, device, sensor, metric, ts, value, msg_id) ordered by stream, then time."""
    sql = (
        "SELECT r.series_id, s.device, s.sensor, s.metric, r.ts, r.value, coalesce(m.msg_id, '') "
        "FROM readings r JOIN series s ON s.id = r.series_id LEFT JOIN messages m ON m.id = r.message_id "
        "WHERE (? IS NULL OR s.device = ?) AND r.ts >= ? ORDER BY r.series_id, r.ts, r.id"
    )
    try:
        yield from store.db.execute(sql, (device, device, since if since is not None else 0.0))
    except sqlite3.Error as exc:
        raise StoreError(f"reading history from {store.path} failed: {exc}") from exc


def _ensure_replay_table(store: Store) -> None:
    store.db.execute(
        f"CREATE TABLE IF NOT EXISTS {REPLAY_TABLE} ("
        "run TEXT NOT NULL, alert_id TEXT NOT NULL, device TEXT NOT NULL, sensor TEXT NOT NULL, "
        "metric TEXT NOT NULL, detector TEXT NOT NULL, start REAL NOT NULL, end REAL, "
        "peak_score REAL NOT NULL, value REAL, expected_low REAL, expected_high REAL, "
        "created_at REAL NOT NULL, PRIMARY KEY (run, alert_id))"
    )


def replay(
    store: Store,
    *,
    detector: str = "default",
    device: str | None = None,
    since: float | None = None,
    dry_run: bool = False,
    into_alerts: bool = False,
    run: str | None = None,
    policy: EpisodePolicy | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-run stored readings through `detector`; see the module docstring for where alerts go."""
    now = time.time()
    report = ReplayReport(
        run=run or f"{detector}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}",
        detector=detector,
        target="alerts" if into_alerts else REPLAY_TABLE,
    )
    policy = policy or EpisodePolicy()
    current: int | None = None
    tracker = EpisodeTracker(policy)
    detect = make_detector(detector)

    def emit(row: tuple[int, str, str, str, float, float, str], t: Transition) -> None:
        _, dev, sensor, metric, *_ = row
        episode = ReplayedEpisode(
            alert_id(dev, sensor, metric, AlertKind.ANOMALY, t.start),
            dev, sensor, metric, t.start, t.end, t.peak_score, t.value, t.expected_low, t.expected_high,
        )  # fmt: skip
        if report.episodes and report.episodes[-1].alert_id == episode.alert_id:
            report.episodes[-1] = episode  # the closing transition completes the open one
        else:
            report.episodes.append(episode)

    for row in _rows(store, device, since):
        series_id, _, _, _, ts, value, msg_id = row
        if series_id != current:
            current = series_id
            tracker = EpisodeTracker(policy)
            detect = make_detector(detector)
            report.streams += 1
        transition = tracker.observe(ts, value, detect.process(ts, value), msg_id=msg_id)
        if transition is not None:
            emit(row, transition)
        report.readings += 1
        if progress is not None and report.readings % 50_000 == 0:
            progress(report.readings)
    if not dry_run:
        report.written = _write(store, report, into_alerts, now)
    return report


def _write(store: Store, report: ReplayReport, into_alerts: bool, now: float) -> int:
    written = 0
    try:
        with store.transaction():
            if into_alerts:
                for e in report.episodes:
                    state = AlertState.OPEN if e.end is None else AlertState.CLOSED
                    written += store.insert_alert(
                        AlertRecord(
                            e.alert_id, e.device, e.sensor, e.metric, str(AlertKind.ANOMALY), str(state),
                            e.start, e.end, e.peak_score, e.value, e.expected_low, e.expected_high,
                            "warning", False, report.detector, "", now, None if e.end is None else now,
                            None, "", f"replay {report.run}",
                        )
                    )  # fmt: skip
            else:
                _ensure_replay_table(store)
                for e in report.episodes:
                    cur = store.db.execute(
                        f"INSERT OR IGNORE INTO {REPLAY_TABLE} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                        (report.run, e.alert_id, e.device, e.sensor, e.metric, report.detector, e.start,
                         e.end, e.peak_score, e.value, e.expected_low, e.expected_high, now),
                    )  # fmt: skip
                    written += cur.rowcount
    except sqlite3.Error as exc:
        raise StoreError(f"writing replayed alerts to {store.path} failed: {exc}") from exc
    return written


def replayed_alerts(store: Store, run: str) -> list[tuple[str, str, float, float | None]]:
    """(device, metric, start, end) of one replay run, for `edgewatch evaluate --db --replay`."""
    try:
        return [
            (str(d), str(m), float(s), None if e is None else float(e))
            for d, m, s, e in store.db.execute(
                f"SELECT device, metric, start, end FROM {REPLAY_TABLE} WHERE run = ? ORDER BY start",  # noqa: S608
                (run,),
            )
        ]
    except sqlite3.Error as exc:
        raise StoreError(f"no replay run {run!r} in {store.path}: {exc}") from exc
