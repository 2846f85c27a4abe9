"""The alert delivery queue (cloud.notify.queue.DeliveryQueue) of whichever backend a store is."""

from __future__ import annotations

from cloud.errors import StoreError
from cloud.notify.queue import DeliveryQueue
from cloud.store.api import Store


def delivery_queue(store: Store) -> DeliveryQueue:
    """The queue in the same database as `store`, so a transition is queued in its alert's
    transaction. StoreError for a backend that has none."""
    from cloud.store.sqlite.store import SqliteStore  # noqa: PLC0415 - each backend loads on use

    if isinstance(store, SqliteStore):
        from cloud.store.sqlite.delivery import SqliteDeliveryQueue  # noqa: PLC0415

        return SqliteDeliveryQueue(store)
    try:
        from cloud.store.postgres.store import PostgresStore  # noqa: PLC0415 - an optional extra
    except ImportError:
        PostgresStore = None  # type: ignore[assignment,misc]
    if PostgresStore is not None and isinstance(store, PostgresStore):
        from cloud.store.postgres.delivery import PostgresDeliveryQueue  # noqa: PLC0415

        return PostgresDeliveryQueue(store)
    raise StoreError(f"alert delivery has no queue for a {type(store).__name__}")
