"""The outbox on real SQLite files: identity, bounds, the confirmation lifecycle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import Overflow
from edge.errors import OutboxError
from edge.outbox import Limits, Outbox, Sample, read_stats, row_size


def samples(n: int, start: float = 1.7e9) -> list[Sample]:
    return [Sample(start + i, "s", "m", float(i), "u") for i in range(n)]


SIZE = row_size("s", "m", "u")


def test_seq_and_epoch_survive_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    assert ob.append(samples(3)) == [1, 2, 3]
    epoch = ob.epoch
    ob.close()
    ob = Outbox(tmp_path / "o.db")
    assert ob.epoch == epoch
    assert ob.append(samples(2)) == [4, 5]
    assert ob.backlog == 5
    ob.close()


def test_a_new_database_is_a_new_epoch(tmp_path: Path) -> None:
    a = Outbox(tmp_path / "a.db")
    b = Outbox(tmp_path / "b.db")
    assert a.epoch != b.epoch and len(a.epoch) == 16
    a.close()
    b.close()


def test_lifecycle_pending_inflight_sent_confirmed(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ack_timeout_s=0.05)
    ob.append(samples(10))
    rows = ob.claim(limit=4, max_bytes=10**6)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.seq for r in ob.claim(limit=100, max_bytes=10**6)] == [5, 6, 7, 8, 9, 10]
    ob.release_inflight()  # the connection died
    rows = ob.claim(limit=4, max_bytes=10**6)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    ob.mark_sent([(1, 4)])
    assert ob.stats().sent_unconfirmed == 4
    assert ob.requeue_overdue() == 0
    time.sleep(0.08)
    assert ob.requeue_overdue() == 4, "unconfirmed past the timeout go back to pending"
    assert ob.confirm([(1, 2), (9, 9)]) == 3
    assert ob.backlog == 7
    assert ob.confirm([(1, 2)]) == 0, "a repeated confirmation is harmless"
    s = ob.stats()
    assert (s.confirmed, s.published, s.last_seq) == (3, 4, 10)
    ob.close()


def test_resend_backoff_grows_per_attempt(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ack_timeout_s=10, ack_timeout_max_s=35)
    ob.append(samples(1))
    delays = []
    for _ in range(4):
        ob.claim(limit=1, max_bytes=10**6)
        before = time.time()
        ob.mark_sent([(1, 1)])
        (resend_at,) = ob._db.execute("SELECT resend_at FROM outbox").fetchone()
        delays.append(round(resend_at - before))
        ob._db.execute("UPDATE outbox SET state=0")
    assert delays == [10, 20, 35, 35]
    ob.close()


def test_inflight_rows_are_pending_after_a_crash(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.append(samples(5))
    ob.claim(limit=5, max_bytes=10**6)
    ob._db.close()  # no clean shutdown
    ob = Outbox(tmp_path / "o.db")
    assert ob.stats().pending == 5
    ob.close()


def test_drop_oldest_counts_and_leaves_a_gap(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=SIZE * 10)
    for i in range(25):
        ob.append(samples(1, start=1.7e9 + i))
    kept = [r.seq for r in ob.claim(limit=100, max_bytes=10**6)]
    assert kept == list(range(16, 26))
    assert ob.counters()["dropped"] == 15
    assert ob.bytes_used <= SIZE * 10
    ob.close()
    assert read_stats(tmp_path / "o.db", SIZE * 10).dropped == 15


def test_drop_oldest_prefers_unsent_over_awaiting_confirmation(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=SIZE * 10)
    ob.append(samples(5))
    ob.claim(limit=5, max_bytes=10**6)
    ob.mark_sent([(1, 5)])
    ob.append(samples(5))
    ob.append(samples(3))  # 3 must go: from the never-sent 6..8, not the sent 1..5
    seqs = [r[0] for r in ob._db.execute("SELECT seq FROM outbox ORDER BY seq")]
    assert seqs == [1, 2, 3, 4, 5, 9, 10, 11, 12, 13]
    assert ob.counters()["dropped"] == 3
    ob.append(samples(7))  # 5 unsent are not enough room: then the oldest sent go, counted apart
    seqs = [r[0] for r in ob._db.execute("SELECT seq FROM outbox ORDER BY seq")]
    assert seqs == [3, 4, 5, *range(14, 21)]
    assert ob.counters()["dropped"] == 8
    assert ob.counters()["dropped_unconfirmed"] == 2
    ob.close()


def test_a_reading_that_may_have_left_is_not_counted_as_a_certain_loss(tmp_path: Path) -> None:
    """In flight when the connection died: the broker may have it. Dropping it is counted
    apart, even after a restart, so `dropped` stays exactly the readings that never left."""
    ob = Outbox(tmp_path / "o.db", max_bytes=SIZE * 10)
    ob.append(samples(4))
    ob.claim(limit=4, max_bytes=10**6)
    ob.release_inflight()  # the link died before the PUBACK
    ob.close()
    ob = Outbox(tmp_path / "o.db", max_bytes=SIZE * 10)
    ob.append(samples(6))  # full now: 1..4 may have left, 5..10 never did
    ob.append(samples(2))  # the oldest that never left go first
    assert [r[0] for r in ob._db.execute("SELECT seq FROM outbox ORDER BY seq")] == [
        1,
        2,
        3,
        4,
        *range(7, 13),
    ]
    assert (ob.counters()["dropped"], ob.counters()["dropped_unconfirmed"]) == (2, 0)
    ob.append(samples(9))  # 7..12 (never left) go, then 1..3 (may have), counted apart
    assert (ob.counters()["dropped"], ob.counters()["dropped_unconfirmed"]) == (8, 3)
    ob.close()


def test_drop_newest_keeps_the_oldest(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=SIZE * 10, overflow=Overflow.DROP_NEWEST)
    assert ob.append(samples(8)) == list(range(1, 9))
    assert ob.append(samples(5)) == [9, 10]
    assert ob.append(samples(1)) == []
    assert ob.next_seq == 15, "dropped readings still use up their seq"
    assert ob.counters()["dropped"] == 4
    ob.close()


def test_below_the_disk_floor_the_outbox_does_not_grow(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, min_free_disk_bytes=2**62)
    ob.append(samples(5))  # empty outbox, no room: the newest replace... nothing to replace
    assert ob.backlog == 0 and ob.counters()["dropped"] == 5
    ob.close()


@settings(max_examples=200, deadline=None)
@given(
    used=st.integers(0, 5000),
    incoming=st.lists(st.integers(1, 200), max_size=30),
    cap=st.integers(1, 5000),
    overflow=st.sampled_from(list(Overflow)),
)
def test_limits_plan_never_exceeds_the_bound(
    used: int, incoming: list[int], cap: int, overflow: Overflow
) -> None:
    used = min(used, cap)
    drop, keep = Limits(cap, 0, overflow).plan(used, incoming, None)
    kept = incoming[:keep] if overflow is Overflow.DROP_NEWEST else incoming[len(incoming) - keep :]
    assert 0 <= keep <= len(incoming)
    assert drop >= 0
    assert used - drop + sum(kept) <= cap or drop >= used
    if overflow is Overflow.DROP_NEWEST:
        assert drop == 0


def test_unwritable_path_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path / "f" / "o.db")


def test_read_stats_of_a_missing_outbox(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="no outbox"):
        read_stats(tmp_path / "none.db", 1)


def _fill_up(ob: Outbox, pages: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection that runs anywhere: SQLite answers SQLITE_FULL past max_page_count,
    exactly as it does when the filesystem is full, and statvfs reports no free space."""
    used = int(ob._db.execute("PRAGMA page_count").fetchone()[0])
    ob._db.execute(f"PRAGMA max_page_count={used + pages}")
    monkeypatch.setattr(ob, "_free_disk", lambda: 0)


