"""Aggregator throughput: readings/s with storage and detection, next to a decode-only ceiling.

    .venv/bin/python bench/bench_aggregator.py [--devices 1000] [--messages-per-device 24]
        [--samples 5] [--batch N] [--detector default] [--profile] [--no-broker | --no-in-process]
        [--db postgresql | --db postgresql://user@host/postgres]

1,000 simulated devices, 5 metrics each, `--samples` samples of each per message: 5 by default,
25 readings/message, which is what an agent with the default linger (0.25 s) sends at 100
readings/s, i.e. what 1,000 devices send at 100k readings/s. `--samples 20` (100/message) and
100 (500/message, the agent's largest batch) are a drained backlog. First 100 readings per
stream of warm-up traffic (untimed: it creates series and registry rows and takes every
detector past its warm-up and calibration), then the timed messages, measured:

  in-process   decode only (ingest.decode_inbound: topic + wire.decode_readings + checks),
               then the Pipeline on the decoded items (multi-row INSERT OR IGNORE in one
               transaction per batch of the service's size, detection, episode machines,
               registry), and again with detection, then storage, stubbed out, to say where the
               time goes. CPU time of this process, best of --repeat runs (the machine is shared).
  via broker   the aggregator's store is pre-warmed with the warm-up traffic; both sessions'
               queues are preloaded in a loopback mosquitto (persistent sessions,
               max_queued_messages 0) with the timed messages, then drained: first by a
               decode-only aiomqtt subscriber that receives the way the service does, then by
               the real service (cloud.service.aggregator.Aggregator, acks and all). Wall time.
               On SQLite always; with --db also on PostgreSQL, in the same run: `postgresql`
               starts a private server (tests/postgres.py, fsync on, loopback, a free port),
               a URL names a server where the bench creates (and drops) a scratch database
               per run. Each backend's run measures its own decode-only ceiling beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import math
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud.detect.native import compiled  # noqa: E402
from cloud.ingest.pipeline import Inbound, Pipeline, PipelineSettings, decode_inbound  # noqa: E402
from cloud.service.aggregator import tune_gc  # noqa: E402
from cloud.service.config import AggregatorConfig  # noqa: E402
from cloud.store.api import open_store  # noqa: E402
from devices import wire  # noqa: E402

METRICS = 5
SAMPLES = 5  # per metric per message (--samples)
per_message = METRICS * SAMPLES  # readings per message, set from --samples
batch = AggregatorConfig().batch_max_messages  # messages per transaction, set from --batch
DEFAULT_BATCH = batch


def make_messages(
    devices: int, per_device: int, seed: int = 1, samples: int = SAMPLES
) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    t0 = time.time() - per_device * samples - 60
    out: list[tuple[str, bytes]] = []
    seqs = [0] * devices
    for k in range(per_device):
        for d in range(devices):
            rows = []
            for s in range(samples):
                ts = t0 + k * samples + s
                for m in range(METRICS):
                    seqs[d] += 1
                    value = 20 + 5 * m + math.sin(ts / 60 + d) + rng.gauss(0, 0.1)
                    rows.append((seqs[d], ts, "sys", f"m{m}", value, "u"))
            device = f"dev-{d:04d}"
            payload = wire.encode_readings(device, "e1", rows, sent_at=ts)
            out.append((wire.device_topic(device, "telemetry"), payload))
    return out


def cpu(fn: Callable[[], Any]) -> float:
    """CPU seconds of `fn`. The benchmark's own pre-decoded messages are frozen out of the
    garbage collector first: the service never holds 300k readings alive, and scanning them
    in every full collection doubled the figures."""
    gc.collect()
    gc.freeze()
    try:
        start = time.process_time()
        fn()
        return time.process_time() - start
    finally:
        gc.unfreeze()


def _detector_alone(warmup: list[Any], items: list[Any], detector: str, total: int) -> float:
    """CPU per reading of `detector.process` alone on the same streams: the rest of "detect"
    is the pipeline's loop and the episode machines."""
    from cloud.detect import make_detector

    streams: dict[tuple[str, str], Any] = {}
    for item in warmup:
        for r in item.accepted:
            key = (r.device, r.metric)
            if key not in streams:
                streams[key] = make_detector(detector)
            streams[key].process(r.ts, r.value)
    work = [(streams[(r.device, r.metric)].process, r.ts, r.value) for item in items for r in item.accepted]

    def go() -> None:
        for process, ts, value in work:
            process(ts, value)

    return cpu(go) / total


