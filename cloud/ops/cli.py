"""`edgewatch alerts|devices|deadletters ...`: the operator's view of the store.

Thin shells: resolve the database, call one query, hand the records to cloud.ops.views, print a
table or `--json`. Only typer and the standard library load at import time (edgewatch.app
imports this module on every start, also on a device); rich, plotext and sqlite-utils load
inside the commands. Errors edgewatch raises on purpose become one `error:` line on stderr
and a non-zero exit; list and show open the store read-only, so they run beside a writing
aggregator; only `alerts ack` writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from cloud.store.api import Store, StoredReading

DB_ENV: Final = "EDGEWATCH_DB"
BROKER_ENV: Final = "EDGEWATCH_BROKER"
DEFAULT_DB: Final = "edgewatch-cloud.db"  # AggregatorConfig.db's default
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

alerts_app = typer.Typer(
    help="Anomaly and silence alerts: list, follow live, show with a plot, acknowledge.",
    no_args_is_help=True,
)
devices_app = typer.Typer(
    help="The fleet: presence, agent versions, data received and lost, open alerts.",
    no_args_is_help=True,
)
deadletters_app = typer.Typer(
    help="What the aggregator refused to store, with the reason and the raw payload.",
    no_args_is_help=True,
)
SUB_APPS: list[tuple[typer.Typer, str]] = [
    (alerts_app, "alerts"),
    (devices_app, "devices"),
    (deadletters_app, "deadletters"),
]


# ---------------------------------------------------------------------------------------------
# shared plumbing


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Named errors become one line on stderr and exit 1; anything else is a bug and shows."""
    from devices.errors import EdgewatchError

    try:
        yield
    except EdgewatchError as exc:
        raise _fail(str(exc)) from None


def _db_path(db: str | None, config: Path | None) -> str:
    """--db, else the aggregator config's db, else $EDGEWATCH_DB, else the aggregator's default.

    A SQLite path or a postgresql:// URL (a str: a Path would fold the URL's `//`).
    """
    if db is not None:
        return db
    if config is not None:
        from cloud.service.config import load_config

        return load_config(config).db
    return os.environ.get(DB_ENV) or DEFAULT_DB


