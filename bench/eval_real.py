"""Detectors on real and hard data (issue 12): SKAB, the simulator benchmark, a false-alarm torture set.

    .venv/bin/python bench/eval_real.py                      # all three sets, default vs hst vs gaussian
    .venv/bin/python bench/eval_real.py --sets skab,torture --detectors default
    .venv/bin/python bench/eval_real.py --quick              # a smoke test in seconds (tests run it)

Every detector runs label-free with its fixed default config through `make_detector(name)` and
`process` (the aggregator's path); episodes open and close by the aggregator's own episode
machine and policy (`cloud.analysis.evaluate.detect_episodes`). A detection is where an episode
OPENS. Nothing is fitted on any label here.

- SKAB (Katser & Kozitsin 2020, `--skab DIR`): 34 runs of a water-circulation testbed, one reading
  a second; a run is one device with 8 streams, and a detection is any of its streams opening an
  episode. NAB-style scores per device with SKAB's published convention (a 60 s window after each
  changepoint, as `evaluating.py` of the SKAB repository builds them) and, as a second view, the
  whole labelled anomaly interval. SKAB's anomaly-free run counts its false alarms.
- The simulator benchmark: `bench/eval_detectors.py`'s seeded fleet (5 streams per device,
  injected faults), NAB per stream with the fault windows, event recall with its 1800 s tolerance.
- The torture set: anomaly-free streams of shapes real fleets produce (seeded, about 30 days
  each). Every episode on them is a false alarm; the table gives alerts per stream per 30 days.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud.analysis.evaluate import (  # noqa: E402 - after the path
    DAY,
    Episode,
    Metrics,
    NabScore,
    Window,
    detect_episodes,
    evaluate,
    nab_scores,
)
from cloud.detect import DETECTORS, make_detector  # noqa: E402

DETECTORS_COMPARED = ("default", "hst", "gaussian")
SKAB_DIR = Path("/work/shared/datasets/skab/data")
SKAB_WINDOW = 60.0  # seconds after each changepoint (SKAB's published NAB convention)
SIM_TOLERANCE = 1800.0  # as in bench/eval_detectors.py
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
MONTH = 30 * DAY

Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Stream:
    device: str
    metric: str
    points: Points


# -- SKAB -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkabRun:
    device: str  # e.g. "valve1/3"
    streams: tuple[Stream, ...]
    changepoints: tuple[float, ...]
    intervals: tuple[tuple[float, float], ...]  # the labelled anomalous periods


def _skab_time(text: str) -> float:
    # local testbed time; read as UTC (only differences matter)
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def load_skab_run(path: Path, device: str) -> SkabRun:
    """One SKAB csv: 8 value columns, and `anomaly`/`changepoint` when labelled."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    header, body = rows[0], [r for r in rows[1:] if r]
    labels = {"anomaly", "changepoint"}
    columns = [i for i, name in enumerate(header) if name != "datetime" and name not in labels]
    ts = [_skab_time(r[0]) for r in body]
    streams = tuple(
        Stream(device, header[i], tuple((t, float(r[i])) for t, r in zip(ts, body, strict=True)))
        for i in columns
    )
    changepoints: list[float] = []
    intervals: list[tuple[float, float]] = []
    if "anomaly" in header:
        ia, ic = header.index("anomaly"), header.index("changepoint")
        start: float | None = None
        for t, r in zip(ts, body, strict=True):
            if float(r[ic]) == 1.0:
                changepoints.append(t)
            if float(r[ia]) == 1.0:
                start = t if start is None else start
                last = t
            elif start is not None:
                intervals.append((start, last))
                start = None
        if start is not None:
            intervals.append((start, ts[-1]))
    return SkabRun(device, streams, tuple(changepoints), tuple(intervals))


def skab_runs(root: Path, limit: int | None = None) -> list[SkabRun]:
    paths = sorted(
        (p for sub in ("valve1", "valve2", "other") for p in (root / sub).glob("*.csv")),
        key=lambda p: (p.parent.name, int(p.stem)),
    )
    return [load_skab_run(p, f"{p.parent.name}/{p.stem}") for p in paths[:limit]]


# -- the torture set --------------------------------------------------------------------------


