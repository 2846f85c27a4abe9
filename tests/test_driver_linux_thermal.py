"""Linux thermal zones, read from a fake /sys/class/thermal tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from devices.drivers import create_driver
from devices.drivers.linux_thermal import LinuxThermalDriver, metric_names
from devices.errors import DriverConfigError, SensorReadError


def put_zone(root: Path, number: int, temp: str | None, kind: str | None) -> None:
    zone = root / f"thermal_zone{number}"
    zone.mkdir(parents=True, exist_ok=True)
    if temp is not None:
        (zone / "temp").write_text(temp)
    if kind is not None:
        (zone / "type").write_text(kind + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A Raspberry Pi-like tree plus a laptop's zones, with the non-zone entries sysfs has."""
    root = tmp_path / "thermal"
    put_zone(root, 0, "48312\n", "cpu-thermal")
    put_zone(root, 1, "-5250\n", "x86_pkg_temp")
    put_zone(root, 10, "27800\n", "acpitz")
    (root / "cooling_device0").mkdir()
    (root / "cooling_device0" / "type").write_text("Processor\n")
    return root


def test_reads_every_zone_in_numeric_order(sysfs: Path) -> None:
    got = LinuxThermalDriver({"root": str(sysfs)}).read()
    assert [(m.metric, m.value, m.unit) for m in got] == [
        ("temp_cpu_thermal", 48.312, "C"),
        ("temp_x86_pkg_temp", -5.25, "C"),
        ("temp_acpitz", 27.8, "C"),
    ]


def test_reads_only_the_configured_zones_in_their_order(sysfs: Path) -> None:
    driver = LinuxThermalDriver({"root": sysfs, "zones": ["thermal_zone10", "thermal_zone0"]})
    assert [(m.metric, m.value) for m in driver.read()] == [
        ("temp_acpitz", 27.8),
        ("temp_cpu_thermal", 48.312),
    ]


def test_zones_sharing_a_type_get_their_number(sysfs: Path) -> None:
    put_zone(sysfs, 2, "30000", "acpitz")
    names = [m.metric for m in LinuxThermalDriver({"root": str(sysfs)}).read()]
    assert names == ["temp_cpu_thermal", "temp_x86_pkg_temp", "temp_acpitz_2", "temp_acpitz_10"]


def test_a_zone_without_a_type_is_named_by_number(sysfs: Path) -> None:
    put_zone(sysfs, 3, "41000", None)
    got = LinuxThermalDriver({"root": str(sysfs), "zones": ["thermal_zone3"]}).read()
    assert [(m.metric, m.value) for m in got] == [("temp_zone3", 41.0)]


def test_metric_names_are_clean_and_bounded() -> None:
    assert metric_names([(0, "cpu-thermal"), (1, "SoC Thermal!"), (2, "---"), (3, "")]) == [
        "temp_cpu_thermal",
        "temp_soc_thermal",
        "temp_zone2",
        "temp_zone3",
    ]
    long_names = metric_names([(0, "x" * 100), (1, "x" * 100)])
    assert [len(n) for n in long_names] == [64, 64]
    assert long_names[0].endswith("x_0")
    assert long_names[1].endswith("x_1")


def test_values_follow_the_file(sysfs: Path) -> None:
    driver = create_driver("linux_thermal", {"root": str(sysfs), "zones": ["thermal_zone0"]})
    assert driver.read()[0].value == 48.312
    (sysfs / "thermal_zone0" / "temp").write_text("51000\n")
    assert driver.read()[0].value == 51.0
    driver.close()


def test_a_configured_zone_that_cannot_be_read_fails_the_read(sysfs: Path) -> None:
    driver = LinuxThermalDriver({"root": str(sysfs), "zones": ["thermal_zone0", "thermal_zone7"]})
    with pytest.raises(SensorReadError, match="thermal_zone7") as info:
        driver.read()
    assert isinstance(info.value.__cause__, OSError)


def test_garbage_in_temp_is_a_read_error(sysfs: Path) -> None:
    (sysfs / "thermal_zone1" / "temp").write_text("N/A\n")
    with pytest.raises(SensorReadError, match="N/A"):
        LinuxThermalDriver({"root": str(sysfs), "zones": ["thermal_zone1"]}).read()


def test_discovery_skips_an_unreadable_zone_with_a_warning(
    sysfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put_zone(sysfs, 4, None, "iwlwifi_1")  # no temp file: as unreadable as ENODATA
    (sysfs / "thermal_zone1" / "temp").write_text("")
    with caplog.at_level(logging.WARNING, logger="devices.drivers.linux_thermal"):
        got = LinuxThermalDriver({"root": str(sysfs)}).read()
    assert [m.metric for m in got] == ["temp_cpu_thermal", "temp_acpitz"]
    assert "thermal_zone4" in caplog.text
    assert "thermal_zone1" in caplog.text


def test_discovery_fails_when_no_zone_reads(tmp_path: Path) -> None:
    put_zone(tmp_path, 0, "hot", "cpu-thermal")
    with pytest.raises(SensorReadError, match="no zone of 1"):
        LinuxThermalDriver({"root": str(tmp_path)}).read()


def test_no_zones_or_no_tree_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(SensorReadError, match="no thermal_zone"):
        LinuxThermalDriver({"root": str(tmp_path)}).read()
    with pytest.raises(SensorReadError, match="cannot list"):
        LinuxThermalDriver({"root": str(tmp_path / "absent")}).read()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"zones": "thermal_zone0"}, "zones"),
        ({"zones": []}, "zones"),
        ({"zones": ["cpu-thermal"]}, "zones"),
        ({"zones": ["thermal_zone0/../../x"]}, "zones"),
        ({"zones": [0]}, "zones"),
        ({"root": None}, "root"),
        ({"root": ""}, "root"),
        ({"zone": ["thermal_zone0"]}, "zone"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], param: str) -> None:
    with pytest.raises(DriverConfigError, match=f"'{param}'"):
        LinuxThermalDriver(params)


def test_defaults_to_sysfs_and_reads_nothing_when_built() -> None:
    driver = LinuxThermalDriver({})
    assert driver.root == Path("/sys/class/thermal")
    assert driver.zones is None
    driver.close()
