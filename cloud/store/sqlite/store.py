"""The aggregator's SQLite store: readings exactly once, dead letters, fleet, alerts, checkpoints.

Layout (schema version in `PRAGMA user_version`, upgraded by `MIGRATIONS` in order):

    sources        one row per (device, epoch): seq range seen, readings stored and rejected
    series         one row per (device, sensor, metric): what a detector watches
    messages       one row per readings message received (msg_id, kind, counts) for tracing,
                   with the source and seq range [lo_seq, hi_seq] of the readings it stored
                   and their ts bounds: the index for time-window queries and replay
    readings       (source_id, seq) UNIQUE, so a resent reading is ignored, never doubled;
                   `message_id` names the message that stored it
    dead_letter    anything that could not be stored, with raw bytes, topic, reason and time
    devices        the fleet registry: last seen, online, agent version, reported counters
    alerts         one row per episode; `alert_id` is deterministic, so a replay cannot double
    alert_outbox   alert messages to publish; deleted once the broker has them (at least once)
    notify_queue   alert transitions to deliver per sink (cloud.notify); dead letters stay
    notify_sinks   per sink: delivered, retried, failed, last success and last error
    detector_state checkpointed detector and episode state per series, each with its watermark
                   (the last message it processed); `checkpoint` keeps the aggregator's own
    rejected_checkpoints  checkpoints that could not be restored, kept aside with the reason

Timestamps are unix seconds (REAL). The write path is multi-row INSERT OR IGNORE statements
inside one `BEGIN IMMEDIATE` transaction per batch (WAL, synchronous=NORMAL: a committed row
survives a killed process); schema goes through sqlite-utils. One aggregator writes a store
(`acquire_ownership`, a lock file); the operator CLI writes only alert acknowledgements. The
read model is `queries.SqliteReadModel`; the interface both backends keep is cloud.store.api.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Final, Self

import sqlite_utils

from cloud.errors import NotFound, SchemaTooNew, StoreError, StoreFull
from cloud.store.api import (
    MAX_DEAD_PAYLOAD,
    STATUS_COUNTERS,
    AlertRecord,
    DeadLetter,
    Presence,
    ReadingsItem,
    ReplayRow,
    SeriesInfo,
    StoredMessage,
    StreamCheckpoint,
)
from cloud.store.sqlite.queries import SqliteReadModel, translated
from cloud.store.tally import BatchTally

CACHE_KIB: Final = 64 * 1024
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
REQUIRED_TABLES: Final = frozenset({"alerts", "devices", "sources", "series", "messages", "readings"})
OWNER: Final = "aggregator"
"""The one writer a SQLite store has; its checkpoint watermark is kept under this name."""

ReadingRow = tuple[int, int, int, float, float, int, int]
"""(source_id, seq, series_id, ts, value, message_id, late): the hot path's row, no objects."""

