"""Evaluation: episodes from verdicts, metrics against labels, and the file loaders."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cloud.alerts.episodes import EpisodePolicy, EpisodeTracker
from cloud.analysis.evaluate import (
    NAB_PROFILES,
    PRODUCTION_POLICY,
    Episode,
    EpisodeRecorder,
    NabProfile,
    Window,
    detect_episodes,
    episodes,
    evaluate,
    load_episodes,
    load_windows,
    metrics_table_rows,
    nab_score,
    nab_scores,
    nab_sigmoid,
    parse_timestamp,
    report,
)
from cloud.detect import Verdict, make_detector
from cloud.service.config import AggregatorConfig
from simulators.faults import Label, write_labels

ROOT = Path(__file__).resolve().parents[1]


def v(flag: bool) -> Verdict:
    return Verdict(0.9 if flag else 0.1, flag)


def test_episode_opens_on_anomaly_and_closes_after_n_normal() -> None:
    flags = [0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1]
    eps = episodes(
        ((float(t), 0.0, v(bool(f))) for t, f in enumerate(flags)),
        policy=EpisodePolicy(close_after=3, close_after_seconds=0),
        device="d",
        metric="m",
    )
    # the first closes at t=8 (3rd normal in a row); it ends where production says: t=6,
    # the first normal reading of that run; the second is still open at the end
    assert [(e.start, e.end, e.readings) for e in eps] == [(1.0, 6.0, 3), (9.0, 10.0, 2)]
    assert all(e.device == "d" and e.metric == "m" and e.peak_score == 0.9 for e in eps)


def test_the_recorder_runs_production_episode_machine_and_policy() -> None:
    """Same starts and ends as an EpisodeTracker with the aggregator's default policy."""
    defaults = AggregatorConfig.__dataclass_fields__
    assert (
        EpisodePolicy(defaults["close_after"].default, defaults["close_after_seconds"].default)
        == PRODUCTION_POLICY
    )
    flags = [0, 1, 0, 0, 0, 0, 1, 1, 0, 1] + [0] * 8 + [1, 0, 0]
    times = [60.0 * i for i in range(len(flags))]
    tracker = EpisodeTracker(PRODUCTION_POLICY)
    transitions = [tracker.observe(t, 0.0, v(bool(f))) for t, f in zip(times, flags, strict=True)]
    expected = [(x.start, x.end) for x in transitions if x is not None and x.end is not None]
    recorder = EpisodeRecorder()
    got = [e for t, f in zip(times, flags, strict=True) if (e := recorder.push(t, 0.0, v(bool(f))))]
    assert [(e.start, e.end) for e in got] == expected
    # 60 s sampling: 4 normal readings (240 s quiet) do not close it, nor does a single normal
    # one; at t=840, 300 s after the last anomalous reading (540), it closes, ending at 600
    assert expected == [(60.0, 600.0)]
    assert recorder.is_open
    last = recorder.finish()
    assert last is not None and (last.start, last.end, last.readings) == (1080.0, 1080.0, 1)
    assert recorder.finish() is None and not recorder.is_open


def test_detect_episodes_runs_the_detector_path() -> None:
    points = [(60.0 * i, 20.0 + 0.1 * ((i * 7919) % 11 - 5)) for i in range(600)]
    points[400] = (points[400][0], 40.0)
    eps = detect_episodes(make_detector("default"), points, device="d", metric="t")
    assert [(e.start, e.end) for e in eps] == [(24000.0, 24060.0)]
    assert eps[0].kind == "spike" and eps[0].evidence.startswith("value 40 {unit}, ")  # what opened it


