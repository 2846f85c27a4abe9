"""Detectors by name. The aggregator, `edgewatch detect` and `replay` all go through here."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

NATIVE_MODULES = ("cloud.detect.calibrate", "cloud.detect.sensor")
"""Compiled by mypyc at install time where a C compiler is available (see setup.py)."""


class StaleNativeModule(UserWarning):
    """A compiled detector module is older than its source: the source runs instead."""


def _load_sources_if_stale() -> None:
    """Never run a compiled detector whose source has changed since it was compiled (an
    editable checkout builds the modules in place, then someone edits the source): if any
    compiled module's source differs from what setup.py recorded, load all of them from source.
    EDGEWATCH_INTERPRETED=1 asks for the source regardless (profilers, debuggers, and the test
    that compares both forms)."""
    compiled = []
    for name in NATIVE_MODULES:
        spec = importlib.util.find_spec(name)
        if name in sys.modules or spec is None or spec.origin is None or spec.origin.endswith(".py"):
            return
        compiled.append((name, Path(spec.origin).with_name(name.rpartition(".")[2] + ".py")))
    if os.environ.get("EDGEWATCH_INTERPRETED", "") in ("", "0"):
        stale = _changed_since_compiled(compiled)
        if not stale:
            return
        warnings.warn(
            f"compiled {', '.join(stale)} differs from its source: running the source "
            "(reinstall to compile again: scripts/setup.sh)",
            StaleNativeModule,
            stacklevel=2,
        )
    for name, source in compiled:
        loader = importlib.machinery.SourceFileLoader(name, str(source))
        spec = importlib.util.spec_from_loader(name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)


def _changed_since_compiled(compiled: list[tuple[str, Path]]) -> list[str]:
    try:
        recorded = json.loads(Path(__file__).with_name("native-sources.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    return [
        name
        for name, source in compiled
        if recorded.get(source.stem) != hashlib.sha256(source.read_bytes()).hexdigest()
    ]


_load_sources_if_stale()


def native() -> bool:
    """Whether the default detector runs compiled (mypyc) rather than interpreted."""
    origin = importlib.import_module("cloud.detect.sensor").__file__ or ""
    return not origin.endswith(".py")


from cloud.detect.base import StreamDetector, Verdict  # noqa: E402 - after the stale check

DEFAULT_DETECTOR = "default"
DETECTORS: dict[str, str] = {
    "default": "cloud.detect.sensor:SensorDetector",
    "sensor": "cloud.detect.sensor:SensorDetector",
    "hst": "cloud.detect.hst:HalfSpaceTreesDetector",
    "gaussian": "cloud.detect.gaussian:GaussianDetector",
    "ewma": "cloud.detect.simple:EwmaDetector",
}
"""Name -> "module:Class". Only the named module is imported (river only for hst/gaussian)."""


class UnknownDetector(ValueError):
    """No detector is registered under that name."""


def make_detector(name: str = DEFAULT_DETECTOR, *, seed: int = 0) -> StreamDetector:
    target = DETECTORS.get(name)
    if target is None:
        raise UnknownDetector(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    module_name, _, attr = target.partition(":")
    cls: Any = getattr(importlib.import_module(module_name), attr)
    detector: StreamDetector = cls(seed=seed)
    return detector


def detector_from_bytes(blob: bytes) -> StreamDetector:
    """Restore a checkpoint written by `StreamDetector.to_bytes` (our own store only)."""
    detector: StreamDetector = pickle.loads(blob)  # noqa: S301 - our own checkpoint table
    return detector


__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "StreamDetector",
    "UnknownDetector",
    "Verdict",
    "detector_from_bytes",
    "make_detector",
    "native",
]
