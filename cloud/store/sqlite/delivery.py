"""cloud.notify's DeliveryQueue over the aggregator's SQLite store (tables notify_queue, notify_sinks).

`enqueue` runs inside the pipeline's transaction (the one that records the alert); every other
write opens its own. Delivered rows are deleted and counted in notify_sinks; dead letters stay
with the response until an operator deals with them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from cloud.errors import StoreError
from cloud.notify.queue import DeadDelivery, Delivery, Notice, SinkStatus, taken_deliveries
from cloud.store.sqlite.store import SqliteStore

MAX_TEXT = 4096  # characters of an error or a response body kept
# Each statement takes the oldest due deliveries, but never one whose alert has an earlier
# delivery queued and not due (in flight or backing off): one alert's transitions go in order.
_TAKE_HEAD: Final = (
    "SELECT device FROM notify_queue q WHERE sink = ?1 AND state = 'pending' AND due_at <= ?2 "
    "AND NOT EXISTS (SELECT 1 FROM notify_queue p WHERE p.sink = q.sink AND p.alert_id = q.alert_id "
    "AND p.state = 'pending' AND p.due_at > ?2 AND p.id < q.id) ORDER BY id LIMIT 1"
)
_TAKE_GROUP: Final = (
    "SELECT id, transition_id, alert_id, device, notice, created_at, attempts FROM notify_queue q "
    "WHERE sink = ?1 AND device = ?3 AND state = 'pending' AND due_at <= ?2 "
    "AND NOT EXISTS (SELECT 1 FROM notify_queue p WHERE p.sink = q.sink AND p.alert_id = q.alert_id "
    "AND p.state = 'pending' AND p.due_at > ?2 AND p.id < q.id) ORDER BY id LIMIT ?4"
)
_TAKE_DUE: Final = (
    "SELECT id, transition_id, alert_id, device, notice, created_at, attempts FROM notify_queue q "
    "WHERE sink = ?1 AND state = 'pending' AND due_at <= ?2 "
    "AND NOT EXISTS (SELECT 1 FROM notify_queue p WHERE p.sink = q.sink AND p.alert_id = q.alert_id "
    "AND p.state = 'pending' AND p.due_at > ?2 AND p.id < q.id) ORDER BY id LIMIT ?3"
)


class SqliteDeliveryQueue:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._conn: sqlite3.Connection = store.db.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self.store.transaction():
            yield self._conn

    def enqueue(self, sink: str, notice: Notice, *, now: float, group_s: float) -> bool:
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO notify_queue(sink, transition_id, alert_id, device, notice, created_at, "
            "due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, coalesce((SELECT min(due_at) FROM notify_queue "
            "WHERE sink = ?1 AND device = ?4 AND state = 'pending' AND attempts = 0 AND due_at > ?6), "
            "?7))",
            (sink, notice.transition_id, notice.alert_id, notice.device,
             json.dumps({"state": notice.state, "alert": notice.alert}, sort_keys=True),
             now, now + group_s),
        )  # fmt: skip
        return cur.rowcount == 1

    def take_group(
        self, sink: str, *, now: float, lease_s: float, limit: int, per_device: bool = True
    ) -> list[Delivery]:
        with self._write() as conn:  # sqlite3 errors become StoreError there
            if per_device:
                head = conn.execute(_TAKE_HEAD, (sink, now)).fetchone()
                if head is None:
                    return []
                taken = conn.execute(_TAKE_GROUP, (sink, now, head[0], limit)).fetchall()
            else:
                taken = conn.execute(_TAKE_DUE, (sink, now, limit)).fetchall()
            conn.executemany(
                "UPDATE notify_queue SET due_at = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease_s, r[0]) for r in taken],
            )
        return taken_deliveries(sink, taken)

    def _sink_row(self, conn: sqlite3.Connection, sink: str) -> None:
        conn.execute("INSERT INTO notify_sinks(sink) VALUES (?) ON CONFLICT(sink) DO NOTHING", (sink,))

    def delivered(self, ids: Sequence[int], *, now: float) -> None:
        if not ids:
            return
        with self._write() as conn:
            sinks = self._sinks_of(conn, ids)
            conn.executemany("DELETE FROM notify_queue WHERE id = ?", [(i,) for i in ids])
            for sink, n in sinks.items():
                self._sink_row(conn, sink)
                conn.execute(
                    "UPDATE notify_sinks SET delivered = delivered + ?, last_success_at = ? WHERE sink = ?",
                    (n, now, sink),
                )

    def retry_at(self, ids: Sequence[int], *, due_at: float, error: str, now: float) -> None:
        if not ids:
            return
        with self._write() as conn:
            sinks = self._sinks_of(conn, ids)
            conn.executemany(
                "UPDATE notify_queue SET due_at = ?, last_error = ? WHERE id = ?",
                [(due_at, error[:MAX_TEXT], i) for i in ids],
            )
            for sink, n in sinks.items():
                self._sink_row(conn, sink)
                conn.execute(
                    "UPDATE notify_sinks SET retried = retried + ?, last_error_at = ?, last_error = ? "
                    "WHERE sink = ?",
                    (n, now, error[:MAX_TEXT], sink),
                )

    def dead_letter(self, ids: Sequence[int], *, error: str, response: str, now: float) -> None:
        if not ids:
            return
        with self._write() as conn:
            sinks = self._sinks_of(conn, ids)
            conn.executemany(
                "UPDATE notify_queue SET state = 'dead', dead_at = ?, last_error = ?, response = ? "
                "WHERE id = ?",
                [(now, error[:MAX_TEXT], response[:MAX_TEXT], i) for i in ids],
            )
            for sink, n in sinks.items():
                self._sink_row(conn, sink)
                conn.execute(
                    "UPDATE notify_sinks SET failed = failed + ?, last_error_at = ?, last_error = ? "
                    "WHERE sink = ?",
                    (n, now, error[:MAX_TEXT], sink),
                )

    @staticmethod
    def _sinks_of(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in ids:
            row = conn.execute("SELECT sink FROM notify_queue WHERE id = ?", (i,)).fetchone()
            if row is not None:
                out[str(row[0])] = out.get(str(row[0]), 0) + 1
        return out

    def known_sinks(self) -> list[str]:
        try:
            rows = self._conn.execute(
                "SELECT sink FROM notify_sinks UNION SELECT DISTINCT sink FROM notify_queue ORDER BY 1"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the delivery queue: {exc}") from exc
        return [str(r[0]) for r in rows]

    def status(self, sinks: Sequence[str], *, dead_limit: int = 20) -> list[SinkStatus]:
        try:
            return [self._status(sink, dead_limit) for sink in sinks]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the delivery queue: {exc}") from exc

    def _status(self, sink: str, dead_limit: int) -> SinkStatus:
        conn = self._conn
        queued, oldest = conn.execute(
            "SELECT count(*), min(created_at) FROM notify_queue WHERE sink = ? AND state = 'pending'", (sink,)
        ).fetchone()
        counters = conn.execute(
            "SELECT delivered, retried, failed, last_success_at, last_error_at, last_error "
            "FROM notify_sinks WHERE sink = ?",
            (sink,),
        ).fetchone() or (0, 0, 0, None, None, "")
        dead = tuple(
            DeadDelivery(int(i), sink, str(t), str(d), float(c), float(at), int(n), str(e), str(r))
            for i, t, d, c, at, n, e, r in conn.execute(
                "SELECT id, transition_id, device, created_at, dead_at, attempts, last_error, response "
                "FROM notify_queue WHERE sink = ? AND state = 'dead' ORDER BY id DESC LIMIT ?",
                (sink, dead_limit),
            )
        )
        dead_total = conn.execute(
            "SELECT count(*) FROM notify_queue WHERE sink = ? AND state = 'dead'", (sink,)
        ).fetchone()[0]
        delivered, retried, failed, last_ok, last_err_at, last_err = counters
        return SinkStatus(
            sink=sink,
            queued=int(queued),
            oldest_queued_at=oldest,
            last_success_at=last_ok,
            last_error_at=last_err_at,
            last_error=str(last_err or ""),
            delivered=int(delivered),
            retried=int(retried),
            failed=int(failed),
            dead=dead,
            dead_total=int(dead_total),
        )
