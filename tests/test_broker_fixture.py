from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from tests.mosquitto import Mosquitto


@pytest.mark.broker
def test_broker_round_trip_and_restart(broker: Mosquitto) -> None:
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(broker.host, broker.port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    pub.publish("t/x", b"one", qos=1).wait_for_publish(5)
    broker.restart()
    assert broker.running
    assert broker.port != 1883
    pub.loop_stop()
    sub.loop_stop()
    assert got == [b"one"]
