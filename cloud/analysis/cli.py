"""`edgewatch detect` and `edgewatch evaluate`: detectors on files, alerts against labels.

Thin shells: parse, call one function (`cloud.analysis.files.detect_file`,
`cloud.analysis.evaluate.evaluate`), print. river, numpy and rich load inside the commands only.
(`replay` lives with the aggregator's store.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for inputs of 1 MiB or more


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def detect_cmd(
    input_csv: Annotated[
        Path, typer.Argument(metavar="IN.csv", help="CSV with a header row: timestamp,value.")
    ],
    *,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write timestamp,value,score,alert.")
    ],
    detector: Annotated[str, typer.Option(help="Detector name (see DETECTORS).")] = "default",
    json_summary: Annotated[bool, typer.Option("--json", help="Print the alert episodes as JSON.")] = False,
    device: Annotated[str, typer.Option(help="Device name to tag the episodes with.")] = "",
    metric: Annotated[str, typer.Option(help="Metric name to tag the episodes with.")] = "",
) -> None:
    """Score a timestamp,value CSV with a detector, exactly as the aggregator would.

    Timestamps are ISO-8601 (naive = UTC) or epoch seconds. Writes score in [0, 1] and alert
    0/1 (the detector's label-free decision) per row; alert episodes open and close as the
    aggregator's do (close after 5 normal readings or 300 s).

    Example: edgewatch detect temps.csv --output scored.csv --json
    """
    from cloud.analysis.files import InputError, detect_file
    from cloud.detect import DETECTORS

    if detector not in DETECTORS:
        raise _fail(f"unknown detector {detector!r}; known: {', '.join(sorted(DETECTORS))}", 2)
    if not input_csv.is_file():
        raise _fail(f"{input_csv}: no such file")
    if output.exists() and output.resolve() == input_csv.resolve():
        raise _fail("--output must not be the input file")
    size = input_csv.stat().st_size
    try:
        if size >= PROGRESS_MIN_BYTES:
            summary = _detect_with_progress(input_csv, output, detector, device, metric, size)
        else:
            summary = detect_file(
                input_csv,
                output,
                detector=detector,
                device=device,
                metric=metric,
            )
    except InputError as exc:
        raise _fail(str(exc)) from None
    if json_summary:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(
            f"{summary.readings} readings, {summary.anomalous} anomalous, "
            f"{len(summary.episodes)} alert episodes ({summary.detector}); wrote {output}"
        )


def _detect_with_progress(src: Path, dst: Path, detector: str, device: str, metric: str, size: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from cloud.analysis.files import detect_file

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(f"scoring {src.name}", total=size)
        return detect_file(
            src,
            dst,
            detector=detector,
            device=device,
            metric=metric,
            on_bytes=lambda n: progress.advance(task, n),
        )


def evaluate_cmd(
    *,
    labels: Annotated[
        Path, typer.Option(help="Label JSON lines (simulators) or CSV device,metric,start,end[,kind].")
    ],
    alerts: Annotated[
        Path | None,
        typer.Option(
            help="Alert episodes: JSON lines, `detect --json` output, or CSV device,metric,start,end."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Or take the alerts from an aggregator's store (SQLite file or postgresql:// URL)."
        ),
    ] = None,
    replay_run: Annotated[
        str | None, typer.Option("--replay", help="With --db: the alerts of this `edgewatch replay` run.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    tolerance: Annotated[
        float, typer.Option(min=0.0, help="Seconds after a window's end an alert still counts for it.")
    ] = 0.0,
    stream_days: Annotated[
        float | None,
        typer.Option(help="Observed stream-days, for false alarms per stream-day (default: estimated)."),
    ] = None,
    ignore_kind: Annotated[
        list[str] | None,
        typer.Option(help="Label kinds that are not events (repeatable; default: dropout)."),
    ] = None,
    per_device: Annotated[
        bool,
        typer.Option(
            "--per-device", help="NAB score per device: any stream's episode is the device's detection."
        ),
    ] = False,
) -> None:
    """Event recall, precision, false alarms per stream-day, detection delay, NAB-style scores.

    The NAB scores (Lavin & Ahmad 2015; profiles standard, reward_low_FP_rate,
    reward_low_FN_rate) count where episodes open: the earliest in a window earns up to 1,
    one outside costs the FP weight, a missed window the FN weight; 0 = never alerting,
    100 = perfect.

    Example: edgewatch evaluate --labels labels.jsonl --alerts episodes.json --tolerance 1800
    """
    from cloud.analysis.evaluate import (
        IGNORED_KINDS,
        load_episodes,
        load_windows,
        metrics_table_rows,
        report,
    )

    if (alerts is None) == (db is None):
        raise _fail("give exactly one of --alerts FILE and --db PATH")
    try:
        windows = load_windows(labels)
        episodes = load_episodes(alerts) if alerts is not None else _store_episodes(db, replay_run)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    result = report(
        windows,
        episodes,
        stream_days=stream_days,
        tolerance=tolerance,
        ignore_kinds=IGNORED_KINDS if ignore_kind is None else frozenset(ignore_kind),
        nab_per_device=per_device,
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Detection quality", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics_table_rows(result):
        table.add_row(name, value)
    Console().print(table)
    if stream_days is None:
        typer.echo("(stream-days estimated from the files' time span; pass --stream-days to fix it)")


def _store_episodes(db: str | None, run: str | None) -> list[Any]:
    """Anomaly alerts of a store (or of one replay run in it) as evaluation episodes."""
    from cloud.analysis.evaluate import Episode
    from cloud.analysis.replay import replayed_alerts
    from cloud.errors import CloudError
    from cloud.store.api import open_store

    assert db is not None
    try:
        store = open_store(db, readonly=True)
        try:
            if run is not None:
                rows = replayed_alerts(store, run)
            else:
                rows = [
                    (a.device, a.metric, a.start, a.end)
                    for a in store.find_alerts(kind="anomaly", limit=1 << 62)
                ]
        finally:
            store.close()
    except CloudError as exc:
        raise _fail(str(exc)) from None
    return [Episode(d, m, st, st if e is None else e) for d, m, st, e in rows]


def replay_cmd(
    *,
    db: Annotated[str, typer.Option(help="The aggregator's store: a SQLite file or postgresql:// URL.")],
    device: Annotated[str | None, typer.Option(help="Only this device's streams.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only readings from this time on (ISO-8601 or epoch seconds).")
    ] = None,
    detector: Annotated[str, typer.Option(help="Detector name (see DETECTORS).")] = "default",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and print; write nothing.")] = False,
    into_alerts: Annotated[
        bool, typer.Option("--into-alerts", help="Write into the live alerts table (never doubles one).")
    ] = False,
    run: Annotated[str | None, typer.Option(help="Name of this run (default: DETECTOR-TIME).")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the run and its alerts as JSON.")
    ] = False,
) -> None:
    """Re-run stored readings through a detector and rebuild alert episodes from history.

    Alerts go to a separate set (table replay_alerts, by run name) unless --into-alerts.
    Example: edgewatch replay --db cloud.db --detector hst --dry-run
    """
    from cloud.analysis.evaluate import parse_timestamp
    from cloud.analysis.replay import replay
    from cloud.detect import UnknownDetector
    from cloud.errors import CloudError
    from cloud.store.api import open_store

    try:
        start = parse_timestamp(since) if since is not None else None
    except ValueError as exc:
        raise _fail(f"--since: {exc}") from None
    try:
        store = open_store(db, readonly=dry_run)
        try:
            report = replay(
                store, detector=detector, device=device, since=start, dry_run=dry_run,
                into_alerts=into_alerts, run=run,
            )  # fmt: skip
        finally:
            store.close()
    except UnknownDetector as exc:
        raise _fail(str(exc), 2) from None
    except CloudError as exc:
        raise _fail(str(exc)) from None
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    where = "nothing written (dry run)" if dry_run else f"{report.written} new in {report.target}"
    typer.echo(
        f"replay {report.run}: {report.readings} readings in {report.streams} streams -> "
        f"{len(report.episodes)} alert episodes; {where}"
    )


COMMANDS: list[tuple[Callable[..., Any], str]] = [
    (replay_cmd, "replay"),
    (detect_cmd, "detect"),
    (evaluate_cmd, "evaluate"),
]
