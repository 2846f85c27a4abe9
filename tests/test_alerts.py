"""The alert state machines with a fake clock: pure, so every case runs in microseconds."""

from __future__ import annotations

import json

import pytest

from cloud.alerts.episodes import (
    EpisodePolicy,
    EpisodeTracker,
    Phase,
    Presence,
    SilencePolicy,
    SilenceWatch,
    alert_id,
)
from cloud.detect.base import Verdict
from devices.model import AlertState

NORMAL = Verdict(0.1, False, 0.0, 10.0)


def bad(score: float = 0.9) -> Verdict:
    return Verdict(score, True, 0.0, 10.0)


def feed(tracker: EpisodeTracker, verdicts: list[tuple[float, float, Verdict]]) -> list[AlertState | None]:
    out = []
    for ts, value, verdict in verdicts:
        t = tracker.observe(ts, value, verdict, msg_id=f"m{ts:g}")
        out.append(t.state if t else None)
    return out


def test_one_episode_opens_on_first_anomaly_and_closes_after_n_normal() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=3, close_after_seconds=0))
    states = feed(
        tracker,
        [
            *[(1, 5, NORMAL), (2, 50, bad(0.8)), (3, 70, bad(0.95)), (4, 60, bad(0.9))],
            *[(5, 5, NORMAL), (6, 5, NORMAL), (7, 5, NORMAL), (8, 5, NORMAL)],
        ],
    )
    assert states == [None, AlertState.OPEN, None, None, None, None, AlertState.CLOSED, None]
    assert tracker.phase is Phase.NORMAL


def test_closed_episode_reports_peak_value_range_start_end_and_opening_message() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=2, close_after_seconds=0))
    opened = tracker.observe(10.0, 50.0, Verdict(0.7, True, 1.0, 9.0), msg_id="first")
    tracker.observe(11.0, 90.0, Verdict(0.99, True, 2.0, 8.0), msg_id="second")
    tracker.observe(12.0, 60.0, Verdict(0.8, True, 3.0, 7.0), msg_id="third")
    tracker.observe(13.0, 5.0, NORMAL)
    closed = tracker.observe(14.0, 5.0, NORMAL)
    assert opened is not None and closed is not None
    assert (opened.start, opened.end, opened.peak_score, opened.value) == (10.0, None, 0.7, 50.0)
    assert closed.state is AlertState.CLOSED
    assert (closed.start, closed.end, closed.peak_score, closed.value) == (10.0, 13.0, 0.99, 90.0)
    assert (closed.expected_low, closed.expected_high) == (2.0, 8.0)
    assert closed.msg_id == "first"


def test_an_anomaly_during_recovery_resets_the_count() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=2, close_after_seconds=0))
    states = feed(tracker, [(1, 50, bad()), (2, 5, NORMAL), (3, 50, bad()), (4, 5, NORMAL), (5, 5, NORMAL)])
    assert states == [AlertState.OPEN, None, None, None, AlertState.CLOSED]


def test_a_long_quiet_time_closes_a_slow_stream() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=100, close_after_seconds=60))
    assert feed(tracker, [(0, 50, bad()), (30, 5, NORMAL), (61, 5, NORMAL)]) == [
        AlertState.OPEN,
        None,
        AlertState.CLOSED,
    ]


def test_tracker_state_round_trips_through_json() -> None:
    policy = EpisodePolicy(close_after=2, close_after_seconds=0)
    tracker = EpisodeTracker(policy)
    feed(tracker, [(1, 50, bad(0.8)), (2, 5, NORMAL)])
    restored = EpisodeTracker.from_state(json.loads(json.dumps(tracker.to_state())), policy)
    assert restored.to_state() == tracker.to_state()
    # Both continue identically: the next normal reading closes the same episode.
    a = tracker.observe(3, 5, NORMAL)
    b = restored.observe(3, 5, NORMAL)
    assert a == b and a is not None and a.state is AlertState.CLOSED


def test_the_peak_shows_its_own_range_and_reason_and_the_opening_kind_stays() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=2, close_after_seconds=0))
    shift = Verdict(0.7, True, 807.0, 906.5, "level_shift", "value 0 {unit}, 40 steps below")
    opened = tracker.observe(10.0, 0.0, shift, msg_id="m")
    # The peak's verdict has no range: the opening's 807..906.5 must not stay beside its value.
    tracker.observe(11.0, -486.0, Verdict(0.99, True, None, None, "dip", "value -486 {unit}, far below"))
    tracker.observe(12.0, 0.0, Verdict(0.8, True, 0.0, 1.0, "level_shift", "smaller"))  # not a peak
    tracker.observe(13.0, 850.0, NORMAL)
    closed = tracker.observe(14.0, 850.0, NORMAL)
    assert opened is not None and closed is not None
    assert (opened.kind, opened.evidence, opened.opening_evidence, opened.peak_ts) == (
        "level_shift", "value 0 {unit}, 40 steps below", "value 0 {unit}, 40 steps below", 10.0,
    )  # fmt: skip
    assert (opened.value, opened.expected_low, opened.expected_high) == (0.0, 807.0, 906.5)
    assert (closed.value, closed.peak_ts) == (-486.0, 11.0)
    assert (closed.expected_low, closed.expected_high) == (None, None)
    assert (closed.kind, closed.evidence) == ("level_shift", "value -486 {unit}, far below")
    assert closed.opening_evidence == "value 0 {unit}, 40 steps below"


def test_an_older_reading_arriving_late_never_ends_an_episode_before_it_began() -> None:
    tracker = EpisodeTracker(EpisodePolicy(close_after=2, close_after_seconds=0))
    feed(tracker, [(1000, 50, bad()), (10, 5, NORMAL)])  # an agent's resend of an old reading
    closed = tracker.observe(1001, 5, NORMAL)
    assert closed is not None and (closed.start, closed.end) == (1000, 1000)


