"""From MQTT message to stored history: decode, validate, store, detect, alert, confirm.

`decode_inbound` is pure: (topic, payload, received_at) in, one work item out (readings, a
status, or a dead letter with its reason). It never raises on bad input.

`Pipeline` runs a batch of items through the store (any `cloud.store.api.Store`) in ONE
transaction: the batch's readings messages are written with one store call that says which
readings were new (duplicates counted, not stored), bad ones dead-lettered, new live
readings scored and learned by their stream's detector, backfilled ones only scored (so a
drained backlog cannot corrupt the live state), and episode transitions written as alerts plus
an alert outbox row in the same transaction. Only after COMMIT are the readings' seqs handed to
the `AckCoalescer`, so a confirmation can never precede durability. The pipeline does no
network I/O and takes `now` explicitly; `cloud.service.aggregator` is the asyncio shell around it.

Recovery: detector and episode state are checkpointed with watermarks, message ids the store
gave: the last message the pipeline had processed, and per series the last one that series
had. On start the pipeline loads the checkpoint and replays every stored reading past them
through the same code, in the order first processed: the state ends exactly where it was
before a crash, and alert ids are deterministic, so a replayed episode is never stored or
published twice.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cloud.alerts.episodes import (
    EpisodePolicy,
    EpisodeTracker,
    Phase,
    Presence,
    SilencePolicy,
    SilenceTransition,
    SilenceWatch,
    Transition,
    alert_id,
)
from cloud.alerts.explain import in_units
from cloud.detect import (
    CheckpointError,
    StreamDetector,
    Verdict,
    detector_from_bytes,
    detector_to_bytes,
    make_detector,
    resume_detector,
)
from cloud.errors import StoreError
from cloud.notify.delivery import Router
from cloud.store.api import AlertRecord, DeadLetter, ReadingsItem, ReplayRow, Store, StreamCheckpoint
from devices import wire
from devices.errors import ReservedDeviceId, TopicError, WireError
from devices.model import Ack, AlertEvent, AlertKind, AlertState, Status, StatusEvent

log = logging.getLogger("edgewatch.cloud.ingest.pipeline")

DEFAULT_MAX_FUTURE = 86_400.0


# ---------------------------------------------------------------------------------------------
# decoding: bytes -> work items (pure)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as the shell received it."""

    topic: str
    payload: bytes
    received_at: float
    retained: bool = False


@dataclass(frozen=True, slots=True)
class StatusItem:
    topic: str
    received_at: float
    retained: bool
    status: Status


Item = ReadingsItem | StatusItem | DeadLetter
__all__ = ["DeadLetter", "Inbound", "Item", "Pipeline", "PipelineSettings", "ReadingsItem", "StatusItem"]


def decode_inbound(msg: Inbound, *, max_future: float = DEFAULT_MAX_FUTURE) -> Item:
    """Classify one message. Never raises: anything wrong becomes a DeadLetter with a reason.

    >>> item = decode_inbound(Inbound("edgewatch/v1/pi-1/telemetry", b"{oops", 1.7e9))
    >>> (item.reason, item.device)
    ('malformed_json', 'pi-1')
    >>> decode_inbound(Inbound("edgewatch/v1/viewer/telemetry", b"{}", 1.7e9)).reason
    'reserved_device'
    """
    try:
        device, kind = wire.parse_topic(msg.topic)
    except TopicError as exc:
        # A role's username as a device (`viewer`, `aggregator`) is refused as loudly as a bad
        # topic, under its own reason: it means a broker ACL lets a role publish as a device.
        reason = "reserved_device" if isinstance(exc.__cause__, ReservedDeviceId) else "bad_topic"
        return DeadLetter(msg.received_at, msg.topic, reason, str(exc)[:200], msg.payload)
    if kind in (wire.TELEMETRY, wire.BACKFILL):
        return _decode_readings(msg, device, kind == wire.BACKFILL, max_future)
    if kind == wire.STATUS:
        try:
            status = wire.decode_status(msg.payload)
        except WireError as exc:
            return DeadLetter(msg.received_at, msg.topic, exc.reason, exc.detail, msg.payload, device)
        if status.device != device:
            return DeadLetter(
                msg.received_at,
                msg.topic,
                "device_mismatch",
                f"payload device {status.device!r} on topic of {device!r}",
                msg.payload,
                device,
            )
        return StatusItem(msg.topic, msg.received_at, msg.retained, status)
    return DeadLetter(msg.received_at, msg.topic, "unexpected_topic", kind, msg.payload, device)


