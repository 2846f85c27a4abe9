"""Alert delivery through real parts: mosquitto, the aggregator, prometheus-alertmanager and a
webhook receiver that fails on purpose (down, 500, 429 with Retry-After, 400).

EDGEWATCH_NOTIFY_PHASE_S sets how long the receiver stays in each failure phase (default 1.5 s;
e.g. 30 for the issue's manual run).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.notify.config import NotifyConfig, Route, SinkConfig
from cloud.notify.ops import synthetic_alert
from cloud.notify.queue import Notice
from cloud.notify.sinks import make_sink
from cloud.ops.views import alert_json
from cloud.store.api import open_store
from cloud.store.delivery import delivery_queue
from tests.mosquitto import Mosquitto
from tests.notify_helpers import ALERTMANAGER, Alertmanager, Receiver, publish_spiky
from tests.test_aggregator import FakeAgent, fast_config, running, wait_for

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
PHASE_S = float(os.environ.get("EDGEWATCH_NOTIFY_PHASE_S", "1.5"))
N, SPIKES = 400, (300, 360)


def webhook(receiver: Receiver, **changes: Any) -> NotifyConfig:
    settings: dict[str, Any] = {"timeout_s": 1.0, "group_s": 0.3, "retry_base_s": 0.2, "retry_cap_s": 0.5}
    sink = SinkConfig(name="hook", type="webhook", url=receiver.url, **(settings | changes))
    return NotifyConfig((sink,), poll_s=0.05)


def expected_transitions(db: str | Path) -> dict[str, list[str]]:
    """alert_id -> its transition ids in order, from the store."""
    with open_store(db, readonly=True) as store:
        alerts = store.list_alerts(limit=1000)
    out: dict[str, list[str]] = {}
    for a in alerts:
        out[a.alert_id] = [f"{a.alert_id}.open"] + ([f"{a.alert_id}.closed"] if a.state == "closed" else [])
    return out


def delivered_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for r in receiver.accepted() for e in r.json()["events"]]


def _exists(db: str | Path) -> bool:
    return str(db).startswith("postgresql:") or Path(db).exists()


def count_alerts(db: str | Path, state: str | None = None) -> int:
    """Alerts in the store, through its read model."""
    if not _exists(db):
        return 0
    with open_store(db, readonly=True) as store:
        return len(store.list_alerts(state=state, limit=10_000))


def queue_rows(db: str | Path, state: str = "pending", sink: str = "hook") -> int:
    """Transitions queued (or, with state "dead", dead-lettered) for one sink."""
    if not _exists(db):
        return 0
    with open_store(db, readonly=True) as store:
        (status,) = delivery_queue(store).status([sink], dead_limit=0)
    return status.queued if state == "pending" else status.dead_total


@pytest.fixture
def alertmanager(tmp_path: Path) -> Any:
    if not ALERTMANAGER:
        pytest.fail("prometheus-alertmanager is not installed: run scripts/setup.sh as root")
    am = Alertmanager(tmp_path / "alertmanager")
    am.start()
    try:
        yield am
    finally:
        am.stop()


def test_a_spike_fires_in_alertmanager_with_its_labels_resolves_there_and_is_relearned_after_a_restart(
    broker: Mosquitto, alertmanager: Alertmanager, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    sink = SinkConfig(
        name="am", type="alertmanager", url=alertmanager.url, resend_s=0.5, retry_base_s=0.2,
        retry_cap_s=0.5, route=Route(devices=("pi-*",), kinds=("anomaly",)),
    )  # fmt: skip
    t0 = time.time() - N - 10
    with running(fast_config(broker, db, notify=NotifyConfig((sink,), poll_s=0.05))):
        agent = FakeAgent(broker, "am-agent")
        publish_spiky(agent, ["pi-am", "gw-other"], N, (300,), stop=302, t0=t0)  # the spike, still open
        wait_for(lambda: len(alertmanager.alerts()) == 1, what="the alert firing in alertmanager")
        (fired,) = alertmanager.alerts()
        with open_store(db, readonly=True) as store:
            (alert,) = store.list_alerts(device="pi-am")
            assert len(store.list_alerts(device="gw-other")) == 1  # raised, but not routed to "am"
        assert fired["labels"] == {
            "alertname": "EdgewatchAnomaly", "device": "pi-am", "sensor": "sys", "metric": "temp",
            "kind": "anomaly", "severity": "warning", "alert_id": alert.alert_id,
        }  # fmt: skip
        notes = fired["annotations"]
        assert notes["command"] == f"edgewatch alerts show {alert.alert_id}"
        assert alert.value is not None and notes["value"] == f"{alert.value:.6g}"
        assert "expected_range" in notes and "temp on pi-am/sys" in notes["explanation"]
        assert fired["status"]["state"] == "active"

        # A restarted Alertmanager with empty storage learns the open alert from the re-post.
        alertmanager.stop()
        alertmanager.start(storage="fresh")
        wait_for(lambda: len(alertmanager.alerts()) == 1, what="the open alert re-posted")

        publish_spiky(agent, ["pi-am", "gw-other"], N, (300,), start=302, t0=t0)  # the episode closes
        wait_for(lambda: count_alerts(db, "closed") == 2, what="closed")
        wait_for(lambda: alertmanager.alerts() == [], what="resolved in alertmanager")
        wait_for(lambda: queue_rows(db, sink="am") == 0, what="queue drained")
        agent.close()
    assert queue_rows(db, "dead", sink="am") == 0


def test_a_webhook_down_then_500_then_429_then_up_gets_every_transition_once_in_order(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    receiver = Receiver()  # down: connection refused
    devices = ["pi-a", "pi-b", "pi-c"]
    try:
        with running(fast_config(broker, db, notify=webhook(receiver))) as aggregator:
            agent = FakeAgent(broker, "hook-agent")
            publish_spiky(agent, devices, N, SPIKES, t0=time.time() - N - 10)
            wait_for(lambda: agent.acked_count("pi-c", "e1") == N, what="all stored")
            wait_for(
                lambda: count_alerts(db, "open") == 0 and count_alerts(db) >= len(devices),
                what="every episode closed",
            )
            metrics = aggregator.metrics.registry

            def gauge(name: str) -> float:
                return metrics.get_sample_value(name, {"sink": "hook"}) or 0.0

            queued = 2 * count_alerts(db)
            wait_for(lambda: gauge("edgewatch_notify_queue_depth") == queued, what="queue depth exported")
            assert gauge("edgewatch_notify_oldest_undelivered_seconds") > 0
            time.sleep(PHASE_S)
            receiver.up("500")
            time.sleep(PHASE_S)
            receiver.mode = "429"
            time.sleep(PHASE_S)
            receiver.mode = "ok"
            wait_for(lambda: queue_rows(db) == 0, timeout=30, what="every delivery made")
            wait_for(lambda: gauge("edgewatch_notify_queue_depth") == 0, what="queue depth back to 0")
            delivered = gauge("edgewatch_notify_delivered_total")
            assert gauge("edgewatch_notify_retried_total") > 0 and gauge("edgewatch_notify_failed_total") == 0
            agent.close()
    finally:
        receiver.down()
    expected = expected_transitions(db)
    events = delivered_events(receiver)
    first_seen: list[str] = []
    for e in events:
        if e["transition_id"] not in first_seen:
            first_seen.append(e["transition_id"])
    assert sorted(first_seen) == sorted(t for ts in expected.values() for t in ts)
    for alert_id, transitions in expected.items():  # in order per alert
        assert [t for t in first_seen if t.startswith(alert_id + ".")] == transitions
    assert {500, 429, 200} <= set(receiver.statuses())
    assert delivered == len(first_seen)
    # Grouping: one device's transitions (here an episode's open and close) share a notification.
    assert any(
        len({e["device"] for e in r.json()["events"]}) == 1 < len(r.json()["events"])
        for r in receiver.accepted()
    )
    event = next(e for e in events if e["transition"] == "closed")
    assert {"alert_id", "device", "metric", "start", "end_iso", "duration", "acked"} <= set(event)
    assert queue_rows(db, "dead") == 0


def test_sigkilled_with_deliveries_queued_the_restarted_aggregator_delivers_them_all(
    broker: Mosquitto, tmp_path: Path, store_url: str
) -> None:
    """On both backends: the queue lives in the store, SQLite or PostgreSQL."""
    db = store_url
    receiver = Receiver()
    config = tmp_path / "cloud.toml"
    config.write_text(
        "[aggregator]\n"
        f'broker = "{broker.url}"\n'
        f'db = "{db}"\n'
        "ack_interval = 0.1\ntick_interval = 0.2\nbatch_linger = 0.005\n"
        "reconnect_base = 1.5\nreconnect_cap = 1\n"
        "[notify]\npoll_s = 0.05\n"
        "[[notify.sinks]]\n"
        'name = "hook"\ntype = "webhook"\n'
        f'url = "{receiver.url}"\n'
        "timeout_s = 1.0\nretry_base_s = 0.2\nretry_cap_s = 0.5\n"
    )
    log = tmp_path / "aggregator.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "edgewatch", "cloud", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    devices = ["k-0", "k-1"]
    first = start()
    agent = FakeAgent(broker, "kill-agent")
    second: subprocess.Popen[bytes] | None = None
    try:
        # Readings sent before it subscribes would only come back as backfill (scored, never learned).
        wait_for(lambda: log.exists() and "connected to" in log.read_text(), what="aggregator subscribed")
        publish_spiky(agent, devices, N, SPIKES, t0=time.time() - N - 10)
        wait_for(
            lambda: agent.resend_unacked(older_than=1.0) >= 0 and agent.acked_count("k-1", "e1") == N,
            timeout=30,
            what="all stored",
        )
        wait_for(
            lambda: count_alerts(db, "open") == 0 and queue_rows(db) == 2 * count_alerts(db) > 0,
            what="every transition queued",
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        receiver.up("ok")
        second = start()
        wait_for(lambda: queue_rows(db) == 0, timeout=30, what="the queue delivered after the restart")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        agent.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.down()
    expected = expected_transitions(db)
    got = [e["transition_id"] for e in delivered_events(receiver)]
    assert sorted(set(got)) == sorted(t for ts in expected.values() for t in ts)
    for alert_id, transitions in expected.items():
        assert [t for t in dict.fromkeys(got) if t.startswith(alert_id + ".")] == transitions


def test_a_400_puts_the_delivery_in_the_sinks_dead_letters_with_the_response_shown_by_notify_status(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    receiver = Receiver()
    receiver.error_body = '{"error": "unknown channel #ops"}'
    receiver.up("400")
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'[aggregator]\ndb = "{db}"\n'
        f'[[notify.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
    )
    try:
        with running(fast_config(broker, db, notify=webhook(receiver, group_s=0.0))):
            agent = FakeAgent(broker, "dead-agent")
            publish_spiky(agent, ["pi-x"], N, (300,), stop=302, t0=time.time() - N - 10)
            wait_for(lambda: queue_rows(db, "dead") == 1, what="the open transition dead-lettered")
            agent.close()
            out = subprocess.run(
                [sys.executable, "-m", "edgewatch", "notify", "status", "--config", str(config), "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
            text = subprocess.run(
                [sys.executable, "-m", "edgewatch", "notify", "status", "--config", str(config)],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
    finally:
        receiver.down()
    (status,) = json.loads(out)
    assert (status["sink"], status["queued"], status["failed"], status["dead_total"]) == ("hook", 0, 1, 1)
    (dead,) = status["dead"]
    assert dead["response"] == '{"error": "unknown channel #ops"}'
    assert dead["error"].startswith("HTTP 400") and dead["transition_id"].endswith(".open")
    assert status["last_error"].startswith("HTTP 400") and status["last_success_at"] is None
    assert "1 dead letters" in text and "unknown channel #ops" in text
    assert receiver.statuses() == [400]  # refused once: never retried


def test_notify_test_sends_one_synthetic_alert_and_prints_the_answer(
    alertmanager: Alertmanager, tmp_path: Path
) -> None:
    receiver = Receiver()
    receiver.up("ok")
    secret = tmp_path / "hmac.key"
    secret.write_text("s3cret\n")
    token = tmp_path / "token"
    token.write_text("Bearer abc\n")
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'[aggregator]\ndb = "{tmp_path / "cloud.db"}"\n'
        f'[[notify.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
        f'secret_file = "{secret}"\nslack_text = true\nheader_files = {{ Authorization = "{token}" }}\n'
        f'[[notify.sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{alertmanager.url}"\n'
    )

    def notify_test(sink: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgewatch", "notify", "test", "--sink", sink, "--config", str(config)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    try:
        ok = notify_test("hook")
        receiver.mode = "500"
        failed = notify_test("hook")
    finally:
        receiver.down()
    assert (ok.returncode, ok.stdout.strip()) == (0, "hook: HTTP 200: ok")
    assert (failed.returncode, failed.stdout.strip()) == (1, "hook: HTTP 500: internal error")
    first = receiver.requests[0]
    assert first.headers["Authorization"] == "Bearer abc"
    assert (
        first.headers["X-Edgewatch-Signature"]
        == "sha256=" + hmac.new(b"s3cret", first.body, hashlib.sha256).hexdigest()
    )
    body = first.json()
    assert body["events"][0]["device"] == "edgewatch-notify-test" and "edgewatch-notify-test" in body["text"]
    am = notify_test("am")
    assert am.returncode == 0, am.stderr
    wait_for(lambda: len(alertmanager.alerts()) == 1, what="the test alert in alertmanager")
    assert alertmanager.alerts()[0]["labels"]["device"] == "edgewatch-notify-test"
    unknown = notify_test("nope")
    assert unknown.returncode == 1 and "no notify sink named 'nope' (known: hook, am)" in unknown.stderr


def test_the_shipped_alertmanager_route_pages_for_silent_devices_and_holds_back_their_anomalies(
    tmp_path: Path,
) -> None:
    """deploy/alertmanager/alertmanager.yml (the README's example) loaded by a real Alertmanager."""
    if not ALERTMANAGER:
        pytest.fail("prometheus-alertmanager is not installed: run scripts/setup.sh as root")
    am = Alertmanager(tmp_path / "am", config=REPO / "deploy" / "alertmanager" / "alertmanager.yml")
    am.start()
    try:
        now = time.time()
        silent = alert_json(synthetic_alert(now))
        silent |= {"alert_id": "s1", "device": "pi-9", "kind": "silent", "severity": "critical", "metric": ""}
        anomaly = alert_json(synthetic_alert(now)) | {"alert_id": "a1", "device": "pi-9"}
        other = alert_json(synthetic_alert(now)) | {"alert_id": "a2", "device": "pi-8"}
        sink = make_sink(SinkConfig(name="am", type="alertmanager", url=am.url))
        notices = [
            Notice(f"{a['alert_id']}.open", a["alert_id"], a["device"], "open", a)
            for a in (silent, anomaly, other)
        ]
        request = sink.render(notices, now)
        assert httpx.post(request.url, content=request.body, headers=list(request.headers)).status_code == 200

        def by_id() -> dict[str, dict[str, Any]]:
            return {a["labels"]["alert_id"]: a for a in am.alerts()}

        wait_for(
            lambda: by_id().get("a1", {}).get("status", {}).get("state") == "suppressed", what="inhibition"
        )
        alerts = by_id()
    finally:
        am.stop()
    assert [r["name"] for r in alerts["s1"]["receivers"]] == ["oncall"]
    assert [r["name"] for r in alerts["a2"]["receivers"]] == ["team-chat"]
    assert alerts["a2"]["status"]["state"] == "active"
    assert alerts["a1"]["status"]["inhibitedBy"]
