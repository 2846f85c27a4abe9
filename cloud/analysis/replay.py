"""Rebuild detector state and alerts from stored history (the event-sourcing promise).

Stored readings go through the aggregator's own code (`Pipeline.detect_history`): in the order
they were first processed, live ones scored and learned, backfilled (late) ones only scored
against the live state and tracked apart, with the same deterministic alert ids. So a replay of
the history the aggregator saw gives exactly its alerts, late ones included. The result goes to
a separate alert set (the store's replay set, tagged with a run name) so a new detector can be
compared with the live one without touching it; `into_alerts=True` writes into the live alerts
instead, where insert-or-ignore on the deterministic id means a replay never doubles one. The
history and both alert sets are the store's (`cloud.store.api.ReadModel`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cloud.ingest.pipeline import Pipeline, PipelineSettings
from cloud.store.api import REPLAY_SET, AlertRecord, ReplayedAlert, ReplayRow, Store
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
    late: bool = False  # raised by backfilled readings, as the aggregator raised it
    anomaly_kind: str = ""  # why, as the aggregator says it (cloud.store.api.AlertRecord)
    evidence: str = ""
    opening_evidence: str = ""
    peak_ts: float | None = None


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
                 "start": e.start, "end": e.end, "peak_score": e.peak_score, "value": e.value,
                 "late": e.late}
                for e in self.episodes
            ],
        }  # fmt: skip


def _history(
    store: Store, device: str | None, since: float | None, progress: Callable[[int], None] | None
) -> Iterator[ReplayRow]:
    """Stored readings in the order they were first processed, optionally one device's from `since`."""
    for n, row in enumerate(store.history(device=device, since=since), start=1):
        if progress is not None and n % 50_000 == 0:
            progress(n)
        yield row


def replay(
    store: Store,
    *,
    detector: str = "default",
    device: str | None = None,
    since: float | None = None,
    dry_run: bool = False,
    into_alerts: bool = False,
    run: str | None = None,
    settings: PipelineSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-run stored readings through `detector`; see the module docstring for where alerts go.

    `settings` are the aggregator's pipeline settings (episode policy, late threshold); the
    defaults are the aggregator's defaults.
    """
    now = time.time()
    report = ReplayReport(
        run=run or f"{detector}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}",
        detector=detector,
        target="alerts" if into_alerts else REPLAY_SET,
    )
    base = settings or PipelineSettings()
    pipeline = Pipeline(
        store,
        PipelineSettings(detector, base.episodes, base.silence, base.late_threshold, base.max_future),
        now=now,
        recover=False,
    )
    streams: set[int] = set()

    def counted(rows: Iterator[ReplayRow]) -> Iterator[ReplayRow]:
        for row in rows:
            streams.add(row.series_id)
            yield row

    report.readings, events = pipeline.detect_history(counted(_history(store, device, since, progress)), now)
    report.streams = len(streams)
    by_id: dict[str, int] = {}
    for e in events:
        episode = ReplayedEpisode(
            e.alert_id, e.device, e.sensor, e.metric, e.start, e.end, e.peak_score,
            e.value if e.value is not None else float("nan"), e.expected_low, e.expected_high, e.late,
            e.anomaly_kind, e.evidence, e.opening_evidence, e.peak_ts,
        )  # fmt: skip
        if e.alert_id in by_id:  # the closing transition completes the open one
            report.episodes[by_id[e.alert_id]] = episode
        else:
            by_id[e.alert_id] = len(report.episodes)
            report.episodes.append(episode)
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
                        "warning", e.late, report.detector, "", now, None if e.end is None else now,
                        None, "", f"replay {report.run}", e.anomaly_kind, e.evidence, e.opening_evidence,
                        e.peak_ts,
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
