"""How good are the alerts? Event recall, precision, false alarms per stream-day, delay.

Ground truth is a set of labelled windows (the simulators' JSON-lines label file, or any CSV with
`device,metric,start,end`); alerts are episodes (`device,metric,start,end`). A label is detected
when an episode of the same stream overlaps `[start, end + tolerance]`; its delay is how long
after `start` the first such episode opened (0 if one was already open). An episode that
overlaps no label is a false alarm. Labels of kinds a value detector cannot see (a dropout has no
values) are "don't care": they are not events, and episodes on them are neither true nor false.

Everything here is a pure function of its inputs, plus two small file loaders.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cloud.detect.base import StreamDetector, Verdict

DAY = 86_400.0
IGNORED_KINDS: frozenset[str] = frozenset({"dropout"})


@dataclass(frozen=True, slots=True)
class Window:
    """A labelled anomaly: the stream, its kind when known, and `[start, end]` (epoch seconds)."""

    device: str
    metric: str
    start: float
    end: float
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Episode:
    """An alert episode: consecutive anomalous verdicts of one stream, `[start, end]`."""

    device: str
    metric: str
    start: float
    end: float
    peak_score: float = 0.0
    readings: int = 0


@dataclass(frozen=True, slots=True)
class Metrics:
    events: int
    detected: int
    episodes: int
    true_episodes: int
    false_alarms: int
    stream_days: float
    delays: tuple[float, ...] = ()
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (detected, events)

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else math.nan

    @property
    def precision(self) -> float:
        judged = self.true_episodes + self.false_alarms
        return self.true_episodes / judged if judged else math.nan

    @property
    def false_alarms_per_stream_day(self) -> float:
        return self.false_alarms / self.stream_days if self.stream_days > 0 else math.nan

    @property
    def delay_mean(self) -> float:
        return statistics.fmean(self.delays) if self.delays else math.nan

    @property
    def delay_median(self) -> float:
        return statistics.median(self.delays) if self.delays else math.nan

    def to_dict(self) -> dict[str, object]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "events": self.events,
            "detected": self.detected,
            "recall": clean(self.recall),
            "episodes": self.episodes,
            "true_episodes": self.true_episodes,
            "false_alarms": self.false_alarms,
            "precision": clean(self.precision),
            "stream_days": round(self.stream_days, 6),
            "false_alarms_per_stream_day": clean(self.false_alarms_per_stream_day),
            "delay_mean_s": clean(self.delay_mean),
            "delay_median_s": clean(self.delay_median),
            "recall_by_kind": {
                k: {"detected": d, "events": n, "recall": clean(d / n if n else math.nan)}
                for k, (d, n) in sorted(self.by_kind.items())
            },
        }


def evaluate(
    labels: Iterable[Window],
    alerts: Iterable[Episode],
    *,
    stream_days: float | None = None,
    tolerance: float = 0.0,
    ignore_kinds: Iterable[str] = IGNORED_KINDS,
) -> Metrics:
    """Score alert episodes against labelled windows.

    `stream_days` is the observed time summed over streams (needed for the false-alarm rate);
    without it, it is estimated as (streams seen in labels or alerts) x (overall time span).
    `tolerance` (seconds) lets an episode that opens shortly after a window's end still count
    for it: the detector noticing the recovery from a fault is not a false alarm.

    >>> w = [Window("d", "t", 100.0, 200.0, "spike")]
    >>> m = evaluate(w, [Episode("d", "t", 150.0, 160.0), Episode("d", "t", 900.0, 901.0)],
    ...              stream_days=1.0)
    >>> m.recall, m.precision, m.false_alarms_per_stream_day, m.delay_mean
    (1.0, 0.5, 1.0, 50.0)
    """
    ignored = frozenset(ignore_kinds)
    label_list = list(labels)
    alert_list = list(alerts)
    by_stream: dict[tuple[str, str], list[Window]] = defaultdict(list)
    for w in label_list:
        by_stream[(w.device, w.metric)].append(w)
    alerts_by_stream: dict[tuple[str, str], list[Episode]] = defaultdict(list)
    for e in alert_list:
        alerts_by_stream[(e.device, e.metric)].append(e)

    events = detected = true_eps = false_eps = 0
    delays: list[float] = []
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in by_stream.keys() | alerts_by_stream.keys():
        windows = by_stream.get(key, [])
        eps = sorted(alerts_by_stream.get(key, []), key=lambda e: e.start)
        for w in windows:
            if w.kind in ignored:
                continue
            events += 1
            kinds[w.kind][1] += 1
            hits = [e for e in eps if e.start <= w.end + tolerance and e.end >= w.start]
            if hits:
                detected += 1
                kinds[w.kind][0] += 1
                delays.append(max(0.0, hits[0].start - w.start))
        for e in eps:
            matched = [w for w in windows if e.start <= w.end + tolerance and e.end >= w.start]
            if not matched:
                false_eps += 1
            elif any(w.kind not in ignored for w in matched):
                true_eps += 1
    if stream_days is None:
        stream_days = _estimate_stream_days(label_list, alert_list)
    return Metrics(
        events=events,
        detected=detected,
        episodes=len(alert_list),
        true_episodes=true_eps,
        false_alarms=false_eps,
        stream_days=stream_days,
        delays=tuple(delays),
        by_kind={k: (v[0], v[1]) for k, v in kinds.items()},
    )


def _estimate_stream_days(labels: Sequence[Window], alerts: Sequence[Episode]) -> float:
    spans = [(w.start, w.end) for w in labels] + [(e.start, e.end) for e in alerts]
    if not spans:
        return 0.0
    streams = {(w.device, w.metric) for w in labels} | {(e.device, e.metric) for e in alerts}
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    return len(streams) * span / DAY


class EpisodeGrouper:
    """Groups one stream's verdicts into episodes, incrementally (an alert state machine).

    An episode opens on an anomalous verdict and closes once `close_after` normal verdicts
    in a row have followed; it spans its first to its last anomalous reading.

    >>> g = EpisodeGrouper(close_after=2)
    >>> flags = [0, 1, 1, 0, 1, 0, 0, 0, 1]
    >>> closed = [g.push(float(t), Verdict(0.9 if f else 0.1, bool(f))) for t, f in enumerate(flags)]
    >>> [(e.start, e.end, e.readings) for e in closed if e] + [(e.start, e.end) for e in [g.finish()] if e]
    [(1.0, 4.0, 3), (8.0, 8.0)]
    """

    __slots__ = ("_end", "_n", "_normal", "_peak", "_start", "close_after", "device", "metric")

    def __init__(self, *, close_after: int = 10, device: str = "", metric: str = "") -> None:
        if close_after < 1:
            raise ValueError("close_after must be at least 1")
        self.close_after = close_after
        self.device = device
        self.metric = metric
        self._start: float | None = None
        self._end = 0.0
        self._n = 0
        self._peak = 0.0
        self._normal = 0

    @property
    def is_open(self) -> bool:
        return self._start is not None

    def push(self, ts: float, verdict: Verdict) -> Episode | None:
        """Feed one verdict; returns the episode it closed, if any."""
        if verdict.anomalous:
            if self._start is None:
                self._start, self._n, self._peak = ts, 0, 0.0
            self._end = ts
            self._n += 1
            self._peak = max(self._peak, verdict.score)
            self._normal = 0
            return None
        if self._start is None:
            return None
        self._normal += 1
        if self._normal >= self.close_after:
            return self.finish()
        return None

    def finish(self) -> Episode | None:
        """Close the open episode (end of stream), if any."""
        if self._start is None:
            return None
        ep = Episode(self.device, self.metric, self._start, self._end, self._peak, self._n)
        self._start = None
        self._normal = 0
        return ep


def episodes(
    points: Iterable[tuple[float, Verdict]],
    *,
    close_after: int = 10,
    device: str = "",
    metric: str = "",
) -> list[Episode]:
    """Group a stream's (ts, verdict) pairs into alert episodes (see `EpisodeGrouper`)."""
    grouper = EpisodeGrouper(close_after=close_after, device=device, metric=metric)
    out = [ep for ts, v in points if (ep := grouper.push(ts, v)) is not None]
    last = grouper.finish()
    if last is not None:
        out.append(last)
    return out


