"""Cost of each detector (issue 4): µs per reading, import time, checkpoint size.

    .venv/bin/python bench/bench_detectors.py
    .venv/bin/python bench/bench_detectors.py --devices 4 --repeat 7 --detectors default,ewma

Streams are the labelled benchmark's (bench/eval_detectors.py: five sensor kinds per device, one
reading a minute, with faults), generated first and held in memory, then fed through
`make_detector(name).process` in a tight loop. The figure is the best of `--repeat` runs (the
machine is shared, the minimum is the least disturbed), including the Verdict each call builds.
A no-op detector that only builds a Verdict gives the floor.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.detect import DETECTORS, make_detector
from cloud.detect.base import Verdict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_detectors import device_streams


class _Floor:
    """Builds a Verdict and nothing else: the cost every detector pays."""

    def process(self, ts: float, value: float) -> Verdict:
        return Verdict(0.1, False, value - 1.0, value + 1.0)


def _import_ms(name: str) -> float:
    module = DETECTORS[name].partition(":")[0]
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    best = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )
    return 1000.0 * best


def _us_per_reading(factory: object, streams: list[list[tuple[float, float]]], repeat: int) -> float:
    best = float("inf")
    n = sum(len(s) for s in streams)
    for _ in range(repeat):
        total = 0.0
        for points in streams:
            det = factory()  # type: ignore[operator]
            process = det.process
            started = time.perf_counter()
            for ts, value in points:
                process(ts, value)
            total += time.perf_counter() - started
        best = min(best, total)
    return 1e6 * best / n


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--devices", type=int, default=2, help="5 streams each")
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--detectors", default="default,hst,gaussian,ewma")
    args = ap.parse_args(argv)
    names = [d.strip() for d in args.detectors.split(",") if d.strip()]
    streams = [
        list(s.points)
        for i in range(args.devices)
        for s in device_streams(args.seed, i, days=args.days, period=60.0)
    ]
    n = sum(len(s) for s in streams)
    print(f"{len(streams)} streams, {n} readings, best of {args.repeat}; Python {sys.version.split()[0]}")
    print()
    print("| detector | µs/reading | readings/s (1 core) | import (ms) | checkpoint after 1 stream (bytes) |")
    print("|---|---|---|---|---|")
    floor = _us_per_reading(_Floor, streams, args.repeat)
    print(f"| (floor: build a Verdict) | {floor:.2f} | {1e6 / floor:,.0f} | - | - |")
    for name in names:
        repeat = args.repeat if name not in ("hst",) else max(1, args.repeat // 3)
        us = _us_per_reading(lambda name=name: make_detector(name), streams, repeat)
        det = make_detector(name)
        for ts, value in streams[0]:
            det.process(ts, value)
        size = len(pickle.dumps(det))
        print(f"| {name} | {us:.2f} | {1e6 / us:,.0f} | {_import_ms(name):.0f} | {size:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
