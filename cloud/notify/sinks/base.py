"""What every sink is: a pure function from queued alert transitions to one HTTP request.

Sinks never do I/O (the delivery shell sends what they render), so each one is tested by
looking at the request it builds; `cloud.notify.sinks.SINKS` is the registry by `type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloud.errors import ConfigError
from cloud.notify.queue import Notice

if TYPE_CHECKING:  # the config module validates sink types against this package's registry
    from cloud.notify.config import SinkConfig


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    method: str = "POST"


class Sink(Protocol):
    config: SinkConfig
    per_device: bool  # one notification carries one device's transitions (False: any device's)
    resends: bool  # the receiver forgets: re-post the open alerts every resend_s

    def render(self, notices: Sequence[Notice], now: float) -> HttpRequest:
        """One notification carrying `notices` (one device's, in queue order)."""
        ...

    def resend(self, open_alerts: Sequence[Mapping[str, Any]], now: float) -> HttpRequest | None:
        """The periodic re-post of the open alerts (None when there are none, or `resends` is False)."""
        ...


def common_headers(config: SinkConfig) -> tuple[tuple[str, str], ...]:
    """Content type, the literal headers, then those read from files (read once, at start)."""
    files = tuple(
        (name, read_secret(path, f"notify sink {config.name}: header_files.{name}"))
        for name, path in config.header_files
    )
    return (("Content-Type", "application/json"), ("User-Agent", "edgewatch-notify"), *config.headers, *files)


def explain(alert: Mapping[str, Any]) -> str:
    """One line a person reads first: what, where, how far out of range.

    >>> explain({"kind": "anomaly", "device": "pi-1", "sensor": "room", "metric": "temperature",
    ...          "value": 35.2, "expected_low": 19.5, "expected_high": 21.0, "peak_score": 0.97,
    ...          "state": "open"})
    'temperature on pi-1/room is 35.2, expected 19.5..21 (score 0.97)'
    >>> explain({"kind": "silent", "device": "pi-1", "detector": "last_will", "state": "closed"})
    'pi-1 went silent (last_will); it is back'
    """
    device = alert.get("device", "")
    if alert.get("kind") == "silent":
        why = f" ({alert['detector']})" if alert.get("detector") else ""
        tail = "; it is back" if alert.get("state") == "closed" else ""
        return f"{device} went silent{why}{tail}"
    where = f"{device}/{alert['sensor']}" if alert.get("sensor") else str(device)
    text = f"{alert.get('metric', '')} on {where}"
    value = alert.get("value")
    if value is not None:
        text += f" {'was' if alert.get('state') == 'closed' else 'is'} {value:.4g}"
    expected = expected_range(alert)
    if expected:
        text += f", expected {expected}"
    score = alert.get("peak_score")
    if score is not None:
        text += f" (score {score:.2f})"
    return text


def expected_range(alert: Mapping[str, Any]) -> str:
    low, high = alert.get("expected_low"), alert.get("expected_high")
    if low is None or high is None:
        return ""
    return f"{low:.4g}..{high:.4g}"


def show_command(alert: Mapping[str, Any]) -> str:
    return f"edgewatch alerts show {alert.get('alert_id', '')}"


def read_secret(path: str, key: str) -> str:
    """The stripped content of a secret file; ConfigError naming the key when unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
