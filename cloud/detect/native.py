"""The default detector's compiled form (mypyc, built by setup.py) and when not to use it.

An editable checkout compiles in place; if someone then edits the source, the compiled module
would silently run yesterday's code. setup.py records the digests of the sources it compiled
(native-sources.json, installed next to them); `guard` loads every compiled module from its
source instead when any source differs, with a warning. EDGEWATCH_INTERPRETED=1 runs the
source regardless (profilers, debuggers, and the test that compares both forms).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

MODULES = ("cloud.detect.calibrate", "cloud.detect.sensor", "cloud.detect.shift")
DIGESTS = Path(__file__).with_name("native-sources.json")


class StaleNativeModule(UserWarning):
    """A compiled detector module differs from its source: the source runs instead."""


def guard() -> None:
    """Load the compiled modules' sources if any changed since compiling (or if asked to)."""
    compiled = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if name in sys.modules or spec is None or spec.origin is None or spec.origin.endswith(".py"):
            return
        compiled.append((name, Path(spec.origin).with_name(name.rpartition(".")[2] + ".py")))
    if os.environ.get("EDGEWATCH_INTERPRETED", "") in ("", "0"):
        stale = _changed(compiled)
        if not stale:
            return
        warnings.warn(
            f"compiled {', '.join(stale)} differs from its source: running the source "
            "(reinstall to compile again: scripts/setup.sh)",
            StaleNativeModule,
            stacklevel=3,
        )
    for name, source in compiled:
        loader = importlib.machinery.SourceFileLoader(name, str(source))
        spec = importlib.util.spec_from_loader(name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)


def _changed(compiled: list[tuple[str, Path]]) -> list[str]:
    try:
        recorded = json.loads(DIGESTS.read_text())
    except (OSError, ValueError):
        recorded = {}
    return [
        name
        for name, source in compiled
        if recorded.get(source.stem) != hashlib.sha256(source.read_bytes()).hexdigest()
    ]


def compiled() -> bool:
    """Whether the default detector runs compiled rather than interpreted."""
    return all(
        not (importlib.import_module(name).__file__ or "").endswith(".py") for name in MODULES
    )
