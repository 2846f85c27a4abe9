"""Errors of the device contract.

EdgewatchError
├── WireError            bytes that are not a valid message (the reason says why)
│   └── UnsupportedVersion   a schema major version this reader does not know
├── TopicError           a topic outside the edgewatch layout
├── InvalidDeviceId      a device id that cannot appear in a topic
│   └── ReservedDeviceId     a broker role's username posing as a device
└── DriverError
    ├── UnknownDriver    no driver by that name (the message lists the known ones)
    ├── DriverConfigError    bad params for a driver
    └── SensorReadError  a read failed this time; the agent retries and counts it
"""

from __future__ import annotations


class EdgewatchError(Exception):
    """Base of every error edgewatch raises on purpose."""


class WireError(EdgewatchError):
    """A payload that cannot be decoded; `reason` is short and stable (it is dead-lettered)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UnsupportedVersion(WireError):
    """A message of a schema major version this reader does not understand."""


class TopicError(EdgewatchError):
    """A topic that does not follow `edgewatch/v1/<device>/<kind>`."""


class InvalidDeviceId(EdgewatchError):
    """A device id that is empty, too long, reserved or holds characters unsafe in a topic."""


class ReservedDeviceId(InvalidDeviceId):
    """A well-formed device id that is a broker role's username (`aggregator`, `viewer`)."""


class DriverError(EdgewatchError):
    """Base for sensor driver failures."""


class UnknownDriver(DriverError):
    """No registered driver has that name."""


class DriverConfigError(DriverError):
    """A driver's params are missing or wrong; raised when the agent starts, not mid-run."""


class SensorReadError(DriverError):
    """One read failed (bus error, CRC mismatch, missing file); the next may succeed."""
