"""Seeded signal models, one per sensor kind, that a simulated device steps with a timestamp.

Each model is a small stateful object: `step(ts)` returns the clean value at `ts` (call it with
non-decreasing timestamps; a repeated or earlier `ts` advances no hidden state). The same seed and
the same timestamps give the same values, on any machine. `scale` is the size of "one unit of
anomaly" for the kind (a few times its short-term noise), so faults can be sized relative to it.

Stdlib only (`random`, `math`): simulated devices import this module next to the real agent,
which must never import numpy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

DAY = 86_400.0


class SignalModel(Protocol):
    """What a simulated sensor needs from a model."""

    kind: str
    unit: str
    scale: float

    def step(self, ts: float) -> float:
        """The clean value at `ts` (seconds since the epoch, non-decreasing)."""
        ...


class _OrnsteinUhlenbeck:
    """Mean-reverting random walk stepped by elapsed time, so any sampling rate gives one law."""

    __slots__ = ("sd", "tau", "x")

    def __init__(self, sd: float, tau: float, rng: random.Random) -> None:
        self.sd = sd
        self.tau = tau
        self.x = rng.gauss(0.0, sd) if sd > 0 else 0.0

    def advance(self, dt: float, rng: random.Random) -> float:
        if dt > 0 and self.sd > 0:
            decay = math.exp(-dt / self.tau)
            self.x = self.x * decay + self.sd * math.sqrt(1.0 - decay * decay) * rng.gauss(0, 1)
        return self.x


def _quantize(value: float, resolution: float) -> float:
    if resolution <= 0:
        return value
    return round(round(value / resolution) * resolution, 6)


def _daily(ts: float, peak_hour: float) -> float:
    """+1 at `peak_hour` UTC, -1 twelve hours later."""
    return math.cos(2.0 * math.pi * ((ts % DAY) / 3600.0 - peak_hour) / 24.0)


class _Clock:
    """Elapsed time since the previous step, never negative."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: float | None = None

    def tick(self, ts: float) -> float:
        if self.last is None:
            self.last = ts
            return 0.0
        if ts <= self.last:
            return 0.0
        dt = ts - self.last
        self.last = ts
        return dt


class TemperatureModel:
    """Air temperature: daily cycle + slow mean-reverting wander + sensor noise.

    >>> model = TemperatureModel(seed=1)
    >>> [model.step(t) for t in (0.0, 60.0, 120.0)]
    [20.0, 19.875, 19.8125]
    """

    kind = "temperature"
    unit = "°C"

    def __init__(
        self,
        seed: int = 0,
        *,
        base: float = 21.0,
        daily_amplitude: float = 3.0,
        peak_hour: float = 15.0,
        wander_sd: float = 0.8,
        wander_tau: float = 6 * 3600.0,
        noise_sd: float = 0.05,
        resolution: float = 0.0625,
    ) -> None:
        self._rng = random.Random(seed)
        self.base = base
        self.daily_amplitude = daily_amplitude
        self.peak_hour = peak_hour
        self.noise_sd = noise_sd
        self.resolution = resolution
        self.scale = max(0.5, 8 * noise_sd)
        self._wander = _OrnsteinUhlenbeck(wander_sd, wander_tau, self._rng)
        self._clock = _Clock()
        self.level = base  # the noise-free value at the last step (humidity follows it)

    def step(self, ts: float) -> float:
        wander = self._wander.advance(self._clock.tick(ts), self._rng)
        self.level = self.base + self.daily_amplitude * _daily(ts, self.peak_hour) + wander
        return _quantize(self.level + self._rng.gauss(0.0, self.noise_sd), self.resolution)


