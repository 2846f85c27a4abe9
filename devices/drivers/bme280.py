"""Bosch BME280 temperature, pressure and humidity over I2C (smbus2, the `i2c` extra).

Each read is one forced-mode measurement at 1x oversampling with the IIR filter off, the
datasheet's "weather monitoring" setting (section 3.5.1): the sensor sleeps between reads and
self-heating stays negligible. The chip id and factory calibration are read on the first read
and again after any I/O error, so a sensor that was swapped or browned out is picked up.

Compensation is the datasheet's double-precision code (section 8.1), including its truncation
of t_fine to an integer, so results match Bosch's reference to the last digit.

Metrics: `temperature` (C), `pressure` (hPa), `humidity` (%RH).
"""

from __future__ import annotations

import contextlib
import math
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from devices.drivers.base import reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

DRIVER: Final = "bme280"
PARAMS: Final = frozenset({"bus", "address"})
ADDRESSES: Final = (0x76, 0x77)
CHIP_ID: Final = 0x60
BMP280_CHIP_ID: Final = 0x58

REG_CALIB_TP: Final = 0x88  # 0x88..0xA1: dig_T1..dig_P9, a reserved byte, dig_H1
REG_CHIP_ID: Final = 0xD0
REG_CALIB_H: Final = 0xE1  # 0xE1..0xE7: dig_H2..dig_H6
REG_CTRL_HUM: Final = 0xF2
REG_STATUS: Final = 0xF3
REG_CTRL_MEAS: Final = 0xF4
REG_DATA: Final = 0xF7  # 0xF7..0xFE: press[3], temp[3], hum[2]

CTRL_HUM_X1: Final = 0b001
# osrs_t = x1 (bits 7:5), osrs_p = x1 (bits 4:2), mode = forced (bits 1:0)
CTRL_MEAS_FORCED_X1: Final = (0b001 << 5) | (0b001 << 2) | 0b01
STATUS_MEASURING: Final = 0b1000
STATUS_IM_UPDATE: Final = 0b0001
# Datasheet section 9.1: at 1x oversampling of all three a measurement takes at most 9.3 ms.
MEASURE_MAX_S: Final = 0.0093
POLL_S: Final = 0.002
POLLS: Final = 25
# What the data registers hold when a measurement was skipped or never ran.
SKIPPED_20BIT: Final = 0x80000
SKIPPED_16BIT: Final = 0x8000


class SMBusLike(Protocol):
    """The part of smbus2.SMBus this driver uses; tests pass a fake with register contents."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def close(self) -> None: ...


BusFactory = Callable[[int], SMBusLike]


def open_smbus(bus: int) -> SMBusLike:
    """Open /dev/i2c-<bus>; smbus2 is imported only here, so only I2C users need it."""
    try:
        import smbus2  # noqa: PLC0415
    except ImportError as exc:
        raise SensorReadError(
            f"{DRIVER}: smbus2 is not installed; install the 'edgewatch[i2c]' extra"
        ) from exc
    return smbus2.SMBus(bus)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The factory trimming parameters (datasheet table 16)."""

    t1: int
    t2: int
    t3: int
    p1: int
    p2: int
    p3: int
    p4: int
    p5: int
    p6: int
    p7: int
    p8: int
    p9: int
    h1: int
    h2: int
    h3: int
    h4: int
    h5: int
    h6: int

    @classmethod
    def from_registers(cls, tp: bytes, h: bytes) -> Calibration:
        """Decode 26 bytes from 0x88 and 7 bytes from 0xE1."""
        if len(tp) != 26 or len(h) != 7:
            raise ValueError(f"calibration blocks of {len(tp)} and {len(h)} bytes, want 26 and 7")
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1 = struct.unpack("<HhhHhhhhhhhhxB", tp)
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", h)
        # dig_H4 and dig_H5 are signed 12-bit values sharing register 0xE5: H4 is 0xE4 then the
        # low nibble of 0xE5, H5 is 0xE6 then the high nibble of 0xE5.
        h4 = (e4 << 4) | (e5 & 0x0F)
        h5 = (e6 << 4) | (e5 >> 4)
        return cls(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6)


@dataclass(frozen=True, slots=True)
class Compensated:
    """One measurement in physical units."""

    temperature_c: float
    pressure_hpa: float
    humidity_rh: float


def compensate(cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> Compensated:
    """The datasheet's double-precision compensation (BME280 datasheet section 8.1)."""
    var1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    var2 = (adc_t / 131072.0 - cal.t1 / 8192.0) ** 2 * cal.t3
    t_fine = int(var1 + var2)  # the datasheet's (BME280_S32_t) cast truncates
    temperature = (var1 + var2) / 5120.0

    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.p6 / 32768.0
    var2 = var2 + var1 * cal.p5 * 2.0
    var2 = var2 / 4.0 + cal.p4 * 65536.0
    var1 = (cal.p3 * var1 * var1 / 524288.0 + cal.p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.p1
    if var1 == 0.0:
        raise SensorReadError(f"{DRIVER}: pressure compensation divides by zero (dig_P1 = 0?)")
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.p9 * p * p / 2147483648.0
    var2 = p * cal.p8 / 32768.0
    pressure_pa = p + (var1 + var2 + cal.p7) / 16.0

    h = t_fine - 76800.0
    h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * h)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * h * (1.0 + cal.h3 / 67108864.0 * h))
    )
    h = h * (1.0 - cal.h1 * h / 524288.0)
    humidity = min(100.0, max(0.0, h))
    return Compensated(temperature, pressure_pa / 100.0, humidity)