def test_metrics_on_a_hand_made_case() -> None:
    labels = [
        Window("a", "t", 100.0, 200.0, "spike"),
        Window("a", "t", 1000.0, 2000.0, "drift"),
        Window("b", "t", 100.0, 200.0, "stuck"),
        Window("b", "t", 5000.0, 6000.0, "dropout"),
    ]
    alerts = [
        Episode("a", "t", 150.0, 160.0),  # detects the spike after 50 s
        Episode("a", "t", 90.0, 95.0),  # before the window: a false alarm
        Episode("a", "t", 2100.0, 2200.0),  # after the drift ends: counts only with tolerance
        Episode("b", "t", 5500.0, 5600.0),  # on a dropout: neither true nor false
        Episode("c", "t", 0.0, 1.0),  # a stream without labels: false alarm
    ]
    m = evaluate(labels, alerts, stream_days=4.0)
    assert (m.events, m.detected, m.true_episodes, m.false_alarms) == (3, 1, 1, 3)
    assert m.recall == pytest.approx(1 / 3)
    assert m.precision == pytest.approx(1 / 4)
    assert m.false_alarms_per_stream_day == pytest.approx(3 / 4)
    assert m.delays == (50.0,)
    assert m.by_kind == {"spike": (1, 1), "drift": (0, 1), "stuck": (0, 1)}
    tolerant = evaluate(labels, alerts, stream_days=4.0, tolerance=300.0)
    assert (tolerant.detected, tolerant.false_alarms) == (2, 2)
    assert tolerant.delays == (50.0, 1100.0)
    assert tolerant.delay_median == pytest.approx(575.0)


def test_nab_sigmoid_is_numentas() -> None:
    # 2 / (1 + e^(5y)) - 1: left edge y=-1 -> 0.98661, middle -> 0.84828, right edge -> 0
    assert nab_sigmoid(-1.0) == pytest.approx(0.986614, abs=1e-6)
    assert nab_sigmoid(-0.5) == pytest.approx(0.848284, abs=1e-6)
    assert nab_sigmoid(0.0) == 0.0
    assert nab_sigmoid(1.0) == pytest.approx(-0.986614, abs=1e-6)
    assert nab_sigmoid(3.0) == -1.0 == nab_sigmoid(10.0)
    assert [(p.name, p.tp, p.fp, p.fn) for p in NAB_PROFILES] == [
        ("standard", 1.0, 0.11, 1.0),
        ("reward_low_FP_rate", 1.0, 0.22, 1.0),
        ("reward_low_FN_rate", 1.0, 0.11, 2.0),
    ]


def test_nab_null_and_perfect_detectors_score_0_and_100() -> None:
    labels = [Window("a", "t", 100.0, 200.0), Window("a", "t", 500.0, 600.0), Window("b", "t", 0.0, 10.0)]
    for profile in NAB_PROFILES:
        null = nab_score(labels, [], profile)
        assert (null.raw, null.null, null.perfect) == (-profile.fn * 3, -profile.fn * 3, 3.0)
        assert null.score == 0.0
        perfect = nab_score(labels, [Episode(w.device, w.metric, w.start, w.end) for w in labels], profile)
        assert perfect.score == pytest.approx(100.0)
        assert (perfect.detected, perfect.false_positives) == (3, 0)


def test_nab_on_a_hand_computed_case() -> None:
    labels = [Window("a", "t", 100.0, 200.0), Window("a", "t", 1000.0, 1100.0)]
    alerts = [
        Episode("a", "t", 50.0, 60.0),  # before any window: -fp
        Episode("a", "t", 150.0, 151.0),  # window 1, halfway: y = -0.5
        Episode("a", "t", 190.0, 191.0),  # window 1 again: free (only the earliest counts)
        Episode("a", "t", 250.0, 251.0),  # 50 s after window 1 (width 100): y = 0.5
        Episode("a", "t", 900.0, 901.0),  # 700 s after: y = 7 -> sigmoid -1
        # window 2 is missed: -fn
    ]
    sig_half = 2 / (1 + math.exp(-2.5)) - 1  # 0.848284, at y = -0.5
    sig_past = 2 / (1 + math.exp(2.5)) - 1  # -0.848284, at y = +0.5
    max_tp = 2 / (1 + math.exp(-5)) - 1  # 0.986614
    standard = nab_score(labels, alerts)
    expected = -0.11 + sig_half / max_tp + 0.11 * sig_past - 0.11 - 1.0
    # = -0.11 + 0.859795 - 0.093311 - 0.11 - 1.0 = -0.453516
    assert standard.raw == pytest.approx(expected)
    assert standard.raw == pytest.approx(-0.4535, abs=1e-4)
    assert (standard.null, standard.perfect) == (-2.0, 2.0)
    assert standard.score == pytest.approx(100 * (expected + 2.0) / 4.0)  # 38.66
    assert (standard.windows, standard.detected, standard.false_positives) == (2, 1, 3)
    low_fn = nab_score(labels, alerts, NAB_PROFILES[2])
    assert low_fn.raw == pytest.approx(expected - 1.0)  # the miss costs 2
    assert low_fn.score == pytest.approx(100 * (expected - 1.0 + 4.0) / 6.0)
    low_fp = nab_score(labels, alerts, NAB_PROFILES[1])
    assert low_fp.raw == pytest.approx(-0.22 + sig_half / max_tp + 0.22 * sig_past - 0.22 - 1.0)


