"""The store interface: the records the cloud reads and writes, and what a backend must do.

Everything outside `cloud.store` talks to a store through these Protocols and records; no SQL
lives anywhere else. A backend is picked by `open_store` from a path or URL:

    cloud.db, /var/lib/edgewatch/cloud.db, sqlite:////var/lib/edgewatch/cloud.db   the default
    postgresql://user[:password]@host[:port]/db                    the `postgres` extra

The roles, each a Protocol, that one store object plays:

    IngestStore       the aggregator's write path: one transaction per batch; a batch of
                      readings messages is written at once and the store says exactly which
                      readings were new (ids come from the database, never from arithmetic);
                      dead letters, statuses, alerts and the alert outbox
    CheckpointStore   detector and episode state per series, each with its own watermark (the
                      last message whose readings it had processed), the owner's watermark,
                      and the readings past them
    RetentionStore    history older than a cut, dropped
    ReadModel         the operator's queries (alerts, devices, gaps, readings, dead letters)
                      and the offline replay's history and result sets
    OwnedStore        who may write: one aggregator per store (SQLite: a lock file,
                      PostgreSQL: a session advisory lock)
    LeaseStore        several aggregators sharing partitions: leases with fencing (PostgreSQL)

Records are frozen slotted dataclasses. Timestamps are unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, Self, runtime_checkable

from cloud.errors import StoreError
from devices.model import Reading, ReadingBatch

# Raw bytes kept for a dead letter; an oversized payload is truncated (the detail says so).
MAX_DEAD_PAYLOAD: Final = 64 * 1024
STATUS_COUNTERS: Final = ("backlog", "dropped", "dropped_unconfirmed", "sampled", "published")
REPLAY_SET: Final = "replay_alerts"
"""Where `edgewatch replay` writes its episodes unless told to write into the live alerts."""


# ---------------------------------------------------------------------------------------------
# what the write path is given


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that cannot be stored as a reading; kept with its raw bytes and reason."""

    received_at: float
    topic: str
    reason: str
    detail: str
    payload: bytes | None = None
    device: str | None = None
    epoch: str | None = None
    seq: int | None = None
    msg_id: str = ""


@dataclass(frozen=True, slots=True)
class ReadingsItem:
    """A decoded readings message: the readings to store and the ones rejected (dead letters)."""

    topic: str
    received_at: float
    late: bool  # came on the backfill topic
    batch: ReadingBatch
    accepted: tuple[Reading, ...]
    dead: tuple[DeadLetter, ...]  # rejected readings (each with its seq when it had one)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What writing one readings message did: its id and the readings that were new.

    `new` holds (series_id, ts, value) of the readings this message stored, in the message's
    order; a reading already stored (a resend, or an earlier message of the same batch) is a
    duplicate and is not in it.
    """

    message_id: int
    item: ReadingsItem
    new: list[tuple[int, float, float]]
    duplicates: int
    rejected: int  # dead-lettered readings that were new dead letters


# ---------------------------------------------------------------------------------------------
# records returned by queries


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: str
    device: str
    sensor: str
    metric: str
    kind: str
    state: str
    start: float
    end: float | None
    peak_score: float
    value: float | None
    expected_low: float | None
    expected_high: float | None
    severity: str
    late: bool
    detector: str
    msg_id: str
    opened_at: float
    closed_at: float | None
    acked_at: float | None
    acked_by: str
    note: str
    # Why: the opening reading's kind (it stays the episode's kind), the peak reading's reason in
    # the stream's units (the reading `value` and the expected range describe), the opening
    # reading's reason, and when the peak was. Empty for silent alerts and older alerts.
    anomaly_kind: str = ""
    evidence: str = ""
    opening_evidence: str = ""
    peak_ts: float | None = None


@dataclass(frozen=True, slots=True)
class EpochCompleteness:
    """Loss made visible: what one (device, epoch) sent, what arrived, and the holes."""

    device: str
    epoch: str
    first_seq: int | None
    last_seq: int | None
    received: int  # readings stored
    rejected: int  # readings dead-lettered with their seq (invalid, yet accounted for)
    missing: int  # seqs in the range that never arrived
    first_seen: float | None
    last_seen: float | None
    gaps: tuple[tuple[int, int], ...] = ()  # inclusive seq ranges; filled by `device()` only

    @property
    def completeness(self) -> float:
        total = self.received + self.rejected + self.missing
        return 1.0 if total == 0 else (self.received + self.rejected) / total


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device: str
    first_seen: float | None
    last_seen: float | None
    online: bool
    status_event: str
    status_ts: float | None
    agent_version: str
    epoch: str
    counters: dict[str, float]
    messages: int
    readings: int
    open_alerts: int
    epochs: tuple[EpochCompleteness, ...]

    @property
    def missing(self) -> int:
        return sum(e.missing for e in self.epochs)


@dataclass(frozen=True, slots=True)
class StoredReading:
    ts: float
    value: float
    device: str
    sensor: str
    metric: str
    unit: str
    epoch: str
    seq: int
    late: bool
    msg_id: str


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    received_at: float
    topic: str
    reason: str
    detail: str
    device: str | None
    epoch: str | None
    seq: int | None
    msg_id: str
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One receipt of a readings message (a resend has its own msg_id; a redelivery repeats it)."""

    id: int
    msg_id: str
    device: str
    epoch: str
    kind: str
    received_at: float
    sent_at: float | None
    readings: int
    stored: int
    duplicates: int
    rejected: int
    min_ts: float | None
    max_ts: float | None


