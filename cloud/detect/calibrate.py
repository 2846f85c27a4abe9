"""Label-free, per-stream thresholds: turn a raw score into a decision nobody has to tune.

`TailThreshold` is peaks-over-threshold in the spirit of SPOT/DSPOT, made cheap enough to run
on every reading: a running high quantile `t` of the raw score (multiplicative stochastic
approximation), the rate `u` at which scores exceed it, and their mean excess `beta`. With an
exponential tail (a GPD with shape 0) the score exceeded with probability `risk` per reading is

    threshold = t + beta * ln(u / risk)

so the same `risk` gives about the same false-alarm rate on any stream, whatever its scale or
the shape of its tail (duty cycles, quantisation, load bursts). Updates are O(1), no numpy.
"""

from __future__ import annotations

import math
from typing import Any

RATE_GAIN = 0.002  # the exceedance rate is an EWMA over about 500 scores
LOG_RATE_DECAY = math.log(1.0 - RATE_GAIN)
EXCESS_GAIN = 0.05  # the mean excess is an EWMA over about 50 exceedances


# The attributes, which are also the checkpoint's named state (__getstate__).
_TAIL_STATE = ("_down", "_log_risk", "_up", "beta", "floor", "log_rate", "t", "threshold")


class TailThreshold:
    """Running extreme-value threshold for a non-negative score.

    >>> import random
    >>> rng = random.Random(0)
    >>> cal = TailThreshold()
    >>> for _ in range(20000):
    ...     cal.update(abs(rng.gauss(0, 1)) / 0.8)
    >>> round(cal.threshold, 1)  # the true 1e-4 tail quantile of |N(0,1)|/0.8 is 4.86
    4.6
    """

    __slots__ = _TAIL_STATE

    def __getstate__(self) -> dict[str, Any]:
        return named_state(self, _TAIL_STATE)

    def __setstate__(self, state: object) -> None:
        restore_state(self, state)

    def __init__(
        self,
        *,
        risk: float = 1e-4,
        base_q: float = 0.98,
        floor: float = 4.5,
        start: tuple[float, float] = (2.9, 0.5),
        eta: float = 0.05,
    ) -> None:
        self.floor = floor
        self._log_risk = math.log(risk)
        self._up = 1.0 + eta
        self._down = 1.0 - eta * (1.0 - base_q) / base_q  # balances _up at the base quantile
        self.t, self.beta = start  # a half-normal prior, in units of the typical step
        self.log_rate = math.log(1.0 - base_q)
        self.threshold = max(floor, self.t + self.beta * (self.log_rate - self._log_risk))

    def set_risk(self, risk: float) -> None:
        """Change the target exceedance probability per score (e.g. once the sampling is known)."""
        self._log_risk = math.log(risk)
        threshold = self.t + self.beta * (self.log_rate - self._log_risk)
        self.threshold = threshold if threshold > self.floor else self.floor

    def update(self, score: float) -> None:
        """Learn one score (clip anomalous ones to the threshold first so faults cannot teach)."""
        t = self.t
        if score > t:
            self.t = t * self._up
            rate = math.exp(self.log_rate)
            self.log_rate = math.log(rate + RATE_GAIN * (1.0 - rate))
            self.beta += EXCESS_GAIN * ((score - t) - self.beta)
        else:
            self.t = t * self._down
            if self.log_rate > self._log_risk:
                self.log_rate += LOG_RATE_DECAY
        threshold = self.t + self.beta * (self.log_rate - self._log_risk)
        self.threshold = threshold if threshold > self.floor else self.floor


def named_state(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    """A checkpoint's state by attribute name: it loads alike in the interpreted and the
    compiled (mypyc) class, whose default pickles differ."""
    return {name: getattr(obj, name) for name in names}


def restore_state(obj: object, state: object) -> None:
    """Set attributes from `named_state`, or from the (None, dict) that default pickling of a
    slotted class wrote before there was a named state (checkpoints of earlier versions)."""
    if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
        state = state[1]
    if not isinstance(state, dict):
        raise TypeError(f"not a detector state: {type(state).__name__}")
    for name, value in state.items():
        setattr(obj, name, value)


def at_threshold(raw: float, threshold: float) -> float:
    """Map a raw score in [0, 1] onto [0, 1] so that `threshold` lands on exactly 0.5.

    Monotone and piecewise linear: every detector's score then means the same thing (0.5 is
    this stream's decision boundary), which a fixed cut such as the aggregator's late-reading
    threshold relies on. An infinite threshold (not calibrated yet) maps everything below 0.5.

    >>> at_threshold(0.5, 0.5), at_threshold(0.25, 0.5), at_threshold(0.75, 0.5)
    (0.5, 0.25, 0.75)
    """
    if raw <= 0.0:
        return 0.0
    if raw >= threshold:
        return 1.0 if threshold >= 1.0 else min(1.0, 0.5 + 0.5 * (raw - threshold) / (1.0 - threshold))
    return 0.5 * raw / threshold


__all__ = ["TailThreshold", "at_threshold", "named_state", "restore_state"]
