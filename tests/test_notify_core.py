"""The delivery core with an explicit clock over a real queue on both backends (SQLite and a
private PostgreSQL): routing, grouping, order, leases, backoff, Retry-After, dead letters, the
rate limit, rendering, and the config's errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloud.errors import ConfigError
from cloud.notify.config import NotifyConfig, Route, SinkConfig, parse_notify
from cloud.notify.delivery import Answer, Router, SinkLane, judge
from cloud.notify.sinks import make_sink
from cloud.notify.sinks.alertmanager import am_alert
from cloud.ops.views import alert_json
from cloud.store.api import AlertRecord, Store, open_store
from cloud.store.delivery import delivery_queue

T0 = 1_767_225_600.0
OK, DOWN = Answer(200, "ok"), Answer(None, error="ConnectError: refused")


def alert(alert_id: str, device: str = "pi-1", state: str = "open", **changes: Any) -> AlertRecord:
    base = AlertRecord(
        alert_id=alert_id, device=device, sensor="room", metric="temperature", kind="anomaly",
        state=state, start=T0, end=T0 + 30 if state == "closed" else None, peak_score=0.9,
        value=35.0, expected_low=19.0, expected_high=21.0, severity="warning", late=False,
        detector="default", msg_id="m1", opened_at=T0, closed_at=T0 + 30 if state == "closed" else None,
        acked_at=None, acked_by="", note="",
    )  # fmt: skip
    return replace(base, **changes)


def sink(**changes: Any) -> SinkConfig:
    return replace(SinkConfig(name="hook", type="webhook", url="http://127.0.0.1:9/hook"), **changes)


@pytest.fixture
def store(store_url: str) -> Any:
    """A fresh store on each backend (SQLite, and a private PostgreSQL): the queue is the store's."""
    with open_store(store_url, readonly=False, create=True) as s:
        yield s


def lane_for(store: Store, config: SinkConfig, now: float = T0) -> tuple[Router, SinkLane]:
    queue = delivery_queue(store)
    return Router(NotifyConfig((config,)), queue), SinkLane(
        make_sink(config), queue, now=now, rng=random.Random(0)
    )


def enqueue(store: Store, router: Router, *alerts: AlertRecord, now: float = T0) -> int:
    with store.transaction():
        return sum(router.enqueue(a, now) for a in alerts)


def ids(lane: SinkLane, now: float) -> list[str]:
    """Take the next notification and have the receiver accept it; its transition ids."""
    n = lane.take(now)
    if n is None:
        return []
    lane.settle(n, OK, now)
    return [d.notice.transition_id for d in n.deliveries]


def test_routes_select_sinks_by_device_glob_metric_kind_and_severity(store: Store) -> None:
    queue = delivery_queue(store)
    sinks = (
        sink(name="all"),
        sink(name="pis", route=Route(devices=("pi-*",))),
        sink(name="critical", route=Route(severities=("critical",), kinds=("silent",))),
        sink(name="humidity", route=Route(metrics=("humidity",))),
    )
    router = Router(NotifyConfig(sinks), queue)
    with store.transaction():
        assert router.enqueue(alert("a1", "pi-7"), T0) == 2
        assert router.enqueue(alert("a2", "gw-1", kind="silent", severity="critical", metric=""), T0) == 2
        assert router.enqueue(alert("a1", "pi-7"), T0) == 0  # the same transition again: ignored
    statuses = {s.sink: s.queued for s in queue.status([s.name for s in sinks])}
    assert statuses == {"all": 2, "pis": 1, "critical": 1, "humidity": 0}


def test_one_devices_transitions_within_the_window_go_as_one_notification(store: Store) -> None:
    router, lane = lane_for(store, sink(group_s=10.0))
    enqueue(store, router, alert("a1"), now=T0)
    enqueue(store, router, alert("b1", device="pi-2"), now=T0 + 1)
    enqueue(store, router, alert("a2"), alert("a1", state="closed"), now=T0 + 5)
    enqueue(store, router, alert("a3"), now=T0 + 11)  # after the window: the next group
    assert ids(lane, T0 + 9) == []  # nothing is due before the window ends
    notification = lane.take(T0 + 10)
    assert notification is not None
    body = json.loads(notification.request.body)
    assert [e["transition_id"] for e in body["events"]] == ["a1.open", "a2.open", "a1.closed"]
    lane.settle(notification, OK, T0 + 10)
    assert ids(lane, T0 + 11) == ["b1.open"]
    assert ids(lane, T0 + 21) == ["a3.open"]


