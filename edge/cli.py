"""`edgewatch agent ...`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run and inspect the edge agent on a device.", no_args_is_help=True)
