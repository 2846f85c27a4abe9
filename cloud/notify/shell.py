"""The delivery engine's asyncio shell: httpx sends what the lanes render, one request per sink at a time.

Every queue call goes through `call`, the aggregator's serialiser (the queue shares the
store's SQLite connection with the pipeline). Sinks are independent: a receiver that is down
delays only its own lane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

import httpx

from cloud.errors import StoreError
from cloud.notify.delivery import Answer, SinkLane
from cloud.notify.metrics import NotifyMetrics
from cloud.notify.sinks import HttpRequest
from cloud.ops.views import alert_json
from cloud.store.api import Store

log = logging.getLogger("edgewatch.cloud.notify")

P = ParamSpec("P")
T = TypeVar("T")

MAX_BODY = 4096  # characters of a response body kept


class Serialised(Protocol):
    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...


async def send(client: httpx.AsyncClient, request: HttpRequest, timeout_s: float) -> Answer:
    """POST one request; transport failures and timeouts become an Answer without a status."""
    try:
        response = await client.request(
            request.method,
            request.url,
            content=request.body,
            headers=list(request.headers),
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}"[:300])
    return Answer(response.status_code, response.text[:MAX_BODY], response.headers.get("Retry-After"))


def open_alerts_of(store: Store) -> Callable[[], list[Mapping[str, Any]]]:
    """The open alerts as `alerts list --json` shows them (what a periodic re-post sends)."""

    def open_alerts() -> list[Mapping[str, Any]]:
        return [alert_json(a) for a in store.list_alerts(state="open", limit=1 << 20)]

    return open_alerts


class Courier:
    """Runs every lane until cancelled."""

    def __init__(
        self,
        lanes: Sequence[SinkLane],
        *,
        poll_s: float,
        call: Serialised,
        metrics: NotifyMetrics | None = None,
    ) -> None:
        self.lanes = list(lanes)
        self.poll_s = poll_s
        self.call = call
        self.metrics = metrics

    async def run(self) -> None:
        if not self.lanes:
            return
        async with httpx.AsyncClient() as client, asyncio.TaskGroup() as group:
            for lane in self.lanes:
                group.create_task(self._lane(client, lane), name=f"notify-{lane.name}")

    async def _lane(self, client: httpx.AsyncClient, lane: SinkLane) -> None:
        while True:
            try:
                busy = await self._step(client, lane)
            except StoreError as exc:
                log.error("sink %s: the delivery queue is unusable: %s", lane.name, exc)
                busy = False
            except Exception:  # a bug: this sink pauses a poll interval, the others go on
                log.exception("sink %s: delivery step failed", lane.name)
                busy = False
            if busy:
                continue
            # New transitions are found by polling: the pipeline commits them on its own schedule.
            await asyncio.sleep(max(self.poll_s, lane.wait(time.time())))

    async def _step(self, client: httpx.AsyncClient, lane: SinkLane) -> bool:
        """Send one due notification (True), or refresh the gauges when there is none (False)."""
        resend = await self.call(lane.resend, time.time())
        if resend is not None:
            answer = await send(client, resend, lane.config.timeout_s)
            if answer.status is None or not 200 <= answer.status < 300:
                log.warning("sink %s: re-posting open alerts failed (%s)", lane.name, answer.describe())
        notification = await self.call(lane.take, time.time())
        if notification is None:
            if self.metrics is not None:
                (status,) = await self.call(lane.queue.status, [lane.name], dead_limit=0)
                self.metrics.queue(lane.name, status.queued, status.oldest_queued_at, time.time())
            return False
        answer = await send(client, notification.request, lane.config.timeout_s)
        outcome = await self.call(lane.settle, notification, answer, time.time())
        if self.metrics is not None:
            self.metrics.outcome(lane.name, outcome.kind, len(notification.deliveries))
        return True
