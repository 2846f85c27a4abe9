"""The operator CLI's pure parts: time parsing, sparklines, thinning, reasons, the plot model and its PNG.

No database and no broker: records are built by hand, outputs are strings and bytes.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from cloud.ops import views
from cloud.ops.follow import format_alert
from cloud.store.api import AlertRecord, DeviceRecord, EpochCompleteness, StoredReading
from devices.model import AlertEvent, AlertKind, AlertState


def alert(**changes: object) -> AlertRecord:
    base: dict[str, object] = {
        "alert_id": "a" * 20, "device": "pi-1", "sensor": "sys", "metric": "temp", "kind": "anomaly",
        "state": "closed", "start": 1_700_000_000.0, "end": 1_700_000_060.0, "peak_score": 0.9,
        "value": 35.0, "expected_low": 19.0, "expected_high": 21.0, "severity": "warning",
        "late": False, "detector": "default", "msg_id": "m", "opened_at": 1_700_000_001.0,
        "closed_at": 1_700_000_070.0, "acked_at": None, "acked_by": "", "note": "",
    }  # fmt: skip
    base.update(changes)
    return AlertRecord(**base)  # type: ignore[arg-type]


def readings(start: float, n: int, spike_at: int | None = None) -> list[StoredReading]:
    return [
        StoredReading(
            start + i,
            20.0 + (15.0 if i == spike_at else 0.0),
            "pi-1",
            "sys",
            "temp",
            "C",
            "e1",
            i + 1,
            False,
            "m",
        )
        for i in range(n)
    ]


def test_parse_since_accepts_durations_and_iso_times() -> None:
    now = 1_000_000.0
    assert views.parse_since("90s", now) == now - 90
    assert views.parse_since("2d", now) == now - 2 * 86400
    assert views.parse_since("1w", now) == now - 604800
    assert views.parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert views.parse_since("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    assert views.parse_since("2023-11-14 22:13:20", now) == 1_700_000_000.0  # naive is UTC
    for bad in ("", "yesterday", "5 parsecs", "-1h"):
        with pytest.raises(ValueError, match="neither a duration"):
            views.parse_since(bad, now)


def test_alert_json_has_every_field_and_both_time_forms() -> None:
    data = views.alert_json(alert(acked_at=1_700_000_100.0, acked_by="ops"))
    assert set(AlertRecord.__slots__) <= data.keys()  # type: ignore[attr-defined]
    assert data["start_iso"] == "2023-11-14T22:13:20.000Z" and data["acked"] is True
    assert data["duration"] == 60.0 and data["acked_at_iso"] == "2023-11-14T22:15:00.000Z"


def test_sparkline_keeps_a_single_spike_and_shows_time_gaps() -> None:
    points = [(float(t), 20.0) for t in range(1000)]
    points[500] = (500.0, 99.0)
    del points[100:200]
    line = views.sparkline(points, 0.0, 1000.0, width=50)
    assert len(line) == 50 and line.count("█") == 1
    assert line[5:10] == "     "  # 100..200 had no readings
    assert views.sparkline([], 0, 10, width=5) == "     "
    assert views.sparkline([(1.0, 3.0), (2.0, 3.0)], 0, 4, width=4) == " ▄▄ "  # flat: mid-height


def test_thin_bounds_the_points_and_keeps_the_spike() -> None:
    rows = readings(0.0, 100_000, spike_at=54_321)
    thinned = views.thin(rows, max_points=1000)
    assert len(thinned) <= 1000 and max(r.value for r in thinned) == 35.0
    assert [r.ts for r in thinned] == sorted(r.ts for r in thinned)
    assert views.thin(rows[:10]) == rows[:10]


def test_plot_range_covers_the_episode_and_a_margin() -> None:
    assert views.plot_range(alert(), 600) == (1_700_000_000.0 - 600, 1_700_000_060.0 + 600)
    long = alert(end=1_700_003_600.0)
    assert views.plot_range(long, 60) == (1_700_000_000.0 - 3600, 1_700_003_600.0 + 3600)
    backwards = alert(end=1_700_000_000.0 - 1800)  # stored before the tracker kept end >= start
    assert views.plot_range(backwards, 60) == (1_700_000_000.0 - 60, 1_700_000_000.0 + 60)
    still_open = alert(state="open", end=None)
    assert views.plot_range(still_open, 60, last_ts=1_700_000_030.0) == (
        1_700_000_000.0 - 60,
        1_700_000_090.0,
    )


def test_plot_text_marks_the_window_where_it_is() -> None:
    rows = readings(1_700_000_000.0 - 300, 900, spike_at=330)
    a = alert(start=1_700_000_000.0 + 30, end=1_700_000_000.0 + 150)
    plot = views.alert_plot(a, rows, rows[0].ts, rows[-1].ts + 1)
    assert plot.window == (0.0, 2.0) and plot.xlabel.startswith("minutes from alert start")
    text = views.plot_text(plot, width=120, height=20, color=False)
    assert views.WINDOW_LABEL in text and f"{views.EXPECTED_LABEL} 19..21" in text
    top = next(line for line in text.splitlines() if line.lstrip().startswith("┌"))
    assert top.count("┬") == 2  # two distinct window edges
    coloured = views.plot_text(plot, width=120, height=20, color=True)
    assert "\x1b[" in coloured


T = 1_700_000_000.0
WHY = "value 35 C, 30 typical steps above the level 20 C"


def test_the_plot_model_shows_the_window_the_range_and_the_peak_where_they_were() -> None:
    rows = readings(T - 300, 900, spike_at=340)  # the spike reading is at T + 40
    a = alert(start=T + 30, end=T + 150, peak_ts=T + 40, value=35.0, anomaly_kind="spike", evidence=WHY)
    plot = views.alert_plot(a, rows, T - 300, T + 600)
    assert plot.xlabel.startswith("minutes from alert start") and plot.scale == 60.0
    assert plot.window == (0.0, 2.0)  # 120 s from the episode's start, in minutes
    assert plot.shade == plot.window  # wide enough already (more than 1.5% of 15 min)
    assert plot.expected == (19.0, 21.0)
    assert plot.peak == (pytest.approx(10 / 60), 35.0)
    assert (plot.start + plot.peak[0] * plot.scale) == pytest.approx(T + 40)
    assert plot.explanation == (f"peak: {WHY}",) and plot.title == "pi-1 sys/temp: spike (closed)"
    assert plot.ylabel == "temp (C)" and plot.unit == "C"
    lo, hi = plot.ylim
    assert (min(plot.ys), max(plot.ys)) == (20.0, 35.0)
    assert lo < 19.0 and hi > 35.0  # every reading and the whole range are in view


def test_the_plot_explains_the_peak_and_the_opening_when_they_differ() -> None:
    opened = "value 30 C, 20 typical steps above the level 20 C"
    a = alert(start=T, evidence=WHY, opening_evidence=opened, anomaly_kind="spike")
    plot = views.alert_plot(a, readings(T - 60, 120), T - 60, T + 60)
    assert plot.explanation == (f"peak: {WHY}", f"opened 22:13:20 UTC: {opened}")
    assert views.alert_plot(alert(), readings(T - 60, 120), T - 60, T + 60).explanation == ()


def test_the_plot_model_widens_a_one_reading_window_and_finds_an_older_alerts_peak() -> None:
    rows = readings(T - 3000, 6000, spike_at=3000)
    a = alert(start=T, end=T, value=35.0)  # stored before peak_ts: found by its value
    plot = views.alert_plot(a, rows, T - 3000, T + 3000)
    assert plot.window == (0.0, 0.0) and plot.peak == (0.0, 35.0)
    assert plot.shade == pytest.approx((-0.75, 0.75))  # 1.5% of 100 minutes, centred
    assert views.alert_plot(alert(start=T, end=T, value=99.0), rows, T - 3000, T + 3000).peak is None


def test_an_expected_range_far_from_the_readings_does_not_flatten_them() -> None:
    """The issue's demo power alert: expected 807..906.5 W while the stream read about 0 W."""
    ys = [0.0] * 50 + [-486.0] + [0.0] * 50
    lo, hi = views.view_limits(ys, (807.0, 906.5))
    assert lo < -486.0 and 0.0 < hi < 807.0  # the readings fill the view; the plot says where
    assert views.view_limits(ys, (-100.0, 0.0)) == views.view_limits(ys, None)  # inside: no change


