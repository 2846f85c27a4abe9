"""How good are the alerts? Event recall, precision, false alarms per stream-day, delay, NAB.

Ground truth is a set of labelled windows (the simulators' JSON-lines label file, or any CSV with
`device,metric,start,end`); alerts are episodes (`device,metric,start,end`). A label is detected
when an episode of the same stream overlaps `[start, end + tolerance]`; its delay is how long
after `start` the first such episode opened (0 if one was already open). An episode that
overlaps no label is a false alarm. Labels of kinds a value detector cannot see (a dropout has no
values) are "don't care": they are not events, and episodes on them are neither true nor false.

`nab_score` is the NAB-style score (Lavin & Ahmad 2015) of where episodes open, per stream or
per device. Episodes come from production's own episode machine (`EpisodeRecorder` runs
`cloud.alerts.episodes.EpisodeTracker` with the aggregator's `EpisodePolicy`), so the figures
describe the alerts people get.

Everything here is a pure function of its inputs, plus two small file loaders.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cloud.alerts.episodes import EpisodePolicy, EpisodeTracker, Phase
from cloud.detect.base import StreamDetector, Verdict
from devices.model import AlertState

DAY = 86_400.0
PRODUCTION_POLICY: Final = EpisodePolicy()
"""The aggregator's default episode policy: the one every evaluation and bench runs."""
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
    kind: str = ""  # what the opening verdict said it saw (cloud.detect.base.ANOMALY_KINDS)
    evidence: str = ""  # ... and why, with "{unit}" for the stream's unit


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


# -- NAB-style scoring ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NabProfile:
    """Weights of one NAB application profile (numenta/NAB `config/profiles.json`)."""

    name: str
    tp: float
    fp: float
    fn: float


