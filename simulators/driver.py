"""A simulated sensor that plugs into the agent like a hardware driver.

It is registered under the `edgewatch.drivers` entry point as `simulated`, so a device config
can name it (`driver = "simulated"`) and run the real agent on a laptop. The fleet builds it
directly with a virtual clock and a fault schedule.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from devices.errors import DriverConfigError, SensorReadError
from devices.model import Measurement
from simulators.faults import FAULT_KINDS, Fault, FaultInjector, schedule_faults
from simulators.signals import SIGNAL_KINDS, SignalModel, TemperatureModel, make_signal

PARAMS = frozenset({"kinds", "seed", "faults", "faults_per_day", "period_s"})


class SimulatedDriver:
    """Clean signals from `simulators.signals`, with faults from `simulators.faults` applied.

    Params: `kinds` (signal kinds, default temperature and humidity), `seed`, `faults` (fault
    kinds to inject at random, default none), `faults_per_day`, `period_s` (sampling period, to
    size spikes). A dropout gives no value for that metric; if every metric drops out the read
    fails, as a disconnected sensor would.

    >>> d = SimulatedDriver({"kinds": ["power"], "seed": 1}, clock=lambda: 1.7e9)
    >>> [m.metric for m in d.read()]
    ['power']
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.time,
        faults: Mapping[str, Sequence[Fault]] | None = None,
    ) -> None:
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise DriverConfigError(
                f"simulated: unknown param {unknown[0]!r}; valid: {', '.join(sorted(PARAMS))}"
            )
        kinds = params.get("kinds", ["temperature", "humidity"])
        if not isinstance(kinds, list) or not kinds or any(k not in SIGNAL_KINDS for k in kinds):
            raise DriverConfigError(
                f"simulated: param 'kinds' must be a list drawn from {', '.join(SIGNAL_KINDS)}"
            )
        seed = params.get("seed", 0)
        if not isinstance(seed, int):
            raise DriverConfigError("simulated: param 'seed' must be an integer")
        self.clock = clock
        # Temperature first: humidity moves against it.
        ordered = sorted(dict.fromkeys(kinds), key=lambda k: k != "temperature")
        self.models: dict[str, SignalModel] = {}
        temperature: TemperatureModel | None = None
        for kind in ordered:
            model = make_signal(kind, seed, temperature=temperature)
            if isinstance(model, TemperatureModel):
                temperature = model
            self.models[kind] = model
        if faults is None:
            fault_kinds = params.get("faults", [])
            if not isinstance(fault_kinds, list) or any(k not in FAULT_KINDS for k in fault_kinds):
                raise DriverConfigError(
                    f"simulated: param 'faults' must be a list drawn from {', '.join(FAULT_KINDS)}"
                )
            per_day = float(params.get("faults_per_day", 2.0))
            period = float(params.get("period_s", 60.0))
            now = clock()
            faults = {
                kind: schedule_faults(
                    random.Random(f"{seed}:{kind}").randrange(2**31),
                    now,
                    now + 365 * 86400.0,
                    period=period,
                    kinds=fault_kinds,
                    per_day=per_day,
                )
                if fault_kinds
                else []
                for kind in self.models
            }
        self.faults = {kind: list(faults.get(kind, ())) for kind in self.models}
        self.injectors = {
            kind: FaultInjector(self.faults[kind], scale=model.scale, seed=seed)
            for kind, model in self.models.items()
        }

    def read(self) -> list[Measurement]:
        ts = self.clock()
        out = []
        for kind, model in self.models.items():
            value = self.injectors[kind].apply(ts, model.step(ts))
            if value is not None:
                out.append(Measurement(kind, value, model.unit))
        if not out:
            raise SensorReadError("simulated dropout: no value")
        return out

    def close(self) -> None:
        pass