def _decode_readings(msg: Inbound, device: str, late: bool, max_future: float) -> Item:
    try:
        batch = wire.decode_readings(msg.payload)
    except WireError as exc:
        return DeadLetter(msg.received_at, msg.topic, exc.reason, exc.detail, msg.payload, device)
    if batch.device != device:
        return DeadLetter(
            msg.received_at,
            msg.topic,
            "device_mismatch",
            f"payload device {batch.device!r} on topic of {device!r}",
            msg.payload,
            device,
            batch.epoch,
            None,
            batch.msg_id,
        )
    dead = [
        DeadLetter(
            msg.received_at,
            msg.topic,
            r.reason,
            f"index {r.index}: {r.raw!r:.200}",
            None,
            device,
            batch.epoch,
            r.seq,
            batch.msg_id,
        )
        for r in batch.rejected
    ]
    accepted = batch.readings
    limit = msg.received_at + max_future
    if any(r.ts > limit for r in accepted):
        dead.extend(
            DeadLetter(
                msg.received_at,
                msg.topic,
                "future_ts",
                f"ts {r.ts} is {r.ts - msg.received_at:.0f}s ahead of arrival",
                None,
                device,
                batch.epoch,
                r.seq,
                batch.msg_id,
            )
            for r in accepted
            if r.ts > limit
        )
        accepted = tuple(r for r in accepted if r.ts <= limit)
    return ReadingsItem(msg.topic, msg.received_at, late, batch, accepted, tuple(dead))


# ---------------------------------------------------------------------------------------------
# confirmations


class AckCoalescer:
    """Seqs to confirm per (device, epoch), released at most once per `interval` per device.

    Every seq received is confirmed, duplicates included: an agent resends exactly because it
    missed an earlier confirmation, and it must get one again.

    >>> c = AckCoalescer(interval=1.0)
    >>> c.add("pi-1", "e1", [1, 2, 3, 7])
    >>> c.due(10.0)
    [Ack(device='pi-1', epoch='e1', ranges=((1, 3), (7, 7)), msg_id='')]
    >>> c.add("pi-1", "e1", [8])
    >>> c.due(10.5), len(c.due(11.0))
    ([], 1)
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        # Ranges, not seqs: a message's seqs are nearly always one contiguous run, so this costs
        # O(1) per message instead of a set insert per reading and a sort per confirmation.
        self._pending: dict[str, dict[str, list[tuple[int, int]]]] = {}
        self._last_sent: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, device: str, epoch: str, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        lo, hi = min(seqs), max(seqs)
        ranges = self._pending.setdefault(device, {}).setdefault(epoch, [])
        if hi - lo + 1 == len(seqs) and len(set(seqs)) == len(seqs):  # n distinct seqs in n slots
            ranges.append((lo, hi))
        else:
            ranges.extend(wire.seq_ranges(seqs))

    def requeue(self, ack: Ack) -> None:
        """A confirmation that could not be published goes back in line."""
        self._pending.setdefault(ack.device, {}).setdefault(ack.epoch, []).extend(ack.ranges)

    def due(self, now: float) -> list[Ack]:
        ready = [d for d in self._pending if now - self._last_sent.get(d, -float("inf")) >= self.interval]
        return self._release(ready, now)

    def drain(self, now: float) -> list[Ack]:
        """Everything pending, regardless of the interval (shutdown)."""
        return self._release(list(self._pending), now)

    def _release(self, devices: list[str], now: float) -> list[Ack]:
        out: list[Ack] = []
        for device in devices:
            for epoch, ranges in self._pending.pop(device).items():
                out.append(Ack(device, epoch, _merged(ranges)))
            self._last_sent[device] = now
        return out


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent inclusive ranges covering the same seqs.

    >>> _merged([(5, 9), (1, 3), (4, 4), (8, 12), (20, 20)])
    ((1, 12), (20, 20))
    """
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the pipeline


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    detector: str = "default"
    episodes: EpisodePolicy = field(default_factory=EpisodePolicy)
    silence: SilencePolicy = field(default_factory=SilencePolicy)
    late_threshold: float = 0.5
    max_future: float = DEFAULT_MAX_FUTURE
    ack_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Publication:
    """An alert message to publish; delete its outbox row once the broker has it."""

    topic: str
    payload: bytes
    outbox_id: int