def test_alertmanager_takes_every_devices_due_transitions_in_one_request_still_in_order(store: Store) -> None:
    router, lane = lane_for(store, sink(type="alertmanager", url="http://am:9093"))
    enqueue(store, router, *(alert(f"a{i}", device=f"pi-{i}") for i in range(3)), now=T0)
    first = lane.take(T0)
    assert first is not None and [d.notice.transition_id for d in first.deliveries] == [
        "a0.open",
        "a1.open",
        "a2.open",
    ]
    enqueue(store, router, alert("a1", state="closed"), alert("a3", device="pi-3"), now=T0 + 1)
    assert ids(lane, T0 + 1) == ["a3.open"]  # a1's close waits for its open, still in flight
    lane.settle(first, OK, T0 + 2)
    assert ids(lane, T0 + 2) == ["a1.closed"]


def test_a_close_never_overtakes_its_open_and_a_lease_expires_for_a_lost_request(store: Store) -> None:
    router, lane = lane_for(store, sink(timeout_s=5.0, retry_base_s=1.0, retry_cap_s=1.0))
    enqueue(store, router, alert("a1"), now=T0)
    first = lane.take(T0)
    assert first is not None and first.attempts == 1
    enqueue(store, router, alert("a1", state="closed"), now=T0 + 1)
    assert ids(lane, T0 + 2) == []  # the open is in flight: its close waits
    # The process died with the request in flight: the lease (timeout + 5 s) runs out.
    again = lane.take(T0 + 10.5)
    assert again is not None and [d.notice.transition_id for d in again.deliveries] == [
        "a1.open",
        "a1.closed",
    ]
    assert again.attempts == 2
    outcome = lane.settle(again, DOWN, T0 + 11)
    assert outcome.kind == "retry" and outcome.due_at is not None and T0 + 11 <= outcome.due_at <= T0 + 12
    final = lane.take(T0 + 12)
    assert final is not None and len(final.deliveries) == 2
    lane.settle(final, OK, T0 + 12)
    (status,) = lane.queue.status(["hook"])
    assert (status.queued, status.delivered, status.retried, status.last_success_at) == (0, 2, 2, T0 + 12)


def test_answers_judged_backoff_retry_after_and_dead_letters(store: Store) -> None:
    config = sink(retry_base_s=1.0, retry_cap_s=60.0, max_retry_after_s=120.0)
    rng = random.Random(5)
    for status in (500, 502, 503, 408):  # third try failed: the ceiling is 1 s * 2 ** 2
        outcome = judge(Answer(status, "x"), 3, T0, config, rng)
        assert outcome.kind == "retry" and outcome.due_at is not None and T0 <= outcome.due_at <= T0 + 4
    assert judge(Answer(429, "", retry_after="7"), 1, T0, config, rng).due_at == T0 + 7
    assert judge(Answer(429, "", retry_after="99999"), 1, T0, config, rng).due_at == T0 + 120
    assert judge(Answer(None, error="ReadTimeout"), 1, T0, config, rng).kind == "retry"
    dead = judge(Answer(401, '{"error":"bad token"}'), 1, T0, config, rng)
    assert (dead.kind, dead.reason) == ("dead", 'HTTP 401: {"error":"bad token"}')
    assert judge(Answer(204), 1, T0, config, rng).kind == "delivered"
    late = [judge(Answer(503), n, T0, config, rng).due_at for n in range(8, 40)]
    assert all(d is not None and T0 <= d <= T0 + 60 for d in late)  # capped at retry_cap_s


def test_a_refused_delivery_is_a_dead_letter_with_the_response_and_unblocks_the_next(store: Store) -> None:
    router, lane = lane_for(store, sink())
    enqueue(store, router, alert("a1"), now=T0)
    n = lane.take(T0)
    assert n is not None
    lane.settle(n, Answer(400, "no such channel"), T0)
    enqueue(store, router, alert("a1", state="closed"), now=T0 + 1)
    assert ids(lane, T0 + 1) == ["a1.closed"]
    (status,) = lane.queue.status(["hook"])
    assert status.failed == 1 and status.dead_total == 1
    (dead,) = status.dead
    assert (dead.transition_id, dead.response, dead.error) == (
        "a1.open",
        "no such channel",
        "HTTP 400: no such channel",
    )


def test_the_rate_limit_holds_notifications_back_without_losing_them(store: Store) -> None:
    router, lane = lane_for(store, sink(rate_per_s=1.0, burst=2))
    enqueue(store, router, *(alert(f"a{i}", device=f"pi-{i}") for i in range(4)), now=T0)
    sent = [ids(lane, T0), ids(lane, T0), ids(lane, T0)]
    assert sent == [["a0.open"], ["a1.open"], []]
    assert lane.wait(T0) == 1.0
    assert ids(lane, T0 + 1) == ["a2.open"]
    assert ids(lane, T0 + 2) == ["a3.open"]


