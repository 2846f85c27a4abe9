"""`timestamp,value` CSV files in, scored CSV out: what `edgewatch detect` does, minus printing.

The detector is driven exactly as the aggregator drives it (`make_detector` then `process` per
reading), so a file run reproduces what the live pipeline would have said.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloud.analysis.evaluate import Episode, EpisodeRecorder, parse_timestamp
from cloud.detect import DEFAULT_DETECTOR, make_detector


class InputError(ValueError):
    """A file we cannot read as asked; the message names the file and, when known, the line."""


@dataclass(frozen=True, slots=True)
class SeriesRow:
    line: int
    ts: float
    value: float
    ts_text: str
    value_text: str


def read_series(path: Path, *, on_bytes: Callable[[int], None] | None = None) -> Iterator[SeriesRow]:
    """Rows of a `timestamp,value` CSV with a header; raises InputError naming the bad line.

    Extra columns are ignored. A value of `nan`/`inf` is passed on (the detector flags it).
    `on_bytes(n)` reports progress in bytes read, for a progress bar.
    """
    try:
        fh = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        reader = csv.reader(_Counting(fh, on_bytes))
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: line 1: unreadable header ({exc})") from None
        names = [h.strip().lower() for h in header or []]
        if "timestamp" not in names or "value" not in names:
            raise InputError(
                f"{path}: line 1: expected a header with 'timestamp' and 'value' columns, "
                f"got {','.join(header or []) or 'an empty file'!r}"
            )
        its, ival = names.index("timestamp"), names.index("value")
        width = max(its, ival) + 1
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) < width:
                    raise InputError(f"{path}: line {line}: expected {width} columns, got {len(row)}")
                try:
                    ts = parse_timestamp(row[its])
                except ValueError as exc:
                    raise InputError(f"{path}: line {line}: {exc}") from None
                try:
                    value = float(row[ival])
                except ValueError:
                    raise InputError(f"{path}: line {line}: bad value {row[ival]!r}") from None
                yield SeriesRow(line, ts, value, row[its].strip(), row[ival].strip())
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: line {reader.line_num}: {exc}") from None


class _Counting:
    """Iterates a text file's lines, reporting the bytes consumed."""

    def __init__(self, fh: object, on_bytes: Callable[[int], None] | None) -> None:
        self._it: Iterator[str] = iter(fh)  # type: ignore[call-overload]
        self._on_bytes = on_bytes

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._it)
        if self._on_bytes is not None:
            self._on_bytes(len(line.encode("utf-8")))
        return line


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return ""


@dataclass(frozen=True, slots=True)
class DetectSummary:
    detector: str
    readings: int
    anomalous: int
    episodes: tuple[Episode, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "detector": self.detector,
            "readings": self.readings,
            "anomalous": self.anomalous,
            "episodes": [
                {
                    "device": e.device,
                    "metric": e.metric,
                    "start": e.start,
                    "end": e.end,
                    "start_iso": _iso(e.start),
                    "end_iso": _iso(e.end),
                    "readings": e.readings,
                    "peak_score": round(e.peak_score, 6),
                    "kind": e.kind,
                    "evidence": e.evidence,
                }
                for e in self.episodes
            ],
        }


def detect_file(
    src: Path,
    dst: Path,
    *,
    detector: str = DEFAULT_DETECTOR,
    seed: int = 0,
    device: str = "",
    metric: str = "",
    on_bytes: Callable[[int], None] | None = None,
) -> DetectSummary:
    """Score every row of `src` into `dst` (`timestamp,value,score,alert`), group alert episodes.

    Episodes are the aggregator's (`cloud.analysis.evaluate.EpisodeRecorder` runs production's
    episode machine and policy), so a file run opens the alerts the live pipeline would.
    `device`/`metric` only tag the episodes.
    """
    det = make_detector(detector, seed=seed)
    recorder = EpisodeRecorder(device=device, metric=metric)
    found: list[Episode] = []
    readings = anomalous = 0
    part = dst.with_name(dst.name + ".part")  # renamed into place only once complete
    try:
        out = part.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{dst}: cannot write ({exc.strerror})") from None
    try:
        with out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(("timestamp", "value", "score", "alert"))
            for row in read_series(src, on_bytes=on_bytes):
                verdict = det.process(row.ts, row.value)
                readings += 1
                anomalous += verdict.anomalous
                writer.writerow((row.ts_text, row.value_text, f"{verdict.score:.6f}", int(verdict.anomalous)))
                closed = recorder.push(row.ts, row.value, verdict)
                if closed is not None:
                    found.append(closed)
        part.replace(dst)
    finally:
        part.unlink(missing_ok=True)
    last = recorder.finish()
    if last is not None:
        found.append(last)
    return DetectSummary(detector, readings, anomalous, tuple(found))


__all__ = ["DetectSummary", "InputError", "SeriesRow", "detect_file", "read_series"]
