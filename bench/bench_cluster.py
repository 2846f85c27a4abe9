"""Cluster mode: readings/s with 1, 2 and 3 aggregator members, failover gaps, and the
single-node mode on the same messages in the same run.

    .venv/bin/python bench/bench_cluster.py [--devices 40] [--messages-per-device 50]
        [--samples 4] [--members 1,2,3] [--partitions 16] [--lease-ttl 5]

Everything is private and on loopback: a PostgreSQL server (tests/postgres.py, fsync on), a
3-node NATS JetStream cluster (tests/nats.py: deploy/nats/node.conf, R3 stream), members as
`edgewatch cloud run --nats` processes. For each member count, a fresh database and cluster:
the stream is preloaded with the messages (one NATS connection per device, as that device's
user, through the partition mapping), then the members start and drain it; the figure is
readings stored per second from the first reading stored to the last, and CPU seconds per
reading of each member process (on 2 cores the sum cannot grow linearly). Then, with 2
members and the fleet publishing one message per device every 0.2 s:

  member failover   SIGKILL of one member -> the first reading of its partitions stored by
                    the survivor (bounded below by the lease TTL)
  NATS failover     SIGKILL of the stream's leader node -> the first reading published after
                    the kill that is stored

The single-node figure: the same messages through a loopback mosquitto into one aggregator
on PostgreSQL (bench_aggregator.via_broker), next to its decode-only ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_aggregator  # noqa: E402
import psutil  # noqa: E402

from cloud.partitions.layout import partition_of  # noqa: E402
from cloud.store.api import open_store  # noqa: E402
from devices import wire  # noqa: E402
from tests.cluster_helpers import MemberProcess  # noqa: E402
from tests.nats import NatsCluster  # noqa: E402
from tests.postgres import Postgres  # noqa: E402


async def quiet(exc: Exception) -> None:
    """A node the bench killed: the client reconnects to another, nothing to print."""


def device_of(topic: str) -> str:
    return wire.parse_topic(topic)[0]


async def publish(cluster: NatsCluster, messages: list[tuple[str, bytes]]) -> None:
    """Each device's messages on its own NATS connection, as its own user."""
    import nats

    by_device: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in messages:
        by_device.setdefault(device_of(topic), []).append((topic, payload))
    node = cluster.nodes[0]

    async def one(device: str, items: list[tuple[str, bytes]]) -> None:
        nc = await nats.connect(f"nats://{device}:{cluster.devices[device]}@127.0.0.1:{node.client_port}")
        for topic, payload in items:
            await nc.publish(wire.nats_subject(topic), payload)
        await nc.flush(timeout=30)
        await nc.close()

    await asyncio.gather(*(one(d, items) for d, items in by_device.items()))


def stored(db: str) -> int:
    with open_store(db, readonly=True) as store:
        return store.count_readings()


