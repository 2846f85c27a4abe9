"""Sensor faults injected into clean signals, with the ground truth written down as labels.

A fault is a frozen record: its kind, the window `[start, end)` it is active in (seconds since
the epoch) and a magnitude in units of the signal's `scale`, so one schedule means the same thing
for a thermometer and a power meter. `FaultInjector` applies a stream's faults to its clean values
(`None` means the sensor gave no value); `schedule_faults` draws a reproducible random schedule;
`Label` and the JSON-lines helpers record what was injected, for `edgewatch evaluate`.

Stdlib only: simulated devices run the real agent, which never imports numpy.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Spike:
    """A short positive excursion (an electrical glitch, a bad read)."""

    kind: ClassVar[str] = "spike"
    start: float
    end: float
    magnitude: float = 8.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        return value + self.magnitude * scale


@dataclass(frozen=True, slots=True)
class Dip:
    """A short negative excursion."""

    kind: ClassVar[str] = "dip"
    start: float
    end: float
    magnitude: float = 8.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        return value - self.magnitude * scale


@dataclass(frozen=True, slots=True)
class LevelShift:
    """A constant offset for the whole window (a loose mounting, a recalibration gone wrong)."""

    kind: ClassVar[str] = "level_shift"
    start: float
    end: float
    offset: float = 4.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        return value + self.offset * scale


@dataclass(frozen=True, slots=True)
class Stuck:
    """The sensor repeats its last good value (plus an optional tiny jitter: ADC noise)."""

    kind: ClassVar[str] = "stuck"
    start: float
    end: float
    jitter: float = 0.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        if self.jitter <= 0:
            return held
        return held + rng.gauss(0.0, self.jitter * scale)


@dataclass(frozen=True, slots=True)
class Drift:
    """An offset growing linearly from 0 to `total` scales over the window (ageing, fouling)."""

    kind: ClassVar[str] = "drift"
    start: float
    end: float
    total: float = 8.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        frac = (ts - self.start) / (self.end - self.start) if self.end > self.start else 1.0
        return value + self.total * scale * frac


@dataclass(frozen=True, slots=True)
class NoiseBurst:
    """Extra Gaussian noise of `sigma` scales (interference, a failing connector)."""

    kind: ClassVar[str] = "noise_burst"
    start: float
    end: float
    sigma: float = 3.0

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float:
        return value + rng.gauss(0.0, self.sigma * scale)


@dataclass(frozen=True, slots=True)
class Dropout:
    """No value at all: the read fails for the whole window."""

    kind: ClassVar[str] = "dropout"
    start: float
    end: float

    def apply(self, ts: float, value: float, scale: float, held: float, rng: random.Random) -> float | None:
        return None


Fault = Spike | Dip | LevelShift | Stuck | Drift | NoiseBurst | Dropout
FAULT_KINDS: tuple[str, ...] = (
    "spike",
    "dip",
    "level_shift",
    "stuck",
    "drift",
    "noise_burst",
    "dropout",
)


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one injected fault: which stream, what, when (`[start, end)`, epoch s)."""

    device: str
    metric: str
    kind: str
    start: float
    end: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Label:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("a label must be a JSON object")
        start, end = float(raw["start"]), float(raw["end"])
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"bad label window [{start}, {end}]")
        return cls(str(raw["device"]), str(raw["metric"]), str(raw.get("kind", "")), start, end)


def labels_for(device: str, metric: str, faults: Iterable[Fault]) -> list[Label]:
    return [Label(device, metric, f.kind, f.start, f.end) for f in faults]


def write_labels(path: str | Path, labels: Iterable[Label], *, append: bool = False) -> int:
    """Write labels as JSON lines; returns how many."""
    count = 0
    with Path(path).open("a" if append else "w", encoding="utf-8") as fh:
        for label in labels:
            fh.write(label.to_json() + "\n")
            count += 1
    return count


