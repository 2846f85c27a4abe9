"""`edgewatch cloud ...`, `alerts ...`, `devices ...`: thin commands over cloud/ functions."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

cloud_app = typer.Typer(help="Run the cloud aggregator.", no_args_is_help=True)

SUB_APPS: list[tuple[typer.Typer, str]] = [(cloud_app, "cloud")]
COMMANDS: list[tuple[Callable[..., Any], str]] = []


@cloud_app.callback()
def _cloud() -> None:
    """The cloud side: ingest every reading exactly once, track the fleet, raise alerts."""


@cloud_app.command("run")
def run_cmd(
    *,
    broker: Annotated[
        str | None,
        typer.Option(help="mqtt://user:pass@host:port or mqtts://... (default mqtt://127.0.0.1:1883)"),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(help="SQLite file (created if missing) or postgresql://user@host/db (migrated)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with an aggregator table (see cloud/service/config.py).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port; 0 = off.")] = None,
    detector: Annotated[str | None, typer.Option(help="Detector name (default: default).")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for an mqtts:// broker.")] = None,
    client_id: Annotated[str | None, typer.Option(help="Stable MQTT client id.")] = None,
    nats: Annotated[
        str | None,
        typer.Option(
            help="Cluster mode: nats://user:pass@host:4222[,...] of the JetStream cluster "
            "(deploy/nats/), with a postgresql:// --db shared by the members; no --broker."
        ),
    ] = None,
    member: Annotated[
        str | None, typer.Option(help="Cluster mode: this member's id (default host-pid).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug logs every message's msg_id.")] = "info",
) -> None:
    """Run the aggregator until SIGINT/SIGTERM; then write, confirm and checkpoint what it has.

    Example: edgewatch cloud run --broker mqtt://127.0.0.1:1883 --db cloud.db --metrics-port 9108

    Cluster: edgewatch cloud run --nats nats://aggregator:pw@nats-a:4222 --db postgresql://...
    """
    from cloud.service import aggregator as service
    from cloud.service.config import load_config
    from devices.errors import EdgewatchError

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    try:
        settings = load_config(
            config,
            broker=broker,
            db=db,
            metrics_port=metrics_port,
            detector=detector,
            ca_file=str(ca_file) if ca_file is not None else None,
            client_id=client_id,
            nats=nats,
            member=member,
        )
        service.run(settings)
    except EdgewatchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@cloud_app.command("status")
def status_cmd(
    *,
    db: Annotated[str, typer.Option(help="The members' store: postgresql://user@host/db.")],
    nats: Annotated[
        str | None, typer.Option(help="nats://user:pass@host:4222[,...]: also show each partition's lag.")
    ] = None,
    partitions: Annotated[
        int | None, typer.Option(help="P, as in the servers' mapping (default 64).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Cluster mode: live members, the partitions each owns, lag per partition, last rebalance.

    Example: edgewatch cloud status --db postgresql://edgewatch@db/edgewatch --nats nats://...
    """
    import json
    import time

    from cloud.partitions.layout import PARTITIONS
    from cloud.partitions.status import cluster_status
    from devices.errors import EdgewatchError

    try:
        status = cluster_status(db, nats, partitions or PARTITIONS)
    except EdgewatchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(status.as_dict(), indent=2))
        return
    typer.echo(f"members ({len(status.members)} live):")
    for member, age in status.members:
        owned = status.owned.get(member, ())
        typer.echo(f"  {member}  heartbeat {age:.1f}s ago  {len(owned)} partitions: {list(owned)}")
    unowned = [p.partition for p in status.partitions if p.owner is None]
    typer.echo(f"unowned partitions: {unowned or 'none'}")
    lagging = [p for p in status.partitions if p.lag]
    if nats:
        typer.echo(
            "lag (messages not yet acked): "
            + (", ".join(f"p{p.partition}={p.lag}" for p in lagging) or "none")
        )
    when = status.last_rebalance
    typer.echo(
        "last rebalance: "
        + ("never" if when is None else f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))} UTC")
    )
