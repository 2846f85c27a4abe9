"""A minimal baseline: EWMA mean/variance with a fixed z-score threshold (not calibrated).

Kept as the cheapest reference point; the calibrated default lives in `cloud.detect.sensor`.
"""

from __future__ import annotations

import math
import pickle

from cloud.detect.base import NON_FINITE, Verdict


class EwmaDetector:
    """EWMA z-score, flagged at a fixed z of 6 (score 0.5).

    >>> det = EwmaDetector()
    >>> for i in range(100):
    ...     _ = det.process(float(i), 10.0 + (i % 3) / 10)
    >>> det.process(100.0, 10.1).anomalous, det.process(101.0, 20.0).anomalous
    (False, True)
    """

    name = "ewma"

    def __init__(self, *, seed: int = 0, alpha: float = 0.05, z: float = 6.0, warmup: int = 20) -> None:
        self.alpha = alpha
        self.z = z
        self.warmup = warmup
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def _std(self) -> float:
        return max(math.sqrt(self.var), 1e-6 + abs(self.mean) * 1e-3)

    def score_one(self, ts: float, value: float) -> float:
        if not math.isfinite(value):
            return 1.0
        if self.n < self.warmup:
            return 0.0
        zscore = abs(value - self.mean) / self._std()
        return zscore / (zscore + self.z)

    def learn_one(self, ts: float, value: float) -> None:
        if not math.isfinite(value):
            return
        self.n += 1
        if self.n == 1:
            self.mean = value
            return
        delta = value - self.mean
        self.mean += self.alpha * delta
        self.var = (1 - self.alpha) * (self.var + self.alpha * delta * delta)

    def process(self, ts: float, value: float) -> Verdict:
        if not math.isfinite(value):
            return NON_FINITE
        score = self.score_one(ts, value)
        anomalous = score >= 0.5
        if not anomalous:
            self.learn_one(ts, value)
        if self.n < self.warmup:
            return Verdict(score, anomalous)
        std = self._std()
        return Verdict(score, anomalous, self.mean - self.z * std, self.mean + self.z * std)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self)