def read_labels(path: str | Path) -> list[Label]:
    """Read a JSON-lines label file; a bad line raises ValueError naming its line number."""
    labels: list[Label] = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                labels.append(Label.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: line {lineno}: {exc}") from exc
    return labels


class FaultInjector:
    """Applies one stream's faults to its clean values, in time order.

    `held` (the value a stuck sensor repeats) is the last value the sensor produced before the
    fault began. Faults must not overlap; timestamps must not go backwards.

    >>> inj = FaultInjector([Spike(60.0, 61.0, magnitude=5.0), Dropout(120.0, 180.0)], scale=1.0)
    >>> [inj.apply(t, 10.0) for t in (0.0, 60.0, 120.0, 180.0)]
    [10.0, 15.0, None, 10.0]
    """

    __slots__ = ("_held", "_i", "_last", "_rng", "faults", "scale")

    def __init__(self, faults: Sequence[Fault], *, scale: float, seed: int = 0) -> None:
        self.faults = sorted(faults, key=lambda f: f.start)
        self.scale = scale
        self._rng = random.Random(seed)
        self._i = 0
        self._held: float | None = None
        self._last: float | None = None

    def active(self, ts: float) -> Fault | None:
        faults, i = self.faults, self._i
        while i < len(faults) and faults[i].end <= ts:
            i += 1
            self._held = None
        self._i = i
        if i < len(faults) and faults[i].start <= ts:
            return faults[i]
        return None

    def apply(self, ts: float, value: float) -> float | None:
        fault = self.active(ts)
        if fault is None:
            self._last = value
            return value
        if self._held is None:
            self._held = self._last if self._last is not None else value
        out = fault.apply(ts, value, self.scale, self._held, self._rng)
        if out is not None:
            self._last = out if fault.kind != "stuck" else self._last
        return out


# Duration ranges (seconds, or sampling periods for the short ones) and magnitudes per kind.
_DURATIONS: dict[str, tuple[float, float]] = {
    "level_shift": (1800.0, 3 * 3600.0),
    "stuck": (1800.0, 3 * 3600.0),
    "drift": (2 * 3600.0, 6 * 3600.0),
    "noise_burst": (600.0, 3600.0),
    "dropout": (300.0, 3600.0),
}
_SHORT_PERIODS = (1, 3)  # spikes and dips last 1-3 samples


def _draw_fault(kind: str, start: float, period: float, rng: random.Random) -> Fault:
    if kind in ("spike", "dip"):
        duration = period * rng.randint(*_SHORT_PERIODS)
        magnitude = rng.uniform(5.0, 12.0)
        if kind == "spike":
            return Spike(start, start + duration, magnitude)
        return Dip(start, start + duration, magnitude)
    low, high = _DURATIONS[kind]
    end = start + max(period, rng.uniform(low, high))
    if kind == "level_shift":
        return LevelShift(start, end, rng.choice((-1.0, 1.0)) * rng.uniform(3.0, 8.0))
    if kind == "stuck":
        return Stuck(start, end, rng.choice((0.0, 0.0, 0.01)))
    if kind == "drift":
        return Drift(start, end, rng.choice((-1.0, 1.0)) * rng.uniform(6.0, 15.0))
    if kind == "noise_burst":
        return NoiseBurst(start, end, rng.uniform(1.5, 4.0))
    if kind == "dropout":
        return Dropout(start, end)
    raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")


def schedule_faults(
    seed: int,
    start: float,
    end: float,
    *,
    period: float = 60.0,
    kinds: Sequence[str] = FAULT_KINDS,
    per_day: float = 2.0,
    min_gap: float = 3 * 3600.0,
) -> list[Fault]:
    """A reproducible random fault schedule for one stream over `[start, end)`.

    Faults arrive at about `per_day` per day, never overlap, and are at least `min_gap` seconds
    apart, so each one is a separate event a detector can recover from. `period` is the
    sampling interval (spikes and dips last 1-3 samples).

    >>> [f.kind for f in schedule_faults(7, 0.0, 4 * 86400.0)]
    ['dip', 'drift', 'spike', 'drift', 'drift', 'drift', 'drift', 'dip']
    """
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if not kinds or per_day <= 0:
        return []
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = start + rng.expovariate(per_day / 86400.0)
    while t < end:
        fault = _draw_fault(rng.choice(kinds), t, period, rng)
        if fault.end > end:
            break
        faults.append(fault)
        t = fault.end + min_gap + rng.expovariate(per_day / 86400.0)
    return faults


__all__ = [
    "FAULT_KINDS",
    "Dip",
    "Drift",
    "Dropout",
    "Fault",
    "FaultInjector",
    "Label",
    "LevelShift",
    "NoiseBurst",
    "Spike",
    "Stuck",
    "labels_for",
    "read_labels",
    "schedule_faults",
    "write_labels",
]