def test_webhook_body_is_the_alerts_json_with_transition_ids_signed_and_slack_text(tmp_path: Path) -> None:
    key, token = tmp_path / "key", tmp_path / "token"
    key.write_text("k3y\n")
    token.write_text("Bearer t0ken\n")
    config = sink(
        secret_file=str(key), slack_text=True, headers=(("X-Team", "ops"),),
        header_files=(("Authorization", str(token)),),
    )  # fmt: skip
    from cloud.notify.queue import Notice

    record = alert("a1", state="closed")
    notice = Notice("a1.closed", "a1", "pi-1", "closed", alert_json(record))
    request = make_sink(config).render([notice], T0)
    headers = dict(request.headers)
    assert headers["Authorization"] == "Bearer t0ken" and headers["X-Team"] == "ops"
    expected = "sha256=" + hmac.new(b"k3y", request.body, hashlib.sha256).hexdigest()
    assert headers["X-Edgewatch-Signature"] == expected
    body = json.loads(request.body)
    (event,) = body["events"]
    assert event == {
        **json.loads(json.dumps(alert_json(record))),
        "transition_id": "a1.closed",
        "transition": "closed",
    }
    assert body["text"].startswith(":white_check_mark: [warning] closed: temperature on pi-1/room was 35")
    with pytest.raises(ConfigError, match="secret_file: cannot read"):
        make_sink(sink(secret_file=str(tmp_path / "missing")))


def test_alertmanager_gets_each_alerts_latest_state_with_ends_at_once_closed() -> None:
    from cloud.notify.queue import Notice

    opened, closed = alert_json(alert("a1")), alert_json(alert("a1", state="closed"))
    request = make_sink(replace(sink(type="alertmanager"), url="http://am:9093/")).render(
        [
            Notice("a1.open", "a1", "pi-1", "open", opened),
            Notice("a1.closed", "a1", "pi-1", "closed", closed),
        ],
        T0,
    )
    assert request.url == "http://am:9093/api/v2/alerts"
    (posted,) = json.loads(request.body)
    assert posted == am_alert(closed) and posted["endsAt"] == "2026-01-01T00:00:30.000Z"
    assert posted["annotations"]["expected_range"] == "19..21" and posted["annotations"]["value"] == "35"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"sinks": [{"name": "a", "type": "pager", "url": "http://x"}]}, "unknown sink type 'pager'"),
        ({"sinks": [{"name": "a", "type": "webhook", "url": "ftp://x"}]}, "url must be an http"),
        ({"sinks": [{"name": "a", "type": "webhook"}]}, "notify.sinks[0].url is required"),
        (
            {"sinks": [{"name": "a", "type": "webhook", "url": "http://x", "tok": 1}]},
            "unknown key notify.sinks[0].tok",
        ),
        (
            {"sinks": [{"name": "a", "type": "webhook", "url": "http://x", "route": {"device": []}}]},
            "route.device",
        ),
        (
            {"sinks": [{"name": "a", "type": "webhook", "url": "http://x", "rate_per_s": 0}]},
            "rate_per_s must be > 0",
        ),
        ({"sinks": [{"name": "a", "type": "webhook", "url": "http://x"}] * 2}, "'a' is used twice"),
    ],
)
def test_bad_notify_tables_name_the_key(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_notify(table)
    assert error in str(info.value)


def test_a_notify_table_in_cloud_toml_reaches_the_aggregator_config(tmp_path: Path) -> None:
    from cloud.service.config import load_config

    path = tmp_path / "cloud.toml"
    path.write_text(
        '[aggregator]\ndb = "x.db"\n[notify]\npoll_s = 0.2\n'
        '[[notify.sinks]]\nname = "am"\ntype = "alertmanager"\n'
        'url = "http://127.0.0.1:9093"\ngroup_s = 30\n[notify.sinks.route]\ndevices = ["pi-*"]\n'
    )
    notify = load_config(path).notify
    assert notify.poll_s == 0.2
    assert notify.sink("am").route == Route(devices=("pi-*",)) and notify.sink("am").group_s == 30.0
    path.write_text('[[notify.sinks]]\nname = "am"\ntype = "alertmanager"\n')
    with pytest.raises(ConfigError, match=r"cloud.toml: notify.sinks\[0\].url is required"):
        load_config(path)


def test_webhook_body_golden_bytes() -> None:
    """The webhook's wire format (devices.wire.encode_webhook): a change to these bytes is deliberate."""
    from cloud.notify.queue import Notice

    notices = [
        Notice(f"a1.{state}", "a1", "pi-1", state, alert_json(alert("a1", state=state)))
        for state in ("open", "closed")
    ]
    request = make_sink(sink(slack_text=True)).render(notices, T0)
    golden = Path(__file__).parent / "golden" / "webhook_v1.1.json"
    assert request.body == golden.read_bytes().rstrip(b"\n")


def test_the_readmes_cloud_toml_example_is_a_valid_notify_table() -> None:
    import tomllib

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index("# cloud.toml, beside the [aggregator] table") :]
    notify = parse_notify(tomllib.loads(block[: block.index("```")])["notify"])
    assert [s.name for s in notify.sinks] == ["oncall", "chat"]
    assert notify.sink("chat").route.devices == ("greenhouse-*",)
