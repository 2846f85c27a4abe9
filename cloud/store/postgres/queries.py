"""The PostgreSQL store's read model: the operator's queries and the offline replay's sets.

A mixin of `cloud.store.postgres.store.PostgresStore` (which owns the session, the write path,
checkpoints and retention); the same queries as `cloud.store.sqlite.queries` in PostgreSQL's
dialect. Time-window reads go message -> its readings by key (source_id, seq range, ts bounds,
message_id): the hot table has no (series, ts) index, and the ts bounds let the planner skip
the day partitions a message cannot touch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any, Final, ParamSpec, TypeVar

import psycopg

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
    SeriesInfo,
    StoredReading,
)

P = ParamSpec("P")
T = TypeVar("T")

_ALERT_COLUMNS: Final = tuple(f.name for f in fields(AlertRecord))
_ALERT_SELECT: Final = "SELECT " + ", ".join(f'"{c}"' for c in _ALERT_COLUMNS) + " FROM alerts"  # noqa: S608
_MESSAGE_SELECT: Final = "SELECT " + ", ".join(f.name for f in fields(MessageRecord)) + " FROM messages"  # noqa: S608
_REPLAYED_SELECT: Final = (
    "SELECT " + ", ".join(f'"{f.name}"' for f in fields(ReplayedAlert)) + f" FROM {REPLAY_SET}"  # noqa: S608
)


def translated(fn: Callable[P, T]) -> Callable[P, T]:
    """Queries outside a transaction: psycopg errors become StoreError at this boundary."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(f"{fn.__name__} failed: {exc}") from exc

    return wrapper


