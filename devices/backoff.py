"""The one reconnect and retry back-off of edgewatch: capped exponential with full jitter.

Every client that retries (the agent's link, the aggregator's broker connection, `alerts follow`,
notification deliveries) draws its delay here, so one rule decides how a fleet behaves when a
broker comes back: the ceiling doubles per attempt up to a cap, and the delay is uniform in
[0, ceiling] ("full jitter"), so a thousand agents that lost the broker at the same moment do not
reconnect at the same moment. A lone client (the aggregator) keeps a low cap: it is not a herd,
and every second it stays away is a second the fleet's readings wait unconfirmed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def full_jitter(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """The delay before retry number `attempt` (0-based): uniform(0, min(max_s, base_s * 2**attempt)).

    >>> full_jitter(0, 0.5, 30.0, random.Random(0)) <= 0.5, full_jitter(30, 0.5, 4.0) <= 4.0
    (True, True)
    """
    ceiling = min(max_s, base_s * (2.0 ** min(max(attempt, 0), 60)))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(slots=True)
class Backoff:
    """A retry counter around `full_jitter`: `next_delay()` after each failure, `reset()` on success.

    >>> b = Backoff(base_s=1.0, max_s=8.0, rng=random.Random(7))
    >>> all(b.next_delay() <= 8.0 for _ in range(20)), b.attempt
    (True, 20)
    """

    base_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = full_jitter(self.attempt, self.base_s, self.max_s, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


__all__ = ["Backoff", "full_jitter"]
