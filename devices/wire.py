"""The one place where edgewatch messages become bytes and bytes become messages.

Format v1 is a JSON object per MQTT message with `"v": "MAJOR.MINOR"` and `"kind"`. A reader
accepts any minor version of a major it knows and ignores fields it does not know, so writers can
add fields in a minor release without breaking older aggregators. A new major is rejected with
`UnsupportedVersion`. Golden files in tests/golden pin the exact bytes of what this version
writes (v1.2) and what v1.0 and v1.1 writers sent (still read).

Topic layout (one level per device, so ACLs can be written per device):

    edgewatch/v1/<device>/telemetry   readings sampled while connected (QoS 1)
    edgewatch/v1/<device>/backfill    readings drained from the outbox after an outage (QoS 1)
    edgewatch/v1/<device>/status      birth (retained), heartbeat, shutdown, last will (retained)
    edgewatch/v1/<device>/ack         the aggregator's confirmations of stored seq ranges (QoS 1)
    edgewatch/v1/alerts/<device>      alert episodes opening and closing (QoS 1)

On a NATS cluster (cloud/partitions) the same topics are NATS subjects with `.` for `/`, and the
server maps a device's telemetry, backfill and status into one partition of the stream by a
hash of the device id: `part.<p>.edgewatch.v1.<device>.<kind>` (see `parse_partition_subject`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import orjson

from devices.errors import InvalidDeviceId, TopicError, UnsupportedVersion, WireError
from devices.model import (
    Ack,
    AlertEvent,
    AlertKind,
    AlertState,
    Reading,
    ReadingBatch,
    RejectedReading,
    Status,
    StatusEvent,
    check_device_id,
)

MAJOR: Final = 1
MINOR: Final = 2  # 1.1: alerts carry `sensor`; 1.2: alerts say why (anomaly_kind, evidence, ...)
VERSION: Final = f"{MAJOR}.{MINOR}"
PREFIX: Final = f"edgewatch/v{MAJOR}"

# Larger messages are refused before parsing: a reader's memory is not an attacker's to fill.
MAX_MESSAGE_BYTES: Final = 256 * 1024
# Readings stamped outside this window are absurd (2000-01-01 .. 2100-01-01, unix seconds).
MIN_TS: Final = 946_684_800.0
MAX_TS: Final = 4_102_444_800.0
MAX_NAME_LEN: Final = 64

TELEMETRY: Final = "telemetry"
BACKFILL: Final = "backfill"
STATUS: Final = "status"
ACK: Final = "ack"
ALERTS: Final = "alerts"
DEVICE_KINDS: Final = frozenset({TELEMETRY, BACKFILL, STATUS, ACK})

SUB_TELEMETRY: Final = f"{PREFIX}/+/{TELEMETRY}"
SUB_BACKFILL: Final = f"{PREFIX}/+/{BACKFILL}"
SUB_STATUS: Final = f"{PREFIX}/+/{STATUS}"
SUB_ALERTS: Final = f"{PREFIX}/{ALERTS}/+"


def device_topic(device: str, kind: str) -> str:
    if kind not in DEVICE_KINDS:
        raise TopicError(f"unknown topic kind {kind!r}")
    return f"{PREFIX}/{check_device_id(device)}/{kind}"


def alert_topic(device: str) -> str:
    return f"{PREFIX}/{ALERTS}/{check_device_id(device)}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a device topic into (device, kind); alerts topics give (device, "alerts")."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"topic {topic!r} is not under {PREFIX}/<device>/<kind>")
    if parts[2] == ALERTS:
        device, kind = parts[3], ALERTS
    else:
        device, kind = parts[2], parts[3]
        if kind not in DEVICE_KINDS:
            raise TopicError(f"topic {topic!r} has unknown kind {kind!r}")
    try:
        check_device_id(device)
    except InvalidDeviceId as exc:
        raise TopicError(str(exc)) from exc
    return device, kind


PARTITION_PREFIX: Final = "part"
PARTITIONED_KINDS: Final = (TELEMETRY, BACKFILL, STATUS)


def nats_subject(topic: str) -> str:
    """The NATS subject a NATS server's MQTT listener gives an MQTT topic (`/` becomes `.`)."""
    return topic.replace("/", ".")


def partition_subject(partition: int | Literal["*"], device: str, kind: str) -> str:
    """The stream subject a device's message lands on; partition and device may be `*`.

    >>> partition_subject(3, "*", "telemetry")
    'part.3.edgewatch.v1.*.telemetry'
    """
    if kind not in PARTITIONED_KINDS:
        raise TopicError(f"topic kind {kind!r} is not partitioned")
    if device != "*":
        check_device_id(device)
    return f"{PARTITION_PREFIX}.{partition}.{nats_subject(PREFIX)}.{device}.{kind}"


