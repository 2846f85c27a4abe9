"""A test stand-in for the aggregator's confirmations: records every reading it receives and,
while confirming, acks each message's seqs on the device's ack topic (only after recording)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import wire
from devices.model import Ack


class Confirmer:
    def __init__(self, host: str, port: int, *, client_id: str = "test-confirmer") -> None:
        self.host = host
        self.port = port
        self.confirming = True
        self.received: Counter[tuple[str, str, int]] = Counter()
        self.by_topic: Counter[str] = Counter()
        self.messages = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        client.subscribe([(wire.SUB_TELEMETRY, 1), (wire.SUB_BACKFILL, 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        batch = wire.decode_readings(msg.payload)
        with self.lock:
            self.messages += 1
            self.by_topic[msg.topic.rsplit("/", 1)[-1]] += len(batch.readings)
            for r in batch.readings:
                self.received[r.key] += 1
        if self.confirming:
            ack = Ack(batch.device, batch.epoch, wire.seq_ranges(r.seq for r in batch.readings))
            client.publish(wire.device_topic(batch.device, wire.ACK), wire.encode_ack(ack), qos=1)

    def start(self) -> Confirmer:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def seqs(self, device: str, epoch: str) -> set[int]:
        with self.lock:
            return {k[2] for k in self.received if k[0] == device and k[1] == epoch}

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.received.values())


def wait_for(predicate: Callable[[], bool], timeout: float, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
