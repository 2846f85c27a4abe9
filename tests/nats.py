"""A private 3-node NATS JetStream cluster with MQTT listeners, on free loopback ports.

Each node runs deploy/nats/node.conf itself (what differs between nodes comes from its
environment, as in production) with an accounts.conf rendered by
cloud.partitions.serverconf for the test's devices, and its own store dir. Never the machine's
shared NATS on 4222. A node can be SIGKILLed and started again on the same ports and store.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud.partitions.layout import stream_config
from cloud.partitions.serverconf import accounts_conf
from tests.mosquitto import free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
NODE_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "node.conf"
AGGREGATOR_PASSWORD = "aggregator-secret"  # a loopback test server's passwords
VIEWER_PASSWORD = "viewer-secret"
SYSTEM_PASSWORD = "system-secret"


class NatsNode:
    def __init__(self, workdir: Path, name: str) -> None:
        self.name = name
        self.workdir = workdir
        self.client_port = free_port()
        self.cluster_port = free_port()
        self.mqtt_port = free_port()
        self.store = workdir / f"store-{name}"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def mqtt_url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """Three nodes; `devices` maps each device id the test uses to its password."""

    def __init__(self, workdir: Path, devices: Mapping[str, str], *, partitions: int) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.devices = dict(devices)
        self.nodes = [NatsNode(workdir, f"n{i}") for i in range(1, 4)]
        shutil.copy(NODE_CONF, workdir / "node.conf")
        (workdir / "accounts.conf").write_text(
            accounts_conf(
                devices,
                aggregator_password=AGGREGATOR_PASSWORD,
                viewer_password=VIEWER_PASSWORD,
                system_password=SYSTEM_PASSWORD,
                partitions=partitions,
            )
        )

    def nats_urls(self) -> list[str]:
        return [f"nats://aggregator:{AGGREGATOR_PASSWORD}@127.0.0.1:{n.client_port}" for n in self.nodes]

    def device_url(self, device: str, node: int = 0) -> str:
        return self.nodes[node].mqtt_url(device, self.devices[device])

    def _env(self, node: NatsNode) -> dict[str, str]:
        routes = {
            f"EW_NATS_ROUTE_{i}": f"nats-route://127.0.0.1:{n.cluster_port}"
            for i, n in enumerate(self.nodes, 1)
        }
        return {
            **os.environ,
            "EW_NATS_NAME": node.name,
            "EW_NATS_CLIENT": f"127.0.0.1:{node.client_port}",
            "EW_NATS_STORE": str(node.store),
            "EW_NATS_CLUSTER": f"127.0.0.1:{node.cluster_port}",
            "EW_NATS_MQTT": f"127.0.0.1:{node.mqtt_port}",
            **routes,
        }

    def start_node(self, index: int) -> None:
        node = self.nodes[index]
        assert not node.running, f"{node.name} already running"
        log = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.workdir / "node.conf")],
            env=self._env(node),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_port(node.client_port)
            wait_port(node.mqtt_port)
        except TimeoutError:
            self.kill_node(index)
            log_text = self.log_text(index)
            raise RuntimeError(f"nats-server {node.name} did not start; log:\n{log_text}") from None

    def kill_node(self, index: int) -> None:
        """SIGKILL: no goodbye to the cluster, the store dir as the kill left it."""
        node = self.nodes[index]
        if node.proc is None:
            return
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)
        node.proc = None

    def start(self, *, stream_replicas: int = 3, timeout: float = 30.0) -> None:
        for index in range(len(self.nodes)):
            self.start_node(index)
        asyncio.run(self._create_stream(stream_replicas, deadline=time.monotonic() + timeout))
        self._warm_up_mqtt(time.monotonic() + timeout)

    def _warm_up_mqtt(self, deadline: float) -> None:
        """Wait until every node grants a QoS 1 subscription. A node creates the account's
        MQTT streams on its first MQTT client; agents that connect all at once meanwhile can
        be refused a subscription (SUBACK 0x80) and then never hear their acks."""
        import paho.mqtt.client as mqtt

        device, password = next(iter(self.devices.items()))
        for index, node in enumerate(self.nodes):
            while True:
                granted: list[int] = []
                client = mqtt.Client(
                    mqtt.CallbackAPIVersion.VERSION2, client_id=f"warm-up-{index}", protocol=mqtt.MQTTv311
                )
                client.username_pw_set(device, password)
                client.on_subscribe = lambda _c, _u, _mid, codes, _p, got=granted: got.extend(
                    c.value for c in codes
                )
                try:
                    client.connect("127.0.0.1", node.mqtt_port)
                    client.loop_start()
                    client.subscribe(f"edgewatch/v1/{device}/ack", qos=1)
                    until = time.monotonic() + 3
                    while not granted and time.monotonic() < until:
                        time.sleep(0.05)
                finally:
                    client.loop_stop()
                    client.disconnect()
                if granted == [1]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} never granted a QoS 1 subscription: {granted}")
                time.sleep(0.2)

    async def _create_stream(self, replicas: int, *, deadline: float) -> None:
        """Wait for a JetStream meta leader (the cluster formed), then create the stream."""
        import nats
        from nats.js.api import StreamConfig
        from nats.js.errors import APIError, ServiceUnavailableError

        nc = await nats.connect(servers=self.nats_urls())
        try:
            js = nc.jetstream(timeout=5)
            while True:
                try:
                    await js.add_stream(StreamConfig.from_response(stream_config(replicas=replicas)))
                    return
                except (APIError, ServiceUnavailableError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def stream_info(self) -> Any:
        import nats

        from cloud.partitions.layout import STREAM

        nc = await nats.connect(servers=self.nats_urls())
        try:
            return await nc.jetstream().stream_info(STREAM)
        finally:
            await nc.close()

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            self.kill_node(index)

    def log_text(self, index: int) -> str:
        path = self.nodes[index].log_path
        return path.read_text(errors="replace") if path.exists() else ""
