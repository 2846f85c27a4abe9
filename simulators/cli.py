"""`edgewatch simulate` and `edgewatch demo`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COMMANDS: list[tuple[Callable[..., Any], str]] = []
