"""`edgewatch provision`: device credentials, broker ACL entries and the device's agent config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer


def provision_cmd(
    name: Annotated[
        str | None,
        typer.Argument(
            help="The device id (also its broker username). Omit with --role.", show_default=False
        ),
    ] = None,
    *,
    broker: Annotated[
        str,
        typer.Option(
            "--broker",
            help="How the bundle's user reaches the broker, without credentials (mqtts://host:8883).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Bundles are written to OUT/<name>/ (default: BROKER_DIR/bundles).", show_default=False
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="The CA from deploy/make-ca.sh (default: BROKER_DIR/certs).", show_default=False),
    ] = None,
    broker_dir: Annotated[Path, typer.Option(help="Holds the broker's passwd and acl files.")] = Path(
        "/etc/mosquitto/edgewatch"
    ),
    acl: Annotated[
        Path | None, typer.Option(help="The broker's ACL file (default: BROKER_DIR/acl).", show_default=False)
    ] = None,
    role: Annotated[str, typer.Option(help="device, aggregator or viewer.")] = "device",
    client_cert: Annotated[
        bool, typer.Option("--client-cert", help="Authenticate the device with a certificate signed by --ca.")
    ] = False,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Replace the credential (revokes an old client certificate).")
    ] = False,
    install_dir: Annotated[
        str | None,
        typer.Option(
            help="Where the bundle goes on its host (default /etc/edgewatch, or /etc/edgewatch-cloud).",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[str, typer.Option(help="The device's outbox directory.")] = "/var/lib/edgewatch",
    cloud_db: Annotated[
        str, typer.Option(help="The aggregator's database path.")
    ] = "/var/lib/edgewatch-cloud/cloud.db",
    cert_days: Annotated[int, typer.Option(help="Client certificate lifetime.")] = 825,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create a device's (or the aggregator's / viewer's) broker credential and its config bundle.

    Safe to run again: nothing changes unless --rotate. Reload the broker when it says so.

    Example: edgewatch provision pi-1 --broker mqtts://broker.example.com:8883
    """
    from cloud.provision.bundles import ProvisionError, Role, provision

    try:
        try:
            chosen = Role(role)
        except ValueError:
            raise ProvisionError(f"--role must be device, aggregator or viewer, not {role!r}") from None
        result = provision(
            name,
            role=chosen,
            broker_url=broker,
            out_dir=out,
            passwd_file=broker_dir / "passwd",
            acl_file=acl or broker_dir / "acl",
            ca_dir=ca,
            client_cert=client_cert,
            rotate=rotate,
            install_dir=PurePosixPath(install_dir) if install_dir else None,
            state_dir=PurePosixPath(state_dir),
            cloud_db=PurePosixPath(cloud_db),
            cert_days=cert_days,
        )
    except ProvisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    typer.echo(f"{result.role} {result.name}: bundle {result.bundle}/")
    for change in result.changes or ("already provisioned; nothing changed",):
        typer.echo(f"  {change}")
    if rotate:
        typer.echo(
            f"next: install {result.bundle}/ where it is used, then reload the broker "
            "(systemctl reload mosquitto): the old credential is refused from then on"
        )
    elif result.reload_broker:
        typer.echo("next: reload the broker so it re-reads its files: systemctl reload mosquitto")
    if result.role == "device" and result.changes and not rotate:
        typer.echo(f"then: copy {result.bundle}/ to the device and run deploy/install-agent.sh --config DIR")


COMMANDS: list[tuple[Callable[..., Any], str]] = [(provision_cmd, "provision")]
