"""A live stream of alerts over MQTT, for `edgewatch alerts follow` and the demo's screen.

It needs only the broker (no database), so it works from a laptop against a remote broker with a
read-only account. Its own network thread drives paho and reconnects with the back-off every
edgewatch client uses (`devices.backoff`); a bad payload is counted and skipped, never fatal.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.markup import escape

from devices import wire
from devices.backoff import Backoff
from devices.broker import BrokerURL
from devices.errors import WireError
from devices.model import AlertEvent, AlertState

log = logging.getLogger("edgewatch.follow")


class AlertFeed:
    """Subscribes to alert topics and hands decoded alerts to the caller's thread via a queue."""

    def __init__(self, url: BrokerURL, *, device: str | None = None, ca_file: str | None = None) -> None:
        self.url = url
        self.topic = wire.alert_topic(device) if device else wire.SUB_ALERTS
        self.alerts: queue.SimpleQueue[AlertEvent] = queue.SimpleQueue()
        self.bad_payloads = 0
        self.connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgewatch-follow-{uuid.uuid4().hex[:8]}",
            clean_session=True,
        )
        if url.username:
            client.username_pw_set(url.username, url.password)
        if url.tls:
            client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self.backoff = Backoff(base_s=0.5, max_s=10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-feed", daemon=True)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("broker refused the connection: %s", rc)
            return
        client.subscribe(self.topic, qos=1)
        self.backoff.reset()
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, *args: object) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.alerts.put(wire.decode_alert(bytes(msg.payload)))
        except WireError as exc:
            self.bad_payloads += 1
            log.warning("skipped a bad alert payload on %s: %s", msg.topic, exc)

    def start(self) -> AlertFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        """Connect, serve until the connection drops, wait out the back-off, again; until stop."""
        client = self.client
        while not self._stop.is_set():
            try:
                client.connect(self.url.host, self.url.port, keepalive=30)
            except (OSError, ValueError) as exc:  # refused, unreachable, TLS (ssl.SSLError)
                log.warning("cannot reach the broker %s: %s", self.url.redacted(), exc)
            else:
                while not self._stop.is_set():
                    if client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                        break
                self.connected.clear()
            if not self._stop.is_set():
                self._stop.wait(self.backoff.next_delay())
        client.disconnect()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def get(self, timeout: float) -> AlertEvent | None:
        try:
            return self.alerts.get(timeout=timeout)
        except queue.Empty:
            return None


def _ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_alert(alert: AlertEvent) -> str:
    """One line per alert event, with rich markup: opening alerts stand out."""
    expected = (
        f" expected {alert.expected_low:.4g}..{alert.expected_high:.4g}"
        if alert.expected_low is not None and alert.expected_high is not None
        else ""
    )
    value = f" value {alert.value:.4g}" if alert.value is not None else ""
    if alert.evidence:  # v1.2: the reason names the value (and the range) in the stream's units
        value = expected = ""
    late = " [magenta]LATE[/]" if alert.late else ""
    # The same labels as `alerts list`: sensor/metric (v1.1 alerts), the metric alone, or "-".
    series = f"{alert.sensor}/{alert.metric}" if alert.sensor and alert.metric else (alert.metric or "-")
    if alert.state is AlertState.OPEN:
        head = f"[bold red]OPEN  [/] {alert.kind:<7}"
    else:
        head = f"[green]CLOSED[/] {alert.kind:<7}"
    # Why (v1.2 alerts): the kind and the reason for the reading shown, in the stream's units.
    what = alert.anomaly_kind.replace("_", " ")
    why = f" [yellow]{escape(what)}[/]" if what else ""
    if alert.evidence:
        why += f"{':' if what else ''} {escape(alert.evidence)}"
    return (
        f"{_ts(alert.start)} {head} [bold]{alert.device}[/] {series}"
        f" score {alert.peak_score:.2f}{value}{expected}{late}{why} [dim]{alert.alert_id}[/]"
    )


def follow(
    url: BrokerURL,
    *,
    emit: Callable[[str], None],
    stop: threading.Event,
    device: str | None = None,
    ca_file: str | None = None,
    idle: Callable[[], None] | None = None,
) -> int:
    """Print alerts as they arrive until `stop` is set; returns how many were shown."""
    feed = AlertFeed(url, device=device, ca_file=ca_file).start()
    shown = 0
    try:
        while not stop.is_set():
            alert = feed.get(timeout=0.2)
            if alert is not None:
                emit(format_alert(alert))
                shown += 1
            elif idle is not None:
                idle()
    finally:
        feed.stop()
    return shown


__all__ = ["AlertFeed", "follow", "format_alert"]
