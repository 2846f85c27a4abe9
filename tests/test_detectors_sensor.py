"""What the default detector is for: sensor faults found, sensor habits not alarmed on."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from statistics import NormalDist

import pytest

from cloud.detect import make_detector
from cloud.detect.base import Verdict
from cloud.detect.calibrate import TailThreshold
from cloud.detect.sensor import QUIET, SensorDetector
from simulators.signals import PowerModel, TemperatureModel

T0 = 1_704_067_200.0


def noisy(n: int, *, seed: int = 1, scale: float = 1.0, offset: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [offset + scale * (20.0 + math.sin(i / 100.0) + rng.gauss(0.0, 0.1)) for i in range(n)]


def run(det: SensorDetector, values: list[float], *, start: int = 0) -> list[Verdict]:
    return [det.process(T0 + 60.0 * (start + i), v) for i, v in enumerate(values)]


def test_the_default_is_the_sensor_detector() -> None:
    assert isinstance(make_detector(), SensorDetector)


def test_a_spike_is_flagged_at_once_and_only_the_spike() -> None:
    values = noisy(1000)
    values[700] += 3.0  # 30 noise sigmas
    verdicts = run(SensorDetector(), values)
    flagged = [i for i, v in enumerate(verdicts) if v.anomalous]
    assert flagged == [700]
    low, high = verdicts[700].expected_low, verdicts[700].expected_high
    assert low is not None and high is not None
    assert low < values[699] < high < values[700]


def test_a_level_shift_is_flagged_and_the_return_to_normal_is_not() -> None:
    values = noisy(1500)
    for i in range(800, 900):
        values[i] += 2.0
    verdicts = run(SensorDetector(), values)
    flagged = [i for i, v in enumerate(verdicts) if v.anomalous]
    assert flagged[0] == 800
    assert all(800 <= i < 900 for i in flagged)
    assert not any(v.anomalous for v in verdicts[900:])


def test_a_stuck_sensor_is_flagged_but_a_constant_stream_is_not() -> None:
    values = noisy(1200)
    for i in range(1000, 1100):
        values[i] = values[999]
    verdicts = run(SensorDetector(), values)
    flagged = [i for i, v in enumerate(verdicts) if v.anomalous]
    assert flagged and 1000 < flagged[0] < 1020
    assert all(1000 <= i < 1105 for i in flagged)  # the jump back to the moved signal counts too
    constant = run(SensorDetector(), [7.0] * 20_000)
    assert not any(v.anomalous for v in constant)


def test_a_duty_cycle_is_a_habit_not_an_anomaly() -> None:
    model = PowerModel(seed=3)
    values = [model.step(T0 + 60.0 * i) for i in range(3000)]
    assert max(values) > 10 * min(v for v in values if v > 0)  # really on/off
    verdicts = run(SensorDetector(), values)
    assert sum(v.anomalous for v in verdicts) <= 4  # at most the first regime change


def test_decisions_do_not_depend_on_units_or_offset() -> None:
    values = noisy(2000, seed=4)
    values[1500] += 1.0
    base = [v.anomalous for v in run(SensorDetector(), values)]
    scaled = [v.anomalous for v in run(SensorDetector(), [1000.0 * v + 5e4 for v in values])]
    assert base == scaled
    assert base[1500]


def test_no_alert_in_the_warm_up_and_calibration() -> None:
    values = noisy(200)
    values[10] += 50.0
    values[40] += 50.0
    verdicts = run(SensorDetector(), values)
    assert not any(v.anomalous for v in verdicts[:QUIET])
    assert all(v.expected_low is None for v in verdicts[:20])


def test_a_gap_in_the_data_widens_the_expected_range() -> None:
    model = TemperatureModel(seed=2, daily_amplitude=5.0, noise_sd=0.03, resolution=0.0)
    det = SensorDetector()
    for i in range(600):
        det.process(T0 + 60.0 * i, model.step(T0 + 60.0 * i))
    for k in range(1, 4):  # an hour of silence: the daily cycle has moved on since
        after_gap = T0 + 60.0 * 599 + 3600.0 + 60.0 * k
        assert not det.process(after_gap, model.step(after_gap)).anomalous
    assert det.process(after_gap + 60.0, model.step(after_gap + 60.0) + 3.0).anomalous


def test_false_alarm_rate_is_low_on_long_noise_of_any_shape() -> None:
    rng = random.Random(5)
    shapes: dict[str, Callable[[], float]] = {
        "gauss": lambda: rng.gauss(0.0, 1.0),
        "laplace": lambda: rng.expovariate(1.0) * rng.choice((-1.0, 1.0)),
        "quantised": lambda: round(rng.gauss(0.0, 0.6)),
        "lognormal": lambda: rng.lognormvariate(0.0, 0.5),
    }
    for shape, draw in shapes.items():
        verdicts = run(SensorDetector(), [100.0 + draw() for _ in range(20_000)])
        rate = sum(v.anomalous for v in verdicts) / len(verdicts)
        assert rate < 2e-3, shape


def test_inlined_process_matches_assess_then_learn() -> None:
    """`process` inlines `_assess` + `_learn` for speed; the two must never drift apart."""
    values = noisy(3000, seed=6)
    for i in range(1200, 1300):
        values[i] = values[1199]
    for i in range(2000, 2050):
        values[i] += 3.0 if i % 2 else -3.0
    fast, slow = SensorDetector(), SensorDetector()
    for i, value in enumerate(values):
        ts = T0 + 60.0 * i + (7200.0 if i > 2500 else 0.0)
        verdict = fast.process(ts, value)
        if slow._boot is not None:
            slow.learn_one(ts, value)
            continue
        s, z, _, _, run_, other = slow._assess(ts, value)
        assert verdict.score == s / (1.0 + s)
        slow._learn(ts, value, flagged=s >= 1.0, z=z, run=run_, other=other, step=abs(value - slow.prev))
    assert pickle.dumps(fast) == pickle.dumps(slow)


def test_learn_one_learns_even_what_process_would_flag() -> None:
    det = SensorDetector()
    for i, value in enumerate(noisy(500)):
        det.learn_one(T0 + 60.0 * i, value)
    level = det.level
    det.learn_one(T0 + 60.0 * 500, level + 10.0)
    assert det.level > level + 1.0


@pytest.mark.parametrize("risk", [1e-3, 1e-4])
def test_tail_threshold_tracks_the_true_tail_quantile(risk: float) -> None:
    rng = random.Random(0)
    cal = TailThreshold(risk=risk, floor=0.0)
    seen = []
    for i in range(60_000):
        cal.update(abs(rng.gauss(0.0, 1.0)))
        if i >= 20_000 and i % 100 == 0:
            seen.append(cal.threshold)
    true = NormalDist().inv_cdf(1.0 - risk / 2.0)  # |N(0,1)| exceeds this with P = risk
    assert abs(sum(seen) / len(seen) / true - 1.0) < 0.2
