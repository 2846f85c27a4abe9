"""deploy/install-agent.sh into a prefix, twice, and the systemd units it installs.

The first run creates a real venv and pip-installs edgewatch[i2c] from this checkout (about
30 s here); the second must change nothing. Nothing outside the temp prefix is touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from cloud.provision.bundles import provision
from tests.deploy_helpers import ACL, DEPLOY, ROOT, make_ca

INSTALL = DEPLOY / "install-agent.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SKIP = (".git", ".venv", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.so")


@dataclass
class Installed:
    prefix: Path
    bundle: Path
    source: Path
    runs: list[subprocess.CompletedProcess[str]]

    @property
    def edgewatch(self) -> Path:
        return self.prefix / "opt/edgewatch/venv/bin/edgewatch"


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALL), *args], capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("install")
    broker = tmp / "broker"
    broker.mkdir()
    shutil.copy(ACL, broker / "acl")
    make_ca(broker / "certs")
    result = provision(
        "pi-1",
        broker_url="mqtts://broker.example.com:8883",
        out_dir=tmp / "bundles",
        passwd_file=broker / "passwd",
        acl_file=broker / "acl",
        state_dir=PurePosixPath(tmp / "prefix/var/lib/edgewatch"),
    )
    prefix = tmp / "prefix"
    # A snapshot of the checkout: others may edit it while we install twice (which would
    # rightly count as a change).
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIP))
    args = ("--prefix", str(prefix), "--no-systemd", "--source", str(source), "--config", str(result.bundle))
    runs = [run_install(*args), run_install(*args)]
    yield Installed(prefix, result.bundle, source, runs)


def test_install_twice_is_clean_and_idempotent(installed: Installed) -> None:
    first, second = installed.runs
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert "created venv" in first.stdout
    assert "nothing changed" in second.stdout and "installed" not in second.stdout
    version = subprocess.run(
        [str(installed.edgewatch), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("edgewatch ")
    etc = installed.prefix / "etc/edgewatch"
    for name in ("agent.toml", "ca.crt"):
        assert (etc / name).read_bytes() == (installed.bundle / name).read_bytes()
        assert stat.S_IMODE((etc / name).stat().st_mode) == 0o640
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750
    assert (installed.prefix / "var/lib/edgewatch").is_dir()
    # The installer builds from a copy: no build/ or egg-info appears in the source it was given.
    assert not [
        p.name for p in installed.source.iterdir() if p.name == "build" or p.name.endswith(".egg-info")
    ]


def test_installed_unit_points_into_the_prefix(installed: Installed) -> None:
    unit = (installed.prefix / "etc/systemd/system/edgewatch-agent.service").read_text()
    assert (
        f"ExecStart={installed.edgewatch} agent run --config {installed.prefix}/etc/edgewatch/agent.toml"
        in unit
    )
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def test_a_bad_config_is_refused_before_the_service_would_crash_loop(
    installed: Installed, tmp_path: Path
) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text((installed.bundle / "agent.toml").read_text().replace('id = "pi-1"', 'id = "no/slash"'))
    prefix = tmp_path / "prefix"
    shutil.copytree(installed.prefix / "opt", prefix / "opt", symlinks=True)
    # A copied venv still points at the original prefix's scripts; only its python is used here.
    run = run_install(
        "--prefix", str(prefix), "--no-systemd", "--source", str(installed.source), "--config", str(bad)
    )  # fmt: skip
    assert run.returncode != 0
    assert "device.id" in run.stderr and "Traceback" not in run.stderr


def test_install_refuses_bad_arguments(tmp_path: Path) -> None:
    run = run_install("--prefix", str(tmp_path), "--config", str(tmp_path / "missing"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    run = run_install("--prefix", str(tmp_path), "--source", str(tmp_path))
    assert run.returncode == 2 and "no pyproject.toml" in run.stderr
    run = run_install("--bogus")
    assert run.returncode == 2 and "unknown option" in run.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(installed: Installed, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point the units at the venv the installer built.
    units = [installed.prefix / "etc/systemd/system/edgewatch-agent.service"]
    cloud = tmp_path / "edgewatch-cloud.service"
    cloud.write_text(
        (DEPLOY / "systemd/edgewatch-cloud.service")
        .read_text()
        .replace("/opt/edgewatch/venv/bin/edgewatch", str(installed.edgewatch))
    )
    units.append(cloud)
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
