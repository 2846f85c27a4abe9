"""The agent's durable outbox: every reading is written here before it is published.

A reading moves pending -> in flight (handed to the MQTT client) -> sent (the broker's PUBACK)
and is deleted only when the aggregator confirms it stored it. A PUBACK is not enough: the broker may
lose it (autosave, queue limits). Sent readings not confirmed in time go back to pending, with an
exponential back-off per reading, so a silent aggregator costs bounded traffic.

The bound (bytes, and a free-disk floor) is enforced inside the write transaction. The overflow
policy decides what goes; every dropped reading is counted persistently in the same transaction,
and its seq stays unused, so the loss is also visible as a gap downstream.

A full disk (SQLITE_FULL, ENOSPC, SQLITE_IOERR on any write) is "the outbox is full", not a
crash. SQLite needs disk to write anything at all, deleting included (WAL frames, then the
checkpoint into the database file), so the outbox keeps a small reserve file beside itself
(`reserve_bytes`) and a WAL no larger than half of it. When the disk fills, it gives the reserve
back and writes on in "full" mode: new readings replace old ones by the overflow policy (the
file does not grow), the WAL is checkpointed after every write, and if even that cannot be
written the new readings are dropped and counted in memory until a write succeeds. Confirmations
that cannot be written leave their readings in place (re-sent later; the cloud ignores the
duplicate). One warning per episode; once the disk has several MiB free again (freed by
someone else: the outbox's own deletes leave free pages inside its file, which it reuses), the
reserve is taken again and the outbox grows normally.

SQLite runs in WAL mode. `synchronous=NORMAL` (default) keeps every committed row through a
killed process; only a power cut can lose the last transactions. `FULL` also survives power loss
on an SD card at about half the write rate (measured in bench/RESULTS.md).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from edge.config import Overflow, Synchronous
from edge.errors import OutboxError

log = logging.getLogger("edgewatch.outbox")

SCHEMA_VERSION = 1
LEAVE_FULL_BYTES = 4 * 1024 * 1024  # free disk (beyond the reserve) that ends a full episode
FULL_SLACK_BYTES = 16 * 1024  # on a full disk, drop this much more than the new readings need
CONFIRM_CHUNK = 256  # seqs deleted per transaction when the disk is full
ROW_OVERHEAD = 48  # bytes a row costs beyond its strings, roughly (ints, floats, index entry)


class State(IntEnum):
    """Persisted states. "In flight" is kept in memory only: after a crash it is pending anyway,
    and not writing it saves an index update per reading on the drain path."""

    PENDING = 0
    SENT = 2


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    ts: float
    sensor: str
    metric: str
    value: float
    unit: str
    size: int


@dataclass(frozen=True, slots=True)
class Sample:
    """A measurement waiting for its seq: what the sampler hands the outbox."""

    ts: float
    sensor: str
    metric: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    epoch: str
    backlog: int  # readings not yet confirmed
    pending: int  # not yet acknowledged by the broker (includes what is in flight)
    sent_unconfirmed: int
    bytes_used: int
    max_bytes: int
    last_seq: int
    dropped: int  # removed by the overflow policy before the broker ever had them
    dropped_unconfirmed: int  # removed after a PUBACK but before confirmation; may yet be stored
    published: int
    confirmed: int
    oldest_unsent_age_s: float | None
    oldest_unconfirmed_age_s: float | None
    free_disk_bytes: int | None
    confirm_rate: float | None  # readings/s confirmed recently, as the running agent last saw it
    rate_updated_at: float | None

    @property
    def drain_eta_s(self) -> float | None:
        if self.backlog == 0:
            return 0.0
        if not self.confirm_rate:
            return None
        return self.backlog / self.confirm_rate

    def as_dict(self) -> dict[str, object]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["drain_eta_s"] = self.drain_eta_s
        return out


@dataclass(frozen=True, slots=True)
class Limits:
    """The overflow decision, free of I/O: how many bytes must go before `incoming` fits."""

    max_bytes: int
    min_free_disk_bytes: int
    overflow: Overflow

    def room(self, used_bytes: int, free_disk_bytes: int | None) -> int:
        room = self.max_bytes - used_bytes
        if free_disk_bytes is not None and free_disk_bytes < self.min_free_disk_bytes:
            # Below the disk floor the outbox may not grow at all: new replaces old, one for one.
            room = min(room, 0)
        return room

    def plan(
        self,
        used_bytes: int,
        incoming: Sequence[int],
        free_disk_bytes: int | None,
        *,
        room_cap: int | None = None,
    ) -> tuple[int, int]:
        """Return (bytes of stored readings to drop, how many of `incoming` to keep).

        drop_oldest keeps every incoming reading that fits in max_bytes at all and frees room
        from the oldest stored ones; drop_newest keeps the incoming prefix that fits. `room_cap`
        (the disk is full: only the free pages inside the file) bounds how much it may grow.

        >>> Limits(1000, 0, Overflow.DROP_OLDEST).plan(100, [50, 50], None, room_cap=0)
        (100, 2)
        >>> Limits(1000, 0, Overflow.DROP_NEWEST).plan(100, [50, 50], None, room_cap=50)
        (0, 1)
        """
        room = self.room(used_bytes, free_disk_bytes)
        if room_cap is not None:
            room = min(room, room_cap)
        total = sum(incoming)
        if total <= room:
            return 0, len(incoming)
        if self.overflow is Overflow.DROP_NEWEST:
            keep, acc = 0, 0
            for size in incoming:
                if acc + size > room:
                    break
                acc += size
                keep += 1
            return 0, keep
        # drop_oldest: the newest incoming readings win, even over older incoming ones.
        keep, acc = 0, 0
        for size in reversed(incoming):
            if acc + size > self.max_bytes:
                break
            acc += size
            keep += 1
        return max(0, acc - room), keep


def row_size(sensor: str, metric: str, unit: str) -> int:
    return ROW_OVERHEAD + len(sensor) + len(metric) + len(unit)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    resend_at REAL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(seq) WHERE state=0;
"""

