"""The production broker as shipped (deploy/mosquitto), locked down, with provisioned credentials.

Every test starts mosquitto with production.conf and the shipped ACL (see deploy_helpers), then
provisions principals with `cloud.provision.bundles` exactly as an operator would.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from cloud.provision.bundles import ProvisionResult, Role, provision
from devices import wire
from tests.confirmer import wait_for
from tests.deploy_helpers import Client, ProductionBroker, make_ca

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture
def broker(tmp_path: Path, pki: Path) -> Iterator[ProductionBroker]:
    mq = ProductionBroker(tmp_path / "broker", pki).start()
    try:
        yield mq
    finally:
        mq.stop()


def prov(
    broker: ProductionBroker, tmp: Path, name: str | None, *, role: Role = Role.DEVICE, **kw: object
) -> ProvisionResult:
    cert = bool(kw.get("client_cert"))
    port = broker.cert_port if cert else broker.tls_port
    out = tmp / "bundles"
    return provision(
        name,
        role=role,
        broker_url=f"mqtts://localhost:{port}",
        out_dir=out,
        passwd_file=broker.passwd,
        acl_file=broker.acl,
        ca_dir=broker.certs,
        install_dir=PurePosixPath(out / (name or role.value)),
        state_dir=PurePosixPath(tmp / "state"),
        **kw,  # type: ignore[arg-type]
    )


def secret(result: ProvisionResult) -> str:
    import tomllib

    if result.role is Role.DEVICE:
        return str(tomllib.loads(result.config.read_text())["broker"]["password"])
    from devices.broker import parse_broker_url

    text = result.config.read_text()
    url = text.strip() if result.role is Role.VIEWER else tomllib.loads(text)["aggregator"]["broker"]
    password = parse_broker_url(url).password
    assert password
    return password


def client(broker: ProductionBroker, result: ProvisionResult | None = None, **kw: object) -> Client:
    if result is not None:
        kw.setdefault("username", result.name)
        kw.setdefault("password", secret(result))
    kw.setdefault("ca_file", broker.certs / "ca.crt")
    return Client(broker.tls_port, **kw)  # type: ignore[arg-type]


def test_anonymous_and_wrong_password_are_refused(broker: ProductionBroker, tmp_path: Path) -> None:
    dev = prov(broker, tmp_path, "dev-a")
    broker.reload()
    anonymous = client(broker)
    assert anonymous.connect().is_failure
    anonymous.close()
    wrong = client(broker, username="dev-a", password=secret(dev) + "x")
    assert wrong.connect().is_failure
    wrong.close()
    unknown = client(broker, username="dev-z", password=secret(dev))
    assert unknown.connect().is_failure
    unknown.close()
    right = client(broker, dev)
    assert not right.connect().is_failure
    right.close()


def test_tls_needs_our_ca(broker: ProductionBroker, tmp_path: Path) -> None:
    dev = prov(broker, tmp_path, "dev-a")
    broker.reload()
    # The system trust store does not know the private CA: the handshake fails before MQTT.
    untrusted = client(broker, dev, ca_file=None)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusted.connect()
    other_ca = make_ca(tmp_path / "other-ca")
    stranger = client(broker, dev, ca_file=other_ca / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect()
    # The bundle's own ca.crt (copied by provision) is what the device trusts.
    trusted = client(broker, dev, ca_file=dev.bundle / "ca.crt")
    assert not trusted.connect().is_failure
    trusted.close()


def test_device_is_confined_to_its_own_topics(broker: ProductionBroker, tmp_path: Path) -> None:
    a = prov(broker, tmp_path, "dev-a")
    prov(broker, tmp_path, "dev-b")
    agg = prov(broker, tmp_path, None, role=Role.AGGREGATOR)
    broker.reload()

    aggregator = client(broker, agg, client_id="agg")
    assert not aggregator.connect().is_failure
    for sub in (wire.SUB_TELEMETRY, wire.SUB_BACKFILL, wire.SUB_STATUS):
        assert not aggregator.subscribe(sub).is_failure

    dev_a = client(broker, a, client_id="a")
    assert not dev_a.connect().is_failure
    # mosquitto 2.0 grants these subscriptions (MQTT 3.1.1) but checks `read` on delivery:
    # dev-a must end up with its own ack and nothing else.
    for sub in (wire.device_topic("dev-a", wire.ACK), "edgewatch/v1/+/ack", wire.SUB_TELEMETRY, "#"):
        dev_a.subscribe(sub)

    # MQTT 3.1.1 cannot refuse a PUBLISH: mosquitto PUBACKs it, drops it and closes the
    # connection [MQTT-3.3.5-2]. So each forgery gets its own connection, and the device's
    # agent (whose outbox waits for the aggregator's confirmation, not the PUBACK) loses nothing.
    forged = [wire.device_topic("dev-b", kind) for kind in (wire.TELEMETRY, wire.BACKFILL, wire.STATUS)]
    for topic in [*forged, "edgewatch/v1/alerts/dev-b", "edgewatch/v1/dev-b/ack"]:
        forger = client(broker, a, client_id="a-forger")
        assert not forger.connect().is_failure
        forger.publish(topic, b"forged")
        wait_for(lambda f=forger: f.dropped, 10, "the broker to drop the forger")  # type: ignore[misc]
        forger.close()
    # A marker on dev-a's own topic, sent after every forgery was PUBACKed (so processed) by the
    # single-threaded broker: once it has arrived, a forgery let through would have arrived too.
    dev_a.publish(wire.device_topic("dev-a", wire.TELEMETRY), b"marker")
    wait_for(lambda: "edgewatch/v1/dev-a/telemetry" in aggregator.topics(), 10, "dev-a's own message")
    assert aggregator.topics() == ["edgewatch/v1/dev-a/telemetry"]
    assert dev_a.client.is_connected()

    # Confirmations: the aggregator may write any device's ack; dev-a reads only its own.
    aggregator.publish(wire.device_topic("dev-b", wire.ACK), b"for-b")
    aggregator.publish(wire.device_topic("dev-a", wire.ACK), b"for-a")
    wait_for(lambda: dev_a.topics() == ["edgewatch/v1/dev-a/ack"], 10, "dev-a's ack")
    for c in (aggregator, dev_a):
        c.close()


def test_viewer_reads_alerts_only(broker: ProductionBroker, tmp_path: Path) -> None:
    agg = prov(broker, tmp_path, None, role=Role.AGGREGATOR)
    view = prov(broker, tmp_path, None, role=Role.VIEWER)
    dev = prov(broker, tmp_path, "dev-a")
    broker.reload()
    viewer = client(broker, view, client_id="viewer")
    assert not viewer.connect().is_failure
    assert not viewer.subscribe("edgewatch/v1/alerts/#").is_failure
    viewer.subscribe(wire.SUB_TELEMETRY)  # granted, never delivered (see above)

    forger = client(broker, view, client_id="viewer-forger")
    assert not forger.connect().is_failure
    forger.publish(wire.alert_topic("dev-a"), b"forged-by-viewer")
    wait_for(lambda: forger.dropped, 10, "the broker to drop the forger")
    forger.close()

    device = client(broker, dev, client_id="dev-a")
    assert not device.connect().is_failure
    device.publish(wire.device_topic("dev-a", wire.TELEMETRY), b"not-for-viewers")
    aggregator = client(broker, agg, client_id="agg")
    assert not aggregator.connect().is_failure
    aggregator.publish(wire.alert_topic("dev-a"), b"real")
    wait_for(lambda: len(viewer.messages) >= 1, 10, "the aggregator's alert")
    assert viewer.messages == [("edgewatch/v1/alerts/dev-a", b"real")]
    for c in (viewer, device, aggregator):
        c.close()


def test_role_users_cannot_publish_as_a_device(broker: ProductionBroker, tmp_path: Path) -> None:
    """The `%u` device patterns apply to every username: role users must not get them."""
    agg = prov(broker, tmp_path, None, role=Role.AGGREGATOR)
    view = prov(broker, tmp_path, None, role=Role.VIEWER)
    broker.reload()
    aggregator = client(broker, agg, client_id="agg")
    assert not aggregator.connect().is_failure
    for sub in (wire.SUB_TELEMETRY, wire.SUB_BACKFILL, wire.SUB_STATUS):
        assert not aggregator.subscribe(sub).is_failure
    for role in (view, agg):
        for kind in ("telemetry", "backfill", "status"):
            forger = client(broker, role, client_id=f"{role.name}-forger")
            assert not forger.connect().is_failure
            forger.publish(f"edgewatch/v1/{role.name}/{kind}", b"role-as-device")
            wait_for(lambda f=forger: f.dropped, 10, "the broker to drop the forger")  # type: ignore[misc]
            forger.close()
    dev = prov(broker, tmp_path, "dev-a")
    broker.reload()
    device = client(broker, dev, client_id="dev-a")
    assert not device.connect().is_failure
    device.publish(wire.device_topic("dev-a", wire.TELEMETRY), b"marker")
    wait_for(lambda: "edgewatch/v1/dev-a/telemetry" in aggregator.topics(), 10, "dev-a's own message")
    assert aggregator.topics() == ["edgewatch/v1/dev-a/telemetry"]
    for c in (aggregator, device):
        c.close()


def test_rotated_password_replaces_the_old_one(broker: ProductionBroker, tmp_path: Path) -> None:
    first = prov(broker, tmp_path, "dev-a")
    broker.reload()
    old = secret(first)
    connected = client(broker, first, client_id="dev-a")
    assert not connected.connect().is_failure
    rotated = prov(broker, tmp_path, "dev-a", rotate=True)
    assert rotated.reload_broker and secret(rotated) != old
    broker.reload()
    # mosquitto re-checks connected clients on reload: the old password's session ends at once.
    wait_for(lambda: connected.dropped, 10, "the old credential's connection to be closed")
    connected.close()
    stale = client(broker, username="dev-a", password=old)
    assert stale.connect().is_failure
    stale.close()
    fresh = client(broker, rotated)
    assert not fresh.connect().is_failure
    fresh.close()


def test_client_certificate_is_the_identity_and_can_be_revoked(
    broker: ProductionBroker, tmp_path: Path
) -> None:
    dev = prov(broker, tmp_path, "dev-c", client_cert=True)
    assert not broker.passwd.read_text().strip(), "a certificate device needs no password"
    agg = prov(broker, tmp_path, None, role=Role.AGGREGATOR)
    broker.reload()
    aggregator = client(broker, agg, client_id="agg")
    assert not aggregator.connect().is_failure
    assert not aggregator.subscribe(wire.SUB_TELEMETRY).is_failure

    def cert_client(cert: tuple[Path, Path] | None) -> Client:
        return Client(broker.cert_port, ca_file=dev.bundle / "ca.crt", cert=cert, client_id="dev-c")

    old = (tmp_path / "old.crt", tmp_path / "old.key")
    old[0].write_bytes((dev.bundle / "client.crt").read_bytes())
    old[1].write_bytes((dev.bundle / "client.key").read_bytes())
    forger = cert_client(old)
    assert not forger.connect().is_failure
    forger.publish(wire.device_topic("dev-a", wire.TELEMETRY), b"forged")
    wait_for(lambda: forger.dropped, 10, "the broker to drop the forger")
    forger.close()
    device = cert_client(old)
    assert not device.connect().is_failure
    device.publish(wire.device_topic("dev-c", wire.TELEMETRY), b"own")
    wait_for(lambda: len(aggregator.messages) >= 1, 10, "dev-c's own message")
    assert aggregator.topics() == ["edgewatch/v1/dev-c/telemetry"]
    device.close()

    with pytest.raises((ssl.SSLError, ConnectionError)):  # no certificate, no session
        cert_client(None).connect()

    rotated = prov(broker, tmp_path, "dev-c", client_cert=True, rotate=True)
    assert rotated.reload_broker
    broker.reload()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        cert_client(old).connect()
    renewed = cert_client((dev.bundle / "client.crt", dev.bundle / "client.key"))
    assert not renewed.connect().is_failure
    renewed.close()
    aggregator.close()