def _sine_daily(rng: random.Random, days: float) -> Points:
    """A smooth daily cycle at 5-minute sampling (an outdoor temperature), almost noise-free."""
    n = int(days * DAY / 300.0)
    amp, base, phase = rng.uniform(3, 10), rng.uniform(5, 25), rng.uniform(0, 2 * math.pi)
    return tuple(
        (T0 + 300.0 * i, base + amp * math.sin(2 * math.pi * i * 300.0 / DAY + phase) + rng.gauss(0, 0.01))
        for i in range(n)
    )


def _square_wave(rng: random.Random, days: float) -> Points:
    """A duty cycle (a compressor: on ~1.2 kW for 10-30 min, off 20-60 min) at 1-minute sampling."""
    out: list[tuple[float, float]] = []
    t, end, on = T0, T0 + days * DAY, False
    level_on = rng.uniform(800, 1500)
    while t < end:
        stay = rng.uniform(600, 1800) if on else rng.uniform(1200, 3600)
        stop = t + stay
        while t < stop and t < end:
            out.append((t, (level_on + rng.gauss(0, 15)) if on else abs(rng.gauss(0, 2))))
            t += 60.0
        on = not on
    return tuple(out)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:  # normal approximation, fine for a benchmark generator
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _bursty_counts(rng: random.Random, days: float) -> Points:
    """Events per minute from a Markov-modulated Poisson process: quiet, with bursts of activity."""
    out: list[tuple[float, float]] = []
    n, busy = int(days * DAY / 60.0), False
    quiet, loud = rng.uniform(0.5, 3.0), rng.uniform(15, 40)
    for i in range(n):
        busy = (rng.random() < 0.9) if busy else (rng.random() < 0.01)
        out.append((T0 + 60.0 * i, float(_poisson(rng, loud if busy else quiet))))
    return tuple(out)


def _heavy_tailed(rng: random.Random, days: float) -> Points:
    """Requests per 5 minutes with a daily rhythm, and sizes from a Pareto tail (batch jobs)."""
    out: list[tuple[float, float]] = []
    n = int(days * DAY / 300.0)
    base = rng.uniform(20, 200)
    for i in range(n):
        rhythm = 1.0 + 0.6 * math.sin(2 * math.pi * i * 300.0 / DAY)
        count = _poisson(rng, base * rhythm)
        if rng.random() < 0.05:
            count += int(base * (rng.paretovariate(1.5) - 1.0))
        out.append((T0 + 300.0 * i, float(count)))
    return tuple(out)


def _random_walk(rng: random.Random, days: float) -> Points:
    """A random walk (a tank level, a battery, a price) at 1-minute sampling."""
    n, x, sd = int(days * DAY / 60.0), rng.uniform(40, 60), rng.uniform(0.05, 0.3)
    out = []
    for i in range(n):
        x += rng.gauss(0, sd)
        out.append((T0 + 60.0 * i, x))
    return tuple(out)


def _quantised(rng: random.Random, days: float) -> Points:
    """A room temperature read by a 0.5-degree sensor: a slow daily cycle in coarse steps."""
    n, base, q = int(days * DAY / 60.0), rng.uniform(18, 23), 0.5
    return tuple(
        (
            T0 + 60.0 * i,
            q * round((base + 1.2 * math.sin(2 * math.pi * i * 60.0 / DAY) + rng.gauss(0, 0.15)) / q),
        )
        for i in range(n)
    )


def _flat_with_steps(rng: random.Random, days: float) -> Points:
    """A setpoint: flat for days (resolution-level flicker), with a rare legitimate step."""
    n, x = int(days * DAY / 60.0), float(rng.choice((40, 55, 60, 65)))
    steps = {int(rng.uniform(0.2, 1.0) * n) for _ in range(max(1, int(days / 15)))}
    out = []
    for i in range(n):
        if i in steps:
            x += rng.choice((-5.0, 5.0, 10.0))
        flicker = 0.1 if rng.random() < 0.02 else 0.0
        out.append((T0 + 60.0 * i, x + flicker))
    return tuple(out)


