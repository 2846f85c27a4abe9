"""The durable per-sink delivery queue: what the delivery engine needs from a store.

A delivery is one alert transition (an episode opening or closing) bound for one sink. It is
enqueued in the same transaction that records the transition, so a committed alert is always
queued and a rolled-back one never is; it leaves the queue only when the sink answered 2xx
(deleted) or refused it for good (kept as a dead letter with the response). Taking deliveries
leases them (their due time moves past the request's timeout), so a process killed mid-request
sends them again after a restart: at least once, with the stable `transition_id` for receivers
to de-duplicate.

`cloud.store.sqlite.delivery.SqliteDeliveryQueue` implements this over the aggregator's SQLite
store; another backend implements the same Protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Notice:
    """One alert transition as queued: `alert` is the alert as `alerts list --json` shows it then."""

    transition_id: str  # "<alert_id>.<state>": stable across retries, replays and restarts
    alert_id: str
    device: str
    state: str  # "open" or "closed"
    alert: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A queued notice for one sink, as taken from the queue."""

    id: int  # queue order: a transition enqueued later has a larger id
    sink: str
    notice: Notice
    created_at: float
    attempts: int  # tries started, this one included


def taken_deliveries(sink: str, rows: Sequence[Sequence[Any]]) -> list[Delivery]:
    """Deliveries from the rows a queue took: (id, transition_id, alert_id, device, notice JSON,
    created_at, attempts before this one), the same columns in every backend."""
    out: list[Delivery] = []
    for rid, transition_id, alert_id, device, notice, created_at, attempts in rows:
        data: dict[str, Any] = json.loads(notice)
        out.append(
            Delivery(
                int(rid),
                sink,
                Notice(str(transition_id), str(alert_id), str(device), str(data["state"]), data["alert"]),
                float(created_at),
                int(attempts) + 1,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class DeadDelivery:
    id: int
    sink: str
    transition_id: str
    device: str
    created_at: float
    dead_at: float
    attempts: int
    error: str
    response: str


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink's queue as `edgewatch notify status` shows it."""

    sink: str
    queued: int
    oldest_queued_at: float | None
    last_success_at: float | None
    last_error_at: float | None
    last_error: str
    delivered: int
    retried: int
    failed: int
    dead_total: int = 0
    dead: tuple[DeadDelivery, ...] = ()  # the newest few


class DeliveryQueue(Protocol):
    def enqueue(self, sink: str, notice: Notice, *, now: float, group_s: float) -> bool:
        """Queue `notice` for `sink` (inside the caller's transaction); False if already queued.

        A notice joins a group of its device still collecting (not yet due, never tried): same
        due time, so they go out as one notification. Otherwise it starts a group, due
        `group_s` from now.
        """
        ...

    def take_group(
        self, sink: str, *, now: float, lease_s: float, limit: int, per_device: bool = True
    ) -> list[Delivery]:
        """The oldest due delivery and the other due ones of its device (at most `limit`; with
        `per_device` False, of any device), in queue order, each leased until now + lease_s with
        its attempt counted: one notification.

        A delivery whose alert has an earlier delivery still queued and not due (backing off or
        in flight) is not taken: transitions of one alert go out in order.
        """
        ...

    def delivered(self, ids: Sequence[int], *, now: float) -> None: ...

    def retry_at(self, ids: Sequence[int], *, due_at: float, error: str, now: float) -> None: ...

    def dead_letter(self, ids: Sequence[int], *, error: str, response: str, now: float) -> None: ...

    def known_sinks(self) -> list[str]:
        """Every sink that ever had a delivery queued or settled."""
        ...

    def status(self, sinks: Sequence[str], *, dead_limit: int = 20) -> list[SinkStatus]:
        """Per sink, in the order given (sinks that never had a delivery included)."""
        ...
