"""The NATS cluster deployment (deploy/nats/): real agents publish through the nodes' MQTT
listeners into the partitioned stream; permissions confine a device to its own subjects."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud.partitions.layout import STREAM, partition_of, stream_subjects
from cloud.partitions.serverconf import ServerConfError, accounts_conf, device_permissions
from devices import wire
from tests.agent_helpers import RunningAgent, agent_config, outbox_seqs
from tests.nats import NatsCluster

PARTITIONS = 8
DEVICES = {f"dev-{i}": f"pw-{i}" for i in range(12)}
EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "accounts.conf.example"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_cluster = NatsCluster(tmp_path / "nats", DEVICES, partitions=PARTITIONS)
    try:
        nats_cluster.start()
        yield nats_cluster
    finally:
        nats_cluster.stop()


async def _read_stream(cluster: NatsCluster) -> list[tuple[str, bytes]]:
    """(subject, payload) of every message in the stream, through one ephemeral consumer per kind."""
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(servers=cluster.nats_urls())
    found: list[tuple[str, bytes]] = []
    try:
        js = nc.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        for subject_filter in stream_subjects():
            sub = await js.pull_subscribe(subject_filter, stream=STREAM)
            while len(found) < total:
                try:
                    batch = await sub.fetch(500, timeout=1)
                except NatsTimeout:
                    break
                for msg in batch:
                    found.append((msg.subject, msg.data))
                    await msg.ack()
            await sub.unsubscribe()
        assert len(found) == total
    finally:
        await nc.close()
    return found


def test_agents_land_in_one_partition_each(cluster: NatsCluster, tmp_path: Path) -> None:
    """Real agents (MQTT 3.1.1, QoS 1) on all three nodes: every readings message is in the
    stream, under its device's one partition, for telemetry and status alike."""
    devices = sorted(DEVICES)
    agents = [
        RunningAgent(agent_config(tmp_path, cluster.device_url(device, node=i % 3), device=device))
        for i, device in enumerate(devices)
    ]
    for running in agents:
        running.__enter__()
    try:
        deadline = time.monotonic() + 20
        while not all(r.agent.connects for r in agents) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(r.agent.connects for r in agents), "an agent never connected"
        time.sleep(1.5)
    finally:
        for running in agents:
            running.stop()

    messages = asyncio.run(_read_stream(cluster))
    partitions: dict[str, set[int]] = defaultdict(set)
    kinds: dict[str, set[str]] = defaultdict(set)
    seqs: dict[str, set[int]] = defaultdict(set)
    for subject, payload in messages:
        partition, topic = wire.parse_partition_subject(subject)
        device, kind = wire.parse_topic(topic)
        partitions[device].add(partition)
        kinds[device].add(kind)
        if kind != wire.STATUS:
            batch = wire.decode_readings(payload)
            assert batch.device == device
            seqs[device].update(r.seq for r in batch.readings)
    assert sorted(partitions) == devices
    assert all(len(found) == 1 for found in partitions.values()), partitions
    assert {d: next(iter(found)) for d, found in partitions.items()} == {
        d: partition_of(d, PARTITIONS) for d in devices
    }, "the aggregators' partition_of differs from the servers' mapping"
    assert all(0 <= next(iter(found)) < PARTITIONS for found in partitions.values())
    assert len({next(iter(found)) for found in partitions.values()}) > 1, "all devices hashed alike"
    assert all({wire.TELEMETRY, wire.STATUS} <= found for found in kinds.values()), kinds
    # Nothing confirmed them: all are still in the outbox, and they reached the stream in order.
    for device in devices:
        assert seqs[device] and seqs[device] == set(range(1, max(seqs[device]) + 1))
        assert seqs[device] <= outbox_seqs(tmp_path / f"{device}.db")


def _mqtt_client(cluster: NatsCluster, device: str, node: int) -> tuple[mqtt.Client, list[str]]:
    received: list[str] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{device}", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(device, DEVICES[device])
    client.on_message = lambda _c, _u, msg: received.append(msg.topic)
    client.connect("127.0.0.1", cluster.nodes[node].mqtt_port)
    client.loop_start()
    return client, received


def test_a_device_is_confined_to_its_own_subjects(cluster: NatsCluster) -> None:
    """dev-1 cannot publish as dev-2 nor read dev-2's acks; the aggregator's ack reaches dev-2."""
    import nats

    evil, evil_got = _mqtt_client(cluster, "dev-1", node=0)
    good, good_got = _mqtt_client(cluster, "dev-2", node=1)
    try:
        for client in (evil, good):
            deadline = time.monotonic() + 10
            while not client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
        evil.subscribe(wire.device_topic("dev-2", wire.ACK), qos=1)
        good.subscribe(wire.device_topic("dev-2", wire.ACK), qos=1)
        evil.publish(wire.device_topic("dev-2", wire.TELEMETRY), b"spoofed", qos=1).wait_for_publish(5)
        good.publish(wire.device_topic("dev-2", wire.TELEMETRY), b"own", qos=1).wait_for_publish(5)
        time.sleep(1.0)

        async def ack_dev2() -> None:
            nc = await nats.connect(servers=cluster.nats_urls())
            await nc.publish(wire.nats_subject(wire.device_topic("dev-2", wire.ACK)), b"ack")
            await nc.flush()
            await nc.close()

        asyncio.run(ack_dev2())
        deadline = time.monotonic() + 5
        while not good_got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        for client in (evil, good):
            client.loop_stop()
            client.disconnect()
    assert good_got == [wire.device_topic("dev-2", wire.ACK)]
    assert evil_got == []
    assert [payload for _, payload in asyncio.run(_read_stream(cluster))] == [b"own"]


def test_accounts_refuse_role_names_and_dotted_ids() -> None:
    for bad in ("aggregator", "viewer", "a.b"):
        with pytest.raises(ServerConfError):
            device_permissions(bad)


def test_the_shipped_example_is_what_the_renderer_writes() -> None:
    """deploy/nats/accounts.conf.example stays true to accounts_conf."""
    rendered = accounts_conf(
        {"pi-kitchen-01": "$2a$11$REPLACE-WITH-THE-DEVICE-PASSWORD-BCRYPT-HASH"},
        aggregator_password="$2a$11$REPLACE-WITH-THE-AGGREGATOR-PASSWORD-BCRYPT-HASH",
        viewer_password="$2a$11$REPLACE-WITH-THE-VIEWER-PASSWORD-BCRYPT-HASH",
        system_password="$2a$11$REPLACE-WITH-THE-SYSTEM-PASSWORD-BCRYPT-HASH",
    )
    assert EXAMPLE.read_text() == rendered
