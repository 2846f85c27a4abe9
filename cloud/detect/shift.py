"""A mean-shift question beside the default detector's point residual.

The default detector (`cloud.detect.sensor`) asks of each reading whether it is far from the
stream's fast level, in units of its typical step. A shift of one to three noise sigmas on a
noisy stream never is: the fast level follows it within a few readings and no single reading
stands out. Such a shift shows in the *mean*: `MeanShift` compares a short mean of the stream
(an EWMA over about 1/FAST readings) with a slow baseline (about 1/SLOW readings), in units of
that difference's own typical size on this stream, so autocorrelated streams (random walks,
daily cycles, duty cycles) learn how far their mean wanders by itself. It is an EWMA control
chart, the smooth cousin of a two-sided CUSUM, O(1) per reading. Its threshold is the same
extreme-value tail as the default's (`TailThreshold`) at the same per-time false-alarm budget.

A shift alerts once and is then learned: after an alarm (its own or the default detector's)
the baseline follows the short mean for HOLD readings and nothing is alerted, so the new level
becomes the normal one instead of an alert that lasts hours. Each alarm teaches the calibrator
once (capped), so a stream whose mean jumps often raises its own threshold. Readings enter
the means clipped to CLIP typical deviations, so a spike (the default's question) barely moves
them, and after a gap in the data both means restart where the stream is.

`ShiftAwareDetector` ("shift" in the registry) wraps a `SensorDetector`: the default's verdict
stands whenever it is anomalous; when it says normal and the mean has shifted, the verdict is a
`level_shift` with the evidence in the stream's units. The score is the larger of the two, each
with 0.5 at its own threshold.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from cloud.detect.base import NON_FINITE, Verdict
from cloud.detect.calibrate import TailThreshold, named_state, restore_state
from cloud.detect.sensor import (
    ALARM_BUDGET,
    FIRST_FLAG_CAP,
    GAP,
    RISK_MAX,
    RISK_MIN,
    WARMUP,
    SensorDetector,
    _from_counts,
    _num,
    _to_counts,
)

FAST = 0.05  # gain of the short mean (about 20 readings)
SLOW = 0.005  # gain of the baseline (about 200 readings)
SCALE_GAIN = 0.005  # gain of the typical |short mean - baseline|
NOISE_GAIN = 0.02  # gain of the typical |reading - short mean|, for clipping
CLIP = 4.0  # a reading enters the means at most this many typical deviations away
SCALE_CLIP = 2.0  # a difference teaches the typical difference at most this many of it
SCALE_FLOOR = 0.05  # the typical difference is at least this share of the default's typical step
SHIFT_QUIET = 200  # readings the shift question learns before it may alert (>= QUIET)
SAMPLE_EVERY = 20  # the tail learns one difference per this many readings (about 1 / FAST)
TAIL_FLOOR = 3.0  # the threshold is at least this many typical differences
HOLD = 60  # readings after an alarm in which the baseline follows the short mean, silently


_SHIFT_STATE = ("cal", "fast", "hold", "last_ts", "n", "noise", "scale", "slow")


class MeanShift:
    """Short mean against a slow baseline, calibrated per stream; alerts once per shift.

    >>> import random
    >>> rng = random.Random(4)
    >>> ms = MeanShift()
    >>> ms.set_sampling(1.0)  # one reading a second
    >>> mean = [10.0] * 1000 + [11.0] * 1000  # a shift of one noise sigma at reading 1000
    >>> alarms = [i for i, m in enumerate(mean) if ms.update(float(i), rng.gauss(m, 1.0), 0.05, 1.0)]
    >>> len(alarms), 1000 < alarms[0] < 1060  # once, within a minute
    (1, True)
    """

    __slots__ = _SHIFT_STATE

    def __getstate__(self) -> dict[str, Any]:
        return named_state(self, _SHIFT_STATE)

    def __setstate__(self, state: object) -> None:
        restore_state(self, state)

    def __init__(self) -> None:
        self.cal = TailThreshold(risk=RISK_MAX * SAMPLE_EVERY, floor=TAIL_FLOOR)
        self.n = 0
        self.fast = self.slow = self.scale = self.noise = 0.0
        self.last_ts = -math.inf
        self.hold = 0

    def set_sampling(self, dt_typ: float) -> None:
        """The per-time false-alarm budget, as the default detector sets its own."""
        if dt_typ > 0.0:
            self.cal.set_risk(SAMPLE_EVERY * min(RISK_MAX, max(RISK_MIN, dt_typ / ALARM_BUDGET)))

    def _means(self, x: float, floor: float) -> tuple[float, float, float]:
        """(short mean, baseline, raw score) after x, without changing state."""
        n = self.n
        noise = self.noise if self.noise > floor else floor
        lim = CLIP * noise
        r = x - self.fast
        if n > 1 and (r > lim or r < -lim):  # the first readings set the noise, unclipped
            r = lim if r > 0.0 else -lim
        fast = self.fast + (FAST if n * FAST > 1.0 else 1.0 / (n + 1)) * r
        slow = self.slow + (SLOW if n * SLOW > 1.0 else 1.0 / (n + 1)) * (fast - self.slow)
        scale = self.scale if self.scale > floor else floor
        return fast, slow, abs(fast - slow) / scale

    def score(self, ts: float, x: float, floor: float, dt_typ: float) -> float:
        """The raw score (1 = this stream's threshold) of x, without changing state."""
        if self.n < SHIFT_QUIET or self.hold or ts - self.last_ts > GAP * dt_typ > 0.0:
            return 0.0
        return self._means(x, floor)[2] / self.cal.threshold

    def update(self, ts: float, x: float, floor: float, dt_typ: float, *, rebase: bool = False) -> bool:
        """Learn x; True when its short mean has shifted (an alarm). `floor` is the smallest
        typical deviation to assume (a share of the default's typical step); `rebase` says the
        default detector alarmed on x, so whatever changed is learned, not alerted twice."""
        if ts - self.last_ts > GAP * dt_typ > 0.0 and self.n:  # after a gap: restart the means
            self.fast = self.slow = x
            self.last_ts = ts
            return False
        self.last_ts = max(self.last_ts, ts)
        fast, slow, z = self._means(x, floor)
        n = self.n
        if n:  # the typical |reading - short mean|, which bounds what one reading can move
            noise = self.noise
            resid = abs(x - self.fast)
            if n > 1 and resid > CLIP * noise:
                resid = CLIP * noise
            self.noise = noise + (NOISE_GAIN if n * NOISE_GAIN > 1.0 else 1.0 / n) * (resid - noise)
        self.n += 1
        self.fast = fast
        if self.hold or rebase:  # after an alarm the baseline takes the new level in
            self.slow += FAST * (fast - self.slow)
            self.hold = HOLD if rebase else self.hold - 1
            return False
        cal = self.cal
        threshold = cal.threshold
        if self.n > SHIFT_QUIET and z >= threshold:
            cal.update(min(z, FIRST_FLAG_CAP * threshold))  # once per shift, capped
            self.hold = HOLD
            return True
        self.slow = slow
        d = abs(fast - slow)
        scale = self.scale
        if d > SCALE_CLIP * scale and self.n > SHIFT_QUIET:  # a shift in the making is no habit
            d = SCALE_CLIP * scale
        self.scale = scale + (SCALE_GAIN if self.n * SCALE_GAIN > 1.0 else 1.0 / self.n) * (d - scale)
        if self.n % SAMPLE_EVERY == 0 and self.n > SAMPLE_EVERY:
            # the short mean forgets in about SAMPLE_EVERY readings: one difference per such
            # span teaches the tail, so a shift in the making cannot raise its own threshold
            cal.update(z)
        return False

    def expected(self, floor: float) -> tuple[float, float]:
        """The range the short mean was expected to stay in."""
        band = self.cal.threshold * (self.scale if self.scale > floor else floor)
        return self.slow - band, self.slow + band


class ShiftAwareDetector:
    """The default detector plus the mean-shift question (`MeanShift`), one verdict per reading."""

    name = "shift"

    __slots__ = ("inner", "shift")

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "shift": self.shift}

    def __setstate__(self, state: object) -> None:
        restore_state(self, state)

    def __init__(self, *, seed: int = 0) -> None:
        self.inner = SensorDetector(seed=seed)
        self.shift = MeanShift()

    def _x(self, value: float) -> float:
        inner = self.inner
        return _to_counts(value, inner.count_m) if inner.counts else value

    def score_one(self, ts: float, value: float) -> float:
        """Score in [0, 1] (0.5 = this stream's threshold) without changing state."""
        score = self.inner.score_one(ts, value)
        if value - value != 0.0 or self.inner.n < WARMUP:
            return score
        inner = self.inner
        s = self.shift.score(ts, self._x(value), SCALE_FLOOR * inner.dev, inner.dt_typ)
        return max(score, s / (1.0 + s))

    def learn_one(self, ts: float, value: float) -> None:
        """Learn a reading as normal (NaN and inf are ignored)."""
        if value - value != 0.0:
            return
        scored = self.inner.n >= WARMUP
        inner = self.inner
        floor, dt_typ = SCALE_FLOOR * inner.dev, inner.dt_typ
        x = self._x(value)
        inner.learn_one(ts, value)
        if scored:
            self._learn_shift(ts, x, floor, dt_typ, rebase=False)

    def _learn_shift(self, ts: float, x: float, floor: float, dt_typ: float, *, rebase: bool) -> bool:
        shift = self.shift
        if shift.n == 0:
            shift.set_sampling(self.inner.dt_typ)
        return shift.update(ts, x, floor, dt_typ, rebase=rebase)

    def process(self, ts: float, value: float) -> Verdict:
        """The default's verdict, unless it is normal and the stream's mean has shifted."""
        if value - value != 0.0:
            return NON_FINITE
        inner = self.inner
        if inner.n < WARMUP:  # the default's warm-up: nothing to compare a mean with yet
            return inner.process(ts, value)
        shift = self.shift
        floor = SCALE_FLOOR * inner.dev
        dt_typ = inner.dt_typ
        x = self._x(value)
        s = shift.score(ts, x, floor, dt_typ)
        verdict = inner.process(ts, value)
        if verdict.anomalous:
            self._learn_shift(ts, x, floor, dt_typ, rebase=True)
            return verdict if verdict.score >= s / (1.0 + s) else verdict._replace(score=s / (1.0 + s))
        low, high = shift.expected(floor)
        before, z = shift.slow, s * shift.cal.threshold
        if not self._learn_shift(ts, x, floor, dt_typ, rebase=False):
            score = s / (1.0 + s)
            return verdict if verdict.score >= score else verdict._replace(score=score)
        return self._explain(s, z, before, low, high)

    def _explain(self, s: float, z: float, before: float, low: float, high: float) -> Verdict:
        """A level_shift verdict: the short mean, where the baseline was, in the stream's units."""
        inner = self.inner
        mean = self.shift.fast
        if inner.counts:
            m = inner.count_m
            mean, before = _from_counts(mean, m), _from_counts(before, m)
            low, high = max(0.0, _from_counts(low, m)), _from_counts(high, m)
        side = "above" if mean > before else "below"
        evidence = (
            f"the mean of the last {round(1.0 / FAST)} readings is {_num(mean)} {{unit}}, "
            f"{_num(z)} times its typical wander {side} the baseline {_num(before)} {{unit}}"
        )
        return Verdict(s / (1.0 + s), True, low, high, "level_shift", evidence)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["MeanShift", "ShiftAwareDetector"]