class HumidityModel:
    """Relative humidity that moves against temperature (warmer air holds more water).

    Pass the device's `TemperatureModel` to couple the two, and step the temperature first at
    each timestamp; without one the model owns a private temperature it steps itself.

    >>> temp = TemperatureModel(seed=1)
    >>> rh = HumidityModel(seed=2, temperature=temp)
    >>> temp.step(0.0), rh.step(0.0)
    (20.0, 54.5)
    """

    kind = "humidity"
    unit = "%RH"

    def __init__(
        self,
        seed: int = 0,
        *,
        temperature: TemperatureModel | None = None,
        base: float = 45.0,
        coupling: float = -2.5,
        wander_sd: float = 3.0,
        wander_tau: float = 8 * 3600.0,
        noise_sd: float = 0.3,
        resolution: float = 0.1,
    ) -> None:
        self._rng = random.Random(seed)
        self._owns_temperature = temperature is None
        self.temperature = temperature or TemperatureModel(self._rng.randrange(2**31))
        self.base = base
        self.coupling = coupling
        self.noise_sd = noise_sd
        self.resolution = resolution
        self.scale = max(2.0, 6 * noise_sd)
        self._wander = _OrnsteinUhlenbeck(wander_sd, wander_tau, self._rng)
        self._clock = _Clock()

    def step(self, ts: float) -> float:
        if self._owns_temperature:
            self.temperature.step(ts)
        wander = self._wander.advance(self._clock.tick(ts), self._rng)
        delta_t = self.temperature.level - self.temperature.base
        level = self.base + self.coupling * delta_t + wander
        value = level + self._rng.gauss(0.0, self.noise_sd)
        return _quantize(min(100.0, max(0.0, value)), self.resolution)


class VibrationModel:
    """Vibration RMS velocity of a continuously running machine: load wander, multiplicative noise.

    >>> model = VibrationModel(seed=1)
    >>> [model.step(t) for t in (0.0, 60.0)]
    [2.411, 2.206]
    """

    kind = "vibration"
    unit = "mm/s"

    def __init__(
        self,
        seed: int = 0,
        *,
        base: float = 2.0,
        load_sd: float = 0.1,
        load_tau: float = 2 * 3600.0,
        noise: float = 0.04,
        resolution: float = 0.001,
    ) -> None:
        self._rng = random.Random(seed)
        self.base = base
        self.noise = noise
        self.resolution = resolution
        self.scale = base * max(0.1, 3 * noise)
        self._load = _OrnsteinUhlenbeck(load_sd, load_tau, self._rng)
        self._clock = _Clock()

    def step(self, ts: float) -> float:
        load = self._load.advance(self._clock.tick(ts), self._rng)
        level = self.base * math.exp(load)
        return _quantize(level * math.exp(self._rng.gauss(0.0, self.noise)), self.resolution)


class PowerModel:
    """Power draw of a duty-cycled appliance (compressor, heater): on/off phases with jitter.

    >>> model = PowerModel(seed=1)
    >>> [model.step(t) for t in range(0, 3600, 600)]
    [5.6, 5.2, 153.1, 4.6, 5.0, 4.7]
    """

    kind = "power"
    unit = "W"

    def __init__(
        self,
        seed: int = 0,
        *,
        on_watts: float = 150.0,
        off_watts: float = 5.0,
        period: float = 2400.0,
        duty: float = 0.4,
        jitter: float = 0.2,
        noise: float = 0.01,
        off_noise_sd: float = 0.4,
        resolution: float = 0.1,
    ) -> None:
        self._rng = random.Random(seed)
        self.on_watts = on_watts
        self.off_watts = off_watts
        self.period = period
        self.duty = duty
        self.jitter = jitter
        self.noise = noise
        self.off_noise_sd = off_noise_sd
        self.resolution = resolution
        self.scale = 0.05 * on_watts
        self._on = False
        self._phase_end: float | None = None
        self._clock = _Clock()
        self._ambient = _OrnsteinUhlenbeck(0.03, 4 * 3600.0, self._rng)

    def _phase_length(self) -> float:
        share = self.duty if self._on else 1.0 - self.duty
        return self.period * share * self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def step(self, ts: float) -> float:
        drift = self._ambient.advance(self._clock.tick(ts), self._rng)
        if self._phase_end is None:
            self._on = self._rng.random() < self.duty
            self._phase_end = ts + self._phase_length() * self._rng.random()
        while ts >= self._phase_end:
            self._on = not self._on
            self._phase_end += self._phase_length()
        if self._on:
            value = self.on_watts * (1.0 + drift) * (1.0 + self._rng.gauss(0.0, self.noise))
        else:
            value = self.off_watts + self._rng.gauss(0.0, self.off_noise_sd)
        return _quantize(max(0.0, value), self.resolution)


