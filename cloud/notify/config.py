"""The `[notify]` part of cloud.toml: which sinks exist and which alerts each one gets.

    [[notify.sinks]]
    name = "oncall"                       # shown by `edgewatch notify status`, used by `notify test`
    type = "alertmanager"                 # or "webhook"
    url = "http://127.0.0.1:9093"         # Alertmanager's base URL; a webhook's full URL
    [notify.sinks.route]                  # every list optional; empty or absent matches all
    devices = ["pi-*", "greenhouse-??"]   # shell globs on the device id
    metrics = ["temperature"]
    kinds = ["anomaly", "silent"]
    severities = ["critical"]

Secrets never sit in this file or on a command line: `header_files` maps a header to a file
whose content is its value (`Authorization = "/etc/edgewatch/webhook-token"`, holding
`Bearer ...`), `secret_file` holds a webhook's HMAC key. Files are read when the aggregator
starts; a missing one is a ConfigError naming the key.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from cloud.errors import ConfigError
from cloud.notify.sinks import SINKS


@dataclass(frozen=True, slots=True)
class Route:
    """Which alerts a sink gets; each non-empty list must match (lists combine with AND)."""

    devices: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()

    def matches(self, alert: Mapping[str, Any]) -> bool:
        """
        >>> r = Route(devices=("pi-*",), kinds=("anomaly",))
        >>> r.matches({"device": "pi-7", "metric": "t", "kind": "anomaly", "severity": "warning"})
        True
        >>> r.matches({"device": "gw-1", "metric": "t", "kind": "anomaly", "severity": "warning"})
        False
        """
        device = str(alert.get("device", ""))
        if self.devices and not any(fnmatch.fnmatchcase(device, g) for g in self.devices):
            return False
        for values, key in ((self.metrics, "metric"), (self.kinds, "kind"), (self.severities, "severity")):
            if values and str(alert.get(key, "")) not in values:
                return False
        return True


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str
    type: str
    url: str
    route: Route = field(default_factory=Route)
    timeout_s: float = 5.0  # per request; a timeout is retried
    group_s: float = 0.0  # transitions of one device within this window go out as one notification
    rate_per_s: float = 5.0  # notifications per second at most (token bucket) ...
    burst: int = 10  # ... with this many at once after a quiet spell
    retry_base_s: float = 1.0  # backoff (devices.backoff.full_jitter): retry n waits up to
    retry_cap_s: float = 300.0  # min(cap, base * 2 ** (n - 1)); a Retry-After (<= max_retry_after_s) wins
    max_retry_after_s: float = 3600.0
    headers: tuple[tuple[str, str], ...] = ()  # literal headers (nothing secret)
    header_files: tuple[tuple[str, str], ...] = ()  # header name -> file holding its value
    # webhook
    secret_file: str | None = None  # HMAC-SHA256 key: signs the body in `signature_header`
    signature_header: str = "X-Edgewatch-Signature"
    slack_text: bool = False  # add a Slack-compatible "text" field
    # alertmanager
    resend_s: float = 60.0  # re-post open alerts this often (keep it below resolve_timeout)


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    sinks: tuple[SinkConfig, ...] = ()
    poll_s: float = 0.5  # how often an idle sink looks for due deliveries

    def sink(self, name: str) -> SinkConfig:
        for s in self.sinks:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sinks) or "none configured"
        raise ConfigError(f"no notify sink named {name!r} (known: {known})")


_FLOATS: Final = ("timeout_s", "group_s", "rate_per_s", "retry_base_s", "retry_cap_s", "max_retry_after_s",
                  "resend_s")  # fmt: skip
_POSITIVE: Final = ("timeout_s", "rate_per_s", "retry_base_s", "retry_cap_s", "resend_s", "burst")


def parse_notify(table: Any, where: str = "notify") -> NotifyConfig:
    """A `[notify]` table -> NotifyConfig; ConfigError naming the first bad key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - {"sinks", "poll_s"}
    if unknown:
        raise ConfigError(f"unknown key {where}.{sorted(unknown)[0]}")
    poll = table.get("poll_s", 0.5)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise ConfigError(f"{where}.poll_s must be a number > 0, got {poll!r}")
    raw = table.get("sinks", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.sinks must be an array of tables ([[notify.sinks]])")
    sinks = tuple(_sink(item, f"{where}.sinks[{i}]") for i, item in enumerate(raw))
    names = [s.name for s in sinks]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}.sinks: the name {name!r} is used twice")
    return NotifyConfig(sinks, float(poll))


def _sink(item: Any, where: str) -> SinkConfig:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table")
    known = {f.name for f in fields(SinkConfig)}
    values: dict[str, Any] = {}
    for key, value in item.items():
        if key not in known:
            raise ConfigError(f"unknown key {where}.{key}")
        name = f"{where}.{key}"
        if key == "route":
            values[key] = _route(value, name)
        elif key in ("headers", "header_files"):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{name} must be a table of strings")
            values[key] = tuple(sorted(value.items()))
        elif key in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            values[key] = float(value)
        elif key == "burst":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            values[key] = value
        elif key == "slack_text":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            values[key] = value
        else:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
            values[key] = value
    for required in ("name", "type", "url"):
        if required not in values:
            raise ConfigError(f"{where}.{required} is required")
    if values["type"] not in SINKS:
        raise ConfigError(f"{where}.type: unknown sink type {values['type']!r}; known: {', '.join(SINKS)}")
    if not str(values["url"]).startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url must be an http:// or https:// URL, got {values['url']!r}")
    config = SinkConfig(**values)
    for key in _POSITIVE:
        if not getattr(config, key) > 0:
            raise ConfigError(f"{where}.{key} must be > 0, got {getattr(config, key)!r}")
    if config.group_s < 0:
        raise ConfigError(f"{where}.group_s must be >= 0, got {config.group_s!r}")
    return config


def _route(value: Any, where: str) -> Route:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    out: dict[str, tuple[str, ...]] = {}
    for key, items in value.items():
        if key not in ("devices", "metrics", "kinds", "severities"):
            raise ConfigError(f"unknown key {where}.{key}")
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}.{key} must be a list of strings")
        out[key] = tuple(items)
    return Route(**out)
