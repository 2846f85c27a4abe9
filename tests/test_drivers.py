"""The driver registry, and the contract every built-in driver keeps (one suite, every driver)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devices.drivers import BUILTIN_DRIVERS, create_driver, driver_class, known_drivers
from devices.drivers.base import SensorDriver
from devices.errors import DriverConfigError, SensorReadError, UnknownDriver
from devices.model import Measurement


def _thermal(tmp: Path) -> dict[str, Any]:
    zone = tmp / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("45000\n")
    (zone / "type").write_text("cpu-thermal\n")
    return {"root": str(tmp)}


def _ds18b20(tmp: Path) -> dict[str, Any]:
    sensor = tmp / "28-000005e2fdc3"
    sensor.mkdir()
    (sensor / "w1_slave").write_text(
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    )
    return {"root": str(tmp)}


def _command(tmp: Path) -> dict[str, Any]:
    return {"argv": [sys.executable, "-c", "print(1.5)"]}


def _system(tmp: Path) -> dict[str, Any]:
    return {"path": str(tmp)}


# Params that read successfully on any Linux test host (bme280 needs a bus: its own tests).
READABLE: dict[str, Callable[[Path], dict[str, Any]]] = {
    "linux_thermal": _thermal,
    "ds18b20": _ds18b20,
    "command": _command,
    "system": _system,
}
# Params that are valid without any hardware or files present.
MINIMAL: dict[str, dict[str, Any]] = {
    "linux_thermal": {},
    "system": {},
    "ds18b20": {},
    "bme280": {},
    "command": {"argv": ["true"]},
    "modbus": {"transport": "tcp", "host": "127.0.0.1", "registers": [{"address": 0, "metric": "m"}]},
    "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840/", "nodes": [{"node_id": "ns=2;i=2", "metric": "m"}]},
}
# One invalid param per driver, and the param name the error must carry.
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("linux_thermal", {"zones": "thermal_zone0"}, "zones"),
    ("linux_thermal", {"root": 7}, "root"),
    ("system", {"metrics": ["cpu"]}, "metrics"),
    ("system", {"path": None}, "path"),
    ("ds18b20", {"sensor_ids": ["nope"]}, "sensor_ids"),
    ("bme280", {"address": 0x40}, "address"),
    ("bme280", {"bus": "i2c-1"}, "bus"),
    ("command", {"argv": ["true"], "timeout_s": 0}, "timeout_s"),
    ("command", {"command": "a 'b"}, "command"),
    (
        "modbus",
        {"transport": "tcp", "host": "h", "registers": [{"address": 0, "type": "f32", "metric": "m"}]},
        "registers[0].type",
    ),
    (
        "opcua",
        {"endpoint": "opc.tcp://plc/", "nodes": [{"node_id": "Line1", "metric": "m"}]},
        "nodes[0].node_id",
    ),
]


def test_unknown_driver_lists_the_known_ones() -> None:
    with pytest.raises(UnknownDriver) as info:
        create_driver("nope", {})
    message = str(info.value)
    assert "'nope'" in message
    for name in BUILTIN_DRIVERS:
        assert name in message


def test_known_drivers_include_every_builtin() -> None:
    assert set(BUILTIN_DRIVERS) <= set(known_drivers())


def test_every_table_entry_has_a_minimal_config_here() -> None:
    assert set(MINIMAL) == set(BUILTIN_DRIVERS)


@pytest.mark.parametrize("name", sorted(BUILTIN_DRIVERS))
def test_every_builtin_resolves_and_builds_without_hardware(name: str) -> None:
    cls = driver_class(name)
    assert cls.__name__ == BUILTIN_DRIVERS[name].partition(":")[2]
    driver = create_driver(name, MINIMAL[name])
    assert isinstance(driver, SensorDriver)
    driver.close()
    driver.close()  # idempotent


@pytest.mark.parametrize(("name", "params", "param"), BAD)
def test_bad_params_raise_config_errors_naming_the_param(
    name: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(DriverConfigError, match=re.escape(f"'{param}'")) as info:
        create_driver(name, params)
    assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(BUILTIN_DRIVERS))
def test_unknown_params_are_rejected_by_name(name: str) -> None:
    with pytest.raises(DriverConfigError, match="'intervall'"):
        create_driver(name, {**MINIMAL[name], "intervall": 10})


@pytest.mark.parametrize("name", sorted(READABLE))
def test_reads_are_finite_measurements(name: str, tmp_path: Path) -> None:
    driver = create_driver(name, READABLE[name](tmp_path))
    try:
        for _ in range(2):
            got = driver.read()
            assert got
            assert all(isinstance(m, Measurement) for m in got)
            assert all(math.isfinite(m.value) for m in got)
            assert all(0 < len(m.metric) <= 64 and len(m.unit) <= 64 for m in got)
            assert len({m.metric for m in got}) == len(got)
    finally:
        driver.close()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("linux_thermal", {"root": "/nonexistent/thermal"}),
        ("ds18b20", {"root": "/nonexistent/w1"}),
        ("command", {"argv": ["/nonexistent/probe"]}),
        ("system", {"path": "/nonexistent/mount"}),
    ],
)
def test_failed_reads_are_sensor_read_errors(name: str, params: dict[str, Any]) -> None:
    driver = create_driver(name, params)
    with pytest.raises(SensorReadError):
        driver.read()
    driver.close()


# What drivers import only when they read (or connect), never when the module loads.
HEAVY = ("psutil", "smbus2", "pymodbus", "serial", "asyncua")


def test_importing_every_builtin_module_is_cheap() -> None:
    modules = sorted({target.partition(":")[0] for target in BUILTIN_DRIVERS.values()})
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def readme_sensor_examples() -> list[dict[str, Any]]:
    """The [[sensors]] tables of the README's TOML examples (they must stay valid configs)."""
    import tomllib

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    return [s for block in blocks for s in tomllib.loads(block).get("sensors", [])]


def test_the_readme_driver_examples_build() -> None:
    sensors = readme_sensor_examples()
    assert {"modbus", "opcua", "bme280", "command"} <= {s["driver"] for s in sensors}
    for sensor in sensors:
        driver = create_driver(sensor["driver"], sensor.get("params", {}))
        if sensor["driver"] == "modbus":  # the README says what the meter's map costs
            assert [b.describe() for b in driver.blocks] == [
                "input 0-1",
                "input 6-7",
                "input 12-13",
                "input 70-73",
            ]
        driver.close()
