"""The contract every sensor driver keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from devices.errors import DriverConfigError
from devices.model import Measurement


@runtime_checkable
class SensorDriver(Protocol):
    """Reads one physical or virtual sensor.

    `__init__(params)` validates params and raises DriverConfigError naming the bad one; it does
    not touch hardware, so a config can be checked on a laptop. `read()` returns one or more
    measurements or raises SensorReadError; it must never return NaN or inf (raise instead).
    """

    def __init__(self, params: Mapping[str, Any]) -> None: ...

    def read(self) -> list[Measurement]: ...

    def close(self) -> None: ...


def reject_unknown_params(driver: str, params: Mapping[str, Any], known: Iterable[str]) -> None:
    """A misspelt param must fail at start-up, naming itself and the valid ones."""
    valid = sorted(known)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DriverConfigError(
            f"{driver}: unknown param {', '.join(map(repr, unknown))}; valid params: {', '.join(valid)}"
        )


def path_param(driver: str, params: Mapping[str, Any], key: str, default: str) -> Path:
    """A directory param (tests point drivers at a fake sysfs tree through it)."""
    value = params.get(key, default)
    if not isinstance(value, str | Path) or not str(value):
        raise DriverConfigError(f"{driver}: param {key!r} must be a path, got {value!r}")
    return Path(value)


@runtime_checkable
class DescribesReads(Protocol):
    """A driver that can show what its last read got before conversion to measurements (raw
    register words, node data types); `edgewatch agent sample` prints it under the values."""

    def describe_last_read(self) -> list[str]: ...