def test_nab_per_device_merges_streams_and_overlapping_windows() -> None:
    # SKAB-style: 60 s windows after two changepoints 30 s apart overlap -> one window [0, 90]
    labels = [Window("pump", "", 0.0, 60.0), Window("pump", "", 30.0, 90.0)]
    alerts = [
        Episode("pump", "pressure", 45.0, 50.0),  # y = -(90-45)/90 = -0.5
        Episode("pump", "current", 20.0, 21.0),  # another stream, earlier: this one counts
        Episode("pump", "flow", 180.0, 181.0),  # 90 s past a 90 s window: y = 1
    ]
    s = nab_score(labels, alerts, per_device=True)
    y = -(90.0 - 20.0) / 90.0
    assert s.windows == 1 and s.detected == 1 and s.false_positives == 1
    assert s.raw == pytest.approx(nab_sigmoid(y) / nab_sigmoid(-1.0) + 0.11 * nab_sigmoid(1.0))
    # per stream, the window labels have metric "": every alert is outside them
    per_stream = nab_score(labels, alerts)
    assert per_stream.detected == 0 and per_stream.false_positives == 3
    # windows that only touch stay two windows (SKAB: changepoints exactly 60 s apart)
    touching = [Window("pump", "", 0.0, 60.0), Window("pump", "", 60.0, 120.0)]
    both = nab_score(
        touching, [Episode("pump", "p", 0.0, 1.0), Episode("pump", "q", 60.0, 61.0)], per_device=True
    )
    assert (both.windows, both.detected, both.false_positives) == (2, 2, 0)
    assert both.score == pytest.approx(100.0)


def test_nab_ignores_detections_on_dont_care_windows() -> None:
    labels = [Window("a", "t", 0.0, 100.0, "spike"), Window("a", "t", 500.0, 600.0, "dropout")]
    s = nab_score(labels, [Episode("a", "t", 550.0, 560.0)])
    assert (s.windows, s.detected, s.false_positives, s.raw) == (1, 0, 0, -1.0)


def test_report_has_metrics_and_all_three_nab_profiles() -> None:
    labels = [Window("a", "t", 100.0, 200.0)]
    alerts = [Episode("a", "t", 100.0, 110.0)]
    r = report(labels, alerts, stream_days=1.0)
    assert r.metrics.detected == 1
    assert [s.score for s in r.nab] == pytest.approx([100.0, 100.0, 100.0])
    doc = r.to_dict()
    assert doc["nab"]["standard"]["score"] == 100.0  # type: ignore[index]
    assert doc["nab_unit"] == "stream"
    rows = dict(metrics_table_rows(r))
    assert rows["NAB standard (per stream)"] == "100.0"
    assert [s.profile for s in nab_scores(labels, [])] == [p.name for p in NAB_PROFILES]
    assert isinstance(NAB_PROFILES[0], NabProfile)


def test_an_episode_open_before_the_window_has_zero_delay() -> None:
    m = evaluate([Window("a", "t", 100.0, 200.0)], [Episode("a", "t", 50.0, 120.0)], stream_days=1)
    assert m.detected == 1 and m.delays == (0.0,) and m.false_alarms == 0


