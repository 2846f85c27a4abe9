"""The aggregator's settings: defaults, an optional TOML file, then command-line overrides.

A file holds one `[aggregator]` table whose keys are the field names of `AggregatorConfig`:

    [aggregator]
    broker = "mqtts://aggregator:secret@broker.example:8883"
    ca_file = "/etc/edgewatch/ca.pem"
    db = "/var/lib/edgewatch/cloud.db"     # or "postgresql://edgewatch:secret@db.example/edgewatch"
    metrics_port = 9108
    detector = "default"
    retention_days = 30

    [[notify.sinks]]            # optional: where alerts are pushed (see cloud.notify.config)
    name = "oncall"
    type = "alertmanager"
    url = "http://127.0.0.1:9093"

Broker URLs are parsed by `devices.broker.parse_broker_url` (shared with the agent); this module
adds the aggregator's own knobs and validates them before anything connects or writes.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cloud.detect import DETECTORS
from cloud.errors import ConfigError
from cloud.notify.config import NotifyConfig, parse_notify
from cloud.partitions.layout import PARTITIONS
from devices.broker import BrokerURL, BrokerURLError, parse_broker_url

DEFAULT_CLIENT_ID = "edgewatch-aggregator"


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """Everything `edgewatch cloud run` needs; the defaults suit a fleet reporting every ~10 s."""

    broker: str = "mqtt://127.0.0.1:1883"
    db: str = "edgewatch-cloud.db"  # a SQLite path or a postgresql:// URL (cloud.store.api.open_store)
    ca_file: str | None = None  # CA bundle for mqtts://; None uses the system store
    client_id: str = DEFAULT_CLIENT_ID  # stable, so the broker keeps our session while we are away
    keepalive: int = 30
    metrics_port: int = 0  # 0 = no Prometheus endpoint
    detector: str = "default"
    # Writes: one transaction per batch of at most this many messages and (after the first)
    # bytes of payload, waiting at most `linger` for more. Bigger batches are cheaper per
    # reading (bench/RESULTS.md); the byte cap bounds how long one holds the loop.
    batch_max_messages: int = 5000
    batch_max_bytes: int = 16 * 1024 * 1024
    batch_linger: float = 0.01
    max_inbox: int = 200_000  # received, unwritten messages kept; beyond it new ones are shed
    ack_interval: float = 1.0  # at most one confirmation per device per interval
    checkpoint_interval: float = 30.0
    tick_interval: float = 1.0  # silence checks, due acks, alert publications
    # Alerts.
    close_after: int = 5  # consecutive normal readings that end an anomaly episode
    close_after_seconds: float = 300.0  # ...or this long since the last anomalous reading
    late_threshold: float = 0.5  # score at which a backfilled (late) reading counts as anomalous
    silent_after: float = 120.0  # a device quiet this long (at least) raises a silent alert
    silent_factor: float = 3.0  # ...or this many of its usual message intervals, if longer
    # Validation and housekeeping.
    max_future: float = 86_400.0  # readings stamped further ahead of arrival are dead-lettered
    retention_days: float = 0.0  # 0 keeps everything
    synchronous: str = "NORMAL"  # SQLite: NORMAL survives a killed process; FULL also power loss
    # Reconnect with full jitter (devices.backoff): the n-th retry waits uniform(0, min(cap,
    # base * 2**n)) seconds. The aggregator is one client, not a herd: a low cap brings it back
    # within seconds of the broker, and with it every agent's confirmations.
    reconnect_base: float = 0.5
    reconnect_cap: float = 5.0
    # Cluster mode (cloud/partitions, deploy/nats/): read the partitioned stream from these NATS
    # servers (comma-separated nats:// URLs) instead of MQTT, sharing the partitions with the
    # other members on the same PostgreSQL store through leases of `lease_ttl` seconds.
    nats: str = ""
    member: str = ""  # this member's id among the aggregators; default host name and pid
    lease_ttl: float = 10.0
    partitions: int = PARTITIONS  # must be the servers' P (deploy/nats/accounts.conf)
    # Alert delivery: the file's [notify] table (cloud.notify.config), not a key of [aggregator].
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    def broker_url(self) -> BrokerURL:
        try:
            return parse_broker_url(self.broker)
        except BrokerURLError as exc:
            raise ConfigError(str(exc)) from exc

    def replace(self, **changes: Any) -> AggregatorConfig:
        """A copy with `changes` applied (None values are ignored) and validated."""
        clean = {k: v for k, v in changes.items() if v is not None}
        return validate(dataclasses.replace(self, **clean))


_POSITIVE = (
    "batch_max_messages",
    "batch_max_bytes",
    "max_inbox",
    "ack_interval",
    "checkpoint_interval",
    "tick_interval",
    "close_after",
    "silent_after",
    "max_future",
    "reconnect_base",
    "reconnect_cap",
    "keepalive",
    "lease_ttl",
    "partitions",
)
_NON_NEGATIVE = ("batch_linger", "close_after_seconds", "retention_days", "silent_factor")


def validate(config: AggregatorConfig) -> AggregatorConfig:
    """Raise ConfigError naming the first bad key; return the config unchanged otherwise."""
    for name in _POSITIVE:
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)!r}")
    for name in _NON_NEGATIVE:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0..65535, got {config.metrics_port}")
    if not 0 < config.late_threshold <= 1:
        raise ConfigError(f"late_threshold must be in (0, 1], got {config.late_threshold}")
    if config.synchronous.upper() not in ("NORMAL", "FULL"):
        raise ConfigError(f"synchronous must be NORMAL or FULL, got {config.synchronous!r}")
    if not config.client_id:
        raise ConfigError("client_id must not be empty")
    if config.detector not in DETECTORS:
        raise ConfigError(f"unknown detector {config.detector!r}; known: {', '.join(sorted(DETECTORS))}")
    config.broker_url()
    if config.nats and config.notify.sinks:
        raise ConfigError(
            "cluster mode (nats) does not deliver [notify] sinks yet: remove them or run one aggregator"
        )
    if config.nats and not config.db.startswith(("postgresql:", "postgres:")):
        raise ConfigError("cluster mode (nats) needs a postgresql:// store: members share it")
    if config.nats and any(not u.strip().startswith(("nats://", "tls://")) for u in config.nats.split(",")):
        raise ConfigError(f"nats must be comma-separated nats:// or tls:// URLs, got {config.nats!r}")
    return config


def _check_type(name: str, value: Any, annotation: str) -> Any:
    """Coerce a TOML value to the field's type or raise ConfigError naming the key."""
    base = annotation.replace(" | None", "")
    if value is None and annotation.endswith("| None"):
        return None
    if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    raise ConfigError(f"{name} must be a {base}, got {value!r}")


def load_config(path: Path | str | None = None, **overrides: Any) -> AggregatorConfig:
    """Defaults, then the `[aggregator]` table of `path` (if given), then non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
        table = data.get("aggregator", {})
        if not isinstance(table, dict):
            raise ConfigError(f"config {path}: [aggregator] must be a table")
        known = {f.name: str(f.type) for f in fields(AggregatorConfig) if f.name != "notify"}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"config {path}: unknown key aggregator.{key}")
            values[key] = _check_type(f"aggregator.{key}", value, known[key])
        if "notify" in data:
            try:
                values["notify"] = parse_notify(data["notify"])
            except ConfigError as exc:
                raise ConfigError(f"config {path}: {exc}") from exc
    return AggregatorConfig(**values).replace(**overrides)