class CpuTemperatureModel:
    """SoC temperature following a bursty load through a first-order thermal lag.

    >>> model = CpuTemperatureModel(seed=1)
    >>> [model.step(t) for t in (0.0, 60.0, 120.0)]
    [42.5, 44.5, 45.0]
    """

    kind = "cpu_temp"
    unit = "°C"

    def __init__(
        self,
        seed: int = 0,
        *,
        idle: float = 42.0,
        gain: float = 25.0,
        tau: float = 90.0,
        burst_every: float = 1800.0,
        burst_length: tuple[float, float] = (60.0, 600.0),
        noise_sd: float = 0.3,
        resolution: float = 0.5,
    ) -> None:
        self._rng = random.Random(seed)
        self.idle = idle
        self.gain = gain
        self.tau = tau
        self.burst_every = burst_every
        self.burst_length = burst_length
        self.noise_sd = noise_sd
        self.resolution = resolution
        self.scale = max(1.5, 5 * noise_sd)
        self._clock = _Clock()
        self._background = _OrnsteinUhlenbeck(0.05, 1800.0, self._rng)
        self._burst_load = 0.0
        self._burst_end = -math.inf
        self._next_burst: float | None = None
        self._temp = idle

    def _load_at(self, ts: float) -> float:
        if self._next_burst is None:
            self._next_burst = ts + self._rng.expovariate(1.0 / self.burst_every)
        while ts >= self._next_burst:
            self._burst_load = self._rng.uniform(0.4, 1.0)
            self._burst_end = self._next_burst + self._rng.uniform(*self.burst_length)
            self._next_burst = self._burst_end + self._rng.expovariate(1.0 / self.burst_every)
        return self._burst_load if ts < self._burst_end else 0.0

    def step(self, ts: float) -> float:
        dt = self._clock.tick(ts)
        load = min(1.0, max(0.0, 0.1 + self._background.advance(dt, self._rng) + self._load_at(ts)))
        target = self.idle + self.gain * load
        self._temp += (target - self._temp) * (1.0 - math.exp(-dt / self.tau))
        return _quantize(self._temp + self._rng.gauss(0.0, self.noise_sd), self.resolution)


SIGNAL_KINDS: tuple[str, ...] = ("temperature", "humidity", "vibration", "power", "cpu_temp")


def _random_temperature(rng: random.Random, seed: int) -> TemperatureModel:
    return TemperatureModel(
        seed,
        base=rng.uniform(15.0, 27.0),
        daily_amplitude=rng.uniform(1.0, 5.0),
        peak_hour=rng.uniform(13.0, 17.0),
        wander_sd=rng.uniform(0.3, 1.2),
        noise_sd=rng.uniform(0.03, 0.1),
        resolution=rng.choice((0.0625, 0.01, 0.1)),
    )


def make_signal(kind: str, seed: int, *, temperature: TemperatureModel | None = None) -> SignalModel:
    """A model of `kind` with plausible parameters drawn from `seed` (a varied fleet, reproducibly).

    `temperature` couples a humidity model to the device's temperature model.

    >>> make_signal("power", 3).kind
    'power'
    """
    rng = random.Random(f"{kind}:{seed}")
    inner = rng.randrange(2**31)
    builders: dict[str, Callable[[], SignalModel]] = {
        "temperature": lambda: _random_temperature(rng, inner),
        "humidity": lambda: HumidityModel(
            inner,
            temperature=temperature,
            base=rng.uniform(30.0, 60.0),
            coupling=rng.uniform(-3.5, -1.5),
            wander_sd=rng.uniform(1.0, 4.0),
            noise_sd=rng.uniform(0.2, 0.5),
        ),
        "vibration": lambda: VibrationModel(
            inner,
            base=rng.uniform(0.8, 6.0),
            load_sd=rng.uniform(0.05, 0.15),
            noise=rng.uniform(0.02, 0.06),
        ),
        "power": lambda: PowerModel(
            inner,
            on_watts=rng.uniform(60.0, 1500.0),
            off_watts=rng.uniform(1.0, 10.0),
            period=rng.uniform(1200.0, 4800.0),
            duty=rng.uniform(0.2, 0.6),
        ),
        "cpu_temp": lambda: CpuTemperatureModel(
            inner,
            idle=rng.uniform(38.0, 50.0),
            gain=rng.uniform(10.0, 30.0),
            burst_every=rng.uniform(900.0, 5400.0),
        ),
    }
    builder = builders.get(kind)
    if builder is None:
        raise ValueError(f"unknown signal kind {kind!r}; known: {', '.join(SIGNAL_KINDS)}")
    return builder()


__all__ = [
    "SIGNAL_KINDS",
    "CpuTemperatureModel",
    "HumidityModel",
    "PowerModel",
    "SignalModel",
    "TemperatureModel",
    "VibrationModel",
    "make_signal",
]
