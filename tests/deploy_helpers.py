"""The SHIPPED production broker config, rendered for a test, plus TLS clients that use it.

`ProductionBroker` starts mosquitto with deploy/mosquitto/production.conf and deploy/mosquitto/acl
exactly as shipped, changing only what a test must: loopback ports for 8883/8884, paths under a
temp dir, a log file instead of stderr, and `user root` when running as root. Every substitution
must hit, so a change to the shipped file cannot silently leave the test on the old settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.mosquitto import MOSQUITTO, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PRODUCTION_CONF = DEPLOY / "mosquitto" / "production.conf"
ACL = DEPLOY / "mosquitto" / "acl"
MAKE_CA = DEPLOY / "make-ca.sh"


def make_ca(directory: Path) -> Path:
    """A CA plus a server certificate for 127.0.0.1/localhost, made by the shipped script."""
    subprocess.run(
        ["sh", str(MAKE_CA), "--dir", str(directory), "--host", "localhost", "--ip", "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return directory


def render(conf: str, *, etc: Path, data: Path, tls_port: int, cert_port: int, log: Path) -> str:
    subs = [
        ("/etc/mosquitto/edgewatch/", f"{etc}/"),
        ("/var/lib/mosquitto/", f"{data}/"),
        ("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n"),
        ("\nlistener 8884\n", f"\nlistener {cert_port} 127.0.0.1\n"),
        ("\nlog_dest stderr\n", f"\nlog_dest file {log}\n"),
    ]
    for old, new in subs:
        assert old in conf, f"production.conf no longer contains {old!r}: update the test renderer"
        conf = conf.replace(old, new)
    return ("user root\n" if os.geteuid() == 0 else "") + conf


class ProductionBroker:
    """mosquitto with the shipped production config; `reload()` is `systemctl reload mosquitto`."""

    def __init__(self, workdir: Path, pki: Path) -> None:
        self.etc = workdir / "etc"
        self.certs = self.etc / "certs"
        self.data = workdir / "data"
        self.log_path = workdir / "mosquitto.log"
        self.data.mkdir(parents=True)
        # A copy of the CA per broker doubles as its cert dir: revoking writes the crl.pem it reads.
        shutil.copytree(pki, self.certs)
        shutil.copy(ACL, self.etc / "acl")
        (self.etc / "passwd").touch(mode=0o640)
        self.passwd = self.etc / "passwd"
        self.acl = self.etc / "acl"
        self.host = "127.0.0.1"
        self.tls_port = free_port()
        self.cert_port = free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(
            render(
                PRODUCTION_CONF.read_text(),
                etc=self.etc,
                data=self.data,
                tls_port=self.tls_port,
                cert_port=self.cert_port,
                log=self.log_path,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProductionBroker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.tls_port)
            wait_port(self.cert_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}") from None
        return self

    def reload(self) -> None:
        """SIGHUP: re-read passwd, acl and the CRL; wait until the log says it did."""
        assert self.proc is not None
        before = self.log_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.log_text().count("Reloading config") <= before:
            assert time.monotonic() < deadline, "mosquitto did not reload"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@dataclass
class Client:
    """A paho client on its own network thread that records connect result and messages."""

    port: int
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert: tuple[Path, Path] | None = None
    client_id: str = ""
    connack: ReasonCode | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    suback: list[ReasonCode] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dropped: bool = False

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        # No ca_file: the system trust store, which does not know our private CA.
        self.client.tls_set(
            ca_certs=str(self.ca_file) if self.ca_file else None,
            certfile=str(self.cert[0]) if self.cert else None,
            keyfile=str(self.cert[1]) if self.cert else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        # A dropped client's network thread waits this long before retrying; close() waits for it.
        self.client.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]  # floats work

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc

    def _on_disconnect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.dropped = True

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
        self.suback.extend(rcs)

    def connect(self, timeout: float = 10.0) -> ReasonCode:
        """The CONNACK's reason code.

        A server certificate we do not trust raises ssl.SSLError here; a client certificate the
        broker refuses raises ConnectionError (under TLS 1.3 the client learns of it only after
        its handshake has finished, when the broker closes the connection).
        """
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        # Driven by hand until CONNACK: a refused client must not start paho's reconnect loop.
        deadline = time.monotonic() + timeout
        while (connack := self.connack) is None:
            rc = self.client.loop(0.05)
            if self.connack is None and (self.dropped or rc != mqtt.MQTT_ERR_SUCCESS):
                raise ConnectionError("the broker closed the connection before CONNACK")
            assert time.monotonic() < deadline, "no CONNACK"
        if connack.is_failure:
            self.client.disconnect()
        else:
            self.client.loop_start()
        return connack

    def subscribe(self, topic: str, timeout: float = 10.0) -> ReasonCode:
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + timeout
        while len(self.suback) == before:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.01)
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        """QoS 1 and wait for PUBACK (which MQTT 3.1.1 sends even when the ACL drops it)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
