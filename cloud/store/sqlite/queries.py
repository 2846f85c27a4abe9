"""The SQLite store's read model: the operator's queries and the offline replay's history.

A mixin of `cloud.store.sqlite.store.SqliteStore` (which owns the connection and the write
path); every query translates sqlite3 errors to StoreError. Time-window reads go message ->
its readings by (source_id, seq range, message_id) over the readings' unique key, so the
readings table needs no (series, ts) index, which doubled the cost of every insert.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import sqlite_utils

from cloud.errors import NotFound, StoreError
from cloud.store.api import (
    REPLAY_SET,
    AlertRecord,
    DeadLetterRecord,
    DeviceRecord,
    EpochCompleteness,
    MessageRecord,
    MessageTotals,
    ReplayedAlert,
    ReplayRow,
    SeriesInfo,
    StoredReading,
)

P = ParamSpec("P")
T = TypeVar("T")

_ALERT_COLUMNS: Final = tuple(f.name for f in fields(AlertRecord))
_ALERT_SELECT: Final = "SELECT " + ", ".join(f'"{c}"' for c in _ALERT_COLUMNS) + " FROM alerts"  # noqa: S608
_MESSAGE_COLUMNS: Final = tuple(f.name for f in fields(MessageRecord))
_REPLAYED_SELECT: Final = (
    "SELECT " + ", ".join(f'"{f.name}"' for f in fields(ReplayedAlert)) + f" FROM {REPLAY_SET}"  # noqa: S608
)


def translated(fn: Callable[P, T]) -> Callable[P, T]:
    """Queries outside a transaction: sqlite3 errors become StoreError at this boundary."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{fn.__name__} failed: {exc}") from exc

    return wrapper