def _space_returns(ob: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    ob._db.execute("PRAGMA max_page_count=1073741823")
    monkeypatch.undo()


@pytest.mark.parametrize("overflow", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
def test_a_full_disk_is_the_overflow_policy_not_a_crash(
    tmp_path: Path, overflow: Overflow, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ob = Outbox(tmp_path / "o.db", overflow=overflow, reserve_bytes=0)
    assert ob.append(samples(100)) == list(range(1, 101))
    _fill_up(ob, 4, monkeypatch)
    caplog.set_level("WARNING", logger="edgewatch.outbox")
    kept: list[int] = []
    for i in range(200):  # far more than 4 pages hold
        kept += ob.append(samples(50, start=1.8e9 + 50 * i))
    assert ob.full
    c = ob.counters()
    sampled = c["next_seq"] - 1
    assert sampled == 100 + 200 * 50
    assert c["dropped"] > 0
    assert ob.backlog + c["dropped"] == sampled  # every reading is kept or counted as dropped
    stored = {seq for (seq,) in ob._db.execute("SELECT seq FROM outbox")}
    assert len(stored) == ob.backlog
    if overflow is Overflow.DROP_OLDEST:
        assert max(stored) == sampled  # the newest readings won
    else:
        assert stored >= set(range(1, 101))  # the oldest stayed, new ones were refused
    assert sum("disk is full" in r.getMessage() for r in caplog.records) == 1  # once per episode
    # Confirmations still delete on a full disk, and what they free is written on again.
    assert ob.confirm([(1, sampled)]) == len(stored)
    _space_returns(ob, monkeypatch)
    assert len(ob.append(samples(10, start=1.9e9))) == 10
    assert not ob.full
    assert any("space is back" in r.getMessage() for r in caplog.records)
    c = ob.counters()
    assert ob.backlog + c["dropped"] + c["confirmed"] == c["next_seq"] - 1
    ob.close()


def test_a_full_disk_never_raises_from_sent_confirm_or_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ob = Outbox(tmp_path / "o.db", reserve_bytes=0, ack_timeout_s=0.0)
    ob.append(samples(20))
    rows = ob.claim(limit=20, max_bytes=1 << 20)
    _fill_up(ob, 0, monkeypatch)
    ob._db.execute("PRAGMA max_page_count=1")  # not even one more page
    ob.mark_sent([(rows[0].seq, rows[-1].seq)])  # could not be recorded: pending again
    assert ob.inflight == 0
    assert ob.requeue_overdue() >= 0
    ob.set_meta({"confirm_rate": 1.0})
    ob.close()
    reopened = Outbox(tmp_path / "o.db")
    assert reopened.backlog == 20  # nothing lost
    reopened.close()


def test_the_reserve_is_taken_and_given_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ob = Outbox(tmp_path / "o.db", reserve_bytes=64 * 1024)
    assert ob.reserve_path.stat().st_size == 64 * 1024
    assert ob.reserve_path.stat().st_blocks * 512 >= 64 * 1024  # allocated, not sparse
    ob.append(samples(10))
    _fill_up(ob, 0, monkeypatch)
    ob._db.execute("PRAGMA max_page_count=1")
    ob.append(samples(500))
    assert ob.full and not ob.reserve_path.exists()
    _space_returns(ob, monkeypatch)
    ob.append(samples(1))
    assert not ob.full and ob.reserve_path.exists()
    ob.close()