@dataclass(slots=True)
class BatchReport:
    """What one batch did, for metrics and logs."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    statuses: int = 0
    alerts_opened: int = 0
    alerts_closed: int = 0
    late_alerts: int = 0
    received_at: list[float] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)

    def count_dead(self, reason: str, n: int = 1) -> None:
        self.dead[reason] = self.dead.get(reason, 0) + n

    def merge(self, other: BatchReport) -> None:
        for name in ("messages", "stored", "duplicates", "statuses", "alerts_opened", "alerts_closed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.late_alerts += other.late_alerts
        for reason, n in other.dead.items():
            self.count_dead(reason, n)
        self.received_at.extend(other.received_at)
        self.publications.extend(other.publications)


@dataclass(slots=True)
class _Batch:
    """Per-transaction accumulators: readings messages and dead letters are written once a batch."""

    now: float
    report: BatchReport = field(default_factory=BatchReport)
    acks: list[tuple[str, str, list[int]]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    readings: list[ReadingsItem] = field(default_factory=list)
    last_message: int = 0  # the highest message id this batch processed
    collect: list[AlertEvent] | None = None  # set by detect_history: transitions go here, unwritten


class _Stream:
    """One series' detector and its two episode trackers (live and late)."""

    __slots__ = ("detector", "dirty", "late", "live", "process", "series_id", "watermark")

    def __init__(
        self, series_id: int, detector: StreamDetector, live: EpisodeTracker, late: EpisodeTracker
    ) -> None:
        self.series_id = series_id
        self.detector = detector
        self.process = detector.process  # bound once: the hot loop calls it per reading
        self.live = live
        self.late = late
        self.dirty = True
        self.watermark = 0  # the last message whose readings this stream processed

    def late_verdict(self, ts: float, value: float, score: float, threshold: float) -> Verdict:
        """The verdict on a backfilled reading, which the live state scores but must not learn.

        A flagged one gets what the live detector would say of it now (range, kind, evidence)
        from a throwaway copy of its checkpoint (a restored detector gives exactly the
        original's verdicts): one checkpoint round trip, paid only for flagged backlog readings;
        a normal one needs only its score.
        """
        if score < threshold:
            return Verdict(score, False)
        seen = detector_from_bytes(detector_to_bytes(self.detector)).process(ts, value)
        return Verdict(score, True, seen.expected_low, seen.expected_high, seen.kind, seen.evidence)

    def checkpoint(self, detector_name: str) -> StreamCheckpoint:
        # Checkpoints before 1.2 also held "last" (the live verdict late alerts borrowed a range
        # from); it is ignored when read.
        tracker = {"live": self.live.to_state(), "late": self.late.to_state()}
        return StreamCheckpoint(
            self.series_id,
            detector_name,
            detector_to_bytes(self.detector),
            json.dumps(tracker),
            self.watermark,
        )