def _decode_all(inbound: list[Inbound]) -> None:
    for m in inbound:
        decode_inbound(m)  # decoded and dropped


def in_process(
    warmup: list[tuple[str, bytes]],
    messages: list[tuple[str, bytes]],
    detector: str,
    profile: bool,
    repeat: int,
) -> dict[str, float]:
    """Steady state: the warm-up messages (creating series, detectors and registry rows, and
    taking every detector past its warm-up and calibration) are ingested before the clock
    starts. Each figure is the best of `repeat` interleaved runs (the machine is shared; the
    least CPU time is the least disturbed)."""
    now = time.time()
    warmup_items = [decode_inbound(Inbound(t, p, now)) for t, p in warmup]
    inbound = [Inbound(t, p, now) for t, p in messages]
    total = len(inbound) * per_message
    res: dict[str, float] = {}
    items = [decode_inbound(m) for m in inbound]

    def pipeline_run(patch: Callable[[Pipeline], None] | None = None) -> float:
        workdir = Path(tempfile.mkdtemp(prefix="ew-bench-"))
        try:
            with open_store(workdir / "cloud.db", readonly=False, create=True) as store:
                pipeline = Pipeline(store, PipelineSettings(detector=detector), now=now)
                pipeline.ingest_items(warmup_items, now)
                if patch:
                    patch(pipeline)

                def go() -> None:
                    for i in range(0, len(items), batch):
                        pipeline.ingest_items(items[i : i + batch], time.time())

                return cpu(go) / total
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def end_to_end() -> float:
        """Wall time of `Pipeline.ingest` on the raw messages: decode, store, detect, commit."""
        workdir = Path(tempfile.mkdtemp(prefix="ew-bench-"))
        try:
            with open_store(workdir / "cloud.db", readonly=False, create=True) as store:
                pipeline = Pipeline(store, PipelineSettings(detector=detector), now=now)
                pipeline.ingest_items(warmup_items, now)
                gc.collect()
                gc.freeze()
                start = time.perf_counter()
                for i in range(0, len(inbound), batch):
                    pipeline.ingest(inbound[i : i + batch], time.time())
                elapsed = time.perf_counter() - start
                gc.unfreeze()
                return elapsed / total
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def no_detect(p: Pipeline) -> None:
        p._detect = lambda *a: None  # type: ignore[method-assign]

    def no_store(p: Pipeline) -> None:
        no_detect(p)
        p.store.store_messages = lambda items: []  # type: ignore[method-assign]

    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        runs.setdefault("decode", []).append(cpu(lambda: _decode_all(inbound)) / total)
        runs.setdefault("pipeline", []).append(pipeline_run())  # items are decoded already
        runs.setdefault("pipeline_no_detect", []).append(pipeline_run(no_detect))
        runs.setdefault("pipeline_glue_only", []).append(pipeline_run(no_store))
        runs.setdefault("detector_alone", []).append(_detector_alone(warmup_items, items, detector, total))
        runs.setdefault("wall", []).append(end_to_end())
    res = {name: min(values) for name, values in runs.items()}
    res["full"] = res["decode"] + res["pipeline"]
    if profile:
        workdir = Path(tempfile.mkdtemp(prefix="ew-bench-"))
        with open_store(workdir / "cloud.db", readonly=False, create=True) as store:
            pipeline = Pipeline(store, PipelineSettings(detector=detector), now=now)
            pipeline.ingest_items(warmup_items, now)
            prof = cProfile.Profile()
            prof.enable()
            for i in range(0, len(inbound), batch):
                pipeline.ingest(inbound[i : i + batch], time.time())
            prof.disable()
        shutil.rmtree(workdir, ignore_errors=True)
        print("\ncProfile of the full pipeline (decode included), top 22 by own time:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    return res


# ---------------------------------------------------------------------------------------------
# through a real broker


def preload(broker: Any, messages: list[tuple[str, bytes]], sessions: list[str]) -> None:
    import paho.mqtt.client as mqtt

    for client_id in sessions:  # create the persistent sessions, then go away
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        sub.connect(broker.host, broker.port)
        sub.subscribe([(wire.SUB_TELEMETRY, 1), (wire.SUB_BACKFILL, 1), (wire.SUB_STATUS, 1)])
        sub.loop(timeout=0.5)
        sub.loop(timeout=0.5)
        sub.disconnect()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    pending = []
    for topic, payload in messages:
        pending.append(pub.publish(topic, payload, qos=1))
        if len(pending) >= 5000:
            for info in pending:
                info.wait_for_publish(60)
            pending.clear()
    for info in pending:
        info.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()


async def drain_decode_only(broker: Any, total: int) -> float:
    """The ceiling: the aggregator's own receive path (aiomqtt with a queue whose put_nowait
    takes each message as paho hands it over, no task per message) and garbage-collector
    settings, each message decoded through `ingest.decode_inbound` and dropped."""
    import aiomqtt

    got = [0]
    done = asyncio.Event()

    class _Decode(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            decoded = decode_inbound(Inbound(item.topic.value, item.payload, time.time(), bool(item.retain)))
            got[0] += len(getattr(decoded, "accepted", ()))
            if got[0] >= total:
                done.set()

    tune_gc()  # the collector settings the service runs with
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="bench-ceiling",
        clean_session=False,
        queue_type=_Decode,
        max_inflight_messages=1000,
    ) as client:
        start = time.perf_counter()
        receiver = asyncio.create_task(_consume(client))
        await done.wait()
        elapsed = time.perf_counter() - start
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        return elapsed


async def _consume(client: Any) -> None:
    async for _ in client.messages:  # only to notice a disconnect, as the service does
        pass


async def drain_aggregator(broker: Any, db: str, total: int, detector: str) -> tuple[float, dict[str, Any]]:
    from cloud.service.aggregator import Aggregator

    config = AggregatorConfig(
        broker=broker.url, db=str(db), detector=detector, checkpoint_interval=3600, batch_max_messages=batch
    )
    aggregator = Aggregator(config)
    await aggregator.open()
    stop = asyncio.Event()
    task = asyncio.create_task(aggregator.run(stop))
    await aggregator.connected.wait()
    start = time.perf_counter()
    registry = aggregator.metrics.registry
    while (registry.get_sample_value("edgewatch_readings_ingested_total") or 0) < total:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # polling a Prometheus counter: there is no event to await
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    await aggregator.close()
    batches = registry.get_sample_value("edgewatch_batch_messages_count") or 0
    msgs = registry.get_sample_value("edgewatch_batch_messages_sum") or 0
    return elapsed, {"batches": batches, "messages_per_batch": msgs / batches if batches else 0}


def prewarm(db: str, warmup: list[tuple[str, bytes]], detector: str) -> None:
    """The aggregator's store after the warm-up traffic, checkpointed: the drain starts warm."""
    now = time.time()
    with open_store(db, readonly=False, create=True) as store:
        pipeline = Pipeline(store, PipelineSettings(detector=detector), now=now)
        items = [Inbound(t, p, now) for t, p in warmup]
        for i in range(0, len(items), 500):
            pipeline.ingest(items[i : i + 500], now)
        pipeline.checkpoint(now)


def via_broker(
    warmup: list[tuple[str, bytes]], messages: list[tuple[str, bytes]], detector: str, db: str | None = None
) -> dict[str, Any]:
    """One drain; the store is a fresh SQLite file unless `db` names a fresh database."""
    from tests.mosquitto import Mosquitto

    total = len(messages) * per_message
    workdir = Path(tempfile.mkdtemp(prefix="ew-bench-broker-"))
    db = db or str(workdir / "cloud.db")
    prewarm(db, warmup, detector)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    try:
        t = time.perf_counter()
        preload(broker, messages, ["bench-ceiling", "edgewatch-aggregator"])
        print(f"  preloaded {len(messages)} messages into 2 sessions in {time.perf_counter() - t:.1f}s")
        ceiling = asyncio.run(drain_decode_only(broker, total))
        full, extra = asyncio.run(drain_aggregator(broker, db, total, detector))
        with open_store(db, readonly=True) as store:
            stored = store.count_readings() - len(warmup) * per_message
        return {"ceiling_s": ceiling, "full_s": full, "stored": stored, **extra}
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages-per-device", type=int, default=24, help="timed messages")
    parser.add_argument(
        "--warmup-readings", type=int, default=100, help="per stream, ingested before timing (default 100)"
    )
    parser.add_argument("--detector", default="default")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-broker", action="store_true")
    parser.add_argument("--no-in-process", action="store_true", help="only the run through the broker")
    parser.add_argument("--repeat", type=int, default=3, help="best of N (in-process) / N (broker)")
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"messages per transaction (default {DEFAULT_BATCH}, the service's)",
    )
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples per metric per message")
    parser.add_argument(
        "--db",
        default=None,
        help="also through the broker on PostgreSQL: 'postgresql' (a private server) or a server's URL",
    )
    args = parser.parse_args()
    global per_message, batch  # noqa: PLW0603 - a benchmark's knobs
    per_message = METRICS * args.samples
    batch = args.batch

    warmup_per_device = -(-args.warmup_readings // args.samples)
    every = make_messages(args.devices, warmup_per_device + args.messages_per_device, samples=args.samples)
    warmup, messages = every[: args.devices * warmup_per_device], every[args.devices * warmup_per_device :]
    total = len(messages) * per_message
    print(
        f"{args.devices} devices x {args.messages_per_device} messages x {per_message} readings "
        f"= {total:,} readings ({len(messages):,} messages, ~{len(messages[0][1])} bytes each), "
        f"detector={args.detector} ({'compiled' if compiled() else 'interpreted'}); "
        f"after {warmup_per_device * args.samples} warm-up readings per stream"
    )
    if not args.no_in_process:
        report_in_process(in_process(warmup, messages, args.detector, args.profile, args.repeat), args)
    report_broker(warmup, messages, args)


def report_in_process(res: dict[str, float], args: argparse.Namespace) -> None:
    us = {k: v * 1e6 for k, v in res.items()}
    detect = us["pipeline"] - us["pipeline_no_detect"]
    store = us["pipeline_no_detect"] - us["pipeline_glue_only"]
    print(f"\nin-process, CPU time per reading (best of {args.repeat}):")
    for label, value in (
        ("decode (wire.decode_readings + checks)", us["decode"]),
        ("store (multi-row INSERT OR IGNORE)", store),
        (f"detect ({args.detector} + episode machines)", detect),
        (f"  of which {args.detector}.process alone", us["detector_alone"]),
        ("glue (batching, registry, messages, commit)", us["pipeline_glue_only"]),
    ):
        print(f"  {label:<46}{value:6.2f} us")
    print(f"  decode-only ceiling:  {1 / res['decode']:>10,.0f} readings/s")
    print(
        f"  full pipeline:        {1 / res['full']:>10,.0f} readings/s "
        f"({res['decode'] / res['full']:.0%} of the ceiling)"
    )
    print(f"  full pipeline, wall time of Pipeline.ingest(): {1 / res['wall']:>10,.0f} readings/s")


class ScratchDatabases:
    """Fresh PostgreSQL databases for the drains: on a private server, or on the one a URL names."""

    def __init__(self, spec: str) -> None:
        self.server: Any = None
        if spec == "postgresql":
            from tests.postgres import Postgres

            self.server = Postgres(fsync=True)
            self.server.start()
            self.admin = self.server.url()
        else:
            self.admin = spec
        self.created: list[str] = []

    def new(self) -> str:
        import psycopg

        name = f"ew_bench_{len(self.created)}_{int(time.time())}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.rsplit("/", 1)[0] + "/" + name

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            return
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def report_broker(
    warmup: list[tuple[str, bytes]], messages: list[tuple[str, bytes]], args: argparse.Namespace
) -> None:
    total = len(messages) * per_message
    if args.no_broker or not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        return
    n = max(1, args.repeat - 1)
    scratch = ScratchDatabases(args.db) if args.db else None
    backends: list[tuple[str, Callable[[], str | None]]] = [("SQLite", lambda: None)]
    if scratch is not None:
        backends.append(("PostgreSQL", scratch.new))
    try:
        for name, target in backends:
            print(f"\n{name}, via a loopback mosquitto (preloaded queues drained), wall time, best of {n}:")
            tries = [via_broker(warmup, messages, args.detector, target()) for _ in range(n)]
            b = {
                "ceiling_s": min(t["ceiling_s"] for t in tries),
                "full_s": min(t["full_s"] for t in tries),
                "stored": tries[-1]["stored"],
                "messages_per_batch": tries[-1]["messages_per_batch"],
            }
            ceiling, full = total / b["ceiling_s"], total / b["full_s"]
            print(f"  decode-only subscriber: {ceiling:>10,.0f} readings/s ({b['ceiling_s']:.2f}s)")
            print(
                f"  aggregator service:     {full:>10,.0f} readings/s ({b['full_s']:.2f}s, "
                f"{full / ceiling:.0%} of the ceiling; {b['stored']:,} stored, "
                f"{b['messages_per_batch']:.0f} messages per transaction)"
            )
    finally:
        if scratch is not None:
            scratch.close()


if __name__ == "__main__":
    main()