@dataclass(frozen=True, slots=True)
class MessageTotals:
    """Sums over the readings messages received (of one device, or of all)."""

    messages: int = 0
    readings: int = 0  # readings carried, accepted or rejected
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    series_id: int
    device: str
    sensor: str
    metric: str
    unit: str


@dataclass(frozen=True, slots=True)
class StreamCheckpoint:
    """One series' detector and episode state, as of the message `watermark` (its own)."""

    series_id: int
    detector: str
    blob: bytes
    tracker: str  # JSON of the episode trackers (cloud.alerts.episodes)
    watermark: int  # id of the last message whose readings this state has processed


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A stored reading to run through its series' detector again, in first-processed order."""

    message_id: int
    series_id: int
    ts: float
    value: float
    late: bool
    msg_id: str


@dataclass(frozen=True, slots=True)
class ReplayedAlert:
    """One episode of an offline replay run, as kept in the replay set."""

    run: str
    alert_id: str
    device: str
    sensor: str
    metric: str
    detector: str
    start: float
    end: float | None
    peak_score: float
    value: float | None
    expected_low: float | None
    expected_high: float | None


@dataclass(frozen=True, slots=True)
class Presence:
    device: str
    last_seen: float | None
    online: bool
    status_event: str


# ---------------------------------------------------------------------------------------------
# records of the partition leases (several aggregators: cloud/partitions)


