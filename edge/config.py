"""The agent's one TOML config file, validated up front with messages that name the key.

A config error is found when the agent starts, never an hour later when a sensor is first read.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from devices.broker import BrokerURL, BrokerURLError, parse_broker_url
from devices.drivers import SensorDriver, create_driver
from devices.errors import DriverError, InvalidDeviceId
from devices.model import check_device_id
from edge.errors import ConfigError


class Overflow(StrEnum):
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class Synchronous(StrEnum):
    # NORMAL survives a killed process; FULL also survives power loss, at ~half the write rate.
    NORMAL = "NORMAL"
    FULL = "FULL"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: BrokerURL
    client_id: str
    keepalive_s: int = 30
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class SensorConfig:
    name: str
    driver: str
    interval_s: float
    params: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 2


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    path: Path
    max_bytes: int = 64 * 1024 * 1024
    min_free_disk_bytes: int = 64 * 1024 * 1024
    overflow: Overflow = Overflow.DROP_OLDEST
    synchronous: Synchronous = Synchronous.NORMAL
    reserve_bytes: int = 1024 * 1024  # disk kept back for writing on when the disk fills up


@dataclass(frozen=True, slots=True)
class PublishConfig:
    batch_max_readings: int = 500
    batch_max_bytes: int = 64 * 1024
    linger_s: float = 0.25
    max_inflight: int = 32
    ack_timeout_s: float = 30.0
    ack_timeout_max_s: float = 900.0
    heartbeat_s: float = 30.0
    reconnect_base_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device_id: str
    broker: BrokerConfig
    outbox: OutboxConfig
    publish: PublishConfig
    sensors: tuple[SensorConfig, ...]
    source: Path | None = None


class _Section:
    """Reads typed keys from one table and reports errors as `file: section.key: problem`."""

    def __init__(self, data: Mapping[str, Any], where: str, source: str) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"{self.source}: {name}: {problem}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, positive: bool = False
    ) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int):
            ok = True
            value = float(value)
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"must be {names}, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(self.used))})")


def _table(root: _Section, key: str, required: bool = True) -> _Section:
    data = root.get(key, dict, ... if required else {})
    return _Section(data, key, root.source)


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> AgentConfig:
    root = _Section(data, "", source)

    device = _table(root, "device")
    device_id = device.get("id", str)
    try:
        check_device_id(device_id)
    except InvalidDeviceId as exc:
        raise device.fail("id", str(exc)) from exc
    device.check_unknown()

    broker = _table(root, "broker")
    try:
        url = parse_broker_url(broker.get("url", str))
    except BrokerURLError as exc:
        raise broker.fail("url", str(exc)) from exc
    username = broker.get("username", str, url.username)
    password = broker.get("password", str, url.password)
    url = BrokerURL(url.host, url.port, url.tls, username, password)
    base = Path(source).parent if source != "<config>" else Path.cwd()

    def _file(key: str) -> str | None:
        # Relative paths are relative to the config file, like the outbox path.
        value: str | None = broker.get(key, str, None)
        return None if value is None else str(base / Path(value).expanduser())

    broker_cfg = BrokerConfig(
        url=url,
        client_id=broker.get("client_id", str, f"edgewatch-agent-{device_id}"),
        keepalive_s=broker.get("keepalive_s", int, 30, positive=True),
        ca_file=_file("ca_file"),
        cert_file=_file("cert_file"),
        key_file=_file("key_file"),
    )
    broker.check_unknown()

    outbox = _table(root, "outbox")
    overflow = outbox.get("overflow", str, Overflow.DROP_OLDEST.value)
    if overflow not in set(Overflow):
        raise outbox.fail("overflow", f"must be one of {', '.join(Overflow)}, got {overflow!r}")
    sync = outbox.get("synchronous", str, Synchronous.NORMAL.value).upper()
    if sync not in set(Synchronous):
        raise outbox.fail("synchronous", f"must be NORMAL or FULL, got {sync!r}")
    path = Path(outbox.get("path", str)).expanduser()
    outbox_cfg = OutboxConfig(
        path=path if path.is_absolute() else base / path,
        max_bytes=outbox.get("max_bytes", int, 64 * 1024 * 1024, positive=True),
        min_free_disk_bytes=outbox.get("min_free_disk_bytes", int, 64 * 1024 * 1024),
        overflow=Overflow(overflow),
        synchronous=Synchronous(sync),
        reserve_bytes=outbox.get("reserve_bytes", int, 1024 * 1024),
    )
    if outbox_cfg.reserve_bytes < 0:
        raise outbox.fail("reserve_bytes", f"must be >= 0, got {outbox_cfg.reserve_bytes}")
    outbox.check_unknown()

    pub = _table(root, "publish", required=False)
    d = PublishConfig()
    publish_cfg = PublishConfig(
        batch_max_readings=pub.get("batch_max_readings", int, d.batch_max_readings, positive=True),
        batch_max_bytes=pub.get("batch_max_bytes", int, d.batch_max_bytes, positive=True),
        linger_s=pub.get("linger_s", float, d.linger_s),
        max_inflight=pub.get("max_inflight", int, d.max_inflight, positive=True),
        ack_timeout_s=pub.get("ack_timeout_s", float, d.ack_timeout_s, positive=True),
        ack_timeout_max_s=pub.get("ack_timeout_max_s", float, d.ack_timeout_max_s, positive=True),
        heartbeat_s=pub.get("heartbeat_s", float, d.heartbeat_s, positive=True),
        reconnect_base_s=pub.get("reconnect_base_s", float, d.reconnect_base_s, positive=True),
        reconnect_max_s=pub.get("reconnect_max_s", float, d.reconnect_max_s, positive=True),
    )
    if publish_cfg.batch_max_readings > 10_000:
        raise pub.fail("batch_max_readings", "must be <= 10000")
    pub.check_unknown()

    raw_sensors = root.get("sensors", list, [])
    sensors: list[SensorConfig] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_sensors):
        where = f"sensors[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: {where}: must be a table ([[sensors]])")
        s = _Section(raw, where, source)
        name = s.get("name", str)
        if not name or len(name) > 64:
            raise s.fail("name", "must be 1-64 characters")
        if name in names:
            raise s.fail("name", f"duplicate sensor name {name!r}")
        names.add(name)
        sensors.append(
            SensorConfig(
                name=name,
                driver=s.get("driver", str),
                interval_s=s.get("interval_s", float, positive=True),
                params=s.get("params", dict, {}),
                retries=s.get("retries", int, 2),
            )
        )
        s.check_unknown()
    root.check_unknown()
    return AgentConfig(device_id, broker_cfg, outbox_cfg, publish_cfg, tuple(sensors), None)


def load_config(path: Path | str) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cfg = parse_config(data, str(path))
    return AgentConfig(cfg.device_id, cfg.broker, cfg.outbox, cfg.publish, cfg.sensors, path)


def build_drivers(config: AgentConfig) -> dict[str, SensorDriver]:
    """Build every sensor's driver so bad driver names/params fail at start-up, not mid-run."""
    drivers: dict[str, SensorDriver] = {}
    for i, sensor in enumerate(config.sensors):
        try:
            drivers[sensor.name] = create_driver(sensor.driver, sensor.params)
        except DriverError as exc:
            for driver in drivers.values():
                driver.close()
            raise ConfigError(f"{config.source}: sensors[{i}] ({sensor.name}): {exc}") from exc
    return drivers
