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
    "default": "cloud.detect.shift:ShiftAwareDetector",
    "sensor": "cloud.detect.sensor:SensorDetector",
    "hst": "cloud.detect.hst:HalfSpaceTreesDetector",
    "gaussian": "cloud.detect.gaussian:GaussianDetector",
    "ewma": "cloud.detect.simple:EwmaDetector",
    "shift": "cloud.detect.shift:ShiftAwareDetector",
}
"""Name -> "module:Class". Only the named module is imported (river only for hst/gaussian)."""


class UnknownDetector(ValueError):
    """No detector is registered under that name."""


def detector_class(name: str) -> Any:
    """The class registered as `name` (its module imported on first use); UnknownDetector if none."""
    target = DETECTORS.get(name)
    if target is None:
        raise UnknownDetector(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def make_detector(name: str = DEFAULT_DETECTOR, *, seed: int = 0) -> StreamDetector:
    detector: StreamDetector = detector_class(name)(seed=seed)
    return detector


CHECKPOINT_FORMAT = 1
_CHECKPOINT_MAGIC = b"edgewatch-checkpoint/"


class CheckpointError(ValueError):
    """A stored checkpoint that cannot be restored: corrupt, from a renamed class or an upgraded
    library, or in a format newer than this code. The stream starts fresh instead."""


def resume_detector(blob: bytes, name: str) -> StreamDetector:
    """A checkpoint of the detector registered as `name`, as that detector is now.

    Until the mean-shift question joined it, `default` was a bare SensorDetector: such a
    checkpoint becomes the inside of today's default (its level, scale and calibration carry
    on; the mean question warms up on the next readings) instead of a stream starting over.
    CheckpointError if the checkpoint is unreadable or holds some other detector.
    """
    detector = detector_from_bytes(blob)
    expected = detector_class(name)
    if isinstance(detector, expected):
        same: StreamDetector = detector
        return same
    if expected.__name__ == "ShiftAwareDetector" and type(detector).__name__ == "SensorDetector":
        upgraded = expected()
        upgraded.inner = detector
        resumed: StreamDetector = upgraded
        return resumed
    held = type(detector).__name__
    raise CheckpointError(f"checkpoint holds a {held}, {name!r} is a {expected.__name__}")


def detector_to_bytes(detector: StreamDetector) -> bytes:
    r"""A checkpoint: `edgewatch-checkpoint/<format>` and a newline, then the detector's bytes.

    The format number lets a later version migrate or refuse old checkpoints cleanly.

    >>> detector_to_bytes(make_detector("ewma")).startswith(b"edgewatch-checkpoint/1\n")
    True
    """
    return b"%s%d\n%s" % (_CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, detector.to_bytes())


def detector_from_bytes(blob: bytes) -> StreamDetector:
    r"""Restore a checkpoint of `detector_to_bytes` (or a bare pickle, format 0, from earlier
    versions); CheckpointError if it cannot be.

    >>> detector_from_bytes(b"edgewatch-checkpoint/9\n...")
    Traceback (most recent call last):
    ...
    cloud.detect.CheckpointError: checkpoint format 9 is newer than this aggregator's (1)
    >>> detector_from_bytes(b"\x80\x05garbage")
    Traceback (most recent call last):
    ...
    cloud.detect.CheckpointError: unreadable checkpoint (format 0): UnpicklingError: ...
    """
    version, body = 0, blob
    if blob.startswith(_CHECKPOINT_MAGIC):
        head, _, body = blob[len(_CHECKPOINT_MAGIC) :].partition(b"\n")
        try:
            version = int(head)
        except ValueError:
            raise CheckpointError(f"unreadable checkpoint header {head[:20]!r}") from None
        if version > CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {version} is newer than this aggregator's ({CHECKPOINT_FORMAT})"
            )
    try:
        detector = pickle.loads(body)  # noqa: S301 - our own checkpoint table
    except Exception as exc:  # corrupt bytes, a renamed class, an upgraded library: all the same
        why = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"unreadable checkpoint (format {version}): {why}") from exc
    if not callable(getattr(detector, "process", None)):
        raise CheckpointError(f"checkpoint holds a {type(detector).__name__}, not a detector")
    restored: StreamDetector = detector
    return restored


__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "CheckpointError",
    "StreamDetector",
    "UnknownDetector",
    "Verdict",
    "detector_class",
    "detector_from_bytes",
    "detector_to_bytes",
    "make_detector",
    "resume_detector",
]
