"""`edgewatch agent run|status|sample`: thin commands over edge/ functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from devices.errors import EdgewatchError

app = typer.Typer(
    help="Run and inspect the edge agent on a device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="The agent's TOML config file.", show_default=False)
]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command("run")
def run_cmd(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Sample sensors into the outbox and publish them until SIGTERM/SIGINT.

    Example: edgewatch agent run --config /etc/edgewatch/agent.toml
    """
    from edge.runner import run_agent

    code = run_agent(config, log_level)
    if code:
        raise typer.Exit(code)


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


@app.command("status")
def status_cmd(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the outbox: backlog, oldest unsent age, drops, disk headroom, drain ETA.

    Safe while the agent runs (the outbox is opened read-only).
    Example: edgewatch agent status --config agent.toml --json
    """
    from edge.config import load_config
    from edge.outbox import read_stats

    try:
        cfg = load_config(config)
        stats = read_stats(cfg.outbox.path, cfg.outbox.max_bytes)
    except EdgewatchError as exc:
        raise _fail(exc) from None
    data = {"device": cfg.device_id, **stats.as_dict()}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    eta = stats.drain_eta_s
    rows = [
        ("device", cfg.device_id),
        ("epoch", stats.epoch),
        ("last seq", str(stats.last_seq)),
        (
            "backlog",
            f"{stats.backlog} (not yet at the broker {stats.pending}, "
            f"awaiting confirmation {stats.sent_unconfirmed})",
        ),
        ("outbox size", f"{stats.bytes_used / 1e6:.2f} MB of {stats.max_bytes / 1e6:.0f} MB"),
        ("oldest unsent", _fmt_age(stats.oldest_unsent_age_s)),
        ("oldest unconfirmed", _fmt_age(stats.oldest_unconfirmed_age_s)),
        ("dropped", f"{stats.dropped} (+{stats.dropped_unconfirmed} after broker ack)"),
        ("published / confirmed", f"{stats.published} / {stats.confirmed}"),
        ("disk free", "-" if stats.free_disk_bytes is None else f"{stats.free_disk_bytes / 1e9:.2f} GB"),
        ("drain ETA", "unknown (no recent confirmations)" if eta is None else _fmt_age(eta)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@app.command("sample")
def sample_cmd(config: ConfigOpt) -> None:
    """Read every configured sensor once and print what it gives (install debugging).

    Modbus and OPC UA sensors also show what they read before conversion:
    Modbus each register's words, decoded number and value after scale and offset;
    OPC UA each node's data type and value as the server sent it.

    Example: edgewatch agent sample --config agent.toml
    """
    import time

    from devices.drivers.base import DescribesReads
    from devices.errors import SensorReadError
    from edge.agent import read_sensor
    from edge.config import build_drivers, load_config

    try:
        cfg = load_config(config)
        drivers = build_drivers(cfg)
    except EdgewatchError as exc:
        raise _fail(exc) from None
    failed = 0
    for sensor in cfg.sensors:
        driver = drivers[sensor.name]
        try:
            samples = read_sensor(sensor.name, driver, time.time())
            details = driver.describe_last_read() if isinstance(driver, DescribesReads) else []
        except SensorReadError as exc:
            failed += 1
            typer.echo(f"{sensor.name} ({sensor.driver}): FAILED: {exc}")
            continue
        finally:
            driver.close()
        for s in samples:
            typer.echo(f"{sensor.name} ({sensor.driver}): {s.metric} = {s.value:g} {s.unit}".rstrip())
        for line in details:
            typer.echo(f"    {line}")
    if failed:
        raise typer.Exit(1)
