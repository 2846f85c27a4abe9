"""Partition leases with fencing in PostgreSQL (LeaseStore), two members on one real database."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cloud.errors import LeaseLost, StoreError
from cloud.store.api import DeadLetter, LeaseStore, Store, open_store
from tests.postgres import Postgres

pytestmark = pytest.mark.postgres

TTL = 0.6


@pytest.fixture
def two_members(postgres_server: Postgres) -> Iterator[tuple[Store, Store]]:
    url = postgres_server.create_database()
    first = open_store(url, readonly=False, create=True)
    second = open_store(url, readonly=False, create=True)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _leases(store: Store) -> LeaseStore:
    assert isinstance(store, LeaseStore)
    return store


def _dead(n: int) -> DeadLetter:
    return DeadLetter(1.7e9, "edgewatch/v1/dev-1/telemetry", "malformed_json", f"letter {n}", b"{")


def test_one_holder_at_a_time_and_every_takeover_a_new_epoch(two_members: tuple[Store, Store]) -> None:
    a, b = (_leases(s) for s in two_members)
    first = a.acquire_lease(3, "a", TTL)
    assert first is not None and first.epoch == 1
    assert b.acquire_lease(3, "b", TTL) is None  # live: not b's to take
    time.sleep(TTL + 0.2)
    taken = b.acquire_lease(3, "b", TTL)
    assert taken is not None and taken.epoch == 2 and taken.owner == "b"
    assert a.renew_lease(first, TTL) is None  # a learns it lost partition 3
    renewed = b.renew_lease(taken, TTL)
    assert renewed is not None and renewed.expires_at >= taken.expires_at
    b.release_lease(taken)
    again = a.acquire_lease(3, "a", TTL)
    assert again is not None and again.epoch == 3
    assert b.last_rebalance() is not None


def test_a_zombies_fenced_write_writes_nothing(two_members: tuple[Store, Store]) -> None:
    """a's lease expires (a was paused) and b takes over: a's next batch is refused whole, while
    b's fenced batch and a's own before the expiry are stored."""
    store_a, store_b = two_members
    a, b = _leases(store_a), _leases(store_b)
    lease_a = a.acquire_lease(0, "a", TTL)
    assert lease_a is not None
    with a.fenced([lease_a]), store_a.transaction():
        store_a.insert_dead_letters([_dead(1)])
    time.sleep(TTL + 0.2)
    lease_b = b.acquire_lease(0, "b", TTL)
    assert lease_b is not None
    with pytest.raises(LeaseLost), a.fenced([lease_a]), store_a.transaction():
        store_a.insert_dead_letters([_dead(2)])
    with b.fenced([lease_b]), store_b.transaction():
        store_b.insert_dead_letters([_dead(3)])
    assert sorted(d.detail for d in store_b.dead_letters()) == ["letter 1", "letter 3"]


def test_an_expired_lease_fences_even_before_a_takeover(two_members: tuple[Store, Store]) -> None:
    store_a, _ = two_members
    a = _leases(store_a)
    lease = a.acquire_lease(1, "a", TTL)
    assert lease is not None
    time.sleep(TTL + 0.2)
    with pytest.raises(LeaseLost), a.fenced([lease]), store_a.transaction():
        store_a.insert_dead_letters([_dead(1)])
    assert store_a.dead_letters() == []


def test_members_heartbeat_and_expire(two_members: tuple[Store, Store]) -> None:
    a, b = (_leases(s) for s in two_members)
    a.join_cluster("a", TTL)
    seen = b.join_cluster("b", 5.0)
    assert seen.live_members() == ["a", "b"]
    time.sleep(TTL + 0.2)
    assert b.cluster_view().live_members() == ["b"]
    b.leave_cluster("b")
    assert b.cluster_view().live_members() == []


def test_a_member_paused_inside_a_transaction_is_cut_off_and_writes_nothing(
    two_members: tuple[Store, Store],
) -> None:
    """a holds its lease row (FOR SHARE) in an open transaction and stalls past the TTL: the
    server ends a's session (idle_in_transaction_session_timeout = the TTL, set on joining), so
    b is not blocked from taking over, and a's late write fails whole."""
    store_a, store_b = two_members
    a, b = _leases(store_a), _leases(store_b)
    a.join_cluster("a", TTL)
    lease_a = a.acquire_lease(2, "a", TTL)
    assert lease_a is not None
    taken = []
    with pytest.raises(StoreError), a.fenced([lease_a]), store_a.transaction():
        time.sleep(TTL * 2 + 0.3)  # paused (SIGSTOP) with the row lock held
        taken.append(b.acquire_lease(2, "b", TTL))  # not blocked: a's session is gone
        store_a.insert_dead_letters([_dead(1)])
    assert taken and taken[0] is not None and taken[0].epoch == 2
    assert store_b.dead_letters() == []
