"""Sensor drivers, found by name.

Built-in drivers are an explicit table of import paths, imported only when a config names one, so
an agent that reads one thermal zone never imports smbus2. Drivers outside this package register
under the `edgewatch.drivers` entry-point group (the simulators do); they too load lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from devices.drivers.base import SensorDriver
from devices.errors import DriverConfigError, UnknownDriver

BUILTIN_DRIVERS: dict[str, str] = {
    "linux_thermal": "devices.drivers.linux_thermal:LinuxThermalDriver",
    "system": "devices.drivers.system:SystemDriver",
    "ds18b20": "devices.drivers.ds18b20:DS18B20Driver",
    "bme280": "devices.drivers.bme280:BME280Driver",
    "command": "devices.drivers.command:CommandDriver",
    "modbus": "devices.drivers.modbus:ModbusDriver",
    "opcua": "devices.drivers.opcua:OpcUaDriver",
}
ENTRY_POINT_GROUP = "edgewatch.drivers"


def _plugin_drivers() -> dict[str, str]:
    from importlib.metadata import entry_points  # noqa: PLC0415 - ~40 ms, only for plugins

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_drivers() -> list[str]:
    return sorted({*BUILTIN_DRIVERS, *_plugin_drivers()})


def driver_class(name: str) -> type[SensorDriver]:
    target = BUILTIN_DRIVERS.get(name) or _plugin_drivers().get(name)
    if target is None:
        raise UnknownDriver(f"unknown driver {name!r}; known drivers: {', '.join(known_drivers())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownDriver(f"driver {name!r} cannot be loaded ({exc}); is its extra installed?") from exc
    cls: type[SensorDriver] = getattr(module, attr)
    return cls


def create_driver(name: str, params: Mapping[str, Any]) -> SensorDriver:
    """Build a driver from its config params; bad params raise DriverConfigError."""
    cls = driver_class(name)
    try:
        return cls(params)
    except DriverConfigError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise DriverConfigError(f"driver {name!r}: {exc}") from exc


__all__ = ["BUILTIN_DRIVERS", "SensorDriver", "create_driver", "driver_class", "known_drivers"]
