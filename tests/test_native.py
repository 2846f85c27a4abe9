"""The default detector compiled by mypyc (setup.py) against the very same source interpreted.

Where edgewatch was installed with a C compiler, everything runs the compiled form (half the CPU
per reading); elsewhere, or with EDGEWATCH_INTERPRETED=1, the interpreted one. Both must give
bit-identical verdicts, and a checkpoint written by either must resume in the other (a database
moves between machines).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cloud.detect import make_detector
from cloud.detect.native import compiled as is_compiled

REPO = Path(__file__).resolve().parent.parent
SPLIT = 1500


def streams() -> list[list[tuple[float, float]]]:
    """Three streams with the faults the detector is for: spike, level shift, stuck, NaN, gap."""
    rng = random.Random(5)
    out = []
    for k in range(3):
        points: list[tuple[float, float]] = []
        stuck = 0.0
        for i in range(3000):
            ts = 60.0 * i + (3600.0 if i > 2000 else 0.0)  # a one-hour gap in the data
            value = 20 + 3 * k + 2 * math.sin(i / 240) + rng.gauss(0, 0.2)
            if i in (700, 1900):
                value += 25
            if 1200 <= i < 1400:
                value += 6 * (k + 1)
            if 2400 <= i < 2600:
                stuck = stuck or value
                value = stuck
            if i == 2800:
                value = math.nan
            points.append((ts, value))
        out.append(points)
    return out


RUN = """
import base64, json, sys
from cloud.detect import detector_from_bytes, make_detector
from cloud.detect.native import compiled as native
job = json.load(sys.stdin)
out = {"native": native(), "verdicts": [], "checkpoints": []}
for k, points in enumerate(job["streams"]):
    blob = job["resume"][k] if job["resume"] else None
    det = detector_from_bytes(base64.b64decode(blob)) if blob else make_detector("default")
    verdicts = []
    for i, (ts, value) in enumerate(points):
        if i == job["checkpoint_at"]:
            out["checkpoints"].append(base64.b64encode(det.to_bytes()).decode())
        verdicts.append(list(det.process(ts, value)))
    out["verdicts"].append(verdicts)
json.dump(out, sys.stdout)
"""


def run(job: dict[str, object], *, interpreted: bool) -> dict[str, object]:
    env = {**os.environ, "EDGEWATCH_INTERPRETED": "1" if interpreted else "0"}
    done = subprocess.run(
        [sys.executable, "-c", RUN], input=json.dumps(job), capture_output=True, text=True,
        env=env, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def same(a: object, b: object) -> bool:
    """Equal as JSON, NaN included (NaN != NaN, but the same NaN verdict is the same)."""
    return json.dumps(a) == json.dumps(b)


CAN_COMPILE = shutil.which("cc") is not None and Path(sysconfig.get_paths()["include"], "Python.h").exists()


@pytest.mark.skipif(os.environ.get("EDGEWATCH_COMPILE") == "0", reason="installed with EDGEWATCH_COMPILE=0")
@pytest.mark.skipif(
    not CAN_COMPILE, reason="no C compiler or Python headers (scripts/setup.sh installs them as root)"
)
def test_the_installed_default_detector_is_compiled() -> None:
    assert is_compiled(), (
        "cloud.detect.sensor is not compiled: reinstall (scripts/setup.sh) with a C compiler"
    )


def test_compiled_and_interpreted_give_identical_verdicts_and_resume_each_others_checkpoints() -> None:
    data = streams()
    whole = {"streams": data, "resume": None, "checkpoint_at": SPLIT}
    compiled = run(whole, interpreted=False)
    interpreted = run(whole, interpreted=True)
    assert interpreted["native"] is False
    assert compiled["native"] is is_compiled()
    assert same(compiled["verdicts"], interpreted["verdicts"])
    flagged = sum(v[1] for stream in interpreted["verdicts"] for v in stream)  # type: ignore[attr-defined]
    assert 20 <= flagged < 3000, flagged  # faults were seen and not everything: not a comparison of silence
    # Resume the second half in the other form from the first one's checkpoint.
    tail = [points[SPLIT:] for points in data]
    for source, other_is_interpreted in ((compiled, True), (interpreted, False)):
        resumed = run(
            {"streams": tail, "resume": source["checkpoints"], "checkpoint_at": -1},
            interpreted=other_is_interpreted,
        )
        expected = [v[SPLIT:] for v in interpreted["verdicts"]]  # type: ignore[attr-defined]
        assert same(resumed["verdicts"], expected)


def test_checkpoints_written_before_the_named_state_still_resume() -> None:
    """Checkpoints of earlier versions were default slot pickles: (None, {slot: value})."""
    det = make_detector("sensor")  # the default's inner detector, and the default before shift
    for i in range(200):
        det.process(60.0 * i, 20.0 + (i % 7) * 0.1)
    state = pickle.loads(pickle.dumps(det.__getstate__()))  # type: ignore[attr-defined] # a deep copy
    cal_state = state["cal"].__getstate__()
    cal = type(state["cal"]).__new__(type(state["cal"]))
    cal.__setstate__((None, cal_state))
    legacy = type(det).__new__(type(det))
    legacy.__setstate__((None, {**state, "cal": cal}))
    assert [legacy.process(60.0 * i, 20.3) for i in range(200, 260)] == [
        det.process(60.0 * i, 20.3) for i in range(200, 260)
    ]
    assert legacy.to_bytes() == det.to_bytes()


@pytest.mark.skipif(not is_compiled(), reason="the detector is not compiled here")
def test_a_compiled_module_whose_source_changed_is_not_run(tmp_path: Path) -> None:
    """An editable checkout compiles in place; after an edit the source must run, not the
    module compiled before it (and a warning says so)."""
    shutil.copytree(REPO / "cloud", tmp_path / "cloud", ignore=shutil.ignore_patterns("__pycache__"))
    for group in REPO.glob("*__mypyc*.so"):  # mypyc's shared runtime for the compiled modules
        shutil.copy(group, tmp_path)
    probe = "from cloud.detect.native import compiled; print(compiled())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EDGEWATCH_INTERPRETED": "0"}

    def run_probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
        )

    fresh = run_probe()
    assert (fresh.returncode, fresh.stdout.strip(), fresh.stderr) == (0, "True", "")
    with (tmp_path / "cloud/detect/calibrate.py").open("a") as source:
        source.write("\n# edited after compiling\n")
    edited = run_probe()
    assert (edited.returncode, edited.stdout.strip()) == (0, "False")
    assert "StaleNativeModule" in edited.stderr and "cloud.detect.calibrate" in edited.stderr


def test_docstring_examples_of_the_compiled_modules_hold_in_their_source() -> None:
    """doctest cannot see into compiled modules (tests/test_doctests.py); run their source."""
    probe = (
        "import doctest, cloud.detect.sensor as s, cloud.detect.calibrate as c, cloud.detect.shift as h\n"
        "r = [doctest.testmod(m) for m in (s, c, h)]\n"
        "print(sum(x.attempted for x in r), sum(x.failed for x in r))"
    )
    env = {**os.environ, "EDGEWATCH_INTERPRETED": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    attempted, failed = map(int, done.stdout.split())
    assert attempted >= 4 and failed == 0, done.stdout + done.stderr