@pytest.mark.parametrize(
    ("value", "verdict", "reason"),
    [
        (50.0, Verdict(0.9, True, 0.0, 10.0), "value 50 {unit}, above the expected 0..10 {unit}"),
        (-3.0, Verdict(0.9, True, 0.0, 10.0), "value -3 {unit}, below the expected 0..10 {unit}"),
        (
            5.0,
            Verdict(0.6, True, 0.0, 10.0),
            "value 5 {unit}, inside the expected 0..10 {unit}: only the detector's score (0.60, 0.5 is"
            " anomalous) flags it",
        ),
        (
            5.0,
            Verdict(0.6, True),
            "value 5 {unit}: only the detector's score (0.60, 0.5 is anomalous) flags it",
        ),
    ],
)
def test_a_verdict_without_evidence_still_gets_a_reason(value: float, verdict: Verdict, reason: str) -> None:
    opened = EpisodeTracker().observe(1.0, value, verdict)
    assert opened is not None
    assert (opened.kind, opened.evidence, opened.opening_evidence) == ("", reason, reason)


def test_a_checkpoint_from_before_kind_and_evidence_still_loads() -> None:
    """The state an older release wrote (no kind, evidence or peak_ts keys), mid-episode."""
    old = {
        "expected_high": 10.0, "expected_low": 0.0, "last_anomalous": 2.0, "msg_id": "m1",
        "normal_run": 1, "peak_score": 0.9, "peak_value": 50.0, "phase": "open", "recovered_at": 3.0,
        "start": 1.0,
    }  # fmt: skip
    tracker = EpisodeTracker.from_state(old, EpisodePolicy(close_after=2, close_after_seconds=0))
    closed = tracker.observe(4.0, 5.0, NORMAL)
    assert closed is not None and closed.state is AlertState.CLOSED
    assert (closed.start, closed.end, closed.value, closed.expected_low, closed.expected_high) == (
        1.0, 3.0, 50.0, 0.0, 10.0,
    )  # fmt: skip
    assert (closed.kind, closed.evidence, closed.opening_evidence, closed.peak_ts) == ("", "", "", None)


def test_alert_id_is_deterministic_and_distinguishes_streams_and_lateness() -> None:
    base = alert_id("pi-1", "cpu", "temp", "anomaly", 1.5)
    assert base == alert_id("pi-1", "cpu", "temp", "anomaly", 1.5)
    others = {
        alert_id("pi-2", "cpu", "temp", "anomaly", 1.5),
        alert_id("pi-1", "gpu", "temp", "anomaly", 1.5),
        alert_id("pi-1", "cpu", "load", "anomaly", 1.5),
        alert_id("pi-1", "cpu", "temp", "silent", 1.5),
        alert_id("pi-1", "cpu", "temp", "anomaly", 1.6),
        alert_id("pi-1", "cpu", "temp", "anomaly", 1.5, late=True),
    }
    assert base not in others and len(others) == 6


# ---------------------------------------------------------------------------------------------
# silence


def test_silent_after_timeout_then_closed_when_heard_again() -> None:
    watch = SilenceWatch(SilencePolicy(silent_after=10, factor=3))
    assert watch.seen("d", 100.0) is None
    assert watch.check(109.0) == []
    opened = watch.check(110.5)
    assert [(t.device, t.state, t.start, t.reason) for t in opened] == [
        ("d", AlertState.OPEN, 100.0, "timeout")
    ]
    assert watch.check(200.0) == []  # one episode, not one per check
    closed = watch.seen("d", 201.0)
    assert closed is not None and closed.state is AlertState.CLOSED
    assert (closed.start, closed.end, closed.alert_id) == (100.0, 201.0, opened[0].alert_id)


def test_expected_interval_stretches_the_threshold_for_slow_devices() -> None:
    watch = SilenceWatch(SilencePolicy(silent_after=10, factor=3))
    for t in range(0, 160, 8):  # a device reporting every 8 s: overdue after 24 s, not 10
        watch.seen("slow", float(t))
    assert watch.threshold("slow") == pytest.approx(24.0, rel=0.05)
    assert watch.check(152.0 + 20) == []
    assert len(watch.check(152.0 + 25)) == 1


def test_last_will_opens_at_once_and_clean_shutdown_never_alerts() -> None:
    watch = SilenceWatch(SilencePolicy(silent_after=10))
    watch.seen("a", 0.0)
    watch.seen("b", 0.0)
    will = watch.will("a", 1.0)
    assert will is not None and (will.state, will.start, will.reason) == (AlertState.OPEN, 1.0, "will")
    assert watch.will("a", 2.0) is None  # the broker may repeat a retained will
    assert watch.shutdown("b", 1.0) is None
    assert watch.check(1000.0) == []  # a stopped device is expected to be quiet
    assert watch.phase("b") is Presence.STOPPED
    assert watch.seen("b", 1001.0) is None  # back online, no alert to close
    assert watch.phase("b") is Presence.ONLINE


def test_restore_gives_a_grace_period_and_keeps_open_episodes() -> None:
    watch = SilenceWatch(SilencePolicy(silent_after=10))
    watch.restore("up", Presence.ONLINE, 500.0)
    watch.restore("gone", Presence.SILENT, 500.0, since=100.0)
    assert watch.check(505.0) == []
    assert [t.device for t in watch.check(511.0)] == ["up"]
    returned = watch.seen("gone", 600.0)
    assert returned is not None and returned.start == 100.0 and returned.state is AlertState.CLOSED
