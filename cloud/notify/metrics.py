"""Prometheus metrics of alert delivery, per sink, on the aggregator's registry.

edgewatch_notify_delivered_total{sink}              transitions the receiver accepted (2xx)
edgewatch_notify_retried_total{sink}                transitions sent again later (no answer, 5xx, 429)
edgewatch_notify_failed_total{sink}                 transitions dead-lettered (other 4xx)
edgewatch_notify_queue_depth{sink}                  transitions waiting
edgewatch_notify_oldest_undelivered_seconds{sink}   age of the oldest waiting transition (0 if none)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.delivered = Counter("edgewatch_notify_delivered", "Transitions delivered.", ["sink"], registry=r)
        self.retried = Counter("edgewatch_notify_retried", "Transitions to retry.", ["sink"], registry=r)
        self.failed = Counter("edgewatch_notify_failed", "Transitions dead-lettered.", ["sink"], registry=r)
        self.depth = Gauge("edgewatch_notify_queue_depth", "Transitions waiting.", ["sink"], registry=r)
        self.oldest = Gauge(
            "edgewatch_notify_oldest_undelivered_seconds",
            "Age of the oldest waiting transition.",
            ["sink"],
            registry=r,
        )

    def outcome(self, sink: str, kind: str, n: int) -> None:
        {"delivered": self.delivered, "retry": self.retried, "dead": self.failed}[kind].labels(sink).inc(n)

    def queue(self, sink: str, depth: int, oldest_at: float | None, now: float) -> None:
        self.depth.labels(sink).set(depth)
        self.oldest.labels(sink).set(0.0 if oldest_at is None else max(0.0, now - oldest_at))