# high_water: the highest seq ever handed to the MQTT client. A pending reading above it has
# certainly never left the device; one below it may have (re-queued, or in flight when a
# connection died), so dropping it is not a certain loss.
_COUNTERS = ("next_seq", "dropped", "dropped_unconfirmed", "published", "confirmed", "high_water")


def _connect(
    path: Path, synchronous: Synchronous, *, readonly: bool = False, wal_bytes: int = 0
) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.value}")
            if wal_bytes > 0:  # a checkpoint must always fit in the reserve
                pages = max(16, wal_bytes // int(conn.execute("PRAGMA page_size").fetchone()[0]))
                conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
                conn.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise OutboxError(f"cannot open outbox {path}: {exc}") from exc


class DiskFull(OutboxError):
    """A write failed because the disk (or the database's page limit) is full.

    `room_made`: the reserve was just given back, so the same write may succeed if tried again.
    """

    def __init__(self, message: str, *, room_made: bool = False) -> None:
        super().__init__(message)
        self.room_made = room_made


_FULL_CODES = frozenset({13, 10})  # SQLITE_FULL, SQLITE_IOERR (the primary code of every IOERR_*)


def is_disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL, any SQLITE_IOERR (ENOSPC surfaces as IOERR_WRITE/FSYNC/SHMSIZE), or ENOSPC."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _FULL_CODES:
        return True
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text or "no space left" in text


class Outbox:
    """The outbox of one device. Used from one thread (the agent's loop)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        min_free_disk_bytes: int = 0,
        overflow: Overflow = Overflow.DROP_OLDEST,
        synchronous: Synchronous = Synchronous.NORMAL,
        ack_timeout_s: float = 30.0,
        ack_timeout_max_s: float = 900.0,
        reserve_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.limits = Limits(max_bytes, min_free_disk_bytes, overflow)
        self.ack_timeout_s = ack_timeout_s
        self.ack_timeout_max_s = ack_timeout_max_s
        self.clock = clock
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self._db = _connect(self.path, synchronous, wal_bytes=reserve_bytes // 2)
        try:
            self._db.executescript(_SCHEMA)
            self._init_meta()
            count, used = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM outbox").fetchone()
            sent, earliest = self._db.execute(
                "SELECT COUNT(*), MIN(resend_at) FROM outbox WHERE state=2"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OutboxError(f"outbox {self.path} is unusable: {exc}") from exc
        self._count: int = count
        self._bytes: int = used
        self._sent: int = sent
        self._earliest_resend: float = earliest if earliest is not None else math.inf
        # In flight: claimed ranges awaiting PUBACK. Claims walk forward from a cursor per
        # stream; the cursors rewind (to pick up re-queued readings) only when nothing is in
        # flight, so a reading is never in flight twice.
        self._inflight: list[tuple[int, int]] = []
        self._cursors: dict[int, int] = {}
        self._rewind_wanted = False
        # Disk full: when it began, and counter increments that could not be written yet.
        self.full_since: float | None = None
        self._unsaved: dict[str, int] = {}
        self._dropped_while_full = 0
        self._take_reserve()

    def _take_reserve(self) -> bool:
        """Set `reserve_bytes` of disk aside (really allocated, not a sparse file)."""
        if self.reserve_bytes <= 0:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            return False
        return True

    def _give_back_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        return True

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write; DiskFull or OutboxError on failure, after a rollback if one is still open.

        On SQLITE_FULL SQLite may already have rolled the transaction back itself; a ROLLBACK
        then fails with "no transaction is active", which used to replace the real error.
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                room_made = self._note_full(exc)
                raise DiskFull(f"outbox {self.path}: disk full ({exc})", room_made=room_made) from exc
            raise OutboxError(f"cannot write outbox {self.path}: {exc}") from exc

    def _note_full(self, exc: sqlite3.Error) -> bool:
        """Enter full mode (one warning); True if giving back the reserve made room just now."""
        if self.full_since is None:
            self.full_since = time.time()
            self._dropped_while_full = 0
            log.warning(
                "outbox %s: the disk is full (%s); new readings replace the oldest by the %s "
                "policy until space returns",
                self.path,
                exc,
                self.limits.overflow.value,
            )
        # The reserve gives the checkpoint and the next transactions room to write.
        room_made = self._give_back_reserve()
        self._checkpoint()
        return room_made

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _after_write(self) -> None:
        """While full: keep the WAL empty, and leave full mode once the disk has room again."""
        if self.full_since is None:
            return
        self._checkpoint()
        self._leave_full_if_space()

    def _leave_full_if_space(self) -> None:
        if self.full_since is None:
            return
        free = self._free_disk()
        # Hysteresis: what this outbox frees itself (the reserve, a truncated WAL) must not
        # count as space coming back, or it would flap between full and not.
        if free is None or free < self.reserve_bytes + max(4 * self.reserve_bytes, LEAVE_FULL_BYTES):
            return
        if not self._take_reserve():
            return
        log.warning(
            "outbox %s: disk space is back after %.0f s; %d new readings were dropped meanwhile",
            self.path,
            time.time() - self.full_since,
            self._dropped_while_full,
        )
        self.full_since = None

    @property
    def full(self) -> bool:
        """The last write found the disk full (and none has succeeded since)."""
        return self.full_since is not None

    # -- meta -----------------------------------------------------------------------------

    def _init_meta(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None:
                # epoch: a random id born with this database, so a wiped device never reuses
                # (device, epoch, seq) keys the cloud has already stored.
                rows = [
                    ("schema_version", SCHEMA_VERSION),
                    ("epoch", uuid.uuid4().hex[:16]),
                    ("created_at", time.time()),
                    ("next_seq", 1),
                    *((name, 0) for name in _COUNTERS[1:]),
                ]
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows)
            elif int(version[0]) > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema {version[0]}, newer than this agent ({SCHEMA_VERSION})"
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: str = str(meta["epoch"])
        self._counters = {name: int(meta.get(name, 0)) for name in _COUNTERS}

    def _save_counters(self, *names: str) -> None:
        self._db.executemany("UPDATE meta SET value=? WHERE key=?", [(self._counters[n], n) for n in names])

    def set_meta(self, items: dict[str, float | str]) -> None:
        """Publish runtime figures (confirm rate) for `agent status` in another process.

        Best effort: on a full disk the figures simply stay as they were.
        """
        with contextlib.suppress(DiskFull), self._transaction() as db:
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                list(items.items()),
            )

    # -- writes ---------------------------------------------------------------------------

    def _free_disk(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def append(self, samples: Sequence[Sample]) -> list[int]:
        """Give each sample its seq and store it durably; returns the seqs of those kept.

        Dropped samples (by policy) still consume their seq, so the loss shows as a gap. A full
        disk never raises: see the module docstring.
        """
        if not samples:
            return []
        self._leave_full_if_space()
        if self.full_since is None:
            try:
                return self._append(samples, room_cap=None)
            except DiskFull:
                pass  # now in full mode: the reserve was given back to write on
        try:
            kept = self._append(samples, room_cap=self._room_in_file())
        except DiskFull:
            kept = self._drop_unwritable(samples)
        self._dropped_while_full += len(samples) - len(kept)
        self._after_write()
        return kept

    def _room_in_file(self) -> int:
        """Bytes of readings that fit in the database's free pages (half of them: rows and
        indexes use pages less densely than `row_size` counts), so the file does not grow."""
        try:
            pages = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error:
            return 0
        return pages * size // 2

    def _append(self, samples: Sequence[Sample], *, room_cap: int | None) -> list[int]:
        sizes = [row_size(s.sensor, s.metric, s.unit) for s in samples]
        free = self._free_disk() if self.limits.min_free_disk_bytes > 0 else None
        drop_bytes, keep = self.limits.plan(self._bytes, sizes, free, room_cap=room_cap)
        first_seq = self._counters["next_seq"]
        seqs = list(range(first_seq, first_seq + len(samples)))
        if self.limits.overflow is Overflow.DROP_NEWEST:
            kept = list(zip(seqs[:keep], samples[:keep], sizes[:keep], strict=True))
        else:
            cut = len(samples) - keep
            kept = list(zip(seqs[cut:], samples[cut:], sizes[cut:], strict=True))
        try:
            with self._transaction() as db:
                if drop_bytes > 0 and room_cap is not None and self.limits.overflow is Overflow.DROP_OLDEST:
                    # New rows go to the b-tree's last pages, and a dropped row frees its page
                    # only once the whole page is empty: on a full disk, free a few pages ahead.
                    freed = self._drop_oldest(drop_bytes + FULL_SLACK_BYTES)
                    short = drop_bytes - freed
                    while short > 0 and kept:
                        short -= kept.pop(0)[2]
                elif drop_bytes > 0:
                    short = drop_bytes - self._drop_oldest(drop_bytes)
                    # Not enough stored to make room (e.g. below the disk floor): the oldest
                    # incoming readings go too.
                    while short > 0 and kept:
                        short -= kept.pop(0)[2]
                db.executemany(
                    "INSERT INTO outbox(seq, ts, sensor, metric, value, unit, size) VALUES (?,?,?,?,?,?,?)",
                    [(q, s.ts, s.sensor, s.metric, s.value, s.unit, z) for q, s, z in kept],
                )
                self._counters["next_seq"] = first_seq + len(samples)
                self._counters["dropped"] += len(samples) - len(kept)
                self._save_counters("next_seq", "dropped", "dropped_unconfirmed")
        except BaseException:
            self._reload_counters()
            raise
        self._unsaved.clear()  # every counter was just written
        self._count += len(kept)
        self._bytes += sum(z for _, _, z in kept)
        return [q for q, _, _ in kept]

    def _drop_unwritable(self, samples: Sequence[Sample]) -> list[int]:
        """Nothing can be written: the samples are lost, their seqs consumed and counted in
        memory; the next write that succeeds persists the counters."""
        n = len(samples)
        for name in ("next_seq", "dropped"):
            self._counters[name] += n
            self._unsaved[name] = self._unsaved.get(name, 0) + n
        return []

    def _reload_counters(self) -> None:
        """After a rollback: the committed state, plus what could not be written yet."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self._counters = {name: int(meta.get(name, 0)) for name in _COUNTERS}
        for name, n in self._unsaved.items():
            self._counters[name] += n
        self._count, self._bytes, self._sent = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size),0), COALESCE(SUM(state=2),0) FROM outbox"
        ).fetchone()

    def _drop_oldest(self, need: int) -> int:
        """Free `need` bytes: the oldest readings that never left the device first (their loss is
        certain), then, only if none is left, the oldest that may have (counted apart)."""
        freed = 0
        victims: list[tuple[int, int, int]] = []
        after = self._counters["high_water"]
        while freed < need:
            rows = self._db.execute(
                "SELECT seq, size FROM outbox WHERE state=0 AND seq>? ORDER BY seq LIMIT 512", (after,)
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            for seq, size in rows:
                victims.append((seq, size, State.PENDING))
                freed += size
                if freed >= need:
                    break
        counter_rows = {"dropped": len(victims)}
        if freed < need:
            unconfirmed = 0
            taken = {v[0] for v in victims}
            for seq, size, state in self._db.execute("SELECT seq, size, state FROM outbox ORDER BY seq"):
                if seq in taken:
                    continue
                victims.append((seq, size, state))
                unconfirmed += 1
                freed += size
                if freed >= need:
                    break
            counter_rows["dropped_unconfirmed"] = unconfirmed
        self._db.executemany("DELETE FROM outbox WHERE seq=?", [(v[0],) for v in victims])
        for name, n in counter_rows.items():
            self._counters[name] += n
        self._count -= len(victims)
        self._bytes -= sum(v[1] for v in victims)
        self._sent -= sum(1 for v in victims if v[2] == State.SENT)
        return freed

    def claim(
        self, *, min_seq: int = 0, max_seq: int | None = None, limit: int, max_bytes: int
    ) -> list[OutboxRow]:
        """Take the oldest pending readings in [min_seq, max_seq) in flight and return them."""
        if self._rewind_wanted and not self._inflight:
            self._cursors.clear()
            self._rewind_wanted = False
        hi = max_seq if max_seq is not None else 2**62
        start = max(min_seq, self._cursors.get(min_seq, min_seq))
        rows = self._db.execute(
            "SELECT seq, ts, sensor, metric, value, unit, size FROM outbox "
            "WHERE state=0 AND seq>=? AND seq<? ORDER BY seq LIMIT ?",
            (start, hi, limit),
        ).fetchall()
        out: list[OutboxRow] = []
        acc = 0
        for row in rows:
            acc += row[6] * 2  # JSON roughly doubles a row's raw size
            if out and acc > max_bytes:
                break
            out.append(OutboxRow(*row))
        if out:
            self._cursors[min_seq] = out[-1].seq + 1
            self._inflight.append((out[0].seq, out[-1].seq))
            if out[-1].seq > self._counters["high_water"]:
                self._counters["high_water"] = out[-1].seq
                # Unwritable on a full disk: the in-memory mark still decides what a drop
                # counts as; only a crash before the next write would forget it.
                with contextlib.suppress(DiskFull), self._transaction():
                    self._save_counters("high_water")
        return out

    @property
    def inflight(self) -> int:
        """Messages handed to the client and not yet acknowledged by the broker."""
        return len(self._inflight)

    def _end_flight(self, first: int, last: int) -> None:
        with contextlib.suppress(ValueError):
            self._inflight.remove((first, last))

    def mark_sent(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The broker acknowledged these: wait for the aggregator's confirmation, with back-off."""
        ranges = list(ranges)
        if not ranges:
            return
        now = time.time()
        published = 0
        before = dict(self._counters)
        try:
            with self._transaction() as db:
                for a, b in ranges:
                    published += db.execute(
                        "UPDATE outbox SET state=2, attempts=attempts+1, "
                        "resend_at=?1 + min(?2 * (1 << min(attempts, 16)), ?3) "
                        "WHERE state=0 AND seq BETWEEN ?4 AND ?5",
                        (now, self.ack_timeout_s, self.ack_timeout_max_s, a, b),
                    ).rowcount
                self._counters["published"] += published
                self._save_counters("published")
        except DiskFull:
            # The broker has them, but that cannot be written down: they stay pending and
            # go out again (the cloud ignores the duplicate and confirms it).
            self._counters = before
            for a, b in ranges:
                self._end_flight(a, b)
            self._rewind_wanted = True
            return
        for a, b in ranges:
            self._end_flight(a, b)
        self._after_write()
        self._sent += published
        if published:
            self._earliest_resend = min(self._earliest_resend, now + self.ack_timeout_s)

    def release_inflight(self) -> int:
        """The connection died before these were acknowledged: they are pending again."""
        n = len(self._inflight)
        self._inflight.clear()
        self._cursors.clear()
        self._rewind_wanted = False
        return n

    def release(self, first: int, last: int) -> None:
        """The client did not take this claim: it is pending again."""
        self._end_flight(first, last)
        self._rewind_wanted = True

    def requeue_overdue(self) -> int:
        """Sent readings whose confirmation is overdue go back to pending (they are resent)."""
        now = time.time()
        if self._sent <= 0 or now < self._earliest_resend:
            return 0
        n = 0
        try:
            with self._transaction() as db:
                n = db.execute("UPDATE outbox SET state=0 WHERE state=2 AND resend_at<=?", (now,)).rowcount
        except DiskFull:
            return 0
        earliest = self._db.execute("SELECT MIN(resend_at) FROM outbox WHERE state=2").fetchone()[0]
        self._earliest_resend = earliest if earliest is not None else math.inf
        self._sent -= n
        if n:
            self._rewind_wanted = True
        return n

    def confirm(self, ranges: Iterable[tuple[int, int]]) -> int:
        """The aggregator stored these seqs: delete them. Returns how many were deleted."""
        ranges = list(ranges)
        try:
            return self._confirm(ranges)
        except DiskFull:
            pass
        # On a full disk a big delete cannot fit in the WAL, small ones can (each frees pages the
        # next reuses). What still fails is not deleted: it is sent again later and confirmed
        # again; nothing is lost.
        deleted = 0
        for a, b in ranges:
            for lo in range(a, b + 1, CONFIRM_CHUNK):
                with contextlib.suppress(DiskFull):
                    deleted += self._confirm([(lo, min(b, lo + CONFIRM_CHUNK - 1))])
        return deleted

    def _confirm(self, ranges: list[tuple[int, int]]) -> int:
        deleted = freed = published = sent_gone = 0
        unsent: list[int] = []
        before = dict(self._counters)
        try:
            with self._transaction() as db:
                for a, b in ranges:
                    for seq, size, state in db.execute(
                        "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING seq, size, state", (a, b)
                    ).fetchall():
                        deleted += 1
                        freed += size
                        if state == State.SENT:
                            sent_gone += 1
                        else:
                            unsent.append(seq)
                # Confirmed before its PUBACK was processed: published all the same.
                unsent.sort()
                for a, b in self._inflight:
                    published += bisect.bisect_right(unsent, b) - bisect.bisect_left(unsent, a)
                self._counters["confirmed"] += deleted
                self._counters["published"] += published
                self._save_counters("confirmed", "published")
        except DiskFull:
            self._counters = before
            raise
        self._after_write()
        self._count -= deleted
        self._bytes -= freed
        self._sent -= sent_gone
        return deleted

    # -- reads ----------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._count

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def next_seq(self) -> int:
        return self._counters["next_seq"]

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def stats(self) -> OutboxStats:
        return _stats(self._db, self.limits.max_bytes, self._free_disk())

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _stats(db: sqlite3.Connection, max_bytes: int, free_disk: int | None) -> OutboxStats:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if "epoch" not in meta:
        raise OutboxError("the outbox is still being created; try again in a moment")
    by_state = {
        State(s): (n, b)
        for s, n, b in db.execute("SELECT state, COUNT(*), COALESCE(SUM(size),0) FROM outbox GROUP BY state")
    }
    now = time.time()
    oldest_unsent = db.execute("SELECT ts FROM outbox WHERE state=0 ORDER BY seq LIMIT 1").fetchone()
    oldest_unsent = oldest_unsent[0] if oldest_unsent else None
    oldest = db.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
    rate = meta.get("confirm_rate")
    return OutboxStats(
        epoch=str(meta["epoch"]),
        backlog=sum(n for n, _ in by_state.values()),
        pending=by_state.get(State.PENDING, (0, 0))[0],
        sent_unconfirmed=by_state.get(State.SENT, (0, 0))[0],
        bytes_used=sum(b for _, b in by_state.values()),
        max_bytes=max_bytes,
        last_seq=int(meta["next_seq"]) - 1,
        dropped=int(meta["dropped"]),
        dropped_unconfirmed=int(meta["dropped_unconfirmed"]),
        published=int(meta["published"]),
        confirmed=int(meta["confirmed"]),
        oldest_unsent_age_s=None if oldest_unsent is None else max(0.0, now - oldest_unsent),
        oldest_unconfirmed_age_s=None if oldest is None else max(0.0, now - oldest[0]),
        free_disk_bytes=free_disk,
        confirm_rate=None if rate is None else float(rate),
        rate_updated_at=None if meta.get("rate_updated_at") is None else float(meta["rate_updated_at"]),
    )


def read_stats(path: Path | str, max_bytes: int) -> OutboxStats:
    """Stats of an outbox another process (the running agent) owns; opens it read-only."""
    path = Path(path)
    if not path.exists():
        raise OutboxError(f"no outbox at {path} (has the agent run yet?)")
    db = _connect(path, Synchronous.NORMAL, readonly=True)
    try:
        st = os.statvfs(path.parent)
        return _stats(db, max_bytes, st.f_bavail * st.f_frsize)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise OutboxError(f"the outbox {path} is still being created; try again in a moment") from exc
        raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    finally:
        db.close()