@dataclass(frozen=True, slots=True)
class Lease:
    """One partition's lease row. `epoch` grows by one on every takeover (the fencing token)."""

    partition: int
    owner: str | None
    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Member:
    member: str
    heartbeat_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the store says, as of `now` (its own clock)."""

    now: float
    members: tuple[Member, ...]
    leases: tuple[Lease, ...]

    def live_members(self) -> list[str]:
        return sorted(m.member for m in self.members if m.expires_at > self.now)


# ---------------------------------------------------------------------------------------------
# the roles


class IngestStore(Protocol):
    """The aggregator's write path. Write methods run inside `transaction()`."""

    waits_on_server: bool
    """True when a batch's write waits on another process (a database server): the service then
    runs batches on its worker thread, and keeps receiving meanwhile."""

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic write; on any error it rolls back and raises StoreError."""
        ...

    def store_messages(self, items: Sequence[ReadingsItem]) -> list[StoredMessage]:
        """Write a batch of readings messages at once, in arrival order.

        Each reading is stored once per (device, epoch, seq); the first occurrence in arrival
        order is the one stored. Sources, series and message rows are created as needed, the
        rejected readings dead-lettered, the per-source and per-device counters updated.
        """
        ...

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters; one per (device, epoch, seq) when they carry a seq. Returns new ones."""
        ...

    def apply_status(
        self,
        device: str,
        *,
        event: str,
        ts: float,
        online: bool,
        agent_version: str,
        epoch: str,
        counters: dict[str, float],
        seen_at: float | None,
    ) -> None: ...

    def insert_alert(self, alert: AlertRecord) -> bool:
        """False when this episode is already stored (a replay): alert ids are deterministic."""
        ...

    def close_alert(
        self,
        alert_id: str,
        *,
        end: float,
        closed_at: float,
        peak_score: float,
        value: float | None,
        expected_low: float | None,
        expected_high: float | None,
        evidence: str,
        peak_ts: float | None,
    ) -> bool:
        """With the peak's final figures (value, range, evidence, time); the kind and the
        opening reason stay as the episode opened. False if already closed (a replay)."""
        ...

    def enqueue_publication(self, device: str, payload: bytes, now: float) -> int: ...

    def pending_publications(self, limit: int = 1000) -> list[tuple[int, str, bytes]]: ...

    def delete_publications(self, ids: Iterable[int]) -> None: ...

    def series_info(self, series_id: int) -> SeriesInfo: ...

    def find_series(self, device: str, sensor: str, metric: str) -> int | None: ...

    def presence(self) -> list[Presence]: ...

    def status_times(self) -> dict[str, float]: ...


class CheckpointStore(Protocol):
    def save_checkpoint(self, watermark: int, streams: Iterable[StreamCheckpoint], now: float) -> None:
        """Replace these series' saved state and the owner's watermark, the last message id it
        had processed (inside a transaction)."""
        ...

    def load_checkpoint(self) -> tuple[int, list[StreamCheckpoint]]:
        """(the owner's watermark, every series' saved state)."""
        ...

    def reject_checkpoint(self, checkpoint: StreamCheckpoint, reason: str, now: float) -> None:
        """Move a checkpoint that cannot be restored aside, with the reason (in a transaction)."""
        ...

    def rejected_checkpoints(self) -> list[tuple[int, str, str, float]]:
        """(series_id, detector, reason, rejected_at) of every checkpoint kept aside, oldest first."""
        ...

    def readings_after(self, watermark: int) -> Iterator[ReplayRow]:
        """The readings of the messages past `watermark`, less those a series' own saved state
        already holds, in the order the pipeline first processed them (by message, then within
        the message)."""
        ...


class RetentionStore(Protocol):
    def prune(self, older_than: float) -> dict[str, int]:
        """Drop history older than `older_than`; open alerts stay. Inside a transaction."""
        ...


class ReadModel(Protocol):
    """The operator's queries; every one works beside a writing aggregator."""

    def list_alerts(
        self,
        *,
        device: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        until: float | None = None,
        acked: bool | None = None,
        late: bool | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]: ...

    def find_alerts(
        self,
        *,
        since: float | None = None,
        device: str | None = None,
        metric: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]: ...

    def get_alert(self, alert_id: str) -> AlertRecord: ...

    def ack_alert(self, alert_id: str, *, now: float, by: str = "", note: str = "") -> AlertRecord: ...

    def list_devices(self) -> list[DeviceRecord]: ...

    def device(self, device: str, *, max_gaps: int = 100) -> DeviceRecord: ...

    def gaps(self, device: str, epoch: str, *, limit: int = 100) -> tuple[tuple[int, int], ...]: ...

    def readings(
        self,
        device: str,
        metric: str,
        *,
        since: float | None = None,
        until: float | None = None,
        sensor: str | None = None,
        limit: int = 100_000,
    ) -> list[StoredReading]: ...

    def count_readings(self, device: str | None = None) -> int: ...

    def dead_letters(
        self,
        *,
        reason: str | None = None,
        device: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRecord]: ...

    def dead_letter_counts(self, device: str | None = None) -> dict[str, int]:
        """Dead letters per reason, of one device or of all."""
        ...

    def dead_letter(self, dead_id: int) -> DeadLetterRecord:
        """One dead letter by id; NotFound otherwise."""
        ...

    def message(self, msg_id: str) -> list[MessageRecord]: ...

    def message_totals(self, device: str | None = None) -> MessageTotals: ...

    def device_series(self, device: str) -> list[SeriesInfo]: ...

    def last_reading_ts(self, device: str) -> float | None: ...

    def alert_ids_starting(self, prefix: str, limit: int = 50) -> list[str]: ...

    def devices_starting(self, prefix: str, limit: int = 200) -> list[str]: ...

    def history(self, *, device: str | None = None, since: float | None = None) -> Iterator[ReplayRow]:
        """Stored readings in the order first processed (the offline replay's input)."""
        ...

    def save_replayed(self, alerts: Sequence[ReplayedAlert], now: float) -> int:
        """Insert a replay run's episodes into the replay set (never doubles one); new ones."""
        ...

    def replayed_alerts(self, run: str) -> list[ReplayedAlert]: ...

    def replay_runs(self) -> list[str]:
        """Names of the replay runs written, oldest first."""
        ...


