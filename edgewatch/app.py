"""The typer application behind `edgewatch`. Sub-apps live with the package that owns the work.

Every sub-app module imports only typer at module level and its heavy dependencies inside the
command body, so `edgewatch agent run` on a Pi never imports river, numpy or aiomqtt.
"""

from __future__ import annotations

import typer

from cloud.analysis import cli as cli_detect
from cloud.notify import cli as cli_notify
from cloud.ops import cli as cli_ops
from cloud.provision import cli as cli_provision
from cloud.service import cli as cloud_cli
from edge import cli as edge_cli
from edgewatch import __version__
from simulators import cli as sim_cli

app = typer.Typer(
    name="edgewatch",
    help="IoT edge telemetry: agent, aggregator, simulators and the operator's view of alerts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgewatch {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """edgewatch: sample sensors into a no-loss outbox, ship them over MQTT, detect anomalies."""


app.add_typer(edge_cli.app, name="agent")
for sub_app, name in (*cloud_cli.SUB_APPS, *cli_ops.SUB_APPS, *cli_notify.SUB_APPS):
    app.add_typer(sub_app, name=name)
for command, name in (
    *cloud_cli.COMMANDS,
    *cli_detect.COMMANDS,
    *sim_cli.COMMANDS,
    *cli_provision.COMMANDS,
):
    app.command(name)(command)
