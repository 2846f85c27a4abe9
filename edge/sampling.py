"""When to read each sensor: a fixed-rate schedule with retries, free of I/O.

Ticks are anchored to the start time (start + k * interval), so a slow read does not make the
schedule drift, and ticks missed while a read hung are skipped rather than bunched up. A failed
read is retried a few times within the interval, then the sensor waits for its next tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class SensorSchedule:
    interval_s: float
    start: float
    retries: int = 2
    retry_delay_s: float | None = None
    next_due: float = field(init=False)
    reads: int = field(default=0, init=False)
    failures: int = field(default=0, init=False)
    consecutive_failures: int = field(default=0, init=False)
    _retries_left: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.next_due = self.start
        self._retries_left = self.retries

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def _next_tick(self, now: float) -> float:
        k = math.floor((now - self.start) / self.interval_s) + 1
        return self.start + max(k, 1) * self.interval_s

    def on_success(self, now: float) -> None:
        self.reads += 1
        self.consecutive_failures = 0
        self._retries_left = self.retries
        self.next_due = self._next_tick(now)

    def on_failure(self, now: float) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        tick = self._next_tick(now)
        if self._retries_left > 0:
            self._retries_left -= 1
            delay = self.retry_delay_s if self.retry_delay_s is not None else min(1.0, self.interval_s / 4)
            self.next_due = min(now + delay, tick)
        else:
            self._retries_left = self.retries
            self.next_due = tick