def test_empty_inputs_give_nan_not_errors() -> None:
    m = evaluate([], [])
    assert m.events == 0 and math.isnan(m.recall) and math.isnan(m.precision)
    assert math.isnan(m.false_alarms_per_stream_day)
    json.dumps(m.to_dict())  # NaN becomes null
    assert m.to_dict()["recall"] is None
    assert dict(metrics_table_rows(m))["event recall"] == "n/a"


def test_stream_days_are_estimated_when_not_given() -> None:
    labels = [Window("a", "t", 0.0, 100.0)]
    alerts = [Episode("b", "t", 86_000.0, 86_400.0)]
    assert evaluate(labels, alerts).stream_days == pytest.approx(2.0)


def test_load_labels_from_the_simulator_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    write_labels(path, [Label("d", "temperature", "spike", 10.0, 70.0)])
    assert load_windows(path) == [Window("d", "temperature", 10.0, 70.0, "spike")]


def test_load_windows_and_alerts_from_csv_with_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("device,metric,start,end\nd,t,2024-01-01T00:00:00Z,1704067260\n")
    assert load_windows(path) == [Window("d", "t", 1704067200.0, 1704067260.0, "")]
    alerts = tmp_path / "a.csv"
    alerts.write_text("Device,Metric,Start,End,peak_score\nd,t,1,2,0.7\n")
    assert load_episodes(alerts) == [Episode("d", "t", 1.0, 2.0, 0.7, 0)]


