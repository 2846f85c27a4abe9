"""Aggregator settings and the service's guards that need no broker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiomqtt
import pytest

from cloud.errors import ConfigError, StoreError
from cloud.ingest.pipeline import Inbound
from cloud.service.aggregator import Aggregator, _batch_end
from cloud.service.config import AggregatorConfig, load_config
from devices import wire


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agg.toml"
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    path.write_text(
        "[aggregator]\n"
        'broker = "mqtts://agg:s%40cret@broker.example"\n'
        f'ca_file = "{ca}"\n'
        "metrics_port = 9108\n"
        "ack_interval = 2\n"  # an int where a float is expected is fine
        'detector = "ewma"\n'
    )
    config = load_config(path, metrics_port=None, db="/tmp/x.db")
    assert (config.metrics_port, config.ack_interval, config.detector, config.db) == (
        9108,
        2.0,
        "ewma",
        "/tmp/x.db",
    )
    url = config.broker_url()
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.example",
        8883,
        True,
        "agg",
        "s@cret",
    )
    assert "s@cret" not in url.redacted()
    assert load_config().broker == AggregatorConfig().broker


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[aggregator]\nack_interval = 'soon'\n", "aggregator.ack_interval must be a float"),
        ("[aggregator]\nbatch_max_messages = 0\n", "batch_max_messages must be > 0"),
        ("[aggregator]\nnope = 1\n", "unknown key aggregator.nope"),
        ("[aggregator]\nbroker = 'http://x'\n", "scheme must be mqtt"),
        ("[aggregator]\ndetector = 'magic'\n", "unknown detector 'magic'; known:"),
        ("[aggregator]\nsynchronous = 'OFF'\n", "synchronous must be NORMAL or FULL"),
        ("[aggregator\n", "not valid TOML"),
        ("aggregator = 3\n", "must be a table"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


def test_the_aggregator_reconnects_within_seconds_by_default() -> None:
    """One client, not a herd: its reconnect delay is capped at a few seconds."""
    config = AggregatorConfig()
    assert config.reconnect_cap <= 5.0
    with pytest.raises(ConfigError, match="reconnect_cap"):
        AggregatorConfig().replace(reconnect_cap=0)


def test_one_aggregator_per_database(tmp_path: Path) -> None:
    config = AggregatorConfig(db=str(tmp_path / "cloud.db"))

    async def main() -> None:
        first, second = Aggregator(config), Aggregator(config)
        await first.open()
        try:
            with pytest.raises(StoreError, match="another aggregator"):
                await second.open()
        finally:
            await second.close()
            await first.close()
        third = Aggregator(config)  # the lock went with the first one
        await third.open()
        await third.close()

    asyncio.run(main())


def test_a_full_inbox_sheds_new_messages_unconfirmed(tmp_path: Path) -> None:
    config = AggregatorConfig(db=str(tmp_path / "cloud.db"), max_inbox=2)

    async def main() -> tuple[int, float]:
        aggregator = Aggregator(config)
        queue = aggregator._inbox_queue()()  # what aiomqtt instantiates
        topic = wire.device_topic("pi-1", "telemetry")
        for mid in range(3):
            queue.put_nowait(aiomqtt.Message(topic, b"{}", 1, False, mid, None))
        shed = aggregator.metrics.registry.get_sample_value("edgewatch_inbox_shed_total") or 0.0
        return len(aggregator._inbox), shed

    assert asyncio.run(main()) == (2, 1.0)


def test_a_missing_ca_file_is_refused_when_the_service_starts(tmp_path: Path) -> None:
    config = AggregatorConfig(broker="mqtts://broker.example", ca_file=str(tmp_path / "no-ca.pem"))
    assert config.ca_file  # loading is fine: configs are written on another machine

    async def main() -> None:
        with pytest.raises(ConfigError, match="ca_file"):
            Aggregator(config)
        with pytest.raises(ConfigError, match="only used with an mqtts"):
            Aggregator(AggregatorConfig(ca_file=str(tmp_path / "no-ca.pem")))

    asyncio.run(main())


def test_metrics_endpoint_serves_the_counters() -> None:
    from urllib.request import urlopen

    from cloud.ingest.pipeline import BatchReport
    from cloud.service.metrics import Metrics

    metrics = Metrics()
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        metrics.observe(
            BatchReport(messages=2, stored=5, duplicates=3, dead={"bad_ts": 1}, received_at=[0.0]), 0.5
        )
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    assert "edgewatch_readings_ingested_total 5.0" in text
    assert "edgewatch_duplicates_ignored_total 3.0" in text
    assert 'edgewatch_dead_lettered_total{reason="bad_ts"} 1.0' in text
    assert "edgewatch_ingest_lag_seconds_count 1.0" in text


def test_cancel_outlasts_a_task_that_swallows_its_cancellation() -> None:
    """Python 3.11's wait_for can eat a cancellation; shutdown must not hang on such a task."""
    from cloud.service.aggregator import _cancel

    async def stubborn() -> None:
        # What wait_for does when its inner future completes at the same moment:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await asyncio.sleep(30)

    async def main() -> float:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        start = asyncio.get_running_loop().time()
        await _cancel([task])
        assert task.cancelled()
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(main()) < 5


def test_a_batch_is_cut_by_message_count_and_by_payload_bytes() -> None:
    inbox = [Inbound("t", b"x" * 100, 0.0) for _ in range(10)]
    assert _batch_end(inbox, 4, 10_000) == 4
    assert _batch_end(inbox, 10, 350) == 3
    assert _batch_end(inbox, 10, 50) == 1  # one oversized message still makes a batch
    assert _batch_end(inbox[:2], 10, 10_000) == 2
    assert _batch_end([], 10, 10_000) == 0


def test_stop_while_connecting_to_a_broker_that_never_answers_is_prompt(tmp_path: Path) -> None:
    """A broker that accepts TCP and never sends CONNACK kept `stop` waiting for the connect
    timeout (10 s); a stop must abandon the attempt at once and still close the store."""

    async def scenario() -> float:
        held: list[asyncio.StreamWriter] = []
        connecting = asyncio.Event()

        async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # read nothing, answer nothing
            connecting.set()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = AggregatorConfig(broker=f"mqtt://127.0.0.1:{port}", db=str(tmp_path / "c.db"))
        aggregator = Aggregator(config)
        await aggregator.open()
        stop = asyncio.Event()
        task = asyncio.create_task(aggregator.run(stop))
        await asyncio.wait_for(connecting.wait(), 5)  # the connection attempt is under way
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(task, 8)
        elapsed = asyncio.get_running_loop().time() - started
        await aggregator.close()
        assert not aggregator.connected.is_set()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
        return elapsed

    assert asyncio.run(scenario()) < 2.0


def test_cluster_mode_needs_a_postgresql_store_and_nats_urls() -> None:
    with pytest.raises(ConfigError, match="postgresql"):
        load_config(nats="nats://127.0.0.1:4222", db="cloud.db")
    with pytest.raises(ConfigError, match="nats://"):
        load_config(nats="http://127.0.0.1:4222", db="postgresql://u@h/db")
    config = load_config(nats="nats://a:4222, tls://b:4222", db="postgresql://u@h/db", member="agg-1")
    assert (config.member, config.partitions, config.lease_ttl) == ("agg-1", 64, 10.0)
