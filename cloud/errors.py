"""Errors the aggregator raises on purpose; dependencies' errors are translated at the boundary.

    EdgewatchError (devices.errors)
    └── CloudError           base of everything below
        ├── ConfigError      a bad option or config file; the message names the key
        ├── StoreError       the database cannot be opened, migrated or written
        │   ├── StoreFull        no disk left to write on (it resumes by itself once there is)
        │   └── SchemaTooNew     the file was written by a newer edgewatch
        └── NotFound         an alert or device the caller named does not exist

Callers never see sqlite3, aiomqtt or paho exceptions: the store and the service wrap them with
`raise StoreError(...) from exc` so the cause stays in the traceback for debugging.
"""

from __future__ import annotations

from devices.errors import EdgewatchError


class CloudError(EdgewatchError):
    """Base of the aggregator's errors."""


class ConfigError(CloudError):
    """A bad option or config file; raised before anything starts."""


class StoreError(CloudError):
    """The store cannot be opened, migrated or written (path, permissions, disk, corruption)."""


class StoreFull(StoreError):
    """A write failed for want of disk (SQLITE_FULL, an I/O error, ENOSPC): nothing was
    committed, so nothing is confirmed; the same write succeeds once space returns."""


class SchemaTooNew(StoreError):
    """The database has a schema version this code does not know; refuse rather than guess."""


class LeaseLost(StoreError):
    """A partition's lease is no longer this member's (expired or taken over): nothing of the
    transaction that found out was written."""


class NotFound(CloudError):
    """The alert or device named does not exist in the store."""