def parse_partition_subject(subject: str) -> tuple[int, str]:
    """(partition, MQTT topic) of a stream subject, so a message read from the stream goes
    through the same decoding as one read from mosquitto.

    >>> parse_partition_subject("part.12.edgewatch.v1.pi-kitchen-01.telemetry")
    (12, 'edgewatch/v1/pi-kitchen-01/telemetry')
    """
    head, dot, rest = subject.partition(".")
    number, dot2, topic_subject = rest.partition(".")
    if head != PARTITION_PREFIX or not dot or not dot2 or not number.isdigit():
        raise TopicError(f"subject {subject!r} is not {PARTITION_PREFIX}.<partition>.<topic>")
    topic = topic_subject.replace(".", "/")
    _device, kind = parse_topic(topic)
    if kind not in PARTITIONED_KINDS:
        raise TopicError(f"subject {subject!r} has kind {kind!r}, which is not partitioned")
    return int(number), topic


def new_msg_id() -> str:
    return uuid.uuid4().hex


def _dumps(obj: dict[str, Any]) -> bytes:
    # orjson is ~8x faster than json here and writes the same compact JSON; it would turn NaN
    # into null, so non-finite values are refused before they get this far (agent and decoder).
    return orjson.dumps(obj)


# ---------------------------------------------------------------------------------------------
# encoding


def encode_readings(
    device: str,
    epoch: str,
    rows: Iterable[tuple[int, float, str, str, float, str]],
    *,
    sent_at: float,
    msg_id: str | None = None,
) -> bytes:
    """Encode outbox rows `(seq, ts, sensor, metric, value, unit)` as one readings message."""
    return _dumps(
        {
            "v": VERSION,
            "kind": "readings",
            "msg_id": msg_id or new_msg_id(),
            "device": device,
            "epoch": epoch,
            "sent_at": sent_at,
            "readings": [
                {"seq": s, "ts": t, "sensor": se, "metric": m, "value": v, "unit": u}
                for s, t, se, m, v, u in rows
            ],
        }
    )


def encode_batch(batch: ReadingBatch) -> bytes:
    return encode_readings(
        batch.device,
        batch.epoch,
        ((r.seq, r.ts, r.sensor, r.metric, r.value, r.unit) for r in batch.readings),
        sent_at=batch.sent_at,
        msg_id=batch.msg_id,
    )


def encode_ack(ack: Ack) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "kind": "ack",
            "msg_id": ack.msg_id or new_msg_id(),
            "device": ack.device,
            "epoch": ack.epoch,
            "ranges": [[a, b] for a, b in ack.ranges],
        }
    )


def encode_status(status: Status) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "kind": "status",
            "device": status.device,
            "event": str(status.event),
            "ts": status.ts,
            "epoch": status.epoch,
            "agent_version": status.agent_version,
            "counters": status.counters,
        }
    )


def encode_alert(alert: AlertEvent) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "kind": "alert",
            "msg_id": alert.msg_id or new_msg_id(),
            "alert_id": alert.alert_id,
            "device": alert.device,
            "sensor": alert.sensor,
            "metric": alert.metric,
            "alert_kind": str(alert.kind),
            "state": str(alert.state),
            "start": alert.start,
            "end": alert.end,
            "peak_score": alert.peak_score,
            "value": alert.value,
            "expected_low": alert.expected_low,
            "expected_high": alert.expected_high,
            "severity": alert.severity,
            "late": alert.late,
            "detector": alert.detector,
            "anomaly_kind": alert.anomaly_kind,
            "evidence": alert.evidence,
            "opening_evidence": alert.opening_evidence,
            "peak_ts": alert.peak_ts,
        }
    )


def encode_webhook(events: Sequence[Mapping[str, Any]], *, text: str | None = None) -> bytes:
    """A webhook notification: alert transitions in order, each the alert as the operator's
    `alerts list --json` shows it plus `transition` and `transition_id`; `text` for Slack-style
    receivers. Pinned by tests/golden/webhook_v1.2.json."""
    body: dict[str, Any] = {"v": VERSION, "kind": "alert_events", "events": list(events)}
    if text is not None:
        body["text"] = text
    return _dumps(body)


