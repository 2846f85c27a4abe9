"""What the operator sees: tables, plots, sparklines and the JSON that scripts read.

Pure functions from store records (and `now`) to renderables, strings or plain dicts, so each
one is unit-testable without a database or a terminal. The commands in cloud.ops.cli only
fetch records, call one of these, and print. Timestamps are shown in UTC, like
`alerts follow`; JSON carries every timestamp twice, as unix seconds and as ISO-8601.
"""

from __future__ import annotations

import base64
import io
import math
import re
import statistics
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cloud.store.api import (
    AlertRecord,
    DeadLetterRecord,
    DeviceRecord,
    EpochCompleteness,
    StoredReading,
)

ALERT_TIME_FIELDS: Final = ("start", "end", "opened_at", "closed_at", "acked_at", "peak_ts")
DEVICE_TIME_FIELDS: Final = ("first_seen", "last_seen", "status_ts")
SPARK_CHARS: Final = "▁▂▃▄▅▆▇█"
WINDOW_LABEL: Final = "anomaly window"
EXPECTED_LABEL: Final = "expected range"
PEAK_LABEL: Final = "peak"
WHY_WIDTH: Final = 40  # characters of the reason in `alerts list`; `show` prints it whole
_SILENT_WHY: Final = {
    "timeout": "nothing heard past its usual interval",
    "will": "its last will arrived: the connection dropped",
}
SHORT_ID: Final = 12  # characters of an alert id shown in tables; `show` and `ack` take a prefix
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*$")


# ---------------------------------------------------------------------------------------------
# times


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '2d', '1w' -> seconds; ValueError otherwise.

    >>> parse_duration("30m"), parse_duration("1.5h")
    (1800.0, 5400.0)
    """
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 1h, 2d or 1w")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, now: float) -> float:
    """A duration back from `now` ('1h') or an ISO-8601 time (naive means UTC) -> unix seconds.

    >>> parse_since("1h", 7200.0), parse_since("1970-01-01T01:00:00", 0.0)
    (3600.0, 3600.0)
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 1h, 2d, 1w) nor an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_size(text: str) -> tuple[int, int]:
    """'1200x600' -> (1200, 600) pixels; ValueError outside 200..8000 x 150..8000.

    >>> parse_size("800X400")
    (800, 400)
    """
    width, _, height = text.strip().lower().partition("x")
    if width.isdigit() and height.isdigit() and 200 <= int(width) <= 8000 and 150 <= int(height) <= 8000:
        return int(width), int(height)
    raise ValueError(f"{text!r} is not a size like 1200x600 (200..8000 x 150..8000 pixels)")


