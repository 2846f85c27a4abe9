"""`edgewatch cloud ...`, `alerts ...`, `devices ...`: thin commands over cloud/ functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

cloud_app = typer.Typer(help="Run the cloud aggregator.", no_args_is_help=True)

SUB_APPS: list[tuple[typer.Typer, str]] = [(cloud_app, "cloud")]
COMMANDS: list[tuple[Callable[..., Any], str]] = []
