"""Signal models and fault injection: reproducible, plausible, and honest ground truth."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

import simulators.faults
import simulators.signals
from simulators.faults import (
    FAULT_KINDS,
    Dip,
    Drift,
    Dropout,
    Fault,
    FaultInjector,
    Label,
    LevelShift,
    NoiseBurst,
    Spike,
    Stuck,
    labels_for,
    read_labels,
    schedule_faults,
    write_labels,
)
from simulators.signals import (
    SIGNAL_KINDS,
    CpuTemperatureModel,
    HumidityModel,
    PowerModel,
    TemperatureModel,
    VibrationModel,
    make_signal,
)

T0 = 1_704_067_200.0  # midnight UTC
DAY = 86_400.0


def series(model: simulators.signals.SignalModel, n: int, period: float = 60.0) -> list[float]:
    return [model.step(T0 + period * i) for i in range(n)]


@pytest.mark.parametrize("kind", SIGNAL_KINDS)
def test_same_seed_same_values_different_seed_different_values(kind: str) -> None:
    a = series(make_signal(kind, 11), 500)
    assert a == series(make_signal(kind, 11), 500)
    assert a != series(make_signal(kind, 12), 500)
    assert all(math.isfinite(v) for v in a)


def test_models_are_reproducible_across_processes() -> None:
    """Seeds must not depend on hash randomisation: a simulator run is replayable anywhere."""
    code = (
        "from simulators.signals import make_signal\n"
        "m = make_signal('humidity', 5)\n"
        "print([m.step(1.7e9 + 60 * i) for i in range(5)])\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).parents[1])},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_temperature_has_a_daily_cycle_peaking_in_the_afternoon() -> None:
    model = TemperatureModel(seed=3, daily_amplitude=4.0, wander_sd=0.1, peak_hour=15.0)
    values = series(model, 1440)
    hottest = values.index(max(values)) / 60.0
    coldest = values.index(min(values)) / 60.0
    assert 12.0 < hottest < 18.0
    assert coldest < 6.0 or coldest > 22.0
    assert 6.0 < max(values) - min(values) < 10.0


def test_humidity_moves_against_temperature() -> None:
    temp = TemperatureModel(seed=4, daily_amplitude=4.0)
    rh = HumidityModel(seed=5, temperature=temp, wander_sd=0.5)
    t_vals, h_vals = [], []
    for i in range(2880):
        ts = T0 + 60.0 * i
        t_vals.append(temp.step(ts))
        h_vals.append(rh.step(ts))
    assert statistics.correlation(t_vals, h_vals) < -0.8
    assert all(0.0 <= h <= 100.0 for h in h_vals)


def test_humidity_without_a_temperature_owns_one() -> None:
    values = series(HumidityModel(seed=1), 100)
    assert all(0.0 <= v <= 100.0 for v in values)


def test_vibration_is_positive_and_noisy_around_its_base() -> None:
    values = series(VibrationModel(seed=2, base=3.0), 2000)
    assert min(values) > 0
    assert 2.0 < statistics.median(values) < 4.5


def test_power_alternates_between_on_and_off_with_its_duty_cycle() -> None:
    model = PowerModel(seed=3, on_watts=200.0, off_watts=5.0, period=2400.0, duty=0.3)
    values = series(model, 5 * 1440)
    on = [v for v in values if v > 100.0]
    assert 0.22 < len(on) / len(values) < 0.38
    assert all(v < 20.0 or 160.0 < v < 240.0 for v in values)
    switches = sum((a > 100.0) != (b > 100.0) for a, b in pairwise(values))
    assert 2 * 5 * 36 * 0.7 < switches < 2 * 5 * 36 * 1.3  # 36 cycles a day


def test_cpu_temperature_follows_load_bursts_with_a_lag() -> None:
    values = series(CpuTemperatureModel(seed=4, idle=40.0, gain=25.0), 2880)
    assert 38.0 < statistics.median(values) < 48.0
    assert max(values) > 55.0  # bursts happen
    big_steps = sum(abs(b - a) > 12.0 for a, b in pairwise(values))
    assert big_steps < 0.02 * len(values)  # the thermal lag spreads a burst over readings


def test_quantised_sensors_report_their_resolution() -> None:
    values = series(TemperatureModel(seed=1, resolution=0.0625), 200)
    assert all(abs(v / 0.0625 - round(v / 0.0625)) < 1e-6 for v in values)


def test_time_going_backwards_does_not_advance_the_model() -> None:
    model = TemperatureModel(seed=1, noise_sd=0.0, resolution=0.0, wander_sd=0.5)
    model.step(T0 + 600.0)
    level = model.level
    model.step(T0)  # late sample: no hidden state moves
    model.step(T0 + 600.0)
    assert model.level == level


def test_unknown_signal_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="known: temperature"):
        make_signal("pressure", 1)


# -- faults ------------------------------------------------------------------------------------


def test_each_fault_kind_changes_the_values_as_labelled() -> None:
    faults: list[Fault] = [
        Spike(600.0, 660.0, magnitude=5.0),
        Dip(1200.0, 1260.0, magnitude=5.0),
        LevelShift(1800.0, 2400.0, offset=-2.0),
        Stuck(3000.0, 3600.0),
        Drift(4200.0, 4800.0, total=10.0),
        NoiseBurst(5400.0, 6000.0, sigma=3.0),
        Dropout(6600.0, 6720.0),
    ]
    inj = FaultInjector(faults, scale=2.0, seed=1)
    clean = [100.0 + i for i in range(120)]  # one reading a minute, rising
    out = [inj.apply(60.0 * i, v) for i, v in enumerate(clean)]
    assert out[:10] == clean[:10]
    assert out[10] == clean[10] + 10.0 and out[11] == clean[11]  # spike: one sample
    assert out[20] == clean[20] - 10.0  # dip
    assert out[30:40] == [v - 4.0 for v in clean[30:40]]  # level shift
    assert out[50:60] == [clean[49]] * 10  # stuck at the last good value
    assert out[70] == clean[70] and math.isclose(out[79] or 0.0, clean[79] + 20.0 * 9 / 10)
    burst = [(o or 0.0) - c for o, c in zip(out[90:100], clean[90:100], strict=True)]
    assert statistics.pstdev(burst) > 1.0
    assert out[110:112] == [None, None]  # dropout
    assert out[112] == clean[112]


def test_stuck_with_jitter_is_nearly_constant() -> None:
    inj = FaultInjector([Stuck(0.0, 6000.0, jitter=0.01)], scale=1.0, seed=2)
    out = [inj.apply(60.0 * i, 20.0 + i) or 0.0 for i in range(100)]
    assert max(out) - min(out) < 0.1
    assert len(set(out)) > 50


def test_schedule_is_reproducible_ordered_and_separated() -> None:
    a = schedule_faults(3, T0, T0 + 30 * DAY, per_day=3.0)
    assert a == schedule_faults(3, T0, T0 + 30 * DAY, per_day=3.0)
    assert a != schedule_faults(4, T0, T0 + 30 * DAY, per_day=3.0)
    assert {f.kind for f in a} == set(FAULT_KINDS)
    for prev, nxt in pairwise(a):
        assert prev.start < prev.end
        assert prev.end + 3 * 3600.0 <= nxt.start
    assert all(f.start >= T0 and f.end <= T0 + 30 * DAY for f in a)
    assert 30 < len(a) < 120


def test_schedule_respects_kinds_and_sample_period() -> None:
    spikes = schedule_faults(5, T0, T0 + 10 * DAY, kinds=["spike"], period=10.0)
    assert spikes and all(isinstance(f, Spike) and f.end - f.start <= 30.0 for f in spikes)
    assert schedule_faults(5, T0, T0 + DAY, kinds=[]) == []
    with pytest.raises(ValueError, match="unknown fault kinds"):
        schedule_faults(5, T0, T0 + DAY, kinds=["meteor"])


def test_labels_round_trip_through_json_lines(tmp_path: Path) -> None:
    faults = schedule_faults(1, T0, T0 + 5 * DAY)
    labels = labels_for("dev1", "temperature", faults)
    path = tmp_path / "labels.jsonl"
    assert write_labels(path, labels) == len(labels)
    write_labels(path, [Label("dev2", "power", "spike", T0, T0 + 60.0)], append=True)
    back = read_labels(path)
    assert back[:-1] == labels
    assert back[-1] == Label("dev2", "power", "spike", T0, T0 + 60.0)
    assert json.loads(path.read_text().splitlines()[0])["device"] == "dev1"


def test_a_bad_label_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(Label("d", "m", "dip", 1.0, 2.0).to_json() + '\n\n{"device": "d"}\n')
    with pytest.raises(ValueError, match="line 3"):
        read_labels(path)
    path.write_text('{"device":"d","metric":"m","kind":"x","start":5,"end":1}\n')
    with pytest.raises(ValueError, match="line 1: bad label window"):
        read_labels(path)


def test_faults_are_sized_by_the_signal_scale() -> None:
    rng = random.Random(1)
    for kind in SIGNAL_KINDS:
        model = make_signal(kind, rng.randrange(1000))
        values = series(model, 1440)
        steps = [abs(b - a) for a, b in pairwise(values)]
        # one unit of anomaly is well above the typical one-minute step of that sensor
        assert model.scale > statistics.median(steps), kind
