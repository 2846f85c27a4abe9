"""A mean-shift question beside the default detector's point residual.

The default detector (`cloud.detect.sensor`) asks of each reading whether it is far from the
stream's fast level, in units of its typical step. A shift of one to three noise sigmas on a
noisy stream never is: the fast level follows it within a few readings and no single reading
stands out. Such a shift shows in the *mean*: `MeanShift` compares a short mean of the stream
(an EWMA over about 1/FAST readings) with a slow baseline (about 1/SLOW readings), in units of
that difference's own typical size on this stream, so autocorrelated streams (random walks,
daily cycles, duty cycles) learn how far their mean wanders by itself. It is an EWMA control
chart, the smooth cousin of a two-sided CUSUM, O(1) per reading. Its threshold is the same
extreme-value tail as the default's (`TailThreshold`) at the same per-time false-alarm budget,
fed one difference per SAMPLE_EVERY readings (the short mean's memory), so the tail sees
nearly independent samples and a shift in the making cannot raise its own threshold.

A shift alerts once and is then learned: after an alarm (its own or the default detector's,
or a swap to the default's other regime) both means restart as the plain mean of the readings
that follow, for HOLD readings in which nothing is alerted, so the new level becomes the normal
one instead of an alert that lasts hours. Each alarm teaches the tail once (capped) and raises
this stream's threshold by BOOST, fading over BOOST_TAU: a stream whose mean jumps by habit
(load bursts, a wandering walk) spends its own false-alarm budget, not the operator's patience.
Readings enter the means clipped to CLIP typical deviations, so a spike (the default's
question) barely moves them, and after a gap in the data both means restart where the stream
is. Counts are left to the default (their mean is an event rate, which shifts by nature).

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
    _num,
)

FAST = 0.05  # gain of the short mean (about 20 readings)
SLOW = 0.005  # gain of the baseline (about 200 readings)
SCALE_GAIN = 0.005  # gain of the typical |short mean - baseline|
NOISE_GAIN = 0.02  # gain of the typical |reading - short mean|, for clipping
CLIP = 4.0  # a reading enters the means at most this many typical deviations away
SCALE_CLIP = 2.0  # a difference teaches the typical difference at most this many of it
SCALE_FLOOR = 0.05  # the typical difference is at least this share of the default's typical step
SHIFT_QUIET = 400  # readings the shift question learns before it may alert (after WARMUP)
SAMPLE_EVERY = 20  # the tail learns one difference per this many readings (about 1 / FAST)
RISK_SAMPLES = 5.0  # a sample's risk is this many readings' (an alarm is one excursion)
TAIL_START = (2.9, 0.5)  # the tail's prior (quantile, mean excess): a half-normal difference
TAIL_FLOOR = 3.0  # the threshold is at least this many typical differences
BOOST = 1.6  # each alarm raises this stream's shift threshold by this factor (its budget) ...
BOOST_TAU = 7 * 86_400.0  # ... and the raise fades over this many seconds
HOLD = 60  # readings after an alarm: both means are the plain mean of them, and nothing alerts


_SHIFT_STATE = ("boost", "cal", "fast", "hold", "last_ts", "n", "noise", "scale", "slow")


class MeanShift:
    """Short mean against a slow baseline, calibrated per stream; alerts once per shift.

    >>> import random
    >>> rng = random.Random(4)
    >>> ms = MeanShift()
    >>> ms.set_sampling(1.0)  # one reading a second
    >>> mean = [10.0] * 1000 + [11.0] * 1000  # a shift of one noise sigma at reading 1000
    >>> alarms = [i for i, m in enumerate(mean) if ms.update(float(i), rng.gauss(m, 1.0), 0.05, 1.0) >= 1.0]
    >>> len(alarms), 1000 < alarms[0] < 1060  # once, within a minute
    (1, True)
    """

    __slots__ = _SHIFT_STATE

    def __getstate__(self) -> dict[str, Any]:
        return named_state(self, _SHIFT_STATE)

    def __setstate__(self, state: object) -> None:
        restore_state(self, state)

    def __init__(self) -> None:
        self.cal = TailThreshold(risk=RISK_MAX * RISK_SAMPLES, floor=TAIL_FLOOR, start=TAIL_START)
        self.n = 0
        self.fast = self.slow = self.scale = self.noise = 0.0
        self.last_ts = -math.inf
        self.hold = 0
        self.boost = 1.0  # the threshold's factor for this stream's recent alarms

    def set_sampling(self, dt_typ: float) -> None:
        """The per-time false-alarm budget, as the default detector sets its own."""
        if dt_typ > 0.0:
            self.cal.set_risk(RISK_SAMPLES * min(RISK_MAX, max(RISK_MIN, dt_typ / ALARM_BUDGET)))

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
        return self._means(x, floor)[2] / self.limit()

    def limit(self) -> float:
        """The threshold: the tail's, raised by BOOST per recent alarm (the per-stream budget)."""
        return self.cal.threshold * self.boost

    def update(self, ts: float, x: float, floor: float, dt_typ: float, *, rebase: bool = False) -> float:
        """Learn x and return its raw score (what `score` said): >= 1 is an alarm, unless
        `rebase` says the default detector explained x, so whatever changed is learned instead
        of alerted twice. `floor` is the smallest typical difference to assume (a share of the
        default's typical step)."""
        n = self.n
        if ts - self.last_ts > GAP * dt_typ > 0.0 and n:  # after a gap: restart the means
            self.fast = self.slow = x
            self.last_ts = ts
            return 0.0
        if ts > self.last_ts:  # noqa: PLR1730 - the hot path avoids calls to max()
            self.last_ts = ts
        fast, slow, z = self._means(x, floor)
        cal = self.cal
        threshold = cal.threshold
        boost = self.boost  # as `score` saw it
        hold = self.hold
        s = z / (threshold * boost) if n >= SHIFT_QUIET and not hold else 0.0
        if n:  # the typical |reading - short mean|, which bounds what one reading can move
            noise = self.noise
            resid = abs(x - self.fast)
            if n > 1 and resid > CLIP * noise:
                resid = CLIP * noise
            self.noise = noise + (NOISE_GAIN if n * NOISE_GAIN > 1.0 else 1.0 / n) * (resid - noise)
        self.n += 1
        if boost > 1.0:  # each alarm's raise fades over BOOST_TAU
            fade = dt_typ / BOOST_TAU
            self.boost = 1.0 + (boost - 1.0) * (1.0 - fade) if fade < 1.0 else 1.0
        if rebase:  # an alarm (the default's): whatever changed is learned from what follows
            self.fast = self.slow = fast
            self.hold = HOLD
            return s
        if hold:  # after an alarm both means are the plain mean of the readings since
            self.fast = self.slow = self.fast + (x - self.fast) / (HOLD + 1 - hold)
            self.hold = hold - 1
            return s
        self.fast = fast
        if s >= 1.0:
            cal.update(min(z, FIRST_FLAG_CAP * threshold))  # once per shift, capped
            self.boost = boost * BOOST
            self.fast = self.slow = fast
            self.hold = HOLD
            return s
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
        return s


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

    def _watched(self) -> bool:
        """The mean question runs once the default has calibrated its start, and not on counts:
        a count's mean is an event rate, and rates shift by nature (bursts, batch jobs); the
        default judges counts on their own scale."""
        inner = self.inner
        return inner.n >= WARMUP and not inner.counts

    def _other_regime(self, x: float) -> bool:
        """x is nearer the default's other regime than its current one (as the default judges:
        in each regime's typical steps): a swap of regimes is the default's to explain."""
        inner = self.inner
        return inner.has_alt and abs(x - inner.alt_level) * inner.dev < abs(x - inner.level) * inner.alt_dev

    def score_one(self, ts: float, value: float) -> float:
        """Score in [0, 1] (0.5 = this stream's threshold) without changing state."""
        score = self.inner.score_one(ts, value)
        if value - value != 0.0 or not self._watched() or self._other_regime(value):
            return score
        inner = self.inner
        s = self.shift.score(ts, value, SCALE_FLOOR * inner.dev, inner.dt_typ)
        return max(score, s / (1.0 + s))

    def learn_one(self, ts: float, value: float) -> None:
        """Learn a reading as normal (NaN and inf are ignored)."""
        if value - value != 0.0:
            return
        inner = self.inner
        if not self._watched():
            inner.learn_one(ts, value)
            return
        floor, dt_typ = SCALE_FLOOR * inner.dev, inner.dt_typ
        other = self._other_regime(value)
        inner.learn_one(ts, value)
        self._learn_shift(ts, value, floor, dt_typ, rebase=other)

    def _learn_shift(self, ts: float, x: float, floor: float, dt_typ: float, *, rebase: bool) -> float:
        shift = self.shift
        if shift.n == 0:
            shift.set_sampling(self.inner.dt_typ)
        return shift.update(ts, x, floor, dt_typ, rebase=rebase)

    def process(self, ts: float, value: float) -> Verdict:
        """The default's verdict, unless it is normal and the stream's mean has shifted."""
        if value - value != 0.0:
            return NON_FINITE
        inner = self.inner
        if inner.n < WARMUP or inner.counts:  # = not _watched(), inlined (the hot path)
            return inner.process(ts, value)
        floor = SCALE_FLOOR * inner.dev  # both as they were before this reading
        dt_typ = inner.dt_typ
        other = (  # = _other_regime(value), inlined
            inner.has_alt
            and abs(value - inner.alt_level) * inner.dev < abs(value - inner.level) * inner.alt_dev
        )
        verdict = inner.process(ts, value)
        shift = self.shift
        if shift.n == 0:
            shift.set_sampling(inner.dt_typ)
        before, limit, scale = shift.slow, shift.cal.threshold * shift.boost, shift.scale
        # the default's alarm, or its other regime (a compressor switching on), explains a
        # change: the mean question learns it instead of alerting
        s = shift.update(ts, value, floor, dt_typ, rebase=verdict.anomalous or other)
        if other:
            return verdict
        score = s / (1.0 + s)
        if s < 1.0 or verdict.anomalous:
            return verdict if verdict.score >= score else verdict._replace(score=score)
        band = limit * (scale if scale > floor else floor)
        mean = shift.fast
        evidence = (
            f"the mean of the last {round(1.0 / FAST)} readings is {_num(mean)} {{unit}}, "
            f"{_num(s * limit)} times its typical wander {'above' if mean > before else 'below'} "
            f"the expected {_num(before)} {{unit}}"
        )
        return Verdict(score, True, before - band, before + band, "level_shift", evidence)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["MeanShift", "ShiftAwareDetector"]