def _irregular_gaps(rng: random.Random, days: float) -> Points:
    """A humidity-like stream sampled irregularly (30-300 s), with outages of 1-8 hours."""
    out: list[tuple[float, float]] = []
    t, end = T0, T0 + days * DAY
    base, amp = rng.uniform(40, 60), rng.uniform(5, 10)
    while t < end:
        out.append((t, base + amp * math.sin(2 * math.pi * (t - T0) / DAY) + rng.gauss(0, 0.3)))
        t += rng.uniform(30, 300)
        if rng.random() < 0.002:
            t += rng.uniform(3600, 8 * 3600)
    return tuple(out)


TORTURE: dict[str, Callable[[random.Random, float], Points]] = {
    "sine_daily_5min": _sine_daily,
    "square_wave": _square_wave,
    "bursty_poisson": _bursty_counts,
    "heavy_tailed_counts": _heavy_tailed,
    "random_walk": _random_walk,
    "quantised": _quantised,
    "flat_rare_steps": _flat_with_steps,
    "irregular_gaps": _irregular_gaps,
}


def torture_stream(shape: str, seed: int, index: int, days: float) -> Stream:
    rng = random.Random(f"torture:{seed}:{shape}:{index}")
    return Stream(f"{shape}-{index}", shape, TORTURE[shape](rng, days))


# -- running ----------------------------------------------------------------------------------


def _run_streams(streams: Sequence[Stream], name: str) -> tuple[list[Episode], float, int]:
    """(episodes, seconds, readings) of one detector over independent streams."""
    eps: list[Episode] = []
    started = time.perf_counter()
    for s in streams:
        eps += detect_episodes(make_detector(name), s.points, device=s.device, metric=s.metric)
    return eps, time.perf_counter() - started, sum(len(s.points) for s in streams)


def _skab_task(args: tuple[str, str, str]) -> tuple[str, list[Episode], float, int]:
    path, device, name = args
    run = load_skab_run(Path(path), device)
    eps, sec, n = _run_streams(run.streams, name)
    return name, eps, sec, n


def _torture_task(args: tuple[str, int, int, float, str]) -> tuple[str, list[Episode], float, int]:
    shape, seed, index, days, name = args
    eps, sec, n = _run_streams([torture_stream(shape, seed, index, days)], name)
    return name, eps, sec, n


def _sim_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_detectors", ROOT / "bench" / "eval_detectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_detectors", module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def _pool_map(fn: Callable[[Any], Any], tasks: list[Any], jobs: int) -> Iterator[Any]:
    if jobs <= 1:
        yield from map(fn, tasks)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(fn, tasks, chunksize=1)


@dataclass(frozen=True, slots=True)
class SetResult:
    """One detector on one set."""

    metrics: Metrics
    nab: tuple[NabScore, ...]
    seconds: float
    readings: int

    def to_dict(self) -> dict[str, object]:
        return {
            "metrics": self.metrics.to_dict(),
            "nab": {s.profile: s.to_dict() for s in self.nab},
            "us_per_reading": round(1e6 * self.seconds / self.readings, 3) if self.readings else None,
        }


