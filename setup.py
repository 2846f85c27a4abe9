"""Build hook: compile the aggregator's per-reading detector with mypyc where possible.

`cloud.detect.sensor`, `calibrate` and `shift` run once per reading on the aggregator;
compiled by mypyc (from the same typed source) they take half the time, with bit-identical
verdicts and checkpoints that load in either form (tests/test_native.py). Everything else is
plain Python. The compiled modules are optional: without a C compiler, or with
EDGEWATCH_COMPILE=0 (the agent installer sets it: a device runs no detector), the same modules
run interpreted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup

NATIVE = ["cloud/detect/sensor.py", "cloud/detect/calibrate.py", "cloud/detect/shift.py"]
# The sources' digests as compiled, installed next to them: `cloud.detect` runs the source
# instead of a compiled module whose source has changed since (an edited editable checkout).
DIGESTS = Path("cloud/detect/native-sources.json")


def record_digests() -> None:
    digests = {Path(path).stem: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in NATIVE}
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


def native_extensions() -> list[object]:
    if os.environ.get("EDGEWATCH_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - optional: without it, interpreted
    except ImportError:
        return []
    try:
        extensions = mypycify(NATIVE, opt_level="3")
    except (Exception, SystemExit) as exc:  # e.g. a newer mypy that disagrees: run interpreted
        print(f"edgewatch: not compiling {', '.join(NATIVE)}: {exc}")
        return []
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the interpreted module in place
    record_digests()
    return list(extensions)


setup(ext_modules=native_extensions())
