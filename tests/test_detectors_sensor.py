"""What the default detector is for: sensor faults found, sensor habits not alarmed on."""

from __future__ import annotations

import math
import pickle
import random
import re
from collections.abc import Callable
from statistics import NormalDist

import pytest

from cloud.detect import make_detector
from cloud.detect.base import Verdict
from cloud.detect.calibrate import TailThreshold
from cloud.detect.sensor import ALARM_BUDGET, QUIET, RISK_MAX, RISK_MIN, SensorDetector
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


# -- explanations: what an anomalous verdict says, in the stream's own numbers ----------------


def test_a_spike_says_spike_with_its_value_and_the_level_it_left() -> None:
    values = noisy(1000)
    values[700] += 3.0
    verdicts = run(SensorDetector(), values)
    v = verdicts[700]
    assert v.anomalous and v.kind == "spike"
    assert f"value {values[700]:.3g} {{unit}}" in v.evidence
    assert "typical steps above the level" in v.evidence
    assert v.expected_low is not None and v.expected_high is not None
    assert v.expected_low < values[699] < v.expected_high < values[700]  # what it expected: near the level
    dip = noisy(1000)
    dip[700] -= 3.0
    assert run(SensorDetector(), dip)[700].kind == "dip"
    assert all(x.kind == "" and x.evidence == "" for x in verdicts if not x.anomalous)


def test_a_stuck_sensor_says_for_how_long_and_how_often_it_usually_changes() -> None:
    values = noisy(1200)
    for i in range(1000, 1100):
        values[i] = values[999]
    verdicts = run(SensorDetector(), values)
    first = next(v for v in verdicts if v.anomalous)
    assert first.kind == "stuck"
    assert first.evidence.startswith(f"unchanged at {values[999]:.3g} {{unit}} for ")
    # readings a minute apart, a few of them nearly equal: it usually changes within a minute or two
    held = re.fullmatch(r"unchanged at .* for (\d+) min; this stream changes every (\d+) s", first.evidence)
    assert held is not None, first.evidence
    assert 5 <= int(held[1]) <= 20 and 60 <= int(held[2]) < 120
    assert first.expected_low is not None and first.expected_high is not None
    assert first.expected_low <= values[999] <= first.expected_high  # the value is fine; its stillness is not


def test_a_drift_out_of_the_lived_in_range_says_so_and_the_range_is_the_envelope() -> None:
    rng = random.Random(8)
    values = [20.0 + rng.gauss(0.0, 0.3) for _ in range(2000)]  # 33 h of one-minute readings
    values += [20.0 + 0.05 * k + rng.gauss(0.0, 0.3) for k in range(1, 1000)]  # then a drift up, 3 /h
    verdicts = run(SensorDetector(), values)
    i, v = next((i, v) for i, v in enumerate(verdicts) if v.anomalous)
    assert i > 2000 and v.kind == "out_of_range"
    assert "above the range" in v.evidence and "it has lived in" in v.evidence
    assert v.expected_low is not None and v.expected_high is not None
    assert v.expected_low < 20.0 < v.expected_high < values[i]
    assert v.expected_high - v.expected_low < 10.0  # near what the stream did (it lived in ~18.8..21.2)


def test_counts_are_judged_on_a_log_scale_and_explained_in_counts() -> None:
    rng = random.Random(4)
    values = [float(round(rng.expovariate(1 / 20.0))) for _ in range(3000)]  # a heavy-ish tail
    values[2500] = 2000.0
    det = SensorDetector()
    verdicts = run(det, values)
    assert det.counts
    v = verdicts[2500]
    assert v.anomalous and v.kind == "spike"
    assert v.evidence.startswith("count 2000 {unit}, ") and "times the usual" in v.evidence
    assert v.expected_low is not None and v.expected_high is not None
    assert 0.0 <= v.expected_low < 20.0 < v.expected_high < 2000.0  # in counts, not in logs
    assert sum(x.anomalous for x in verdicts) <= 3  # the exponential tail itself is a habit
    assert not SensorDetector().counts
    floats = SensorDetector()
    run(floats, noisy(100))
    assert not floats.counts


def test_the_false_alarm_budget_is_per_time_whatever_the_sampling() -> None:
    """A reading's risk is its interval over ALARM_BUDGET: a 1 s stream must be far stricter per
    reading than a 5 min one to raise as few alarms per day."""
    risks = {}
    for period in (1.0, 60.0, 300.0, 3600.0):
        det = SensorDetector()
        for i, value in enumerate(noisy(100)):
            det.process(T0 + period * i, value)
        risks[period] = math.exp(det.cal._log_risk)
    assert risks[1.0] == pytest.approx(RISK_MIN)
    assert risks[60.0] == pytest.approx(60.0 / ALARM_BUDGET)
    assert risks[300.0] == pytest.approx(min(RISK_MAX, 300.0 / ALARM_BUDGET))
    assert risks[3600.0] == pytest.approx(RISK_MAX)
    assert risks[1.0] < risks[60.0] < risks[3600.0]


def test_a_dip_on_a_duty_cycle_expects_the_regime_the_stream_is_in() -> None:
    """The demo's power alert: a dip to -486 W while the stream read about 0 W must not say it
    expected the compressor's "on" level."""
    model = PowerModel(seed=3)
    values = [model.step(T0 + 60.0 * i) for i in range(3000)]
    det = SensorDetector()
    run(det, values)
    off = min(v for v in values[-300:])
    base = 3000
    verdicts = run(det, [off] * 10, start=base)  # ten minutes off
    dip = det.process(T0 + 60.0 * (base + 10), -486.0)
    assert not any(v.anomalous for v in verdicts)
    assert dip.anomalous and dip.kind == "dip"
    assert dip.expected_low is not None and dip.expected_high is not None
    assert dip.expected_low < off < dip.expected_high  # around where it was, not around "on"
    assert dip.expected_high < 0.5 * max(values)


def test_the_score_peaks_at_the_onset_of_a_long_shift_not_through_it() -> None:
    values = noisy(1500)
    for i in range(800, 1000):  # 200 minutes 20 noise sigmas up
        values[i] += 2.0
    verdicts = run(SensorDetector(), values)
    peak = max(range(800, 1000), key=lambda i: verdicts[i].score)
    assert peak == 800
    assert not any(v.anomalous for v in verdicts[850:1000])  # the new level is learned, not alarmed for hours
