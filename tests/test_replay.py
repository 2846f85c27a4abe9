"""Replay: the same history through the same code gives the same alerts, in a separate set."""

from __future__ import annotations

import json
import math
from pathlib import Path

from typer.testing import CliRunner

from cloud.analysis.replay import replay, replayed_alerts
from cloud.ingest.pipeline import Inbound, Pipeline
from cloud.store.api import REPLAY_SET
from cloud.store.sqlite.store import SqliteStore as Store
from devices import wire
from edgewatch.app import app

T0 = 1_750_000_000.0


def history(store: Store) -> list[str]:
    """300 readings a stream, two streams, a spike in one: ingested by the real pipeline."""
    pipeline = Pipeline(store, now=T0)
    for device in ("r-1", "r-2"):
        for start in range(1, 301, 50):
            rows = []
            for seq in range(start, start + 50):
                value = 20 + math.sin(seq / 10)
                if device == "r-1" and seq in (200, 201):
                    value = 60.0
                rows.append((seq, T0 + seq * 60, "env", "temperature", value, "C"))
            payload = wire.encode_readings(device, "e1", rows, sent_at=T0, msg_id=f"{device}-{start}")
            pipeline.ingest([Inbound(wire.device_topic(device, "telemetry"), payload, T0)], T0)
    return [a.alert_id for a in store.list_alerts() if a.kind == "anomaly"]


def test_replay_rebuilds_the_live_alerts_without_doubling_them(tmp_path: Path) -> None:
    with Store(tmp_path / "cloud.db") as store:
        live = history(store)
        assert live, "the spike raised an alert live"
        dry = replay(store, dry_run=True)
        assert (dry.streams, dry.readings, dry.written) == (2, 600, 0)
        assert sorted(e.alert_id for e in dry.episodes) == sorted(live)
        assert store.replay_runs() == [], "a dry run writes nothing"

        separate = replay(store, run="r1")
        assert separate.written == len(live)
        assert store.replay_runs() == ["r1"]
        assert {(d, m) for d, m, _, _ in replayed_alerts(store, "r1")} == {("r-1", "temperature")}
        assert replay(store, run="r1").written == 0, "the same run twice adds nothing"

        assert replay(store, into_alerts=True).written == 0, "live alerts have the same ids"
        assert len([a for a in store.list_alerts() if a.kind == "anomaly"]) == len(live)

        reasons = {a.alert_id: (a.anomaly_kind, a.evidence, a.peak_ts) for a in store.list_alerts()}
        assert all(evidence for _, evidence, _ in reasons.values())
        store.db.execute("DELETE FROM alerts")  # lost: --into-alerts rebuilds them, reasons included
        assert replay(store, into_alerts=True).written == len(live)
        assert {a.alert_id: (a.anomaly_kind, a.evidence, a.peak_ts) for a in store.list_alerts()} == reasons

        only_r2 = replay(store, device="r-2", dry_run=True)
        assert (only_r2.streams, only_r2.episodes) == (1, [])
        late = replay(store, since=T0 + 250 * 60, dry_run=True)
        assert late.readings == 2 * 51


def test_replay_and_evaluate_commands(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    with Store(db) as store:
        live = history(store)
    runner = CliRunner()
    out = runner.invoke(app, ["replay", "--db", str(db), "--run", "cli", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["written"] == len(live) and report["target"] == REPLAY_SET
    labels = tmp_path / "labels.csv"
    labels.write_text(f"device,metric,start,end\nr-1,temperature,{T0 + 200 * 60},{T0 + 201 * 60}\n")
    for extra in ([], ["--replay", "cli"]):
        res = runner.invoke(
            app,
            ["evaluate", "--labels", str(labels), "--db", str(db), "--json", "--stream-days", "1", *extra],
        )
        assert res.exit_code == 0, res.output
        metrics = json.loads(res.output)
        assert metrics["detected"] == 1 and metrics["events"] == 1, metrics
    bad = runner.invoke(app, ["replay", "--db", str(db), "--detector", "nope"])
    assert bad.exit_code == 2 and "unknown detector" in bad.output
    missing = runner.invoke(app, ["replay", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no database" in missing.output


def test_replay_of_a_history_with_an_outage_and_backfill_doubles_nothing(tmp_path: Path) -> None:
    """After an outage the agent sends new readings live and its backlog as backfill: the backlog
    arrives after newer readings, is scored but not learned, and its alerts are late. A replay
    must see it exactly so (issue 11: it learned everything in timestamp order and stored a
    second, non-late alert for the late one)."""
    db = tmp_path / "cloud.db"
    with Store(db) as store:
        pipeline = Pipeline(store, now=T0)

        def send(kind: str, seqs: range, msg_id: str) -> None:
            value = {s: 60.0 if s in (230, 231) else 20 + math.sin(s / 10) for s in seqs}
            rows = [(s, T0 + s * 60, "env", "temperature", value[s], "C") for s in seqs]
            payload = wire.encode_readings("r-1", "e1", rows, sent_at=T0, msg_id=msg_id)
            pipeline.ingest([Inbound(wire.device_topic("r-1", kind), payload, T0)], T0)

        for start in range(1, 201, 50):
            send("telemetry", range(start, start + 50), f"live-{start}")
        send("telemetry", range(261, 301), "live-after-outage")  # reconnected: new readings first
        send("backfill", range(201, 261), "backlog")  # then the backlog, with the spike in it
        live = sorted((a.alert_id, a.late) for a in store.list_alerts() if a.kind == "anomaly")
        assert True in {late for _, late in live}, "the spike in the backlog raised a late alert"
        dry = replay(store, dry_run=True)
        assert sorted((e.alert_id, e.late) for e in dry.episodes) == live
    out = CliRunner().invoke(app, ["replay", "--db", str(db), "--into-alerts", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["written"] == 0
    with Store(db) as store:
        assert sorted((a.alert_id, a.late) for a in store.list_alerts() if a.kind == "anomaly") == live
