from __future__ import annotations

import random

from devices.backoff import Backoff, full_jitter
from edge.sampling import SensorSchedule


def test_fixed_rate_does_not_drift_and_skips_missed_ticks() -> None:
    s = SensorSchedule(interval_s=1.0, start=100.0)
    assert s.due(100.0)
    s.on_success(100.3)  # the read took 0.3 s
    assert s.next_due == 101.0
    s.on_success(104.5)  # a read hung for 3.5 s: ticks 102..104 are skipped, not bunched
    assert s.next_due == 105.0


def test_failures_retry_within_the_interval_then_wait_for_the_tick() -> None:
    s = SensorSchedule(interval_s=10.0, start=0.0, retries=2)
    s.on_failure(0.0)
    assert s.next_due == 1.0
    s.on_failure(1.0)
    assert s.next_due == 2.0
    s.on_failure(2.0)
    assert s.next_due == 10.0, "retries exhausted: next tick"
    assert (s.failures, s.consecutive_failures) == (3, 3)
    s.on_success(10.0)
    assert s.consecutive_failures == 0 and s.next_due == 20.0


def test_backoff_is_full_jitter_and_capped() -> None:
    b = Backoff(base_s=0.5, max_s=8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert delays[0] <= 0.5 and delays[1] <= 1.0 and delays[2] <= 2.0  # the ceiling doubles
    late = delays[10:]
    assert min(late) < 1.0 and max(late) > 7.0  # full jitter: anywhere in [0, cap]
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 0.5


def test_full_jitter_spreads_a_herd_over_the_whole_window() -> None:
    """1,000 agents that lost the broker together: their 6th retries spread over [0, 16 s]."""
    rng = random.Random(3)
    delays = sorted(full_jitter(5, 0.5, 30.0, rng) for _ in range(1000))
    assert delays[-1] <= 16.0
    quarters = [sum(1 for d in delays if q * 4 <= d < (q + 1) * 4) for q in range(4)]
    assert all(200 <= n <= 300 for n in quarters), quarters
