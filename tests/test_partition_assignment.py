"""The pure ownership decisions (cloud.partitions.assignment): who should own what, and what one
member does in one turn, from a snapshot and the store's clock."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cloud.partitions.assignment import assignment, owners, plan
from cloud.store.api import ClusterView, Lease, Member

NOW = 1000.0


def view(members: list[str], leases: list[Lease], *, dead: tuple[str, ...] = ()) -> ClusterView:
    live = [Member(m, NOW - 1, NOW + 10) for m in members]
    gone = [Member(m, NOW - 30, NOW - 20) for m in dead]
    return ClusterView(NOW, tuple(live + gone), tuple(leases))


@given(st.integers(1, 128), st.sets(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=12))
def test_every_partition_has_one_owner_and_shares_are_even(partitions: int, members: set[str]) -> None:
    shares = assignment(partitions, sorted(members))
    taken = [p for share in shares.values() for p in share]
    assert sorted(taken) == list(range(partitions))
    assert all(len(share) <= math.ceil(partitions / len(members)) for share in shares.values())
    assert assignment(partitions, sorted(members, reverse=True)) == shares  # the order given is irrelevant


def test_a_lone_member_takes_every_free_partition() -> None:
    decided = plan("a", 4, view(["a"], []))
    assert decided.acquire == (0, 1, 2, 3)
    assert decided.renew == decided.release == ()


def test_a_joiner_waits_for_live_leases_and_the_holder_releases_them() -> None:
    held = [Lease(p, "a", 1, NOW + 5) for p in range(4)]
    snapshot = view(["a", "b"], held)
    assert plan("b", 4, snapshot).acquire == ()  # all still a's: nothing is taken from a live lease
    by_a = plan("a", 4, snapshot)
    assert by_a.renew == (0, 2) and by_a.release == (1, 3)
    released = [Lease(p, "a" if p % 2 == 0 else None, 1, NOW + 5 if p % 2 == 0 else 0.0) for p in range(4)]
    assert plan("b", 4, view(["a", "b"], released)).acquire == (1, 3)


def test_a_dead_members_partitions_are_taken_once_its_leases_expire() -> None:
    live_leases = [Lease(p, "b" if p % 2 else "a", 3, NOW + 5) for p in range(4)]
    # b stopped heartbeating but its leases run on: a does not take them yet.
    assert plan("a", 4, view(["a"], live_leases, dead=("b",))).acquire == ()
    expired = [Lease(p, "b", 3, NOW - 0.1) if p % 2 else Lease(p, "a", 3, NOW + 5) for p in range(4)]
    decided = plan("a", 4, view(["a"], expired, dead=("b",)))
    assert decided.acquire == (1, 3) and decided.renew == (0, 2)


def test_a_member_whose_lease_expired_takes_it_again_not_renews_it() -> None:
    decided = plan("a", 2, view(["a"], [Lease(0, "a", 7, NOW - 1), Lease(1, "a", 7, NOW + 1)]))
    assert decided.acquire == (0,) and decided.renew == (1,)


def test_owners_lists_live_leases_only() -> None:
    leases = [
        Lease(0, "a", 1, NOW + 1),
        Lease(1, "b", 1, NOW - 1),
        Lease(2, None, 2, 0.0),
        Lease(3, "a", 1, NOW + 1),
    ]
    assert owners(view(["a"], leases)) == {"a": (0, 3)}
