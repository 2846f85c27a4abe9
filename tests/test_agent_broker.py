"""The agent's no-loss promise, through a real mosquitto and real SQLite files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.outbox import read_stats
from tests.agent_helpers import RunningAgent, agent_config, outbox_seqs
from tests.confirmer import Confirmer, wait_for
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.broker


def test_broker_outage_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    """20 readings/s while the broker is down for 15 s: every seq arrives, the outbox empties."""
    confirmer = Confirmer(broker.host, broker.port).start()
    cfg = agent_config(tmp_path, broker.url, interval_s=0.05)
    runner = RunningAgent(cfg)
    with runner as agent:
        wait_for(lambda: len(confirmer.seqs("dev-1", agent.outbox.epoch)) >= 40, 10, "first readings")
        epoch = agent.outbox.epoch
        broker.stop()
        time.sleep(15)
        sampled_in_outage = agent.outbox.next_seq - 1
        broker.start()
        wait_for(
            lambda: confirmer.seqs("dev-1", epoch) >= set(range(1, sampled_in_outage + 1)),
            30,
            "backlog drained",
        )
        runner.stop()
    stats = read_stats(cfg.outbox.path, cfg.outbox.max_bytes)
    assert sampled_in_outage >= 250  # ~20/s for 2 + 15 s
    assert stats.dropped == 0
    # Whatever was sampled after the drain is either received or still safely in the outbox.
    unconfirmed = outbox_seqs(cfg.outbox.path)
    assert confirmer.seqs("dev-1", epoch) | unconfirmed >= set(range(1, stats.last_seq + 1))
    # The readings sampled during the outage came back as backfill, the rest live.
    assert confirmer.by_topic["backfill"] > 0
    assert confirmer.by_topic["telemetry"] > 0
    confirmer.stop()


def test_unconfirmed_readings_stay_and_are_resent(tmp_path: Path, broker: Mosquitto) -> None:
    """PUBACK without the aggregator's confirmation is not enough to delete a reading."""
    confirmer = Confirmer(broker.host, broker.port).start()
    confirmer.confirming = False
    cfg = agent_config(tmp_path, broker.url, interval_s=0.1, publish={"ack_timeout_s": 0.5})
    runner = RunningAgent(cfg)
    with runner as agent:
        epoch = agent.outbox.epoch
        wait_for(lambda: confirmer.duplicates() > 5, 15, "re-sent readings")
        assert agent.outbox.backlog >= len(confirmer.seqs("dev-1", epoch)) > 0
        confirmer.confirming = True
        wait_for(lambda: agent.outbox.backlog <= 2, 20, "outbox to empty after confirmations resume")
        runner.stop()
    stats = read_stats(cfg.outbox.path, cfg.outbox.max_bytes)
    assert set(range(1, stats.last_seq + 1)) <= confirmer.seqs("dev-1", epoch) | outbox_seqs(cfg.outbox.path)
    assert stats.confirmed >= stats.last_seq - stats.backlog
    confirmer.stop()


def test_tiny_outbox_drops_oldest_and_counts_exactly(tmp_path: Path, broker: Mosquitto) -> None:
    """With the broker down and a tiny bound, missing == dropped, and the oldest went."""
    broker.stop()
    cfg = agent_config(tmp_path, broker.url, interval_s=0.02, outbox={"max_bytes": 60 * 100})
    runner = RunningAgent(cfg)
    with runner as agent:
        wait_for(lambda: agent.outbox.counters()["dropped"] >= 100, 20, "drops")
        broker.start()
        confirmer = Confirmer(broker.host, broker.port).start()
        wait_for(lambda: agent.outbox.backlog < 10, 20, "drain")
        runner.stop()
    stats = read_stats(cfg.outbox.path, cfg.outbox.max_bytes)
    wait_for(
        lambda: len(confirmer.seqs("dev-1", stats.epoch)) + stats.dropped + stats.backlog >= stats.last_seq,
        10,
        "delivery",
    )
    got = confirmer.seqs("dev-1", stats.epoch)
    in_outbox = stats.backlog  # the last few, not yet confirmed at stop
    missing = set(range(1, stats.last_seq + 1 - in_outbox)) - got
    assert len(missing) == stats.dropped
    assert missing == set(range(1, stats.dropped + 1)), "drop_oldest must drop the oldest"
    confirmer.stop()


def test_drop_newest_keeps_the_oldest(tmp_path: Path, broker: Mosquitto) -> None:
    broker.stop()
    cfg = agent_config(
        tmp_path, broker.url, interval_s=0.02, outbox={"max_bytes": 60 * 50, "overflow": "drop_newest"}
    )
    runner = RunningAgent(cfg)
    with runner as agent:
        wait_for(lambda: agent.outbox.counters()["dropped"] >= 50, 20, "drops")
        broker.start()
        confirmer = Confirmer(broker.host, broker.port).start()
        wait_for(
            lambda: (
                agent.outbox.backlog == 0 or set(range(1, 51)) <= confirmer.seqs("dev-1", agent.outbox.epoch)
            ),
            20,
            "drain",
        )
        epoch = agent.outbox.epoch
        runner.stop()
    got = confirmer.seqs("dev-1", epoch)
    # The first readings (that fit the bound) survived the outage.
    assert set(range(1, 40)) <= got
    confirmer.stop()