NAB_PROFILES: Final = (
    NabProfile("standard", 1.0, 0.11, 1.0),
    NabProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    NabProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


def nab_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: 2 / (1 + e^(5 y)) - 1 at relative position y.

    y = -1 is a window's left edge (0.987), 0 its right edge (0), y > 0 after it (towards -1);
    from y >= 3 on it is -1 (numenta/NAB `nab/sweeper.py`, `scaledSigmoid`).

    >>> round(nab_sigmoid(-1.0), 5), nab_sigmoid(0.0), round(nab_sigmoid(-0.5), 5), nab_sigmoid(3.0)
    (0.98661, 0.0, 0.84828, -1.0)
    """
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


@dataclass(frozen=True, slots=True)
class NabScore:
    """A NAB-style score: the raw sum, and where it sits between the null and a perfect detector."""

    profile: str
    raw: float
    null: float  # raw score of a detector that never alerts: -fn per window
    perfect: float  # raw score of one detection at the left edge of every window: +tp per window
    windows: int
    detected: int
    false_positives: int

    @property
    def score(self) -> float:
        """100 (raw - null) / (perfect - null): 0 for the null detector, 100 for a perfect one."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else math.nan

    def to_dict(self) -> dict[str, object]:
        score = self.score
        return {
            "profile": self.profile,
            "score": None if math.isnan(score) else round(score, 4),
            "raw": round(self.raw, 6),
            "null": self.null,
            "perfect": self.perfect,
            "windows": self.windows,
            "detected": self.detected,
            "false_positives": self.false_positives,
        }


def nab_score(
    labels: Iterable[Window],
    alerts: Iterable[Episode],
    profile: NabProfile = NAB_PROFILES[0],
    *,
    per_device: bool = False,
    ignore_kinds: Iterable[str] = IGNORED_KINDS,
) -> NabScore:
    """Score where alert episodes OPEN against labelled windows, the way NAB does (Lavin & Ahmad
    2015, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark").

    Per stream (or per device with `per_device`: a detection is any of its streams opening an
    episode), windows that overlap are merged. Only the earliest detection in a window counts:
    +tp * sigmoid(y) / sigmoid(-1), y = -(end - t) / (end - start) in [-1, 0], so a detection at
    the window's start earns tp and one at its end 0. Other detections in the window are free.
    A detection outside every window costs fp * sigmoid(y) with y = (t - end) / width of the
    window before it (less right after a window, where a recovery is often seen), or fp if no
    window precedes it. A window without a detection costs fn. NAB's index positions become
    time here (our streams are irregular); its probationary period is left out, since no
    detector here alerts before it has calibrated. Windows of an ignored kind (a dropout has
    no values to see) are removed, and detections inside them are neither rewarded nor charged.

    >>> w = [Window("d", "t", 100.0, 200.0)]
    >>> s = nab_score(w, [Episode("d", "t", 150.0, 151.0), Episode("d", "t", 900.0, 901.0)])
    >>> round(s.raw, 4), s.null, s.perfect, round(s.score, 2)  # 0.8483/0.9866 - 0.11
    (0.7498, -1.0, 1.0, 87.49)
    """
    ignored = frozenset(ignore_kinds)
    max_tp = nab_sigmoid(-1.0)
    spans: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    blind: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for w in labels:
        key = (w.device, "" if per_device else w.metric)
        (blind if w.kind in ignored else spans)[key].append((w.start, w.end))
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in alerts:
        key = (e.device, "" if per_device else e.metric)
        if not any(a <= e.start <= b for a, b in blind.get(key, ())):
            starts[key].append(e.start)
    raw = 0.0
    n_windows = detected = false_positives = 0
    for key in spans.keys() | starts.keys():
        windows = _merged(spans.get(key, []))
        n_windows += len(windows)
        lefts = [a for a, _ in windows]
        hit = [False] * len(windows)
        for t in sorted(starts.get(key, [])):
            i = bisect.bisect_right(lefts, t) - 1  # the last window starting at or before t
            if i >= 0 and t <= windows[i][1]:  # inside it: only the earliest detection counts
                if not hit[i]:
                    hit[i] = True
                    a, b = windows[i]
                    raw += profile.tp * nab_sigmoid(-(b - t) / (b - a) if b > a else -1.0) / max_tp
                continue
            false_positives += 1
            if i < 0:  # before any window
                raw -= profile.fp
            else:  # after window i: cheaper the closer it is
                a, b = windows[i]
                raw += profile.fp * nab_sigmoid((t - b) / (b - a) if b > a else 3.0)
        missed = hit.count(False)
        detected += len(windows) - missed
        raw -= profile.fn * missed
    return NabScore(
        profile.name,
        raw,
        -profile.fn * n_windows,
        profile.tp * n_windows,
        n_windows,
        detected,
        false_positives,
    )


def nab_scores(
    labels: Iterable[Window],
    alerts: Iterable[Episode],
    *,
    per_device: bool = False,
    ignore_kinds: Iterable[str] = IGNORED_KINDS,
) -> list[NabScore]:
    """`nab_score` under each of NAB's three profiles."""
    label_list, alert_list, ignored = list(labels), list(alerts), frozenset(ignore_kinds)
    return [
        nab_score(label_list, alert_list, p, per_device=per_device, ignore_kinds=ignored)
        for p in NAB_PROFILES
    ]


@dataclass(frozen=True, slots=True)
class Report:
    """What `edgewatch evaluate` prints: event metrics and the NAB-style scores."""

    metrics: Metrics
    nab: tuple[NabScore, ...]
    nab_per_device: bool = False

    def to_dict(self) -> dict[str, object]:
        return self.metrics.to_dict() | {
            "nab": {s.profile: s.to_dict() for s in self.nab},
            "nab_unit": "device" if self.nab_per_device else "stream",
        }


def report(
    labels: Iterable[Window],
    alerts: Iterable[Episode],
    *,
    stream_days: float | None = None,
    tolerance: float = 0.0,
    ignore_kinds: Iterable[str] = IGNORED_KINDS,
    nab_per_device: bool = False,
) -> Report:
    """`evaluate` and `nab_scores` of the same labels and alerts."""
    label_list, alert_list, ignored = list(labels), list(alerts), frozenset(ignore_kinds)
    metrics = evaluate(
        label_list, alert_list, stream_days=stream_days, tolerance=tolerance, ignore_kinds=ignored
    )
    nab = nab_scores(label_list, alert_list, per_device=nab_per_device, ignore_kinds=ignored)
    return Report(metrics, tuple(nab), nab_per_device)


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted spans with overlapping ones joined (spans that only touch stay apart)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _estimate_stream_days(labels: Sequence[Window], alerts: Sequence[Episode]) -> float:
    spans = [(w.start, w.end) for w in labels] + [(e.start, e.end) for e in alerts]
    if not spans:
        return 0.0
    streams = {(w.device, w.metric) for w in labels} | {(e.device, e.metric) for e in alerts}
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    return len(streams) * span / DAY


class EpisodeRecorder:
    """Production's episode machine over one stream, recording each episode it closes.

    The aggregator's `cloud.alerts.episodes.EpisodeTracker` with its `EpisodePolicy` decides
    when an episode opens and closes (so every figure here describes production alerting);
    this only counts the anomalous readings and turns transitions into `Episode`s. An
    episode ends where the tracker says it did (the first normal reading of the run that
    closed it); one still open at the end of the stream ends at its last anomalous reading.

    >>> r = EpisodeRecorder(EpisodePolicy(close_after=2, close_after_seconds=0))
    >>> flags = [0, 1, 1, 0, 1, 0, 0, 0, 1]
    >>> closed = [r.push(float(t), 0.0, Verdict(0.9 if f else 0.1, bool(f))) for t, f in enumerate(flags)]
    >>> [(e.start, e.end, e.readings) for e in closed if e] + [(e.start, e.end) for e in [r.finish()] if e]
    [(1.0, 5.0, 3), (8.0, 8.0)]
    """

    __slots__ = ("_evidence", "_kind", "_n", "device", "metric", "policy", "tracker")

    def __init__(
        self, policy: EpisodePolicy = PRODUCTION_POLICY, *, device: str = "", metric: str = ""
    ) -> None:
        self.policy = policy
        self.device = device
        self.metric = metric
        self.tracker = EpisodeTracker(policy)
        self._n = 0
        self._kind = self._evidence = ""

    @property
    def is_open(self) -> bool:
        return self.tracker.phase is Phase.OPEN

    def push(self, ts: float, value: float, verdict: Verdict) -> Episode | None:
        """Feed one scored reading (in stream order); returns the episode it closed, if any."""
        transition = self.tracker.observe(ts, value, verdict)
        if verdict.anomalous:
            self._n += 1
        if transition is None:
            return None
        if transition.state is AlertState.OPEN:
            self._kind, self._evidence = verdict.kind, verdict.evidence
            return None
        end = ts if transition.end is None else transition.end
        return self._episode(transition.start, end, transition.peak_score)

    def _episode(self, start: float, end: float, peak: float) -> Episode:
        ep = Episode(self.device, self.metric, start, end, peak, self._n, self._kind, self._evidence)
        self._n = 0
        self._kind = self._evidence = ""
        return ep

    def finish(self) -> Episode | None:
        """The episode still open at the end of the stream, if any (and start afresh)."""
        tracker = self.tracker
        if tracker.phase is not Phase.OPEN:
            return None
        self.tracker = EpisodeTracker(self.policy)
        return self._episode(tracker.start, tracker.last_anomalous, tracker.peak_score)


def episodes(
    points: Iterable[tuple[float, float, Verdict]],
    *,
    policy: EpisodePolicy = PRODUCTION_POLICY,
    device: str = "",
    metric: str = "",
) -> list[Episode]:
    """Group a stream's (ts, value, verdict) triples into alert episodes (see `EpisodeRecorder`)."""
    recorder = EpisodeRecorder(policy, device=device, metric=metric)
    out = [ep for ts, value, v in points if (ep := recorder.push(ts, value, v)) is not None]
    last = recorder.finish()
    if last is not None:
        out.append(last)
    return out


def detect_episodes(
    detector: StreamDetector,
    stream: Iterable[tuple[float, float]],
    *,
    policy: EpisodePolicy = PRODUCTION_POLICY,
    device: str = "",
    metric: str = "",
) -> list[Episode]:
    """Run `detector.process` over a stream of (ts, value) and group its alerts into episodes."""
    process = detector.process
    return episodes(
        ((ts, value, process(ts, value)) for ts, value in stream),
        policy=policy,
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


def metrics_table_rows(result: Metrics | Report) -> list[tuple[str, str]]:
    """(name, formatted value) pairs for printing (with the NAB scores of a `Report`)."""
    metrics = result.metrics if isinstance(result, Report) else result

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
    if isinstance(result, Report):
        unit = "device" if result.nab_per_device else "stream"
        rows += [
            (f"NAB {s.profile} (per {unit})", "n/a" if math.isnan(s.score) else f"{s.score:.1f}")
            for s in result.nab
        ]
    return rows


__all__ = [
    "IGNORED_KINDS",
    "NAB_PROFILES",
    "PRODUCTION_POLICY",
    "Episode",
    "EpisodeRecorder",
    "Metrics",
    "NabProfile",
    "NabScore",
    "Report",
    "Window",
    "detect_episodes",
    "episodes",
    "evaluate",
    "load_episodes",
    "load_windows",
    "metrics_table_rows",
    "nab_score",
    "nab_scores",
    "nab_sigmoid",
    "parse_timestamp",
    "report",
]
