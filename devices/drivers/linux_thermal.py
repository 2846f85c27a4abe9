"""CPU and SoC temperatures from the Linux thermal sysfs class.

Every zone is `<root>/thermal_zoneN/` with `temp` in millidegrees Celsius and, usually, a `type`
naming the sensor ("cpu-thermal" on a Raspberry Pi, "x86_pkg_temp" on Intel). Metric names:

    temp_<type>        the zone's type, lowercased, runs of other characters turned into "_"
                       ("cpu-thermal" -> "temp_cpu_thermal")
    temp_<type>_<N>    when several zones share a type (two "acpitz" zones -> temp_acpitz_0, ...)
    temp_zone<N>       when the zone has no readable type

With `zones` unset, every zone found is read and one that cannot be read this time (some report
ENODATA while their device sleeps) is skipped with a warning; the read fails only when no zone
could be read. Zones named in `zones` must all read, or the read fails.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from devices.drivers.base import path_param, reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

DRIVER: Final = "linux_thermal"
DEFAULT_ROOT: Final = "/sys/class/thermal"
PARAMS: Final = frozenset({"root", "zones"})
_ZONE_NAME = re.compile(r"thermal_zone(\d+)")
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_METRIC_MAX_LEN: Final = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _ZoneReading:
    zone: str
    number: int
    kind: str
    millidegrees: int


def _zone_number(zone: str) -> int:
    match = _ZONE_NAME.fullmatch(zone)
    return int(match.group(1)) if match else -1


def metric_names(zones: list[tuple[int, str]]) -> list[str]:
    """Metric names for (zone number, type) pairs read together, unique within the read."""
    bases = []
    for number, kind in zones:
        slug = _NOT_NAME_CHARS.sub("_", kind.lower()).strip("_")
        bases.append(f"temp_{slug}" if slug else f"temp_zone{number}")
    counts = Counter(bases)
    names = []
    for (number, _), base in zip(zones, bases, strict=True):
        suffix = f"_{number}" if counts[base] > 1 else ""
        names.append(base[: _METRIC_MAX_LEN - len(suffix)] + suffix)
    return names


class LinuxThermalDriver:
    """Reads `thermal_zone*/temp` under `root` (default /sys/class/thermal)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        self.root = path_param(DRIVER, params, "root", DEFAULT_ROOT)
        zones = params.get("zones")
        self.zones: tuple[str, ...] | None = None
        if zones is not None:
            if (
                isinstance(zones, str)
                or not isinstance(zones, list | tuple)
                or not zones
                or not all(isinstance(z, str) and _ZONE_NAME.fullmatch(z) for z in zones)
            ):
                raise DriverConfigError(
                    f"{DRIVER}: param 'zones' must be a non-empty list of zone names like "
                    f"'thermal_zone0', got {zones!r}"
                )
            self.zones = tuple(dict.fromkeys(zones))

    def _discover(self) -> list[str]:
        try:
            found = [p.name for p in self.root.iterdir() if _ZONE_NAME.fullmatch(p.name)]
        except OSError as exc:
            raise SensorReadError(f"{DRIVER}: cannot list {self.root}: {exc}") from exc
        return sorted(found, key=_zone_number)

    def _read_zone(self, zone: str) -> _ZoneReading:
        base = self.root / zone
        try:
            raw = (base / "temp").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SensorReadError(f"{DRIVER}: cannot read {base / 'temp'}: {exc}") from exc
        try:
            millidegrees = int(raw)
        except ValueError as exc:
            raise SensorReadError(f"{DRIVER}: {base / 'temp'} holds {raw[:40]!r}") from exc
        try:
            kind = (base / "type").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            kind = ""
        return _ZoneReading(zone, _zone_number(zone), kind, millidegrees)

    def read(self) -> list[Measurement]:
        readings: list[_ZoneReading] = []
        if self.zones is not None:
            readings = [self._read_zone(zone) for zone in self.zones]
        else:
            zones = self._discover()
            if not zones:
                raise SensorReadError(f"{DRIVER}: no thermal_zone* under {self.root}")
            errors: list[str] = []
            for zone in zones:
                try:
                    readings.append(self._read_zone(zone))
                except SensorReadError as exc:
                    log.warning("skipping zone: %s", exc)
                    errors.append(str(exc))
            if not readings:
                raise SensorReadError(f"{DRIVER}: no zone of {len(zones)} could be read: {errors[0]}")
        names = metric_names([(r.number, r.kind) for r in readings])
        return [
            Measurement(metric=name, value=r.millidegrees / 1000.0, unit="C")
            for name, r in zip(names, readings, strict=True)
        ]

    def close(self) -> None:
        """Nothing is held open between reads."""
