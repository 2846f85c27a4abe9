"""The aggregator's PostgreSQL store (psycopg 3): the same interface as the SQLite one.

Schema and migrations are the versioned files in sql/ (0001_initial.sql, ...), applied in order
in one transaction each; the version is the row in `edgewatch_schema`. The layout is the
SQLite store's with database-made ids everywhere: sources and series from identity columns,
message ids from a sequence (one round trip a batch), and readings partitioned by day of ts,
keyed by (source_id, seq, ts) (see 0001_initial.sql for why ts is in the key).

The hot path, one transaction per batch: COPY the batch's readings into a temporary staging
table, then one `INSERT ... SELECT ... ORDER BY message_id, pos ON CONFLICT DO NOTHING` that
returns how many were new; when that is fewer than the batch, one more query names the staged
rows that were not stored (a duplicate within the batch loses to its first occurrence, as in
SQLite). Retention drops whole day partitions older than the cut. Ownership is a session
advisory lock: one aggregator writes a store at a time; a session the server dropped is
replaced before the next use. The read model is `queries.PostgresReadModel`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from importlib import resources
from typing import Any, Final, Self

import psycopg
from psycopg import sql as pgsql

from cloud.errors import LeaseLost, NotFound, SchemaTooNew, StoreError, StoreFull
from cloud.store.api import (
    MAX_DEAD_PAYLOAD,
    STATUS_COUNTERS,
    AlertRecord,
    ClusterView,
    DeadLetter,
    Lease,
    Member,
    Presence,
    ReadingsItem,
    ReplayRow,
    SeriesInfo,
    StoredMessage,
    StreamCheckpoint,
    redacted,
)
from cloud.store.postgres.queries import PostgresReadModel, translated
from cloud.store.tally import BatchTally

DAY: Final = 86_400.0
_NOW: Final = "extract(epoch from clock_timestamp())::double precision"
OWNER: Final = "aggregator"
LOCK_KEY: Final = "edgewatch:aggregator"
_ALERT_COLUMNS: Final = tuple(f.name for f in fields(AlertRecord))
_ALERT_INSERT: Final = (
    "INSERT INTO alerts ("  # noqa: S608 - column names from the dataclass
    + ", ".join(f'"{c}"' for c in _ALERT_COLUMNS)
    + ") VALUES ("
    + ", ".join(["%s"] * len(_ALERT_COLUMNS))
    + ") ON CONFLICT (alert_id) DO NOTHING"
)
_STAGING: Final = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS staging (pos integer, source_id bigint, seq bigint, "
    "ts double precision, series_id integer, value double precision, message_id bigint, late boolean) "
    "ON COMMIT DELETE ROWS"
)
_STAGING_TYPES: Final = ("int4", "int8", "int8", "float8", "int4", "float8", "int8", "bool")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every file in sql/, in order: 0001_initial.sql is version 1."""
    files = sorted(
        (
            f
            for f in resources.files("cloud.store.postgres").joinpath("sql").iterdir()
            if f.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )
    out = [(int(f.name.split("_", 1)[0]), f.read_text()) for f in files]
    if [v for v, _ in out] != list(range(1, len(out) + 1)):
        raise StoreError(f"PostgreSQL migrations are not numbered 1..n: {[f.name for f in files]}")
    return out


SCHEMA_VERSION: Final = len(migrations())


def _day(ts: float) -> int:
    return math.floor(ts / DAY)


class PostgresStore(PostgresReadModel):
    """One database. Write methods run inside `transaction()`; queries may run anytime.

    Not thread-safe, like the SQLite store: one connection, driven by one thread at a time.
    """

    waits_on_server = True  # the insert runs in the server: receive meanwhile (see api)

    def __init__(self, url: str, *, create: bool = True, readonly: bool = False) -> None:
        self.url = url
        self.path = redacted(url)  # named in messages, as the SQLite store names its file
        self.readonly = readonly
        self._closed = False
        self._in_transaction = False
        self._owned = False
        self._fence: tuple[Lease, ...] = ()  # leases every transaction checks (cluster mode)
        self._staging_ready = False
        self._partitions: set[int] = set()
        self._sources: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str, str], int] = {}
        self._series_info: dict[int, SeriesInfo] = {}
        try:
            self._session = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.path}: {exc}") from exc
        try:
            version = self._version()
            if version is None and self._scalar(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            ):
                raise StoreError(f"{self.path} is a database but not an edgewatch store")
            if version is not None and version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {version}; this edgewatch knows up to {SCHEMA_VERSION}"
                )
            if readonly or not create:
                if version is None:
                    raise StoreError(f"{self.path} is not an edgewatch store (no schema)")
                if version < SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, older than {SCHEMA_VERSION}: "
                        "run the aggregator once on it to upgrade it"
                    )
            else:
                self._migrate(version or 0)
            if readonly:
                self._conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            self._session.close()
            raise StoreError(f"cannot initialise database {self.path}: {exc}") from exc
        except StoreError:
            self._session.close()
            raise
        if not readonly:  # an operator's read needs none of the writer's id caches
            self._load_ids()

    def _version(self) -> int | None:
        exists = self._scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'edgewatch_schema'")
        if not exists:
            return None
        return self._scalar("SELECT version FROM edgewatch_schema")

    def _migrate(self, version: int) -> None:
        for target, script in migrations()[version:]:
            with self._conn.transaction():
                if target == 1:
                    self._conn.execute("CREATE TABLE edgewatch_schema (version integer NOT NULL)")
                    self._conn.execute("INSERT INTO edgewatch_schema VALUES (0)")
                self._conn.execute(script.encode())
                self._conn.execute("UPDATE edgewatch_schema SET version = %s", (target,))

    def _load_ids(self) -> None:
        cur = self._conn.execute("SELECT id, device, epoch FROM sources")
        self._sources = {(d, e): int(i) for i, d, e in cur}
        self._series, self._series_info = {}, {}
        for i, d, s, m, u in self._conn.execute("SELECT id, device, sensor, metric, unit FROM series"):
            self._series[(d, s, m)] = int(i)
            self._series_info[int(i)] = SeriesInfo(int(i), d, s, m, u)
        self._partitions = {
            int(name.removeprefix("readings_d"))
            for (name,) in self._conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'readings'"
            )
        }

    def _reconnect(self) -> None:
        """A new session after the server dropped ours (a restart, a failover, a killed backend).

        The advisory lock went with the old session: it is taken again, or this store refuses
        to write (another aggregator got it meanwhile). Temporary tables went too.
        """
        with contextlib.suppress(psycopg.Error):
            self._session.close()
        try:
            self._session = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            if self.readonly:
                self._session.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise StoreError(f"cannot reconnect to {self.path}: {exc}") from exc
        self._staging_ready = False
        if self._owned:
            self._owned = False
            self.acquire_ownership()
        if not self.readonly:
            self._forget_ids()

    def acquire_ownership(self) -> None:
        """A session advisory lock: one aggregator writes this database (per partition, later)."""
        if self._owned:
            return
        try:
            got = self._conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (LOCK_KEY,)).fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"cannot take the aggregator lock on {self.path}: {exc}") from exc
        if not got or not got[0]:
            raise StoreError(f"another aggregator is already running on this database ({self.path})")
        self._owned = True

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        """The session, replaced first if the server dropped it, except inside a transaction
        (whose writes went with the old session: it fails, and the batch is resent)."""
        session = self._session
        if (session.closed or session.broken) and not self._closed and not self._in_transaction:
            self._reconnect()
            session = self._session
        return session

    def close(self) -> None:
        self._closed = True
        self._session.close()  # ends the session: the advisory lock goes with it

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write; on any error it rolls back, forgets cached ids, raises StoreError.

        A session the server dropped is replaced first, so a PostgreSQL restart costs the
        batches written meanwhile (unconfirmed, so resent), not the aggregator.

        Inside `fenced(leases)` it first checks, in the same transaction, that every lease is
        still this member's, and holds them (FOR SHARE) until the commit: LeaseLost otherwise.
        """
        outermost = not self._in_transaction
        try:
            with self._conn.transaction():
                self._in_transaction = True
                try:
                    if outermost and self._fence:
                        self._check_fence(self._fence)
                    yield
                finally:
                    self._in_transaction = not outermost
        except psycopg.errors.DiskFull as exc:
            self._forget_ids()
            raise StoreFull(f"write to {self.path} failed: {exc}") from exc
        except psycopg.errors.IdleInTransactionSessionTimeout as exc:
            # A member paused past its lease inside a transaction: the server ended the session.
            raise LeaseLost(f"write to {self.path} failed: the session outlived its lease: {exc}") from exc
        except psycopg.Error as exc:
            self._forget_ids()
            raise StoreError(f"write to {self.path} failed: {exc}") from exc
        except BaseException:
            self._forget_ids()
            raise

    def _forget_ids(self) -> None:
        """After a rollback: ids made by it are gone (and so is the staging table, if it made it)."""
        self._staging_ready = False
        with contextlib.suppress(psycopg.Error):  # a lost connection: the caller's error says why
            self._load_ids()

    # -- partition leases (cloud/partitions) ----------------------------------------------------

    @translated
    def join_cluster(self, member: str, ttl: float) -> ClusterView:
        """Heartbeat as a live member for `ttl` seconds; the view as of the database's clock.

        The session's idle-in-transaction timeout becomes the lease TTL: a member paused inside
        a transaction is cut off by the server instead of holding its leases' row locks.
        """
        self._conn.execute(f"SET idle_in_transaction_session_timeout = {int(ttl * 1000)}".encode())
        self._conn.execute(
            f"INSERT INTO cluster_members (member, started_at, heartbeat_at, expires_at) "  # noqa: S608
            f"VALUES (%s, {_NOW}, {_NOW}, {_NOW} + %s) ON CONFLICT (member) DO UPDATE SET "
            f"heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at".encode(),
            (member, ttl),
        )
        return self.cluster_view()

    @translated
    def leave_cluster(self, member: str) -> None:
        self._conn.execute("DELETE FROM cluster_members WHERE member = %s", (member,))

    @translated
    def cluster_view(self) -> ClusterView:
        now = float(self._conn.execute(f"SELECT {_NOW}".encode()).fetchone()[0])  # type: ignore[index]
        members = tuple(
            Member(str(m), float(h), float(e))
            for m, h, e in self._conn.execute(
                "SELECT member, heartbeat_at, expires_at FROM cluster_members ORDER BY member"
            )
        )
        leases = tuple(
            Lease(int(p), o, int(ep), float(ex))
            for p, o, ep, ex in self._conn.execute(
                "SELECT partition, owner, epoch, expires_at FROM partition_leases ORDER BY partition"
            )
        )
        return ClusterView(now, members, leases)

    @translated
    def acquire_lease(self, partition: int, member: str, ttl: float) -> Lease | None:
        """Take a free or expired partition (its epoch + 1); None if another member holds it."""
        with self._conn.transaction():
            self._conn.execute("SET LOCAL lock_timeout = '2s'")
            self._conn.execute(
                "INSERT INTO partition_leases (partition) VALUES (%s) ON CONFLICT DO NOTHING", (partition,)
            )
            row = self._conn.execute(
                f"UPDATE partition_leases SET owner = %s, epoch = epoch + 1, expires_at = {_NOW} + %s, "  # noqa: S608
                f"acquired_at = {_NOW} WHERE partition = %s AND (owner IS NULL OR owner = %s "
                f"OR expires_at <= {_NOW}) RETURNING epoch, expires_at".encode(),
                (member, ttl, partition, member),
            ).fetchone()
            if row is None:
                return None
            lease = Lease(partition, member, int(row[0]), float(row[1]))
            self._event(lease, "acquired")
            return lease

    @translated
    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease still held (same owner and epoch, not expired); None if it was lost."""
        row = self._conn.execute(
            f"UPDATE partition_leases SET expires_at = {_NOW} + %s WHERE partition = %s "  # noqa: S608
            f"AND owner = %s AND epoch = %s AND expires_at > {_NOW} RETURNING expires_at".encode(),
            (ttl, lease.partition, lease.owner, lease.epoch),
        ).fetchone()
        return None if row is None else Lease(lease.partition, lease.owner, lease.epoch, float(row[0]))

    @translated
    def release_lease(self, lease: Lease) -> None:
        """Give a partition up at once (a member rebalancing or stopping), if still held."""
        with self._conn.transaction():
            released = self._conn.execute(
                "UPDATE partition_leases SET owner = NULL, expires_at = 0 "
                "WHERE partition = %s AND owner = %s AND epoch = %s",
                (lease.partition, lease.owner, lease.epoch),
            ).rowcount
            if released:
                self._event(lease, "released")

    def _event(self, lease: Lease, event: str) -> None:
        self._conn.execute(
            f"INSERT INTO cluster_events (at, member, event, partition, epoch) "  # noqa: S608
            f"VALUES ({_NOW}, %s, %s, %s, %s)".encode(),
            (lease.owner, event, lease.partition, lease.epoch),
        )

    @translated
    def last_rebalance(self) -> float | None:
        row = self._conn.execute("SELECT max(at) FROM cluster_events").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @contextmanager
    def fenced(self, leases: Iterable[Lease]) -> Iterator[None]:
        """Every transaction opened inside checks these leases first (see `transaction`)."""
        previous, self._fence = self._fence, tuple(leases)
        try:
            yield
        finally:
            self._fence = previous

    def _check_fence(self, leases: Sequence[Lease]) -> None:
        owners = {lease.owner for lease in leases}
        if len(owners) != 1:
            raise LeaseLost("a fenced write names leases of several owners")
        rows = self._conn.execute(
            f"SELECT partition FROM partition_leases WHERE owner = %s "  # noqa: S608
            f"AND (partition, epoch) IN (SELECT * FROM unnest(%s::integer[], %s::bigint[])) "
            f"AND expires_at > {_NOW} FOR SHARE".encode(),
            (leases[0].owner, [lease.partition for lease in leases], [lease.epoch for lease in leases]),
        ).fetchall()
        lost = sorted({lease.partition for lease in leases} - {int(p) for (p,) in rows})
        if lost:
            raise LeaseLost(f"partitions {lost} are no longer {leases[0].owner}'s: nothing written")

    # -- hot write path -------------------------------------------------------------------------

    def _source_id(self, device: str, epoch: str, now: float) -> int:
        key = (device, epoch)
        sid = self._sources.get(key)
        if sid is None:
            row = self._conn.execute(
                "INSERT INTO sources(device, epoch, first_seen, last_seen) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device, epoch) DO UPDATE SET device = excluded.device RETURNING id",
                (device, epoch, now, now),
            ).fetchone()
            assert row is not None
            sid = self._sources[key] = int(row[0])
        return sid

    def _series_id(self, device: str, sensor: str, metric: str, unit: str) -> int:
        key = (device, sensor, metric)
        sid = self._series.get(key)
        if sid is None:
            row = self._conn.execute(
                "INSERT INTO series(device, sensor, metric, unit) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device, sensor, metric) DO UPDATE SET device = excluded.device RETURNING id",
                (device, sensor, metric, unit),
            ).fetchone()
            assert row is not None
            sid = self._series[key] = int(row[0])
            self._series_info[sid] = SeriesInfo(sid, device, sensor, metric, unit)
        return sid

    def find_series(self, device: str, sensor: str, metric: str) -> int | None:
        if self.readonly:
            sid = self._scalar(
                "SELECT id FROM series WHERE device = %s AND sensor = %s AND metric = %s",
                (device, sensor, metric),
            )
            return sid or None
        return self._series.get((device, sensor, metric))

    def series_info(self, series_id: int) -> SeriesInfo:
        if self.readonly:
            row = self._conn.execute(
                "SELECT id, device, sensor, metric, unit FROM series WHERE id = %s", (series_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"series {series_id} does not exist")
            return SeriesInfo(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4] or ""))
        info = self._series_info.get(series_id)
        if info is None:  # made by another writer (cluster members share the store): look again
            self._load_ids()
            info = self._series_info[series_id]
        return info

    def _ensure_partitions(self, days: Iterable[int]) -> None:
        for day in sorted(set(days) - self._partitions):
            # Several writers (cluster members) may create the same day at once; IF NOT EXISTS
            # alone races in the catalog, so they queue on a lock held to their commit.
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('edgewatch:readings_d' || %s))", (day,))
            self._conn.execute(
                pgsql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF readings FOR VALUES FROM ({}) TO ({})"
                ).format(
                    pgsql.Identifier(f"readings_d{day}"),
                    pgsql.Literal(day * DAY),
                    pgsql.Literal((day + 1) * DAY),
                )
            )
            self._partitions.add(day)

    def store_messages(self, items: Sequence[ReadingsItem]) -> list[StoredMessage]:
        """COPY into staging, one INSERT ... ON CONFLICT DO NOTHING counting the new, then the rest."""
        conn = self._conn
        if not items:
            return []
        mids = [
            int(m)
            for (m,) in conn.execute(
                "SELECT nextval('message_ids') FROM generate_series(1, %s)", (len(items),)
            )
        ]
        if not self._staging_ready:
            conn.execute(_STAGING)
            self._staging_ready = True
        # (pos in its message, source_id, seq, ts, series_id, value, message_id, late)
        rows: list[tuple[int, int, int, float, int, float, int, bool]] = []
        spans: list[tuple[int, int, int]] = []  # (source_id, start, end) of each message's rows
        get = self._series.get
        append = rows.append
        days: set[int] = set()
        for mid, item in zip(mids, items, strict=True):
            msg = item.batch
            device = msg.device
            src = self._source_id(device, msg.epoch, item.received_at)
            start, late = len(rows), item.late
            for pos, r in enumerate(item.accepted):
                sid = get((device, r.sensor, r.metric))
                if sid is None:
                    sid = self._series_id(device, r.sensor, r.metric, r.unit)
                append((pos, src, r.seq, r.ts, sid, r.value, mid, late))
            if item.accepted:
                tss = [r.ts for r in item.accepted]
                first, last = _day(min(tss)), _day(max(tss))
                if first == last:  # nearly always: a message spans seconds
                    days.add(first)
                else:  # only the days that hold a reading (a bad clock must not make years of them)
                    days.update(_day(ts) for ts in tss)
            spans.append((src, start, len(rows)))
        duplicates: set[tuple[int, int]] = set()  # (message_id, pos) of readings not stored
        inserted = 0
        if rows:
            self._ensure_partitions(days)
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY staging (pos, source_id, seq, ts, series_id, value, message_id, late) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(_STAGING_TYPES)
                    for row in rows:
                        copy.write_row(row)
                # In arrival order: of two equal keys in one batch, the first is stored. Only the
                # count comes back (returning 120k rows a batch cost more than the insert's
                # Python side); a batch with duplicates then asks which rows they were.
                cur.execute(
                    "WITH ins AS (INSERT INTO readings "
                    "(source_id, seq, ts, series_id, value, message_id, pos, late) "
                    "SELECT source_id, seq, ts, series_id, value, message_id, pos, late FROM staging "
                    "ORDER BY message_id, pos ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
                )
                counted = cur.fetchone()
                inserted = int(counted[0]) if counted else 0
                if inserted < len(rows):
                    cur.execute(
                        "SELECT s.message_id, s.pos FROM staging s "
                        "WHERE NOT EXISTS (SELECT 1 FROM readings r WHERE r.source_id = s.source_id "
                        "AND r.seq = s.seq AND r.ts = s.ts AND r.message_id = s.message_id AND r.pos = s.pos)"
                    )
                    duplicates = set(cur.fetchall())
        tally = BatchTally()
        for mid, item, (src, start, end) in zip(mids, items, spans, strict=True):
            mine = rows[start:end]
            if duplicates:
                mine = [r for r in mine if (mid, r[0]) not in duplicates]
            rejected = self.insert_dead_letters(item.dead) if item.dead else 0
            tally.add(
                mid, item, src, seqs=[r[2] for r in mine], tss=[r[3] for r in mine],
                new=[(r[4], r[3], r[5]) for r in mine], rejected=rejected,
            )  # fmt: skip
        messages, sources, devices = tally.messages, tally.sources, tally.devices
        with conn.cursor() as cur:
            with cur.copy(
                "COPY messages (id, msg_id, device, epoch, kind, received_at, sent_at, readings, stored, "
                "duplicates, rejected, source_id, lo_seq, hi_seq, min_ts, max_ts) FROM STDIN"
            ) as copy:
                for m in messages:
                    copy.write_row(m)
            cur.executemany(
                "UPDATE sources SET received = received + %s, rejected = rejected + %s, "
                "first_seq = least(coalesce(first_seq, %s), %s), "
                "last_seq = greatest(coalesce(last_seq, %s), %s), "
                "last_seen = greatest(last_seen, %s) WHERE id = %s",
                [
                    (int(v[0]), int(v[1]), int(v[2]), int(v[2]), int(v[3]), int(v[3]), v[4], sid)
                    for sid, v in sources.items()
                ],
            )
            cur.executemany(
                "INSERT INTO devices(device, first_seen, last_seen, online, messages, readings) "
                "VALUES (%s, %s, %s, true, %s, %s) ON CONFLICT (device) DO UPDATE SET "
                "last_seen = greatest(coalesce(devices.last_seen, 0), excluded.last_seen), online = true, "
                "messages = devices.messages + excluded.messages, "
                "readings = devices.readings + excluded.readings",
                [(d, v[0], v[0], int(v[1]), int(v[2])) for d, v in sorted(devices.items())],
            )
        return tally.out

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Rows with a seq are unique per (device, epoch, seq); returns how many were new."""
        new = 0
        for d in letters:
            cur = self._conn.execute(
                "INSERT INTO dead_letter "
                "(received_at, topic, reason, detail, device, epoch, seq, msg_id, payload) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (d.received_at, d.topic, d.reason, d.detail, d.device, d.epoch, d.seq, d.msg_id,
                 d.payload[:MAX_DEAD_PAYLOAD] if d.payload is not None else None),
            )  # fmt: skip
            new += cur.rowcount
        return new

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
    ) -> None:
        """Record a status message unless an equally new one is already stored (retained repeats)."""
        known = [counters.get(k) for k in STATUS_COUNTERS]
        self._conn.execute(
            "INSERT INTO devices(device, first_seen, last_seen) VALUES (%s, %s, %s) "
            "ON CONFLICT (device) DO NOTHING",
            (device, seen_at, seen_at),
        )
        self._conn.execute(
            "UPDATE devices SET online = %s, status_event = %s, status_ts = %s, agent_version = %s, "
            "epoch = %s, backlog = %s, dropped = %s, dropped_unconfirmed = %s, sampled = %s, "
            "published = %s, counters = %s, last_seen = greatest(coalesce(last_seen, 0), coalesce(%s, 0)), "
            "messages = messages + 1 WHERE device = %s AND coalesce(status_ts, 0) <= %s",
            (online, event, ts, agent_version, epoch, *known,
             json.dumps(counters, sort_keys=True), seen_at, device, ts),
        )  # fmt: skip

    def insert_alert(self, alert: AlertRecord) -> bool:
        a = alert
        cur = self._conn.execute(
            _ALERT_INSERT,
            (a.alert_id, a.device, a.sensor, a.metric, a.kind, a.state, a.start, a.end,
             a.peak_score, a.value, a.expected_low, a.expected_high, a.severity, a.late,
             a.detector, a.msg_id, a.opened_at, a.closed_at, a.acked_at, a.acked_by, a.note,
             a.anomaly_kind, a.evidence, a.opening_evidence, a.peak_ts),
        )  # fmt: skip
        return cur.rowcount == 1

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
        cur = self._conn.execute(
            "UPDATE alerts SET state = 'closed', \"end\" = %s, closed_at = %s, peak_score = %s, value = %s, "
            "expected_low = %s, expected_high = %s, evidence = %s, peak_ts = %s "
            "WHERE alert_id = %s AND state = 'open'",
            (end, closed_at, peak_score, value, expected_low, expected_high, evidence, peak_ts, alert_id),
        )
        return cur.rowcount == 1

    def enqueue_publication(self, device: str, payload: bytes, now: float) -> int:
        row = self._conn.execute(
            "INSERT INTO alert_outbox(device, payload, created_at) VALUES (%s, %s, %s) RETURNING id",
            (device, payload, now),
        ).fetchone()
        assert row is not None
        return int(row[0])

    @translated
    def pending_publications(self, limit: int = 1000) -> list[tuple[int, str, bytes]]:
        return [
            (int(i), str(d), bytes(p))
            for i, d, p in self._conn.execute(
                "SELECT id, device, payload FROM alert_outbox ORDER BY id LIMIT %s", (limit,)
            )
        ]

    def delete_publications(self, ids: Iterable[int]) -> None:
        self._conn.execute("DELETE FROM alert_outbox WHERE id = ANY(%s)", (list(ids),))

    @translated
    def presence(self) -> list[Presence]:
        return [
            Presence(str(d), ls, bool(o), str(e or ""))
            for d, ls, o, e in self._conn.execute(
                "SELECT device, last_seen, online, status_event FROM devices"
            )
        ]

    @translated
    def status_times(self) -> dict[str, float]:
        return {
            str(d): float(t)
            for d, t in self._conn.execute(
                "SELECT device, status_ts FROM devices WHERE status_ts IS NOT NULL"
            )
        }

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, watermark: int, streams: Iterable[StreamCheckpoint], now: float) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO detector_state (series_id, detector, blob, tracker, updated_at, watermark) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (series_id) DO UPDATE SET "
                "detector = excluded.detector, blob = excluded.blob, tracker = excluded.tracker, "
                "updated_at = excluded.updated_at, watermark = excluded.watermark",
                [(s.series_id, s.detector, s.blob, s.tracker, now, s.watermark) for s in streams],
            )
            cur.executemany(
                "INSERT INTO checkpoint (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(f"watermark:{OWNER}", float(watermark)), ("saved_at", now)],
            )

    @translated
    def load_checkpoint(self) -> tuple[int, list[StreamCheckpoint]]:
        watermark = self._scalar("SELECT value FROM checkpoint WHERE key = %s", (f"watermark:{OWNER}",))
        streams = [
            StreamCheckpoint(int(i), str(d), bytes(b), str(t), int(w))
            for i, d, b, t, w in self._conn.execute(
                "SELECT series_id, detector, blob, tracker, watermark FROM detector_state"
            )
        ]
        return watermark, streams

    def reject_checkpoint(self, checkpoint: StreamCheckpoint, reason: str, now: float) -> None:
        """Move an unrestorable checkpoint aside (`rejected_checkpoints`); call in a transaction."""
        cp = checkpoint
        self._conn.execute(
            "INSERT INTO rejected_checkpoints (series_id, detector, blob, tracker, reason, rejected_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (cp.series_id, cp.detector, cp.blob, cp.tracker, reason, now),
        )
        self._conn.execute("DELETE FROM detector_state WHERE series_id = %s", (cp.series_id,))

    @translated
    def rejected_checkpoints(self) -> list[tuple[int, str, str, float]]:
        return [
            (int(i), str(d), str(r), float(t))
            for i, d, r, t in self._conn.execute(
                "SELECT series_id, detector, reason, rejected_at FROM rejected_checkpoints ORDER BY id"
            )
        ]

    def readings_after(self, watermark: int) -> Iterator[ReplayRow]:
        """Readings of the messages past `watermark`, less those a series' own state holds."""
        return self._processed(watermark, device=None, since=None, skip_saved=True)

    def history(self, *, device: str | None = None, since: float | None = None) -> Iterator[ReplayRow]:
        """Stored readings in the order first processed, optionally one device's from `since`."""
        return self._processed(0, device=device, since=since, skip_saved=False)

    def _processed(
        self, after: int, *, device: str | None, since: float | None, skip_saved: bool, chunk: int = 200
    ) -> Iterator[ReplayRow]:
        query = (
            "SELECT m.id, r.series_id, r.ts, r.value, r.late, m.msg_id FROM messages m "  # noqa: S608 - fixed parts
            "JOIN readings r ON r.source_id = m.source_id AND r.seq BETWEEN m.lo_seq AND m.hi_seq "
            "AND r.ts BETWEEN m.min_ts AND m.max_ts AND r.message_id = m.id "
            + ("LEFT JOIN detector_state d ON d.series_id = r.series_id " if skip_saved else "")
            + "WHERE m.id > %s AND m.id <= %s AND m.stored > 0 AND r.ts >= %s "
            + ("AND m.id > coalesce(d.watermark, 0) " if skip_saved else "")
            + ("AND m.device = %s " if device is not None else "")
            + "ORDER BY m.id, r.pos"
        )
        last, lo = after, since if since is not None else -float("inf")
        while True:
            try:
                top = self._scalar(
                    "SELECT max(id) FROM (SELECT id FROM messages WHERE id > %s ORDER BY id LIMIT %s) t",
                    (last, chunk),
                )
                if not top:
                    return
                params: tuple[Any, ...] = (last, top, lo) if device is None else (last, top, lo, device)
                rows = self._conn.execute(query.encode(), params).fetchall()
            except psycopg.Error as exc:
                raise StoreError(f"reading stored readings from {self.path} failed: {exc}") from exc
            for mid, sid, ts, value, late, msg_id in rows:
                yield ReplayRow(int(mid), int(sid), float(ts), float(value), bool(late), str(msg_id))
            last = top

    # -- housekeeping ---------------------------------------------------------------------------

    def prune(self, older_than: float) -> dict[str, int]:
        """Drop the day partitions wholly older than the cut, with their messages; open alerts stay."""
        conn = self._conn
        cut_day = _day(older_than)  # partitions of days before this one end at or before the cut
        dropped = sorted(d for d in self._partitions if d < cut_day)
        readings = 0
        for day in dropped:
            partition = pgsql.Identifier(f"readings_d{day}")
            # Every source with readings in it has pruned history now, also one whose message
            # spans midnight and so stays (its later readings are in a kept partition).
            per_source = conn.execute(
                pgsql.SQL("SELECT source_id, count(*) FROM {} GROUP BY source_id").format(partition)
            ).fetchall()
            readings += sum(int(n) for _, n in per_source)
            conn.execute(
                "UPDATE sources SET pruned = true WHERE id = ANY(%s)", ([int(src) for src, _ in per_source],)
            )
            conn.execute(pgsql.SQL("DROP TABLE {}").format(partition))
            self._partitions.discard(day)
        bound = cut_day * DAY
        cur = conn.execute(
            "DELETE FROM messages WHERE (stored > 0 AND max_ts < %s) OR (stored = 0 AND received_at < %s)",
            (bound, older_than),
        )
        counts = {"readings": readings, "messages": cur.rowcount}
        counts["dead_letter"] = conn.execute(
            "DELETE FROM dead_letter WHERE received_at < %s", (older_than,)
        ).rowcount
        counts["alerts"] = conn.execute(
            "DELETE FROM alerts WHERE start < %s AND state = 'closed'", (older_than,)
        ).rowcount
        return counts
