"""The operator CLI's pure parts: time parsing, sparklines, thinning, the plot and the PNG writer.

No database and no broker: records are built by hand, outputs are strings and bytes.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import pytest

from cloud.ops import png, views
from cloud.store.api import AlertRecord, DeviceRecord, EpochCompleteness, StoredReading


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


def test_plot_png_is_a_valid_image_with_the_window_painted() -> None:
    rows = readings(1_700_000_000.0 - 300, 900, spike_at=330)
    plot = views.alert_plot(
        alert(start=1_700_000_030.0, end=1_700_000_150.0), rows, rows[0].ts, rows[-1].ts + 1
    )
    data = views.plot_png(plot, width=640, height=320)
    assert data.startswith(png.PNG_SIGNATURE)
    (length,) = struct.unpack(">I", data[8:12])
    assert data[12:16] == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (640, 320)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (3 * width + 1)
    assert bytes(views._WINDOW) in raw and bytes(views._SERIES) in raw


def test_canvas_clips_and_draws_text() -> None:
    c = png.Canvas(20, 10, (0, 0, 0))
    c.fill_rect(-5, -5, 100, 2, (255, 255, 255))  # clipped, not an error
    c.line(-10, 5, 30, 5, (1, 2, 3))
    c.text(0, 3, "A", (9, 9, 9))
    assert c.pixel(19, 0) == (255, 255, 255) and c.pixel(19, 5) == (1, 2, 3)
    assert c.pixel(2, 3) == (9, 9, 9)  # the apex of the A
    assert png.text_width("abc") == 17 and png.text_width("abc", 2) == 34
    with pytest.raises(ValueError):
        png.Canvas(0, 10)


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
    heavy = ("rich", "plotext", "sqlite_utils", "cloud.store.sqlite.store", "cloud.ops.views")
    code = f"import sys, edgewatch.app\nprint([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
