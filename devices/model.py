"""Messages that travel between devices, the aggregator and the CLI.

Every reading carries (device, epoch, seq) from the moment it is sampled: `epoch` is a random id
created with the device's outbox, `seq` counts up from 1 within it. That triple is the identity
the cloud de-duplicates on, and gaps in `seq` are how loss becomes visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from devices.errors import InvalidDeviceId, ReservedDeviceId

DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The broker usernames of the roles that are not devices. The ACL's `%u` device patterns apply to
# every username, so a role's name must never be accepted as a device id, or the `viewer` could
# feed readings (and alerts) as a device called "viewer".
ROLE_USERNAMES = frozenset({"aggregator", "viewer"})
# Names that would make one device's topics collide with another topic of the layout, or a role.
RESERVED_DEVICE_IDS = frozenset({"alerts", "telemetry", "backfill", "status", "ack"}) | ROLE_USERNAMES


def check_device_id(device: str) -> str:
    """Return `device` if it is safe as one MQTT topic level, else raise InvalidDeviceId."""
    if not isinstance(device, str) or DEVICE_ID_PATTERN.fullmatch(device) is None:
        raise InvalidDeviceId(
            f"device id {device!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    if device in ROLE_USERNAMES:
        raise ReservedDeviceId(f"device id {device!r} is the username of a broker role")
    if device in RESERVED_DEVICE_IDS:
        raise InvalidDeviceId(f"device id {device!r} is reserved")
    return device


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a driver returns: one metric's value, before it has an identity."""

    metric: str
    value: float
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Reading:
    """One sampled value with its permanent identity (device, epoch, seq)."""

    device: str
    epoch: str
    seq: int
    ts: float
    sensor: str
    metric: str
    value: float
    unit: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.device, self.epoch, self.seq)


@dataclass(frozen=True, slots=True)
class RejectedReading:
    """A reading inside an otherwise valid batch that failed validation (e.g. NaN)."""

    index: int
    seq: int | None
    reason: str
    raw: object


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """The readings one MQTT message carries; all from one device and epoch."""

    device: str
    epoch: str
    msg_id: str
    sent_at: float
    readings: tuple[Reading, ...]
    rejected: tuple[RejectedReading, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The aggregator's word that it durably recorded these seq ranges (inclusive)."""

    device: str
    epoch: str
    ranges: tuple[tuple[int, int], ...]
    msg_id: str = ""


class StatusEvent(StrEnum):
    BIRTH = "birth"
    HEARTBEAT = "heartbeat"
    SHUTDOWN = "shutdown"
    WILL = "will"


@dataclass(frozen=True, slots=True)
class Status:
    """Birth, heartbeat, clean shutdown or last will of an agent, with its counters."""

    device: str
    event: StatusEvent
    ts: float
    epoch: str = ""
    agent_version: str = ""
    counters: dict[str, float] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.event in (StatusEvent.BIRTH, StatusEvent.HEARTBEAT)


class AlertKind(StrEnum):
    ANOMALY = "anomaly"
    SILENT = "silent"


class AlertState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert episode as published on `edgewatch/v1/alerts/<device>` when it opens or closes."""

    alert_id: str
    device: str
    metric: str
    kind: AlertKind
    state: AlertState
    start: float
    end: float | None
    peak_score: float
    value: float | None
    expected_low: float | None
    expected_high: float | None
    severity: str = "warning"
    late: bool = False
    detector: str = ""
    msg_id: str = ""
    sensor: str = ""  # since v1.1: tells two sensors of the same metric on one device apart
    # since v1.2: why. What the opening reading was (spike, dip, level_shift, stuck, ...; it
    # stays the episode's kind), the reason for the reading at the peak in the stream's units
    # (the one `value` and the expected range describe), the opening reading's reason, and when
    # the peak was. Empty (None) for a silent alert and in a v1.0/1.1 message.
    anomaly_kind: str = ""
    evidence: str = ""
    opening_evidence: str = ""
    peak_ts: float | None = None
