"""`edgewatch simulate` and `edgewatch demo`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from simulators.faults import FAULT_KINDS


def _parse_faults(value: str) -> tuple[str, ...]:
    if value in ("", "none"):
        return ()
    if value == "all":
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise typer.BadParameter(
            f"unknown fault kind {unknown[0]!r}; known: {', '.join(FAULT_KINDS)}, all, none"
        )
    return kinds


def simulate(
    broker: Annotated[str, typer.Option(help="Broker URL, mqtt://host:port.")] = "mqtt://127.0.0.1:1883",
    devices: Annotated[int, typer.Option(min=1, help="Number of simulated devices.")] = 10,
    rate: Annotated[float, typer.Option(min=0.0001, help="Readings per (virtual) second per sensor.")] = 1.0,
    duration: Annotated[float, typer.Option(min=0.1, help="Real seconds to sample for.")] = 60.0,
    speed: Annotated[float, typer.Option(min=0.01, help="Virtual seconds per real second.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same readings and faults.")] = 0,
    faults: Annotated[
        str, typer.Option(help=f"Fault kinds: all, none, or some of {','.join(FAULT_KINDS)}.")
    ] = "all",
    faults_per_day: Annotated[float, typer.Option(help="Faults per stream per virtual day.")] = 2.0,
    first_fault_after: Annotated[
        float, typer.Option(help="Virtual seconds of clean warm-up before faults.")
    ] = 0.0,
    fault_min_gap: Annotated[float, typer.Option(help="Virtual seconds between faults on a stream.")] = 3
    * 3600.0,
    link_outages: Annotated[float, typer.Option(help="Network outages per device over the run.")] = 0.0,
    labels: Annotated[
        Path | None, typer.Option(help="Append each injected fault here once it has begun (JSON lines).")
    ] = None,
    outbox_dir: Annotated[
        Path | None, typer.Option(help="Keep device outboxes here (default: temp).")
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Write the per-device seq summary here (JSON).")
    ] = None,
    outbox_max_bytes: Annotated[int, typer.Option(help="Outbox bound per device.")] = 64 * 1024 * 1024,
    ack_timeout: Annotated[
        float, typer.Option(help="Seconds before an unconfirmed reading is re-sent.")
    ] = 30.0,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for confirmations at the end.")
    ] = 60.0,
    device_prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-0000, PREFIX-0001, ...")] = "sim",
    start: Annotated[
        float | None,
        typer.Option(
            help="Virtual start time, unix seconds; fix it to repeat a run. Default: so that the run "
            "ends now (the virtual clock never runs ahead of the wall clock)."
        ),
    ] = None,
) -> None:
    """Run a fleet of simulated devices through the real agent code (outbox, MQTT, confirmations).

    Example: edgewatch simulate --devices 20 --rate 1 --speed 60 --duration 120 --labels labels.jsonl
    """
    from simulators.fleet import Fleet, FleetSpec

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = FleetSpec(
        broker_url=broker,
        devices=devices,
        rate_hz=rate,
        duration_s=duration,
        speed=speed,
        seed=seed,
        fault_kinds=_parse_faults(faults),
        faults_per_day=faults_per_day,
        first_fault_after_s=first_fault_after,
        fault_min_gap_s=fault_min_gap,
        link_outages=link_outages,
        outbox_dir=outbox_dir,
        outbox_max_bytes=outbox_max_bytes,
        ack_timeout_s=ack_timeout,
        drain_timeout_s=drain_timeout,
        device_prefix=device_prefix,
        start_ts=start if start is not None else time.time() - max(0.0, speed - 1.0) * duration,
        labels_path=labels,
    )
    try:
        fleet = Fleet(spec)
    except Exception as exc:  # config errors name the bad value
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = fleet.run(stop)
    text = result.to_json()
    if summary is not None:
        summary.write_text(text)
    dropped = sum(d.dropped for d in result.devices)
    backlog = sum(d.backlog for d in result.devices)
    typer.echo(
        f"{len(result.devices)} devices sampled {result.sampled} readings "
        f"({dropped} dropped by policy, {backlog} unconfirmed at the end, {result.labels} faults injected)",
        err=True,
    )
    if summary is None:
        sys.stdout.write(text + "\n")


def demo(
    broker: Annotated[
        str | None, typer.Option(help="Use this broker instead of starting one (mqtt://host:port).")
    ] = None,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 12,
    speed: Annotated[float, typer.Option(min=1, help="Virtual seconds per real second.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Same seed, same fleet and faults.")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Database, labels and logs (default ~/.local/share/edgewatch/demo).")
    ] = None,
    broker_kind: Annotated[
        str, typer.Option(help="auto (mosquitto if installed, else amqtt), mosquitto or amqtt.", hidden=True)
    ] = "auto",
    seconds: Annotated[float | None, typer.Option(help="Stop by itself after this many seconds.")] = None,
) -> None:
    """See it work in one command: broker, aggregator, a fleet with faults, alerts live. Ctrl-C stops.

    Example: edgewatch demo
    """
    from rich.console import Console

    from simulators.demo import DemoError, default_data_dir, run_demo

    console = Console(highlight=False)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        shown = run_demo(
            broker_url=broker,
            data_dir=data_dir or default_data_dir(),
            devices=devices,
            speed=speed,
            seed=seed,
            emit=console.print,
            stop=stop,
            broker_kind=broker_kind,
            max_seconds=seconds,
        )
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    db = (data_dir or default_data_dir()) / "demo.db"
    console.print(f"stopped; {shown} alert events shown. Explore: edgewatch alerts list --db {db}")


COMMANDS: list[tuple[Callable[..., Any], str]] = [(simulate, "simulate"), (demo, "demo")]
