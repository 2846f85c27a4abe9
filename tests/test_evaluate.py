"""Evaluation: episodes from verdicts, metrics against labels, and the file loaders."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cloud.analysis.evaluate import (
    Episode,
    EpisodeGrouper,
    Window,
    detect_episodes,
    episodes,
    evaluate,
    load_episodes,
    load_windows,
    metrics_table_rows,
    parse_timestamp,
)
from cloud.detect import Verdict, make_detector
from simulators.faults import Label, write_labels

ROOT = Path(__file__).resolve().parents[1]


def v(flag: bool) -> Verdict:
    return Verdict(0.9 if flag else 0.1, flag)


def test_episode_opens_on_anomaly_and_closes_after_n_normal() -> None:
    flags = [0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1]
    eps = episodes(
        ((float(t), v(bool(f))) for t, f in enumerate(flags)), close_after=3, device="d", metric="m"
    )
    assert [(e.start, e.end, e.readings) for e in eps] == [(1.0, 5.0, 3), (9.0, 10.0, 2)]
    assert all(e.device == "d" and e.metric == "m" and e.peak_score == 0.9 for e in eps)


def test_grouper_is_incremental() -> None:
    g = EpisodeGrouper(close_after=1)
    assert g.push(0.0, v(False)) is None
    opened = g.push(1.0, v(True))
    assert opened is None
    assert g.is_open
    closed = g.push(2.0, v(False))
    assert closed == Episode("", "", 1.0, 1.0, 0.9, 1)
    assert g.finish() is None  # nothing left open
    with pytest.raises(ValueError):
        EpisodeGrouper(close_after=0)


def test_detect_episodes_runs_the_detector_path() -> None:
    points = [(60.0 * i, 20.0 + 0.1 * ((i * 7919) % 11 - 5)) for i in range(600)]
    points[400] = (points[400][0], 40.0)
    eps = detect_episodes(make_detector("default"), points, device="d", metric="t")
    assert [(e.start, e.end) for e in eps] == [(24000.0, 24000.0)]


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


def test_an_empty_label_file_is_no_events_not_an_error(tmp_path: Path) -> None:
    """A demo stopped before its first fault began leaves an empty label file."""
    empty = tmp_path / "labels.jsonl"
    empty.write_text("")
    assert load_windows(empty) == []
    assert evaluate(load_windows(empty), [], stream_days=1.0).events == 0