def unpack_data(data: bytes) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) from the 8 data registers 0xF7..0xFE."""
    adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    adc_h = (data[6] << 8) | data[7]
    return adc_t, adc_p, adc_h


class BME280Driver:
    """A BME280 at `address` (0x76 or 0x77) on /dev/i2c-`bus` (default 1, a Pi's header)."""

    def __init__(self, params: Mapping[str, Any], *, bus_factory: BusFactory | None = None) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        bus = params.get("bus", 1)
        if isinstance(bus, bool) or not isinstance(bus, int) or bus < 0:
            raise DriverConfigError(f"{DRIVER}: param 'bus' must be an I2C bus number, got {bus!r}")
        address = params.get("address", ADDRESSES[0])
        if isinstance(address, bool) or address not in ADDRESSES:
            raise DriverConfigError(
                f"{DRIVER}: param 'address' must be 0x76 or 0x77 (118 or 119), got {address!r}"
            )
        self.bus_number: int = bus
        self.address: int = address
        self._bus_factory: BusFactory = bus_factory or open_smbus
        self._bus: SMBusLike | None = None
        self._calibration: Calibration | None = None

    @property
    def _where(self) -> str:
        return f"{DRIVER} at i2c-{self.bus_number} 0x{self.address:02x}"

    def _wait_status_clear(self, bus: SMBusLike, bit: int, what: str) -> None:
        for _ in range(POLLS):
            if not bus.read_byte_data(self.address, REG_STATUS) & bit:
                return
            time.sleep(POLL_S)
        raise SensorReadError(f"{self._where}: {what} did not finish")

    def _block(self, bus: SMBusLike, register: int, length: int) -> bytes:
        data = bytes(bus.read_i2c_block_data(self.address, register, length))
        if len(data) != length:
            raise SensorReadError(
                f"{self._where}: got {len(data)} bytes from 0x{register:02x}, want {length}"
            )
        return data

    def _setup(self, bus: SMBusLike) -> Calibration:
        chip = bus.read_byte_data(self.address, REG_CHIP_ID)
        if chip != CHIP_ID:
            hint = " (a BMP280, which has no humidity sensor)" if chip == BMP280_CHIP_ID else ""
            raise SensorReadError(f"{self._where}: chip id 0x{chip:02x}{hint}, want 0x{CHIP_ID:02x}")
        self._wait_status_clear(bus, STATUS_IM_UPDATE, "calibration copy from NVM")
        cal = Calibration.from_registers(self._block(bus, REG_CALIB_TP, 26), self._block(bus, REG_CALIB_H, 7))
        if cal.t1 == 0 or cal.p1 == 0 or cal.t1 == 0xFFFF or cal.p1 == 0xFFFF:
            raise SensorReadError(f"{self._where}: calibration data is blank")
        return cal

    def _measure(self) -> list[Measurement]:
        if self._bus is None:
            self._bus = self._bus_factory(self.bus_number)
        bus = self._bus
        if self._calibration is None:
            self._calibration = self._setup(bus)
        # ctrl_hum only takes effect with the following ctrl_meas write (datasheet 5.4.3).
        bus.write_byte_data(self.address, REG_CTRL_HUM, CTRL_HUM_X1)
        bus.write_byte_data(self.address, REG_CTRL_MEAS, CTRL_MEAS_FORCED_X1)
        time.sleep(MEASURE_MAX_S)
        self._wait_status_clear(bus, STATUS_MEASURING, "measurement")
        adc_t, adc_p, adc_h = unpack_data(self._block(bus, REG_DATA, 8))
        if SKIPPED_20BIT in (adc_t, adc_p) or adc_h == SKIPPED_16BIT:
            raise SensorReadError(f"{self._where}: the data registers hold no measurement")
        result = compensate(self._calibration, adc_t, adc_p, adc_h)
        values = (result.temperature_c, result.pressure_hpa, result.humidity_rh)
        if not all(math.isfinite(v) for v in values):
            raise SensorReadError(f"{self._where}: compensation gave {values}")
        return [
            Measurement("temperature", result.temperature_c, "C"),
            Measurement("pressure", result.pressure_hpa, "hPa"),
            Measurement("humidity", result.humidity_rh, "%RH"),
        ]

    def read(self) -> list[Measurement]:
        try:
            return self._measure()
        except OSError as exc:
            # Start over on the next read: reopen the bus and re-read chip id and calibration.
            self.close()
            raise SensorReadError(f"{self._where}: I/O error: {exc}") from exc

    def close(self) -> None:
        bus, self._bus, self._calibration = self._bus, None, None
        if bus is not None:
            # Closing a bus that already failed: there is nothing left to release.
            with contextlib.suppress(OSError):
                bus.close()
