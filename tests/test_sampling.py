from __future__ import annotations

import random

from edge.sampling import Backoff, SensorSchedule


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


def test_backoff_is_jittered_and_capped() -> None:
    b = Backoff(base_s=0.5, max_s=8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.125 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 2.0
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next_delay() <= 0.5
