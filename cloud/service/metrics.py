"""Prometheus metrics of the aggregator, on their own registry (tests can run several at once).

edgewatch_readings_ingested_total          readings newly stored
edgewatch_duplicates_ignored_total         readings received again and ignored (resends)
edgewatch_dead_lettered_total{reason}      messages or readings dead-lettered
edgewatch_alerts_raised_total{kind}        episodes opened (kind: live or late)
edgewatch_alerts_closed_total              episodes closed
edgewatch_ingest_lag_seconds               commit time minus arrival time, per message
edgewatch_batch_messages                   messages per write transaction
edgewatch_inbox_messages                   received, not yet written
edgewatch_inbox_shed_total                 dropped unconfirmed, inbox full (agents resend them)
edgewatch_acks_published_total             confirmations published
edgewatch_store_errors_total               batches rolled back by a store error
edgewatch_store_writable                   0 while the store refuses writes (e.g. its disk is full)
edgewatch_broker_connected                 1 while connected
edgewatch_broker_reconnects_total          connection attempts after the first
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cloud.ingest.pipeline import BatchReport

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
        self.ingested = Counter("edgewatch_readings_ingested", "Readings newly stored.", registry=r)
        self.duplicates = Counter(
            "edgewatch_duplicates_ignored", "Readings received again and ignored.", registry=r
        )
        self.dead = Counter(
            "edgewatch_dead_lettered", "Messages or readings dead-lettered.", ["reason"], registry=r
        )
        self.alerts = Counter("edgewatch_alerts_raised", "Alert episodes opened.", ["kind"], registry=r)
        self.alerts_closed = Counter("edgewatch_alerts_closed", "Alert episodes closed.", registry=r)
        self.lag = Histogram(
            "edgewatch_ingest_lag_seconds",
            "Commit time minus arrival time, per message.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "edgewatch_batch_messages", "Messages per write transaction.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inbox = Gauge("edgewatch_inbox_messages", "Received, not yet written.", registry=r)
        self.shed = Counter(
            "edgewatch_inbox_shed", "Messages dropped unconfirmed because the inbox was full.", registry=r
        )
        self.acks = Counter("edgewatch_acks_published", "Confirmations published.", registry=r)
        self.store_errors = Counter(
            "edgewatch_store_errors", "Batches rolled back by a store error.", registry=r
        )
        self.store_writable = Gauge(
            "edgewatch_store_writable", "0 while the store refuses writes (e.g. a full disk).", registry=r
        )
        self.store_writable.set(1)
        self.connected = Gauge("edgewatch_broker_connected", "1 while connected to the broker.", registry=r)
        self.reconnects = Counter(
            "edgewatch_broker_reconnects", "Connection attempts after the first.", registry=r
        )

    def observe(self, report: BatchReport, committed_at: float) -> None:
        """Account for one committed batch."""
        self.ingested.inc(report.stored)
        self.duplicates.inc(report.duplicates)
        for reason, n in report.dead.items():
            self.dead.labels(reason).inc(n)
        if report.alerts_opened:
            self.alerts.labels("late").inc(report.late_alerts)
            self.alerts.labels("live").inc(report.alerts_opened - report.late_alerts)
        self.alerts_closed.inc(report.alerts_closed)
        if report.messages:
            self.batch.observe(report.messages)
        for received_at in report.received_at:
            self.lag.observe(max(0.0, committed_at - received_at))

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from outside
        """Expose /metrics on `port` (0 picks a free one) from a daemon thread; returns the port."""
        self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
