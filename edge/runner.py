"""Running the agent as a process: logging, signals, exit codes.

`edgewatch agent run` lands here through the typer CLI, or, on a device, through a fast path in
`edgewatch.cli.main` that skips typer (and the pydantic it loads): ~10 MB less resident memory
on a Pi Zero 2, where the agent's budget is 30 MB.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from devices.errors import EdgewatchError
from edge.agent import Agent
from edge.config import load_config

log = logging.getLogger("edgewatch.agent")


def run_agent(config_path: Path, log_level: str = "info") -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 2 with a message on a config/outbox error."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if log_level.lower() != "debug":
        # The drivers raise what these libraries log (a Modbus timeout, an OPC UA reconnect), and
        # the agent logs a failing sensor once per new error; the libraries would log every read.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        cfg = load_config(config_path)
        agent = Agent(cfg)
    except EdgewatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    log.info(
        "agent %s epoch %s: %d sensors, outbox %s (backlog %d)",
        cfg.device_id,
        agent.outbox.epoch,
        len(cfg.sensors),
        cfg.outbox.path,
        agent.outbox.backlog,
    )
    try:
        agent.run(stop)
    except EdgewatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    """`agent run` options without typer; keep them the same as edge.cli's `run`."""
    parser = argparse.ArgumentParser(prog="edgewatch agent run", add_help=False)
    parser.add_argument("--config", "-c", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    return run_agent(args.config, args.log_level)
