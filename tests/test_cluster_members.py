"""Several aggregators share a fleet through the real NATS cluster and a private PostgreSQL:
real agents (MQTT 3.1.1 into the nodes' listeners), members as `edgewatch cloud run --nats`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _cloud_status(cluster: NatsCluster, db_url: str, *, as_json: bool = True) -> Any:
    """`edgewatch cloud status [--json]`, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "edgewatch", "cloud", "status", "--db", db_url, "--nats",
         ",".join(cluster.nats_urls()), "--partitions", str(PARTITIONS), *(["--json"] if as_json else [])],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(out.stdout) if as_json else out.stdout


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


def _mostly_confirmed(db_url: str, fleet: Fleet) -> bool:
    unconfirmed = fleet.unconfirmed()
    with open_store(db_url, readonly=True) as store:
        return all(len(unconfirmed[d]) < store.count_readings(d) for d in DEVICES)


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
        status = _cloud_status(cluster, db_url)
        text = _cloud_status(cluster, db_url, as_json=False)
    finally:
        fleet.stop()
        for m in members:
            m.stop()
    assert [m["member"] for m in status["members"]] == ["a", "b"]
    assert sorted(p for ps in status["owned"].values() for p in ps) == list(range(PARTITIONS))
    assert [p["owner"] for p in status["partitions"]] == [
        next(m for m, ps in status["owned"].items() if p["partition"] in ps) for p in status["partitions"]
    ]
    assert all(isinstance(p["lag"], int) and p["lag"] >= 0 for p in status["partitions"])
    assert status["last_rebalance"] is not None
    assert "members (2 live):" in text and "unowned partitions: none" in text, text
    assert re.search(r"^  a  heartbeat [0-9.]+s ago  4 partitions", text, re.M), text
    logs = "\n".join(m.log_text() for m in members)
    assert "Traceback" not in logs, logs[-3000:]
    assert_stored_exactly_once(db_url, fleet)
    assert_one_owner_at_a_time(db_url)


def _alerts_not_doubled(db_url: str) -> None:
    """One stored episode per (series, kind, start): a handoff's replay re-made none; and the
    anomaly episodes stored are exactly those the aggregator's own code finds when it runs over
    the whole stored history in one process (a handoff lost none either)."""
    from cloud.ingest.pipeline import Pipeline
    from cloud.service.aggregator import settings_from
    from cloud.service.config import AggregatorConfig

    with open_store(db_url, readonly=True) as store:
        alerts = store.list_alerts(limit=100_000)
        pipeline = Pipeline(store, settings_from(AggregatorConfig()), now=time.time(), recover=False)
        _, events = pipeline.detect_history(store.history(), time.time())
    keys = [(a.device, a.sensor, a.metric, a.kind, a.start, a.late) for a in alerts]
    assert len(keys) == len(set(keys)), sorted(keys)
    stored = {a.alert_id for a in alerts if a.kind != "silent"}
    assert stored == {e.alert_id for e in events}


def test_sigkill_moves_partitions_to_the_survivor_and_a_joiner_gets_its_share(
    tmp_path: Path, cluster: NatsCluster, db_url: str
) -> None:
    """SIGKILL a mid-stream: b owns everything within the lease TTL plus a few seconds; then c
    joins and the partitions are shared again. Nothing missing, nothing doubled."""
    a, b, c = _members(tmp_path, cluster, db_url, "a", "b", "c")
    fleet = Fleet(tmp_path, cluster)
    try:
        a.start()
        b.start()
        with open_store(db_url, readonly=True) as store:
            wait_for(lambda: _balanced(store, ["a", "b"]), 20, "a and b to share the partitions")
            fleet.start()
            time.sleep(2.0)
            a.kill()
            wait_for(lambda: _balanced(store, ["b"]), LEASE_TTL + 5, "b to take over a's partitions")
            time.sleep(1.5)
            c.start()
            wait_for(lambda: _balanced(store, ["b", "c"]), 20, "c to get its share")
            time.sleep(1.5)
    finally:
        fleet.stop()
        time.sleep(1.0)  # the last batches are committed and confirmed
        for m in (a, b, c):
            m.stop()
    logs = "\n".join(m.log_text() for m in (b, c))
    assert "Traceback" not in logs, logs[-3000:]
    assert_stored_exactly_once(db_url, fleet)
    assert_one_owner_at_a_time(db_url)
    _alerts_not_doubled(db_url)


def test_a_paused_member_loses_its_leases_and_writes_nothing_under_them(
    tmp_path: Path, cluster: NatsCluster, db_url: str
) -> None:
    """SIGSTOP a past its lease: b takes a's partitions (new epochs). After SIGCONT, a finds its
    leases gone (renewal and fenced writes refused), re-plans, and the two share again."""
    a, b = _members(tmp_path, cluster, db_url, "a", "b")
    fleet = Fleet(tmp_path, cluster)
    try:
        a.start()
        b.start()
        with open_store(db_url, readonly=True) as store:
            wait_for(lambda: _balanced(store, ["a", "b"]), 20, "a and b to share the partitions")
            fleet.start()
            time.sleep(1.5)
            a.signal(signal.SIGSTOP)
            wait_for(
                lambda: _balanced(store, ["b"]), LEASE_TTL * 2 + 5, "b to take over the paused a's share"
            )
            time.sleep(1.0)
            a.signal(signal.SIGCONT)
            wait_for(lambda: _balanced(store, ["a", "b"]), 20, "a to come back for its share")
            time.sleep(1.5)
    finally:
        fleet.stop()
        time.sleep(1.0)
        for m in (a, b):
            m.stop()
    assert "Traceback" not in a.log_text() + b.log_text()
    # a noticed on waking that every lease was gone (renewal refused) before taking any again.
    assert re.search(r"member a: partitions \+\[\] -\[[0-9, ]+\], now 0", a.log_text()), a.log_text()[-2000:]
    assert_stored_exactly_once(db_url, fleet)
    assert_one_owner_at_a_time(db_url)
    _alerts_not_doubled(db_url)


def test_sigkill_of_the_stream_leader_node_loses_nothing(
    tmp_path: Path, cluster: NatsCluster, db_url: str
) -> None:
    """The stream's leader node dies mid-stream and comes back: its agents reconnect, the
    members fail over to the other nodes, and every reading is stored once."""
    import asyncio

    a, b = _members(tmp_path, cluster, db_url, "a", "b")
    fleet = Fleet(tmp_path, cluster)
    try:
        a.start()
        b.start()
        with open_store(db_url, readonly=True) as store:
            wait_for(lambda: _balanced(store, ["a", "b"]), 20, "a and b to share the partitions")
        fleet.start()
        time.sleep(1.5)
        leader = asyncio.run(cluster.stream_info()).cluster.leader
        index = [n.name for n in cluster.nodes].index(leader)
        cluster.kill_node(index)
        time.sleep(3.0)
        cluster.start_node(index)
        # The node's agents reconnect and resend; on a loaded machine that can take a while, so
        # wait (bounded) until every device is mostly confirmed again rather than a fixed time.
        caught_up = lambda: _mostly_confirmed(db_url, fleet)  # noqa: E731
        wait_for(caught_up, 45, "the agents to catch up after the node's return")
    finally:
        fleet.stop()
        time.sleep(1.0)
        for m in (a, b):
            m.stop()
    assert "Traceback" not in a.log_text() + b.log_text()
    assert_stored_exactly_once(db_url, fleet)