class Pipeline:
    """The aggregator's core over one Store. Not thread-safe: one batch at a time."""

    def __init__(
        self,
        store: Store,
        settings: PipelineSettings | None = None,
        *,
        now: float,
        recover: bool = True,
        scope: Callable[[str], bool] | None = None,
        notify: Router | None = None,
    ) -> None:
        """`recover=False` starts every stream fresh and touches nothing in the store (replay).

        `scope` (cluster mode) says which devices are this member's: recovery loads and
        replays only theirs, each series from its own watermark (the members share one store,
        so the store-wide watermark means nothing), and watches only their silence.
        """
        self.settings = settings = settings or PipelineSettings()
        self.scope = scope
        make_detector(settings.detector)  # fail fast on an unknown name
        self.store = store
        self.notify = notify  # queues each fresh transition for the sinks that route it
        self.acks = AckCoalescer(settings.ack_interval)
        self.silence = SilenceWatch(settings.silence)
        self._streams: dict[int, _Stream] = {}
        self._status_ts: dict[str, float] = {}
        self.replayed = 0
        self._watermark = 0  # the last message id processed: the checkpoint's watermark
        self._needs_recovery = True
        self._recovered: BatchReport | None = None  # alert messages a replay made, to publish
        if recover:
            self.recover(now)
        else:
            self._needs_recovery = False

    # -- recovery -------------------------------------------------------------------------------

    def recover(self, now: float) -> int:
        """(Re)load state from the store: checkpoint, presence, then replay past the watermark.

        If this fails (the store is unusable), the next batch tries again before anything else.
        """
        self._needs_recovery = True
        store, settings, scope = self.store, self.settings, self.scope
        watermark, checkpoints = store.load_checkpoint()
        if scope is not None:
            watermark = 0
            checkpoints = [cp for cp in checkpoints if scope(store.series_info(cp.series_id).device)]
        self._streams = {}
        rejected: list[tuple[StreamCheckpoint, str]] = []
        for cp in checkpoints:
            try:
                stream = self._restore(cp)
            except CheckpointError as exc:
                rejected.append((cp, str(exc)))
                continue
            self._streams[cp.series_id] = stream
        if rejected:
            # Each such stream starts fresh (a warm-up); the others resume where they were.
            with store.transaction():
                for cp, reason in rejected:
                    store.reject_checkpoint(cp, reason, now)
            for cp, reason in rejected:
                info = store.series_info(cp.series_id)
                log.warning(
                    "series %s/%s/%s: checkpoint not restored (%s); the stream starts fresh, "
                    "the checkpoint is kept in rejected_checkpoints",
                    info.device,
                    info.sensor,
                    info.metric,
                    reason,
                )
        self._status_ts = store.status_times()
        self.silence = SilenceWatch(settings.silence)
        silent = {a.device: a.start for a in store.list_alerts(kind="silent", state="open", limit=1 << 30)}
        history = store.readings_after(watermark)
        if scope is not None:
            owned = functools.cache(lambda series_id: scope(store.series_info(series_id).device))
            history = (row for row in history if owned(row.series_id))
        for p in store.presence():
            device = p.device
            if scope is not None and not scope(device):
                continue
            if device in silent:
                self.silence.restore(device, Presence.SILENT, now, since=silent[device])
            elif not p.online and p.status_event == StatusEvent.SHUTDOWN:
                self.silence.restore(device, Presence.STOPPED, now)
            else:  # a grace period from the restart: we could not hear anyone while down
                self.silence.restore(device, Presence.ONLINE, now)
        batch = _Batch(now)
        with store.transaction():
            replayed, last = self._feed(history, batch)
        self._watermark = max(watermark, last)
        if replayed:
            log.info(
                "replayed %d readings past checkpoint watermark %d (%d alert transitions were new)",
                replayed,
                watermark,
                len(batch.report.publications),
            )
            self.checkpoint(now)
        self.replayed = replayed
        self._needs_recovery = False
        if batch.report.publications:
            self._recovered = batch.report
        return replayed

    def _feed(self, history: Iterable[ReplayRow], batch: _Batch) -> tuple[int, int]:
        """Stored readings, in the order they were first processed, through `_detect` exactly as
        they went the first time (one call per message; late ones scored, not learned).
        Returns (readings fed, the last message id)."""
        fed = 0
        chunk: list[tuple[int, float, float]] = []
        message, late, msg_id = 0, False, ""
        for row in history:
            if row.message_id != message and chunk:
                self._detect(chunk, late, msg_id, message, batch)
                chunk = []
            message, late, msg_id = row.message_id, row.late, row.msg_id
            chunk.append((row.series_id, row.ts, row.value))
            fed += 1
        if chunk:
            self._detect(chunk, late, msg_id, message, batch)
        return fed, message

    def detect_history(self, history: Iterable[ReplayRow], now: float) -> tuple[int, list[AlertEvent]]:
        """Replay: (readings fed, the alert transitions they make), nothing written anywhere.

        The same code the aggregator runs on arrival and on recovery, so the same readings in
        the same order give the same episodes with the same ids (a replay never doubles one).
        """
        batch = _Batch(now, collect=[])
        fed, _ = self._feed(history, batch)
        assert batch.collect is not None
        return fed, batch.collect

    def _restore(self, cp: StreamCheckpoint) -> _Stream:
        """One stream from its checkpoint; CheckpointError if any part of it cannot be read."""
        settings = self.settings
        if cp.detector == settings.detector:
            detector = resume_detector(cp.blob, settings.detector)
        else:
            log.warning("series %d: detector changed from %s, starting fresh", cp.series_id, cp.detector)
            detector = make_detector(settings.detector)
        try:
            state = json.loads(cp.tracker)
            stream = _Stream(
                cp.series_id,
                detector,
                EpisodeTracker.from_state(state["live"], settings.episodes),
                EpisodeTracker.from_state(state["late"], settings.episodes),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"unreadable episode state: {type(exc).__name__}: {exc}") from exc
        stream.dirty = False
        stream.watermark = cp.watermark
        return stream

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(self, inbound: Sequence[Inbound], now: float) -> BatchReport:
        """Decode, store, detect and alert for a batch in one transaction; queue acks after commit."""
        max_future = self.settings.max_future
        try:
            return self.ingest_items([decode_inbound(m, max_future=max_future) for m in inbound], now)
        except StoreError:
            raise
        except Exception as exc:  # a bug (ours or a detector's) must not stall the whole fleet
            log.exception("internal error in a batch of %d messages; isolating the culprit", len(inbound))
            self.recover(now)
            if len(inbound) > 1:
                merged = BatchReport()
                for message in inbound:
                    merged.merge(self.ingest([message], now))
                return merged
            m = inbound[0]
            dead = DeadLetter(m.received_at, m.topic, "internal_error", repr(exc)[:200], m.payload)
            return self.ingest_items([dead], now)

    def ingest_items(self, items: Sequence[Item], now: float) -> BatchReport:
        if self._needs_recovery:
            self.recover(now)
        batch = _Batch(now)
        try:
            with self.store.transaction():
                for item in items:
                    batch.report.messages += 1
                    batch.report.received_at.append(item.received_at)
                    if isinstance(item, ReadingsItem):
                        self._readings(item, batch)
                    elif isinstance(item, StatusItem):
                        self._status(item, batch)
                    else:
                        self._dead_letter(item, batch)
                if batch.readings:
                    self._settle(batch)
                if batch.dead:
                    self.store.insert_dead_letters(batch.dead)
        except StoreError:
            # Detectors may have learned readings that were rolled back: rebuild from the store.
            # Nothing was confirmed, so the agents resend and the batch is processed again.
            self.recover(now)
            raise
        for device, epoch, seqs in batch.acks:  # committed: now, and only now, confirmable
            self.acks.add(device, epoch, seqs)
        self._watermark = max(self._watermark, batch.last_message)
        if self._recovered is not None:
            batch.report.publications[:0] = self._recovered.publications
            self._recovered = None
        return batch.report

    def _dead_letter(self, item: DeadLetter, batch: _Batch) -> None:
        batch.dead.append(item)
        batch.report.count_dead(item.reason)
        log.warning(
            "dead letter %s on %s (%d bytes): %s",
            item.reason,
            item.topic,
            len(item.payload or b""),
            item.detail[:120],
        )

    def _readings(self, item: ReadingsItem, batch: _Batch) -> None:
        """First pass over a readings message: it joins the batch's one write, its dead letters
        and confirmable seqs are counted; what it stored is settled in `_settle`."""
        report = batch.report
        msg = item.batch
        device, epoch = msg.device, msg.epoch
        batch.readings.append(item)
        seqs = [r.seq for r in item.accepted]
        if item.dead:
            for d in item.dead:
                report.count_dead(d.reason)
                if d.seq is not None:
                    seqs.append(d.seq)
            log.warning(
                "dead-lettered %d readings of %s/%s msg_id=%s: first %s",
                len(item.dead),
                device,
                epoch,
                msg.msg_id,
                item.dead[0].reason,
            )
        if seqs:
            batch.acks.append((device, epoch, seqs))
        transition = self.silence.seen(device, item.received_at)
        if transition is not None:
            self._silence(transition, batch)

    def _settle(self, batch: _Batch) -> None:
        """Write every readings message of the batch at once; then per message in arrival order
        count what was new and let the detectors see the new readings only."""
        report = batch.report
        for stored in self.store.store_messages(batch.readings):
            item = stored.item
            msg = item.batch
            report.stored += len(stored.new)
            report.duplicates += stored.duplicates
            batch.last_message = max(batch.last_message, stored.message_id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "msg_id=%s %s/%s: %d stored, %d duplicate, %d rejected",
                    msg.msg_id,
                    msg.device,
                    msg.epoch,
                    len(stored.new),
                    stored.duplicates,
                    len(item.dead),
                )
            if stored.new:
                self._detect(stored.new, item.late, msg.msg_id, stored.message_id, batch)

    def _detect(
        self,
        rows: Sequence[tuple[int, float, float]],
        late: bool,
        msg_id: str,
        message_id: int,
        batch: _Batch,
    ) -> None:
        """Score (and, if live, learn) newly stored readings of one message; feed episode trackers.

        The hottest loop of the aggregator: locals only, and the tracker is consulted only for an
        anomalous verdict or an open episode.
        """
        streams = self._streams
        new_stream = self._new_stream
        threshold = self.settings.late_threshold
        normal = Phase.NORMAL
        for series_id, ts, value in rows:
            stream = streams.get(series_id)
            if stream is None:
                stream = new_stream(series_id)
            stream.dirty = True
            stream.watermark = message_id
            if late:  # score only: the live state must not learn the backlog
                score = stream.detector.score_one(ts, value)
                tracker = stream.late
                if score < threshold and tracker.phase is normal:
                    continue
                verdict = stream.late_verdict(ts, value, score, threshold)
            else:
                verdict = stream.process(ts, value)
                tracker = stream.live
                if not verdict.anomalous and tracker.phase is normal:
                    continue
            transition = tracker.observe(ts, value, verdict, msg_id=msg_id)
            if transition is not None:
                self._episode(series_id, transition, late, batch)

    def _new_stream(self, series_id: int) -> _Stream:
        policy = self.settings.episodes
        stream = _Stream(
            series_id, make_detector(self.settings.detector), EpisodeTracker(policy), EpisodeTracker(policy)
        )
        self._streams[series_id] = stream
        return stream

    def _status(self, item: StatusItem, batch: _Batch) -> None:
        status = item.status
        device = status.device
        known = self._status_ts.get(device)
        if item.retained and known is not None and status.ts <= known:
            return  # the broker repeating a retained status we already applied
        batch.report.statuses += 1
        self._status_ts[device] = max(known or 0.0, status.ts)
        self.store.apply_status(
            device,
            event=str(status.event),
            ts=status.ts,
            online=status.online,
            agent_version=status.agent_version,
            epoch=status.epoch,
            counters=status.counters,
            seen_at=item.received_at,
        )
        log.info(
            "status %s from %s (agent %s, epoch %s)", status.event, device, status.agent_version, status.epoch
        )
        if status.online:
            transition = self.silence.seen(device, item.received_at)
        elif status.event is StatusEvent.SHUTDOWN:
            transition = self.silence.shutdown(device, item.received_at)
        else:
            transition = self.silence.will(device, item.received_at)
        if transition is not None:
            self._silence(transition, batch)

    # -- alerts ---------------------------------------------------------------------------------

    def _episode(self, series_id: int, t: Transition, late: bool, batch: _Batch) -> None:
        info = self.store.series_info(series_id)
        unit = info.unit
        event = AlertEvent(
            alert_id=alert_id(info.device, info.sensor, info.metric, AlertKind.ANOMALY, t.start, late=late),
            device=info.device,
            metric=info.metric,
            kind=AlertKind.ANOMALY,
            state=t.state,
            start=t.start,
            end=t.end,
            peak_score=t.peak_score,
            value=t.value,
            expected_low=t.expected_low,
            expected_high=t.expected_high,
            severity="warning",
            late=late,
            detector=self.settings.detector,
            msg_id=t.msg_id,
            sensor=info.sensor,
            anomaly_kind=t.kind,
            evidence=in_units(t.evidence, unit),
            opening_evidence=in_units(t.opening_evidence, unit),
            peak_ts=t.peak_ts,
        )
        self._record(event, batch)

    def _silence(self, t: SilenceTransition, batch: _Batch) -> None:
        event = AlertEvent(
            alert_id=t.alert_id,
            device=t.device,
            metric="",
            kind=AlertKind.SILENT,
            state=t.state,
            start=t.start,
            end=t.end,
            peak_score=1.0,
            value=None,
            expected_low=None,
            expected_high=None,
            severity="critical",
            detector=t.reason,
        )
        self._record(event, batch)

    def _record(self, e: AlertEvent, batch: _Batch) -> None:
        """Store the transition; publish it only if it is new (a replay finds it already there)."""
        if batch.collect is not None:  # detect_history: hand it back, write nothing
            batch.collect.append(e)
            return
        store, report, now = self.store, batch.report, batch.now
        if e.state is AlertState.OPEN:
            fresh = store.insert_alert(
                AlertRecord(
                    alert_id=e.alert_id,
                    device=e.device,
                    sensor=e.sensor,
                    metric=e.metric,
                    kind=str(e.kind),
                    state=str(e.state),
                    start=e.start,
                    end=None,
                    peak_score=e.peak_score,
                    value=e.value,
                    expected_low=e.expected_low,
                    expected_high=e.expected_high,
                    severity=e.severity,
                    late=e.late,
                    detector=e.detector,
                    msg_id=e.msg_id,
                    opened_at=now,
                    closed_at=None,
                    acked_at=None,
                    acked_by="",
                    note="",
                    anomaly_kind=e.anomaly_kind,
                    evidence=e.evidence,
                    opening_evidence=e.opening_evidence,
                    peak_ts=e.peak_ts,
                )
            )
        else:
            fresh = store.close_alert(
                e.alert_id,
                end=e.end if e.end is not None else now,
                closed_at=now,
                peak_score=e.peak_score,
                value=e.value,
                expected_low=e.expected_low,
                expected_high=e.expected_high,
                evidence=e.evidence,
                peak_ts=e.peak_ts,
            )
        if not fresh:
            return
        if e.state is AlertState.OPEN:
            report.alerts_opened += 1
            report.late_alerts += int(e.late)
        else:
            report.alerts_closed += 1
        if self.notify is not None:
            self.notify.enqueue(store.get_alert(e.alert_id), now)
        payload = wire.encode_alert(e)
        outbox_id = store.enqueue_publication(e.device, payload, now)
        report.publications.append(Publication(wire.alert_topic(e.device), payload, outbox_id))
        log.info(
            "alert %s %s %s %s/%s start=%.3f peak=%.3f late=%s msg_id=%s %s: %s",
            e.alert_id,
            e.state,
            e.kind,
            e.device,
            e.metric or "-",
            e.start,
            e.peak_score,
            e.late,
            e.msg_id,
            e.anomaly_kind or "-",
            e.evidence or "-",
        )

    def detector(self, device: str, sensor: str, metric: str) -> StreamDetector | None:
        """The live detector of one stream, if it has seen a reading (for inspection and tests)."""
        sid = self.store.find_series(device, sensor, metric)
        stream = self._streams.get(sid) if sid is not None else None
        return stream.detector if stream else None

    # -- periodic work --------------------------------------------------------------------------

    def tick(self, now: float) -> BatchReport:
        """Open silent alerts for devices overdue at `now`."""
        batch = _Batch(now)
        transitions = self.silence.check(now)
        if transitions:
            with self.store.transaction():
                for t in transitions:
                    self._silence(t, batch)
        return batch.report

    def acks_due(self, now: float) -> list[Ack]:
        return self.acks.due(now)

    def pending_publications(self) -> list[Publication]:
        """Alert messages committed but not yet confirmed published (e.g. from before a crash)."""
        self._recovered = None  # the outbox holds those too
        return [
            Publication(wire.alert_topic(device), payload, oid)
            for oid, device, payload in self.store.pending_publications()
        ]

    def published(self, outbox_ids: Sequence[int]) -> None:
        if outbox_ids:
            with self.store.transaction():
                self.store.delete_publications(outbox_ids)

    def checkpoint(self, now: float) -> int:
        """Save every stream changed since the last checkpoint, with the watermark; returns how many."""
        dirty = [s for s in self._streams.values() if s.dirty]
        name = self.settings.detector
        with self.store.transaction():
            self.store.save_checkpoint(self._watermark, [s.checkpoint(name) for s in dirty], now)
        for stream in dirty:
            stream.dirty = False
        return len(dirty)

    def prune(self, now: float, retention_s: float) -> dict[str, int]:
        with self.store.transaction():
            counts = self.store.prune(now - retention_s)
        if any(counts.values()):
            log.info("retention: deleted %s", counts)
        return counts
