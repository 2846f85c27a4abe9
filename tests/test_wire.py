"""Wire format v1, pinned by golden files: a change that alters bytes must be deliberate."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices import wire
from devices.errors import TopicError, UnsupportedVersion, WireError
from devices.model import Ack, AlertEvent, AlertKind, AlertState, Reading, Status, StatusEvent

GOLDEN = Path(__file__).parent / "golden"
DEV, EPOCH = "pi-kitchen-01", "3f2a9c0e1b7d4a55"


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes().rstrip(b"\n")


def test_readings_golden_bytes() -> None:
    encoded = wire.encode_readings(
        DEV,
        EPOCH,
        [
            (41, 1767225600.25, "room", "temperature", 21.5, "C"),
            (42, 1767225600.25, "room", "humidity", 40, "%"),
        ],
        sent_at=1767225601.0,
        msg_id="6b1e0f3c2a4d4e5f9a8b7c6d5e4f3a2b",
    )
    assert encoded == golden("readings_v1.2.json")
    for older in ("1.0", "1.1"):  # only the version differs
        assert golden(f"readings_v{older}.json") == encoded.replace(b'"v":"1.2"', f'"v":"{older}"'.encode())
    batch = wire.decode_readings(encoded)
    assert batch.readings == (
        Reading(DEV, EPOCH, 41, 1767225600.25, "room", "temperature", 21.5, "C"),
        Reading(DEV, EPOCH, 42, 1767225600.25, "room", "humidity", 40.0, "%"),
    )
    assert batch.msg_id == "6b1e0f3c2a4d4e5f9a8b7c6d5e4f3a2b" and batch.rejected == ()


def test_ack_status_alert_golden_round_trip() -> None:
    ack = Ack(DEV, EPOCH, ((1, 40), (42, 42)), "0c1d2e3f405162738495a6b7c8d9eaf0")
    assert wire.encode_ack(ack) == golden("ack_v1.2.json")
    assert all(wire.decode_ack(golden(f"ack_v{v}.json")) == ack for v in ("1.0", "1.1", "1.2"))
    status = Status(
        DEV,
        StatusEvent.HEARTBEAT,
        1767225630.0,
        EPOCH,
        "0.1.0",
        {"sampled": 42.0, "backlog": 2.0, "dropped": 0.0},
    )
    assert wire.encode_status(status) == golden("status_v1.2.json")
    assert all(wire.decode_status(golden(f"status_v{v}.json")) == status for v in ("1.0", "1.1", "1.2"))
    alert = AlertEvent(
        "a1b2c3d4",
        DEV,
        "temperature",
        AlertKind.ANOMALY,
        AlertState.OPEN,
        1767225600.25,
        None,
        0.97,
        35.2,
        19.0,
        24.0,
        "warning",
        False,
        "default",
        "ffeeddccbbaa99887766554433221100",
        sensor="room",
        anomaly_kind="spike",
        evidence="value 35.2 C, 12 typical steps above the level 21.4 C",
        opening_evidence="value 30.1 C, 8 typical steps above the level 21.4 C",
        peak_ts=1767225605.25,
    )
    assert wire.encode_alert(alert) == golden("alert_v1.2.json")
    assert wire.decode_alert(golden("alert_v1.2.json")) == alert
    # A v1.1 alert (no explanation) still reads, with the reasons empty and the peak time unknown.
    unexplained = dataclasses.replace(alert, anomaly_kind="", evidence="", opening_evidence="", peak_ts=None)
    assert wire.decode_alert(golden("alert_v1.1.json")) == unexplained
    # A v1.0 alert (no sensor either) still reads, with the sensor unknown too.
    assert wire.decode_alert(golden("alert_v1.0.json")) == dataclasses.replace(unexplained, sensor="")


@pytest.mark.parametrize(
    ("field", "value"), [("evidence", 42), ("anomaly_kind", ["spike"]), ("peak_ts", "noon")]
)
def test_an_alert_with_a_mistyped_explanation_is_refused(field: str, value: object) -> None:
    obj = json.loads(golden("alert_v1.2.json"))
    obj[field] = value
    with pytest.raises(WireError) as err:
        wire.decode_alert(json.dumps(obj).encode())
    assert err.value.reason == f"bad_{field}"


def test_an_overlong_evidence_is_cut_not_refused() -> None:
    obj = json.loads(golden("alert_v1.2.json"))
    obj["evidence"] = "x" * 5000
    assert wire.decode_alert(json.dumps(obj).encode()).evidence == "x" * wire.MAX_EVIDENCE_LEN


def test_a_newer_minor_version_with_extra_fields_is_read() -> None:
    batch = wire.decode_readings(golden("readings_v1.3_extra_fields.json"))
    assert batch.readings == (Reading(DEV, EPOCH, 7, 1767225600.0, "room", "temperature", 21.5, "C"),)


def test_an_unknown_major_version_is_refused() -> None:
    with pytest.raises(UnsupportedVersion) as err:
        wire.decode_readings(golden("readings_v2.0.json"))
    assert err.value.reason == "unsupported_version"


def _env(**over: object) -> bytes:
    base: dict[str, object] = {
        "v": "1.0",
        "kind": "readings",
        "msg_id": "m",
        "device": DEV,
        "epoch": EPOCH,
        "sent_at": 1.7e9,
        "readings": [{"seq": 1, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": 1.0, "unit": ""}],
    }
    base.update(over)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1,2]", "not_an_object"),
        (_env(v=None), "missing_version"),
        (_env(v="one"), "bad_version"),
        (_env(v="7.0"), "unsupported_version"),
        (_env(kind="ack"), "wrong_kind"),
        (_env(device="a/b"), "bad_device"),
        (_env(device="alerts"), "bad_device"),
        (_env(epoch=""), "bad_epoch"),
        (_env(sent_at="now"), "bad_sent_at"),
        (_env(readings={"a": 1}), "bad_readings"),
        (b"{" + b" " * wire.MAX_MESSAGE_BYTES + b"}", "oversized"),
    ],
)
def test_bad_envelopes_raise_with_a_stable_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_readings(payload)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        ({"seq": 0, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": 1}, "bad_seq"),
        ({"seq": True, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": 1}, "bad_seq"),
        ({"seq": 2, "ts": 1e15, "sensor": "s", "metric": "m", "value": 1}, "bad_ts"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "", "metric": "m", "value": 1}, "bad_sensor"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "s", "metric": 5, "value": 1}, "bad_metric"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": "hot"}, "bad_value"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": float("nan")}, "non_finite_value"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": float("inf")}, "non_finite_value"),
        ({"seq": 2, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": 1, "unit": 3}, "bad_unit"),
        ("just a string", "reading_not_object"),
    ],
)
def test_one_bad_reading_is_rejected_alone(reading: object, reason: str) -> None:
    good = {"seq": 1, "ts": 1.7e9, "sensor": "s", "metric": "m", "value": 1.0, "unit": ""}
    batch = wire.decode_readings(_env(readings=[good, reading]))
    assert [r.seq for r in batch.readings] == [1]
    assert [r.reason for r in batch.rejected] == [reason]


def test_topics() -> None:
    assert wire.device_topic(DEV, wire.TELEMETRY) == "edgewatch/v1/pi-kitchen-01/telemetry"
    assert wire.parse_topic("edgewatch/v1/pi-kitchen-01/backfill") == (DEV, "backfill")
    assert wire.parse_topic(wire.alert_topic(DEV)) == (DEV, "alerts")
    for bad in (
        "edgewatch/v1/a/b/telemetry",
        "other/v1/a/telemetry",
        "edgewatch/v1/a/nope",
        "edgewatch/v1/+/ack",
    ):
        with pytest.raises(TopicError):
            wire.parse_topic(bad)


@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_wire_error(payload: bytes) -> None:
    for decode in (wire.decode_readings, wire.decode_ack, wire.decode_status, wire.decode_alert):
        with contextlib.suppress(WireError):
            decode(payload)


@given(st.lists(st.integers(1, 200), max_size=50))
def test_seq_ranges_cover_exactly(seqs: list[int]) -> None:
    ranges = wire.seq_ranges(seqs)
    covered = {s for a, b in ranges for s in range(a, b + 1)}
    assert covered == set(seqs)
    assert all(ranges[i][1] + 1 < ranges[i + 1][0] for i in range(len(ranges) - 1))
