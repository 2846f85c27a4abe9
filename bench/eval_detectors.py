"""Labelled benchmark for the detectors (issue 4): simulated fleet + injected faults -> metrics.

    .venv/bin/python bench/eval_detectors.py                    # 60 devices x 5 metrics x 2 days
    .venv/bin/python bench/eval_detectors.py --devices 12 --days 1 --detectors default,hst

Every device has five streams (temperature, humidity coupled to it, vibration, power with a duty
cycle, CPU temperature following load), sampled once a minute. Each stream gets a random fault
schedule (spike, dip, level shift, stuck, drift, noise burst, dropout), faults starting after a
6 h burn-in. Each detector runs label-free with its fixed default config through
`cloud.analysis.evaluate.detect_episodes` (the aggregator's `process` path); episodes open and
close by the aggregator's own episode machine and policy (5 normal readings or 300 s); a label
counts as detected by an episode overlapping it or opening within `--tolerance` seconds after
its end. Dropouts are gaps (no readings), not events to detect.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.analysis.evaluate import Episode, Metrics, Window, detect_episodes, evaluate
from cloud.detect import DETECTORS, make_detector
from simulators.faults import FaultInjector, schedule_faults
from simulators.signals import SIGNAL_KINDS, SignalModel, TemperatureModel, make_signal

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
BURN_IN = 6 * 3600.0
BASELINES = ("default", "hst", "gaussian", "ewma")


@dataclass(frozen=True, slots=True)
class Stream:
    device: str
    metric: str
    points: tuple[tuple[float, float], ...]
    labels: tuple[Window, ...]


def device_streams(
    seed: int, index: int, *, days: float, period: float, per_day: float = 2.0
) -> list[Stream]:
    """The five labelled streams of device `index` (deterministic in `seed`)."""
    device = f"dev{index:03d}"
    models: dict[str, SignalModel] = {}
    temperature = make_signal("temperature", seed * 100_003 + index)
    assert isinstance(temperature, TemperatureModel)
    models["temperature"] = temperature
    for kind in SIGNAL_KINDS[1:]:
        models[kind] = make_signal(kind, seed * 100_003 + index, temperature=temperature)
    end = T0 + days * 86_400.0
    injectors = {}
    labels: dict[str, list[Window]] = {}
    for kind, model in models.items():
        fseed = random.Random(f"faults:{seed}:{device}:{kind}").randrange(2**31)
        faults = schedule_faults(fseed, T0 + BURN_IN, end, period=period, per_day=per_day)
        injectors[kind] = FaultInjector(faults, scale=model.scale, seed=fseed)
        labels[kind] = [Window(device, kind, f.start, f.end, f.kind) for f in faults]
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    n = int(days * 86_400.0 / period)
    for i in range(n):
        ts = T0 + i * period
        for kind, model in models.items():  # temperature first: humidity reads its level
            value = injectors[kind].apply(ts, model.step(ts))
            if value is not None:
                points[kind].append((ts, value))
    return [Stream(device, k, tuple(points[k]), tuple(labels[k])) for k in models]


def _run_device(args: tuple[int, int, float, float, Sequence[str]]) -> dict[str, object]:
    seed, index, days, period, detectors = args
    streams = device_streams(seed, index, days=days, period=period)
    episodes: dict[str, list[Episode]] = {}
    seconds: dict[str, float] = {}
    for name in detectors:
        eps: list[Episode] = []
        started = time.perf_counter()
        for s in streams:
            det = make_detector(name, seed=index)
            eps += detect_episodes(det, s.points, device=s.device, metric=s.metric)
        seconds[name] = time.perf_counter() - started
        episodes[name] = eps
    return {
        "labels": [w for s in streams for w in s.labels],
        "episodes": episodes,
        "seconds": seconds,
        "readings": sum(len(s.points) for s in streams),
        "streams": len(streams),
    }


def run(
    seed: int,
    devices: int,
    days: float,
    *,
    period: float = 60.0,
    detectors: Sequence[str] = BASELINES,
    jobs: int = 2,
) -> Iterator[dict[str, object]]:
    """Per-device results (labels, episodes per detector, seconds), in device order."""
    tasks = [(seed, i, days, period, tuple(detectors)) for i in range(devices)]
    if jobs <= 1:
        yield from map(_run_device, tasks)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(_run_device, tasks, chunksize=1)


def _fmt(x: float, spec: str) -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--devices", type=int, default=60, help="5 streams each")
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--period", type=float, default=60.0, help="seconds between readings")
    ap.add_argument("--detectors", default=",".join(BASELINES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=1800.0)
    ap.add_argument("--by-kind", action="store_true", help="also print recall per fault kind")
    ap.add_argument("--by-metric", action="store_true", help="also print metrics per signal kind")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        ap.error(f"unknown detectors {unknown}")

    labels: list[Window] = []
    episodes: dict[str, list[Episode]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    readings = streams = 0
    started = time.perf_counter()
    for res in run(
        args.seed,
        args.devices,
        args.days,
        period=args.period,
        detectors=detectors,
        jobs=args.jobs,
    ):
        labels += res["labels"]  # type: ignore[arg-type]
        for name, eps in res["episodes"].items():  # type: ignore[attr-defined]
            episodes[name] += eps
        for name, sec in res["seconds"].items():  # type: ignore[attr-defined]
            seconds[name] += sec
        readings += res["readings"]  # type: ignore[operator]
        streams += res["streams"]  # type: ignore[operator]
    wall = time.perf_counter() - started
    stream_days = streams * args.days
    results: dict[str, Metrics] = {
        name: evaluate(labels, episodes[name], stream_days=stream_days, tolerance=args.tolerance)
        for name in detectors
    }
    if args.json:
        print(json.dumps({name: m.to_dict() for name, m in results.items()}, indent=2))
        return 0
    events = results[detectors[0]].events
    print(
        f"seed {args.seed}: {streams} streams x {args.days:g} days at 1/{args.period:g}s = "
        f"{readings} readings, {events} labelled events (+ dropouts), wall {wall:.0f} s"
    )
    print()
    print(
        "| detector | event recall | precision | false alarms / stream-day | "
        "mean delay | median delay | µs/reading (eval) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in results.items():
        us = 1e6 * seconds[name] / readings
        print(
            f"| {name} | {_fmt(100 * m.recall, '.1f')}% ({m.detected}/{m.events}) | "
            f"{_fmt(100 * m.precision, '.1f')}% | {_fmt(m.false_alarms_per_stream_day, '.3f')} | "
            f"{_fmt(m.delay_mean / 60, '.1f')} min | {_fmt(m.delay_median / 60, '.1f')} min | "
            f"{us:.1f} |"
        )
    if args.by_kind:
        kinds = sorted({k for m in results.values() for k in m.by_kind})
        print()
        print("| recall by kind | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for name, m in results.items():
            cells = [
                f"{100 * d / n:.0f}%" if n else "n/a" for d, n in (m.by_kind.get(k, (0, 0)) for k in kinds)
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.by_metric:
        print()
        print("| detector | metric | recall | FA/stream-day |")
        print("|---|---|---|---|")
        for name in detectors:
            for metric in SIGNAL_KINDS:
                m = evaluate(
                    [w for w in labels if w.metric == metric],
                    [e for e in episodes[name] if e.metric == metric],
                    stream_days=stream_days / len(SIGNAL_KINDS),
                    tolerance=args.tolerance,
                )
                print(
                    f"| {name} | {metric} | {_fmt(100 * m.recall, '.1f')}% | "
                    f"{_fmt(m.false_alarms_per_stream_day, '.3f')} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