def iso(ts: float | None) -> str | None:
    """ISO-8601 in UTC with milliseconds, or None.

    >>> iso(0.25)
    '1970-01-01T00:00:00.250Z'
    """
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(ts: float | None) -> str:
    """A compact UTC time for tables (the same form `alerts follow` prints)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float) -> str:
    """'42s ago', '5m ago', '3h ago', '2d ago'; 'never' for None.

    >>> ago(100.0, 142.0), ago(0.0, 7300.0)
    ('42s ago', '2h ago')
    """
    if ts is None:
        return "never"
    delta = now - ts
    if delta < 0:
        return "in the future"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= seconds:
            return f"{int(delta // seconds)}{unit} ago"
    return f"{int(delta)}s ago"


def _with_iso(data: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = value
        if key in names:
            out[f"{key}_iso"] = iso(value)
    return out


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


# ---------------------------------------------------------------------------------------------
# alerts


def alert_json(alert: AlertRecord) -> dict[str, Any]:
    """Every field of the alert, each timestamp also as ISO-8601, plus `acked`, `duration` and
    `why` (the one-line reason `alerts list` shortens)."""
    data = _with_iso(asdict(alert), ALERT_TIME_FIELDS)
    data["acked"] = alert.acked_at is not None
    data["duration"] = None if alert.end is None else alert.end - alert.start
    data["why"] = why(alert)
    return data


def why(alert: AlertRecord) -> str:
    """The reason in one line: "spike: value 239 W, 24 typical steps above the level 8.4 W".

    The peak reading's evidence (the reading whose value and expected range the alert shows);
    the opening reading's if an older checkpoint lost the peak's; for a silent alert, what
    made it silent; "" for an alert stored before alerts said why.
    """
    if alert.kind == "silent":
        return _SILENT_WHY.get(alert.detector, "")
    evidence = alert.evidence or alert.opening_evidence
    if alert.anomaly_kind and evidence:
        return f"{alert.anomaly_kind.replace('_', ' ')}: {evidence}"
    return evidence or alert.anomaly_kind.replace("_", " ")


def _state_text(alert: AlertRecord) -> Text:
    if alert.state == "open":
        return Text("OPEN", style="bold red")
    return Text("closed", style="green")


def _expected(alert: AlertRecord) -> str:
    if alert.expected_low is None or alert.expected_high is None:
        return "-"
    return f"{alert.expected_low:.4g}..{alert.expected_high:.4g}"


def _ack_text(alert: AlertRecord) -> Text:
    if alert.acked_at is None:
        return Text("")
    who = f" {alert.acked_by}" if alert.acked_by else ""
    return Text(f"✓ acked{who}", style="cyan")


def _cut(text: str, width: int) -> str:
    """At most `width` characters, the last one an ellipsis if anything was cut.

    >>> _cut("spike: value 239 W", 12), _cut("dip", 12)
    ('spike: valu…', 'dip')
    """
    return text if len(text) <= width else text[: width - 1] + "…"


def alerts_table(alerts: Sequence[AlertRecord], now: float) -> Table:
    """Newest first as given; open alerts in bold red, acknowledged ones marked."""
    table = Table(title=f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}", title_justify="left")
    for name, justify in (
        ("id", "left"),
        ("start (UTC)", "left"),
        ("device", "left"),
        ("metric", "left"),
        ("kind", "left"),
        ("state", "left"),
        ("sev", "left"),
        ("score", "right"),
        ("value", "right"),
        ("expected", "right"),
        ("why", "left"),
        ("ack", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for a in alerts:
        reason = why(a)
        metric = f"{a.sensor}/{a.metric}" if a.sensor and a.metric else (a.metric or "-")
        kind = f"{a.kind} late" if a.late else a.kind
        table.add_row(
            a.alert_id[:SHORT_ID],
            f"{clock(a.start)} ({ago(a.start, now)})",
            a.device,
            metric,
            kind,
            _state_text(a),
            a.severity,
            f"{a.peak_score:.2f}",
            _num(a.value),
            _expected(a),
            _cut(reason, WHY_WIDTH) or "-",
            _ack_text(a),
            style="bold" if a.state == "open" and a.acked_at is None else None,
        )
    return table


def alert_details(alert: AlertRecord, now: float) -> Table:
    """Key/value grid of one alert for `alerts show`."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    state = _state_text(alert)
    if alert.acked_at is not None:
        state.append("  ")
        state.append_text(_ack_text(alert))
    duration = "-" if alert.end is None else f"{alert.end - alert.start:.1f}s"
    rows: list[tuple[str, str | Text]] = [
        ("alert", alert.alert_id),
        ("state", state),
        ("device", alert.device),
        ("series", f"{alert.sensor}/{alert.metric}" if alert.sensor else (alert.metric or "-")),
        ("kind", f"{alert.kind}{' (late: backfilled readings)' if alert.late else ''}"),
        ("severity", alert.severity),
        ("start", f"{clock(alert.start)} UTC ({ago(alert.start, now)})"),
        ("end", f"{clock(alert.end)} UTC" if alert.end is not None else "still open"),
        ("duration", duration),
        ("why", why(alert) or "-"),
    ]
    if alert.opening_evidence and alert.opening_evidence != alert.evidence:
        rows.append(("when it opened", alert.opening_evidence))
    rows += [
        ("peak score", f"{alert.peak_score:.3f}"),
        ("peak at", f"{clock(alert.peak_ts)} UTC" if alert.peak_ts is not None else "-"),
        ("value at peak", _num(alert.value, 6)),
        ("expected at peak", _expected(alert)),
        ("detector", alert.detector or "-"),
        ("msg_id", alert.msg_id or "-"),
    ]
    if alert.acked_at is not None:
        rows.append(("acknowledged", f"{clock(alert.acked_at)} UTC by {alert.acked_by or '?'}"))
    if alert.note:
        rows.append(("note", alert.note))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


