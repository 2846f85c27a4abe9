"""Host metrics: known values through a stubbed psutil, and a smoke read of the real host."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import namedtuple
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from devices.drivers import create_driver
from devices.drivers.system import SystemDriver
from devices.errors import DriverConfigError, SensorReadError

CpuTimes = namedtuple(
    "CpuTimes",
    "user nice system idle iowait irq softirq steal guest guest_nice",
)
Temp = namedtuple("Temp", "label current high critical")
Memory = namedtuple("Memory", "total available percent")
Disk = namedtuple("Disk", "total used free percent")


class FakeHost:
    """Stands in for psutil's host-reading functions; its fields are what the host 'reports'."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # user includes guest on Linux: 5 s of the 130 are guest time, not to be counted twice.
        self.cpu = [
            CpuTimes(100.0, 0.0, 50.0, 800.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            CpuTimes(130.0, 0.0, 60.0, 850.0, 60.0, 0.0, 0.0, 0.0, 5.0, 0.0),
        ]
        self.memory_percent = 63.5
        self.disk_percent = 71.2
        self.disk_paths: list[str] = []
        self.temps: dict[str, list[Temp]] = {}
        monkeypatch.setattr(psutil, "cpu_times", self.cpu_times)
        monkeypatch.setattr(psutil, "getloadavg", lambda: (0.42, 0.3, 0.2))
        monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory(8e9, 2.92e9, self.memory_percent))
        monkeypatch.setattr(psutil, "disk_usage", self.disk_usage)
        monkeypatch.setattr(psutil, "sensors_temperatures", lambda: self.temps, raising=False)

    def cpu_times(self) -> Any:
        return self.cpu.pop(0) if len(self.cpu) > 1 else self.cpu[0]

    def disk_usage(self, path: str) -> Any:
        self.disk_paths.append(path)
        if path == "/absent":
            raise FileNotFoundError(2, "No such file or directory", path)
        return Disk(100e9, 71.2e9, 28.8e9, self.disk_percent)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    return FakeHost(monkeypatch)


def test_default_metrics_with_known_values(host: FakeHost) -> None:
    driver = SystemDriver({"path": "/data"})
    got = driver.read()
    # total 1000 -> 1100 (the 5 s of guest are already in user), busy 150 -> 190: 40 %.
    assert [(m.metric, m.unit) for m in got] == [
        ("cpu_percent", "%"),
        ("load1", ""),
        ("memory_percent", "%"),
        ("disk_percent", "%"),
    ]
    values = {m.metric: m.value for m in got}
    assert values["cpu_percent"] == pytest.approx(40.0)
    assert values["load1"] == 0.42
    assert values["memory_percent"] == 63.5
    assert values["disk_percent"] == 71.2
    assert host.disk_paths == ["/data"]


def test_cpu_percent_with_no_elapsed_ticks_repeats_the_last_value(host: FakeHost) -> None:
    driver = SystemDriver({"metrics": ["cpu_percent"]})
    first = driver.read()[0].value
    assert driver.read()[0].value == first == pytest.approx(40.0)


def test_cpu_baselines_are_per_driver(host: FakeHost) -> None:
    a = SystemDriver({"metrics": ["cpu_percent"]})  # takes the first sample
    b = SystemDriver({"metrics": ["cpu_percent"]})  # its baseline is the second
    host.cpu = [CpuTimes(200.0, 0.0, 60.0, 900.0, 60.0, 0.0, 0.0, 0.0, 5.0, 0.0)] * 2
    # a: busy 150 -> 260 while total 1000 -> 1220; b: busy 190 -> 260 while total 1100 -> 1220.
    assert a.read()[0].value == pytest.approx(110 / 220 * 100)
    assert b.read()[0].value == pytest.approx(70 / 120 * 100)


def test_metrics_subset_in_the_given_order(host: FakeHost) -> None:
    got = SystemDriver({"metrics": ["disk_percent", "load1"]}).read()
    assert [(m.metric, m.value) for m in got] == [("disk_percent", 71.2), ("load1", 0.42)]
    assert host.disk_paths == ["/"]


def test_cpu_temp_prefers_the_package_sensor(host: FakeHost) -> None:
    host.temps = {
        "nvme": [Temp("Composite", 38.9, 80.0, 85.0)],
        "coretemp": [Temp("Core 0", 51.0, 100.0, 100.0), Temp("Package id 0", 55.0, 100.0, 100.0)],
    }
    got = SystemDriver({"metrics": ["cpu_temp"]}).read()
    assert [(m.metric, m.value, m.unit) for m in got] == [("cpu_temp", 55.0, "C")]


def test_cpu_temp_on_a_raspberry_pi(host: FakeHost) -> None:
    host.temps = {"cpu_thermal": [Temp("", 47.236, None, None)]}
    assert SystemDriver({"metrics": ["cpu_temp"]}).read()[0].value == 47.236


def test_cpu_temp_without_a_cpu_sensor_is_a_read_error(host: FakeHost) -> None:
    host.temps = {"nvme": [Temp("Composite", 38.9, 80.0, 85.0)]}
    with pytest.raises(SensorReadError, match=r"cpu_temp.*nvme"):
        SystemDriver({"metrics": ["cpu_temp"]}).read()


def test_cpu_temp_where_psutil_has_no_sensors_api(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(psutil, "sensors_temperatures")
    with pytest.raises(SensorReadError, match="cpu_temp"):
        SystemDriver({"metrics": ["cpu_temp"]}).read()


def test_os_errors_become_read_errors(host: FakeHost) -> None:
    driver = SystemDriver({"metrics": ["disk_percent"], "path": "/absent"})
    with pytest.raises(SensorReadError, match="disk_percent") as info:
        driver.read()
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_non_finite_values_are_read_errors(host: FakeHost) -> None:
    host.memory_percent = math.nan
    with pytest.raises(SensorReadError, match="memory_percent"):
        SystemDriver({"metrics": ["memory_percent"]}).read()


def test_the_real_host(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = create_driver("system", {})
    got = {m.metric: m.value for m in driver.read()}
    assert set(got) == {"cpu_percent", "load1", "memory_percent", "disk_percent"}
    assert all(math.isfinite(v) for v in got.values())
    assert 0.0 <= got["cpu_percent"] <= 100.0
    assert 0.0 < got["memory_percent"] <= 100.0
    assert 0.0 < got["disk_percent"] <= 100.0
    assert got["load1"] >= 0.0
    # The driver never calls psutil.cpu_percent, whose baseline other code shares.
    monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: pytest.fail("cpu_percent called"))
    driver.read()
    driver.close()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"metrics": ["cpu_percent", "gpu_percent"]}, r"'gpu_percent'.*valid metrics: cpu_percent"),
        ({"metrics": "cpu_percent"}, "'metrics'"),
        ({"metrics": [{"cpu_percent": 1}]}, "'metrics'"),
        ({"metrics": []}, "'metrics'"),
        ({"path": 5}, "'path'"),
        ({"path": ""}, "'path'"),
        ({"interval": 1}, "'interval'"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], match: str) -> None:
    with pytest.raises(DriverConfigError, match=match):
        SystemDriver(params)


def test_unknown_metric_lists_every_valid_one() -> None:
    with pytest.raises(DriverConfigError) as info:
        SystemDriver({"metrics": ["swap"]})
    for name in ("cpu_percent", "load1", "memory_percent", "disk_percent", "cpu_temp"):
        assert name in str(info.value)


def test_importing_the_module_does_not_import_psutil() -> None:
    code = "import sys, devices.drivers.system; print('psutil' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