def wait_stored(db: str, total: int, timeout: float) -> tuple[float | None, float]:
    """(monotonic time of the first reading stored, of the last), polling every 0.1 s."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = stored(db)
        if n and first is None:
            first = time.monotonic()
        if n >= total:
            return first, time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"only {stored(db)} of {total} readings stored in {timeout}s")


def drain_with_members(
    workdir: Path,
    pg: Postgres,
    messages: list[tuple[str, bytes]],
    devices: dict[str, str],
    *,
    k: int,
    args: Any,
) -> dict[str, Any]:
    total = len(messages) * bench_aggregator.per_message
    cluster = NatsCluster(workdir / f"nats-{k}", devices, partitions=args.partitions)
    cluster.start()
    db = pg.create_database()
    open_store(db, readonly=False, create=True).close()
    members = [MemberProcess(workdir, f"m{k}-{i}", cluster, db, lease_ttl=args.lease_ttl) for i in range(k)]
    try:
        t = time.perf_counter()
        asyncio.run(publish(cluster, messages))
        while asyncio.run(cluster.stream_info()).state.messages < len(messages):
            time.sleep(0.1)
        print(f"  {k} member(s): preloaded {len(messages)} messages in {time.perf_counter() - t:.1f}s")
        for m in members:
            m.start()
        procs = [psutil.Process(m.proc.pid) for m in members if m.proc is not None]
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        first, last = wait_stored(db, total, timeout=600)
        cpu = [sum(p.cpu_times()[:2]) - c for p, c in zip(procs, cpu0, strict=True)]
        assert first is not None
        return {"members": k, "seconds": last - first, "rate": total / (last - first),
                "cpu_us_per_reading": [c / total * 1e6 for c in cpu]}  # fmt: skip
    finally:
        for m in members:
            m.stop()
        cluster.stop()


def failover(workdir: Path, pg: Postgres, devices: dict[str, str], args: Any) -> dict[str, float]:
    """Gaps with 2 members and a steady fleet (one message per device every 0.2 s)."""
    import threading

    cluster = NatsCluster(workdir / "nats-failover", devices, partitions=args.partitions)
    cluster.start()
    db = pg.create_database()
    open_store(db, readonly=False, create=True).close()
    a, b = (MemberProcess(workdir, f"f-{n}", cluster, db, lease_ttl=args.lease_ttl) for n in "ab")
    stop = threading.Event()
    sent: dict[str, float] = {}  # msg_id -> monotonic time published

    def fleet() -> None:
        seq = 0

        async def run() -> None:
            import nats

            nonlocal seq
            conns = {}
            for d, p in devices.items():
                conns[d] = await nats.connect(
                    servers=[f"nats://127.0.0.1:{n.client_port}" for n in cluster.nodes],
                    user=d,
                    password=p,
                    error_cb=quiet,
                )
            while not stop.is_set():
                seq += 1
                for d, nc in conns.items():
                    payload = wire.encode_readings(
                        d, "e1", [(seq, time.time(), "s", "m", 1.0, "")], sent_at=time.time()
                    )
                    msg_id = wire.decode_readings(payload).msg_id
                    sent[msg_id] = time.monotonic()
                    with contextlib.suppress(Exception):  # a node is down: the client reconnects
                        await nc.publish(wire.nats_subject(wire.device_topic(d, wire.TELEMETRY)), payload)
                await asyncio.sleep(0.2)
            for nc in conns.values():
                await nc.close()

        asyncio.run(run())

    def first_stored_after(t: float, device_filter: set[str]) -> float:
        """Monotonic time at which a reading published after `t` by one of the devices is stored."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with open_store(db, readonly=True) as store:
                for device in device_filter:
                    for reading in store.readings(device, "m", limit=1_000_000)[-5:]:
                        if sent.get(reading.msg_id, 0) > t:
                            return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError("nothing stored after the failover")

    thread = threading.Thread(target=fleet, daemon=True)
    try:
        a.start()
        b.start()
        time.sleep(3 + args.lease_ttl)
        thread.start()
        time.sleep(3)
        with open_store(db, readonly=True) as store:
            from cloud.partitions.assignment import owners
            from cloud.store.api import LeaseStore

            assert isinstance(store, LeaseStore)
            owned_by_a = set(owners(store.cluster_view()).get("f-a", ()))
        a_devices = {d for d in devices if partition_of(d, args.partitions) in owned_by_a}
        killed = time.monotonic()
        a.kill()
        member_gap = first_stored_after(killed, a_devices) - killed
        time.sleep(2)
        leader = asyncio.run(cluster.stream_info()).cluster.leader
        index = [n.name for n in cluster.nodes].index(leader)
        killed = time.monotonic()
        cluster.kill_node(index)
        nats_gap = first_stored_after(killed, set(devices)) - killed
        return {"member_gap_s": member_gap, "nats_gap_s": nats_gap}
    finally:
        stop.set()
        thread.join(timeout=10)
        for m in (a, b):
            m.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--messages-per-device", type=int, default=50)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--members", default="1,2,3")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    args = parser.parse_args()
    bench_aggregator.per_message = bench_aggregator.METRICS * args.samples
    messages = bench_aggregator.make_messages(args.devices, args.messages_per_device, samples=args.samples)
    devices = {f"dev-{d:04d}": f"pw-{d}" for d in range(args.devices)}
    total = len(messages) * bench_aggregator.per_message
    print(f"{len(messages)} messages, {total} readings, {args.devices} devices, P={args.partitions}")
    workdir = Path(tempfile.mkdtemp(prefix="ew-bench-cluster-"))
    pg = Postgres(fsync=True)
    pg.start()
    try:
        results = [
            drain_with_members(workdir, pg, messages, devices, k=int(k), args=args)
            for k in args.members.split(",")
        ]
        single = bench_aggregator.via_broker([], messages, "default", db=pg.create_database())
        gaps = failover(workdir, pg, devices, args)
    finally:
        pg.stop()
    print(
        "\ncluster mode (NATS JetStream R3, 3 nodes; PostgreSQL fsync on), drained from a preloaded stream:"
    )
    for r in results:
        cpu = ", ".join(f"{c:.1f}" for c in r["cpu_us_per_reading"])
        print(f"  {r['members']} member(s): {r['rate']:9,.0f} readings/s   CPU us/reading per member: {cpu}"
              f"  (sum {sum(r['cpu_us_per_reading']):.1f})")  # fmt: skip
    print("single-node mode (mosquitto + 1 aggregator, PostgreSQL), same messages:")
    print(f"  aggregator:  {total / single['full_s']:9,.0f} readings/s")
    print(f"  ceiling:     {total / single['ceiling_s']:9,.0f} readings/s (decode-only subscriber)")
    print(f"failover gaps (2 members, lease TTL {args.lease_ttl:g} s):")
    print(f"  SIGKILL of a member:          {gaps['member_gap_s']:.1f} s until its partitions store again")
    print(f"  SIGKILL of the stream leader: {gaps['nats_gap_s']:.1f} s until a new reading is stored")


if __name__ == "__main__":
    main()
