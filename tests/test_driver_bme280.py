"""BME280: register decoding, compensation against published vectors, and the bus protocol.

Known answers used here:
- Bosch BMP280 datasheet (BST-BMP280-DS001) section 3.12 worked example. The BME280 uses the
  same temperature and pressure compensation: adc_T 519888 -> 25.08 C (t_fine 128422, integer
  result 2508), adc_P 415148 -> 100653.27 Pa. Bosch publishes no humidity example.
- pimoroni/bme280-python tests/test_compensation.py: calibration of a real part with raw
  T 529191, P 326816, H 30281 -> 24.7894877676 C, 1006.61517564 hPa, 68.66996648709039 %RH.
  That library carries t_fine as an unrounded double where the datasheet truncates it, so its
  pressure and humidity differ from the datasheet's in the sixth significant digit.
- senlib's BME280 test: a register dump of a real chip (0x88.. and 0xE1..) with the decoded
  trimming values, which pins the dig_H4/dig_H5 nibble packing.
Humidity is further checked against the datasheet's integer (Q22.10) formula, written out below
as a second, independent implementation.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
from dataclasses import astuple, replace

import pytest

from devices.drivers import create_driver
from devices.drivers.bme280 import (
    CTRL_MEAS_FORCED_X1,
    BME280Driver,
    Calibration,
    compensate,
    unpack_data,
)
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

# --- published vectors ---------------------------------------------------------------------------

DATASHEET_CAL = Calibration(
    27504, 26435, -1000,
    36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
    # No humidity trimming in the BMP280 example; these are the pimoroni part's.
    75, 376, 0, 286, 50, 30,
)  # fmt: skip

PIMORONI_CAL = Calibration(
    28009, 25654, 50,
    39145, -10750, 3024, 5667, -120, -7, 15500, -14600, 6000,
    75, 376, 0, 286, 50, 30,
)  # fmt: skip
PIMORONI_RAW = (529191, 326816, 30281)  # adc_T, adc_P, adc_H

SENLIB_TP = bytes.fromhex("686ee8643200538fabd5d00ba3223500f9ffac260ad8bd10004b")
SENLIB_H = bytes([108, 1, 0, 19, 10, 0, 30])
SENLIB_CAL = Calibration(
    28264, 25832, 50,
    36691, -10837, 3024, 8867, 53, -7, 9900, -10230, 4285,
    75, 364, 0, 314, 0, 30,
)  # fmt: skip


# --- the datasheet's integer formulas (section 4.2.3), an independent reference ------------------


def _cdiv(a: int, b: int) -> int:
    """C's integer division, which truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_temperature(c: Calibration, adc_t: int) -> tuple[int, int]:
    """(T in 0.01 C, t_fine)."""
    var1 = (((adc_t >> 3) - (c.t1 << 1)) * c.t2) >> 11
    var2 = (((((adc_t >> 4) - c.t1) * ((adc_t >> 4) - c.t1)) >> 12) * c.t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def int_pressure(c: Calibration, adc_p: int, t_fine: int) -> int:
    """Pressure in Pa as Q24.8."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.p6
    var2 = var2 + ((var1 * c.p5) << 17)
    var2 = var2 + (c.p4 << 35)
    var1 = ((var1 * var1 * c.p3) >> 8) + ((var1 * c.p2) << 12)
    var1 = (((1 << 47) + var1) * c.p1) >> 33
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.p7 << 4)


def int_humidity(c: Calibration, adc_h: int, t_fine: int) -> int:
    """Humidity in %RH as Q22.10."""
    v = t_fine - 76800
    v = (((adc_h << 14) - (c.h4 << 20) - (c.h5 * v)) + 16384) >> 15
    v = v * (
        (((((((t_fine - 76800) * c.h6) >> 10) * ((((t_fine - 76800) * c.h3) >> 11) + 32768)) >> 10)
          + 2097152) * c.h2 + 8192) >> 14
    )  # fmt: skip
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.h1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


# --- a fake bus ----------------------------------------------------------------------------------


def calibration_registers(c: Calibration) -> tuple[bytes, bytes]:
    """Lay trimming values out the way the chip stores them (datasheet table 16)."""
    tp = struct.pack("<HhhHhhhhhhhhxB", *astuple(c)[:13])
    e4 = (c.h4 >> 4) & 0xFF
    e5 = (c.h4 & 0x0F) | ((c.h5 & 0x0F) << 4)
    e6 = (c.h5 >> 4) & 0xFF
    h = struct.pack("<hB", c.h2, c.h3) + bytes([e4, e5, e6, c.h6 & 0xFF])
    return tp, h


def data_registers(adc_t: int, adc_p: int, adc_h: int) -> bytes:
    press = [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4]
    temp = [adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4]
    return bytes([*press, *temp, adc_h >> 8, adc_h & 0xFF])


class FakeSMBus:
    """Register contents of one BME280 at one address, with a log of what the driver did."""

    def __init__(
        self,
        cal: Calibration,
        raw: tuple[int, int, int],
        *,
        address: int = 0x76,
        chip_id: int = 0x60,
        busy_polls: int = 0,
    ) -> None:
        self.address = address
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        tp, h = calibration_registers(cal)
        self.regs[0x88 : 0x88 + 26] = tp
        self.regs[0xE1 : 0xE1 + 7] = h
        self.regs[0xF7 : 0xF7 + 8] = data_registers(*raw)
        self.busy_polls = busy_polls
        self._busy_left = 0
        self.writes: list[tuple[int, int]] = []
        self.fail_reads = False
        self.closed = False

    def _check(self, i2c_addr: int) -> None:
        if self.closed:
            raise ValueError("bus used after close")
        if i2c_addr != self.address or self.fail_reads:
            raise OSError(121, "Remote I/O error")

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        self._check(i2c_addr)
        if register == 0xF3 and self._busy_left:
            self._busy_left -= 1
            return 0b1000
        return self.regs[register]

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._check(i2c_addr)
        self.writes.append((register, value))
        if register == 0xF4 and value & 0b11 == 0b01:
            self._busy_left = self.busy_polls
        self.regs[register] = value

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        self._check(i2c_addr)
        return list(self.regs[register : register + length])

    def close(self) -> None:
        self.closed = True


def driver_on(fake: FakeSMBus, **params: object) -> tuple[BME280Driver, list[int]]:
    opened: list[int] = []

    def factory(number: int) -> FakeSMBus:
        opened.append(number)
        fake.closed = False
        return fake

    return BME280Driver(params, bus_factory=factory), opened


def values(measurements: list[Measurement]) -> dict[str, float]:
    return {m.metric: m.value for m in measurements}


# --- calibration decoding ------------------------------------------------------------------------


def test_decodes_a_real_register_dump() -> None:
    assert Calibration.from_registers(SENLIB_TP, SENLIB_H) == SENLIB_CAL


@pytest.mark.parametrize(("h4", "h5"), [(286, 50), (-300, -7), (2047, -2048), (-1, 1), (0, 0)])
def test_h4_h5_nibble_packing_round_trips(h4: int, h5: int) -> None:
    cal = replace(PIMORONI_CAL, h4=h4, h5=h5, h6=-3)
    assert Calibration.from_registers(*calibration_registers(cal)) == cal


def test_h4_h5_share_register_0xe5_as_the_datasheet_says() -> None:
    # 0xE4 = 0x12, 0xE5 = 0xA3, 0xE6 = 0x45: H4 = 0x12 << 4 | 0x3, H5 = 0x45 << 4 | 0xA
    tp, _ = calibration_registers(PIMORONI_CAL)
    cal = Calibration.from_registers(tp, bytes([0, 0, 0, 0x12, 0xA3, 0x45, 0]))
    assert (cal.h4, cal.h5) == (0x123, 0x45A)


def test_unpacks_20_bit_and_16_bit_readings() -> None:
    assert unpack_data(data_registers(519888, 415148, 30281)) == (519888, 415148, 30281)
    assert unpack_data(bytes([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x76, 0x49])) == (
        0x7EED0,
        0x655AC,
        0x7649,
    )


# --- compensation against published values -------------------------------------------------------


def test_bosch_datasheet_worked_example() -> None:
    result = compensate(DATASHEET_CAL, 519888, 415148, 30281)
    assert result.temperature_c == pytest.approx(25.08, abs=0.005)
    assert result.pressure_hpa * 100.0 == pytest.approx(100653.27, abs=0.05)
    # The integer path of the same example: 2508 (0.01 C) and t_fine 128422 as printed.
    assert int_temperature(DATASHEET_CAL, 519888) == (2508, 128422)
    assert int_pressure(DATASHEET_CAL, 415148, 128422) / 256.0 == pytest.approx(100653.27, abs=1)


def test_pimoroni_published_vector() -> None:
    result = compensate(PIMORONI_CAL, *PIMORONI_RAW)
    assert result.temperature_c == pytest.approx(24.7894877676, abs=1e-9)
    # The t_fine truncation moves pressure by 0.006 Pa and humidity by 2e-6 %RH.
    assert result.pressure_hpa == pytest.approx(1006.61517564, abs=1e-4)
    assert result.humidity_rh == pytest.approx(68.66996648709039, abs=1e-4)


def test_double_and_integer_formulas_agree_over_the_sensor_range() -> None:
    adc_ts = range(400000, 620001, 20000)  # about -15 .. 60 C with these calibrations
    adc_ps = range(250000, 450001, 25000)
    adc_hs = range(15000, 45001, 5000)
    for cal in (DATASHEET_CAL, PIMORONI_CAL, SENLIB_CAL):
        for adc_t, adc_p, adc_h in itertools.product(adc_ts, adc_ps, adc_hs):
            result = compensate(cal, adc_t, adc_p, adc_h)
            t_centi, t_fine = int_temperature(cal, adc_t)
            assert result.temperature_c == pytest.approx(t_centi / 100.0, abs=0.006)
            assert result.pressure_hpa == pytest.approx(int_pressure(cal, adc_p, t_fine) / 25600.0, abs=0.01)
            assert result.humidity_rh == pytest.approx(int_humidity(cal, adc_h, t_fine) / 1024.0, abs=0.01)
            assert -50.0 < result.temperature_c < 90.0
            assert 0.0 <= result.humidity_rh <= 100.0


def test_humidity_is_clamped_to_0_100() -> None:
    assert compensate(PIMORONI_CAL, 529191, 326816, 0).humidity_rh == 0.0
    assert compensate(PIMORONI_CAL, 529191, 326816, 0xFFFF).humidity_rh == 100.0


# --- the driver over a fake bus ------------------------------------------------------------------


def test_reads_the_pimoroni_vector_through_the_bus() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW)
    driver, opened = driver_on(bus)
    got = driver.read()
    assert [(m.metric, m.unit) for m in got] == [
        ("temperature", "C"),
        ("pressure", "hPa"),
        ("humidity", "%RH"),
    ]
    v = values(got)
    assert v["temperature"] == pytest.approx(24.7894877676, abs=1e-9)
    assert v["pressure"] == pytest.approx(1006.61517564, abs=1e-4)
    assert v["humidity"] == pytest.approx(68.66996648709039, abs=1e-4)
    assert opened == [1]
    # ctrl_hum first (it only latches on the ctrl_meas write), then forced mode at 1x.
    assert bus.writes == [(0xF2, 0x01), (0xF4, CTRL_MEAS_FORCED_X1)]
    assert CTRL_MEAS_FORCED_X1 == 0x25


def test_every_read_triggers_a_new_forced_measurement_on_one_open_bus() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW)
    driver, opened = driver_on(bus)
    driver.read()
    bus.regs[0xF7 : 0xF7 + 8] = data_registers(519888, 415148, 30281)
    assert values(driver.read())["temperature"] == pytest.approx(
        compensate(PIMORONI_CAL, 519888, 415148, 30281).temperature_c
    )
    assert opened == [1]
    assert [w for w in bus.writes if w[0] == 0xF4] == [(0xF4, 0x25), (0xF4, 0x25)]


def test_waits_while_the_status_register_says_measuring() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW, busy_polls=3)
    driver, _ = driver_on(bus)
    assert values(driver.read())["temperature"] == pytest.approx(24.7894877676)


def test_a_measurement_that_never_finishes_is_a_read_error() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW, busy_polls=10_000)
    driver, _ = driver_on(bus)
    with pytest.raises(SensorReadError, match="did not finish"):
        driver.read()


def test_uses_the_configured_bus_and_address() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW, address=0x77)
    driver, opened = driver_on(bus, bus=3, address=0x77)
    assert values(driver.read())["humidity"] == pytest.approx(68.66996648709039, abs=1e-4)
    assert opened == [3]


def test_wrong_chip_id_is_a_read_error_that_names_a_bmp280() -> None:
    driver, _ = driver_on(FakeSMBus(PIMORONI_CAL, PIMORONI_RAW, chip_id=0x58))
    with pytest.raises(SensorReadError, match=r"0x58.*BMP280"):
        driver.read()


def test_blank_calibration_is_a_read_error() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW)
    bus.regs[0x88 : 0x88 + 26] = bytes(26)
    driver, _ = driver_on(bus)
    with pytest.raises(SensorReadError, match="calibration"):
        driver.read()


def test_a_short_block_read_is_a_read_error() -> None:
    class ShortReads(FakeSMBus):
        def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
            return super().read_i2c_block_data(i2c_addr, register, length)[:-1]

    driver, _ = driver_on(ShortReads(PIMORONI_CAL, PIMORONI_RAW))
    with pytest.raises(SensorReadError, match="got 25 bytes from 0x88, want 26"):
        driver.read()


def test_skipped_measurement_reset_values_are_a_read_error() -> None:
    driver, _ = driver_on(FakeSMBus(PIMORONI_CAL, (0x80000, 0x80000, 0x8000)))
    with pytest.raises(SensorReadError, match="no measurement"):
        driver.read()


def test_io_error_becomes_a_read_error_and_the_next_read_starts_over() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW)
    driver, opened = driver_on(bus)
    driver.read()
    bus.fail_reads = True
    with pytest.raises(SensorReadError, match="I/O error") as info:
        driver.read()
    assert isinstance(info.value.__cause__, OSError)
    assert bus.closed
    bus.fail_reads = False
    bus.regs[0x88 : 0x88 + 26], bus.regs[0xE1 : 0xE1 + 7] = calibration_registers(DATASHEET_CAL)
    bus.regs[0xF7 : 0xF7 + 8] = data_registers(519888, 415148, 30281)
    # Reopened, and the calibration read again (the part could have been swapped).
    assert values(driver.read())["pressure"] * 100.0 == pytest.approx(100653.27, abs=0.05)
    assert opened == [1, 1]


def test_opening_the_bus_failing_is_a_read_error() -> None:
    def factory(number: int) -> FakeSMBus:
        raise FileNotFoundError(2, "No such file or directory", f"/dev/i2c-{number}")

    driver = BME280Driver({}, bus_factory=factory)
    with pytest.raises(SensorReadError, match="i2c-1"):
        driver.read()


def test_real_smbus2_on_a_missing_bus_is_a_read_error() -> None:
    pytest.importorskip("smbus2")
    driver = create_driver("bme280", {"bus": 987})
    with pytest.raises(SensorReadError, match="I/O error"):
        driver.read()
    driver.close()


def test_close_closes_the_bus_and_is_idempotent() -> None:
    bus = FakeSMBus(PIMORONI_CAL, PIMORONI_RAW)
    driver, _ = driver_on(bus)
    driver.read()
    driver.close()
    driver.close()
    assert bus.closed


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bus": -1}, "bus"),
        ({"bus": True}, "bus"),
        ({"bus": "1"}, "bus"),
        ({"address": 0x50}, "address"),
        ({"address": "0x76"}, "address"),
        ({"address": True}, "address"),
        ({"adress": 0x76}, "adress"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], param: str) -> None:
    with pytest.raises(DriverConfigError, match=f"'{param}'"):
        BME280Driver(params)


def test_building_the_driver_touches_no_bus() -> None:
    def factory(number: int) -> FakeSMBus:
        raise AssertionError("bus opened in __init__")

    BME280Driver({"bus": 0, "address": 0x77}, bus_factory=factory).close()


def test_importing_the_module_does_not_import_smbus2() -> None:
    code = "import sys, devices.drivers.bme280; print('smbus2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
