"""The delivery engine's pure core: routing, retry schedule, answers judged, rate limit, one lane per sink.

No network I/O and an explicit `now` everywhere; `cloud.notify.shell` sends the requests. The
queue (`cloud.notify.queue.DeliveryQueue`) is the only state that matters across a crash: the
token bucket here is rebuilt full on start, which at worst lets one burst out.

What an answer means:

    2xx                               delivered: removed from the queue
    no answer (refused, reset, timeout), 5xx, 408, 425, 429
                                      retried after edgewatch's one backoff (devices.backoff,
                                      full jitter), or after Retry-After if the receiver sent
                                      one (capped at max_retry_after_s)
    any other 4xx                     dead letter, with the status and the response body
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from cloud.notify.config import NotifyConfig, SinkConfig
from cloud.notify.queue import Delivery, DeliveryQueue, Notice
from cloud.notify.sinks import HttpRequest, Sink, make_sink
from cloud.ops.views import alert_json
from cloud.store.api import AlertRecord
from devices.backoff import full_jitter

log = logging.getLogger("edgewatch.cloud.notify")

RETRYABLE_4XX: Final = frozenset({408, 425, 429})
MAX_GROUP: Final = 100  # transitions in one notification at most
LEASE_MARGIN_S: Final = 5.0  # a taken delivery is due again this long after its request's timeout


def transition_id(alert_id: str, state: str) -> str:
    """
    >>> transition_id("9f2c1e", "open")
    '9f2c1e.open'
    """
    return f"{alert_id}.{state}"


class Router:
    """Queues each fresh alert transition for every sink whose route matches (pipeline side)."""

    def __init__(self, config: NotifyConfig, queue: DeliveryQueue) -> None:
        self.sinks = config.sinks
        self.queue = queue

    def enqueue(self, alert: AlertRecord, now: float) -> int:
        """Call inside the transaction that recorded the transition; returns how many were queued."""
        if not self.sinks:
            return 0
        data = alert_json(alert)
        tid = transition_id(alert.alert_id, alert.state)
        notice = Notice(tid, alert.alert_id, alert.device, alert.state, data)
        queued = 0
        for sink in self.sinks:
            if sink.route.matches(data):
                queued += self.queue.enqueue(sink.name, notice, now=now, group_s=sink.group_s)
        return queued


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad.

    >>> parse_retry_after("7", 0.0), parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0)
    (7.0, 30.0)
    >>> parse_retry_after("soon", 0.0) is None
    True
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a receiver said: an HTTP status and body, or no answer (`status` None, `error` why)."""

    status: int | None
    body: str = ""
    retry_after: str | None = None
    error: str = ""

    def describe(self) -> str:
        if self.status is None:
            return f"no answer: {self.error}"
        body = " ".join(self.body.split())[:300]
        return f"HTTP {self.status}" + (f": {body}" if body else "")


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["delivered", "retry", "dead"]
    due_at: float | None = None  # for a retry
    reason: str = ""


def judge(answer: Answer, attempts: int, now: float, config: SinkConfig, rng: random.Random) -> Outcome:
    """What to do with a notification after `attempts` tries, given the receiver's answer."""
    status = answer.status
    if status is not None and 200 <= status < 300:
        return Outcome("delivered")
    if status is None or status >= 500 or status in RETRYABLE_4XX:
        delay = full_jitter(attempts - 1, config.retry_base_s, config.retry_cap_s, rng)
        asked = parse_retry_after(answer.retry_after, now)
        if asked is not None:
            delay = min(asked, config.max_retry_after_s)
        return Outcome("retry", now + delay, answer.describe())
    return Outcome("dead", None, answer.describe())


class TokenBucket:
    """`rate` per second with `burst` at once.

    >>> b = TokenBucket(rate=1.0, burst=2, now=0.0)
    >>> b.wait(0.0), b.take(0.0), b.take(0.0), b.wait(0.0), b.wait(0.5)
    (0.0, None, None, 1.0, 0.5)
    """

    def __init__(self, rate: float, burst: int, *, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0


@dataclass(frozen=True, slots=True)
class Notification:
    deliveries: tuple[Delivery, ...]
    request: HttpRequest

    @property
    def attempts(self) -> int:
        return max(d.attempts for d in self.deliveries)


class SinkLane:
    """One sink's side of the engine: take a due group, judge the answer, settle the queue.

    The shell sends one notification of a lane at a time, so the order the queue hands them out
    is the order they arrive in (and a close never overtakes its open).
    """

    def __init__(
        self,
        sink: Sink,
        queue: DeliveryQueue,
        *,
        now: float,
        rng: random.Random | None = None,
        open_alerts: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.sink = sink
        self.config = config = sink.config
        self.queue = queue
        self.rng = rng or random.Random()
        self.bucket = TokenBucket(config.rate_per_s, config.burst, now=now)
        self._open_alerts = open_alerts
        self._next_resend = now  # Alertmanager learns the open alerts again at start

    @property
    def name(self) -> str:
        return self.config.name

    def wait(self, now: float) -> float:
        """Seconds the rate limit holds the next notification back."""
        return self.bucket.wait(now)

    def take(self, now: float) -> Notification | None:
        """The next notification to send now, or None (nothing due, or the rate limit holds it)."""
        if self.bucket.wait(now) > 0:
            return None
        lease = self.config.timeout_s + LEASE_MARGIN_S
        deliveries = self.queue.take_group(
            self.name, now=now, lease_s=lease, limit=MAX_GROUP, per_device=self.sink.per_device
        )
        if not deliveries:
            return None
        self.bucket.take(now)
        request = self.sink.render([d.notice for d in deliveries], now)
        return Notification(tuple(deliveries), request)

    def settle(self, notification: Notification, answer: Answer, now: float) -> Outcome:
        outcome = judge(answer, notification.attempts, now, self.config, self.rng)
        ids = [d.id for d in notification.deliveries]
        n = len(ids)
        if outcome.kind == "delivered":
            self.queue.delivered(ids, now=now)
        elif outcome.kind == "retry":
            assert outcome.due_at is not None
            self.queue.retry_at(ids, due_at=outcome.due_at, error=outcome.reason, now=now)
            log.warning(
                "sink %s: %d transitions not delivered (%s); retry %d in %.1fs",
                self.name, n, outcome.reason, notification.attempts, outcome.due_at - now,
            )  # fmt: skip
        else:
            self.queue.dead_letter(ids, error=outcome.reason, response=answer.body, now=now)
            log.error(
                "sink %s refused %d transitions (%s): kept as dead letters, see `edgewatch notify status`",
                self.name, n, outcome.reason,
            )  # fmt: skip
        return outcome

    def resend(self, now: float) -> HttpRequest | None:
        """The periodic re-post of open alerts, when it is due (Alertmanager only)."""
        if not self.sink.resends or self._open_alerts is None or now < self._next_resend:
            return None
        self._next_resend = now + self.config.resend_s
        alerts = [a for a in self._open_alerts() if self.config.route.matches(a)]
        return self.sink.resend(alerts, now)


def lanes(
    config: NotifyConfig,
    queue: DeliveryQueue,
    *,
    now: float,
    open_alerts: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> list[SinkLane]:
    """One lane per configured sink (ConfigError if a sink's secret file is unreadable)."""
    return [SinkLane(make_sink(s), queue, now=now, open_alerts=open_alerts) for s in config.sinks]