def test_plot_png_is_a_valid_image_of_the_requested_size() -> None:
    import numpy as np
    from matplotlib import image  # the test decodes with matplotlib's own reader

    rows = readings(T - 300, 900, spike_at=340)
    a = alert(start=T + 30, end=T + 150, peak_ts=T + 40, anomaly_kind="spike", evidence=WHY)
    plot = views.alert_plot(a, rows, rows[0].ts, rows[-1].ts + 1)
    for width, height in ((640, 320), (1200, 600)):
        data = views.plot_png(plot, width=width, height=height)
        pixels = image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (height, width)
        rgb = np.round(pixels[:, :, :3].reshape(-1, 3) * 255)
        assert len(np.unique(rgb, axis=0)) > 50  # a drawn chart, not a blank canvas
        for colour in (views.SERIES_COLOUR, views.WINDOW_COLOUR):  # the series and the window's readings
            target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
            assert np.abs(rgb - target).max(axis=1).min() <= 8, colour  # drawn (antialiased) somewhere


def test_why_is_the_reason_in_one_line_and_never_silent_about_a_value() -> None:
    assert views.why(alert(anomaly_kind="level_shift", evidence=WHY)) == f"level shift: {WHY}"
    assert views.why(alert(opening_evidence=WHY)) == WHY  # an older checkpoint lost the peak's
    assert views.why(alert(kind="silent", detector="will")).startswith("its last will arrived")
    assert views.why(alert()) == ""  # stored before alerts said why
    table = views.alerts_table([alert(anomaly_kind="spike", evidence=WHY)], now=T + 200)
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert "why" in text and "spike: value 35 C" in text
    data = views.alert_json(alert(anomaly_kind="spike", evidence=WHY, peak_ts=T + 40))
    assert (data["anomaly_kind"], data["evidence"], data["why"]) == ("spike", WHY, f"spike: {WHY}")
    assert data["peak_ts_iso"] == "2023-11-14T22:14:00.000Z"


