"""Operator-side access to the aggregator's store: a guarded open and the queries the CLI needs.

`open_store` refuses anything that is not an edgewatch store before `Store` would touch it
(`Store` migrates a SQLite file without our schema, i.e. it would create our tables in someone
else's database), and makes read-only opens really read-only with `PRAGMA query_only`, so
`alerts list` and `devices show` can run beside a writing aggregator and never write themselves.

The queries below use the store's connection and its record types; they are the ones
`cloud.store.sqlite.store.Store` does not have (alerts by metric and severity, a device's series, its newest
reading time).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from cloud.errors import SchemaTooNew, StoreError
from cloud.store.sqlite.store import SCHEMA_VERSION, AlertRecord, Store, connect_readonly

SQLITE_MAGIC: Final = b"SQLite format 3\x00"
REQUIRED_TABLES: Final = frozenset({"alerts", "devices", "sources", "series", "messages", "readings"})
_ALERT_COLUMNS: Final = tuple(f.name for f in fields(AlertRecord))


@dataclass(frozen=True, slots=True)
class SeriesRow:
    sensor: str
    metric: str
    unit: str


def check_store_file(path: Path) -> None:
    """Raise StoreError unless `path` is an edgewatch store this code can read (opens read-only)."""
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


def open_store(path: Path | str, *, write: bool = False) -> Store:
    """An existing store, for operators: read-only unless `write` (only alert acknowledgements
    write). Read-only means it: `mode=ro` (works on a read-only file or directory), no pragma
    that writes, no migration, no id caches, and it never blocks the aggregator."""
    path = Path(path)
    check_store_file(path)
    return Store(path, create=False, readonly=not write)


def alert_ids(store: Store, prefix: str, limit: int = 50) -> list[str]:
    """Alert ids starting with `prefix`, newest first (shell completion)."""
    sql = "SELECT alert_id FROM alerts WHERE alert_id LIKE ? ORDER BY start DESC LIMIT ?"
    rows = _query(store, sql, (prefix + "%", limit))
    return [str(r[0]) for r in rows]


def device_ids(store: Store, prefix: str, limit: int = 200) -> list[str]:
    """Device ids starting with `prefix` (shell completion)."""
    sql = "SELECT device FROM devices WHERE device LIKE ? ORDER BY device LIMIT ?"
    rows = _query(store, sql, (prefix + "%", limit))
    return [str(r[0]) for r in rows]


def _query(store: Store, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    try:
        return list(store.db.execute(sql, params).fetchall())
    except sqlite3.Error as exc:
        raise StoreError(f"query on {store.path} failed: {exc}") from exc


def find_alerts(
    store: Store,
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
    columns = ", ".join(f'"{c}"' for c in _ALERT_COLUMNS)
    sql = f"SELECT {columns} FROM alerts"  # noqa: S608 - column names come from the dataclass
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY start DESC, alert_id LIMIT ?"
    params.append(limit)
    out = []
    for row in _query(store, sql, params):
        values = dict(zip(_ALERT_COLUMNS, row, strict=True))
        values["late"] = bool(values["late"])
        values["acked_by"] = values["acked_by"] or ""
        values["note"] = values["note"] or ""
        out.append(AlertRecord(**values))
    return out


def device_series(store: Store, device: str) -> list[SeriesRow]:
    """The (sensor, metric, unit) streams a device has sent, in a stable order."""
    rows = _query(
        store,
        "SELECT sensor, metric, unit FROM series WHERE device = ? ORDER BY sensor, metric",
        (device,),
    )
    return [SeriesRow(str(s), str(m), str(u or "")) for s, m, u in rows]


def last_reading_ts(store: Store, device: str) -> float | None:
    """Timestamp of the device's newest stored reading (its clock), None if it has none."""
    rows = _query(
        store,
        "SELECT max(max_ts) FROM messages WHERE device = ? AND last_id IS NOT NULL",
        (device,),
    )
    value = rows[0][0] if rows else None
    return float(value) if value is not None else None


__all__ = [
    "SeriesRow",
    "alert_ids",
    "check_store_file",
    "device_ids",
    "device_series",
    "find_alerts",
    "last_reading_ts",
    "open_store",
]
