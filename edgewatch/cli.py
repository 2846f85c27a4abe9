"""Entry point of the `edgewatch` command.

`edgewatch agent run` takes a fast path that does not import typer: on a device the agent is
the only command that runs for long, and its memory budget is tight. Everything else, including
`edgewatch agent run --help`, goes through the typer app in edgewatch.app.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"] and not {"--help", "-h"} & set(argv):
        from edge.runner import main as run_agent_main

        sys.exit(run_agent_main(argv[2:]))
    from edgewatch.app import app

    app()
