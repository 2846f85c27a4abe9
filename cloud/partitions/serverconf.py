"""The NATS servers' accounts file: who may publish and receive what, and the partition mapping.

NATS has no per-username pattern like mosquitto's `%u`, so every device is its own user with
its own permissions, the same rules as deploy/mosquitto/acl: a device publishes only its
telemetry, backfill and status (after the mapping, so the permission names the partition
subject) and receives only its own ack. `$MQTT.sub.>` is where the server delivers a QoS 1 MQTT
subscription's messages; a device needs it to receive its acks. The aggregator reads the stream
through the JetStream API and publishes acks and alerts; the viewer only receives alerts.

Passwords are written as given: pass bcrypt hashes (`$2a$...`) in production, nats-server
checks them; the tests pass plain text on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from cloud.errors import CloudError
from cloud.partitions.layout import PARTITIONS, STREAM, subject_mappings
from devices.errors import InvalidDeviceId
from devices.model import check_device_id
from devices.wire import ACK, ALERTS, PARTITIONED_KINDS, PREFIX, nats_subject, partition_subject

ACCOUNT: Final = "EDGEWATCH"
SYSTEM_ACCOUNT: Final = "SYS"
AGGREGATOR_USER: Final = "aggregator"
VIEWER_USER: Final = "viewer"
SYSTEM_USER: Final = "system"
ROLE_USERS: Final = frozenset({AGGREGATOR_USER, VIEWER_USER, SYSTEM_USER})
MQTT_DELIVERY: Final = "$MQTT.sub.>"


class ServerConfError(CloudError):
    """A device or role the accounts file cannot hold (a reserved name, a bad id)."""


def device_permissions(device: str) -> dict[str, object]:
    """A device's NATS permissions: its own partitioned subjects out, its own ack in."""
    try:
        check_device_id(device)
    except InvalidDeviceId as exc:
        raise ServerConfError(str(exc)) from exc
    if device in ROLE_USERS or "." in device:
        raise ServerConfError(
            f"device id {device!r} cannot be a NATS user: role names and ids with '.' are refused"
        )
    prefix = nats_subject(PREFIX)
    return {
        "publish": {"allow": [partition_subject("*", device, kind) for kind in PARTITIONED_KINDS]},
        "subscribe": {"allow": [f"{prefix}.{device}.{ACK}", MQTT_DELIVERY]},
    }


def _role_permissions() -> dict[str, dict[str, object]]:
    prefix = nats_subject(PREFIX)
    return {
        AGGREGATOR_USER: {
            "publish": {
                "allow": [f"{prefix}.*.{ACK}", f"{prefix}.{ALERTS}.*", "$JS.API.>", f"$JS.ACK.{STREAM}.>"],
                "deny": ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>"],
            },
            "subscribe": {"allow": ["_INBOX.>"]},
        },
        VIEWER_USER: {
            "publish": {"deny": [">"]},
            "subscribe": {"allow": [f"{prefix}.{ALERTS}.*", MQTT_DELIVERY]},
        },
    }


def accounts_conf(
    devices: Mapping[str, str],
    *,
    aggregator_password: str,
    viewer_password: str,
    system_password: str,
    partitions: int = PARTITIONS,
) -> str:
    """The `accounts.conf` every node includes; `devices` maps a device id to its password.

    JSON is valid NATS config syntax, so the values are written with json.dumps (quoting done
    once, by a library).
    """
    users: list[dict[str, object]] = [
        {"user": AGGREGATOR_USER, "password": aggregator_password,
         "permissions": _role_permissions()[AGGREGATOR_USER]},
        {"user": VIEWER_USER, "password": viewer_password, "permissions": _role_permissions()[VIEWER_USER]},
    ]  # fmt: skip
    users += [
        {"user": device, "password": password, "permissions": device_permissions(device)}
        for device, password in sorted(devices.items())
    ]
    accounts = {
        ACCOUNT: {"jetstream": "enabled", "mappings": subject_mappings(partitions), "users": users},
        SYSTEM_ACCOUNT: {"users": [{"user": SYSTEM_USER, "password": system_password}]},
    }
    return (
        "# edgewatch NATS accounts, written by cloud.partitions.serverconf.accounts_conf: do not edit\n"
        f"# by hand. P = {partitions} partitions (a deployment constant, see deploy/nats/README).\n"
        f"accounts: {json.dumps(accounts, indent=2)}\n"
        f"system_account: {json.dumps(SYSTEM_ACCOUNT)}\n"
    )
