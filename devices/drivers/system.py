"""The host's own health: CPU, load, memory, disk and, if asked, CPU temperature (via psutil).

    cpu_percent      %   CPU busy time since the previous read (the first read: since the driver
                         was built), all cores together
    load1                1-minute load average
    memory_percent   %   memory in use, i.e. not available to new processes
    disk_percent     %   space used on the filesystem holding `path` (default "/")
    cpu_temp         C   the CPU sensor psutil reports (Pi, Intel, AMD); not read by default

CPU use is computed from this driver's own `cpu_times()` samples, not `psutil.cpu_percent()`,
whose single process-wide baseline would be shared with (and reset by) any other caller. Like
`cpu_percent(interval=None)` it never blocks. psutil is imported only when a driver is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from devices.drivers.base import reject_unknown_params
from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement

DRIVER: Final = "system"
PARAMS: Final = frozenset({"metrics", "path"})
UNITS: Final[Mapping[str, str]] = {
    "cpu_percent": "%",
    "load1": "",
    "memory_percent": "%",
    "disk_percent": "%",
    "cpu_temp": "C",
}
DEFAULT_METRICS: Final = ("cpu_percent", "load1", "memory_percent", "disk_percent")
# psutil.sensors_temperatures() chip names that measure the CPU, best first: Raspberry Pi and
# other SoCs, Intel, AMD, then the ACPI zone as a last resort.
CPU_TEMP_CHIPS: Final = (
    "cpu_thermal",
    "cpu-thermal",
    "soc_thermal",
    "coretemp",
    "k10temp",
    "zenpower",
    "acpitz",
)


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds the way psutil and htop count them."""
    # Linux already counts guest time inside user and nice.
    total = float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    busy = total - times.idle - getattr(times, "iowait", 0.0)
    return busy, total


def _cpu_temperature(sensors: Mapping[str, Sequence[Any]]) -> float:
    for chip in CPU_TEMP_CHIPS:
        entries = sensors.get(chip) or ()
        # coretemp lists "Package id 0" and then each core; the package is the one to report.
        package = [e for e in entries if str(getattr(e, "label", "")).startswith("Package")]
        for entry in package or entries:
            return float(entry.current)
    found = ", ".join(sensors) or "none"
    raise SensorReadError(f"{DRIVER}: cpu_temp: no CPU sensor among psutil's temperature sensors ({found})")


class SystemDriver:
    """Host metrics via psutil; `metrics` picks a subset, `path` the filesystem for disk_percent."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        reject_unknown_params(DRIVER, params, PARAMS)
        metrics = params.get("metrics", DEFAULT_METRICS)
        valid = ", ".join(UNITS)
        if isinstance(metrics, str) or not isinstance(metrics, list | tuple) or not metrics:
            raise DriverConfigError(f"{DRIVER}: param 'metrics' must be a non-empty list drawn from: {valid}")
        for name in metrics:
            if not isinstance(name, str) or name not in UNITS:
                raise DriverConfigError(
                    f"{DRIVER}: param 'metrics' has unknown metric {name!r}; valid metrics: {valid}"
                )
        self.metrics: tuple[str, ...] = tuple(dict.fromkeys(metrics))
        path = params.get("path", "/")
        if not isinstance(path, str) or not path:
            raise DriverConfigError(f"{DRIVER}: param 'path' must be a path, got {path!r}")
        self.path = path

        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415  (keeps the import cheap)

        self._psutil: Any = psutil
        self._cpu_last: tuple[float, float] | None = None
        self._cpu_value = 0.0
        if "cpu_percent" in self.metrics:
            # The baseline the first read measures against; reads /proc/stat, no hardware.
            self._cpu_last = _busy_total(psutil.cpu_times())

    def _cpu_percent(self) -> float:
        busy, total = _busy_total(self._psutil.cpu_times())
        last_busy, last_total = self._cpu_last or (0.0, 0.0)
        self._cpu_last = (busy, total)
        if total > last_total:
            # Counters can step backwards a little on some kernels; clamp like psutil does.
            share = (busy - last_busy) / (total - last_total)
            self._cpu_value = min(100.0, max(0.0, share * 100.0))
        return self._cpu_value

    def _value(self, metric: str) -> float:
        ps = self._psutil
        if metric == "cpu_percent":
            return self._cpu_percent()
        if metric == "load1":
            return float(ps.getloadavg()[0])
        if metric == "memory_percent":
            return float(ps.virtual_memory().percent)
        if metric == "disk_percent":
            return float(ps.disk_usage(self.path).percent)
        sensors = getattr(ps, "sensors_temperatures", None)
        return _cpu_temperature(sensors() if sensors is not None else {})

    def read(self) -> list[Measurement]:
        out: list[Measurement] = []
        for metric in self.metrics:
            try:
                value = self._value(metric)
            except (OSError, self._psutil.Error) as exc:
                raise SensorReadError(f"{DRIVER}: {metric}: {exc}") from exc
            if not math.isfinite(value):
                raise SensorReadError(f"{DRIVER}: {metric}: psutil returned {value}")
            out.append(Measurement(metric=metric, value=value, unit=UNITS[metric]))
        return out

    def close(self) -> None:
        """Nothing is held open between reads."""
