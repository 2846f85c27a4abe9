"""`edgewatch detect` and `edgewatch evaluate`: detectors on files, alerts against labels.

Thin shells: parse, call one function (`cloud.detect.files.detect_file`,
`cloud.evaluate.evaluate`), print. river, numpy and rich load inside the commands only.
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
    close_after: Annotated[
        int, typer.Option(min=1, help="An episode closes after this many normal readings.")
    ] = 10,
) -> None:
    """Score a timestamp,value CSV with a detector, exactly as the aggregator would.

    Timestamps are ISO-8601 (naive = UTC) or epoch seconds. Writes score in [0, 1] and alert
    0/1 (the detector's label-free decision) per row.

    Example: edgewatch detect temps.csv --output scored.csv --json
    """
    from cloud.detect import DETECTORS
    from cloud.detect.files import InputError, detect_file

    if detector not in DETECTORS:
        raise _fail(f"unknown detector {detector!r}; known: {', '.join(sorted(DETECTORS))}", 2)
    if not input_csv.is_file():
        raise _fail(f"{input_csv}: no such file")
    if output.exists() and output.resolve() == input_csv.resolve():
        raise _fail("--output must not be the input file")
    size = input_csv.stat().st_size
    try:
        if size >= PROGRESS_MIN_BYTES:
            summary = _detect_with_progress(input_csv, output, detector, close_after, device, metric, size)
        else:
            summary = detect_file(
                input_csv,
                output,
                detector=detector,
                close_after=close_after,
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


def _detect_with_progress(
    src: Path, dst: Path, detector: str, close_after: int, device: str, metric: str, size: int
) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from cloud.detect.files import detect_file

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
            close_after=close_after,
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
        Path,
        typer.Option(
            help="Alert episodes: JSON lines, `detect --json` output, or CSV device,metric,start,end."
        ),
    ],
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
) -> None:
    """Event recall, precision, false alarms per stream-day and detection delay of alerts.

    Example: edgewatch evaluate --labels labels.jsonl --alerts episodes.json --tolerance 1800
    """
    from cloud.evaluate import IGNORED_KINDS, evaluate, load_episodes, load_windows, metrics_table_rows

    try:
        windows = load_windows(labels)
        episodes = load_episodes(alerts)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    metrics = evaluate(
        windows,
        episodes,
        stream_days=stream_days,
        tolerance=tolerance,
        ignore_kinds=IGNORED_KINDS if ignore_kind is None else frozenset(ignore_kind),
    )
    if json_output:
        typer.echo(json.dumps(metrics.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Detection quality", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics_table_rows(metrics):
        table.add_row(name, value)
    Console().print(table)
    if stream_days is None:
        typer.echo("(stream-days estimated from the files' time span; pass --stream-days to fix it)")


COMMANDS: list[tuple[Callable[..., Any], str]] = [
    (detect_cmd, "detect"),
    (evaluate_cmd, "evaluate"),
]
