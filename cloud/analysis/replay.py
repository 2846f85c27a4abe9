"""Rebuild detector state and alerts from stored history (the event-sourcing promise).

Every stored reading of the chosen streams goes, in timestamp order, through exactly the code
the aggregator uses: `make_detector(name).process` per reading and one `EpisodeTracker` per
stream, with the same deterministic alert ids. The result goes to a separate alert set (the
store's replay set, tagged with a run name) so a new detector can be compared with the live
one without touching it; `into_alerts=True` writes into the live `alerts` table instead, where
insert-or-ignore on the deterministic id means a replay never doubles an alert. The history and
both alert sets are the store's (`cloud.store.api.ReadModel`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.alerts.episodes import EpisodePolicy, EpisodeTracker, Transition, alert_id
from cloud.detect import make_detector
from cloud.store.api import REPLAY_SET, AlertRecord, HistoryRow, ReplayedAlert, Store
from devices.model import AlertKind, AlertState


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
    target: str = REPLAY_SET

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
        target="alerts" if into_alerts else REPLAY_SET,
    )
    policy = policy or EpisodePolicy()
    current: int | None = None
    tracker = EpisodeTracker(policy)
    detect = make_detector(detector)

    def emit(row: HistoryRow, t: Transition) -> None:
        dev, sensor, metric = row.device, row.sensor, row.metric
        episode = ReplayedEpisode(
            alert_id(dev, sensor, metric, AlertKind.ANOMALY, t.start),
            dev, sensor, metric, t.start, t.end, t.peak_score, t.value, t.expected_low, t.expected_high,
        )  # fmt: skip
        if report.episodes and report.episodes[-1].alert_id == episode.alert_id:
            report.episodes[-1] = episode  # the closing transition completes the open one
        else:
            report.episodes.append(episode)

    for row in store.history(device=device, since=since):
        ts, value = row.ts, row.value
        if row.series_id != current:
            current = row.series_id
            tracker = EpisodeTracker(policy)
            detect = make_detector(detector)
            report.streams += 1
        transition = tracker.observe(ts, value, detect.process(ts, value), msg_id=row.msg_id)
        if transition is not None:
            emit(row, transition)
        report.readings += 1
        if progress is not None and report.readings % 50_000 == 0:
            progress(report.readings)
    if not dry_run:
        report.written = _write(store, report, into_alerts, now)
    return report


def _write(store: Store, report: ReplayReport, into_alerts: bool, now: float) -> int:
    with store.transaction():
        if into_alerts:
            written = 0
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
            return written
        return store.save_replayed(
            [
                ReplayedAlert(
                    report.run, e.alert_id, e.device, e.sensor, e.metric, report.detector, e.start, e.end,
                    e.peak_score, e.value, e.expected_low, e.expected_high,
                )
                for e in report.episodes
            ],
            now,
        )  # fmt: skip


def replayed_alerts(store: Store, run: str) -> list[tuple[str, str, float, float | None]]:
    """(device, metric, start, end) of one replay run, for `edgewatch evaluate --db --replay`."""
    return [(a.device, a.metric, a.start, a.end) for a in store.replayed_alerts(run)]