def test_alert_details_print_the_reason_whole() -> None:
    long = WHY + "; " + "and a much longer tail " * 6
    opened = "value 30 C, 20 typical steps above the level 20 C"
    grid = views.alert_details(alert(anomaly_kind="spike", evidence=long, opening_evidence=opened), T)
    console = Console(width=400, record=True)
    console.print(grid)
    text = console.export_text()
    assert long.strip() in text and opened in text and "expected at peak" in text


def test_follow_lines_say_why() -> None:
    event = AlertEvent(
        "0123456789abcdef0123", "pi-9", "temp", AlertKind.ANOMALY, AlertState.OPEN, T, None, 0.9,
        35.0, 19.0, 21.0, anomaly_kind="spike", evidence="value 35 C [raw], above 21 C",
    )  # fmt: skip
    line = format_alert(event)
    assert "[yellow]spike[/]: value 35 C \\[raw], above 21 C" in line  # rich markup escaped
    assert " expected 19..21" not in line  # the reason says it in units; no bare duplicate
    older = format_alert(AlertEvent("a", "pi-9", "temp", AlertKind.ANOMALY, AlertState.OPEN, T, None, 0.9,
                                    35.0, 19.0, 21.0))  # fmt: skip
    assert "value 35 expected 19..21" in older


def test_device_json_and_completeness() -> None:
    epochs = (
        EpochCompleteness("pi-1", "e1", 1, 100, 90, 5, 5, 1.0, 2.0, ((10, 14),)),
        EpochCompleteness("pi-1", "e2", 1, 100, 100, 0, 0, 3.0, 4.0),
    )
    record = DeviceRecord(
        "pi-1", 1.0, 4.0, True, "heartbeat", 4.0, "0.2.0", "e2", {"backlog": 7.0, "dropped": 1.0},
        20, 190, 2, epochs,
    )  # fmt: skip
    data = views.device_json(record, now=10.0, open_kinds={"silent"})
    assert data["status"] == "silent" and data["completeness"] == pytest.approx(195 / 200)
    assert (data["missing"], data["received"], data["rejected"], data["backlog"]) == (5, 190, 5, 7.0)
    assert data["epochs"][0]["gaps"] == [[10, 14]] and data["last_seen_ago"] == 6.0
    assert views.format_gaps([(i, i) for i in range(10)], limit=3) == "0, 1, 2, +7 more"


def test_the_cli_module_imports_nothing_heavy() -> None:
    heavy = ("rich", "plotext", "sqlite_utils", "cloud.store.sqlite.store", "cloud.ops.views", "matplotlib")
    code = f"import sys, edgewatch.app\nprint([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_only_the_png_loads_matplotlib() -> None:
    code = "import sys, cloud.ops.views, cloud.ops.follow\nprint('matplotlib' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
