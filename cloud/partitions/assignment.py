"""Who owns which partition: pure decisions over a snapshot of the store, with its clock.

Members heartbeat into the store; a member is live while its heartbeat has not expired. Every
member computes the same assignment from the same live set (round-robin over the sorted member
ids, so each gets floor or ceil of P / members), and then acts only on its own share: it renews
the leases it holds and should keep, releases the ones it holds and should not (another member
is waiting for them), and takes the ones it should have that are free or whose lease expired.
A lease still held by a live member is never taken: its holder releases it at its next turn,
or it expires (a dead or paused holder). All times are the store's clock, read in the same
query as the snapshot, so no two hosts' clocks are compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cloud.store.api import ClusterView, Lease


@dataclass(frozen=True, slots=True)
class Plan:
    acquire: tuple[int, ...]
    renew: tuple[int, ...]
    release: tuple[int, ...]


def assignment(partitions: int, members: Sequence[str]) -> dict[str, frozenset[int]]:
    """Each live member's share: partition p goes to the (p mod n)-th member in sorted order.

    >>> assignment(5, ["b", "a"])
    {'a': frozenset({0, 2, 4}), 'b': frozenset({1, 3})}
    """
    ordered = sorted(set(members))
    if not ordered:
        return {}
    return {m: frozenset(range(i, partitions, len(ordered))) for i, m in enumerate(ordered)}


def holds(lease: Lease, member: str, now: float) -> bool:
    return lease.owner == member and lease.expires_at > now


def plan(me: str, partitions: int, view: ClusterView) -> Plan:
    """What `me` does this turn. `me` counts as live (it is heartbeating right now)."""
    members = set(view.live_members()) | {me}
    want = assignment(partitions, sorted(members))[me]
    leases = {lease.partition: lease for lease in view.leases}
    held = {p for p, lease in leases.items() if holds(lease, me, view.now)}
    free = {
        p
        for p in range(partitions)
        if p not in leases or leases[p].owner is None or leases[p].expires_at <= view.now
        or leases[p].owner == me
    }  # fmt: skip
    return Plan(
        acquire=_sorted((want - held) & free),
        renew=_sorted(held & want),
        release=_sorted(held - want),
    )


def owners(view: ClusterView) -> Mapping[str, tuple[int, ...]]:
    """Live leases per owner (for `edgewatch cloud status`)."""
    out: dict[str, list[int]] = {}
    for lease in view.leases:
        if lease.owner is not None and lease.expires_at > view.now:
            out.setdefault(lease.owner, []).append(lease.partition)
    return {owner: tuple(sorted(ps)) for owner, ps in sorted(out.items())}


def _sorted(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(values))
