"""The mean-shift question (`cloud.detect.shift`): what it adds to the default, and what it must not.

The contract every detector keeps (determinism, checkpoints, NaN, bounded state, warm-up) runs
over "shift" in tests/test_detectors.py; these are the behaviours of this detector itself.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.detect import detector_from_bytes, make_detector
from cloud.detect.base import Verdict
from cloud.detect.sensor import WARMUP
from cloud.detect.shift import BOOST, BOOST_TAU, SHIFT_QUIET, MeanShift
from edgewatch.app import app

T0 = 1_704_067_200.0


def noisy(n: int, *, seed: int, shift_at: int | None = None, shift: float = 0.0) -> list[float]:
    """A 1 Hz sensor: Gaussian noise of sigma 1 around 50, and an optional step."""
    rng = random.Random(seed)
    return [
        50.0 + (shift if shift_at is not None and i >= shift_at else 0.0) + rng.gauss(0.0, 1.0)
        for i in range(n)
    ]


def verdicts(name: str, values: list[float]) -> list[Verdict]:
    det = make_detector(name)
    return [det.process(T0 + i, v) for i, v in enumerate(values)]


def test_a_shift_below_the_point_threshold_is_alerted_once_then_learned() -> None:
    """A 2-sigma step: no single reading stands out (the default stays quiet), the mean does."""
    values = noisy(3000, seed=11, shift_at=1500, shift=2.0)
    assert not any(v.anomalous for v in verdicts("sensor", values)[1500:1560])
    found = verdicts("shift", values)
    alarms = [i for i, v in enumerate(found) if v.anomalous]
    assert len(alarms) == 1 and 1500 <= alarms[0] < 1560, alarms  # once, within a minute
    v = found[alarms[0]]
    assert v.kind == "level_shift" and v.score >= 0.5
    assert v.evidence.startswith("the mean of the last 20 readings is 5") and "{unit}" in v.evidence
    assert "above the expected 50" in v.evidence
    assert v.expected_low is not None and v.expected_high is not None
    assert v.expected_low < 50.0 < v.expected_high < 52.0  # where the mean was expected, not the new level


def test_the_same_stream_without_the_shift_raises_nothing() -> None:
    for seed in (1, 2, 3):
        assert not any(v.anomalous for v in verdicts("shift", noisy(3000, seed=seed)))


def test_each_alarm_raises_the_streams_threshold_for_a_while() -> None:
    """The per-stream budget: a stream whose mean jumps by habit gets a higher threshold after
    each alarm, and the raise fades over BOOST_TAU."""
    ms = MeanShift()
    ms.set_sampling(1.0)
    rng = random.Random(4)
    mean = [10.0] * 1000 + [11.0] * 200
    assert [i for i, m in enumerate(mean) if ms.update(float(i), rng.gauss(m, 1.0), 0.05, 1.0) >= 1.0]
    raised = ms.limit() / ms.cal.threshold
    assert raised == pytest.approx(BOOST, rel=0.01)
    for i in range(1200, 1200 + 86_400 // 60):  # a day at one reading a minute
        ms.update(60.0 * i, rng.gauss(11.0, 1.0), 0.05, 60.0)
    faded = ms.limit() / ms.cal.threshold
    assert 1.0 < faded < raised
    assert faded - 1.0 == pytest.approx((BOOST - 1.0) * math.exp(-86_400 / BOOST_TAU), rel=0.05)


def test_no_shift_alert_before_the_question_has_calibrated() -> None:
    values = noisy(1000, seed=7, shift_at=200, shift=3.0)
    found = verdicts("shift", values)
    assert not any(v.anomalous and v.kind == "level_shift" for v in found[: WARMUP + SHIFT_QUIET])


def test_alerts_of_the_default_stand_and_are_not_repeated_as_a_shift() -> None:
    """A 12-sigma step is the default's (a spike, then its new regime); the mean question
    learns it instead of opening a second alert a few readings later."""
    values = noisy(3000, seed=13, shift_at=1500, shift=12.0)
    default, shift = verdicts("sensor", values), verdicts("shift", values)
    first = min(i for i, v in enumerate(default) if v.anomalous and i >= 1500)
    assert shift[first] == default[first]
    assert not any(v.kind == "level_shift" and "the mean of" in v.evidence for v in shift[1500:])


def test_a_checkpoint_taken_after_an_alarm_resumes_its_hold() -> None:
    values = noisy(2000, seed=11, shift_at=1500, shift=2.0)
    det = make_detector("shift")
    found = [det.process(T0 + i, v) for i, v in enumerate(values[:1560])]
    assert any(v.kind == "level_shift" for v in found[1500:])
    restored = detector_from_bytes(det.to_bytes())
    rest = [(T0 + i, v) for i, v in enumerate(values[1560:], 1560)]
    assert [restored.process(t, v) for t, v in rest] == [det.process(t, v) for t, v in rest]


def test_detect_command_reports_the_shift_with_its_kind_and_evidence(tmp_path: Path) -> None:
    """Through the real command line: `edgewatch detect --detector shift` on a CSV."""
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    values = noisy(3000, seed=11, shift_at=1500, shift=2.0)
    with src.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "value"])
        out.writerows([f"{T0 + i:.0f}", f"{v:.4f}"] for i, v in enumerate(values))
    result = CliRunner().invoke(app, ["detect", str(src), "-o", str(dst), "--json", "--detector", "shift"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    [episode] = summary["episodes"]
    assert episode["kind"] == "level_shift" and "the mean of the last 20 readings" in episode["evidence"]
    assert 1500 <= episode["start"] - T0 < 1560
    assert all(math.isfinite(float(r["score"])) for r in csv.DictReader(dst.open()))


def test_a_checkpoint_of_the_old_default_resumes_inside_the_new_one() -> None:
    """Before the mean-shift question, `default` was a bare SensorDetector: its checkpoints keep
    their level, scale and calibration as the inside of today's default."""
    from cloud.detect import CheckpointError, detector_to_bytes, resume_detector
    from cloud.detect.shift import ShiftAwareDetector

    values = noisy(600, seed=3)
    old = make_detector("sensor")
    for i, v in enumerate(values):
        old.process(T0 + i, v)
    twin = make_detector("sensor")
    for i, v in enumerate(values):
        twin.process(T0 + i, v)
    resumed = resume_detector(detector_to_bytes(old), "default")
    assert isinstance(resumed, ShiftAwareDetector)
    later = [(T0 + 600 + i, 50.0 + (30.0 if i == 50 else 0.0)) for i in range(100)]
    inner_verdicts = [resumed.inner.score_one(ts, v) for ts, v in later[:1]]
    assert inner_verdicts == [twin.score_one(*later[0])]  # the same state, carried over
    assert any(resumed.process(ts, v).anomalous for ts, v in later)  # and it still alerts
    with pytest.raises(CheckpointError, match="EwmaDetector"):
        resume_detector(detector_to_bytes(make_detector("ewma")), "default")