# ---------------------------------------------------------------------------------------------
# the plot around an alert


@dataclass(frozen=True, slots=True)
class AlertPlot:
    """One alert's series around its episode, in x units relative to the episode's start.

    The expected range and the peak are the detector's at the reading shown (the alert's
    peak): the range is drawn over the anomaly window only, where the detector held it, not
    across readings it never judged against it.
    """

    title: str
    explanation: tuple[str, ...]  # the peak's reason, and the opening's if it differs (whole)
    xlabel: str
    ylabel: str
    unit: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    window: tuple[float, float]  # the anomaly window (start, end) in x units
    shade: tuple[float, float]  # the window as drawn: at least MIN_SHADE of the plot wide
    expected: tuple[float, float] | None  # the detector's expected range at the peak
    peak: tuple[float, float] | None  # (x, value) of the reading at the peak
    ylim: tuple[float, float]  # the readings, and the expected range unless it would flatten them
    start: float  # unix seconds at x = 0 (the episode's start)
    scale: float  # seconds per x unit
    since: float  # unix seconds of the plotted range
    until: float


def plot_range(alert: AlertRecord, margin: float, *, last_ts: float | None = None) -> tuple[float, float]:
    """[since, until) to fetch around an alert: the episode (still open: up to the newest
    reading) plus `margin`, or at least the episode's length, on each side."""
    end = max(alert.start, alert.end if alert.end is not None else last_ts or alert.start)
    pad = max(margin, end - alert.start)
    return alert.start - pad, end + pad


def _x_unit(span: float) -> tuple[str, float]:
    if span <= 600:
        return "seconds", 1.0
    if span <= 36_000:
        return "minutes", 60.0
    return "hours", 3600.0


MIN_SHADE: Final = 0.015  # of the plot's width: a one-reading window is still seen
Y_STRETCH: Final = 1.0  # the expected range may widen the view by this many data spans per side
Y_PAD: Final = 0.06


def view_limits(ys: Sequence[float], expected: tuple[float, float] | None) -> tuple[float, float]:
    """Y limits that show every reading and as much of the expected range as does not flatten
    them: the range may add up to `Y_STRETCH` times the readings' own span on each side.

    >>> view_limits([0.0, 10.0], (2.0, 5.0))  # the range is inside: the readings decide
    (-0.6, 10.6)
    >>> view_limits([0.0, 10.0], (-500.0, 900.0))  # a far wider range is cut at 10 each side
    (-11.8, 21.8)
    """
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    span = hi - lo or abs(hi) or 1.0
    if expected is not None:
        lo = min(lo, max(expected[0], lo - Y_STRETCH * span))
        hi = max(hi, min(expected[1], hi + Y_STRETCH * span))
    pad = Y_PAD * (hi - lo)
    return round(lo - pad, 12), round(hi + pad, 12)


def _peak_ts(alert: AlertRecord, readings: Sequence[StoredReading], end: float) -> float | None:
    """When the peak was: stored since schema v3; for an older alert, the first reading in the
    episode with the peak's value, if there is one."""
    if alert.peak_ts is not None or alert.value is None:
        return alert.peak_ts
    return next((r.ts for r in readings if alert.start <= r.ts <= end and r.value == alert.value), None)


def _explanation(alert: AlertRecord) -> tuple[str, ...]:
    peak = alert.evidence or alert.opening_evidence
    lines = [f"peak: {peak}"] if peak else []
    if alert.opening_evidence and alert.opening_evidence != peak:
        lines.append(f"opened {clock(alert.start)[11:]} UTC: {alert.opening_evidence}")
    return tuple(lines)


