"""Baseline: river's HalfSpaceTrees on the min-max scaled value, with a running-quantile cut.

This is the off-the-shelf online detector the default has to beat. The value is scaled into
[0, 1] by an online min-max scaler (HalfSpaceTrees assumes that range), and the decision is
river's `QuantileFilter` rule: anomalous when the score reaches the running `q` quantile of all
scores so far; flagged readings are not learned. The reported score is river's, mapped so that
the threshold is 0.5 (`raw_score` gives river's own). Importing river costs about 2 s (scipy).
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from river import anomaly, preprocessing, stats

from cloud.detect.base import NON_FINITE, Verdict
from cloud.detect.calibrate import at_threshold


class HalfSpaceTreesDetector:
    """MinMax-scaled HalfSpaceTrees with a running-quantile threshold.

    >>> det = HalfSpaceTreesDetector(seed=1)
    >>> for i in range(600):
    ...     _ = det.process(60.0 * i, 20.0 + ((i * 7919) % 13) / 10)
    >>> det.score_one(36000.0, 20.6) < det.score_one(36000.0, 45.0)
    True
    """

    name = "hst"

    def __init__(
        self,
        *,
        seed: int = 0,
        q: float = 0.995,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
    ) -> None:
        # river is only partly typed: hold its objects as Any
        self.scaler: Any = preprocessing.MinMaxScaler()
        self.model: Any = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.quantile = stats.Quantile(q)
        self.n = 0
        self.window_size = window_size

    def raw_score(self, ts: float, value: float) -> float:
        """river's HalfSpaceTrees score in [0, 1] (0 until the first window is full)."""
        if not math.isfinite(value):
            return 1.0
        if self.n < self.window_size:
            return 0.0
        score = self.model.score_one(self.scaler.transform_one({"value": value}))
        return min(1.0, max(0.0, float(score)))

    def score_one(self, ts: float, value: float) -> float:
        """The raw score mapped so that this stream's running quantile is 0.5."""
        if not math.isfinite(value):
            return 1.0
        return at_threshold(self.raw_score(ts, value), self._threshold())

    def learn_one(self, ts: float, value: float) -> None:
        if not math.isfinite(value):
            return
        x = {"value": value}
        self.scaler.learn_one(x)
        self.model.learn_one(self.scaler.transform_one(x))
        self.n += 1

    def _threshold(self) -> float:
        q = self.quantile.get() if self.n >= self.window_size else None
        return math.inf if q is None else float(q)

    def process(self, ts: float, value: float) -> Verdict:
        if not math.isfinite(value):
            return NON_FINITE
        raw = self.raw_score(ts, value)
        threshold = self._threshold()
        anomalous = raw > 0.0 and raw >= threshold
        if not anomalous:
            self.learn_one(ts, value)
        if self.n > self.window_size:
            self.quantile.update(raw)
        return Verdict(at_threshold(raw, threshold), anomalous)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["HalfSpaceTreesDetector"]