class PostgresReadModel:
    """Queries over the session `_conn` of a PostgresStore."""

    path: str

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        raise NotImplementedError  # PostgresStore's

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # PostgresStore's

    def _scalar(self, query: str, params: Sequence[Any] = ()) -> int:
        row = self._conn.execute(query.encode(), params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

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
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("device", device), ("state", state), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if since is not None:
            where.append("start >= %s")
            params.append(since)
        if until is not None:
            where.append("start < %s")
            params.append(until)
        if acked is not None:
            where.append("acked_at IS NOT NULL" if acked else "acked_at IS NULL")
        if late is not None:
            where.append("late = %s")
            params.append(late)
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
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("device", device),
            ("metric", metric),
            ("severity", severity),
            ("state", state),
            ("kind", kind),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if since is not None:
            where.append("(state = 'open' OR coalesce(\"end\", start) >= %s)")
            params.append(since)
        return self._alerts(where, params, limit)

    def _alerts(self, where: list[str], params: list[Any], limit: int) -> list[AlertRecord]:
        query = _ALERT_SELECT
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY start DESC, alert_id LIMIT %s"
        return [_alert(r) for r in self._conn.execute(query.encode(), [*params, min(limit, 1 << 62)])]

    @translated
    def get_alert(self, alert_id: str) -> AlertRecord:
        rows = self._conn.execute(_ALERT_SELECT + " WHERE alert_id = %s", (alert_id,)).fetchall()
        if not rows and len(alert_id) >= 6:
            rows = self._conn.execute(
                _ALERT_SELECT + " WHERE starts_with(alert_id, %s) ORDER BY alert_id LIMIT 2", (alert_id,)
            ).fetchall()
        if len(rows) != 1:
            why = "is ambiguous" if rows else "does not exist"
            raise NotFound(f"alert {alert_id!r} {why}")
        return _alert(rows[0])

    @translated
    def ack_alert(self, alert_id: str, *, now: float, by: str = "", note: str = "") -> AlertRecord:
        alert = self.get_alert(alert_id)
        with self.transaction():
            self._conn.execute(
                "UPDATE alerts SET acked_at = coalesce(acked_at, %s), acked_by = %s, note = %s "
                "WHERE alert_id = %s",
                (now, by, note or alert.note, alert.alert_id),
            )
        return self.get_alert(alert.alert_id)

    @translated
    def alert_ids_starting(self, prefix: str, limit: int = 50) -> list[str]:
        return [
            str(a)
            for (a,) in self._conn.execute(
                "SELECT alert_id FROM alerts WHERE starts_with(alert_id, %s) ORDER BY start DESC LIMIT %s",
                (prefix, limit),
            )
        ]

    @translated
    def list_devices(self) -> list[DeviceRecord]:
        epochs = self._epochs(None)
        opened = {
            str(d): int(n)
            for d, n in self._conn.execute(
                "SELECT device, count(*) FROM alerts WHERE state = 'open' GROUP BY device"
            )
        }
        return [
            _device(r, tuple(epochs.get(r["device"], ())), opened.get(r["device"], 0))
            for r in self._dicts("SELECT * FROM devices ORDER BY device", ())
        ]

    @translated
    def device(self, device: str, *, max_gaps: int = 100) -> DeviceRecord:
        rows = self._dicts("SELECT * FROM devices WHERE device = %s", (device,))
        if not rows:
            raise NotFound(f"device {device!r} is not known")
        epochs = tuple(
            _with_gaps(e, self.gaps(device, e.epoch, limit=max_gaps))
            for e in self._epochs(device).get(device, [])
        )
        opened = self._scalar("SELECT count(*) FROM alerts WHERE device = %s AND state = 'open'", (device,))
        return _device(rows[0], epochs, opened)

    @translated
    def devices_starting(self, prefix: str, limit: int = 200) -> list[str]:
        return [
            str(d)
            for (d,) in self._conn.execute(
                "SELECT device FROM devices WHERE starts_with(device, %s) ORDER BY device LIMIT %s",
                (prefix, limit),
            )
        ]

    def _dicts(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cur = self._conn.execute(query.encode(), params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def _epochs(self, device: str | None) -> dict[str, list[EpochCompleteness]]:
        query = "SELECT * FROM sources"
        params: list[Any] = []
        if device is not None:
            query += " WHERE device = %s"
            params.append(device)
        out: dict[str, list[EpochCompleteness]] = {}
        for r in self._dicts(query + " ORDER BY first_seen, id", params):
            first, last = r["first_seq"], r["last_seq"]
            base = first if (r["pruned"] and first is not None) else 1
            span = (last - base + 1) if last is not None else 0
            missing = max(0, span - r["received"] - r["rejected"])
            out.setdefault(r["device"], []).append(
                EpochCompleteness(
                    r["device"], r["epoch"], first, last, int(r["received"]), int(r["rejected"]), missing,
                    r["first_seen"], r["last_seen"],
                )
            )  # fmt: skip
        return out

    @translated
    def gaps(self, device: str, epoch: str, *, limit: int = 100) -> tuple[tuple[int, int], ...]:
        src = self._conn.execute(
            "SELECT id, pruned FROM sources WHERE device = %s AND epoch = %s", (device, epoch)
        ).fetchone()
        if src is None:
            return ()
        query = (
            "WITH seqs AS (SELECT seq FROM readings WHERE source_id = %(src)s UNION "
            "SELECT seq FROM dead_letter WHERE device = %(device)s AND epoch = %(epoch)s "
            "AND seq IS NOT NULL), "
            "ordered AS (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt FROM seqs) "
            "SELECT seq + 1 AS lo, nxt - 1 AS hi FROM ordered WHERE nxt > seq + 1 ORDER BY lo LIMIT %(limit)s"
        )
        params = {"src": src[0], "device": device, "epoch": epoch, "limit": limit}
        out = [(int(lo), int(hi)) for lo, hi in self._conn.execute(query, params)]
        if not src[1]:
            first = self._scalar(
                "SELECT min(seq) FROM (SELECT seq FROM readings WHERE source_id = %s UNION ALL "
                "SELECT seq FROM dead_letter WHERE device = %s AND epoch = %s AND seq IS NOT NULL) t",
                (src[0], device, epoch),
            )
            if first > 1:
                out.insert(0, (1, first - 1))
        return tuple(out[:limit])

    @translated
    def device_series(self, device: str) -> list[SeriesInfo]:
        return [
            SeriesInfo(int(i), str(d), str(s), str(m), str(u or ""))
            for i, d, s, m, u in self._conn.execute(
                "SELECT id, device, sensor, metric, unit FROM series WHERE device = %s "
                "ORDER BY sensor, metric",
                (device,),
            )
        ]

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
        lo, hi = since if since is not None else 0.0, until if until is not None else float("inf")
        # message -> its readings by key, as in SQLite: no (series, ts) index on the hot table
        query = (
            "SELECT r.ts, r.value, s.device, s.sensor, s.metric, s.unit, src.epoch, r.seq, r.late, m.msg_id "
            "FROM messages m JOIN readings r ON r.source_id = m.source_id "
            "AND r.seq BETWEEN m.lo_seq AND m.hi_seq AND r.ts BETWEEN m.min_ts AND m.max_ts "
            "AND r.message_id = m.id "
            "JOIN series s ON s.id = r.series_id JOIN sources src ON src.id = r.source_id "
            "WHERE m.device = %s AND m.max_ts >= %s AND m.min_ts < %s AND m.stored > 0 "
            "AND s.metric = %s AND r.ts >= %s AND r.ts < %s"
        )
        params: list[Any] = [device, lo, hi, metric, lo, hi]
        if sensor is not None:
            query += " AND s.sensor = %s"
            params.append(sensor)
        query += " ORDER BY r.ts, r.message_id, r.pos LIMIT %s"
        params.append(limit)
        return [
            StoredReading(float(ts), float(v), d, s, m, u, e, int(seq), bool(late), msg)
            for ts, v, d, s, m, u, e, seq, late, msg in self._conn.execute(query.encode(), params)
        ]

    @translated
    def count_readings(self, device: str | None = None) -> int:
        if device is None:
            return self._scalar("SELECT count(*) FROM readings")
        return self._scalar(
            "SELECT count(*) FROM readings r JOIN sources s ON s.id = r.source_id WHERE s.device = %s",
            (device,),
        )

    @translated
    def last_reading_ts(self, device: str) -> float | None:
        row = self._conn.execute(
            "SELECT max(max_ts) FROM messages WHERE device = %s AND stored > 0", (device,)
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @translated
    def message(self, msg_id: str) -> list[MessageRecord]:
        return [
            MessageRecord(*row)
            for row in self._conn.execute(_MESSAGE_SELECT + " WHERE msg_id = %s ORDER BY id", (msg_id,))
        ]

    @translated
    def message_totals(self, device: str | None = None) -> MessageTotals:
        query = (
            "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(stored), 0), "
            "coalesce(sum(duplicates), 0), coalesce(sum(rejected), 0) FROM messages"
        )
        if device is None:
            row = self._conn.execute(query).fetchone()
        else:
            row = self._conn.execute(query + " WHERE device = %s", (device,)).fetchone()
        assert row is not None
        return MessageTotals(*(int(v) for v in row))

    @translated
    def dead_letters(
        self,
        *,
        reason: str | None = None,
        device: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRecord]:
        where: list[str] = []
        params: list[Any] = []
        if reason is not None:
            where.append("reason = %s")
            params.append(reason)
        if device is not None:
            where.append("device = %s")
            params.append(device)
        if since is not None:
            where.append("received_at >= %s")
            params.append(since)
        clause = ("WHERE " + " AND ".join(where) + " ") if where else ""
        return self._dead_letters(clause + "ORDER BY id DESC LIMIT %s", [*params, limit])

    def _dead_letters(self, clause: str, params: list[Any]) -> list[DeadLetterRecord]:
        query = (
            "SELECT id, received_at, topic, reason, detail, device, epoch, seq, msg_id, payload "
            "FROM dead_letter " + clause
        )
        return [
            DeadLetterRecord(
                int(i), float(at), t, r, d, dev, e, None if seq is None else int(seq), m or "",
                None if p is None else bytes(p),
            )
            for i, at, t, r, d, dev, e, seq, m, p in self._conn.execute(query.encode(), params)
        ]  # fmt: skip

    @translated
    def dead_letter_counts(self, device: str | None = None) -> dict[str, int]:
        query = "SELECT reason, count(*) FROM dead_letter"
        params: tuple[Any, ...] = ()
        if device is not None:
            query, params = query + " WHERE device = %s", (device,)
        return {
            str(r): int(n)
            for r, n in self._conn.execute((query + " GROUP BY reason ORDER BY reason").encode(), params)
        }

    @translated
    def dead_letter(self, dead_id: int) -> DeadLetterRecord:
        found = self._dead_letters("WHERE id = %s", [dead_id])
        if not found:
            raise NotFound(f"dead letter {dead_id} does not exist")
        return found[0]

    def save_replayed(self, alerts: Sequence[ReplayedAlert], now: float) -> int:
        written = 0
        for a in alerts:
            written += self._conn.execute(
                f"INSERT INTO {REPLAY_SET} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
                "ON CONFLICT DO NOTHING",
                (a.run, a.alert_id, a.device, a.sensor, a.metric, a.detector, a.start, a.end,
                 a.peak_score, a.value, a.expected_low, a.expected_high, now),
            ).rowcount  # fmt: skip
        return written

    def replayed_alerts(self, run: str) -> list[ReplayedAlert]:
        try:
            return [
                ReplayedAlert(*row)
                for row in self._conn.execute(
                    (_REPLAYED_SELECT + " WHERE run = %s ORDER BY start").encode(), (run,)
                )
            ]
        except psycopg.Error as exc:
            raise StoreError(f"no replay run {run!r} in {self.path}: {exc}") from exc

    @translated
    def replay_runs(self) -> list[str]:
        return [
            str(r)
            for (r,) in self._conn.execute(
                f"SELECT run FROM {REPLAY_SET} GROUP BY run ORDER BY min(created_at), run"  # noqa: S608
            )
        ]


def _alert(r: Sequence[Any]) -> AlertRecord:
    values = dict(zip(_ALERT_COLUMNS, r, strict=True))
    values["late"] = bool(values["late"])
    return AlertRecord(**values)


def _device(r: dict[str, Any], epochs: tuple[EpochCompleteness, ...], open_alerts: int) -> DeviceRecord:
    counters: dict[str, float] = json.loads(r["counters"] or "{}")
    return DeviceRecord(
        r["device"], r["first_seen"], r["last_seen"], bool(r["online"]), r["status_event"] or "",
        r["status_ts"], r["agent_version"] or "", r["epoch"] or "", counters, int(r["messages"]),
        int(r["readings"]), open_alerts, epochs,
    )  # fmt: skip


def _with_gaps(e: EpochCompleteness, gaps: tuple[tuple[int, int], ...]) -> EpochCompleteness:
    return EpochCompleteness(
        e.device, e.epoch, e.first_seq, e.last_seq, e.received, e.rejected, e.missing,
        e.first_seen, e.last_seen, gaps,
    )  # fmt: skip