_INSERT_READINGS: Final = (
    "INSERT OR IGNORE INTO readings(source_id, seq, series_id, ts, value, message_id, late)"
)
_INSERT_STATEMENTS: Final = tuple(
    (size, _INSERT_READINGS + " VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * size))
    for size in (500, 100, 20, 5, 1)
)
"""Multi-row INSERTs of a few fixed sizes, largest first: each is compiled once and cached."""


# ---------------------------------------------------------------------------------------------
# schema


def _v1(db: sqlite_utils.Database) -> None:
    db.table("sources").create(
        {"id": int, "device": str, "epoch": str, "first_seq": int, "last_seq": int,
         "received": int, "rejected": int, "first_seen": float, "last_seen": float, "pruned": int},
        pk="id", not_null={"device", "epoch", "received", "rejected", "pruned"},
        defaults={"received": 0, "rejected": 0, "pruned": 0},
    )  # fmt: skip
    db.table("sources").create_index(["device", "epoch"], unique=True)
    db.table("series").create(
        {"id": int, "device": str, "sensor": str, "metric": str, "unit": str},
        pk="id", not_null={"device", "sensor", "metric", "unit"}, defaults={"unit": ""},
    )  # fmt: skip
    db.table("series").create_index(["device", "sensor", "metric"], unique=True)
    db.table("messages").create(
        {"id": int, "msg_id": str, "device": str, "epoch": str, "kind": str, "received_at": float,
         "sent_at": float, "readings": int, "stored": int, "duplicates": int, "rejected": int,
         "first_id": int, "last_id": int, "min_ts": float, "max_ts": float},
        pk="id", not_null={"msg_id", "device", "epoch", "kind", "received_at"},
    )  # fmt: skip
    db.table("messages").create_index(["msg_id"])
    # Time-window queries go message -> contiguous rowid range of its readings, so the readings
    # table needs no (series, ts) index: that index doubled the cost of every insert.
    db.table("messages").create_index(["device", "max_ts"])
    db.table("readings").create(
        {"id": int, "source_id": int, "seq": int, "series_id": int, "ts": float, "value": float,
         "message_id": int, "late": int},
        pk="id", not_null={"source_id", "seq", "series_id", "ts", "value", "message_id", "late"},
    )  # fmt: skip
    db.table("readings").create_index(["source_id", "seq"], index_name="readings_key", unique=True)
    db.table("dead_letter").create(
        {"id": int, "received_at": float, "topic": str, "reason": str, "detail": str,
         "device": str, "epoch": str, "seq": int, "msg_id": str, "payload": bytes},
        pk="id", not_null={"received_at", "topic", "reason", "detail"},
    )  # fmt: skip
    db.table("dead_letter").create_index(["reason"])
    db.table("dead_letter").create_index(["received_at"])
    # One row per rejected reading identity: a resent bad reading is not counted twice.
    db.execute("CREATE UNIQUE INDEX dead_letter_key ON dead_letter(device, epoch, seq) WHERE seq IS NOT NULL")
    db.table("devices").create(
        {"device": str, "first_seen": float, "last_seen": float, "online": int,
         "status_event": str, "status_ts": float, "agent_version": str, "epoch": str,
         "backlog": float, "dropped": float, "dropped_unconfirmed": float, "sampled": float,
         "published": float, "counters": str, "messages": int, "readings": int},
        pk="device", not_null={"online", "messages", "readings"},
        defaults={"online": 0, "messages": 0, "readings": 0, "status_event": "",
                  "agent_version": "", "epoch": "", "counters": "{}"},
    )  # fmt: skip
    db.table("alerts").create(
        {"alert_id": str, "device": str, "sensor": str, "metric": str, "kind": str,
         "state": str, "start": float, "end": float, "peak_score": float, "value": float,
         "expected_low": float, "expected_high": float, "severity": str, "late": int,
         "detector": str, "msg_id": str, "opened_at": float, "closed_at": float,
         "acked_at": float, "acked_by": str, "note": str},
        pk="alert_id",
        not_null={"device", "sensor", "metric", "kind", "state", "start", "peak_score",
                  "severity", "late", "detector", "msg_id", "opened_at", "acked_by", "note"},
        defaults={"acked_by": "", "note": ""},
    )  # fmt: skip
    db.table("alerts").create_index(["device", "start"])
    db.table("alerts").create_index(["state", "start"])
    db.table("alert_outbox").create(
        {"id": int, "device": str, "payload": bytes, "created_at": float},
        pk="id", not_null={"device", "payload", "created_at"},
    )  # fmt: skip
    db.table("detector_state").create(
        {"series_id": int, "detector": str, "blob": bytes, "tracker": str, "updated_at": float},
        pk="series_id", not_null={"detector", "blob", "tracker", "updated_at"},
    )  # fmt: skip
    db.table("checkpoint").create({"key": str, "value": float}, pk="key")


def _v2_rejected_checkpoints(db: sqlite_utils.Database) -> None:
    """Checkpoints that could not be restored, kept for inspection instead of stopping the start."""
    db.table("rejected_checkpoints").create(
        {"id": int, "series_id": int, "detector": str, "blob": bytes, "tracker": str,
         "reason": str, "rejected_at": float},
        pk="id", not_null={"series_id", "detector", "blob", "tracker", "reason", "rejected_at"},
    )  # fmt: skip


def _v3_keyed_messages(db: sqlite_utils.Database) -> None:
    """Ids from the database, not from arithmetic: messages find their readings by key.

    A message row names its source and the seq range of the readings it stored; with
    readings.message_id that is an exact join over the (source_id, seq) unique key, where v1
    joined by a contiguous rowid range [first_id, last_id] that only one writer could keep.
    The checkpoint's watermark becomes a message id (the last one the aggregator processed),
    and each series' saved state carries its own.
    """
    db.execute("ALTER TABLE messages ADD COLUMN source_id INTEGER")
    db.execute("ALTER TABLE messages ADD COLUMN lo_seq INTEGER")
    db.execute("ALTER TABLE messages ADD COLUMN hi_seq INTEGER")
    db.execute(
        "UPDATE messages SET source_id = (SELECT s.id FROM sources s WHERE s.device = messages.device "
        "AND s.epoch = messages.epoch)"
    )
    db.execute(
        "UPDATE messages SET lo_seq = (SELECT min(seq) FROM readings WHERE id BETWEEN first_id AND last_id), "
        "hi_seq = (SELECT max(seq) FROM readings WHERE id BETWEEN first_id AND last_id) "
        "WHERE last_id IS NOT NULL"
    )
    db.execute("ALTER TABLE messages DROP COLUMN first_id")
    db.execute("ALTER TABLE messages DROP COLUMN last_id")
    db.execute("ALTER TABLE detector_state ADD COLUMN watermark INTEGER NOT NULL DEFAULT 0")
    row = db.execute("SELECT value FROM checkpoint WHERE key = 'watermark'").fetchone()
    last_reading = int(row[0]) if row else 0
    last_message = db.execute(
        "SELECT coalesce(max(message_id), 0) FROM readings WHERE id <= ?", [last_reading]
    ).fetchone()[0]
    if not last_reading:  # a checkpoint before any reading, or none: nothing was processed
        last_message = 0
    db.execute("UPDATE detector_state SET watermark = ?", [last_message])
    db.execute("DELETE FROM checkpoint WHERE key = 'watermark'")
    db.execute(
        "INSERT OR REPLACE INTO checkpoint(key, value) VALUES (?, ?)", [f"watermark:{OWNER}", last_message]
    )


def _v4_alert_reasons(db: sqlite_utils.Database) -> None:
    """Alerts say why: kind and evidence (see AlertRecord); older rows get '' and NULL."""
    alerts = db.table("alerts")
    alerts.add_column("anomaly_kind", str, not_null_default="")
    alerts.add_column("evidence", str, not_null_default="")
    alerts.add_column("opening_evidence", str, not_null_default="")
    alerts.add_column("peak_ts", float)


def _v5_notify(db: sqlite_utils.Database) -> None:
    """The delivery queue of alert notifications (cloud.notify), one row per (sink, transition)."""
    db.table("notify_queue").create(
        {"id": int, "sink": str, "transition_id": str, "alert_id": str, "device": str,
         "notice": str, "created_at": float, "due_at": float, "attempts": int, "state": str,
         "last_error": str, "response": str, "dead_at": float},
        pk="id", not_null={"sink", "transition_id", "alert_id", "device", "notice", "created_at",
                           "due_at", "attempts", "state", "last_error", "response"},
        defaults={"attempts": 0, "state": "pending", "last_error": "", "response": ""},
    )  # fmt: skip
    db.table("notify_queue").create_index(["sink", "transition_id"], unique=True)
    # The oldest due delivery, its device's others, and the earlier ones of its alert.
    db.table("notify_queue").create_index(["sink", "state", "id"])
    db.table("notify_queue").create_index(["sink", "device", "state", "id"])
    db.table("notify_queue").create_index(["sink", "alert_id", "state", "id"])
    db.table("notify_sinks").create(
        {"sink": str, "delivered": int, "retried": int, "failed": int, "last_success_at": float,
         "last_error_at": float, "last_error": str},
        pk="sink", not_null={"delivered", "retried", "failed", "last_error"},
        defaults={"delivered": 0, "retried": 0, "failed": 0, "last_error": ""},
    )  # fmt: skip


MIGRATIONS: Final[tuple[Callable[[sqlite_utils.Database], None], ...]] = (
    _v1,
    _v2_rejected_checkpoints,
    _v3_keyed_messages,
    _v4_alert_reasons,
    _v5_notify,
)
"""MIGRATIONS[i] upgrades a database from version i to i + 1; append, never edit."""
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _connect(path: Path, *, synchronous: str, create: bool, readonly: bool) -> sqlite3.Connection:
    if (readonly or not create) and not path.exists():
        raise StoreError(f"no database at {path}")
    try:
        if readonly:
            conn = connect_readonly(path)
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # Tables but no schema version: somebody else's database. Change nothing in it.
            conn.close()
            raise StoreError(f"{path} is a SQLite database but not an edgewatch store")
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Measured on a 500k-row store, 300k inserts: 9.6 -> 6.9 us per reading (wall). The
            # default checkpoints (and fsyncs) every 1000 WAL pages, inside our COMMITs; the WAL
            # now grows to ~40 MB between checkpoints, and the index pages stay cached.
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=OFF")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot use database {path}: {exc}") from exc
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that never writes anything: not the database, not a -wal or -shm file.

    With a writer at work (its -wal file exists) `mode=ro` reads beside it through the writer's
    shared memory. Without one, `mode=ro` would still create -wal and -shm files (or fail on a
    read-only directory), so the file is opened `immutable`: nothing writes it meanwhile.
    """
    uri = path.resolve().as_uri()
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    conn = sqlite3.connect(f"{uri}?{mode}", uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this edgewatch knows up to {SCHEMA_VERSION}"
        )
    if version < SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {version}: start the aggregator once to migrate it")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    db = sqlite_utils.Database(conn)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this edgewatch knows up to {SCHEMA_VERSION}"
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[target](db)
            conn.execute(f"PRAGMA user_version={target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# ---------------------------------------------------------------------------------------------
# the store


def _store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """StoreFull for SQLITE_FULL and any SQLITE_IOERR (how ENOSPC surfaces), else StoreError."""
    code = getattr(exc, "sqlite_errorcode", None)
    full = (isinstance(code, int) and code & 0xFF in (10, 13)) or "disk is full" in str(exc)
    return (StoreFull if full else StoreError)(f"{what}: {exc}")


def check_store_file(path: Path) -> None:
    """Raise StoreError unless `path` is an edgewatch store this code can read (opens read-only).

    Checked before `SqliteStore` touches the file: it would migrate a SQLite file without our
    schema, i.e. create our tables in somebody else's database.
    """
    if not path.exists():
        raise StoreError(f"no database at {path}")
    if not path.is_file():
        raise StoreError(f"{path} is not a file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != SQLITE_MAGIC:
        raise StoreError(f"{path} is not an edgewatch database (not a SQLite file)")
    try:
        conn = connect_readonly(path)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {str(n) for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this edgewatch knows up to {SCHEMA_VERSION}"
        )
    missing = REQUIRED_TABLES - tables
    if version == 0 or missing:
        raise StoreError(
            f"{path} is a SQLite file but not an edgewatch store "
            f"(missing tables: {', '.join(sorted(missing)) or 'none'}; schema version {version})"
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, older than {SCHEMA_VERSION}: "
            "run the aggregator once on it to upgrade it"
        )


class SqliteStore(SqliteReadModel):
    """One SQLite file. Write methods must run inside `transaction()`; queries may run anytime.

    Not thread-safe: the aggregator drives it from one worker thread at a time. Ids come from
    the database: sources and series from INSERT, a batch's message ids from max(id) read
    inside its BEGIN IMMEDIATE transaction, which holds SQLite's one write lock.
    """

    waits_on_server = False  # in-process: a batch is cheapest on the event loop's thread

    def __init__(
        self, path: Path | str, *, synchronous: str = "NORMAL", create: bool = True, readonly: bool = False
    ) -> None:
        """Open (creating and migrating unless `create=False`) the store at `path`.

        `readonly=True` is for operators' queries: it never writes, so it works without write
        access to the file or its directory, and refuses a database that needs a migration.
        """
        self.path = Path(path)
        if create and not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create directory for {self.path}: {exc.strerror}") from exc
        self._conn = _connect(self.path, synchronous=synchronous, create=create, readonly=readonly)
        try:
            if readonly:
                _check_version(self._conn, self.path)
            else:
                _migrate(self._conn, self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot initialise database {self.path}: {exc}") from exc
        except StoreError:
            self._conn.close()
            raise
        self.db = sqlite_utils.Database(self._conn)
        self._lock_fd: int | None = None
        self._sources: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str, str], int] = {}
        self._series_info: dict[int, SeriesInfo] = {}
        self.readonly = readonly
        if not readonly:  # an operator's read needs none of the writer's id caches
            self._load_ids()

    @classmethod
    def open_existing(cls, path: Path, *, write: bool) -> SqliteStore:
        """An existing edgewatch store, for operators: read-only unless `write` (alert
        acknowledgements, replays). Read-only means it: `mode=ro` (works on a read-only file or
        directory), no pragma that writes, no migration, no id caches, and it never blocks the
        aggregator."""
        check_store_file(path)
        return cls(path, create=False, readonly=not write)

    def _load_ids(self) -> None:
        self._sources = {(d, e): i for i, d, e in self._conn.execute("SELECT id, device, epoch FROM sources")}
        self._series = {}
        self._series_info = {}
        for i, d, s, m, u in self._conn.execute("SELECT id, device, sensor, metric, unit FROM series"):
            self._series[(d, s, m)] = i
            self._series_info[i] = SeriesInfo(i, d, s, m, u)

    def acquire_ownership(self) -> None:
        """Hold an exclusive flock on `<db>.aggregator.lock`: one aggregator writes a SQLite store."""
        if self._lock_fd is not None:
            return
        path = Path(f"{self.path}.aggregator.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"another aggregator is already running on this database ({path} is locked)"
            ) from exc
        self._lock_fd = fd

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write; on any error it rolls back, forgets cached ids, raises StoreError
        (StoreFull when the disk is full: SQLite may have rolled back by itself already)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _store_error(f"cannot write {self.path}", exc) from exc
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            self._load_ids()
            if isinstance(exc, sqlite3.Error):
                raise _store_error(f"write to {self.path} failed", exc) from exc
            raise

    # -- hot write path -------------------------------------------------------------------------

    def _source_id(self, device: str, epoch: str, now: float) -> int:
        key = (device, epoch)
        sid = self._sources.get(key)
        if sid is None:
            cur = self._conn.execute(
                "INSERT INTO sources(device, epoch, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                (device, epoch, now, now),
            )
            sid = self._sources[key] = int(cur.lastrowid or 0)
        return sid

    def _series_id(self, device: str, sensor: str, metric: str, unit: str) -> int:
        key = (device, sensor, metric)
        sid = self._series.get(key)
        if sid is None:
            cur = self._conn.execute(
                "INSERT INTO series(device, sensor, metric, unit) VALUES (?, ?, ?, ?)",
                (device, sensor, metric, unit),
            )
            sid = self._series[key] = int(cur.lastrowid or 0)
            self._series_info[sid] = SeriesInfo(sid, device, sensor, metric, unit)
        return sid

    def find_series(self, device: str, sensor: str, metric: str) -> int | None:
        if self.readonly:
            sql = "SELECT id FROM series WHERE device = ? AND sensor = ? AND metric = ?"
            row = self._conn.execute(sql, (device, sensor, metric)).fetchone()
            return int(row[0]) if row else None
        return self._series.get((device, sensor, metric))

    def series_info(self, series_id: int) -> SeriesInfo:
        if self.readonly:
            row = self._conn.execute(
                "SELECT id, device, sensor, metric, unit FROM series WHERE id = ?", (series_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"series {series_id} does not exist")
            return SeriesInfo(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4] or ""))
        return self._series_info[series_id]

    def store_messages(self, items: Sequence[ReadingsItem]) -> list[StoredMessage]:
        """Every reading of the batch in one go, then per message: what it stored, in order.

        Rows go in multi-row INSERT OR IGNORE statements of a few fixed sizes (each compiled
        once): 1.2 us a row, against 1.8 for `executemany`. RETURNING would tell which rows were
        new at ~1 us a row more; the row count says it for the common batch where all are new,
        and only a batch with duplicates asks which keys carry one of its own message ids.
        """
        conn = self._conn
        # Above the owner's watermark too: retention may have deleted the newest messages, and
        # an id at or below the watermark would never be replayed.
        first_mid = 1 + self._scalar(
            "SELECT max(coalesce((SELECT max(id) FROM messages), 0), "
            "coalesce((SELECT value FROM checkpoint WHERE key = ?), 0))",
            (f"watermark:{OWNER}",),
        )
        rows: list[ReadingRow] = []
        spans: list[tuple[int, int, int]] = []  # (source_id, start, end) of each message's rows
        get = self._series.get
        append = rows.append
        for mid, item in enumerate(items, first_mid):
            msg = item.batch
            device = msg.device
            src = self._source_id(device, msg.epoch, item.received_at)
            start, late = len(rows), int(item.late)
            for r in item.accepted:
                sid = get((device, r.sensor, r.metric))
                if sid is None:
                    sid = self._series_id(device, r.sensor, r.metric, r.unit)
                append((src, r.seq, sid, r.ts, r.value, mid, late))
            spans.append((src, start, len(rows)))
        n, i, inserted = len(rows), 0, 0
        flat = chain.from_iterable
        for size, sql in _INSERT_STATEMENTS:
            while n - i >= size:
                inserted += conn.execute(sql, list(flat(rows[i : i + size]))).rowcount
                i += size
        owner: dict[tuple[int, int], int] | None = None
        if inserted < n:
            owner = self._owners(rows, first_mid, first_mid + len(items) - 1)
        tally = BatchTally()
        for (mid, item), (src, start, end) in zip(enumerate(items, first_mid), spans, strict=True):
            mine = rows[start:end]
            if owner is not None:
                # pop: a seq twice in one message is stored (and new) once
                mine = [row for row in mine if owner.pop((row[0], row[1]), None) == mid]
            rejected = self.insert_dead_letters(item.dead) if item.dead else 0
            tally.add(
                mid, item, src, seqs=[row[1] for row in mine], tss=[row[3] for row in mine],
                new=[(row[2], row[3], row[4]) for row in mine], rejected=rejected,
            )  # fmt: skip
        messages, sources, devices = tally.messages, tally.sources, tally.devices
        conn.executemany(
            "INSERT INTO messages(id, msg_id, device, epoch, kind, received_at, sent_at, readings, stored, "
            "duplicates, rejected, source_id, lo_seq, hi_seq, min_ts, max_ts) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            messages,
        )
        conn.executemany(
            "UPDATE sources SET received = received + ?, rejected = rejected + ?, "
            "first_seq = min(coalesce(first_seq, ?3), ?3), last_seq = max(coalesce(last_seq, ?4), ?4), "
            "last_seen = max(last_seen, ?5) WHERE id = ?6",
            [(int(v[0]), int(v[1]), int(v[2]), int(v[3]), v[4], sid) for sid, v in sources.items()],
        )
        conn.executemany(
            "INSERT INTO devices(device, first_seen, last_seen, online, messages, readings) "
            "VALUES (?1, ?2, ?2, 1, ?3, ?4) ON CONFLICT(device) DO UPDATE SET "
            "last_seen = max(coalesce(last_seen, 0), excluded.last_seen), online = 1, "
            "messages = messages + excluded.messages, readings = readings + excluded.readings",
            [(d, v[0], int(v[1]), int(v[2])) for d, v in devices.items()],
        )
        return tally.out

    def _owners(
        self, rows: Sequence[ReadingRow], first_mid: int, last_mid: int
    ) -> dict[tuple[int, int], int]:
        """(source_id, seq) -> message id, for the keys of `rows` that messages of this batch stored."""
        bounds: dict[int, list[int]] = {}
        for src, seq, *_ in rows:
            b = bounds.get(src)
            if b is None:
                bounds[src] = [seq, seq]
            elif seq < b[0]:
                b[0] = seq
            elif seq > b[1]:
                b[1] = seq
        owner: dict[tuple[int, int], int] = {}
        for src, (lo, hi) in bounds.items():
            for seq, mid in self._conn.execute(
                "SELECT seq, message_id FROM readings WHERE source_id = ? AND seq BETWEEN ? AND ? "
                "AND message_id BETWEEN ? AND ?",
                (src, lo, hi, first_mid, last_mid),
            ):
                owner[(src, int(seq))] = int(mid)
        return owner

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Rows with a seq are unique per (device, epoch, seq); returns how many were new."""
        cur = self._conn.executemany(
            "INSERT OR IGNORE INTO dead_letter"
            "(received_at, topic, reason, detail, device, epoch, seq, msg_id, payload) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (d.received_at, d.topic, d.reason, d.detail, d.device, d.epoch, d.seq, d.msg_id,
                 d.payload[:MAX_DEAD_PAYLOAD] if d.payload is not None else None)
                for d in letters
            ],
        )  # fmt: skip
        return cur.rowcount

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
            "INSERT INTO devices(device, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT(device) DO NOTHING",
            (device, seen_at, seen_at),
        )
        self._conn.execute(
            "UPDATE devices SET online = ?, status_event = ?, status_ts = ?, agent_version = ?, "
            "epoch = ?, backlog = ?, dropped = ?, dropped_unconfirmed = ?, sampled = ?, "
            "published = ?, counters = ?, last_seen = max(coalesce(last_seen, 0), coalesce(?, 0)), "
            "messages = messages + 1 WHERE device = ? AND coalesce(status_ts, 0) <= ?",
            (int(online), event, ts, agent_version, epoch, *known,
             json.dumps(counters, sort_keys=True), seen_at, device, ts),
        )  # fmt: skip

    def insert_alert(self, alert: AlertRecord) -> bool:
        """INSERT OR IGNORE by alert_id; False when this episode is already stored (a replay)."""
        a = alert
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO alerts(alert_id, device, sensor, metric, kind, state, start, \"end\", "
            "peak_score, value, expected_low, expected_high, severity, late, detector, msg_id, opened_at, "
            "closed_at, acked_at, acked_by, note, anomaly_kind, evidence, opening_evidence, peak_ts) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (a.alert_id, a.device, a.sensor, a.metric, a.kind, a.state, a.start, a.end,
             a.peak_score, a.value, a.expected_low, a.expected_high, a.severity, int(a.late),
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
        """Close an open episode with its peak's final figures; False if it was already closed
        (a replay) or is unknown. The kind and opening reason were settled when it opened."""
        cur = self._conn.execute(
            "UPDATE alerts SET state = 'closed', \"end\" = ?, closed_at = ?, peak_score = ?, value = ?, "
            "expected_low = ?, expected_high = ?, evidence = ?, peak_ts = ? "
            "WHERE alert_id = ? AND state = 'open'",
            (end, closed_at, peak_score, value, expected_low, expected_high, evidence, peak_ts, alert_id),
        )
        return cur.rowcount == 1

    def enqueue_publication(self, device: str, payload: bytes, now: float) -> int:
        cur = self._conn.execute(
            "INSERT INTO alert_outbox(device, payload, created_at) VALUES (?, ?, ?)",
            (device, payload, now),
        )
        return int(cur.lastrowid or 0)

    @translated
    def pending_publications(self, limit: int = 1000) -> list[tuple[int, str, bytes]]:
        return [
            (int(i), str(d), bytes(p))
            for i, d, p in self._conn.execute(
                "SELECT id, device, payload FROM alert_outbox ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def delete_publications(self, ids: Iterable[int]) -> None:
        self._conn.executemany("DELETE FROM alert_outbox WHERE id = ?", [(i,) for i in ids])

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
        """Detector/episode state of these series, and the owner's watermark: the last message id
        it had processed when saving (call inside a transaction)."""
        self._conn.executemany(
            "INSERT OR REPLACE INTO detector_state"
            "(series_id, detector, blob, tracker, updated_at, watermark) VALUES (?, ?, ?, ?, ?, ?)",
            [(s.series_id, s.detector, s.blob, s.tracker, now, s.watermark) for s in streams],
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO checkpoint(key, value) VALUES (?, ?)",
            [(f"watermark:{OWNER}", float(watermark)), ("saved_at", now)],
        )

    @translated
    def load_checkpoint(self) -> tuple[int, list[StreamCheckpoint]]:
        row = self._conn.execute(
            "SELECT value FROM checkpoint WHERE key = ?", (f"watermark:{OWNER}",)
        ).fetchone()
        watermark = int(row[0]) if row else 0
        streams = [
            StreamCheckpoint(int(i), str(d), bytes(b), str(t), int(w))
            for i, d, b, t, w in self._conn.execute(
                "SELECT series_id, detector, blob, tracker, watermark FROM detector_state"
            )
        ]
        return watermark, streams

    def reject_checkpoint(self, checkpoint: StreamCheckpoint, reason: str, now: float) -> None:
        """Move an unrestorable checkpoint aside (`rejected_checkpoints`); call in a transaction."""
        self._conn.execute(
            "INSERT INTO rejected_checkpoints(series_id, detector, blob, tracker, reason, rejected_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (checkpoint.series_id, checkpoint.detector, checkpoint.blob, checkpoint.tracker, reason, now),
        )
        self._conn.execute("DELETE FROM detector_state WHERE series_id = ?", (checkpoint.series_id,))

    @translated
    def rejected_checkpoints(self) -> list[tuple[int, str, str, float]]:
        """(series_id, detector, reason, rejected_at) of every checkpoint kept aside, oldest first."""
        return [
            (int(s), str(d), str(r), float(t))
            for s, d, r, t in self._conn.execute(
                "SELECT series_id, detector, reason, rejected_at FROM rejected_checkpoints ORDER BY id"
            )
        ]

    def readings_after(self, watermark: int) -> Iterator[ReplayRow]:
        """Readings of the messages past the owner's `watermark`, each skipped if its series'
        own saved state already holds it, in the order they were first processed."""
        return self._processed(watermark, device=None, since=None, skip_saved=True)

    # -- housekeeping ---------------------------------------------------------------------------

    def prune(self, older_than: float) -> dict[str, int]:
        """Delete history older than `older_than` (unix s); open alerts are kept. Call in a transaction.

        Readings go with the message that stored them, once all of that message's readings are
        older than the cut (and messages that stored nothing, once they arrived before it).
        """
        conn = self._conn
        old = conn.execute(
            "SELECT id, source_id, lo_seq, hi_seq FROM messages WHERE (stored > 0 AND max_ts < ?1) "
            "OR (stored = 0 AND received_at < ?1)",
            (older_than,),
        ).fetchall()
        keyed = [(src, lo, hi, mid) for mid, src, lo, hi in old if src is not None]
        pruned = conn.execute(
            "SELECT DISTINCT m.device, m.epoch FROM messages m WHERE stored > 0 AND max_ts < ?",
            (older_than,),
        ).fetchall()
        readings = conn.executemany(
            "DELETE FROM readings WHERE source_id = ? AND seq BETWEEN ? AND ? AND message_id = ?", keyed
        ).rowcount
        conn.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in old])
        conn.executemany("UPDATE sources SET pruned = 1 WHERE device = ? AND epoch = ?", pruned)
        counts = {"readings": max(readings, 0), "messages": len(old)}
        for table, column, extra in (
            ("dead_letter", "received_at", ""),
            ("alerts", "start", " AND state = 'closed'"),
        ):
            cur = conn.execute(f"DELETE FROM {table} WHERE {column} < ?{extra}", (older_than,))  # noqa: S608
            counts[table] = cur.rowcount
        return counts
