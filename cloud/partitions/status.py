"""`edgewatch cloud status`: the members, who owns which partition, each partition's lag.

Ownership and the last rebalance come from the store's lease tables; the lag of a partition is
its durable consumer's backlog in JetStream (messages not yet delivered plus delivered and not
yet acked), asked of the NATS servers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats
from nats.js.errors import NotFoundError

from cloud.errors import StoreError
from cloud.partitions.assignment import owners
from cloud.partitions.layout import STREAM
from cloud.partitions.member import consumer_name, nats_servers
from cloud.store.api import LeaseStore, open_store


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    owner: str | None
    epoch: int
    lag: int | None  # None: no consumer yet (never owned) or NATS not asked


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    now: float
    members: tuple[tuple[str, float], ...]  # (member, seconds since its heartbeat), live ones
    owned: dict[str, tuple[int, ...]]
    partitions: tuple[PartitionStatus, ...]
    last_rebalance: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "now": self.now,
            "members": [{"member": m, "heartbeat_age_s": round(age, 3)} for m, age in self.members],
            "owned": {m: list(ps) for m, ps in self.owned.items()},
            "partitions": [
                {"partition": p.partition, "owner": p.owner, "epoch": p.epoch, "lag": p.lag}
                for p in self.partitions
            ],
            "last_rebalance": self.last_rebalance,
        }


async def _lags(urls: str, partitions: int) -> dict[int, int]:
    servers, user, password = nats_servers(urls)
    nc = await nats.connect(
        servers=servers, user=user, password=password, connect_timeout=5, max_reconnect_attempts=1
    )
    try:
        js = nc.jetstream(timeout=5)
        lags: dict[int, int] = {}
        for partition in range(partitions):
            try:
                info = await js.consumer_info(STREAM, consumer_name(partition))
            except NotFoundError:
                continue
            lags[partition] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return lags
    finally:
        await nc.close()


def cluster_status(db: str, nats_urls: str | None, partitions: int) -> ClusterStatus:
    """The store's view of the members and leases, with each partition's lag if `nats_urls`."""
    with open_store(db, readonly=True) as store:
        if not isinstance(store, LeaseStore):
            raise StoreError("cluster status needs the members' postgresql:// store")
        view = store.cluster_view()
        last = store.last_rebalance()
    lags: dict[int, int] = {}
    if nats_urls:
        try:
            lags = asyncio.run(_lags(nats_urls, partitions))
        except (OSError, nats.errors.Error) as exc:
            raise StoreError(f"cannot ask NATS for the partitions' lag: {exc}") from exc
    leases = {lease.partition: lease for lease in view.leases}
    rows = []
    for partition in range(partitions):
        lease = leases.get(partition)
        live = lease is not None and lease.owner is not None and lease.expires_at > view.now
        rows.append(
            PartitionStatus(
                partition,
                lease.owner if live and lease is not None else None,
                lease.epoch if lease is not None else 0,
                lags.get(partition),
            )
        )
    members = tuple((m.member, view.now - m.heartbeat_at) for m in view.members if m.expires_at > view.now)
    return ClusterStatus(view.now, members, dict(owners(view)), tuple(rows), last)