def encode_alertmanager(alerts: Sequence[Mapping[str, Any]]) -> bytes:
    """Postable alerts for Alertmanager's POST /api/v2/alerts (its schema, not ours: unversioned)."""
    return orjson.dumps(list(alerts))


# ---------------------------------------------------------------------------------------------
# decoding


def _reject_constant(name: str) -> float:
    # JSON has no NaN/Infinity; Python's parser would accept them. Keep them as floats so that
    # one bad reading is rejected alone instead of the whole message.
    return float(name.replace("Infinity", "inf"))


def _load(payload: bytes, kind: str) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError("oversized", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity literals outright; the slow parser keeps them as floats so
        # that one bad reading is rejected alone, not the whole message.
        try:
            obj = json.loads(payload, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise WireError("malformed_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise WireError("not_an_object", type(obj).__name__)
    version = obj.get("v")
    if not isinstance(version, str):
        raise WireError("missing_version", repr(version)[:50])
    major_s, _, minor_s = version.partition(".")
    if not (major_s.isdigit() and minor_s.isdigit()):
        raise WireError("bad_version", repr(version)[:50])
    if int(major_s) != MAJOR:
        raise UnsupportedVersion("unsupported_version", f"major {major_s}, this reader knows {MAJOR}")
    if obj.get("kind") != kind:
        raise WireError("wrong_kind", f"expected {kind!r}, got {obj.get('kind')!r:.50}")
    return obj


def _field(obj: dict[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise WireError(f"bad_{name}", f"{name}={value!r:.60}")
    return value


def _device(obj: dict[str, Any]) -> str:
    device: str = _field(obj, "device", str)
    try:
        return check_device_id(device)
    except InvalidDeviceId as exc:
        raise WireError("bad_device", str(exc)) from exc


def _epoch(obj: dict[str, Any]) -> str:
    epoch: str = _field(obj, "epoch", str)
    if not 1 <= len(epoch) <= MAX_NAME_LEN or not epoch.isalnum():
        raise WireError("bad_epoch", f"epoch={epoch!r:.60}")
    return epoch


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    ts = float(value)
    if not math.isfinite(ts) or not MIN_TS <= ts <= MAX_TS:
        return None
    return ts


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LEN


def _check_reading(raw: Any) -> str | None:
    """The reason a raw reading is invalid, or None. Kept flat: it runs once per reading."""
    if not isinstance(raw, dict):
        return "reading_not_object"
    seq = raw.get("seq")
    if type(seq) is not int or seq < 1:
        return "bad_seq"
    if _timestamp(raw.get("ts")) is None:
        return "bad_ts"
    if not _name(raw.get("sensor")):
        return "bad_sensor"
    if not _name(raw.get("metric")):
        return "bad_metric"
    value = raw.get("value")
    if type(value) is not float and type(value) is not int:
        return "bad_value"
    if not math.isfinite(value):
        return "non_finite_value"
    unit = raw.get("unit", "")
    if not isinstance(unit, str) or len(unit) > MAX_NAME_LEN:
        return "bad_unit"
    return None


def decode_readings(payload: bytes) -> ReadingBatch:
    """Decode a readings message; bad readings inside a good envelope come back in `rejected`.

    Raises WireError (with a stable `reason`) when the envelope itself is unusable.
    """
    obj = _load(payload, "readings")
    device = _device(obj)
    epoch = _epoch(obj)
    msg_id = obj.get("msg_id", "")
    if not isinstance(msg_id, str) or len(msg_id) > MAX_NAME_LEN:
        raise WireError("bad_msg_id", f"msg_id={msg_id!r:.60}")
    sent_at = _timestamp(obj.get("sent_at"))
    if sent_at is None:
        raise WireError("bad_sent_at", f"sent_at={obj.get('sent_at')!r:.60}")
    raw_readings = obj.get("readings")
    if not isinstance(raw_readings, list):
        raise WireError("bad_readings", "readings must be a list")
    good: list[Reading] = []
    bad: list[RejectedReading] = []
    # The aggregator's hottest loop: the common, valid reading is checked inline with locals;
    # only a reading that fails goes through _check_reading to learn the reason.
    append = good.append
    lo, hi, inf, limit = MIN_TS, MAX_TS, math.inf, MAX_NAME_LEN
    seq: Any
    ts: Any
    value: Any
    for index, raw in enumerate(raw_readings):
        if type(raw) is dict:
            get = raw.get
            seq, ts, sensor, metric, value, unit = (
                get("seq"), get("ts"), get("sensor"), get("metric"), get("value"), get("unit", "")
            )  # fmt: skip
            tt, tv = type(ts), type(value)
            if (
                type(seq) is int
                and seq >= 1
                and (tt is float or tt is int)
                and lo <= ts <= hi
                and type(sensor) is str
                and 0 < len(sensor) <= limit
                and type(metric) is str
                and 0 < len(metric) <= limit
                and (tv is float or tv is int)
                and -inf < value < inf
                and type(unit) is str
                and len(unit) <= limit
            ):
                append(Reading(device, epoch, seq, float(ts), sensor, metric, float(value), unit))
                continue
        reason = _check_reading(raw) or "bad_reading"
        seq = raw.get("seq") if isinstance(raw, dict) else None
        ok_seq = seq if type(seq) is int and seq >= 1 else None
        bad.append(RejectedReading(index, ok_seq, reason, raw))
    return ReadingBatch(device, epoch, msg_id, sent_at, tuple(good), tuple(bad))


def _ranges(value: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise WireError("bad_ranges", "ranges must be a list")
    out: list[tuple[int, int]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or type(item[0]) is not int
            or type(item[1]) is not int
            or not 1 <= item[0] <= item[1]
        ):
            raise WireError("bad_ranges", f"range {item!r:.60}")
        out.append((item[0], item[1]))
    return tuple(out)


def decode_ack(payload: bytes) -> Ack:
    obj = _load(payload, "ack")
    msg_id = obj.get("msg_id", "")
    return Ack(
        _device(obj), _epoch(obj), _ranges(obj.get("ranges")), msg_id if isinstance(msg_id, str) else ""
    )


def decode_status(payload: bytes) -> Status:
    obj = _load(payload, "status")
    device = _device(obj)
    try:
        event = StatusEvent(str(obj.get("event")))
    except ValueError as exc:
        raise WireError("bad_event", f"event={obj.get('event')!r:.60}") from exc
    ts = _timestamp(obj.get("ts"))
    if ts is None:
        raise WireError("bad_ts", f"ts={obj.get('ts')!r:.60}")
    epoch = obj.get("epoch", "")
    version = obj.get("agent_version", "")
    counters = obj.get("counters", {})
    if not isinstance(epoch, str) or not isinstance(version, str) or not isinstance(counters, dict):
        raise WireError("bad_status", "epoch, agent_version or counters of the wrong type")
    clean = {
        str(k): float(v)
        for k, v in counters.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return Status(device, event, ts, epoch[:MAX_NAME_LEN], version[:MAX_NAME_LEN], clean)


def _opt_float(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"bad_{name}", f"{name}={value!r:.60}")
    return float(value)


MAX_EVIDENCE_LEN: Final = 500


def _text(obj: dict[str, Any], name: str) -> str:
    """An optional short text field: absent is "", a non-string is refused, a long one is cut."""
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise WireError(f"bad_{name}", f"{name}={value!r:.60}")
    return value[:MAX_EVIDENCE_LEN]


def decode_alert(payload: bytes) -> AlertEvent:
    obj = _load(payload, "alert")
    try:
        kind = AlertKind(str(obj.get("alert_kind")))
        state = AlertState(str(obj.get("state")))
    except ValueError as exc:
        raise WireError("bad_alert", str(exc)) from exc
    start = _opt_float(obj, "start")
    if start is None:
        raise WireError("bad_start", "alert without start")
    return AlertEvent(
        alert_id=_field(obj, "alert_id", str),
        device=_device(obj),
        metric=_field(obj, "metric", str),
        kind=kind,
        state=state,
        start=start,
        end=_opt_float(obj, "end"),
        peak_score=_opt_float(obj, "peak_score") or 0.0,
        value=_opt_float(obj, "value"),
        expected_low=_opt_float(obj, "expected_low"),
        expected_high=_opt_float(obj, "expected_high"),
        severity=str(obj.get("severity", "warning")),
        late=bool(obj.get("late", False)),
        detector=str(obj.get("detector", "")),
        msg_id=str(obj.get("msg_id", "")),
        sensor=str(obj.get("sensor", "")),  # absent before v1.1
        anomaly_kind=_text(obj, "anomaly_kind"),  # these four: absent before v1.2
        evidence=_text(obj, "evidence"),
        opening_evidence=_text(obj, "opening_evidence"),
        peak_ts=_opt_float(obj, "peak_ts"),
    )


def seq_ranges(seqs: Sequence[int] | Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Collapse seq numbers into sorted inclusive ranges: [1,2,3,7] -> ((1,3),(7,7))."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)
