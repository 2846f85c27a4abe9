"""DS18B20 1-Wire thermometers through the kernel's w1_therm sysfs files.

Reading `<root>/28-xxxxxxxxxxxx/w1_slave` makes the kernel run a conversion (up to 750 ms at
12-bit resolution) and print the 9-byte scratchpad twice:

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The kernel's own CRC verdict is trusted only as far as it goes: the Dallas/Maxim CRC-8 is checked
again here, and two readings that pass a CRC are still refused: an all-zero scratchpad (a bus
held low reads as zeros with a valid CRC) and the power-on-reset value, 85.000 C with count byte
0x0C, which a sensor reports when it lost power before converting. A real 85.000 C reading has
count byte 0x10.

Metric names: `temp` when `sensor_ids` names exactly one sensor, else `temp_<sensor id>` (e.g.
`temp_28-000005e2fdc3`), so adding a second sensor never renames the first one's series. With
`sensor_ids` unset every `28-*` device is read and one that fails this time is skipped with a
warning; the read fails only when none could be read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from devices.drivers.base import path_param, reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

DRIVER: Final = "ds18b20"
DEFAULT_ROOT: Final = "/sys/bus/w1/devices"
PARAMS: Final = frozenset({"root", "sensor_ids"})
# family code (28 = DS18B20) and 48-bit serial, as the w1 bus names its devices
SENSOR_ID: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{12}")
POWER_ON_RESET_MILLIDEGREES: Final = 85000
POWER_ON_RESET_COUNT_BYTE: Final = 0x0C
_HEX_BYTES = r"((?:[0-9a-f]{2} ){9})"
_CRC_LINE = re.compile(_HEX_BYTES + r": crc=([0-9a-f]{2}) (YES|NO)")
_TEMP_LINE = re.compile(_HEX_BYTES + r"t=(-?\d+)")

log = logging.getLogger(__name__)


def crc8_maxim(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (x^8 + x^5 + x^4 + 1, reflected 0x8C, initial value 0)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True, slots=True)
class W1Reading:
    """One parsed w1_slave file."""

    scratchpad: bytes
    millidegrees: int


def parse_w1_slave(text: str) -> W1Reading:
    """Parse and check a w1_slave file's text; any doubt is a SensorReadError saying which."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) != 2:
        raise SensorReadError(f"expected 2 lines, got {len(lines)}: {text[:120]!r}")
    crc_line = _CRC_LINE.fullmatch(lines[0])
    if crc_line is None:
        raise SensorReadError(f"unrecognised w1_slave first line: {lines[0][:80]!r}")
    if crc_line.group(3) != "YES":
        raise SensorReadError("CRC check failed")
    temp_line = _TEMP_LINE.fullmatch(lines[1])
    if temp_line is None:
        raise SensorReadError(f"unrecognised w1_slave second line: {lines[1][:80]!r}")
    scratchpad = bytes.fromhex(crc_line.group(1))
    if bytes.fromhex(temp_line.group(1)) != scratchpad:
        raise SensorReadError("the two scratchpad lines differ")
    if crc8_maxim(scratchpad[:8]) != scratchpad[8] or int(crc_line.group(2), 16) != scratchpad[8]:
        raise SensorReadError(
            f"CRC check failed: computed {crc8_maxim(scratchpad[:8]):02x}, "
            f"scratchpad says {scratchpad[8]:02x}"
        )
    if not any(scratchpad):
        raise SensorReadError("all-zero scratchpad (bus held low?)")
    millidegrees = int(temp_line.group(2))
    if millidegrees == POWER_ON_RESET_MILLIDEGREES and scratchpad[6] == POWER_ON_RESET_COUNT_BYTE:
        raise SensorReadError("power-on-reset value 85.000 C: the sensor lost power mid-read")
    return W1Reading(scratchpad, millidegrees)


class DS18B20Driver:
    """Reads DS18B20s on the 1-Wire bus; `sensor_ids` picks some, default every `28-*` device."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        self.root = path_param(DRIVER, params, "root", DEFAULT_ROOT)
        ids = params.get("sensor_ids")
        self.sensor_ids: tuple[str, ...] | None = None
        if ids is not None:
            if (
                isinstance(ids, str)
                or not isinstance(ids, list | tuple)
                or not ids
                or not all(isinstance(i, str) and SENSOR_ID.fullmatch(i.lower()) for i in ids)
            ):
                raise DriverConfigError(
                    f"{DRIVER}: param 'sensor_ids' must be a non-empty list of 1-Wire ids like "
                    f"'28-000005e2fdc3', got {ids!r}"
                )
            self.sensor_ids = tuple(dict.fromkeys(i.lower() for i in ids))

    def _metric(self, sensor_id: str) -> str:
        if self.sensor_ids is not None and len(self.sensor_ids) == 1:
            return "temp"
        return f"temp_{sensor_id}"

    def _read_sensor(self, sensor_id: str) -> Measurement:
        path = self.root / sensor_id / "w1_slave"
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SensorReadError(f"{DRIVER} {sensor_id}: cannot read {path}: {exc}") from exc
        try:
            reading = parse_w1_slave(text)
        except SensorReadError as exc:
            raise SensorReadError(f"{DRIVER} {sensor_id}: {exc}") from exc
        return Measurement(self._metric(sensor_id), reading.millidegrees / 1000.0, "C")

    def _discover(self) -> list[str]:
        try:
            return sorted(
                p.name
                for p in self.root.iterdir()
                if p.name.startswith("28-") and SENSOR_ID.fullmatch(p.name)
            )
        except OSError as exc:
            raise SensorReadError(f"{DRIVER}: cannot list {self.root}: {exc}") from exc

    def read(self) -> list[Measurement]:
        if self.sensor_ids is not None:
            return [self._read_sensor(sensor_id) for sensor_id in self.sensor_ids]
        found = self._discover()
        if not found:
            raise SensorReadError(f"{DRIVER}: no 28-* devices under {self.root}")
        out: list[Measurement] = []
        errors: list[str] = []
        for sensor_id in found:
            try:
                out.append(self._read_sensor(sensor_id))
            except SensorReadError as exc:
                log.warning("skipping sensor: %s", exc)
                errors.append(str(exc))
        if not out:
            raise SensorReadError(f"{DRIVER}: no sensor of {len(found)} could be read: {errors[0]}")
        return out

    def close(self) -> None:
        """Nothing is held open between reads."""