def alert_plot(
    alert: AlertRecord, readings: Sequence[StoredReading], since: float, until: float
) -> AlertPlot:
    """The plot model behind both the terminal plot and the PNG."""
    unit_name, scale = _x_unit(until - since)
    end = alert.end
    if end is None:
        end = max([alert.start, *(r.ts for r in readings if r.ts >= alert.start)])
    end = max(end, alert.start)  # stored before the episode machine kept end >= start
    expected = None
    if alert.expected_low is not None and alert.expected_high is not None:
        expected = (alert.expected_low, alert.expected_high)
    peak_ts = _peak_ts(alert, readings, end)
    peak = None
    if peak_ts is not None and alert.value is not None:
        peak = ((peak_ts - alert.start) / scale, alert.value)
    unit = readings[0].unit if readings else ""
    state = alert.state if alert.acked_at is None else f"{alert.state}, acked"
    what = alert.anomaly_kind.replace("_", " ") if alert.anomaly_kind else alert.kind
    late = ", late" if alert.late else ""
    xs = tuple((r.ts - alert.start) / scale for r in readings)
    ys = tuple(r.value for r in readings)
    window = (0.0, (end - alert.start) / scale)
    x_lo, x_hi = (since - alert.start) / scale, (until - alert.start) / scale
    grow = max(0.0, MIN_SHADE * (x_hi - x_lo) - (window[1] - window[0])) / 2
    return AlertPlot(
        title=f"{alert.device} {alert.sensor}/{alert.metric}: {what} ({state}{late})",
        explanation=_explanation(alert),
        xlabel=f"{unit_name} from alert start ({clock(alert.start)} UTC)",
        ylabel=f"{alert.metric} ({unit})" if unit else alert.metric,
        unit=unit,
        xs=xs,
        ys=ys,
        window=window,
        shade=(window[0] - grow, window[1] + grow),
        expected=expected,
        peak=peak,
        ylim=view_limits(ys, expected),
        start=alert.start,
        scale=scale,
        since=since,
        until=until,
    )


