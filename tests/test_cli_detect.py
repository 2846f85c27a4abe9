"""`edgewatch detect` and `edgewatch evaluate`, through the real command line."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.analysis.evaluate import nab_sigmoid
from cloud.detect import make_detector
from cloud.ingest.pipeline import Inbound, Pipeline, PipelineSettings
from cloud.store.sqlite.store import SqliteStore
from devices import wire
from edgewatch.app import app
from simulators.faults import Label, write_labels

T0 = 1_704_067_200.0
runner = CliRunner()


def write_series(path: Path, n: int = 800, *, spike_at: int = 600, iso: bool = False) -> list[float]:
    rng = random.Random(3)
    values = [20.0 + math.sin(i / 50.0) + rng.gauss(0.0, 0.05) for i in range(n)]
    values[spike_at] += 5.0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "value", "note"])
        for i, value in enumerate(values):
            ts = T0 + 60.0 * i
            stamp = f"2024-01-01T{i // 60 % 24:02d}:{i % 60:02d}:00Z" if iso else f"{ts:.0f}"
            out.writerow([stamp, f"{value:.4f}", "x"])
    return values


def test_detect_writes_scores_and_alerts_through_the_aggregator_path(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    values = write_series(src)
    result = runner.invoke(app, ["detect", str(src), "--output", str(dst)])
    assert result.exit_code == 0, result.output
    assert "800 readings" in result.output and "1 alert episodes" in result.output
    rows = list(csv.DictReader(dst.open()))
    assert list(rows[0]) == ["timestamp", "value", "score", "alert"]
    assert len(rows) == 800
    assert [i for i, r in enumerate(rows) if r["alert"] == "1"] == [600]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    # exactly what make_detector + process says for the same readings
    det = make_detector("default")
    expected = [det.process(T0 + 60.0 * i, float(f"{v:.4f}")) for i, v in enumerate(values)]
    assert [float(r["score"]) for r in rows] == [round(e.score, 6) for e in expected]


def test_detect_json_summary_lists_the_episodes(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src, iso=True)
    result = runner.invoke(
        app, ["detect", str(src), "-o", str(dst), "--json", "--detector", "sensor", "--device", "d1"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["detector"] == "sensor" and summary["readings"] == 800
    [episode] = summary["episodes"]
    assert episode["device"] == "d1"
    # one anomalous reading; production ends the episode at the first normal one after it
    assert (episode["start_iso"], episode["end_iso"]) == ("2024-01-01T10:00:00Z", "2024-01-01T10:01:00Z")
    assert episode["kind"] == "spike" and "typical steps above the level" in episode["evidence"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ts,val\n1,2\n", "line 1: expected a header with 'timestamp' and 'value'"),
        ("", "line 1: expected a header"),
        ("timestamp,value\n1,2\n2,abc\n", "line 3: bad value 'abc'"),
        ("timestamp,value\n1,2\nsoon,3\n", "line 3: bad timestamp 'soon'"),
        ("timestamp,value\n1,2\n3\n", "line 3: expected 2 columns, got 1"),
    ],
)
def test_detect_input_errors_are_clear(tmp_path: Path, content: str, message: str) -> None:
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(content)
    result = runner.invoke(app, ["detect", str(src), "-o", str(dst)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not dst.exists() and not (tmp_path / "out.csv.part").exists()


def test_detect_refuses_missing_file_unknown_detector_and_overwriting_input(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    write_series(src, 50, spike_at=40)
    missing = runner.invoke(app, ["detect", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.csv")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    unknown = runner.invoke(app, ["detect", str(src), "-o", str(tmp_path / "o.csv"), "--detector", "x"])
    assert unknown.exit_code == 2 and "known: default" in unknown.output
    same = runner.invoke(app, ["detect", str(src), "-o", str(src)])
    assert same.exit_code == 1 and "must not be the input" in same.output
    assert src.read_text().startswith("timestamp,value,note")


def test_evaluate_prints_metrics_as_table_and_json(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    write_labels(labels, [Label("d", "t", "spike", 100.0, 160.0), Label("d", "t", "drift", 1e4, 2e4)])
    alerts = tmp_path / "alerts.csv"
    alerts.write_text("device,metric,start,end\nd,t,120,130\nd,t,50000,50060\n")
    table = runner.invoke(app, ["evaluate", "--labels", str(labels), "--alerts", str(alerts)])
    assert table.exit_code == 0, table.output
    assert "event recall" in table.output and "50.0%" in table.output
    assert "estimated" in table.output
    as_json = runner.invoke(
        app, ["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--json", "--stream-days", "2"]
    )
    metrics = json.loads(as_json.output)
    assert metrics["recall"] == 0.5 and metrics["false_alarms_per_stream_day"] == 0.5
    assert metrics["delay_mean_s"] == 20.0
    assert metrics["recall_by_kind"]["spike"]["recall"] == 1.0
    # NAB, standard: the episode at 120 is 2/3 of the way before the spike window's end
    # (y = -(160 - 120) / 60), the one at 50000 is 3 drift-window widths past it (cost 0.11),
    # the drift window is missed (cost 1): raw = s(-2/3) / s(-1) - 0.11 - 1 of null -2, perfect 2
    raw = nab_sigmoid(-2 / 3) / nab_sigmoid(-1.0) - 0.11 - 1.0
    nab = metrics["nab"]["standard"]
    assert nab["raw"] == pytest.approx(raw, abs=1e-6)
    assert nab["score"] == pytest.approx(100 * (raw + 2) / 4, abs=1e-3)
    assert (nab["windows"], nab["detected"], nab["false_positives"]) == (2, 1, 1)
    assert set(metrics["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert "NAB standard (per stream)" in table.output
    per_device = runner.invoke(
        app, ["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--json", "--per-device"]
    )
    assert json.loads(per_device.output)["nab_unit"] == "device"


def test_evaluate_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("device,metric,start,end\nd,t,oops,2\n")
    result = runner.invoke(app, ["evaluate", "--labels", str(labels), "--alerts", str(labels)])
    assert result.exit_code == 1
    assert "line 2: bad timestamp 'oops'" in result.output


def test_detect_then_evaluate_end_to_end_through_the_installed_command(tmp_path: Path) -> None:
    """The real `edgewatch` process: detect's JSON feeds evaluate, and river is never imported."""
    src, dst, summary = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "summary.json"
    write_series(src)
    detect = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewatch",
            "detect",
            str(src),
            "-o",
            str(dst),
            "--json",
            "--device",
            "d",
            "--metric",
            "t",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary.write_text(detect.stdout)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"device,metric,start,end\nd,t,{T0 + 36000:.0f},{T0 + 36060:.0f}\n")
    evaluate = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewatch",
            "evaluate",
            "--labels",
            str(labels),
            "--alerts",
            str(summary),
            "--json",
            "--stream-days",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    metrics = json.loads(evaluate.stdout)
    assert metrics["recall"] == 1.0 and metrics["false_alarms"] == 0
    code = (
        "import sys, cloud.analysis.cli, cloud.detect, cloud.analysis.evaluate, cloud.detect.sensor, "
        "cloud.analysis.files\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('river', 'numpy', 'rich')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_large_files_go_through_the_progress_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud.analysis.cli

    monkeypatch.setattr(cloud.analysis.cli, "PROGRESS_MIN_BYTES", 0)
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src)
    result = runner.invoke(app, ["detect", str(src), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    assert sum(1 for _ in dst.open()) == 801


def test_detect_opens_the_same_episodes_as_the_aggregator(tmp_path: Path) -> None:
    """`edgewatch detect` on a CSV and the aggregator's Pipeline (real SQLite store, the
    default detector and episode policy) fed the same readings as wire messages."""
    rng = random.Random(12)
    n = 1500
    values = [20.0 + math.sin(i / 80.0) + rng.gauss(0.0, 0.05) for i in range(n)]
    for i in (500, 501, 900):  # spikes (two readings in a row, then one)
        values[i] += 6.0
    for i in range(1100, 1160):  # a stuck sensor
        values[i] = values[1099]
    for i in range(1300, n):  # a level shift
        values[i] += 4.0
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    with src.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "value"])
        out.writerows((f"{T0 + 30.0 * i:.1f}", f"{v:.4f}") for i, v in enumerate(values))
    result = runner.invoke(app, ["detect", str(src), "-o", str(dst), "--json"])
    assert result.exit_code == 0, result.output
    detected = [e["start"] for e in json.loads(result.output)["episodes"]]

    with SqliteStore(tmp_path / "cloud.db") as store:
        pipeline = Pipeline(store, PipelineSettings(), now=T0)
        for first in range(0, n, 20):  # 20 readings a message, received as they are sent
            rows = [
                (i + 1, T0 + 30.0 * i, "s", "temp", float(f"{values[i]:.4f}"), "C")
                for i in range(first, min(n, first + 20))
            ]
            at = rows[-1][1]
            payload = wire.encode_readings("pi-1", "e1", rows, sent_at=at, msg_id=f"m{first}")
            pipeline.ingest([Inbound(wire.device_topic("pi-1", "telemetry"), payload, at)], at)
        stored = sorted(a.start for a in store.list_alerts(kind="anomaly", limit=1 << 30))
    assert len(detected) >= 3  # the faults are seen at all (else the comparison is empty)
    assert stored == detected
