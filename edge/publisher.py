"""The MQTT link: one paho client per connection, driven from the agent's own loop.

A fresh client per connection attempt is deliberate. paho keeps unacknowledged QoS 1 messages in
memory and re-sends them after a reconnect; the outbox also re-sends them. Two owners of a retry
make duplicates and, past 65,535 in flight, silent loss (rc=15). Here the outbox is the only owner:
when a connection dies, its client and whatever it held die with it, and the outbox marks those
readings pending again.

The client is driven by `loop()` calls from the agent's thread (no paho thread), so every paho
callback runs on the thread that owns the SQLite outbox, and a PUBACK is never processed before
the publish that caused it has been recorded. The socket wait is our own `poll()`, not paho's
`loop()`: paho's uses select(), which fails on descriptors past 1024, and a simulator running
hundreds of agents (each with a socket and three SQLite files) gets there quickly.
"""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import wire
from edge.config import BrokerConfig
from edge.errors import AgentError

log = logging.getLogger("edgewatch.agent.link")


class LinkError(AgentError):
    """Could not connect, or the broker refused us (the reason says which)."""


class Link:
    """One connection to the broker for one device."""

    def __init__(
        self,
        config: BrokerConfig,
        device: str,
        *,
        will: bytes,
        on_message: Callable[[str, bytes], None],
        max_inflight: int,
    ) -> None:
        self.config = config
        self.device = device
        self._on_message_cb = on_message
        self.connected = False
        self.session_present = False
        self._connack: Any = None
        self._acked: list[int] = []
        self.lost_reason: str | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(logging.getLogger("edgewatch.agent.paho"))
        # Our window bounds what is in flight; paho must never queue beyond it on its own.
        client.max_inflight_messages_set(max_inflight + 8)
        client.max_queued_messages_set(max_inflight + 8)
        if config.url.username:
            client.username_pw_set(config.url.username, config.url.password)
        if config.url.tls:
            try:
                client.tls_set(
                    ca_certs=config.ca_file,
                    certfile=config.cert_file,
                    keyfile=config.key_file,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise LinkError(f"TLS setup failed: {exc}") from exc
        client.will_set(wire.device_topic(device, wire.STATUS), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    # paho callbacks: they run inside loop(); none may raise, or paho's loop dies with it.

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connack = rc
        if not rc.is_failure:
            self.connected = True
            self.session_present = bool(getattr(flags, "session_present", False))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected = False
        self.lost_reason = str(rc)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._acked.append(mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message_cb(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("message handler failed on %s; dropped", msg.topic)

    # ------------------------------------------------------------------------------------------

    def connect(self, timeout_s: float, idle: Callable[[], None]) -> None:
        """Connect and wait for CONNACK; `idle` runs between polls (the agent keeps sampling)."""
        url = self.config.url
        try:
            self.client.connect(url.host, url.port, keepalive=self.config.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise LinkError(f"cannot connect to {url.redacted()}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while self._connack is None:
            rc = self._io(0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                self._close_socket()
                raise LinkError(
                    f"connection to {url.redacted()} lost before CONNACK ({mqtt.error_string(rc)})"
                )
            if time.monotonic() > deadline:
                self._close_socket()
                raise LinkError(f"no CONNACK from {url.redacted()} within {timeout_s}s")
            idle()
        if not self.connected:
            self._close_socket()
            raise LinkError(f"broker {url.redacted()} refused the connection: {self._connack}")
        result, _ = self.client.subscribe(wire.device_topic(self.device, wire.ACK), qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._close_socket()
            raise LinkError(f"subscribe failed: {mqtt.error_string(result)}")

    def loop(self, timeout: float) -> bool:
        """Run network I/O for up to `timeout`; False once the connection is gone."""
        if not self.connected:
            return False
        rc = self._io(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.connected = False
            self.lost_reason = self.lost_reason or mqtt.error_string(rc)
        return self.connected

    def _io(self, timeout: float) -> int:
        """Wait up to `timeout` for the socket, then let paho read, write and keep alive."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return int(mqtt.MQTT_ERR_NO_CONN)
        pending = getattr(sock, "pending", None)  # TLS may hold decrypted bytes already
        if pending is not None and pending() > 0:
            readable, writable = True, client.want_write()
        else:
            poller = select.poll()
            poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
            events = poller.poll(max(0.0, timeout) * 1000)
            mask = events[0][1] if events else 0
            readable = bool(mask & (select.POLLIN | select.POLLERR | select.POLLHUP))
            writable = bool(mask & select.POLLOUT)
        if readable:
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return int(rc)
        if writable or client.want_write():
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return int(rc)
        return int(client.loop_misc())

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Hand a QoS 1 message to the socket; its mid, or None if the client did not take it.

        Any rc but success means the message is not ours to count on (rc=4 while disconnected
        keeps it in paho's memory of a client we are about to discard; rc=15 drops it).
        """
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish on %s not accepted: %s", topic, mqtt.error_string(info.rc))
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                self.connected = False
            return None
        return int(info.mid)

    def take_acked(self) -> list[int]:
        acked, self._acked = self._acked, []
        return acked

    def close(self, *, last_words: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Disconnect cleanly, first publishing `last_words` (retained) if still connected."""
        if self.connected and last_words is not None:
            mid = self.publish(last_words[0], last_words[1], retain=True)
            deadline = time.monotonic() + timeout_s
            while mid is not None and mid not in self._acked and self.connected:
                if time.monotonic() > deadline:
                    break
                self.loop(0.05)
        if self.connected:
            self.client.disconnect()
        self._close_socket()
        self.connected = False

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a pulled cable would."""
        self._close_socket()
        self.connected = False

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