def thin(readings: Sequence[StoredReading], max_points: int = 4000) -> list[StoredReading]:
    """At most about `max_points` readings for a plot, keeping each slice's lowest and highest
    reading in time order, so a one-reading spike survives the thinning."""
    if len(readings) <= max_points:
        return list(readings)
    size = math.ceil(len(readings) / (max_points // 2))
    out: list[StoredReading] = []
    for i in range(0, len(readings), size):
        chunk = readings[i : i + size]
        lo = min(range(len(chunk)), key=lambda k: chunk[k].value)
        hi = max(range(len(chunk)), key=lambda k: chunk[k].value)
        out.extend(chunk[k] for k in sorted({lo, hi}))
    return out


def plot_text(plot: AlertPlot, *, width: int = 100, height: int = 24, color: bool = True) -> str:
    """The plot as terminal text (plotext): the series, the anomaly window as two vertical
    lines, the expected range as two horizontal lines, the peak reading as a dot, each named
    in the legend."""
    import plotext as plt  # noqa: PLC0415 - only `alerts show` draws: list and devices need not load it

    fig = plt.figure
    fig.clear()
    plt.terminal.limit(False, False)  # the caller sized it (a pipe is not an 80-column terminal)
    fig.plot_size(max(40, width), max(12, height))
    fig.theme("simple")
    series = fig.signal(list(plot.xs), list(plot.ys), marker="braille")
    series.lines()
    series.label(plot.ylabel)
    fig.draw(series)
    lo, hi = plot.window
    fig.line(lo, "vertical", pixel="red", label=WINDOW_LABEL)
    if hi != lo:
        fig.line(hi, "vertical", pixel="red")
    if plot.expected is not None:
        low, high = plot.expected
        fig.line(
            low, "horizontal", pixel="green", style="dotted", label=f"{EXPECTED_LABEL} {low:.4g}..{high:.4g}"
        )
        fig.line(high, "horizontal", pixel="green", style="dotted")
    if plot.peak is not None:
        peak = fig.signal([plot.peak[0]], [plot.peak[1]], marker="●")
        peak.label(f"{PEAK_LABEL} {plot.peak[1]:.4g}{f' {plot.unit}' if plot.unit else ''}")
        fig.draw(peak)
    fig.title(plot.title)
    fig.label(plot.xlabel)
    try:
        text: str = fig.build().string(colorless=not color)
    finally:
        fig.clear()
        plt.terminal.limit(True, True)
    return text


class PlotUnavailable(RuntimeError):
    """The PNG needs matplotlib (the `cloud` extra), which is not installed here."""


# Colours of the PNG chart (matplotlib's tab10 blue, red and green).
SERIES_COLOUR: Final = "#1f77b4"
WINDOW_COLOUR: Final = "#d62728"
EXPECTED_COLOUR: Final = "#2ca02c"


def plot_png(plot: AlertPlot, *, width: int = 1200, height: int = 600) -> bytes:
    """The plot as a PNG of exactly `width` x `height` pixels, drawn by matplotlib (Agg, no
    display): the series with the anomalous readings in red over the shaded window, the
    expected range as the detector held it during the window, the peak reading circled, the
    reason in the title, UTC times and the unit on the axes.

    matplotlib is imported here only (it takes a moment to load): `alerts list`, `show` without
    `--png` and the aggregator never load it.
    """
    try:
        from matplotlib import dates as mdates  # noqa: PLC0415 - see the docstring
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise PlotUnavailable("writing a PNG needs matplotlib: pip install 'edgewatch[cloud]'") from exc

    # matplotlib's date axis counts days from its epoch; its dates module has no type hints.
    epoch_days = float(mdates.date2num(datetime.fromtimestamp(0, UTC)))  # type: ignore[no-untyped-call]

    def when(x: float) -> float:
        return epoch_days + (plot.start + x * plot.scale) / 86_400.0

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, attached to this figure only (no pyplot state)
    ax = fig.add_subplot()
    unit = f" {plot.unit}" if plot.unit else ""
    times = [when(x) for x in plot.xs]
    lo, hi = plot.window
    w0, w1 = when(plot.shade[0]), when(plot.shade[1])
    y_lo, y_hi = plot.ylim
    ax.axvspan(w0, w1, color=WINDOW_COLOUR, alpha=0.15, lw=0, label=WINDOW_LABEL)
    if plot.expected is not None:
        low, high = plot.expected
        label = f"{EXPECTED_LABEL} at the peak {low:.4g}..{high:.4g}{unit}"
        if low > y_hi or high < y_lo:  # nowhere near the readings: say where it is
            above = low > y_hi
            ax.annotate(
                f"{label} {'above' if above else 'below'} the view",
                xy=(w1, y_hi if above else y_lo), xytext=(8, -14 if above else 6),
                textcoords="offset points", color=EXPECTED_COLOUR, fontweight="bold",
                arrowprops={"arrowstyle": "->", "color": EXPECTED_COLOUR},
            )  # fmt: skip
        else:
            cut = " (cut at the view's edge)" if low < y_lo or high > y_hi else ""
            ax.fill_between(
                [w0, w1], max(low, y_lo), min(high, y_hi), color=EXPECTED_COLOUR, alpha=0.30, lw=0,
                label=label + cut,
            )  # fmt: skip
        for y in (low, high):
            if y_lo <= y <= y_hi:
                ax.plot([w0, w1], [y, y], color=EXPECTED_COLOUR, lw=1.2, ls="--")
    ax.plot(times, plot.ys, color=SERIES_COLOUR, lw=1.2, label=plot.ylabel)
    inside = [(t, y) for x, t, y in zip(plot.xs, times, plot.ys, strict=True) if lo <= x <= hi]
    if inside:
        ax.plot(
            [t for t, _ in inside], [y for _, y in inside], color=WINDOW_COLOUR, lw=1.6,
            marker="." if len(inside) < 200 else None, label="readings in the window",
        )  # fmt: skip
    if plot.peak is not None:
        px, py = plot.peak
        ax.plot(
            [when(px)], [py], ls="none", marker="o", ms=11, mfc="none", mec="black", mew=1.8,
            label=f"{PEAK_LABEL} {py:.4g}{unit} at {clock(plot.start + px * plot.scale)[11:]} UTC",
        )  # fmt: skip
    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    ax.set_xlim(when((plot.since - plot.start) / plot.scale), when((plot.until - plot.start) / plot.scale))
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(plot.ylabel)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    columns = max(40, width // 8)
    lines = [part for line in plot.explanation for part in textwrap.wrap(line, columns)[:2]]
    ax.set_title("\n".join(lines) or "(no reason stored for this alert)", loc="left", fontsize="medium")
    fig.suptitle(plot.title, x=0.01, ha="left", fontweight="bold")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# devices


def device_status(device: DeviceRecord, open_kinds: Iterable[str] = ()) -> str:
    """offline (it said so, or its will arrived), silent (an open silent alert), else online."""
    if not device.online:
        return "offline"
    if "silent" in set(open_kinds):
        return "silent"
    return "online"


def completeness(epochs: Iterable[EpochCompleteness]) -> float:
    """Share of the sent seqs that arrived (stored or dead-lettered), over all epochs."""
    arrived = total = 0
    for e in epochs:
        arrived += e.received + e.rejected
        total += e.received + e.rejected + e.missing
    return 1.0 if total == 0 else arrived / total


def epoch_json(e: EpochCompleteness, *, with_gaps: bool = True) -> dict[str, Any]:
    data = _with_iso(asdict(e), ("first_seen", "last_seen"))
    if with_gaps:
        data["gaps"] = [list(g) for g in e.gaps]
    else:
        del data["gaps"]
    data["completeness"] = e.completeness
    return data


def device_json(
    device: DeviceRecord, now: float, open_kinds: Iterable[str] = (), *, with_gaps: bool = True
) -> dict[str, Any]:
    """The fleet row of one device: presence, agent, counts, completeness, reported counters.

    `with_gaps=False` leaves the gap ranges out (the fleet list does not compute them: that
    costs a scan of every epoch's readings); `missing` still counts what never arrived.
    """
    data = _with_iso(
        {
            "device": device.device,
            "status": device_status(device, open_kinds),
            "online": device.online,
            "status_event": device.status_event,
            "first_seen": device.first_seen,
            "last_seen": device.last_seen,
            "status_ts": device.status_ts,
        },
        DEVICE_TIME_FIELDS,
    )
    data["last_seen_ago"] = None if device.last_seen is None else now - device.last_seen
    data.update(
        {
            "agent_version": device.agent_version,
            "epoch": device.epoch,
            "messages": device.messages,
            "readings": device.readings,
            "received": sum(e.received for e in device.epochs),
            "rejected": sum(e.rejected for e in device.epochs),
            "missing": device.missing,
            "completeness": completeness(device.epochs),
            "backlog": device.counters.get("backlog"),
            "dropped": device.counters.get("dropped"),
            "dropped_unconfirmed": device.counters.get("dropped_unconfirmed"),
            "counters": dict(device.counters),
            "open_alerts": device.open_alerts,
            "epochs": [epoch_json(e, with_gaps=with_gaps) for e in device.epochs],
        }
    )
    if with_gaps:
        data["gaps"] = sum(len(e.gaps) for e in device.epochs)
    return data


_STATUS_STYLE: Final = {"online": "green", "offline": "red", "silent": "yellow"}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%" if value < 1 else "100%"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def devices_table(devices: Sequence[DeviceRecord], now: float, open_kinds: dict[str, set[str]]) -> Table:
    """The fleet at a glance: presence, agent, data received and lost, what the agent reported."""
    online = sum(1 for d in devices if device_status(d, open_kinds.get(d.device, ())) == "online")
    table = Table(title=f"{len(devices)} devices, {online} online", title_justify="left")
    for name, justify in (
        ("device", "left"),
        ("status", "left"),
        ("last seen", "left"),
        ("agent", "left"),
        ("readings", "right"),
        ("complete", "right"),
        ("missing", "right"),
        ("backlog", "right"),
        ("dropped", "right"),
        ("open alerts", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in devices:
        status = device_status(d, open_kinds.get(d.device, ()))
        share = completeness(d.epochs)
        table.add_row(
            d.device,
            Text(status, style=_STATUS_STYLE[status]),
            ago(d.last_seen, now),
            d.agent_version or "-",
            str(d.readings),
            Text(_pct(share), style="" if share >= 1 else "yellow"),
            str(d.missing) if d.missing else "-",
            _count(d.counters.get("backlog")),
            _count(d.counters.get("dropped")),
            Text(str(d.open_alerts), style="bold red") if d.open_alerts else Text("-"),
        )
    return table


def sparkline(points: Sequence[tuple[float, float]], since: float, until: float, width: int = 40) -> str:
    """Time-bucketed bars; an empty bucket (no reading then) is a space, so gaps show.

    Each bucket keeps its reading farthest from the median, so a one-reading spike survives.

    >>> sparkline([(0, 1.0), (1, 2.0), (3, 4.0)], 0, 4, width=4)
    '▁▃ █'
    """
    if width <= 0 or until <= since:
        return ""
    buckets: list[list[float]] = [[] for _ in range(width)]
    for ts, value in points:
        i = int((ts - since) / (until - since) * width)
        if 0 <= i < width:
            buckets[i].append(value)
    values = [v for b in buckets for v in b]
    if not values:
        return " " * width
    middle = statistics.median(values)
    picked = [max(b, key=lambda v: abs(v - middle)) if b else None for b in buckets]
    present = [p for p in picked if p is not None]
    lo, hi = min(present), max(present)
    top = len(SPARK_CHARS) - 1
    return "".join(
        " " if p is None else SPARK_CHARS[top // 2 if hi == lo else round((p - lo) / (hi - lo) * top)]
        for p in picked
    )


@dataclass(frozen=True, slots=True)
class SeriesView:
    """One of a device's metrics over the recent window, for `devices show`."""

    sensor: str
    metric: str
    unit: str
    readings: tuple[tuple[float, float], ...]  # (ts, value)

    def to_json(self) -> dict[str, Any]:
        values = [v for _, v in self.readings]
        return {
            "sensor": self.sensor,
            "metric": self.metric,
            "unit": self.unit,
            "count": len(values),
            "last": values[-1] if values else None,
            "last_ts": self.readings[-1][0] if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "mean": statistics.fmean(values) if values else None,
        }


def format_gaps(gaps: Sequence[tuple[int, int]], limit: int = 6) -> str:
    """'101-120, 305, +3 more' for inclusive seq ranges.

    >>> format_gaps([(1, 4), (9, 9)])
    '1-4, 9'
    """
    if not gaps:
        return "-"
    shown = [f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in gaps[:limit]]
    if len(gaps) > limit:
        shown.append(f"+{len(gaps) - limit} more")
    return ", ".join(shown)


def device_panel(
    device: DeviceRecord,
    series: Sequence[SeriesView],
    now: float,
    *,
    since: float,
    until: float,
    open_alerts: Sequence[AlertRecord],
    spark_width: int = 48,
    dead_letters: dict[str, int] | None = None,
) -> RenderableType:
    """Everything about one device: summary, metric sparklines, epochs with their gaps, alerts."""
    kinds = {a.kind for a in open_alerts}
    status = device_status(device, kinds)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    counters = ", ".join(f"{k} {v:g}" for k, v in sorted(device.counters.items())) or "-"
    for key, value in (
        ("device", Text(device.device, style="bold")),
        ("status", Text(f"{status} ({device.status_event or 'no status yet'})", style=_STATUS_STYLE[status])),
        ("last seen", f"{clock(device.last_seen)} UTC ({ago(device.last_seen, now)})"),
        ("first seen", f"{clock(device.first_seen)} UTC"),
        ("agent", f"{device.agent_version or '-'} epoch {device.epoch or '-'}"),
        ("readings", f"{device.readings} stored in {device.messages} messages"),
        ("complete", f"{_pct(completeness(device.epochs))}, {device.missing} missing"),
        ("reported", counters),
        ("open alerts", str(device.open_alerts)),
        ("dead letters", ", ".join(f"{r} {n}" for r, n in (dead_letters or {}).items()) or "none"),
    ):
        summary.add_row(key, value)
    metrics = Table(title=f"metrics {clock(since)} .. {clock(until)} UTC (its clock)", title_justify="left")
    for name, justify in (
        ("series", "left"),
        ("last", "right"),
        ("min", "right"),
        ("max", "right"),
        ("", "left"),
    ):
        metrics.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in series:
        info = s.to_json()
        unit = f" {s.unit}" if s.unit else ""
        metrics.add_row(
            f"{s.sensor}/{s.metric}",
            f"{_num(info['last'])}{unit}",
            _num(info["min"]),
            _num(info["max"]),
            Text(sparkline(s.readings, since, until, spark_width), style="cyan"),
        )
    epochs = Table(title="epochs (one per agent outbox)", title_justify="left")
    for name, justify in (
        ("epoch", "left"),
        ("seqs", "left"),
        ("received", "right"),
        ("rejected", "right"),
        ("missing", "right"),
        ("complete", "right"),
        ("gaps (seq ranges never received)", "left"),
    ):
        epochs.add_column(name, justify=justify)  # type: ignore[arg-type]
    for e in device.epochs:
        seqs = "-" if e.first_seq is None else f"{e.first_seq}..{e.last_seq}"
        epochs.add_row(
            e.epoch, seqs, str(e.received), str(e.rejected), str(e.missing), _pct(e.completeness),
            format_gaps(e.gaps),
        )  # fmt: skip
    parts: list[RenderableType] = [summary, metrics, epochs]
    if open_alerts:
        parts.append(alerts_table(open_alerts, now))
    return Group(*parts)


# ---------------------------------------------------------------------------------------------
# dead letters


def payload_text(payload: bytes | None, limit: int = 4096) -> str:
    r"""Raw bytes shown safely: text with control characters escaped, else a hex dump.

    Nothing a sender put in a payload can move the cursor, ring a bell or change colours.

    >>> payload_text(b'{"v": "9.0"}\x1b[2J')
    '{"v": "9.0"}\\x1b[2J'
    >>> payload_text(b"\xff\xfe\x00")
    '00000000  ff fe 00                                          ...'
    """
    if payload is None:
        return "(not kept: a rejected reading is stored without its message)"
    data = payload[:limit]
    more = f"\n... {len(payload) - limit} more bytes" if len(payload) > limit else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if sum(1 for c in text if not c.isprintable() and c not in "\n\t") <= len(text) // 10:
            out = "".join(c if c.isprintable() or c in "\n\t" else ascii(c)[1:-1] for c in text)
            return out + more
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<48}  {shown}")
    return "\n".join(lines) + more


def dead_letter_json(d: DeadLetterRecord, *, with_payload: bool = True) -> dict[str, Any]:
    """Every field; the payload as text when it is text, and always as base64 (exact bytes)."""
    data = _with_iso(
        {
            "id": d.id,
            "received_at": d.received_at,
            "topic": d.topic,
            "reason": d.reason,
            "detail": d.detail,
            "device": d.device,
            "epoch": d.epoch,
            "seq": d.seq,
            "msg_id": d.msg_id,
            "payload_bytes": None if d.payload is None else len(d.payload),
        },
        ("received_at",),
    )
    if with_payload:
        data["payload_base64"] = None if d.payload is None else base64.b64encode(d.payload).decode()
        try:
            data["payload_text"] = None if d.payload is None else d.payload.decode("utf-8")
        except UnicodeDecodeError:
            data["payload_text"] = None
    return data


def dead_letters_table(letters: Sequence[DeadLetterRecord], now: float) -> Table:
    table = Table(title=f"{len(letters)} dead letters (newest first)", title_justify="left")
    for name, justify in (
        ("id", "right"),
        ("received", "left"),
        ("reason", "left"),
        ("device", "left"),
        ("seq", "right"),
        ("topic", "left"),
        ("detail", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for d in letters:
        table.add_row(
            str(d.id), f"{clock(d.received_at)} ({ago(d.received_at, now)})", Text(d.reason, style="yellow"),
            d.device or "-", "-" if d.seq is None else str(d.seq), Text(d.topic), Text(d.detail[:80]),
        )  # fmt: skip
    return table


def dead_letter_details(d: DeadLetterRecord, now: float) -> RenderableType:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    for key, value in (
        ("id", str(d.id)),
        ("reason", Text(d.reason, style="bold yellow")),
        ("detail", Text(d.detail)),
        ("received", f"{clock(d.received_at)} UTC ({ago(d.received_at, now)})"),
        ("topic", Text(d.topic)),
        ("device", d.device or "-"),
        ("epoch / seq", f"{d.epoch or '-'} / {'-' if d.seq is None else d.seq}"),
        ("msg_id", d.msg_id or "-"),
        ("payload", f"{len(d.payload)} bytes" if d.payload is not None else "-"),
    ):
        summary.add_row(key, value)
    return Group(summary, Text(payload_text(d.payload)))


__all__ = [
    "AlertPlot",
    "PlotUnavailable",
    "SeriesView",
    "ago",
    "alert_details",
    "alert_json",
    "alert_plot",
    "alerts_table",
    "clock",
    "completeness",
    "dead_letter_details",
    "dead_letter_json",
    "dead_letters_table",
    "device_json",
    "device_panel",
    "device_status",
    "devices_table",
    "format_gaps",
    "iso",
    "parse_duration",
    "parse_since",
    "parse_size",
    "payload_text",
    "plot_png",
    "plot_range",
    "plot_text",
    "sparkline",
    "thin",
    "why",
]
