"""The partitioned stream's names and shape: what the NATS config and the aggregators share.

`PARTITIONS` is a deployment constant. The servers' subject mapping hashes a device id into one
of P partitions and the aggregators own partitions by number, so changing P moves devices
between partitions: it needs a stop of every aggregator, a drained stream and new configs on
every server at once. Pick it once, above the most aggregators a fleet will ever run (64 lets
up to 64 aggregators share the work).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from devices.wire import PARTITION_PREFIX, PARTITIONED_KINDS, PREFIX, nats_subject

PARTITIONS: Final = 64
STREAM: Final = "EDGEWATCH"
REPLICAS: Final = 3
# How long the stream keeps readings: a partition's new owner replays from its checkpoint, so
# this bounds how long an aggregator can be down (or behind) before readings must come again
# from the agents' outboxes (they do: nothing is deleted on a device until it is stored).
MAX_AGE_S: Final = 7 * 24 * 3600


def partition_of(device: str, partitions: int = PARTITIONS) -> int:
    """The partition the servers' `{{partition(P,1)}}` puts a device in: FNV-1a (32 bit) of the
    device id, modulo P (nats-server's subject transform; pinned by tests/test_nats_cluster.py
    against a real server). The aggregators use it to know whose detector state is whose.

    >>> partition_of("pi-kitchen-01", 64)
    33
    """
    value = 0x811C9DC5
    for byte in device.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value % partitions


def subject_mappings(partitions: int = PARTITIONS) -> dict[str, str]:
    """The account's subject mappings: `edgewatch.v1.<device>.<kind>` -> its partition's subject.

    >>> subject_mappings(8)["edgewatch.v1.*.telemetry"]
    'part.{{partition(8,1)}}.edgewatch.v1.{{wildcard(1)}}.telemetry'
    """
    prefix = nats_subject(PREFIX)
    partition = f"{{{{partition({partitions},1)}}}}"
    return {
        f"{prefix}.*.{kind}": f"{PARTITION_PREFIX}.{partition}.{prefix}.{{{{wildcard(1)}}}}.{kind}"
        for kind in PARTITIONED_KINDS
    }


def stream_subjects() -> list[str]:
    """The stream's subjects: every partition's messages (only the mapping publishes there:
    no user may publish to `part.` directly but a device, to its own mapped subjects)."""
    return [partition_filter("*")]


def partition_filter(partition: int | Literal["*"]) -> str:
    """One partition's messages, every kind: the filter of its consumer (a subset of the
    stream's subjects, as JetStream requires).

    >>> partition_filter(3)
    'part.3.edgewatch.v1.*.*'
    """
    return f"{PARTITION_PREFIX}.{partition}.{nats_subject(PREFIX)}.*.*"


def stream_config(*, replicas: int = REPLICAS, max_age_s: float = MAX_AGE_S) -> dict[str, Any]:
    """The stream as JetStream's API takes it (`$JS.API.STREAM.CREATE.<name>`)."""
    return {
        "name": STREAM,
        "subjects": stream_subjects(),
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_age": int(max_age_s * 1e9),
    }
