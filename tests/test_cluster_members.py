"""Several aggregators share a fleet through the real NATS cluster and a private PostgreSQL:
real agents (MQTT 3.1.1 into the nodes' listeners), members as `edgewatch cloud run --nats`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store.api import LeaseStore, Store, open_store
from tests.agent_helpers import RunningAgent, agent_config, outbox_seqs
from tests.cluster_helpers import MemberProcess, wait_for
from tests.nats import NatsCluster
from tests.postgres import Postgres

pytestmark = pytest.mark.postgres

PARTITIONS = 8
LEASE_TTL = 3.0
DEVICES = {f"dev-{i}": f"pw-{i}" for i in range(6)}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_cluster = NatsCluster(tmp_path / "nats", DEVICES, partitions=PARTITIONS)
    try:
        nats_cluster.start()
        yield nats_cluster
    finally:
        nats_cluster.stop()


@pytest.fixture
def db_url(postgres_server: Postgres) -> str:
    url = postgres_server.create_database()
    open_store(url, readonly=False, create=True).close()  # migrated before the members race to it
    return url


class Fleet:
    def __init__(self, tmp_path: Path, cluster: NatsCluster) -> None:
        self.paths = {d: tmp_path / f"{d}.db" for d in DEVICES}
        self.agents = [
            RunningAgent(agent_config(tmp_path, cluster.device_url(d, node=i % 3), device=d))
            for i, d in enumerate(sorted(DEVICES))
        ]

    def start(self) -> None:
        for running in self.agents:
            running.__enter__()

    def stop(self) -> None:
        for running in self.agents:
            running.stop()

    def unconfirmed(self) -> dict[str, set[int]]:
        return {d: outbox_seqs(p) for d, p in self.paths.items()}


def _members(tmp_path: Path, cluster: NatsCluster, db_url: str, *names: str) -> list[MemberProcess]:
    return [MemberProcess(tmp_path, n, cluster, db_url, lease_ttl=LEASE_TTL) for n in names]


def _owners(store: Store) -> dict[str, tuple[int, ...]]:
    from cloud.partitions.assignment import owners

    assert isinstance(store, LeaseStore)
    return dict(owners(store.cluster_view()))


def _balanced(store: Store, members: list[str]) -> bool:
    """Every partition owned, by the members given, each holding at most ceil(P / members)."""
    shares = _owners(store)
    owned = sorted(p for ps in shares.values() for p in ps)
    most = -(-PARTITIONS // len(members))
    return (
        sorted(shares) == members
        and owned == list(range(PARTITIONS))
        and all(len(ps) <= most for ps in shares.values())
    )


def assert_stored_exactly_once(db_url: str, fleet: Fleet) -> None:
    """Each device: what is stored and what is still unconfirmed in its outbox make up every
    seq it sampled, 1..last; each stored once, and most of them confirmed."""
    unconfirmed = fleet.unconfirmed()
    with open_store(db_url, readonly=True) as store:
        for device in DEVICES:
            stored = [r.seq for r in store.readings(device, "count")]
            assert len(stored) == len(set(stored)) == store.count_readings(device)
            sampled = set(stored) | unconfirmed[device]
            assert sampled == set(range(1, max(sampled) + 1)), device
            assert len(unconfirmed[device]) < len(stored), (device, len(unconfirmed[device]), len(stored))


def assert_one_owner_at_a_time(db_url: str) -> None:
    """Per partition, every acquisition has a new, larger epoch, so no two owners held one lease."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT partition, epoch FROM cluster_events WHERE event = 'acquired' ORDER BY at"
        ).fetchall()
    epochs: dict[int, list[int]] = {}
    for partition, epoch in rows:
        epochs.setdefault(partition, []).append(epoch)
    assert sorted(epochs) == list(range(PARTITIONS))
    assert all(e == sorted(set(e)) for e in epochs.values()), epochs


def test_two_members_share_the_fleet_and_store_each_reading_once(
    tmp_path: Path, cluster: NatsCluster, db_url: str
) -> None:
    members = _members(tmp_path, cluster, db_url, "a", "b")
    fleet = Fleet(tmp_path, cluster)
    try:
        for m in members:
            m.start()
        with open_store(db_url, readonly=True) as store:
            wait_for(lambda: _balanced(store, ["a", "b"]), 20, "the members to share the partitions evenly")
        fleet.start()
        time.sleep(4.0)
    finally:
        fleet.stop()
        for m in members:
            m.stop()
    logs = "\n".join(m.log_text() for m in members)
    assert "Traceback" not in logs, logs[-3000:]
    assert_stored_exactly_once(db_url, fleet)
    assert_one_owner_at_a_time(db_url)