def test_load_episodes_from_detect_json(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    doc = {
        "detector": "default",
        "episodes": [
            {"device": "d", "metric": "t", "start": 5.0, "end": 6.0, "readings": 2, "peak_score": 0.8},
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    assert load_episodes(path) == [Episode("d", "t", 5.0, 6.0, 0.8, 2)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("device,metric,begin\nd,t,1\n", "line 1: expected a CSV header"),
        ("device,metric,start,end\nd,t,1,x\n", "line 2: bad timestamp 'x'"),
        ("device,metric,start,end\nd,t,5,1\n", "line 2: end 1.0 is before start 5.0"),
        ('{"device": "d", "start": 1}\n', "line 1: missing 'end'"),
        ('{"device": "d", "start": 1, "end": 2}\n{oops\n', "line 2: bad JSON"),
    ],
)
def test_loader_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_windows(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_episodes(tmp_path / "nope.jsonl")


def test_parse_timestamp() -> None:
    assert parse_timestamp(" 1700000000 ") == 1_700_000_000.0
    assert parse_timestamp("2024-01-01T01:00:00+01:00") == 1_704_067_200.0
    assert parse_timestamp("2024-01-01 00:00:00") == 1_704_067_200.0
    for bad in ("nan", "inf", "yesterday", ""):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_detectors", ROOT / "bench" / "eval_detectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_detectors", module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_default_beats_the_river_baselines_on_a_small_labelled_fleet() -> None:
    """A small, fixed-seed version of bench/eval_detectors.py (the full one is in bench/)."""
    bench = _bench()
    names = ("default", "hst", "gaussian")
    labels: list[Window] = []
    found: dict[str, list[Episode]] = {name: [] for name in names}
    devices, days = 4, 1.5
    for result in bench.run(99, devices, days, detectors=names, jobs=1):
        labels += result["labels"]
        for name in names:
            found[name] += result["episodes"][name]
    results = {
        name: evaluate(labels, found[name], stream_days=5 * devices * days, tolerance=1800.0)
        for name in names
    }
    best = results["default"]
    assert best.events >= 15
    for baseline in ("hst", "gaussian"):
        assert best.recall > results[baseline].recall, baseline
        assert best.false_alarms < results[baseline].false_alarms, baseline
    assert best.recall > 0.75
    assert best.false_alarms_per_stream_day < 1.0


def _eval_real() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_real", ROOT / "bench" / "eval_real.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_real", module)
    spec.loader.exec_module(module)
    return module


SKAB_HEADER = (
    "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;"
    "Voltage;Volume Flow RateRMS"
)


def write_skab_like(root: Path, *, rows: int = 400, start: int = 250, end: int = 300) -> None:
    """A SKAB-format run (one reading a second, 8 sensors) with one labelled level shift."""
    rng = random.Random(1)
    (root / "valve1").mkdir(parents=True)
    (root / "anomaly-free").mkdir()
    lines = [SKAB_HEADER + ";anomaly;changepoint"]
    free = [SKAB_HEADER]
    for i in range(rows):
        stamp = f"2020-03-09 10:{i // 60:02d}:{i % 60:02d}"
        shift = 5.0 if start <= i < end else 0.0
        values = [f"{10.0 * (k + 1) + rng.gauss(0, 0.1) + shift:.4f}" for k in range(8)]
        label = "1.0" if start <= i < end else "0.0"
        cp = "1.0" if i in (start, end - 1) else "0.0"
        lines.append(";".join([stamp, *values, label, cp]))
        if i < start:  # the anomaly-free run: the same testbed before the fault
            free.append(";".join([stamp, *values]))
    (root / "valve1" / "0.csv").write_text("\n".join(lines) + "\n")
    (root / "anomaly-free" / "anomaly-free.csv").write_text("\n".join(free) + "\n")


def test_skab_runs_load_as_one_device_with_changepoints_and_intervals(tmp_path: Path) -> None:
    write_skab_like(tmp_path)
    bench = _eval_real()
    [run] = bench.skab_runs(tmp_path)
    assert run.device == "valve1/0" and len(run.streams) == 8
    t0 = run.streams[0].points[0][0]
    assert [t - t0 for t in run.changepoints] == [250.0, 299.0]
    assert [(a - t0, b - t0) for a, b in run.intervals] == [(250.0, 299.0)]
    assert run.streams[7].metric == "Volume Flow RateRMS" and len(run.streams[7].points) == 400


def test_eval_real_quick_runs_every_set_and_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bench in --quick sizes (so it cannot rot): SKAB-format data, simulator, torture."""
    write_skab_like(tmp_path)
    bench = _eval_real()
    assert bench.main(["--quick", "--json", "--skab", str(tmp_path), "--detectors", "default,ewma"]) == 0
    doc = json.loads(capsys.readouterr().out)
    skab = doc["skab"]
    assert (skab["runs"], skab["windows_60s"], skab["intervals"]) == (1, 2, 1)
    shift = skab["default"]["window_60s"]
    assert shift["metrics"]["detected"] >= 1  # a 50-noise-sigma shift on all 8 sensors is seen
    assert set(shift["nab"]) == {p.name for p in NAB_PROFILES}
    assert shift["nab"]["standard"]["score"] > 0.0
    assert skab["default"]["anomaly_free_alerts"] == 0
    sim = doc["simulator"]["default"]
    assert sim["metrics"]["events"] > 0 and sim["metrics"]["recall"] > 0.5
    torture = doc["torture"]["default"]
    assert set(torture["alerts_per_stream_30d"]) == set(bench.TORTURE)
    assert torture["false_alarms_per_stream_day"] >= 0.0
    assert set(doc["torture"]) >= {"default", "ewma"}
    bench.main(["--quick", "--sets", "torture", "--detectors", "default"])  # the table, too
    assert "| flat_rare_steps |" in capsys.readouterr().out


def test_torture_streams_are_seeded_and_long() -> None:
    bench = _eval_real()
    for shape in bench.TORTURE:
        first = bench.torture_stream(shape, 7, 0, 30.0)
        assert first == bench.torture_stream(shape, 7, 0, 30.0)
        span = first.points[-1][0] - first.points[0][0]
        assert span >= 29.0 * 86_400.0, shape
        assert all(b[0] > a[0] for a, b in zip(first.points, first.points[1:], strict=False)), shape


def test_an_empty_label_file_is_no_events_not_an_error(tmp_path: Path) -> None:
    """A demo stopped before its first fault began leaves an empty label file."""
    empty = tmp_path / "labels.jsonl"
    empty.write_text("")
    assert load_windows(empty) == []
    assert evaluate(load_windows(empty), [], stream_days=1.0).events == 0
