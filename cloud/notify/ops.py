"""What `edgewatch notify test` and `edgewatch notify status` do, one function each."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import httpx

from cloud.notify.config import NotifyConfig
from cloud.notify.delivery import Answer, transition_id
from cloud.notify.queue import Notice, SinkStatus
from cloud.notify.shell import send
from cloud.notify.sinks import make_sink
from cloud.ops.views import ago, alert_json, iso
from cloud.store.api import AlertRecord, Store
from cloud.store.delivery import delivery_queue

TEST_DEVICE = "edgewatch-notify-test"


def synthetic_alert(now: float) -> AlertRecord:
    """An open anomaly on a device no fleet has, so a receiver's rules can tell it apart."""
    return AlertRecord(
        alert_id=f"notify-test-{int(now)}", device=TEST_DEVICE, sensor="test", metric="test",
        kind="anomaly", state="open", start=now, end=None, peak_score=1.0, value=42.0,
        expected_low=0.0, expected_high=1.0, severity="info", late=False, detector="notify-test",
        msg_id="", opened_at=now, closed_at=None, acked_at=None, acked_by="", note="",
    )  # fmt: skip


def send_test(config: NotifyConfig, sink_name: str, now: float) -> Answer:
    """Send one synthetic alert straight to a sink (no routing, no queue) and return its answer.

    ConfigError if there is no such sink or a secret file of it cannot be read.
    """
    sink = make_sink(config.sink(sink_name))
    alert = alert_json(synthetic_alert(now))
    notice = Notice(transition_id(alert["alert_id"], "open"), alert["alert_id"], TEST_DEVICE, "open", alert)
    request = sink.render([notice], now)

    async def once() -> Answer:
        async with httpx.AsyncClient() as client:
            return await send(client, request, sink.config.timeout_s)

    return asyncio.run(once())


def status(store: Store, config: NotifyConfig | None, *, dead_limit: int = 20) -> list[SinkStatus]:
    """Every configured sink (or, without a config, every sink the store has seen), in order."""
    queue = delivery_queue(store)
    names = [s.name for s in config.sinks] if config is not None else []
    names += [n for n in queue.known_sinks() if n not in names]
    return queue.status(names, dead_limit=dead_limit)


def status_json(statuses: list[SinkStatus]) -> list[dict[str, Any]]:
    out = []
    for s in statuses:
        data = asdict(s)
        for key in ("oldest_queued_at", "last_success_at", "last_error_at"):
            data[f"{key}_iso"] = iso(data[key])
        out.append(data)
    return out


def status_text(statuses: list[SinkStatus], now: float) -> str:
    if not statuses:
        return "no notify sinks configured or seen in this store"
    lines = []
    for s in statuses:
        oldest = "" if s.oldest_queued_at is None else f" (oldest queued {ago(s.oldest_queued_at, now)})"
        lines.append(f"{s.sink}: {s.queued} queued{oldest}, {s.dead_total} dead letters")
        lines.append(
            f"  delivered {s.delivered}, retried {s.retried}, failed {s.failed}; "
            f"last success {ago(s.last_success_at, now)}"
        )
        if s.last_error:
            lines.append(f"  last error {ago(s.last_error_at, now)}: {s.last_error}")
        for d in s.dead:
            lines.append(f"  dead {d.transition_id} ({d.device}) after {d.attempts} tries: {d.error}")
    return "\n".join(lines)
