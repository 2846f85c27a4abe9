"""The aggregator's I/O shell: MQTT in and out with aiomqtt around the sans-I/O pipeline.

    broker --(telemetry, backfill, status; QoS 1, persistent session)--> receiver --> inbox
    inbox --(batches of <= N messages)--> writer --> Pipeline.ingest (one transaction, COMMIT)
    publisher --> acks (coalesced per device) and alert messages, QoS 1, only after the commit
    ticker --> silence checks, checkpoints, retention

Pipeline calls are serialised by one lock: batches run on the event loop thread (cheapest),
slow housekeeping (opening and replay, checkpoints, retention) on a worker thread while the loop
keeps reading the socket. The store and the detectors are never touched concurrently. aiomqtt
does not reconnect by itself: `_run` reconnects with jittered exponential backoff and keeps the
inbox, the pending confirmations and the alert outbox across connections. Stopping (SIGINT or
SIGTERM) writes what was received, publishes the last confirmations, checkpoints and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiomqtt

from cloud.alerts.episodes import EpisodePolicy, SilencePolicy
from cloud.detect.native import compiled
from cloud.errors import CloudError, ConfigError, StoreError, StoreFull
from cloud.ingest.pipeline import Inbound, Pipeline, PipelineSettings, Publication
from cloud.notify.delivery import Router, lanes
from cloud.notify.metrics import NotifyMetrics
from cloud.notify.shell import Courier, open_alerts_of
from cloud.service.config import AggregatorConfig
from cloud.service.metrics import Metrics
from cloud.store.api import Store, open_store, redacted
from cloud.store.delivery import delivery_queue
from devices import wire
from devices.backoff import Backoff
from devices.model import Ack

log = logging.getLogger("edgewatch.cloud.service.aggregator")

P = ParamSpec("P")
T = TypeVar("T")

SUBSCRIPTIONS = [(wire.SUB_TELEMETRY, 1), (wire.SUB_BACKFILL, 1), (wire.SUB_STATUS, 1)]
PUBLISH_TIMEOUT = 10.0
PUBLISH_WINDOW = 256  # publishes awaiting their PUBACK at once
RETENTION_EVERY = 3600.0


def settings_from(config: AggregatorConfig) -> PipelineSettings:
    return PipelineSettings(
        detector=config.detector,
        episodes=EpisodePolicy(config.close_after, config.close_after_seconds),
        silence=SilencePolicy(config.silent_after, config.silent_factor),
        late_threshold=config.late_threshold,
        max_future=config.max_future,
        ack_interval=config.ack_interval,
    )


class Aggregator:
    """One aggregator process: owns the store, the pipeline, the worker thread and the client."""

    def __init__(self, config: AggregatorConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.url = config.broker_url()
        if self.url.tls is False and config.ca_file:
            raise ConfigError("ca_file is only used with an mqtts:// broker URL")
        if config.ca_file is not None and not Path(config.ca_file).is_file():
            # Checked here, not in the config: a config is often written on another machine.
            raise ConfigError(f"ca_file {config.ca_file!r} is not a readable file")
        self.metrics = metrics or Metrics()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgewatch-store")
        self._store: Store | None = None
        self._pipeline: Pipeline | None = None
        self._courier: Courier | None = None
        self._inbox: list[Inbound] = []
        inbox = self._inbox
        self.metrics.inbox.set_function(lambda: len(inbox))  # read at scrape time, not per message
        self._inbox_ready = asyncio.Event()
        self._publish_ready = asyncio.Event()
        self._publications: list[Publication] = []
        self._stopping = False
        self._failing_since: float | None = None  # monotonic time the store began refusing writes
        self._refused = 0  # messages not written since then
        self._lock = asyncio.Lock()  # one pipeline call at a time, whichever thread runs it
        self.connected = asyncio.Event()  # set while subscribed (tests wait on it)

    # -- the worker thread ------------------------------------------------------------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a quick pipeline call on the loop thread, never concurrently with another."""
        async with self._lock:
            return fn(*args, **kwargs)

    async def _call_slow(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a slow call (open, replay, checkpoint, retention) on the worker thread, exclusively.

        The loop keeps receiving meanwhile. Batches run on the loop thread instead: handing
        each one to a thread cost ~45% more CPU here (GIL hand-offs), for no parallelism.
        """
        async with self._lock:
            job = asyncio.get_running_loop().run_in_executor(self._worker, lambda: fn(*args, **kwargs))
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                await asyncio.wait([job])  # keep the lock until the thread has really finished
                raise

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "open() first"
        return self._pipeline

    async def open(self) -> None:
        """Open (or create and migrate) the store and recover detector state; StoreError if not."""
        self._store = await self._call_slow(
            open_store, self.config.db, readonly=False, create=True, synchronous=self.config.synchronous
        )
        self._store.acquire_ownership()  # one aggregator per store (closed again by close())
        notify = self.config.notify
        queue = delivery_queue(self._store) if notify.sinks else None
        self._pipeline = await self._call_slow(
            Pipeline,
            self._store,
            settings_from(self.config),
            now=time.time(),
            notify=Router(notify, queue) if queue is not None else None,
        )
        if queue is not None:
            self._courier = Courier(
                lanes(notify, queue, now=time.time(), open_alerts=open_alerts_of(self._store)),
                poll_s=notify.poll_s,
                call=self._call,
                metrics=NotifyMetrics(self.metrics.registry),
            )
        tune_gc()
        if self.config.detector in ("default", "sensor"):
            log.info("detector %s runs %s", self.config.detector, "compiled" if compiled() else "interpreted")
        if self.pipeline.replayed:
            log.info("resumed: %d readings replayed through the detectors", self.pipeline.replayed)

    async def close(self) -> None:
        if self._store is not None:
            await self._call_slow(self._store.close)
            self._store = None
        self._worker.shutdown(wait=True)

    # -- the connection loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with backoff, until `stop` is set; then stop cleanly."""
        # Alert delivery runs beside the broker connection: HTTP receivers do not need MQTT.
        courier = asyncio.create_task(self._deliver(), name="notify")
        try:
            await self._connect(stop)
        finally:
            await _cancel([courier])

    async def _deliver(self) -> None:
        if self._courier is None:
            return
        try:
            await self._courier.run()
        except Exception:  # a bug: say so loudly; the queue keeps every delivery for the next start
            log.exception("alert delivery stopped")

    async def _connect(self, stop: asyncio.Event) -> None:
        config = self.config
        retry = Backoff(config.reconnect_base, config.reconnect_cap)
        while not stop.is_set():
            try:
                await self._connect_and_serve(stop)
            except aiomqtt.MqttError as exc:
                if self.connected.is_set():  # it had connected: back off from the start again
                    retry.reset()
                self.connected.clear()
                self.metrics.connected.set(0)
                if stop.is_set():
                    break
                delay = retry.next_delay()
                self.metrics.reconnects.inc()
                log.warning("broker %s: %s; retrying in %.1fs", self.url.redacted(), exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        self.connected.clear()
        self.metrics.connected.set(0)
        await self._finish_offline()

    async def _connect_and_serve(self, stop: asyncio.Event) -> None:
        """One connection: serve it until it drops (MqttError) or `stop` is set.

        A stop while still connecting (a broker that accepts TCP and never answers keeps
        aiomqtt waiting up to its timeout) abandons the attempt at once; once connected, the
        session itself stops cleanly (final batch, confirmations, checkpoint).
        """
        serving = asyncio.create_task(self._serve(stop), name="connection")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not serving.done() and not self.connected.is_set():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                return
            await serving
        finally:
            await _cancel([serving, stopping])

    async def _serve(self, stop: asyncio.Event) -> None:
        client = self._client()
        try:
            async with client:
                client.pending_calls_threshold = 1 << 30  # we publish many acks at once
                await client.subscribe(SUBSCRIPTIONS)
                log.info("connected to %s as %s", self.url.redacted(), self.config.client_id)
                self.metrics.connected.set(1)
                self.connected.set()
                await self._session(client, stop)
        finally:
            _retrieve_disconnect(client)

    def _client(self) -> aiomqtt.Client:
        url, config = self.url, self.config
        tls = aiomqtt.TLSParameters(ca_certs=config.ca_file) if url.tls else None
        return aiomqtt.Client(
            url.host,
            url.port,
            queue_type=self._inbox_queue(),
            username=url.username,
            password=url.password,
            identifier=config.client_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=config.keepalive,
            tls_params=tls,
            max_inflight_messages=1000,
            timeout=PUBLISH_TIMEOUT,
        )

    def _inbox_queue(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """A queue class for aiomqtt whose put_nowait appends straight to our inbox.

        aiomqtt's `messages` iterator creates a task per message; this skips that (measured:
        20-40% less CPU per received message). The iterator is still awaited, only to learn
        about a disconnect.
        """
        inbox, ready, metrics = self._inbox, self._inbox_ready, self.metrics
        limit = self.config.max_inbox
        shed = [0]

        class _Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if len(inbox) >= limit:
                    # Shed load rather than run out of memory: nothing was confirmed, so the
                    # agents resend it after their confirmation timeout.
                    metrics.shed.inc()
                    shed[0] += 1
                    if shed[0] % 10_000 == 1:
                        log.warning(
                            "inbox full (%d messages): shedding new messages (%d so far)", limit, shed[0]
                        )
                    return
                inbox.append(Inbound(item.topic.value, item.payload, time.time(), bool(item.retain)))
                ready.set()

        return _Inbox

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Serve one connection until it drops (raises MqttError) or `stop` is set (returns)."""
        # Alert messages committed before a crash or a disconnect are still in the outbox.
        self._publications = await self._call(self.pipeline.pending_publications)
        self._publish_ready.set()
        receiver = asyncio.create_task(self._receive(client), name="receiver")
        writer = asyncio.create_task(self._write(), name="writer")
        publisher = asyncio.create_task(self._publish_loop(client), name="publisher")
        ticker = asyncio.create_task(self._tick(), name="ticker")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        tasks = [receiver, writer, publisher, ticker]
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:
                # The connection dropped (or a task failed): surface the first error, retry.
                failed = next(t for t in tasks if t.done())
                await _cancel(tasks)
                failed.result()
                raise aiomqtt.MqttError(f"{failed.get_name()} stopped")
            # Stopping: no more input; write what was received; publish the last confirmations.
            await _cancel([receiver, ticker])
            self._stopping = True
            self._inbox_ready.set()
            await writer
            self._stopping = False
            await _cancel([publisher])
            await self._final_publish(client)
            await self._call_slow(self.pipeline.checkpoint, time.time())
            log.info("stopped: final batch written, confirmations published, state checkpointed")
        finally:
            await _cancel([*tasks, stopper])

    async def _finish_offline(self) -> None:
        """Stopping while disconnected: still write what was received and checkpoint."""
        if self._inbox:
            self._stopping = True
            with contextlib.suppress(CloudError):
                await self._write()
        if self._pipeline is not None:
            with contextlib.suppress(CloudError):
                await self._call_slow(self.pipeline.checkpoint, time.time())

    # -- tasks ------------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Messages arrive through `_inbox_queue`; this only ends (MqttError) on a disconnect."""
        async for _ in client.messages:
            pass

    async def _write(self) -> None:
        config, inbox = self.config, self._inbox
        limit = config.batch_max_messages
        while True:
            if not inbox:
                if self._stopping:
                    return
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
                continue
            if len(inbox) < limit and config.batch_linger > 0 and not self._stopping:
                await asyncio.sleep(config.batch_linger)
            batch = inbox[: _batch_end(inbox, limit, config.batch_max_bytes)]
            del inbox[: len(batch)]
            await self._ingest(batch)

    async def _ingest(self, batch: Sequence[Inbound]) -> None:
        # A database server does the insert in its own process: on the worker thread (psycopg
        # waits without the GIL) the loop keeps receiving; SQLite's batch is cheapest right here.
        assert self._store is not None
        call = self._call_slow if self._store.waits_on_server else self._call
        try:
            report = await call(self.pipeline.ingest, batch, time.time())
        except StoreError as exc:
            # Rolled back and nothing confirmed: the agents keep their readings and resend them.
            self.metrics.store_errors.inc()
            self.metrics.store_writable.set(0)
            self._refused += len(batch)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                why = "the disk under it is full" if isinstance(exc, StoreFull) else "it cannot be written"
                log.error(
                    "store %s: %s; confirming nothing until it can write again (agents keep and "
                    "resend their readings): %s",
                    redacted(self.config.db),
                    why,
                    exc,
                )
            await asyncio.sleep(1.0)  # do not spin on a full disk
            return
        if self._failing_since is not None:
            log.warning(
                "store %s writable again after %.0f s; %d messages were not written meanwhile "
                "(their agents resend them)",
                redacted(self.config.db),
                time.monotonic() - self._failing_since,
                self._refused,
            )
            self._failing_since, self._refused = None, 0
            self.metrics.store_writable.set(1)
        self.metrics.observe(report, time.time())
        if report.publications:
            self._publications.extend(report.publications)
        self._publish_ready.set()

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        interval = min(self.config.ack_interval, self.config.tick_interval)
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that arrives
            # as the awaited event fires, and then this task could never be stopped (seen here).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._publish_ready.wait()
            self._publish_ready.clear()
            acks = await self._call(self.pipeline.acks_due, time.time())
            await self._publish(client, acks)

    async def _final_publish(self, client: aiomqtt.Client) -> None:
        acks = await self._call(self.pipeline.acks.drain, time.time())
        with contextlib.suppress(aiomqtt.MqttError):
            await self._publish(client, acks)

    async def _publish(self, client: aiomqtt.Client, acks: Sequence[Ack]) -> None:
        """Publish confirmations and alert messages concurrently; requeue what failed."""
        publications, self._publications = self._publications, []
        if not acks and not publications:
            return
        # A sliding window: aiomqtt scans every pending call on each publish, and paho every
        # unacknowledged message on each PUBACK, so 1,000 acks at once cost a million steps.
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def publish(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        jobs: list[Awaitable[None]] = [
            publish(wire.device_topic(a.device, wire.ACK), wire.encode_ack(a)) for a in acks
        ]
        jobs += [publish(p.topic, p.payload) for p in publications]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        ack_results, pub_results = results[: len(acks)], results[len(acks) :]
        failed_acks = [a for a, r in zip(acks, ack_results, strict=True) if isinstance(r, BaseException)]
        done_ids = [p.outbox_id for p, r in zip(publications, pub_results, strict=True) if r is None]
        self.metrics.acks.inc(len(acks) - len(failed_acks))
        if failed_acks:
            await self._call(_requeue, self.pipeline, failed_acks)
        if done_ids:
            await self._call(self.pipeline.published, done_ids)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Unpublished alert messages stay in the outbox and go out after reconnecting.
            raise aiomqtt.MqttError(f"{len(errors)} publishes failed: {errors[0]}")

    async def _tick(self) -> None:
        config = self.config
        next_checkpoint = time.monotonic() + config.checkpoint_interval
        next_prune = time.monotonic()
        while True:
            await asyncio.sleep(config.tick_interval)
            try:
                report = await self._call(self.pipeline.tick, time.time())
                if report.publications:
                    self.metrics.observe(report, time.time())
                    self._publications.extend(report.publications)
                    self._publish_ready.set()
                if time.monotonic() >= next_checkpoint:
                    saved = await self._call_slow(self.pipeline.checkpoint, time.time())
                    log.debug("checkpoint: %d streams saved", saved)
                    next_checkpoint = time.monotonic() + config.checkpoint_interval
                if config.retention_days > 0 and time.monotonic() >= next_prune:
                    await self._call_slow(self.pipeline.prune, time.time(), config.retention_days * 86400.0)
                    next_prune = time.monotonic() + RETENTION_EVERY
            except StoreError as exc:
                self.metrics.store_errors.inc()
                if self._failing_since is None or not isinstance(exc, StoreFull):
                    log.error("periodic work failed: %s", exc)  # a full disk was already reported


def _batch_end(inbox: Sequence[Inbound], max_messages: int, max_bytes: int) -> int:
    """How many messages from the head of the inbox make the next batch (at least one)."""
    size = 0
    for n, message in enumerate(inbox[:max_messages]):
        size += len(message.payload)
        if size > max_bytes and n:
            return n
    return min(len(inbox), max_messages)


def tune_gc() -> None:
    """Move what exists after start-up (detectors, series maps, modules) out of the collector's
    reach, and collect young objects less often: a full collection otherwise rescans them all
    while the fleet streams in, and a batch allocates a few objects per reading."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect future as seen. After an unexpected disconnection (the broker
    went away) its `__aexit__` returns without reading that future's exception, and asyncio
    later logs "Future exception was never retrieved" as an ERROR: the disconnect itself was
    already handled here (reconnect with back-off, or stop)."""
    future = getattr(client, "_disconnected", None)
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()


def _requeue(pipeline: Pipeline, acks: Sequence[Ack]) -> None:
    for ack in acks:
        pipeline.acks.requeue(ack)


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel and await tasks, retrieving every exception so none is reported as unretrieved.

    A task that swallows a cancellation (a library's wait_for can) is cancelled again rather
    than waited for forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: it was logged or re-raised where it mattered


async def serve(config: AggregatorConfig, stop: asyncio.Event, *, metrics: Metrics | None = None) -> None:
    """Open the store, serve until `stop`, close. StoreError/ConfigError if it cannot start."""
    aggregator = Aggregator(config, metrics=metrics)
    try:
        await aggregator.open()
        if config.metrics_port:
            try:
                aggregator.metrics.serve(config.metrics_port)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on port {config.metrics_port}: {exc}") from exc
        await aggregator.run(stop)
    finally:
        aggregator.metrics.close()
        await aggregator.close()


def run(config: AggregatorConfig) -> None:
    """Blocking entry point for the CLI: serve until SIGINT or SIGTERM (in cluster mode, as one
    member sharing the partitions: cloud.partitions.member)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if config.nats:
            from cloud.partitions import member  # noqa: PLC0415 - nats-py is the cluster extra

            await member.serve(config, stop)
        else:
            await serve(config, stop)

    asyncio.run(main())
