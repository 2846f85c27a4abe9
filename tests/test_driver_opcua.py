"""OPC UA: params, then reads from an asyncua server the test starts on loopback, in the clear and
over Basic256Sha256 SignAndEncrypt with a username and password."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua", reason="the 'opcua' extra (asyncua) is not installed")

from devices.drivers import create_driver
from devices.drivers.opcua import OpcUaDriver
from devices.errors import DriverConfigError, SensorReadError
from tests.mosquitto import free_port
from tests.opcua_server import CLIENT_URI, OpcUaServer, PasswordUsers, make_certificates

ENDPOINT = "opc.tcp://127.0.0.1:4840/"
NODE = [{"node_id": "ns=2;s=Line1.Temperature", "metric": "temperature", "unit": "C"}]


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"endpoint": "http://plc:4840", "nodes": NODE}, "endpoint"),
        ({"nodes": NODE}, "endpoint"),
        ({"endpoint": ENDPOINT, "security_policy": "Basic128", "nodes": NODE}, "security_policy"),
        ({"endpoint": ENDPOINT, "security_mode": "Sign", "nodes": NODE}, "security_mode"),
        (
            {
                "endpoint": ENDPOINT,
                "security_policy": "Basic256Sha256",
                "security_mode": "Encrypt",
                "nodes": NODE,
            },
            "security_mode",
        ),
        ({"endpoint": ENDPOINT, "security_policy": "Basic256Sha256", "nodes": NODE}, "certificate"),
        ({"endpoint": ENDPOINT, "certificate": "c.der", "nodes": NODE}, "security_policy"),
        ({"endpoint": ENDPOINT, "username": "op", "nodes": NODE}, "password"),
        ({"endpoint": ENDPOINT, "timeout_s": -1, "nodes": NODE}, "timeout_s"),
        ({"endpoint": ENDPOINT, "nodes": []}, "nodes"),
        (
            {"endpoint": ENDPOINT, "nodes": [*NODE, {"node_id": "Line1.Speed", "metric": "speed"}]},
            "nodes[1].node_id",
        ),
        ({"endpoint": ENDPOINT, "nodes": [{"node_id": "ns=2;i=7"}]}, "nodes[0].metric"),
        ({"endpoint": ENDPOINT, "nodes": [*NODE, {**NODE[0], "node_id": "ns=2;i=7"}]}, "nodes[1].metric"),
        ({"endpoint": ENDPOINT, "nodes": [{**NODE[0], "nodeid": "x"}]}, "nodes[0].nodeid"),
        ({"endpoint": ENDPOINT, "nodes": NODE, "interval": 1}, "interval"),
    ],
)
def test_bad_params_are_config_errors_naming_the_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(DriverConfigError, match=re.escape(f"'{key}'")):
        create_driver("opcua", params)


def driver_for(server: OpcUaServer, names: list[str], **extra: Any) -> OpcUaDriver:
    nodes = [{"node_id": server.node_id(n), "metric": n.lower()} for n in names]
    driver = create_driver("opcua", {"endpoint": server.endpoint, "timeout_s": 2, "nodes": nodes, **extra})
    assert isinstance(driver, OpcUaDriver)
    return driver


@pytest.fixture(scope="module")
def plc() -> Iterator[OpcUaServer]:
    """One server for the tests that only read (starting one takes about two seconds)."""
    with OpcUaServer() as server:
        yield server


def test_polls_plc_tags_and_sees_them_change(plc: OpcUaServer) -> None:
    driver = driver_for(plc, ["Temperature", "Count", "Running"])
    try:
        assert {m.metric: m.value for m in driver.read()} == {"temperature": 72.5, "count": 41, "running": 1}
        assert driver.describe_last_read() == [
            f"temperature: {plc.node_id('Temperature')} Double 72.5 -> 72.5",
            f"count: {plc.node_id('Count')} Int32 41 -> 41",
            f"running: {plc.node_id('Running')} Boolean True -> 1",
        ]
        plc.set("Temperature", 80.25)
        assert driver.read()[0].value == 80.25
    finally:
        plc.set("Temperature", 72.5)
        driver.close()
    driver.close()  # idempotent


def test_a_bad_node_fails_the_read_naming_it_and_a_good_read_follows(plc: OpcUaServer) -> None:
    text = driver_for(plc, ["Temperature", "Name"])
    missing = driver_for(plc, ["Temperature", "Missing"])
    good = driver_for(plc, ["Temperature"])
    try:
        with pytest.raises(SensorReadError, match=r"Line1\.Name is a String \('line one'\), not a number"):
            text.read()
        with pytest.raises(SensorReadError, match=r"Line1\.Missing: status BadNodeIdUnknown"):
            missing.read()
        assert good.read()[0].value == 72.5
    finally:
        for driver in (text, missing, good):
            driver.close()


def test_no_server_is_a_read_error_within_the_timeout() -> None:
    driver = create_driver(
        "opcua", {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/", "timeout_s": 0.5, "nodes": NODE}
    )
    with pytest.raises(SensorReadError, match=r"opcua opc\.tcp://127\.0\.0\.1"):
        driver.read()
    driver.close()


def test_a_server_that_goes_away_fails_reads_and_is_read_again_when_back() -> None:
    server = OpcUaServer().__enter__()
    driver = driver_for(server, ["Temperature"], timeout_s=0.5)
    try:
        assert driver.read()[0].value == 72.5
        server.__exit__()
        with pytest.raises(SensorReadError):
            driver.read()
        with OpcUaServer(port=server.port) as again:
            again.set("Temperature", 75.0)
            assert driver.read()[0].value == 75.0
    finally:
        driver.close()
        server.__exit__()


def test_signed_and_encrypted_session_with_username_and_password(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    with OpcUaServer(certs=certs, users=PasswordUsers("operator", "s3cret")) as server:
        secure: dict[str, Any] = {
            "security_policy": "Basic256Sha256",
            "security_mode": "SignAndEncrypt",
            "certificate": str(certs.client_cert),
            "private_key": str(certs.client_key),
            "server_certificate": str(certs.server_cert),
            "application_uri": CLIENT_URI,
            "username": "operator",
        }
        driver = driver_for(server, ["Temperature"], **secure, password="s3cret")
        wrong = driver_for(server, ["Temperature"], **secure, password="guess")
        clear = driver_for(server, ["Temperature"])
        try:
            assert driver.read()[0].value == 72.5
            with pytest.raises(SensorReadError, match="BadUserAccessDenied"):
                wrong.read()
            with pytest.raises(SensorReadError, match="No matching endpoints"):
                clear.read()  # the server offers no unencrypted endpoint
        finally:
            for d in (driver, wrong, clear):
                d.close()


def test_agent_sample_shows_node_types(tmp_path: Path, plc: OpcUaServer) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "plant-1"\n[broker]\nurl = "mqtt://127.0.0.1:9"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
        f'[[sensors]]\nname = "press"\ndriver = "opcua"\ninterval_s = 5\n[sensors.params]\n'
        f'endpoint = "{plc.endpoint}"\n'
        f'nodes = [{{ node_id = "{plc.node_id("Count")}", metric = "parts" }}]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "edgewatch", "agent", "sample", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "press (opcua): parts = 41",
        f"    parts: {plc.node_id('Count')} Int32 41 -> 41",
    ]
