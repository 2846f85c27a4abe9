"""Alerts say why, end to end through real parts: a publisher's spike (then, in a backlog on the
backfill topic, a dip: a late alert) through a private mosquitto, the in-process aggregator,
the SQLite store, `alerts list --json`, and `alerts follow --json` as a subprocess reading the
alerts topic.

The detector is `LevelDetector`, registered for this test only (monkeypatched into the
registry): it certainly sets `kind` and `evidence`, so the test pins the plumbing after the
detector (tracker, pipeline, wire 1.2, store, views) whatever the default detector says.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cloud.detect
from cloud.detect.base import Verdict
from edgewatch.app import app
from tests.mosquitto import Mosquitto
from tests.test_aggregator import FakeAgent, fast_config, running, wait_for
from tests.test_cli_ops_follow import start_follower, stop

pytestmark = pytest.mark.broker

SPIKE_AT = 250


class LevelDetector:
    """Flags a reading more than 8 typical steps from an EWMA level, and says so in `{unit}`."""

    name = "level"

    def __init__(self, *, seed: int = 0) -> None:
        self.n, self.level, self.dev = 0, 0.0, 0.0

    def score_one(self, ts: float, value: float) -> float:
        if self.n < 30:
            return 0.0
        return min(1.0, abs(value - self.level) / (16 * max(self.dev, 1e-9)))

    def learn_one(self, ts: float, value: float) -> None:
        self.n += 1
        if self.n == 1:
            self.level = value
        self.dev += 0.1 * (abs(value - self.level) - self.dev)
        self.level += 0.1 * (value - self.level)

    def process(self, ts: float, value: float) -> Verdict:
        score = self.score_one(ts, value)
        low, high = self.level - 8 * self.dev, self.level + 8 * self.dev
        if score < 0.5:
            self.learn_one(ts, value)
            return Verdict(score, False, low, high)
        steps = abs(value - self.level) / max(self.dev, 1e-9)
        above = value > self.level
        evidence = (
            f"value {value:.3g} {{unit}}, {round(steps, -1):.0f} typical steps "
            f"{'above' if above else 'below'} the level {self.level:.2g} {{unit}}"
        )
        return Verdict(score, True, low, high, "spike" if above else "dip", evidence)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self)


def test_a_spike_through_the_broker_arrives_with_its_kind_and_evidence_everywhere(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cloud.detect.DETECTORS, "level", "tests.test_alert_explanations:LevelDetector")
    follower, out, err = start_follower(broker, tmp_path, "--device", "x-1", "--json", "--count", "4")
    db = tmp_path / "cloud.db"
    rng = random.Random(7)
    t0 = time.time() - 400
    rows = [
        (i + 1, t0 + i, "meter", "power", round(20 + 0.2 * math.sin(i / 15) + rng.gauss(0, 0.02), 3)
         + (15.2 if i == SPIKE_AT else 0.0), "W")
        for i in range(300)
    ]  # fmt: skip
    # Then the outbox's backlog from an outage, on the backfill topic, with a dip: a late alert.
    backlog = [
        (301 + i, t0 - 100 + i, "meter", "power", round(20 + rng.gauss(0, 0.02), 3)
         - (9.0 if i == 20 else 0.0), "W")
        for i in range(40)
    ]  # fmt: skip
    try:
        wait_for(lambda: "connected" in err.read_text() or follower.poll() is not None, what="follower up")
        assert follower.poll() is None, err.read_text()
        with running(fast_config(broker, db, detector="level")):
            agent = FakeAgent(broker, "explained-publisher")
            try:
                for lo in range(0, len(rows), 20):
                    agent.publish("x-1", "e1", rows[lo : lo + 20])
                wait_for(lambda: len(out.read_text().splitlines()) >= 2, what="the live alert's two lines")
                agent.publish("x-1", "e1", backlog, kind="backfill")
                wait_for(lambda: follower.poll() is not None, what="the late alert's OPEN and CLOSED lines")
            finally:
                agent.close()
        assert follower.returncode == 0, err.read_text()
    finally:
        stop(follower)
    spike = rows[SPIKE_AT]
    evidence = json.loads(out.read_text().splitlines()[0])["evidence"]
    # The detector's words with its `{unit}` replaced by the stream's unit, W.
    assert evidence.startswith(f"value {spike[4]:.3g} W, ") and evidence.endswith(" above the level 20 W")
    # On the alerts topic: both transitions, with the reason in watts.
    opened, closed, late_opened, late_closed = (json.loads(line) for line in out.read_text().splitlines())
    assert (opened["state"], closed["state"]) == ("open", "closed")
    for event in (opened, closed):
        assert (event["anomaly_kind"], event["peak_ts"], event["value"]) == ("spike", spike[1], spike[4])
        assert event["evidence"] == event["opening_evidence"] == evidence
        assert event["expected_low"] < 20 < event["expected_high"] < event["value"]  # the range it held
    # The late one says why too: what the live detector would say of that backlog reading.
    dip = backlog[20]
    for event in (late_opened, late_closed):
        assert (event["late"], event["anomaly_kind"], event["peak_ts"], event["value"]) == (
            True, "dip", dip[1], dip[4],
        )  # fmt: skip
        assert (
            event["evidence"].startswith(f"value {dip[4]:.3g} W, ")
            and " below the level 20 W" in event["evidence"]
        )
    # In the store.
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT alert_id, anomaly_kind, evidence, opening_evidence, peak_ts FROM alerts "
            "WHERE device = 'x-1' ORDER BY late"
        ).fetchall()
    assert stored == [
        (opened["alert_id"], "spike", evidence, evidence, spike[1]),
        (late_opened["alert_id"], "dip", late_opened["evidence"], late_opened["evidence"], dip[1]),
    ]
    # In `alerts list --json`, with the one-line reason.
    result = CliRunner().invoke(app, ["alerts", "list", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    listed, _late = sorted(json.loads(result.stdout), key=lambda a: a["late"])
    assert (listed["alert_id"], listed["anomaly_kind"], listed["evidence"]) == (
        opened["alert_id"], "spike", evidence,
    )  # fmt: skip
    assert listed["why"] == f"spike: {evidence}"
