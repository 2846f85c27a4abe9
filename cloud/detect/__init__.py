"""Detectors by name. The aggregator, `edgewatch detect` and `replay` all go through here."""

from __future__ import annotations

import importlib
import pickle
from typing import Any

from cloud.detect import native as _native

_native.guard()  # before anything imports a compiled module

from cloud.detect.base import StreamDetector, Verdict  # noqa: E402 - after the guard

DEFAULT_DETECTOR = "default"
DETECTORS: dict[str, str] = {
    "default": "cloud.detect.sensor:SensorDetector",
    "sensor": "cloud.detect.sensor:SensorDetector",
    "hst": "cloud.detect.hst:HalfSpaceTreesDetector",
    "gaussian": "cloud.detect.gaussian:GaussianDetector",
    "ewma": "cloud.detect.simple:EwmaDetector",
    "shift": "cloud.detect.shift:ShiftAwareDetector",
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
]
