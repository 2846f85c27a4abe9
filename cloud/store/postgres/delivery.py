"""cloud.notify's DeliveryQueue in the aggregator's PostgreSQL database (tables notify_queue,
notify_sinks, from sql/0003_notify.sql): the same statements as the SQLite queue's.

`enqueue` runs inside the pipeline's transaction (the one that records the alert); every other
write opens its own. Delivered rows are deleted and counted in notify_sinks; dead letters stay
with the response.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from cloud.errors import StoreError
from cloud.notify.queue import DeadDelivery, Delivery, Notice, SinkStatus, taken_deliveries
from cloud.store.postgres.store import PostgresStore

MAX_TEXT: Final = 4096  # characters of an error or a response body kept
_IN_ORDER: Final = (
    "AND NOT EXISTS (SELECT 1 FROM notify_queue p WHERE p.sink = q.sink AND p.alert_id = q.alert_id "
    "AND p.state = 'pending' AND p.due_at > %(now)s AND p.id < q.id)"
)
_COLUMNS: Final = "id, transition_id, alert_id, device, notice, created_at, attempts"
_TAKE_HEAD: Final = (
    "SELECT device FROM notify_queue q WHERE sink = %(sink)s AND state = 'pending' "  # noqa: S608
    f"AND due_at <= %(now)s {_IN_ORDER} ORDER BY id LIMIT 1"
)
_TAKE_GROUP: Final = (
    f"SELECT {_COLUMNS} FROM notify_queue q WHERE sink = %(sink)s AND device = %(device)s "  # noqa: S608
    f"AND state = 'pending' AND due_at <= %(now)s {_IN_ORDER} ORDER BY id LIMIT %(limit)s"
)
_TAKE_DUE: Final = (
    f"SELECT {_COLUMNS} FROM notify_queue q WHERE sink = %(sink)s "  # noqa: S608
    f"AND state = 'pending' AND due_at <= %(now)s {_IN_ORDER} ORDER BY id LIMIT %(limit)s"
)
_ENQUEUE: Final = (
    "INSERT INTO notify_queue(sink, transition_id, alert_id, device, notice, created_at, due_at) "
    "VALUES (%(sink)s, %(tid)s, %(alert_id)s, %(device)s, %(notice)s, %(now)s, coalesce("
    "(SELECT min(due_at) FROM notify_queue WHERE sink = %(sink)s AND device = %(device)s "
    "AND state = 'pending' AND attempts = 0 AND due_at > %(now)s), %(due)s)) "
    "ON CONFLICT (sink, transition_id) DO NOTHING"
)
_SINK_ROW: Final = "INSERT INTO notify_sinks(sink) VALUES (%s) ON CONFLICT (sink) DO NOTHING"


class PostgresDeliveryQueue:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._conn: psycopg.Connection[Any] = store._conn

    def _execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self._conn.execute(query.encode(), params)

    def enqueue(self, sink: str, notice: Notice, *, now: float, group_s: float) -> bool:
        cur = self._execute(
            _ENQUEUE,
            {"sink": sink, "tid": notice.transition_id, "alert_id": notice.alert_id, "device": notice.device,
             "notice": json.dumps({"state": notice.state, "alert": notice.alert}, sort_keys=True),
             "now": now, "due": now + group_s},
        )  # fmt: skip
        return cur.rowcount == 1

    def take_group(
        self, sink: str, *, now: float, lease_s: float, limit: int, per_device: bool = True
    ) -> list[Delivery]:
        params: dict[str, Any] = {"sink": sink, "now": now, "limit": limit}
        with self.store.transaction():  # psycopg errors become StoreError there
            if per_device:
                head = self._execute(_TAKE_HEAD, params).fetchone()
                if head is None:
                    return []
                taken = self._execute(_TAKE_GROUP, {**params, "device": head[0]}).fetchall()
            else:
                taken = self._execute(_TAKE_DUE, params).fetchall()
            with self._conn.cursor() as cur:
                cur.executemany(
                    b"UPDATE notify_queue SET due_at = %s, attempts = attempts + 1 WHERE id = %s",
                    [(now + lease_s, r[0]) for r in taken],
                )
        return taken_deliveries(sink, taken)

    def _settle(
        self,
        ids: Sequence[int],
        update: str,
        params: Sequence[Any],
        *,
        counter: str,
        now: float,
        error: str = "",
    ) -> None:
        if not ids:
            return
        with self.store.transaction():
            sinks = self._execute(
                "SELECT sink, count(*) FROM notify_queue WHERE id = ANY(%s) GROUP BY sink", (list(ids),)
            ).fetchall()
            self._execute(update, (*params, list(ids)))
            for sink, n in sinks:
                self._execute(_SINK_ROW, (sink,))
                if counter == "delivered":
                    self._execute(
                        "UPDATE notify_sinks SET delivered = delivered + %s, last_success_at = %s "
                        "WHERE sink = %s",
                        (n, now, sink),
                    )
                else:
                    self._execute(
                        f"UPDATE notify_sinks SET {counter} = {counter} + %s, last_error_at = %s, "  # noqa: S608
                        "last_error = %s WHERE sink = %s",
                        (n, now, error, sink),
                    )

    def delivered(self, ids: Sequence[int], *, now: float) -> None:
        self._settle(ids, "DELETE FROM notify_queue WHERE id = ANY(%s)", (), counter="delivered", now=now)

    def retry_at(self, ids: Sequence[int], *, due_at: float, error: str, now: float) -> None:
        error = error[:MAX_TEXT]
        self._settle(
            ids, "UPDATE notify_queue SET due_at = %s, last_error = %s WHERE id = ANY(%s)", (due_at, error),
            counter="retried", now=now, error=error,
        )  # fmt: skip

    def dead_letter(self, ids: Sequence[int], *, error: str, response: str, now: float) -> None:
        error = error[:MAX_TEXT]
        self._settle(
            ids,
            "UPDATE notify_queue SET state = 'dead', dead_at = %s, last_error = %s, response = %s "
            "WHERE id = ANY(%s)",
            (now, error, response[:MAX_TEXT]), counter="failed", now=now, error=error,
        )  # fmt: skip

    def known_sinks(self) -> list[str]:
        try:
            rows = self._execute(
                "SELECT sink FROM notify_sinks UNION SELECT DISTINCT sink FROM notify_queue ORDER BY 1"
            ).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the delivery queue: {exc}") from exc
        return [str(r[0]) for r in rows]

    def status(self, sinks: Sequence[str], *, dead_limit: int = 20) -> list[SinkStatus]:
        try:
            return [self._status(sink, dead_limit) for sink in sinks]
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the delivery queue: {exc}") from exc

    def _status(self, sink: str, dead_limit: int) -> SinkStatus:
        queued, oldest = self._execute(
            "SELECT count(*), min(created_at) FROM notify_queue WHERE sink = %s AND state = 'pending'",
            (sink,),
        ).fetchone() or (0, None)
        counters = self._execute(
            "SELECT delivered, retried, failed, last_success_at, last_error_at, last_error "
            "FROM notify_sinks WHERE sink = %s",
            (sink,),
        ).fetchone() or (0, 0, 0, None, None, "")
        dead = tuple(
            DeadDelivery(int(i), sink, str(t), str(d), float(c), float(at), int(n), str(e), str(r))
            for i, t, d, c, at, n, e, r in self._execute(
                "SELECT id, transition_id, device, created_at, dead_at, attempts, last_error, response "
                "FROM notify_queue WHERE sink = %s AND state = 'dead' ORDER BY id DESC LIMIT %s",
                (sink, dead_limit),
            )
        )
        (dead_total,) = self._execute(
            "SELECT count(*) FROM notify_queue WHERE sink = %s AND state = 'dead'", (sink,)
        ).fetchone() or (0,)
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
            dead_total=int(dead_total),
            dead=dead,
        )