class SqliteReadModel:
    """Queries over the connection `_conn` (and sqlite-utils' `db`) of a SqliteStore."""

    path: Path
    db: sqlite_utils.Database
    _conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # SqliteStore's

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._conn.execute(sql, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- alerts ---------------------------------------------------------------------------------

    @translated
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
    ) -> list[AlertRecord]:
        """Alerts newest first by start; every filter is optional and they combine with AND."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("device", device), ("state", state), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("start >= ?")
            params.append(since)
        if until is not None:
            where.append("start < ?")
            params.append(until)
        if acked is not None:
            where.append("acked_at IS NOT NULL" if acked else "acked_at IS NULL")
        if late is not None:
            where.append("late = ?")
            params.append(int(late))
        return self._alerts(where, params, limit)

    @translated
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
    ) -> list[AlertRecord]:
        """Alerts newest first (by episode start); every filter optional, combined with AND.

        `since` keeps the episodes active at some time since then: still open, or ended after it.
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("device", device),
            ("metric", metric),
            ("severity", severity),
            ("state", state),
            ("kind", kind),
        ):
            if value is not None:  # only fixed column names are joined in; values are bound
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            # overlapping the period: ended (or, if instantaneous, started) since then, or still open
            where.append("(state = 'open' OR coalesce(\"end\", start) >= ?)")
            params.append(since)
        return self._alerts(where, params, limit)

    def _alerts(self, where: list[str], params: list[Any], limit: int) -> list[AlertRecord]:
        sql = _ALERT_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start DESC, alert_id LIMIT ?"
        return [_alert(r) for r in self._conn.execute(sql, [*params, limit])]

    @translated
    def get_alert(self, alert_id: str) -> AlertRecord:
        """By full id or a unique prefix (at least 6 characters); NotFound otherwise."""
        rows = self._conn.execute(_ALERT_SELECT + " WHERE alert_id = ?", (alert_id,)).fetchall()
        if not rows and len(alert_id) >= 6:
            rows = self._conn.execute(
                _ALERT_SELECT + " WHERE alert_id >= ? AND alert_id < ? LIMIT 2",
                (alert_id, alert_id + "\uffff"),
            ).fetchall()
        if len(rows) != 1:
            why = "is ambiguous" if rows else "does not exist"
            raise NotFound(f"alert {alert_id!r} {why}")
        return _alert(rows[0])

    @translated
    def ack_alert(self, alert_id: str, *, now: float, by: str = "", note: str = "") -> AlertRecord:
        """Mark an alert acknowledged by an operator (idempotent: the first ack's time is kept)."""
        alert = self.get_alert(alert_id)
        with self.transaction():
            self._conn.execute(
                "UPDATE alerts SET acked_at = coalesce(acked_at, ?), acked_by = ?, note = ? "
                "WHERE alert_id = ?",
                (now, by, note or alert.note, alert.alert_id),
            )
        return self.get_alert(alert.alert_id)

    @translated
    def alert_ids_starting(self, prefix: str, limit: int = 50) -> list[str]:
        """Newest first: shell completion of an alert id."""
        return [
            str(a)
            for (a,) in self._conn.execute(
                "SELECT alert_id FROM alerts WHERE alert_id >= ? AND alert_id < ? "
                "ORDER BY start DESC LIMIT ?",
                (prefix, prefix + "\uffff", limit),
            )
        ]

    # -- devices --------------------------------------------------------------------------------

    @translated
    def list_devices(self) -> list[DeviceRecord]:
        """Every device with its per-epoch completeness (gaps not listed: see `device()`)."""
        epochs = self._epochs(None)
        opened = dict(
            self._conn.execute(
                "SELECT device, count(*) FROM alerts WHERE state = 'open' GROUP BY device"
            ).fetchall()
        )
        return [
            _device(r, tuple(epochs.get(r["device"], ())), int(opened.get(r["device"], 0)))
            for r in self.db.query("SELECT * FROM devices ORDER BY device")
        ]

    @translated
    def device(self, device: str, *, max_gaps: int = 100) -> DeviceRecord:
        """One device with every epoch's gaps listed (up to `max_gaps` each); NotFound if unknown."""
        rows = list(self.db.query("SELECT * FROM devices WHERE device = ?", [device]))
        if not rows:
            raise NotFound(f"device {device!r} is not known")
        epochs = tuple(
            _with_gaps(e, self.gaps(device, e.epoch, limit=max_gaps))
            for e in self._epochs(device).get(device, [])
        )
        opened = self._scalar("SELECT count(*) FROM alerts WHERE device = ? AND state = 'open'", (device,))
        return _device(rows[0], epochs, opened)

    @translated
    def devices_starting(self, prefix: str, limit: int = 200) -> list[str]:
        """Shell completion of a device id."""
        return [
            str(d)
            for (d,) in self._conn.execute(
                "SELECT device FROM devices WHERE device >= ? AND device < ? ORDER BY device LIMIT ?",
                (prefix, prefix + "\uffff", limit),
            )
        ]

    def _epochs(self, device: str | None) -> dict[str, list[EpochCompleteness]]:
        sql = "SELECT * FROM sources"
        params: list[Any] = []
        if device is not None:
            sql += " WHERE device = ?"
            params.append(device)
        out: dict[str, list[EpochCompleteness]] = {}
        for r in self.db.query(sql + " ORDER BY first_seen", params):
            first, last = r["first_seq"], r["last_seq"]
            base = first if (r["pruned"] and first is not None) else 1
            span = (last - base + 1) if last is not None else 0
            missing = max(0, span - r["received"] - r["rejected"])
            out.setdefault(r["device"], []).append(
                EpochCompleteness(
                    r["device"], r["epoch"], first, last, r["received"], r["rejected"], missing,
                    r["first_seen"], r["last_seen"],
                )
            )  # fmt: skip
        return out

    @translated
    def gaps(self, device: str, epoch: str, *, limit: int = 100) -> tuple[tuple[int, int], ...]:
        """Inclusive seq ranges of one epoch that never arrived (neither stored nor rejected)."""
        src = self._conn.execute(
            "SELECT id, pruned FROM sources WHERE device = ? AND epoch = ?", (device, epoch)
        ).fetchone()
        if src is None:
            return ()
        sql = (
            "WITH seqs AS (SELECT seq FROM readings WHERE source_id = :src UNION "
            "SELECT seq FROM dead_letter WHERE device = :device AND epoch = :epoch "
            "AND seq IS NOT NULL), "
            "ordered AS (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt FROM seqs) "
            "SELECT seq + 1 AS lo, nxt - 1 AS hi FROM ordered WHERE nxt > seq + 1 "
            "ORDER BY lo LIMIT :limit"
        )
        params = {"src": src[0], "device": device, "epoch": epoch, "limit": limit}
        out = [(int(lo), int(hi)) for lo, hi in self._conn.execute(sql, params)]
        if not src[1]:
            first = self._conn.execute(
                "SELECT min(seq) FROM (SELECT seq FROM readings WHERE source_id = ? UNION ALL "
                "SELECT seq FROM dead_letter WHERE device = ? AND epoch = ? AND seq IS NOT NULL)",
                (src[0], device, epoch),
            ).fetchone()[0]
            if first is not None and first > 1:
                out.insert(0, (1, int(first) - 1))
        return tuple(out[:limit])

    @translated
    def device_series(self, device: str) -> list[SeriesInfo]:
        """The streams a device has sent, by sensor then metric."""
        return [
            SeriesInfo(int(i), str(d), str(s), str(m), str(u or ""))
            for i, d, s, m, u in self._conn.execute(
                "SELECT id, device, sensor, metric, unit FROM series WHERE device = ? "
                "ORDER BY sensor, metric",
                (device,),
            )
        ]

    # -- readings -------------------------------------------------------------------------------

    @translated
    def readings(
        self,
        device: str,
        metric: str,
        *,
        since: float | None = None,
        until: float | None = None,
        sensor: str | None = None,
        limit: int = 100_000,
    ) -> list[StoredReading]:
        """One metric of one device in [since, until), oldest first, with the carrying msg_id."""
        lo, hi = since if since is not None else 0.0, until if until is not None else float("inf")
        sql = (
            "SELECT r.ts, r.value, s.device, s.sensor, s.metric, s.unit, src.epoch, r.seq, r.late, m.msg_id "
            "FROM messages m JOIN readings r ON r.source_id = m.source_id "
            "AND r.seq BETWEEN m.lo_seq AND m.hi_seq AND r.message_id = m.id "
            "JOIN series s ON s.id = r.series_id JOIN sources src ON src.id = r.source_id "
            "WHERE m.device = ? AND m.max_ts >= ? AND m.min_ts < ? AND m.stored > 0 "
            "AND s.metric = ? AND r.ts >= ? AND r.ts < ?"
        )
        params: list[Any] = [device, lo, hi, metric, lo, hi]
        if sensor is not None:
            sql += " AND s.sensor = ?"
            params.append(sensor)
        sql += " ORDER BY r.ts, r.message_id, r.seq LIMIT ?"
        params.append(limit)
        return [
            StoredReading(ts, value, d, s, m, u, e, seq, bool(late), msg)
            for ts, value, d, s, m, u, e, seq, late, msg in self._conn.execute(sql, params)
        ]

    @translated
    def count_readings(self, device: str | None = None) -> int:
        if device is None:
            return self._scalar("SELECT count(*) FROM readings")
        return self._scalar(
            "SELECT count(*) FROM readings r JOIN sources s ON s.id = r.source_id WHERE s.device = ?",
            (device,),
        )

    @translated
    def last_reading_ts(self, device: str) -> float | None:
        """Timestamp of the device's newest stored reading (its clock), None if it has none."""
        row = self._conn.execute(
            "SELECT max(max_ts) FROM messages WHERE device = ? AND stored > 0", (device,)
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @translated
    def message(self, msg_id: str) -> list[MessageRecord]:
        """Every receipt of a message id (a resend has its own id; a redelivery repeats it)."""
        columns = ", ".join(_MESSAGE_COLUMNS)
        return [
            MessageRecord(*row)
            for row in self._conn.execute(
                f"SELECT {columns} FROM messages WHERE msg_id = ? ORDER BY id",  # noqa: S608 - fixed names
                (msg_id,),
            )
        ]

    @translated
    def message_totals(self, device: str | None = None) -> MessageTotals:
        sql = (
            "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(stored), 0), "
            "coalesce(sum(duplicates), 0), coalesce(sum(rejected), 0) FROM messages"
        )
        row = self._conn.execute(
            sql + (" WHERE device = ?" if device is not None else ""), () if device is None else (device,)
        ).fetchone()
        return MessageTotals(*(int(v) for v in row))

    # -- dead letters ---------------------------------------------------------------------------

    @translated
    def dead_letters(
        self,
        *,
        reason: str | None = None,
        device: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRecord]:
        """Newest first."""
        where: list[str] = []
        params: list[Any] = []
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if device is not None:
            where.append("device = ?")
            params.append(device)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        sql = "SELECT * FROM dead_letter"
        if where:  # only fixed column names are joined in; every value is a bound parameter
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [
            DeadLetterRecord(
                r["id"], r["received_at"], r["topic"], r["reason"], r["detail"], r["device"],
                r["epoch"], r["seq"], r["msg_id"] or "", r["payload"],
            )
            for r in self.db.query(sql, params)
        ]  # fmt: skip

    @translated
    def dead_letter_counts(self, device: str | None = None) -> dict[str, int]:
        """Dead letters per reason, of one device or of all."""
        where, params = ("WHERE device = ? ", (device,)) if device is not None else ("", ())
        return {
            str(reason): int(n)
            for reason, n in self._conn.execute(
                f"SELECT reason, count(*) FROM dead_letter {where}GROUP BY reason ORDER BY reason",  # noqa: S608
                params,
            )
        }

    @translated
    def dead_letter(self, dead_id: int) -> DeadLetterRecord:
        """One dead letter by id; NotFound otherwise."""
        rows = list(self.db.query("SELECT * FROM dead_letter WHERE id = ?", [dead_id]))
        if not rows:
            raise NotFound(f"dead letter {dead_id} does not exist")
        r = rows[0]
        return DeadLetterRecord(
            r["id"], r["received_at"], r["topic"], r["reason"], r["detail"], r["device"],
            r["epoch"], r["seq"], r["msg_id"] or "", r["payload"],
        )  # fmt: skip

    # -- offline replay -------------------------------------------------------------------------

    def history(self, *, device: str | None = None, since: float | None = None) -> Iterator[ReplayRow]:
        """Stored readings in the order the aggregator first processed them (message, then
        place in it), optionally one device's and from `since` on: the offline replay's input."""
        return self._processed(0, device=device, since=since, skip_saved=False)

    def _processed(
        self, after: int, *, device: str | None, since: float | None, skip_saved: bool, chunk: int = 200
    ) -> Iterator[ReplayRow]:
        """Readings of the messages with ids above `after`, by message then place, `chunk`
        messages a query; `skip_saved` leaves out what a series' saved state already holds."""
        sql = (
            "SELECT m.id, r.series_id, r.ts, r.value, r.late, m.msg_id FROM messages m "  # noqa: S608 - fixed parts
            "JOIN readings r ON r.source_id = m.source_id AND r.seq BETWEEN m.lo_seq AND m.hi_seq "
            "AND r.message_id = m.id "
            + ("LEFT JOIN detector_state d ON d.series_id = r.series_id " if skip_saved else "")
            + "WHERE m.id > ? AND m.id <= ? AND m.stored > 0 AND r.ts >= ? "
            + ("AND m.id > coalesce(d.watermark, 0) " if skip_saved else "")
            + ("AND m.device = ? " if device is not None else "")
            + "ORDER BY m.id, r.id"
        )
        last, lo = after, since if since is not None else -float("inf")
        while True:
            try:
                top = self._scalar(
                    "SELECT max(id) FROM (SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT ?)",
                    (last, chunk),
                )
                if not top:
                    return
                params: tuple[Any, ...] = (last, top, lo) if device is None else (last, top, lo, device)
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"reading stored readings from {self.path} failed: {exc}") from exc
            for mid, sid, ts, value, late, msg_id in rows:
                yield ReplayRow(int(mid), int(sid), float(ts), float(value), bool(late), str(msg_id))
            last = top

    def _ensure_replay_set(self) -> None:
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {REPLAY_SET} ("
            "run TEXT NOT NULL, alert_id TEXT NOT NULL, device TEXT NOT NULL, sensor TEXT NOT NULL, "
            "metric TEXT NOT NULL, detector TEXT NOT NULL, start REAL NOT NULL, end REAL, "
            "peak_score REAL NOT NULL, value REAL, expected_low REAL, expected_high REAL, "
            "created_at REAL NOT NULL, PRIMARY KEY (run, alert_id))"
        )

    def save_replayed(self, alerts: Sequence[ReplayedAlert], now: float) -> int:
        """Insert a run's episodes into the replay set (created on first use); inside a transaction."""
        self._ensure_replay_set()
        written = 0
        for a in alerts:
            cur = self._conn.execute(
                f"INSERT OR IGNORE INTO {REPLAY_SET} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                (a.run, a.alert_id, a.device, a.sensor, a.metric, a.detector, a.start, a.end,
                 a.peak_score, a.value, a.expected_low, a.expected_high, now),
            )  # fmt: skip
            written += cur.rowcount
        return written

    def replayed_alerts(self, run: str) -> list[ReplayedAlert]:
        """One replay run's episodes by start; StoreError if the store has no replay set."""
        try:
            return [
                ReplayedAlert(*row)
                for row in self._conn.execute(_REPLAYED_SELECT + " WHERE run = ? ORDER BY start", (run,))
            ]
        except sqlite3.Error as exc:
            raise StoreError(f"no replay run {run!r} in {self.path}: {exc}") from exc

    @translated
    def replay_runs(self) -> list[str]:
        if not self._scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (REPLAY_SET,)
        ):
            return []
        return [
            str(r)
            for (r,) in self._conn.execute(
                f"SELECT run FROM {REPLAY_SET} GROUP BY run ORDER BY min(created_at), run"  # noqa: S608
            )
        ]


def _alert(r: Sequence[Any]) -> AlertRecord:
    values = dict(zip(_ALERT_COLUMNS, r, strict=True))
    values["late"] = bool(values["late"])
    values["acked_by"] = values["acked_by"] or ""
    values["note"] = values["note"] or ""
    return AlertRecord(**values)


def _device(r: dict[str, Any], epochs: tuple[EpochCompleteness, ...], open_alerts: int) -> DeviceRecord:
    counters: dict[str, float] = json.loads(r["counters"] or "{}")
    return DeviceRecord(
        r["device"], r["first_seen"], r["last_seen"], bool(r["online"]), r["status_event"] or "",
        r["status_ts"], r["agent_version"] or "", r["epoch"] or "", counters, r["messages"],
        r["readings"], open_alerts, epochs,
    )  # fmt: skip


def _with_gaps(e: EpochCompleteness, gaps: tuple[tuple[int, int], ...]) -> EpochCompleteness:
    return EpochCompleteness(
        e.device, e.epoch, e.first_seq, e.last_seq, e.received, e.rejected, e.missing,
        e.first_seen, e.last_seen, gaps,
    )  # fmt: skip
