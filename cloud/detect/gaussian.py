"""Baseline: river's windowed GaussianScorer with a running-quantile cut.

A Gaussian fitted to the last `window_size` learned values scores `2 * |CDF(x) - 0.5|`; the
decision is river's `QuantileFilter` rule (anomalous at or above the running `q` quantile of the
scores), and flagged readings are not learned. The reported score is river's, mapped so that
the threshold is 0.5 (`raw_score` gives river's own). Importing river costs about 1 s (scipy).
"""

from __future__ import annotations

import math
import pickle
from statistics import NormalDist
from typing import Any

from river import anomaly, stats

from cloud.detect.base import NON_FINITE, Verdict
from cloud.detect.calibrate import at_threshold

_NORMAL = NormalDist()


class GaussianDetector:
    """Windowed Gaussian scorer with a running-quantile threshold.

    >>> det = GaussianDetector()
    >>> for i in range(600):
    ...     _ = det.process(60.0 * i, 20.0 + ((i * 7919) % 13) / 10)
    >>> det.score_one(36000.0, 20.6) < 0.2, det.process(36000.0, 45.0).anomalous
    (True, True)
    """

    name = "gaussian"

    def __init__(
        self, *, seed: int = 0, q: float = 0.995, window_size: int = 720, grace_period: int = 30
    ) -> None:
        scorer: Any = anomaly.GaussianScorer  # river is only partly typed
        self.model: Any = scorer(window_size=window_size, grace_period=grace_period)
        self.quantile = stats.Quantile(q)
        self.grace_period = grace_period
        self.n = 0

    def raw_score(self, ts: float, value: float) -> float:
        """river's `2 * |CDF(x) - 0.5|` in [0, 1] (0 during the grace period)."""
        if not math.isfinite(value):
            return 1.0
        return min(1.0, max(0.0, float(self.model.score_one(None, value))))

    def _threshold(self) -> float:
        q = self.quantile.get() if self.n >= self.grace_period else None
        return math.inf if q is None else float(q)

    def score_one(self, ts: float, value: float) -> float:
        """The raw score mapped so that this stream's running quantile is 0.5."""
        if not math.isfinite(value):
            return 1.0
        return at_threshold(self.raw_score(ts, value), self._threshold())

    def learn_one(self, ts: float, value: float) -> None:
        if math.isfinite(value):
            self.model.learn_one(None, value)
            self.n += 1

    def process(self, ts: float, value: float) -> Verdict:
        if not math.isfinite(value):
            return NON_FINITE
        raw = self.raw_score(ts, value)
        threshold = self._threshold()
        anomalous = raw > 0.0 and raw >= threshold
        low = high = None
        if threshold < 1.0:
            gauss = self.model.gaussian
            mu, sigma = float(gauss.mu), float(gauss.sigma)
            z = _NORMAL.inv_cdf(min(0.5 + threshold / 2.0, 1.0 - 1e-12))
            low, high = mu - z * sigma, mu + z * sigma
        if not anomalous:
            self.learn_one(ts, value)
        if self.n > self.grace_period:
            self.quantile.update(raw)
        return Verdict(at_threshold(raw, threshold), anomalous, low, high)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["GaussianDetector"]
