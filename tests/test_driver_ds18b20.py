"""DS18B20 over w1 sysfs: parsing, the CRC-8, and the driver against a fake device tree.

The w1_slave texts are the kernel's real output as commonly published: a good 23.125 C read, the
85 C power-on-reset scratchpad, the all-ones read of a disconnected sensor (`crc=c9 NO`) and the
all-zero read of a bus held low. Their CRC bytes are checked here with the driver's function and
with a second, independent implementation.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from devices.drivers import create_driver
from devices.drivers.ds18b20 import DS18B20Driver, crc8_maxim, parse_w1_slave
from devices.errors import DriverConfigError, SensorReadError

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON_RESET = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
DISCONNECTED = "ff ff ff ff ff ff ff ff ff : crc=c9 NO\nff ff ff ff ff ff ff ff ff t=-62\n"
ALL_ZERO = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n"


def crc8_msb_first(data: bytes) -> int:
    """The same CRC computed the other way: x^8+x^5+x^4+1 (0x31), MSB-first on reversed bits."""

    def reverse(byte: int) -> int:
        return int(f"{byte:08b}"[::-1], 2)

    crc = 0
    for byte in data:
        crc ^= reverse(byte)
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return reverse(crc)


def w1_slave(scratchpad8: bytes, millidegrees: int, *, verdict: str = "YES") -> str:
    """A w1_slave text for 8 scratchpad bytes; the CRC byte from the independent implementation."""
    hexes = " ".join(f"{b:02x}" for b in [*scratchpad8, crc8_msb_first(scratchpad8)])
    crc = hexes[-2:]
    return f"{hexes} : crc={crc} {verdict}\n{hexes} t={millidegrees}\n"


def put_sensor(root: Path, sensor_id: str, text: str) -> None:
    (root / sensor_id).mkdir(parents=True, exist_ok=True)
    (root / sensor_id / "w1_slave").write_text(text)


# --- CRC-8 ---------------------------------------------------------------------------------------


def test_crc8_matches_published_vectors() -> None:
    # Maxim application note 27's worked ROM example: family 02, serial 00000001B81C -> CRC A2.
    assert crc8_maxim(bytes.fromhex("021cb801000000")) == 0xA2
    assert crc8_maxim(bytes.fromhex("72014b467fff0e10")) == 0x57
    assert crc8_maxim(bytes.fromhex("50054b467fff0c10")) == 0x1C
    assert crc8_maxim(bytes.fromhex("ffffffffffffffff")) == 0xC9
    assert crc8_maxim(b"") == 0


def test_crc8_agrees_with_an_independent_implementation() -> None:
    rng = random.Random(1820)
    for _ in range(500):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        crc = crc8_maxim(data)
        assert crc == crc8_msb_first(data)
        # Appending the CRC makes the whole message check to zero: how 1-Wire masters verify.
        assert crc8_maxim(data + bytes([crc])) == 0


# --- parsing -------------------------------------------------------------------------------------


def test_parses_a_good_read() -> None:
    reading = parse_w1_slave(GOOD)
    assert reading.millidegrees == 23125
    assert reading.scratchpad == bytes.fromhex("72014b467fff0e1057")


def test_negative_temperatures() -> None:
    # -10.125 C is -162 sixteenths: 0xFF5E, count byte 0x10 - 0xE.
    text = w1_slave(bytes.fromhex("5eff4b467fff0210"), -10125)
    assert parse_w1_slave(text).millidegrees == -10125


def test_kernel_crc_no_is_a_read_error() -> None:
    with pytest.raises(SensorReadError, match="CRC check failed"):
        parse_w1_slave(DISCONNECTED)


def test_a_crc_the_kernel_passed_is_checked_again() -> None:
    corrupted = GOOD.replace("72 01 4b", "72 01 4c")
    with pytest.raises(SensorReadError, match="CRC check failed: computed"):
        parse_w1_slave(corrupted)


def test_power_on_reset_value_is_a_read_error() -> None:
    with pytest.raises(SensorReadError, match="power-on-reset"):
        parse_w1_slave(POWER_ON_RESET)


def test_a_real_85_degrees_is_accepted() -> None:
    # A conversion that really gave 85.000 C leaves count byte 0x10, not the reset 0x0C.
    text = w1_slave(bytes.fromhex("50054b467fff1010"), 85000)
    assert parse_w1_slave(text).millidegrees == 85000


def test_all_zero_scratchpad_is_a_read_error() -> None:
    with pytest.raises(SensorReadError, match="all-zero"):
        parse_w1_slave(ALL_ZERO)


@pytest.mark.parametrize(
    "text",
    [
        "",
        GOOD.splitlines()[0],
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 MAYBE\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=\n",
        "72 01 4b 46 7f ff 0e 10 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 t=23125\n",
        GOOD + "extra line\n",
    ],
)
def test_malformed_files_are_read_errors(text: str) -> None:
    with pytest.raises(SensorReadError):
        parse_w1_slave(text)


def test_lines_that_disagree_are_a_read_error() -> None:
    lines = GOOD.splitlines()
    text = lines[0] + "\n" + lines[1].replace("72 01", "73 01") + "\n"
    with pytest.raises(SensorReadError, match="differ"):
        parse_w1_slave(text)


# --- the driver ----------------------------------------------------------------------------------


@pytest.fixture
def w1(tmp_path: Path) -> Path:
    root = tmp_path / "w1" / "devices"
    put_sensor(root, "28-000005e2fdc3", GOOD)
    put_sensor(root, "28-0316a2799fff", w1_slave(bytes.fromhex("5eff4b467fff0210"), -10125))
    (root / "w1_bus_master1").mkdir()
    put_sensor(root, "10-000802b4a6c1", GOOD)  # a DS18S20: not matched by 28-*
    return root


def test_reads_every_ds18b20_found(w1: Path) -> None:
    got = DS18B20Driver({"root": str(w1)}).read()
    assert [(m.metric, m.value, m.unit) for m in got] == [
        ("temp_28-000005e2fdc3", 23.125, "C"),
        ("temp_28-0316a2799fff", -10.125, "C"),
    ]


def test_one_configured_sensor_is_plain_temp(w1: Path) -> None:
    got = DS18B20Driver({"root": str(w1), "sensor_ids": ["28-0316A2799FFF"]}).read()
    assert [(m.metric, m.value) for m in got] == [("temp", -10.125)]


def test_configured_sensors_keep_their_order_and_ids(w1: Path) -> None:
    ids = ["28-0316a2799fff", "10-000802b4a6c1"]
    got = DS18B20Driver({"root": str(w1), "sensor_ids": ids}).read()
    assert [(m.metric, m.value) for m in got] == [
        ("temp_28-0316a2799fff", -10.125),
        ("temp_10-000802b4a6c1", 23.125),
    ]


def test_a_missing_configured_sensor_fails_the_read(w1: Path) -> None:
    driver = DS18B20Driver({"root": str(w1), "sensor_ids": ["28-000005e2fdc3", "28-00000000beef"]})
    with pytest.raises(SensorReadError, match="28-00000000beef") as info:
        driver.read()
    assert isinstance(info.value.__cause__, OSError)


def test_a_failing_configured_sensor_names_itself(w1: Path) -> None:
    put_sensor(w1, "28-000005e2fdc3", DISCONNECTED)
    driver = DS18B20Driver({"root": str(w1), "sensor_ids": ["28-000005e2fdc3"]})
    with pytest.raises(SensorReadError, match="28-000005e2fdc3: CRC check failed"):
        driver.read()


def test_discovery_skips_a_failing_sensor_with_a_warning(w1: Path, caplog: pytest.LogCaptureFixture) -> None:
    put_sensor(w1, "28-000005e2fdc3", POWER_ON_RESET)
    with caplog.at_level(logging.WARNING, logger="devices.drivers.ds18b20"):
        got = DS18B20Driver({"root": str(w1)}).read()
    assert [(m.metric, m.value) for m in got] == [("temp_28-0316a2799fff", -10.125)]
    assert "28-000005e2fdc3" in caplog.text
    assert "power-on-reset" in caplog.text


def test_discovery_fails_when_no_sensor_reads(w1: Path) -> None:
    put_sensor(w1, "28-000005e2fdc3", DISCONNECTED)
    put_sensor(w1, "28-0316a2799fff", ALL_ZERO)
    with pytest.raises(SensorReadError, match="no sensor of 2"):
        DS18B20Driver({"root": str(w1)}).read()


def test_no_devices_or_no_bus_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(SensorReadError, match="no 28-"):
        DS18B20Driver({"root": str(tmp_path)}).read()
    with pytest.raises(SensorReadError, match="cannot list"):
        DS18B20Driver({"root": str(tmp_path / "absent")}).read()


def test_values_follow_the_file(w1: Path) -> None:
    driver = create_driver("ds18b20", {"root": str(w1), "sensor_ids": ["28-000005e2fdc3"]})
    assert driver.read()[0].value == 23.125
    put_sensor(w1, "28-000005e2fdc3", w1_slave(bytes.fromhex("91014b467fff0f10"), 25062))
    assert driver.read()[0].value == 25.062
    driver.close()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"sensor_ids": "28-000005e2fdc3"}, "sensor_ids"),
        ({"sensor_ids": []}, "sensor_ids"),
        ({"sensor_ids": ["28-xyz"]}, "sensor_ids"),
        ({"sensor_ids": ["../../etc"]}, "sensor_ids"),
        ({"root": 3}, "root"),
        ({"root": ""}, "root"),
        ({"sensors": ["28-000005e2fdc3"]}, "sensors"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], param: str) -> None:
    with pytest.raises(DriverConfigError, match=f"'{param}'"):
        DS18B20Driver(params)


def test_building_the_driver_reads_nothing(tmp_path: Path) -> None:
    DS18B20Driver({"root": str(tmp_path / "absent"), "sensor_ids": ["28-000005e2fdc3"]}).close()