@contextmanager
def _store(db: str | None, config: Path | None, *, write: bool = False) -> Iterator[Store]:
    from cloud.store.api import open_store

    with _errors():
        store = open_store(_db_path(db, config), readonly=not write)
        try:
            yield store
        finally:
            store.close()


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped into less or a file: do not squeeze tables to 80 columns
    return console


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _since(value: str | None, now: float) -> float | None:
    from cloud.ops.views import parse_since

    if value is None:
        return None
    try:
        return parse_since(value, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


def _duration(value: str, name: str) -> float:
    from cloud.ops.views import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def _complete(query: Callable[[Store, str], list[str]]) -> Callable[[typer.Context, str], list[str]]:
    """Shell completion from the store named on the command line so far; silent on any error."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            from cloud.store.api import open_store

            store = open_store(_db_path(ctx.params.get("db"), ctx.params.get("config")), readonly=True)
            try:
                return query(store, incomplete)
            finally:
                store.close()
        except Exception:  # completion must never print a traceback into the shell
            return []

    return complete


_complete_alert = _complete(lambda store, prefix: store.alert_ids_starting(prefix, 50))
_complete_device = _complete(lambda store, prefix: store.devices_starting(prefix, 200))

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="The aggregator's store: a SQLite file or postgresql://user@host/db. "
        f"Default: --config's db, else ${DB_ENV}, else ./{DEFAULT_DB}.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="The aggregator's TOML config file; the store named by its db key is read."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


# ---------------------------------------------------------------------------------------------
# alerts


@alerts_app.command("list")
def alerts_list(
    *,
    since: Annotated[
        str | None,
        typer.Option(help="Only alerts active since: 30m, 1h, 2d, 1w or an ISO-8601 time (UTC if naive)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Only this device.", autocompletion=_complete_device)
    ] = None,
    metric: Annotated[str | None, typer.Option(help="Only this metric (e.g. temp).")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only alerts still open.")] = False,
    severity: Annotated[str | None, typer.Option(help="Only this severity (e.g. warning).")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind: anomaly or silent.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List alerts newest first with a short reason; open ones stand out, acknowledged ones are marked.

    Example: edgewatch alerts list --since 12h --open --db /var/lib/edgewatch/cloud.db
    """
    from cloud.ops.views import alert_json, alerts_table

    now = time.time()
    cutoff = _since(since, now)
    with _store(db, config) as store:
        alerts = store.find_alerts(
            since=cutoff,
            device=device,
            metric=metric,
            severity=severity,
            state="open" if open_only else None,
            kind=kind,
            limit=limit,
        )
    if json_out:
        _print_json([alert_json(a) for a in alerts])
    else:
        _console().print(alerts_table(alerts, now))


@alerts_app.command("follow")
def alerts_follow(
    *,
    broker: Annotated[
        str | None,
        typer.Option(
            help=f"mqtt://user:pass@host:port or mqtts://... Default: --config's broker, "
            f"else ${BROKER_ENV}, else {DEFAULT_BROKER}.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's alerts.")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for an mqtts:// broker.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Exit after this many alerts.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print alerts live, each with its reason, as the aggregator raises and closes them (needs only
    the broker).

    Reconnects by itself; connection changes are reported on stderr. Ctrl-C stops.

    Example: edgewatch alerts follow --broker mqtts://viewer:secret@broker.example:8883 --ca-file ca.pem
    """
    import logging
    import signal
    import threading

    from cloud.ops.follow import AlertFeed, format_alert

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    with _errors():
        url_text = broker
        ca = str(ca_file) if ca_file is not None else None
        if url_text is None and config is not None:
            from cloud.service.config import load_config

            settings = load_config(config)
            url_text, ca = settings.broker, ca or settings.ca_file
        url_text = url_text or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
        from devices.broker import parse_broker_url

        url = parse_broker_url(url_text)
        feed = AlertFeed(url, device=device, ca_file=ca)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console = _console()
    shown, connected = 0, False
    typer.echo(f"following {feed.topic} on {url.redacted()} (Ctrl-C to stop)", err=True)
    feed.start()
    hint_at: float | None = time.monotonic() + 5.0
    try:
        while not stop.is_set() and (count is None or shown < count):
            if hint_at is not None and not connected and time.monotonic() > hint_at:
                typer.echo(f"cannot reach {url.redacted()} yet; still trying", err=True)
                hint_at = None
            if feed.connected.is_set() != connected:
                connected, hint_at = not connected, None
                typer.echo(
                    "connected, waiting for alerts" if connected else "disconnected, reconnecting", err=True
                )
            alert = feed.get(timeout=0.2)
            if alert is None:
                continue
            if json_out:
                typer.echo(json.dumps(_event_json(alert)))
            else:
                console.print(format_alert(alert), soft_wrap=True)
            sys.stdout.flush()
            shown += 1
    finally:
        feed.stop()


def _event_json(alert: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from cloud.ops.views import iso

    data = {k: str(v) if k in ("kind", "state") else v for k, v in asdict(alert).items()}
    data["start_iso"], data["end_iso"] = iso(alert.start), iso(alert.end)
    data["peak_ts_iso"] = iso(alert.peak_ts)
    return data


@alerts_app.command("show")
def alerts_show(
    alert_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="Alert id, or a unique prefix of 6+ characters.",
            autocompletion=_complete_alert,
        ),
    ],
    *,
    png: Annotated[
        Path | None,
        typer.Option(
            "--png",
            help="Also write the plot as a PNG image here (matplotlib): the anomaly window shaded, "
            "the expected range the detector held, the peak circled, the reason in the title.",
        ),
    ] = None,
    png_size: Annotated[
        str, typer.Option("--png-size", metavar="WxH", help="Size of the PNG in pixels.")
    ] = "1200x600",
    margin: Annotated[
        str, typer.Option(help="Time shown before and after the episode (at least its own length).")
    ] = "10m",
    width: Annotated[int | None, typer.Option(min=40, help="Plot width in columns.")] = None,
    height: Annotated[int, typer.Option(min=12, help="Plot height in rows.")] = 22,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the alert and the plotted readings as JSON.")
    ] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show one alert: details with its reason in full, and a plot around it (anomaly window,
    the expected range at the peak, the peak reading marked).

    Example: edgewatch alerts show 2edb00bc --png alert.png
    """
    from cloud.errors import NotFound
    from cloud.ops.views import (
        PlotUnavailable,
        alert_details,
        alert_json,
        alert_plot,
        iso,
        plot_png,
        plot_range,
        plot_text,
        thin,
    )

    pad = _duration(margin, "--margin")
    size = _png_size(png_size)
    now = time.time()
    with _store(db, config) as store:
        try:
            alert = store.get_alert(alert_id)
        except NotFound as exc:
            hint = " (give at least 6 characters of the id)" if len(alert_id) < 6 else ""
            raise _fail(f"{exc}{hint}") from None
        readings: list[StoredReading] = []
        since = until = alert.start
        if alert.metric:
            last = store.last_reading_ts(alert.device) if alert.end is None else None
            since, until = plot_range(alert, pad, last_ts=last)
            readings = store.readings(
                alert.device,
                alert.metric,
                since=since,
                until=until,
                sensor=alert.sensor or None,
                limit=2_000_000,  # thinned for the plot below; --json gets them all
            )
    plot = alert_plot(alert, thin(readings), since, until) if readings else None
    if png is not None:
        if plot is None:
            raise _fail(f"no readings of {alert.device} {alert.metric or '(silent alert)'} to plot")
        try:
            png.write_bytes(plot_png(plot, width=size[0], height=size[1]))
        except PlotUnavailable as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _fail(f"cannot write {png}: {exc.strerror or exc}") from None
    if json_out:
        data = alert_json(alert)
        data["plot"] = {
            "since": since,
            "since_iso": iso(since),
            "until": until,
            "until_iso": iso(until),
            "readings": [[r.ts, r.value] for r in readings],
            "png": str(png) if png is not None else None,
        }
        _print_json(data)
        return
    console = _console()
    console.print(alert_details(alert, now))
    if plot is None:
        what = "silent alert: the device sent nothing, so there is no metric to plot"
        console.print(f"\n[dim]{what if not alert.metric else 'no stored readings around this alert'}[/]")
    else:
        console.print()
        text = plot_text(
            plot, width=width or min(console.width, 140), height=height, color=console.is_terminal
        )
        console.out(text, highlight=False)  # already ANSI-coloured (or plain): no markup
    if png is not None:
        console.print(f"wrote {png}")


def _png_size(text: str) -> tuple[int, int]:
    from cloud.ops.views import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--png-size") from None


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="Alert id, or a unique prefix of 6+ characters.",
            autocompletion=_complete_alert,
        ),
    ],
    *,
    note: Annotated[str, typer.Option(help="Why, or what was done (kept with the alert).")] = "",
    by: Annotated[str | None, typer.Option(help="Who acknowledges (default: your login name).")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Acknowledge an alert: list and show mark it; acknowledging again keeps the first time.

    Example: edgewatch alerts ack 2edb00bc --note "fan replaced"
    """
    import getpass

    from cloud.ops.views import alert_json, clock

    if by is None:
        try:
            by = getpass.getuser()
        except (OSError, KeyError):
            by = ""
    with _store(db, config, write=True) as store:
        alert = store.ack_alert(alert_id, now=time.time(), by=by, note=note)
    if json_out:
        _print_json(alert_json(alert))
    else:
        typer.echo(
            f"acknowledged {alert.alert_id} ({alert.device} {alert.metric or alert.kind}, {alert.state}) "
            f"at {clock(alert.acked_at)} UTC by {alert.acked_by or '?'}"
        )


# ---------------------------------------------------------------------------------------------
# devices


def _open_alerts(store: Store) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for a in store.find_alerts(state="open", limit=1_000_000):
        out.setdefault(a.device, []).append(a)
    return out


@devices_app.command("list")
def devices_list(
    *,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The fleet table: presence, last seen, agent, readings, completeness, drops, open alerts.

    Backlog and dropped are what each agent last reported in its status messages.

    Example: edgewatch devices list --config /etc/edgewatch/aggregator.toml
    """
    from cloud.ops.views import device_json, devices_table

    now = time.time()
    with _store(db, config) as store:
        devices = store.list_devices()
        opened = _open_alerts(store)
    kinds = {d: {a.kind for a in alerts} for d, alerts in opened.items()}
    if json_out:
        _print_json([device_json(d, now, kinds.get(d.device, ()), with_gaps=False) for d in devices])
    else:
        _console().print(devices_table(devices, now, kinds))


@devices_app.command("show")
def devices_show(
    device: Annotated[
        str, typer.Argument(metavar="DEVICE", help="Device id.", autocompletion=_complete_device)
    ],
    *,
    window: Annotated[
        str, typer.Option(help="How much recent history the sparklines cover (up to its newest reading).")
    ] = "1h",
    max_gaps: Annotated[int, typer.Option(min=1, help="Gap ranges listed per epoch.")] = 100,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One device in detail: counters, metric sparklines, epochs with their gaps, open alerts.

    Sparklines cover --window up to the newest reading (device clock); a blank is time without data.

    Example: edgewatch devices show pi-kitchen --window 6h
    """
    from cloud.ops.views import SeriesView, alert_json, device_json, device_panel, iso

    span = _duration(window, "--window")
    now = time.time()
    with _store(db, config) as store:
        record = store.device(device, max_gaps=max_gaps)
        until = store.last_reading_ts(device) or record.last_seen or now
        since = until - span
        series = [
            SeriesView(
                s.sensor,
                s.metric,
                s.unit,
                tuple(
                    (r.ts, r.value)
                    for r in store.readings(
                        device, s.metric, sensor=s.sensor, since=since, until=until + 1e-6
                    )
                ),
            )
            for s in store.device_series(device)
        ]
        opened = _open_alerts(store).get(device, [])
        dead = store.dead_letter_counts(device)
    firsts = [s.readings[0][0] for s in series if s.readings]
    since = max(since, min(firsts)) if firsts else since  # a young device fills the whole line
    kinds = {a.kind for a in opened}
    if json_out:
        data = device_json(record, now, kinds)
        data["window"] = {"since": since, "since_iso": iso(since), "until": until, "until_iso": iso(until)}
        data["series"] = [s.to_json() for s in series]
        data["alerts"] = [alert_json(a) for a in opened]
        data["dead_letters"] = dead
        _print_json(data)
    else:
        _console().print(
            device_panel(record, series, now, since=since, until=until, open_alerts=opened, dead_letters=dead)
        )


# ---------------------------------------------------------------------------------------------
# dead letters


@deadletters_app.command("list")
def deadletters_list(
    *,
    since: Annotated[
        str | None, typer.Option(help="Only those received since: 30m, 1h, 2d, 1w or an ISO-8601 time.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Only this reason (e.g. malformed_json, future_ts, reserved_device).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Only this device.", autocompletion=_complete_device)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List dead letters newest first: when, why, from which device and topic.

    Example: edgewatch deadletters list --since 1h --reason malformed_json
    """
    from cloud.ops.views import dead_letter_json, dead_letters_table

    now = time.time()
    cutoff = _since(since, now)
    with _store(db, config) as store:
        letters = store.dead_letters(reason=reason, device=device, since=cutoff, limit=limit)
        counts = store.dead_letter_counts(device)
    if json_out:
        _print_json([dead_letter_json(d, with_payload=False) for d in letters])
        return
    console = _console()
    console.print(dead_letters_table(letters, now))
    if counts:
        console.print("all kept, by reason: " + ", ".join(f"{r} {n}" for r, n in counts.items()))


@deadletters_app.command("show")
def deadletters_show(
    dead_id: Annotated[int, typer.Argument(metavar="ID", help="The id from `deadletters list`.")],
    *,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One dead letter: reason, topic, time, and the raw payload shown safely (text or hex).

    Example: edgewatch deadletters show 42 --json
    """
    from cloud.ops.views import dead_letter_details, dead_letter_json

    with _store(db, config) as store:
        letter = store.dead_letter(dead_id)
    if json_out:
        _print_json(dead_letter_json(letter))
    else:
        _console().print(dead_letter_details(letter, time.time()))