def detect_episodes(
    detector: StreamDetector,
    stream: Iterable[tuple[float, float]],
    *,
    close_after: int = 10,
    device: str = "",
    metric: str = "",
) -> list[Episode]:
    """Run `detector.process` over a stream of (ts, value) and group its alerts into episodes."""
    process = detector.process
    return episodes(
        ((ts, process(ts, value)) for ts, value in stream),
        close_after=close_after,
        device=device,
        metric=metric,
    )


# -- loading ----------------------------------------------------------------------------------


def parse_timestamp(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO-8601 (naive times are UTC).

    >>> parse_timestamp("1700000000.5"), parse_timestamp("2023-11-14T22:13:20Z")
    (1700000000.5, 1700000000.0)
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"bad timestamp {text!r} (expected ISO-8601 or epoch seconds)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"bad timestamp {text!r}")
    return value


def _time(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"bad timestamp {raw!r}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise ValueError(f"bad timestamp {raw!r}")
        return float(raw)
    if isinstance(raw, str):
        return parse_timestamp(raw)
    raise ValueError(f"bad timestamp {raw!r}")


def _records(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """(line, record) from JSON lines, a JSON document with "episodes", or a CSV with a header."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    stripped = text.lstrip()
    if not stripped:  # e.g. a demo stopped before its first fault began: no labels, no episodes
        return
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("episodes"), list):
            for i, rec in enumerate(doc["episodes"], start=1):
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}: episode {i}: not an object")
                yield 0, rec
            return
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: bad JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {lineno}: not a JSON object")
            yield lineno, rec
        return
    reader = csv.DictReader(text.splitlines())
    fields = {f.strip().lower() for f in reader.fieldnames or []}
    if not {"start", "end"} <= fields:
        raise ValueError(f"{path}: line 1: expected a CSV header with at least start,end columns")
    for row in reader:
        yield reader.line_num, {k.strip().lower(): v for k, v in row.items() if k is not None}


def _load(path: Path) -> Iterator[tuple[str, str, float, float, dict[str, object]]]:
    for lineno, rec in _records(path):
        where = f"{path}: line {lineno}" if lineno else f"{path}"
        try:
            start, end = _time(rec["start"]), _time(rec["end"])
        except KeyError as exc:
            raise ValueError(f"{where}: missing {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if end < start:
            raise ValueError(f"{where}: end {end} is before start {start}")
        yield str(rec.get("device") or ""), str(rec.get("metric") or ""), start, end, rec


def load_windows(path: str | Path) -> list[Window]:
    """Labelled windows from a label JSON-lines file or a `device,metric,start,end[,kind]` CSV."""
    return [
        Window(device, metric, start, end, str(rec.get("kind") or ""))
        for device, metric, start, end, rec in _load(Path(path))
    ]


def load_episodes(path: str | Path) -> list[Episode]:
    """Alert episodes from JSON lines, `edgewatch detect --json` output, or a CSV."""
    out = []
    for device, metric, start, end, rec in _load(Path(path)):
        try:
            peak = float(str(rec.get("peak_score") or 0.0))
            readings = int(str(rec.get("readings") or 0))
        except ValueError:
            peak, readings = 0.0, 0
        out.append(Episode(device, metric, start, end, peak, readings))
    return out


def metrics_table_rows(metrics: Metrics) -> list[tuple[str, str]]:
    """(name, formatted value) pairs for printing."""

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"

    def secs(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.0f} s"

    rows = [
        ("events", str(metrics.events)),
        ("detected", str(metrics.detected)),
        ("event recall", pct(metrics.recall)),
        ("alert episodes", str(metrics.episodes)),
        ("precision", pct(metrics.precision)),
        ("false alarms", str(metrics.false_alarms)),
        ("stream-days", f"{metrics.stream_days:.2f}"),
        (
            "false alarms / stream-day",
            "n/a"
            if math.isnan(metrics.false_alarms_per_stream_day)
            else f"{metrics.false_alarms_per_stream_day:.3f}",
        ),
        ("detection delay (mean)", secs(metrics.delay_mean)),
        ("detection delay (median)", secs(metrics.delay_median)),
    ]
    rows += [
        (f"recall: {kind}", f"{pct(d / n if n else math.nan)} ({d}/{n})")
        for kind, (d, n) in sorted(metrics.by_kind.items())
    ]
    return rows


__all__ = [
    "IGNORED_KINDS",
    "Episode",
    "EpisodeGrouper",
    "Metrics",
    "Window",
    "detect_episodes",
    "episodes",
    "evaluate",
    "load_episodes",
    "load_windows",
    "metrics_table_rows",
    "parse_timestamp",
]
