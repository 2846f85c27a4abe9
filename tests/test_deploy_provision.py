"""`edgewatch provision` without a broker: files, idempotence, rotation and clear refusals.

The broker's acceptance of what it writes is tested against a real mosquitto in
test_deploy_broker.py; here the subject is the files themselves.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml  # type: ignore[import-untyped]

from cloud.provision.bundles import (
    ProvisionError,
    ProvisionResult,
    Role,
    hash_password,
    provision,
    read_passwd,
    verify_password,
)
from tests.deploy_helpers import ACL, DEPLOY, PRODUCTION_CONF, make_ca

EDGEWATCH = [sys.executable, "-m", "edgewatch"]
URL = "mqtts://broker.example.com:8883"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture
def broker_dir(tmp_path: Path, pki: Path) -> Path:
    d = tmp_path / "broker"
    d.mkdir()
    shutil.copy(ACL, d / "acl")
    shutil.copytree(pki, d / "certs")
    return d


def prov(broker_dir: Path, name: str | None = "pi-1", **kw: object) -> ProvisionResult:
    kw.setdefault("broker_url", URL)
    return provision(
        name,
        out_dir=broker_dir.parent / "out",
        passwd_file=broker_dir / "passwd",
        acl_file=broker_dir / "acl",
        **kw,  # type: ignore[arg-type]
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_hash_is_mosquittos_format_and_verifies() -> None:
    hashed = hash_password("s3cret", salt=b"0123456789ab")
    assert hashed.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret!", hashed)
    assert not verify_password("s3cret", "garbage")
    assert not verify_password("s3cret", "x" + hashed)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_verifies_hashes_written_by_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "dev", "pa ss:word"], check=True)
    assert verify_password("pa ss:word", read_passwd(path)["dev"])


def test_device_bundle_is_a_valid_agent_config(broker_dir: Path) -> None:
    from edge.config import load_config

    result = prov(broker_dir, state_dir=PurePosixPath("/srv/ew"))
    assert result.changes and result.reload_broker
    assert sorted(p.name for p in result.bundle.iterdir()) == ["agent.toml", "ca.crt"]
    assert result.config.stat().st_mode & 0o077 == 0, "the config holds a password"
    cfg = load_config(result.config)
    assert cfg.device_id == "pi-1"
    assert cfg.broker.url.username == "pi-1" and cfg.broker.url.tls
    assert cfg.broker.ca_file == "/etc/edgewatch/ca.crt"
    assert cfg.outbox.path == Path("/srv/ew/outbox.db")
    assert verify_password(cfg.broker.url.password or "", read_passwd(broker_dir / "passwd")["pi-1"])
    assert (result.bundle / "ca.crt").read_bytes() == (broker_dir / "certs" / "ca.crt").read_bytes()


def test_aggregator_and_viewer_bundles(broker_dir: Path) -> None:
    from cloud.service.config import load_config
    from devices.broker import parse_broker_url

    # The aggregator checks that its ca_file exists: install the bundle where it was written.
    here = PurePosixPath(broker_dir.parent / "out" / "aggregator")
    agg = prov(
        broker_dir, None, role=Role.AGGREGATOR, cloud_db=PurePosixPath("/srv/cloud.db"), install_dir=here
    )
    cfg = load_config(agg.config)
    url = cfg.broker_url()
    assert (url.username, url.host, url.port, url.tls) == ("aggregator", "broker.example.com", 8883, True)
    assert cfg.db == "/srv/cloud.db" and cfg.ca_file == str(here / "ca.crt")
    view = prov(broker_dir, "viewer", role=Role.VIEWER)
    viewer_url = parse_broker_url(view.config.read_text().strip())
    assert viewer_url.username == "viewer"
    entries = read_passwd(broker_dir / "passwd")
    assert verify_password(url.password or "", entries["aggregator"])
    assert verify_password(viewer_url.password or "", entries["viewer"])


def test_running_again_changes_nothing(broker_dir: Path) -> None:
    prov(broker_dir)
    prov(broker_dir, "pi-2")
    before = snapshot(broker_dir.parent)
    again = prov(broker_dir)
    assert again.changes == () and not again.reload_broker
    assert snapshot(broker_dir.parent) == before


def test_broker_password_file_recreated_from_the_bundle(broker_dir: Path) -> None:
    first = prov(broker_dir)
    (broker_dir / "passwd").unlink()
    again = prov(broker_dir)
    assert again.reload_broker
    password = tomllib.loads(first.config.read_text())["broker"]["password"]
    assert verify_password(password, read_passwd(broker_dir / "passwd")["pi-1"])


def test_rotation_keeps_the_operators_edits_and_other_lines(broker_dir: Path) -> None:
    result = prov(broker_dir)
    prov(broker_dir, "pi-2")
    passwd = broker_dir / "passwd"
    passwd.write_text("# operators' note\n" + passwd.read_text())
    other_line = next(line for line in passwd.read_text().splitlines() if line.startswith("pi-2:"))
    edited = (
        result.config.read_text()
        + '\n[[sensors]]\nname = "cpu"\ndriver = "linux_thermal"\ninterval_s = 5.0\n'
    )
    result.config.write_text(edited)
    old = tomllib.loads(edited)["broker"]["password"]

    rotated = prov(broker_dir, rotate=True)
    assert rotated.reload_broker
    data = tomllib.loads(rotated.config.read_text())
    new = data["broker"]["password"]
    assert new != old and [s["name"] for s in data["sensors"]] == ["host", "cpu"]
    assert rotated.config.read_text() == edited.replace(old, new)
    lines = passwd.read_text().splitlines()
    assert lines[0] == "# operators' note" and other_line in lines
    assert verify_password(new, read_passwd(passwd)["pi-1"])
    assert not verify_password(old, read_passwd(passwd)["pi-1"])


def test_rotation_keeps_a_users_comments_and_tables_in_the_aggregator_config(broker_dir: Path) -> None:
    from devices.broker import parse_broker_url

    first = prov(broker_dir, None, role=Role.AGGREGATOR)
    edited = first.config.read_text().replace(
        "[aggregator]\n", "# ops: this host also pages the on-call rota\n[aggregator]\n"
    ) + (
        "retention_days = 30.0  # legal asked for a month\n\n"
        "# pager, see the runbook\n"
        '[[notify.sinks]]\nname = "oncall"\ntype = "alertmanager"\nurl = "http://127.0.0.1:9093"\n'
    )
    first.config.write_text(edited)
    old = parse_broker_url(tomllib.loads(edited)["aggregator"]["broker"]).password or ""

    rotated = prov(broker_dir, None, role=Role.AGGREGATOR, rotate=True)
    text = rotated.config.read_text()
    new = parse_broker_url(tomllib.loads(text)["aggregator"]["broker"]).password or ""
    assert new and new != old
    assert text == edited.replace(old, new)  # every comment, table and key of the user's stays
    assert "# ops: this host also pages the on-call rota" in text and "# legal asked for a month" in text
    assert verify_password(new, read_passwd(broker_dir / "passwd")["aggregator"])


def test_client_certificate_bundle(broker_dir: Path) -> None:
    from edge.config import load_config

    result = prov(broker_dir, client_cert=True, broker_url="mqtts://broker.example.com:8884")
    assert {p.name for p in result.bundle.iterdir()} == {"agent.toml", "ca.crt", "client.crt", "client.key"}
    assert (result.bundle / "client.key").stat().st_mode & 0o077 == 0
    cfg = load_config(result.config)
    assert cfg.broker.url.username is None and cfg.broker.cert_file == "/etc/edgewatch/client.crt"
    crt = str(result.bundle / "client.crt")
    args = ["openssl", "x509", "-in", crt, "-noout", "-subject", "-ext", "extendedKeyUsage"]
    subject = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "CN=pi-1" in subject.replace(" ", "") and "Client Authentication" in subject
    assert not read_passwd(broker_dir / "passwd")
    before = snapshot(broker_dir.parent)
    assert prov(broker_dir, client_cert=True, broker_url="mqtts://broker.example.com:8884").changes == ()
    assert snapshot(broker_dir.parent) == before


def test_concurrent_provisioning_keeps_every_device(broker_dir: Path) -> None:
    names = [f"pi-{i}" for i in range(8)]
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            prov(broker_dir, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(read_passwd(broker_dir / "passwd")) == sorted(names)


@pytest.mark.parametrize(
    ("name", "kw", "message"),
    [
        ("aggregator", {}, "username of a broker role"),
        ("bad/id", {}, "must be 1-64 characters"),
        ("alerts", {}, "reserved"),
        (None, {}, "give the device id"),
        ("pi-1", {"broker_url": "mqtts://u:p@h:8883"}, "without credentials"),
        ("pi-1", {"broker_url": "http://h"}, "scheme must be"),
        ("pi-1", {"client_cert": True, "broker_url": "mqtt://h:1883"}, "need an mqtts://"),
        ("pi-1", {"rotate": True}, "nothing to rotate"),
        ("pi-1", {"ca_dir": Path("/nonexistent")}, "no CA certificate"),
        ("someone", {"role": Role.VIEWER}, "the viewer role's username is 'viewer'"),
        ("pi-1", {"cert_days": 0}, "lifetime"),
    ],
)
def test_refusals_say_what_to_fix(
    broker_dir: Path, name: str | None, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ProvisionError, match=message):
        prov(broker_dir, name, **kw)


def test_refuses_an_acl_that_would_not_let_devices_publish(broker_dir: Path) -> None:
    acl = broker_dir / "acl"
    acl.write_text("user aggregator\ntopic read #\n")
    with pytest.raises(ProvisionError, match="lacks 'pattern write edgewatch/v1/%u/telemetry'"):
        prov(broker_dir)
    acl.unlink()
    with pytest.raises(ProvisionError, match="not found"):
        prov(broker_dir)


def test_refuses_to_guess_between_passwd_and_bundle(broker_dir: Path) -> None:
    result = prov(broker_dir)
    shutil.rmtree(result.bundle)
    with pytest.raises(ProvisionError, match=r"already has a password .* use --rotate"):
        prov(broker_dir)
    prov(broker_dir, "pi-2")
    passwd = broker_dir / "passwd"
    passwd.write_text(passwd.read_text().replace("pi-2:", "pi-2:x", 1))
    with pytest.raises(ProvisionError, match="does not match"):
        prov(broker_dir, "pi-2")


def test_cli_provisions_and_fails_cleanly(broker_dir: Path) -> None:
    base = [*EDGEWATCH, "provision", "--broker", URL, "--broker-dir", str(broker_dir)]
    out = str(broker_dir.parent / "out")
    ok = subprocess.run([*base, "pi-1", "--out", out], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "added pi-1" in ok.stdout and "systemctl reload mosquitto" in ok.stdout
    again = subprocess.run(
        [*base, "pi-1", "--out", out, "--json"], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0 and '"changes": []' in again.stdout
    bad = subprocess.run([*base, "no/slash", "--out", out], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: device id 'no/slash'") and "Traceback" not in bad.stderr
    role = subprocess.run(
        [*base, "--role", "admin", "--out", out], capture_output=True, text=True, check=False
    )
    assert role.returncode == 2 and "--role must be" in role.stderr


def test_compose_mounts_what_the_production_config_reads() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broker = compose["services"]["mosquitto"]
    mounts = {m.split(":")[1] for m in broker["volumes"]}
    conf = PRODUCTION_CONF.read_text()
    for path in ("/etc/mosquitto/edgewatch/passwd", "/etc/mosquitto/edgewatch/acl", "/var/lib/mosquitto/"):
        assert path in conf
        assert any(path.startswith(m.rstrip("/")) for m in mounts), path
    assert "/etc/mosquitto/edgewatch.conf" in " ".join(broker["command"])
    assert {"8883:8883", "8884:8884"} == set(broker["ports"])
    aggregator = compose["services"]["aggregator"]
    assert aggregator["command"][-1] == "/etc/edgewatch-cloud/cloud.toml"
    assert (DEPLOY / "Dockerfile").exists()


def test_bundles_default_to_a_private_directory_next_to_the_hashes(broker_dir: Path) -> None:
    result = provision("pi-1", broker_url=URL, passwd_file=broker_dir / "passwd", acl_file=broker_dir / "acl")
    assert result.bundle == broker_dir / "bundles" / "pi-1"
    assert stat.S_IMODE((broker_dir / "bundles").stat().st_mode) == 0o700
