"""`edgewatch notify ...`: try a sink, and see what is queued, delivered and refused per sink.

Thin shells over cloud.notify.ops; only typer loads at import time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

notify_app = typer.Typer(
    help="Alert delivery to Alertmanager and webhooks: test a sink, see the delivery queues.",
    no_args_is_help=True,
)
SUB_APPS: list[tuple[typer.Typer, str]] = [(notify_app, "notify")]

ConfigOpt = Annotated[
    Path, typer.Option("--config", help="The aggregator's TOML config, with its [[notify.sinks]].")
]


@notify_app.command("test")
def test_cmd(
    *,
    sink: Annotated[str, typer.Option("--sink", help="The name of a [[notify.sinks]] entry.")],
    config: ConfigOpt,
) -> None:
    """Send one synthetic alert (device edgewatch-notify-test) to a sink; print its answer.

    Exits 1 unless the receiver answered 2xx. For Alertmanager the test alert resolves by
    itself after its resolve_timeout.

    Example: edgewatch notify test --sink oncall --config /etc/edgewatch-cloud/cloud.toml
    """
    from cloud.notify.ops import send_test
    from cloud.service.config import load_config
    from devices.errors import EdgewatchError

    try:
        answer = send_test(load_config(config).notify, sink, time.time())
    except EdgewatchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{sink}: {answer.describe()}")
    if answer.status is None or not 200 <= answer.status < 300:
        raise typer.Exit(1)


@notify_app.command("status")
def status_cmd(
    *,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The aggregator's TOML config: its db and its sinks."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="The store (SQLite file or postgresql:// URL), if not --config's db."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Per sink: deliveries queued and the oldest one's age, last success, last error, dead letters.

    Dead letters are transitions a receiver refused (a 4xx other than 408/429), with its response.

    Example: edgewatch notify status --config /etc/edgewatch-cloud/cloud.toml --json
    """
    from cloud.notify.ops import status, status_json, status_text
    from cloud.ops.cli import _errors, _store
    from cloud.service.config import load_config

    notify = None
    if config is not None:
        with _errors():
            notify = load_config(config).notify
    with _store(db, config) as store:
        statuses = status(store, notify)
    if json_out:
        typer.echo(json.dumps(status_json(statuses), indent=2, ensure_ascii=False))
    else:
        typer.echo(status_text(statuses, time.time()))