def run_skab(root: Path, detectors: Sequence[str], *, limit: int | None, jobs: int) -> dict[str, object]:
    """Per detector: the 60 s-window view, the interval view, and the anomaly-free run's false alarms."""
    runs = skab_runs(root, limit)
    paths = {r.device: root / f"{r.device}.csv" for r in runs}
    tasks = [(str(paths[r.device]), r.device, name) for name in detectors for r in runs]
    free = root / "anomaly-free" / "anomaly-free.csv"
    if free.is_file():
        tasks += [(str(free), "anomaly-free", name) for name in detectors]
    found: dict[str, list[Episode]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    readings: dict[str, int] = defaultdict(int)
    for name, eps, sec, n in _pool_map(_skab_task, tasks, jobs):
        found[name] += eps
        seconds[name] += sec
        readings[name] += n
    cp = [Window(r.device, "", t, t + SKAB_WINDOW, "changepoint") for r in runs for t in r.changepoints]
    whole = [Window(r.device, "", a, b, "anomaly") for r in runs for a, b in r.intervals]
    labelled_days = sum(8 * (r.streams[0].points[-1][0] - r.streams[0].points[0][0]) for r in runs) / DAY
    free_days = 0.0
    if free.is_file():
        f = load_skab_run(free, "anomaly-free")
        free_days = len(f.streams) * (f.streams[0].points[-1][0] - f.streams[0].points[0][0]) / DAY
    out: dict[str, object] = {"runs": len(runs), "windows_60s": len(cp), "intervals": len(whole)}
    for name in detectors:
        labelled = [e for e in found[name] if e.device != "anomaly-free"]
        per_device = [Episode(e.device, "", e.start, e.end, e.peak_score, e.readings) for e in labelled]
        free_eps = [e for e in found[name] if e.device == "anomaly-free"]
        out[name] = {
            "window_60s": SetResult(
                evaluate(cp, per_device, stream_days=labelled_days),
                tuple(nab_scores(cp, labelled, per_device=True)),
                seconds[name],
                readings[name],
            ),
            "interval": SetResult(
                evaluate(whole, per_device, stream_days=labelled_days),
                tuple(nab_scores(whole, labelled, per_device=True)),
                seconds[name],
                readings[name],
            ),
            "anomaly_free_alerts": len(free_eps),
            "anomaly_free_stream_days": free_days,
        }
    return out


def run_simulator(
    seed: int, devices: int, days: float, detectors: Sequence[str], *, jobs: int
) -> dict[str, SetResult]:
    bench = _sim_bench()
    labels: list[Window] = []
    found: dict[str, list[Episode]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    readings = streams = 0
    for res in bench.run(seed, devices, days, detectors=detectors, jobs=jobs):
        labels += res["labels"]
        for name, eps in res["episodes"].items():
            found[name] += eps
        for name, sec in res["seconds"].items():
            seconds[name] += sec
        readings += res["readings"]
        streams += res["streams"]
    return {
        name: SetResult(
            evaluate(labels, found[name], stream_days=streams * days, tolerance=SIM_TOLERANCE),
            tuple(nab_scores(labels, found[name])),
            seconds[name],
            readings,
        )
        for name in detectors
    }


def run_torture(
    seed: int, per_shape: int, days: float, detectors: Sequence[str], *, jobs: int
) -> dict[str, dict[str, object]]:
    """Per detector and shape: alerts per stream per 30 days (every alert is false)."""
    tasks = [
        (shape, seed, i, days, name) for name in detectors for shape in TORTURE for i in range(per_shape)
    ]
    alerts: dict[str, dict[str, int]] = {name: dict.fromkeys(TORTURE, 0) for name in detectors}
    seconds: dict[str, float] = defaultdict(float)
    readings: dict[str, int] = defaultdict(int)
    spans: dict[str, float] = defaultdict(float)
    for task, (name, eps, sec, n) in zip(tasks, _pool_map(_torture_task, tasks, jobs), strict=True):
        alerts[name][task[0]] += len(eps)
        seconds[name] += sec
        readings[name] += n
    for shape in TORTURE:
        for i in range(per_shape):
            pts = torture_stream(shape, seed, i, days).points
            spans[shape] += pts[-1][0] - pts[0][0]
    out: dict[str, dict[str, object]] = {}
    for name in detectors:
        per_shape_rate = {shape: MONTH * alerts[name][shape] / spans[shape] for shape in TORTURE}
        total = sum(alerts[name].values())
        out[name] = {
            "alerts": alerts[name],
            "alerts_per_stream_30d": per_shape_rate,
            "false_alarms_per_stream_day": DAY * total / sum(spans.values()),
            "worst_shape_per_30d": max(per_shape_rate.values()),
            "us_per_reading": 1e6 * seconds[name] / readings[name] if readings[name] else math.nan,
        }
    return out


# -- printing ---------------------------------------------------------------------------------


def _f(x: float, spec: str = ".1f") -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def _nab_row(name: str, r: SetResult, extra: str = "") -> str:
    m = r.metrics
    nab = " | ".join(_f(s.score) for s in r.nab)
    return (
        f"| {name} | {nab} | {_f(100 * m.recall)}% ({m.detected}/{m.events}) | "
        f"{_f(m.false_alarms_per_stream_day, '.3f')} | {m.false_alarms}{extra} |"
    )


NAB_HEAD = (
    "| detector | NAB standard | NAB low FP | NAB low FN | event recall | "
    "false alarms / stream-day | false alarms |"
)


def print_report(doc: dict[str, object], detectors: Sequence[str]) -> None:
    if "skab" in doc:
        skab: Any = doc["skab"]
        for view, title in (("window_60s", "60 s after each changepoint"), ("interval", "whole anomaly")):
            print(f"\nSKAB, {skab['runs']} runs, per device, windows: {title}")
            print(NAB_HEAD + (" anomaly-free run: alerts |" if view == "window_60s" else ""))
            print("|---" * (7 + (view == "window_60s")) + "|")
            for name in detectors:
                d = skab[name]
                extra = f" | {d['anomaly_free_alerts']} in {d['anomaly_free_stream_days']:.2f} stream-days"
                print(_nab_row(name, d[view], extra if view == "window_60s" else ""))
    if "simulator" in doc:
        sim: Any = doc["simulator"]
        print(f"\nSimulator benchmark ({sim['about']}), NAB per stream,")
        print(f"recall with {SIM_TOLERANCE:.0f} s tolerance")
        print(NAB_HEAD + " µs/reading (eval) |")
        print("|---" * 8 + "|")
        for name in detectors:
            r = sim[name]
            print(_nab_row(name, r, f" | {_f(1e6 * r.seconds / r.readings, '.2f')}"))
    if "torture" in doc:
        tor: Any = doc["torture"]
        print(f"\nTorture set ({tor['about']}): alerts per stream per 30 days (all false)")
        print("| shape | " + " | ".join(detectors) + " |")
        print("|---" * (1 + len(detectors)) + "|")
        for shape in TORTURE:
            cells = [_f(tor[name]["alerts_per_stream_30d"][shape], ".2f") for name in detectors]
            print(f"| {shape} | " + " | ".join(cells) + " |")
        cells = [_f(tor[name]["false_alarms_per_stream_day"], ".3f") for name in detectors]
        print("| false alarms / stream-day, all | " + " | ".join(cells) + " |")


def _jsonable(doc: object) -> object:
    if isinstance(doc, SetResult):
        return doc.to_dict()
    if isinstance(doc, dict):
        return {k: _jsonable(v) for k, v in doc.items()}
    if isinstance(doc, float) and math.isnan(doc):
        return None
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="skab,simulator,torture")
    ap.add_argument("--detectors", default=",".join(DETECTORS_COMPARED))
    ap.add_argument("--skab", type=Path, default=SKAB_DIR, help="SKAB's data/ directory")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--sim-devices", type=int, default=60, help="5 streams each")
    ap.add_argument("--sim-days", type=float, default=2.0)
    ap.add_argument("--torture-streams", type=int, default=3, help="streams per shape")
    ap.add_argument("--torture-days", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        ap.error(f"unknown detectors {unknown}")
    sets = {s.strip() for s in args.sets.split(",") if s.strip()}
    skab_limit: int | None = None
    if args.quick:
        skab_limit, args.sim_devices, args.sim_days = 2, 2, 1.0
        args.torture_streams, args.torture_days = 1, 3.0

    started = time.perf_counter()
    doc: dict[str, object] = {}
    if "skab" in sets:
        if not (args.skab / "valve1").is_dir():
            ap.error(f"{args.skab}: no SKAB data (valve1/, valve2/, other/); pass --skab DIR or drop the set")
        doc["skab"] = run_skab(args.skab, detectors, limit=skab_limit, jobs=args.jobs)
    if "simulator" in sets:
        sim: dict[str, object] = dict(
            run_simulator(args.seed, args.sim_devices, args.sim_days, detectors, jobs=args.jobs)
        )
        sim["about"] = f"seed {args.seed}, {args.sim_devices} devices x 5 streams x {args.sim_days:g} days"
        doc["simulator"] = sim
    if "torture" in sets:
        tor: dict[str, object] = dict(
            run_torture(args.seed, args.torture_streams, args.torture_days, detectors, jobs=args.jobs)
        )
        tor["about"] = (
            f"seed {args.seed}, {len(TORTURE)} shapes x {args.torture_streams} streams "
            f"x {args.torture_days:g} days"
        )
        doc["torture"] = tor
    doc["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(_jsonable(doc), indent=2))
    else:
        print_report(doc, detectors)
        print(f"\nwall {doc['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
