"""One aggregator among several: leases its share of the partitions, consumes them from JetStream.

    lease turn (every lease_ttl / 3): heartbeat, plan (cloud.partitions.assignment), renew,
        release (after a checkpoint), acquire; when the set changed: recover the detectors of
        exactly the devices now owned (checkpoint + the stored readings past it)
    one consumer per owned partition: a durable pull consumer, explicit ack
        fetch a batch -> store + detect + alerts (Pipeline.ingest: ONE PostgreSQL transaction,
        fenced: it first checks and holds this member's leases) -> publish the devices' acks and
        the alert messages (NATS; the agents get them over MQTT at QoS 0) -> ack JetStream
    checkpoint (every checkpoint_interval, fenced): bounds what a new owner replays

Detection runs inside the fenced transaction, not after the JetStream ack: a batch's alerts
commit with its readings, so a crash anywhere leaves nothing half done; a message not acked is
delivered again (to whoever owns the partition by then) and stored once, its ack sent again.
A member that lost a lease (expired while it was paused, or taken over) has its next
transaction refused whole (LeaseLost): it acks nothing, re-plans and recovers. Alert ids are
deterministic, so a new owner replaying a handed-over device's readings doubles no alert.

Pipeline calls all run on the event loop thread, one at a time (the store is one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from cloud.errors import ConfigError, LeaseLost, StoreError
from cloud.ingest.pipeline import Inbound, Pipeline, Publication
from cloud.partitions.assignment import plan
from cloud.partitions.layout import STREAM, partition_filter, partition_of, stream_config
from cloud.service.aggregator import _cancel, settings_from
from cloud.service.config import AggregatorConfig
from cloud.store.api import Lease, LeaseStore, Store, open_store
from devices import wire
from devices.errors import TopicError
from devices.model import Ack

log = logging.getLogger("edgewatch.cloud.partitions.member")

FETCH_BATCH = 500
FETCH_WAIT = 0.25  # seconds a fetch waits for a partition's first message
ACK_WAIT = 5.0  # a message fetched and not acked is delivered again after this long


def member_id(config: AggregatorConfig) -> str:
    return config.member or f"{socket.gethostname()}-{os.getpid()}"


def nats_servers(urls: str) -> tuple[list[str], str | None, str | None]:
    """(server URLs without credentials, user, password) of `nats://user:pw@host:4222,...`.

    The credentials go to the client separately: it also reconnects to the servers the cluster
    announces, which carry none (they were refused, seen here).

    >>> nats_servers("nats://aggregator:pw@a:4222, nats://aggregator:pw@b:4222")
    (['nats://a:4222', 'nats://b:4222'], 'aggregator', 'pw')
    """
    servers: list[str] = []
    user: str | None = None
    password: str | None = None
    for url in (u.strip() for u in urls.split(",")):
        parts = urlsplit(url)
        if parts.username:
            user, password = unquote(parts.username), unquote(parts.password or "")
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        servers.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return servers, user, password


def consumer_name(partition: int) -> str:
    return f"edgewatch-p{partition}"


class PartitionMember:
    """The member's state: leases held, the pipeline over the owned devices, the consumers."""

    def __init__(self, config: AggregatorConfig) -> None:
        if not config.nats:
            raise ConfigError("cluster mode needs nats URLs")
        self.config = config
        self.me = member_id(config)
        self.partitions = config.partitions
        self.leases: dict[int, Lease] = {}
        self._store: Store | None = None
        self._pipeline: Pipeline | None = None
        self._consumers: dict[int, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._replan = asyncio.Event()
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.batches = 0
        self._closing = False

    # -- store and pipeline -----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "open() first"
        return self._store

    @property
    def lease_store(self) -> LeaseStore:
        store = self.store
        assert isinstance(store, LeaseStore)
        return store

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "open() first"
        return self._pipeline

    def owns(self, device: str) -> bool:
        return partition_of(device, self.partitions) in self.leases

    async def open(self) -> None:
        store = open_store(self.config.db, readonly=False, create=True)
        if not isinstance(store, LeaseStore):
            store.close()
            raise ConfigError("cluster mode needs a store with partition leases (postgresql://)")
        self._store = store
        self._pipeline = Pipeline(
            store, settings_from(self.config), now=time.time(), recover=False, scope=self.owns
        )
        servers, user, password = nats_servers(self.config.nats)
        self.nc = await nats.connect(
            servers=servers,
            user=user,
            password=password,
            name=f"edgewatch-aggregator-{self.me}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=self._nats_error,
            disconnected_cb=self._nats_disconnected,
            reconnected_cb=self._nats_reconnected,
        )
        self.js = self.nc.jetstream(timeout=5)
        await self._ensure_stream()
        url = self.nc.connected_url
        log.info(
            "member %s: connected to NATS %s:%s",
            self.me,
            url.hostname if url else "?",
            url.port if url else "?",
        )

    async def _nats_error(self, exc: Exception) -> None:
        """A node going away is expected (the client reconnects to another): one line, no trace."""
        log.warning("member %s: NATS: %s: %s", self.me, type(exc).__name__, exc)

    async def _nats_disconnected(self) -> None:
        log.warning("member %s: NATS disconnected; reconnecting", self.me)

    async def _nats_reconnected(self) -> None:
        url = self.nc.connected_url if self.nc is not None else None
        log.info(
            "member %s: NATS reconnected to %s:%s",
            self.me,
            url.hostname if url else "?",
            url.port if url else "?",
        )

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            await self.js.add_stream(StreamConfig.from_response(stream_config()))

    async def close(self) -> None:
        self._closing = True
        await _cancel(list(self._consumers.values()))
        self._consumers.clear()
        if self._store is not None:
            with contextlib.suppress(StoreError):
                self.checkpoint()
            for lease in list(self.leases.values()):
                with contextlib.suppress(StoreError):
                    self.lease_store.release_lease(lease)
            with contextlib.suppress(StoreError):
                self.lease_store.leave_cluster(self.me)
            log.info("member %s: stopped: checkpointed, %d partitions released", self.me, len(self.leases))
            self.leases.clear()
            self._store.close()
            self._store = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.nc.close()
            self.nc = None

    def checkpoint(self) -> int:
        if not self.leases:
            return 0
        with self.lease_store.fenced(self.leases.values()):
            return self.pipeline.checkpoint(time.time())

    # -- the lease turn ---------------------------------------------------------------------------

    async def lease_turn(self) -> None:
        """Heartbeat, then renew, release and acquire as the plan says; recover if it changed."""
        async with self._lock:
            store, ttl = self.lease_store, self.config.lease_ttl
            view = store.join_cluster(self.me, ttl)
            decided = plan(self.me, self.partitions, view)
            before = {p: lease.epoch for p, lease in self.leases.items()}
            for partition in [p for p in self.leases if p not in decided.renew and p not in decided.release]:
                del self.leases[partition]  # expired or taken while we were away: lost already
            for partition in decided.renew:
                renewed = store.renew_lease(self.leases[partition], ttl) if partition in self.leases else None
                if renewed is None:
                    self.leases.pop(partition, None)
                else:
                    self.leases[partition] = renewed
            if decided.release:
                with contextlib.suppress(LeaseLost):
                    self.checkpoint()  # the next owner starts from here, not from further back
                for partition in decided.release:
                    lease = self.leases.pop(partition, None)
                    if lease is not None:
                        store.release_lease(lease)
            for partition in decided.acquire:
                lease = store.acquire_lease(partition, self.me, ttl)
                if lease is not None:
                    self.leases[partition] = lease
            if {p: lease.epoch for p, lease in self.leases.items()} != before:
                gained, lost = sorted(set(self.leases) - set(before)), sorted(set(before) - set(self.leases))
                log.info("member %s: partitions +%s -%s, now %d", self.me, gained, lost, len(self.leases))
                self._recover()
        self._sync_consumers()

    def _recover(self) -> None:
        """The owned devices' detectors from their checkpoints and the stored readings past them."""
        with self.lease_store.fenced(self.leases.values()):
            replayed = self.pipeline.recover(time.time())
        if replayed:
            log.info("member %s: %d readings replayed through the detectors", self.me, replayed)

    def _sync_consumers(self) -> None:
        for partition in [p for p in self._consumers if p not in self.leases]:
            self._consumers.pop(partition).cancel()
        for partition in self.leases:
            task = self._consumers.get(partition)
            if task is None or task.done():
                self._consumers[partition] = asyncio.create_task(
                    self._consume(partition), name=f"partition-{partition}"
                )

    # -- consuming one partition ------------------------------------------------------------------

    async def _consume(self, partition: int) -> None:
        assert self.js is not None
        js = self.js
        subscription: Any = None
        while partition in self.leases and not self._closing:
            try:
                if subscription is None:
                    await js.add_consumer(
                        STREAM,
                        ConsumerConfig(
                            durable_name=consumer_name(partition),
                            filter_subject=partition_filter(partition),
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=ACK_WAIT,
                            max_ack_pending=100_000,
                        ),
                    )
                    subscription = await js.pull_subscribe_bind(consumer_name(partition), STREAM)
                try:
                    messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
                except (NatsTimeout, TimeoutError):
                    continue  # nothing new in this partition
                log.debug("partition %d: %d messages", partition, len(messages))
                await self._handle(partition, messages)
            except asyncio.CancelledError:
                raise
            except LeaseLost as exc:
                log.warning("member %s: %s; acking nothing, re-planning", self.me, exc)
                self._replan.set()
                await asyncio.sleep(0.2)
            except Exception as exc:  # NATS errors during a node's failover, a store outage
                log.warning(
                    "member %s: partition %d: %s: %s; retrying", self.me, partition, type(exc).__name__, exc
                )
                subscription = None
                await asyncio.sleep(0.5)

    async def _handle(self, partition: int, messages: Sequence[Any]) -> None:
        now = time.time()
        inbound: list[Inbound] = []
        for msg in messages:
            try:
                got, topic = wire.parse_partition_subject(msg.subject)
            except TopicError:
                topic = msg.subject  # dead-lettered as a bad topic by the pipeline
                got = partition
            if got != partition:
                log.error("partition %d consumer received %s", partition, msg.subject)
            inbound.append(Inbound(topic, bytes(msg.data), now))
        async with self._lock:
            if partition not in self.leases:
                return  # released meanwhile: not acked, the new owner gets them
            with self.lease_store.fenced(self.leases.values()):
                report = self.pipeline.ingest(inbound, now)
            acks = self.pipeline.acks.drain(now)
            publications = self._owned_publications() if report.publications else []
        await self._publish(acks, publications)
        for msg in messages:
            await msg.ack()
        self.batches += 1

    def _owned_publications(self) -> list[Publication]:
        """Alert messages committed and not yet published, of the devices this member owns (the
        outbox is shared by the members; a crashed member's leftovers go with its devices)."""
        return [p for p in self.pipeline.pending_publications() if self.owns(wire.parse_topic(p.topic)[0])]

    async def _publish(self, acks: Sequence[Ack], publications: Sequence[Publication]) -> None:
        assert self.nc is not None
        for ack in acks:
            subject = wire.nats_subject(wire.device_topic(ack.device, wire.ACK))
            await self.nc.publish(subject, wire.encode_ack(ack))
        for publication in publications:
            await self.nc.publish(wire.nats_subject(publication.topic), publication.payload)
        # No flush: the JetStream acks that follow go out on this same connection, after these
        # (and a flush cancelled mid-way trips nats-py's pong bookkeeping, seen here).
        if publications:
            async with self._lock:
                with self.lease_store.fenced(self.leases.values()):
                    self.pipeline.published([p.outbox_id for p in publications])

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.config.lease_ttl / 3
        next_tick = time.monotonic()
        next_checkpoint = time.monotonic() + self.config.checkpoint_interval
        while not stop.is_set():
            try:
                await self.lease_turn()
                if time.monotonic() >= next_tick:
                    await self._tick()
                    next_tick = time.monotonic() + self.config.tick_interval
                if time.monotonic() >= next_checkpoint:
                    # Bounds what a partition's next owner replays after this member dies.
                    async with self._lock:
                        self.checkpoint()
                    next_checkpoint = time.monotonic() + self.config.checkpoint_interval
            except StoreError as exc:
                log.warning("member %s: lease turn failed: %s", self.me, exc)
            self._replan.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    stopped = asyncio.ensure_future(stop.wait())
                    replan = asyncio.ensure_future(self._replan.wait())
                    try:
                        await asyncio.wait([stopped, replan], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        await _cancel([stopped, replan])

    async def _tick(self) -> None:
        """Silence of the owned devices; alert messages left from before a crash."""
        async with self._lock:
            if not self.leases:
                return
            with self.lease_store.fenced(self.leases.values()):
                self.pipeline.tick(time.time())
            publications = self._owned_publications()
        if publications:
            await self._publish([], publications)


async def serve(config: AggregatorConfig, stop: asyncio.Event) -> None:
    member = PartitionMember(config)
    try:
        await member.open()
        await member.run(stop)
    finally:
        await member.close()