class OwnedStore(Protocol):
    def acquire_ownership(self) -> None:
        """Become the one aggregator writing this store, or raise StoreError naming the holder."""
        ...


@runtime_checkable
class LeaseStore(Protocol):
    """Partition leases with fencing, for several aggregators on one store (PostgreSQL only).

    Times are the store's clock. `fenced(leases)` makes every transaction opened inside it
    check, in that transaction, that the leases are still held (same owner and epoch, not
    expired), and raise LeaseLost before writing anything otherwise.
    """

    def join_cluster(self, member: str, ttl: float) -> ClusterView: ...

    def leave_cluster(self, member: str) -> None: ...

    def cluster_view(self) -> ClusterView: ...

    def acquire_lease(self, partition: int, member: str, ttl: float) -> Lease | None: ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None: ...

    def release_lease(self, lease: Lease) -> None: ...

    def last_rebalance(self) -> float | None: ...

    def fenced(self, leases: Iterable[Lease]) -> AbstractContextManager[None]: ...


class Store(IngestStore, CheckpointStore, RetentionStore, ReadModel, OwnedStore, Protocol):
    """Everything the cloud needs of its store."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


# ---------------------------------------------------------------------------------------------
# the one entry point


def redacted(target: str | Path) -> str:
    """A store's path or URL as logs and messages may show it: never a password.

    >>> redacted("postgresql://edgewatch:s3cret@db.example.com/edgewatch")
    'postgresql://edgewatch@db.example.com/edgewatch'
    >>> redacted("/var/lib/edgewatch/cloud.db")
    '/var/lib/edgewatch/cloud.db'
    """
    text = str(target)
    scheme, sep, rest = text.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return text
    return f"{scheme}://{creds.split(':', 1)[0]}@{host}"


def open_store(
    target: str | Path, *, readonly: bool, create: bool = False, synchronous: str = "NORMAL"
) -> Store:
    """The store at a SQLite path (`cloud.db`, `sqlite:///cloud.db`, `sqlite:////var/lib/x.db`)
    or a PostgreSQL URL (`postgresql://user@host/db`).

    `readonly=True` is the operator's open: an existing edgewatch store, never written, and
    refused (StoreError) if it is anything else. `readonly=False` writes: with `create=True` it
    is the aggregator's open (create the file and migrate it); without, an existing store an
    operator changes (alert acknowledgements, replays into it).
    """
    text = str(target)
    if text.startswith(("postgresql:", "postgres:")):
        try:
            from cloud.store.postgres.store import PostgresStore  # noqa: PLC0415 - an optional extra
        except ImportError as exc:
            raise StoreError("a PostgreSQL store needs psycopg: pip install 'edgewatch[postgres]'") from exc
        return PostgresStore(text, create=create and not readonly, readonly=readonly)
    from cloud.store.sqlite.store import SqliteStore  # noqa: PLC0415 - sqlite-utils loads on use

    path = Path(text.removeprefix("sqlite:///")) if text.startswith("sqlite:///") else Path(text)
    if create and not readonly:
        return SqliteStore(path, synchronous=synchronous)
    return SqliteStore.open_existing(path, write=not readonly)
